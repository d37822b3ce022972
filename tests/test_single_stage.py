"""The single-stage (AA&LR) model, its training objective and stage, and its evaluation stage."""

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_stage

from wsss import config as wconfig
from wsss.engine.checkpoint import load_checkpoint
from wsss.io import read_json
from wsss.losses.single_stage import mask_loss, pseudo_gt
from wsss.methods import single_stage_inference as method
from wsss.methods.single_stage import SingleStageObjective
from wsss.models.single_stage import SingleStageNet, StochasticGate, single_stage_from_config
from wsss.refine.pamr import pamr, pamr_present

TINY_BACKBONE = {"name": "resnet_small", "widths": [8, 16, 32, 64], "blocks": [1, 1, 1, 1], "output_stride": 8}


def _cfg(tmp_path: Path, **single_stage) -> dict:
    raw = {
        "seeds": [0],
        "supportnet": {"backbone": TINY_BACKBONE},
        "single_stage": {
            "backbone": TINY_BACKBONE,
            "init_from_supportnet": False,
            "head_channels": 16,
            "embedding_dim": 8,
            "train": {"epochs": 2, "batch_size": 4, "crop": 48, "lr": 0.002, "channels_last": False},
            "warmup_epochs": 1,
            "pamr": {"iterations": 2, "dilations": [1, 2]},
            "scales": [1.0, 0.5],
            "flip": True,
            "crf": {"n_iter": 1},
            "n_saved_predictions": 2,
            "pseudo_eval": {"enabled": True, "max_images": 3},
            **single_stage,
        },
    }
    return wconfig.validate(raw)


@pytest.fixture(scope="module")
def tiny_voc(tmp_path_factory):
    """A tiny synthetic VOC dataset (the embedded generator at toy size)."""
    from wsss.data import synthetic

    root = tmp_path_factory.mktemp("ssvoc") / "VOC2012"
    cfg = wconfig.validate({"data": {"synthetic": {"n_train": 8, "n_val": 4, "size_min": 48, "size_max": 56}}})
    synthetic.generate(root, cfg["data"]["synthetic"])
    return root


# ------------------------------------------------------------------------------------------------ the model
@pytest.mark.parametrize("sg_psi,background", [(0.3, "constant"), (0.0, "learned")])
def test_model_output_shapes(sg_psi, background):
    net = SingleStageNet(TINY_BACKBONE, head_channels=16, embedding_dim=8, sg_psi=sg_psi, background=background)
    out = net(torch.randn(2, 3, 64, 48), with_embedding=True)
    assert out["logits"].shape == (2, 21, 8, 6)  # stride 8, background + 20
    assert out["embedding"].shape == (2, 8, 8, 6)
    assert torch.allclose(out["embedding"].norm(dim=1), torch.ones(2, 8, 6), atol=1e-5)
    assert "embedding" not in net(torch.randn(2, 3, 64, 48))
    if background == "constant":
        assert torch.all(out["logits"][:, 0] == 1.0)


def test_separate_segmentation_head_takes_the_mask_losses(tmp_path):
    obj = _objective(tmp_path, "aa", seg_head="separate", warmup_epochs=0)
    _two_region_pseudo_gt(obj)
    out = obj.net(torch.randn(2, 3, 48, 48))
    assert out["seg_logits"].shape == out["logits"].shape and not torch.equal(out["seg_logits"], out["logits"])
    x, y = _batch()
    losses = obj(x, y)
    (losses["loss_seg"] + losses["loss_aa"]).backward()
    assert obj.net.seg_conv[-1].weight.grad.abs().sum() > 0
    assert obj.net.last_conv[-1].weight.grad is None  # the classification head gets no mask-loss gradient
    shared = _objective(tmp_path, "baseline")
    out = shared.net(torch.randn(2, 3, 48, 48))
    assert out["seg_logits"] is out["logits"] and shared.net.seg_conv is None


def test_model_refuses_output_stride_16():
    with pytest.raises(ValueError, match="output_stride 8"):
        SingleStageNet({**TINY_BACKBONE, "output_stride": 16})


def test_stochastic_gate_is_unbiased_and_deterministic_at_test_time():
    torch.manual_seed(0)
    sg = StochasticGate(0.3)
    deep, shallow = torch.randn(4, 8, 16, 16), torch.randn(4, 8, 16, 16)
    mixed = torch.stack([sg(deep, shallow) for _ in range(400)]).mean(0)
    assert torch.allclose(mixed, deep, atol=0.35)  # E[x] = deep at training time
    sg.eval()
    assert torch.allclose(sg(deep, shallow), 0.7 * deep + 0.3 * shallow)


