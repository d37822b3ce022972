import copy

import pytest
import torch
import torch.nn.functional as F

from wsss.models.backbones import build_backbone, freeze_bn
from wsss.models.cam_net import CAMNet, cams_at_scales, multiscale_cam, normalize_cam
from wsss.models.deeplab import build_segmenter

SMALL = dict(widths=(8, 8, 16, 16), blocks=(1, 1, 1, 1))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("os_", [8, 16, 32])
def test_resnet_small_output_stride(os_):
    net = build_backbone("resnet_small", output_stride=os_, **SMALL).eval()
    y = net(torch.randn(2, 3, 64, 64))
    assert y.shape == (2, 16, 64 // os_, 64 // os_)
    assert net.out_channels == 16


def test_resnet_small_default_widths_and_blocks():
    net = build_backbone("resnet_small", widths=(32, 64, 128, 256), blocks=(2, 1, 1, 2))
    assert net.out_channels == 256
    assert len(net.layer1) == 2 and len(net.layer4) == 2
    # dilation replaces stride in layer3/layer4 at OS 8 (first block keeps the previous dilation)
    assert net.layer3[0].conv1.stride == (1, 1) and net.layer3[0].conv2.dilation == (1, 1)
    assert net.layer4[0].conv1.dilation == (2, 2) and net.layer4[1].conv2.dilation == (4, 4)


@pytest.mark.parametrize("os_", [8, 16])
def test_resnet18_output_stride(os_):
    net = build_backbone("resnet18", output_stride=os_).eval()
    with torch.no_grad():
        y = net(torch.randn(1, 3, 64, 64))
    assert y.shape == (1, 512, 64 // os_, 64 // os_)


def test_unknown_backbone_and_small_pretrained():
    with pytest.raises(ValueError):
        build_backbone("vgg16")
    with pytest.raises(ValueError):
        build_backbone("resnet_small", pretrained=True)


def test_pretrained_missing_weights_message(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    import torchvision.models._api as api

    def no_net(*a, **k):
        raise OSError("offline")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_net)
    monkeypatch.setattr(api, "load_state_dict_from_url", no_net, raising=False)
    with pytest.raises(RuntimeError, match=r"resnet18-.*\.pth.*hub/checkpoints"):
        build_backbone("resnet18", pretrained=True)


@pytest.mark.parametrize("os_", [8, 16])
def test_camnet_shapes(os_):
    net = CAMNet(dict(name="resnet_small", output_stride=os_, **SMALL), num_classes=20, proj_dim=12).eval()
    out = net(torch.randn(2, 3, 64, 64), with_proj=True)
    h = 64 // os_
    assert out["cam"].shape == (2, 20, h, h)
    assert out["features"].shape == (2, 16, h, h)
    assert out["proj"].shape == (2, 12, h, h)
    assert torch.allclose(out["proj"].norm(dim=1), torch.ones(2, h, h), atol=1e-5)
    assert torch.allclose(out["logits"], out["cam"].mean(dim=(2, 3)))
    assert "proj" not in net(torch.randn(1, 3, 64, 64))
    assert net.classifier.bias is None


def test_camnet_channels_last_matches():
    net = CAMNet(dict(name="resnet_small", **SMALL)).eval()
    x = torch.randn(2, 3, 48, 48)
    ref = net(x)["cam"]
    net_cl = copy.deepcopy(net).to(memory_format=torch.channels_last)
    out = net_cl(x.contiguous(memory_format=torch.channels_last))["cam"]
    assert torch.allclose(ref, out, atol=1e-5)


def _net():
    return CAMNet(dict(name="resnet_small", **SMALL)).eval()


def test_multiscale_single_scale_equals_plain_cam():
    net = _net()
    x = torch.randn(2, 3, 48, 40)
    with torch.no_grad():
        got = multiscale_cam(net, x, scales=(1.0,), flip=False)
        ref = F.interpolate(F.relu(net(x)["cam"]), size=(48, 40), mode="bilinear", align_corners=False)
    assert got.shape == (2, 20, 48, 40)
    assert torch.allclose(got, ref, atol=1e-6)


def test_multiscale_flip_consistency():
    net = _net()
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        a = multiscale_cam(net, x, scales=(0.5, 1.0, 1.5), flip=True)
        b = multiscale_cam(net, x.flip(-1), scales=(0.5, 1.0, 1.5), flip=True)
        one = multiscale_cam(net, x, scales=(1.0,), flip=False)
    assert torch.allclose(a, b.flip(-1), atol=1e-5)
    assert (a >= 0).all()
    # a sum over 6 non-negative maps, not an average: larger than a single map
    assert a.sum() > one.sum()


def test_cams_at_scales_keeps_grad_and_raw_option():
    net = _net()
    x = torch.randn(1, 3, 32, 32)
    cams = cams_at_scales(net, x, scales=(0.5, 1.0), size=(8, 8), activation="none")
    assert len(cams) == 2 and cams[0].shape == (1, 20, 8, 8)
    assert cams[0].requires_grad and (cams[1] < 0).any()


def test_normalize_cam():
    cam = torch.tensor([[[[0.0, 2.0], [1.0, 4.0]]]])
    n = normalize_cam(cam)
    assert torch.allclose(n, cam / (4.0 + 1e-5))
    assert n.amax() < 1.0 and n.amax() > 0.9999


@pytest.mark.parametrize("os_", [8, 16])
def test_deeplab_small_output_at_input_size(os_):
    net = build_segmenter("deeplabv3_small", num_classes=21, backbone_cfg=dict(output_stride=os_, **SMALL)).eval()
    y = net(torch.randn(2, 3, 50, 46))
    assert y.shape == (2, 21, 50, 46)


def test_deeplab_resnet50_builds_without_weights():
    net = build_segmenter("deeplabv3_resnet50", num_classes=21).eval()
    assert net.net.aux_classifier is None
    with torch.no_grad():
        y = net(torch.randn(1, 3, 33, 33))
    assert y.shape == (1, 21, 33, 33)


def test_freeze_bn_really_freezes():
    net = _net()
    freeze_bn(net)
    net.train()  # must not re-enable batch statistics
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(not p.requires_grad for m in bns for p in m.parameters())
    before = [m.running_mean.clone() for m in bns]
    x = torch.randn(4, 3, 32, 32) * 3 + 1
    out_full = net(x)["cam"]
    out_one = net(x[:1])["cam"]
    # output of a sample does not depend on the rest of the batch
    assert torch.allclose(out_full[:1], out_one, atol=1e-5)
    assert all(torch.equal(a, m.running_mean) for a, m in zip(before, bns))
    assert all(not m.training for m in bns)
    # survives deepcopy (checkpoint/EMA copies)
    twin = copy.deepcopy(net)
    twin.train()
    assert torch.allclose(twin(x[:1])["cam"], out_one, atol=1e-5)
    # convolutions still train
    out_full.sum().backward()
    grad = net.classifier.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["deeplabv2_small", "deeplabv3plus_small"])
def test_deeplab_v2_and_v3plus_output_at_input_size_with_backbone(name):
    net = build_segmenter(
        name,
        num_classes=21,
        backbone_cfg=dict(SMALL),
        atrous_rates=(1, 2, 3, 4)[: 4 if "v2" in name else 3],
        aspp_channels=8,
    ).eval()
    with torch.no_grad():
        y = net(torch.randn(2, 3, 50, 46))
    assert y.shape == (2, 21, 50, 46)
    # the backbone runs at the architecture's output stride (v2: 8, v3+: 16) whatever the config said
    assert net.backbone.output_stride == (8 if "v2" in name else 16)


def test_deeplab_v2_head_is_a_sum_of_atrous_classifiers():
    from wsss.models.deeplab import ASPPv2

    head = ASPPv2(4, 3, rates=(1, 2))
    x = torch.randn(1, 4, 9, 9)
    # summing the branches is DeepLab-v2's fusion: the head equals the sum of its parts
    assert torch.allclose(head(x), head.branches[0](x) + head.branches[1](x))
    assert head.branches[1].dilation == (2, 2) and head.branches[1].padding == (2, 2)


def test_deeplab_v3plus_uses_low_level_features():
    net = build_segmenter(
        "deeplabv3plus_small", num_classes=5, backbone_cfg=dict(SMALL), atrous_rates=(1, 2), aspp_channels=8
    ).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        base = net(x)
        net.low[0].weight.zero_()  # cut the decoder's low-level path: the output must change
        cut = net(x)
    assert not torch.allclose(base, cut)


def test_deeplab_v2_resnet101_builds_without_weights():
    net = build_segmenter("deeplabv2_resnet101", num_classes=21, atrous_rates=(6, 12, 18, 24)).eval()
    assert net.backbone.output_stride == 8 and net.backbone.out_channels == 2048
    assert len(net.aspp.branches) == 4


def test_new_layers_train_at_the_multiplied_rate():
    """param_groups: the backbone at lr, the stage's new layers (classifier, projection) at lr x new_layer_lr_mult,
    frozen parameters left out; one step of AdamW moves each group by its own rate."""
    from wsss.engine.trainer import build_optimizer, param_groups

    net = CAMNet({"name": "resnet_small", "widths": [8, 8, 8, 8], "blocks": [1, 1, 1, 1]})
    freeze_bn(net)
    cfg = {"optimizer": "adamw", "lr": 1e-4, "weight_decay": 0.0, "new_layer_lr_mult": 100.0}
    groups = param_groups(net, cfg)
    assert [g["lr"] for g in groups] == [1e-4, pytest.approx(1e-2)]
    backbone_ids = {id(p) for p in net.backbone.parameters() if p.requires_grad}
    assert {id(p) for p in groups[0]["params"]} == backbone_ids
    assert {id(p) for p in groups[1]["params"]} == {
        id(p) for p in [*net.classifier.parameters(), *net.proj.parameters()]
    }
    assert all(p.requires_grad for g in groups for p in g["params"])  # the frozen BN affine params are not there
    opt = build_optimizer(groups, cfg)
    before = copy.deepcopy(net.state_dict())
    net(torch.randn(2, 3, 32, 32))["logits"].sum().backward()
    opt.step()
    # Adam's first step moves every weight with a gradient by ~lr (its sign): 1e-4 in the backbone, 1e-2 in the head
    head = (net.classifier.weight - before["classifier.weight"]).abs().max().item()
    conv = (net.backbone.stem[0].weight - before["backbone.stem.0.weight"]).abs().max().item()
    assert head == pytest.approx(1e-2, rel=1e-3) and conv == pytest.approx(1e-4, rel=1e-3)
    assert len(param_groups(net, {"lr": 1e-3})) == 2 and param_groups(net, {"lr": 1e-3})[1]["lr"] == 1e-3


class _Crops(torch.utils.data.Dataset):
    """Four random 32x32 images with random 21-class label maps (the trainer sets ``seed`` each epoch)."""

    seed = 0

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.items = [
            {"image": torch.randn(3, 32, 32, generator=g), "label": torch.randint(0, 21, (32, 32), generator=g)}
            for _ in range(4)
        ]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


@pytest.mark.parametrize("frozen", [True, False])
def test_a_frozen_backbone_keeps_its_weights_and_statistics_while_the_head_trains(tmp_path, frozen):
    """train.freeze_backbone: after an epoch the backbone's weights and BN running statistics are exactly as they
    were and only the stage's layers (ASPP, decoder) moved; without it the backbone moves too (the control)."""
    from wsss import config
    from wsss.engine.trainer import train

    torch.manual_seed(0)
    bb = {"name": "resnet_small", "widths": [8, 8, 8, 8], "blocks": [1, 1, 1, 1]}
    net = build_segmenter("deeplabv3plus_small", backbone_cfg=bb, aspp_channels=8, atrous_rates=(1, 2, 3))
    tcfg = {**config.validate({})["segment"]["train"], "epochs": 1, "batch_size": 2, "freeze_backbone": frozen}
    backbone0 = copy.deepcopy(net.backbone.state_dict())
    head0 = copy.deepcopy(net.decoder.state_dict())
    train(
        net,
        _Crops(),
        tcfg,
        seed=0,
        resolved={},
        state_path=tmp_path / "state.pt",
        out=tmp_path / "ckpt.pt",
        objective=lambda x, batch: {"loss": F.cross_entropy(net(x), batch["label"])},
    )
    moved = {k for k, v in net.backbone.state_dict().items() if not torch.equal(v, backbone0[k])}
    assert all(not torch.equal(v, head0[k]) for k, v in net.decoder.state_dict().items() if v.is_floating_point())
    if frozen:
        assert not moved and net.backbone.stem[1].training is False
    else:  # weights and running statistics both change
        assert any(k.endswith("weight") for k in moved) and any(k.endswith("running_mean") for k in moved)


def test_freezing_a_net_without_a_backbone_is_refused():
    from wsss.engine.trainer import freeze_backbone
    from wsss.io import WsssInputError

    with pytest.raises(WsssInputError, match=r"segment\.train\.freeze_backbone: Linear has no backbone"):
        freeze_backbone(torch.nn.Linear(2, 2), key="segment.train.freeze_backbone")
    only_backbone = torch.nn.Module()
    only_backbone.backbone = torch.nn.Linear(2, 2)
    with pytest.raises(WsssInputError, match=r"nothing left to train once the backbone is frozen"):
        freeze_backbone(only_backbone, key="segment.train.freeze_backbone")