# ------------------------------------------------------------------------------------------------ the objective
def test_pamr_present_equals_full_pamr_on_present_planes():
    torch.manual_seed(0)
    img, masks = torch.randn(3, 3, 16, 16), torch.softmax(3 * torch.randn(3, 21, 8, 8), 1)
    labels = torch.zeros(3, 20)
    labels[0, [2, 5]] = 1
    labels[1, 7] = 1  # image 2 has no foreground class
    full = pamr(img, masks, dilations=(1, 2), n_iter=3)
    part = pamr_present(img, masks, labels, dilations=(1, 2), n_iter=3)
    y = torch.cat([torch.ones(3, 1), labels], 1)[:, :, None, None]
    assert torch.allclose(full * y, part, atol=1e-6)
    assert torch.equal(pseudo_gt(full, labels), pseudo_gt(part, labels))


def test_mask_loss_balanced_and_require_all_classes():
    logits = torch.zeros(2, 3, 4, 4, requires_grad=True)
    target = torch.zeros(2, 4, 4, dtype=torch.long)
    target[:, :, 2:] = 1
    labels = torch.tensor([[1.0, 0.0], [1.0, 1.0]])  # image 2 claims class 2, absent from its pseudo GT
    plain = mask_loss(logits, target, labels, balanced=False, require_all_classes=False)
    assert float(plain.detach()) == pytest.approx(np.log(3), abs=1e-5)
    gated = mask_loss(logits, target, labels, balanced=False, require_all_classes=True)
    assert float(gated.detach()) == pytest.approx(np.log(3) / 2, abs=1e-5)  # image 2's loss is cancelled
    bal = mask_loss(logits, target, labels, balanced=True, require_all_classes=False)
    assert float(bal.detach()) == pytest.approx(np.log(3) * 8 / 17, abs=1e-5)  # weight (16 - 8) / (1 + 16) per pixel
    target[0, 0, 0] = 255
    assert torch.isfinite(mask_loss(logits, target, labels, balanced=True, require_all_classes=True))


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 48, 48, generator=g)
    x[:, :, :, 24:] += 3.0  # two clearly different halves for PAMR
    labels = torch.zeros(2, 20)
    labels[:, 4] = 1
    return x, labels


def _two_region_pseudo_gt(obj):
    """Replace the objective's pseudo GT by a fixed one (left half background, right half class 5 = VOC id 5);
    returns the list of calls, so a test can tell whether a pseudo GT was made."""
    calls = []

    def fixed(x, logits, labels):
        calls.append(1)
        B, _, H, W = x.shape
        s = obj.scfg["label_stride"]
        pgt = torch.zeros(B, H // s, W // s, dtype=torch.long)
        pgt[:, :, (W // s) // 2 :] = 5
        refined = torch.nn.functional.one_hot(pgt, 21).permute(0, 3, 1, 2).float()
        return pgt, refined

    obj.pseudo_labels = fixed
    return calls


def _objective(tmp_path, variant, **kw):
    cfg = _cfg(tmp_path, **kw)
    torch.manual_seed(0)
    net = single_stage_from_config(cfg["single_stage"])
    return SingleStageObjective(net, variant, cfg["single_stage"])


def test_warmup_epochs_skip_the_segmentation_losses(tmp_path):
    obj = _objective(tmp_path, "aa_lr", warmup_epochs=2)
    calls = _two_region_pseudo_gt(obj)
    x, y = _batch()
    for epoch in (0, 1):
        obj.epoch = epoch
        out = obj(x, y)
        assert all(out[k].detach().item() == 0.0 for k in ("loss_seg", "loss_aa", "loss_lr"))
        assert torch.allclose(out["loss"], out["loss_cls"])
    assert not calls  # no pseudo GT made during the warm-up
    obj.epoch = 2
    out = obj(x, y)
    assert calls and all(out[k].detach().item() > 0 for k in ("loss_seg", "loss_aa", "loss_lr"))


def test_pseudo_labels_come_from_pamr_on_the_label_grid(tmp_path):
    obj = _objective(tmp_path, "baseline", label_stride=4)
    x, y = _batch()
    logits = torch.zeros(2, 21, 6, 6)
    logits[:, 0, :, :3] = 5.0  # background on the left
    logits[:, 5, :, 3:] = 5.0  # class 4 (channel 5) on the right
    pgt, refined = obj.pseudo_labels(x, logits, y)
    assert pgt.shape == (2, 12, 12) and refined.shape == (2, 21, 12, 12)
    assert set(pgt.unique().tolist()) <= {0, 5, 255}
    assert (pgt[:, :, :4] == 0).all() and (pgt[:, :, 8:] == 5).all()


@pytest.mark.parametrize(
    "variant,has_aa,has_lr",
    [("baseline", False, False), ("aa", True, False), ("lr", False, True), ("aa_lr", True, True)],
)
def test_variant_switches(tmp_path, variant, has_aa, has_lr):
    obj = _objective(tmp_path, variant)
    _two_region_pseudo_gt(obj)
    obj.epoch = 5
    x, y = _batch()
    out = obj(x, y)
    assert ("loss_aa" in out) == has_aa and ("loss_lr" in out) == has_lr
    if has_aa:
        assert out["loss_aa"].detach().item() > 0
    if has_lr:
        assert out["loss_lr"].detach().item() > 0
    terms = sum(v for k, v in out.items() if k.startswith("loss_"))
    assert torch.allclose(out["loss"], terms)
    out["loss"].backward()
    assert obj.net.proj[0].weight.grad is not None if has_lr else obj.net.proj[0].weight.grad is None


def test_lr_reassigns_only_from_its_start_epoch(tmp_path, monkeypatch):
    """lr.start_epoch: before it the LR loss trains against the unchanged pseudo labels (reassign is not called,
    nothing is reassigned, the loss still trains the embedding); from it on, reassign runs on every batch."""
    from wsss.methods import single_stage as module

    calls = []
    real = module.reassign
    monkeypatch.setattr(module, "reassign", lambda *a, **k: calls.append(1) or real(*a, **k))
    obj = _objective(tmp_path, "lr", warmup_epochs=0, lr={"start_epoch": 2})
    _two_region_pseudo_gt(obj)
    x, y = _batch()
    for epoch in (0, 1):
        obj.epoch = epoch
        out = obj(x, y)
        assert out["lr_reassigned"].item() == 0.0 and out["loss_lr"].detach().item() > 0
    assert not calls
    obj.epoch = 2
    obj(x, y)
    assert calls == [1]


@pytest.mark.parametrize("relabel", [False, True])
def test_relabelled_targets_reach_the_segmentation_loss_only_when_asked(tmp_path, monkeypatch, relabel):
    """Issue 16: with lr.relabel_segmentation the CE (and AA) train on LR's reassigned labels; without it on the
    pseudo GT (LR then only trains the embedding head and cannot stop the segmentation head fitting wrong labels)."""
    from wsss.methods import single_stage as module

    moved = []

    def all_to_background(emb, pgt, *a, **k):  # a reassignment that visibly differs from the pseudo GT
        new = torch.zeros_like(pgt)
        moved.append(new)
        return new

    seen = []
    real_mask_loss = module.mask_loss
    monkeypatch.setattr(module, "reassign", all_to_background)
    monkeypatch.setattr(
        module, "mask_loss", lambda up, target, *a, **k: seen.append(target) or real_mask_loss(up, target, *a, **k)
    )
    obj = _objective(tmp_path, "aa_lr", warmup_epochs=0, lr={"relabel_segmentation": relabel})
    _two_region_pseudo_gt(obj)
    x, y = _batch()
    obj(x, y)
    assert len(seen) == 1 and len(moved) == 1
    assert torch.equal(seen[0], moved[0]) == relabel
    assert (seen[0] == 5).any() != relabel  # the pseudo GT's class-5 half survives only without relabelling


def test_the_adversarial_aa_variant_keeps_and_steps_its_kernel_weights(tmp_path):
    obj = _objective(tmp_path, "aa", warmup_epochs=0, aa={"weighting": "adversarial", "adversarial_lr": 1.0})
    _two_region_pseudo_gt(obj)
    assert set(obj.companions()) == {"aa_kernels"}
    x, y = _batch()
    out = obj(x, y)
    out["loss"].backward()
    assert obj.kernels.logits.grad is not None
    obj.after_step()
    assert obj.kernels.logits.abs().sum() > 0 and obj.kernels.logits.grad is None
    assert _objective(tmp_path, "aa", warmup_epochs=0).companions() == {}


def test_aa_weight_scales_the_term(tmp_path):
    outs = []
    for w in (1.0, 2.0):
        obj = _objective(tmp_path, "aa", aa={"weight": w})
        _two_region_pseudo_gt(obj)
        obj.net.eval()  # no dropout / stochastic gate: the same logits twice
        obj.epoch = 5
        outs.append(obj(*_batch())["loss_aa"].detach().item())
    assert outs[1] == pytest.approx(2 * outs[0], rel=1e-5)


def test_aa_at_weight_zero_has_the_baselines_gradients(tmp_path):
    """The held-out selection's weight 0 (single_stage.selection.aa_weights) is the variant without AA: the same
    loss and the same gradient as the baseline's objective on the same net and batch."""
    grads, losses = [], []
    for variant, kw in (("baseline", {}), ("aa", {"aa": {"weight": 0.0}})):
        obj = _objective(tmp_path, variant, **kw)
        _two_region_pseudo_gt(obj)
        obj.net.eval()
        obj.epoch = 5
        loss = obj(*_batch())["loss"]
        loss.backward()
        losses.append(loss.item())
        grads.append(torch.cat([p.grad.flatten() for p in obj.net.parameters() if p.grad is not None]))
    assert losses[0] == pytest.approx(losses[1], rel=1e-6) and torch.allclose(grads[0], grads[1], atol=1e-7)
    with_aa = _objective(tmp_path, "aa", aa={"weight": 1.0})
    _two_region_pseudo_gt(with_aa)
    with_aa.net.eval()
    with_aa.epoch = 5
    assert with_aa(*_batch())["loss"].item() > losses[0] + 1e-4  # the term is not zero at weight 1


def test_short_training_decreases_the_loss(tmp_path):
    cfg = _cfg(tmp_path, warmup_epochs=0)
    torch.manual_seed(0)
    net = single_stage_from_config(cfg["single_stage"])
    obj = SingleStageObjective(net, "aa_lr", cfg["single_stage"])
    _two_region_pseudo_gt(obj)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    x, y = _batch()
    net.eval()  # fixed batch, no stochastic parts: the loss of a fixed input must go down
    first = None
    for _ in range(25):
        out = obj(x, y)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        first = out["loss"].detach().item() if first is None else first
    assert obj(x, y)["loss"].detach().item() < 0.7 * first


# ------------------------------------------------------------------------------------------------ the stages
@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_voc):
    tmp = tmp_path_factory.mktemp("ss_train")
    cfg = _cfg(tmp)
    paths = {k: tmp / f"{k}.json" for k in ("metrics", "plot")}
    run_stage(
        "train_single_stage",
        cfg,
        seed=0,
        variant="aa_lr",
        data=tiny_voc,
        ckpt=tmp / "model" / "checkpoint.pt",
        state=tmp / "state.pt",
        **paths,
    )
    return cfg, tmp, paths


def test_training_stage_writes_history_and_checkpoint(trained):
    cfg, tmp, paths = trained
    m = read_json(paths["metrics"])
    assert m["variant"] == "aa_lr" and [h["epoch"] for h in m["history"]] == [1, 2]
    assert m["history"][0]["loss_seg"] == 0.0 and m["history"][0]["loss_aa"] == 0.0  # warm-up epoch
    assert "seconds" not in m["history"][0]
    ckpt = load_checkpoint(tmp / "model" / "checkpoint.pt")
    assert ckpt["variant"] == "aa_lr" and ckpt["config"]["single_stage"]["embedding_dim"] == 8


def test_inference_writes_metrics_with_the_expected_keys(trained, tiny_voc):
    cfg, tmp, _ = trained
    out, pred = tmp / "seg_single_stage_aa_lr.json", tmp / "pred"
    run_stage(
        "eval_single_stage",
        cfg,
        seed=0,
        variant="aa_lr",
        ckpt=tmp / "model" / "checkpoint.pt",
        data=tiny_voc,
        metrics=out,
        pred=pred,
        threads=1,
    )
    m = read_json(out)
    scored = [v for v in m["per_class_iou"].values() if v is not None]
    assert m["miou"] == pytest.approx(sum(scored) / len(scored)) and m["variant"] == "aa_lr"
    scored = [v for v in m["per_class_iou_crf"].values() if v is not None]
    assert m["miou_crf"] == pytest.approx(sum(scored) / len(scored))
    assert m["protocol"]["images"] == 4 and m["protocol"]["scales"] == [1.0, 0.5]
    p = m["pseudo_labels"]
    assert p["split"] == "train" and p["images"] == 3
    assert {"miou", "miou_crf"} <= set(p["masks"]) and {"miou", "ignore_fraction"} <= set(p["pamr_pseudo_gt"])
    assert len(list(pred.glob("*.png"))) == 2


def test_score_cut_and_background_power():
    probs = np.full((21, 2, 2), 0.01, dtype=np.float32)
    probs[0], probs[3] = 0.5, 0.4
    keep = np.zeros(20, bool)
    out = method.postprocess(probs, keep, bg_pow=3.0)
    assert np.all(out[1:] == 0) and np.allclose(out[0], 0.125)
    keep[2] = True  # class 3 (plane 3) survives the cut and now beats the background (0.4 > 0.5^3)
    out = method.postprocess(probs, keep, bg_pow=3.0)
    assert np.all(out.argmax(0) == 3)
