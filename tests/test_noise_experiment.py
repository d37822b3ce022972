"""AA&LR's controlled-noise experiment (issue 16): LR's flips scored against the truth, the fixed-target training
path, the three stages on a tiny benchmark, the DAG's jobs and the report's tables."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from wsss import config, registry
from wsss.data import synthetic
from wsss.data.datasets import SegmentationDataset
from wsss.io import read_json, read_label_png
from wsss.methods.single_stage import SingleStageObjective, flip_stats
from wsss.models.single_stage import single_stage_from_config
from wsss.report.inputs import Experiment
from wsss.report.tables import noise_experiment, noise_memorisation
from wsss.variants import noise_settings, noise_variants, parse_noise

TINY = {
    "data": {"synthetic": {"n_train": 16, "n_val": 4, "size_min": 48, "size_max": 56}},
    "supportnet": {"backbone": {"widths": [8, 8, 16, 16]}, "train": {"epochs": 1, "batch_size": 8, "crop": 48}},
    "single_stage": {
        "backbone": {"widths": [8, 8, 16, 16]},
        "init_from_supportnet": False,
        "head_channels": 8,
        "embedding_dim": 8,
        "train": {"epochs": 2, "batch_size": 8, "crop": 48},
        "warmup_epochs": 0,
        "scales": [1.0],
        "flip": False,
        "lr": {"start_epoch": 0, "margin": 0.0, "relabel_segmentation": True},
        "noise_experiment": {"enabled": True, "kinds": ["erode"], "rates": [0.2], "variants": ["baseline", "lr"]},
    },
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("noise") / "VOC2012"
    cfg = config.validate(TINY)
    synthetic.generate(root, cfg["data"]["synthetic"])
    return cfg, root


def test_flip_stats_count_corrections_and_corruptions_against_the_truth():
    gt = torch.tensor([[0, 1, 1, 2, 255]])
    target = torch.tensor([[0, 0, 1, 2, 1]])  # pixel 1 wrong (1 -> 0); pixel 4's truth is ignored
    new = torch.tensor([[1, 1, 0, 255, 0]])  # 0: corrupts, 1: corrects, 2: corrupts, 3: ignores a right label
    st = {k: float(v) for k, v in flip_stats(target, new, gt).items()}
    assert st == pytest.approx({"lr_flips": 4 / 4, "lr_flips_correct": 1 / 4, "target_wrong": 1 / 4})
    # moving a wrong label to 255 (mode ignore) also removes it
    st = flip_stats(target, torch.tensor([[0, 255, 1, 2, 1]]), gt)
    assert float(st["lr_flips_correct"]) == pytest.approx(1 / 4) and float(st["lr_flips"]) == pytest.approx(1 / 4)


def test_the_fixed_target_path_records_flips_and_agreement(tiny):
    cfg, _ = tiny
    torch.manual_seed(0)
    net = single_stage_from_config(cfg["single_stage"])
    x = torch.randn(2, 3, 48, 48)
    labels = torch.zeros(2, 20)
    labels[:, 3] = 1
    gt = torch.zeros(2, 48, 48, dtype=torch.long)
    gt[:, 10:30, 10:30] = 4
    target = gt.clone()
    target[:, 10:30, 10:15] = 0  # a fifth of the object eroded away
    for variant, keys in (("baseline", {"agree_target", "agree_gt"}), ("lr", {"lr_flips", "lr_flips_correct"})):
        out = SingleStageObjective(net, variant, cfg["single_stage"])(x, labels, target=target, gt=gt)
        assert keys <= set(out)
        assert torch.isfinite(out["loss"])
    out = SingleStageObjective(net, "lr", cfg["single_stage"])(x, labels, target=target, gt=gt)
    assert float(out["target_wrong"]) == pytest.approx(float((target != gt).float().mean()), abs=0.02)
    with pytest.raises(ValueError, match="both"):
        SingleStageObjective(net, "baseline", cfg["single_stage"])(x, labels, target=target)


def test_labels_and_truth_are_augmented_alike(tiny):
    _, root = tiny
    ds = SegmentationDataset(
        root, "train", crop=40, train=True, seed=1, label_dir=root / "SegmentationClass", with_gt=True
    )
    for i in range(4):
        b = ds[i]
        assert torch.equal(b["label"], b["gt"]) and b["classes"].shape == (20,)
        assert b["classes"].sum() >= 1


def test_the_three_stages_on_a_tiny_benchmark(tiny, tmp_path):
    from wsss.stages import eval_noisy, make_noisy_labels, train_noisy

    cfg, root = tiny
    for noise in ("clean", "erode20"):
        make_noisy_labels.run(
            cfg, seed=0, noise=noise, data=root, labels=tmp_path / noise, metrics=tmp_path / f"n_{noise}.json"
        )
    m = read_json(tmp_path / "n_erode20.json")
    assert m["achieved_rate"] == pytest.approx(0.2, abs=0.02) and m["pixels"]["fg_to_bg"] == m["pixels"]["wrong"]
    assert read_json(tmp_path / "n_clean.json")["achieved_rate"] == 0.0
    some = sorted((tmp_path / "erode20").glob("*.png"))[0]
    assert (read_label_png(some) != read_label_png(root / "SegmentationClass" / some.name)).any()
    ck = tmp_path / "m.pt"
    train_noisy.run(
        cfg,
        seed=0,
        noise="erode20",
        variant="lr",
        data=root,
        labels=tmp_path / "erode20",
        ckpt=ck,
        metrics=tmp_path / "t.json",
        plot=tmp_path / "p.json",
        state=tmp_path / "s.pt",
    )
    t = read_json(tmp_path / "t.json")
    assert len(t["per_epoch"]) == 2
    last = t["per_epoch"][-1]
    assert 0 <= last["agree_gt"] <= 1 and last["target_wrong"] > 0
    assert last["lr_flips"] >= 0 and (last["lr_precision"] is None or 0 <= last["lr_precision"] <= 1)
    assert 0 < last["lr_recall"] <= 1 if last["lr_flips"] > 0 else last["lr_precision"] is None
    eval_noisy.run(cfg, seed=0, noise="erode20", variant="lr", data=root, ckpt=ck, metrics=tmp_path / "e.json")
    e = read_json(tmp_path / "e.json")
    assert 0 <= e["miou"] <= 1 and e["noise"] == "erode20"


def test_the_dag_trains_every_setting_and_variant_only_when_enabled():
    cfg = config.validate(TINY)
    assert noise_settings(cfg) == ["clean", "erode20"] and noise_variants(cfg) == ["baseline", "lr"]
    report = registry.STAGES["report"]
    paths = registry.input_paths(report, cfg, {})
    assert len(paths["noisy_seg"]) == 1 * 2 * 2 and len(paths["noisy_labels"]) == 2
    off = config.validate({**TINY, "single_stage": {**TINY["single_stage"], "noise_experiment": {"enabled": False}}})
    assert registry.input_paths(report, off, {})["noisy_seg"] == []
    assert parse_noise("body_to_background30") == ("body_to_background", 0.3)
    with pytest.raises(ValueError):
        parse_noise("blur10")
    with pytest.raises(Exception, match="whole percents"):
        config.validate({"single_stage": {"noise_experiment": {"rates": [0.125]}}})


def _exp(seed, miou_base, miou_lr, prec, more=None):
    e = Experiment(root=Path("."), nets=[], crf_nets=[], seg_sources=[], seed=seed)
    for z, rate in (("clean", 0.0), ("erode20", 0.2)):
        e.noisy_labels[z] = {"kind": "clean" if z == "clean" else "erode", "rate": rate, "achieved_rate": rate}
        runs = {"baseline": miou_base, "lr": miou_lr, **(more or {})}
        for v, m in ((v, by_setting[z]) for v, by_setting in runs.items()):
            e.noisy_seg[(z, v)] = {"miou": m, "miou_crf": m}
            per = [{"agree_target": 0.8, "agree_gt": 0.7}, {"agree_target": 0.9, "agree_gt": 0.6}]
            if v == "lr":
                per[-1].update(lr_precision=prec, lr_recall=0.1)
            e.noisy_train[(z, v)] = {"per_epoch": per}
            e.paths[f"seg_noisy_{z}_{v}"] = f"seg_noisy_{z}_{v}.json"
    return e


def test_the_noise_tables_pair_each_seed_with_its_baseline():
    exps = [
        _exp(0, {"clean": 0.6, "erode20": 0.5}, {"clean": 0.6, "erode20": 0.55}, 0.4),
        _exp(1, {"clean": 0.7, "erode20": 0.4}, {"clean": 0.7, "erode20": 0.47}, 0.6),
    ]
    f = noise_experiment(exps).frame.set_index(["setting", "variant"])
    row = f.loc[("erode20", "1-stage +LR")]
    assert row["miou"] == pytest.approx(0.51) and row["delta_vs_baseline"] == pytest.approx(0.06)
    assert row["delta_sd"] == pytest.approx(math.sqrt(2) * 0.01)  # paired: 0.05 and 0.07
    assert row["lr_precision"] == pytest.approx(0.5)
    assert math.isnan(f.loc[("erode20", "1-stage baseline"), "delta_vs_baseline"])
    mem = noise_memorisation(exps).frame.set_index(["setting", "variant"])
    assert mem.loc[("clean", "1-stage +LR"), "agree_gt_drop"] == pytest.approx(0.1)
    # the clean-to-noisy drop pairs each seed's clean and noisy model of the same variant: 0.05 and 0.23
    assert row["drop_vs_clean"] == pytest.approx(0.14) and row["drop_sd"] == pytest.approx(math.sqrt(2) * 0.09)
    assert math.isnan(f.loc[("clean", "1-stage +LR"), "drop_vs_clean"])


def test_what_lr_adds_is_paired_with_the_same_variant_without_lr():
    aa = {"clean": 0.65, "erode20": 0.58}
    exps = [
        _exp(
            s,
            {"clean": 0.6, "erode20": 0.5},
            {"clean": 0.6, "erode20": 0.5},
            0.5,
            more={"aa": aa, "aa_lr": {"clean": 0.6, "erode20": 0.56 + 0.01 * s}},
        )
        for s in (0, 1)
    ]
    f = noise_experiment(exps).frame.set_index(["setting", "variant"])
    row = f.loc[("erode20", "1-stage +AA+LR")]
    # against +AA (0.58), not against the baseline (0.50)
    assert row["delta_lr"] == pytest.approx(-0.015) and row["delta_vs_baseline"] == pytest.approx(0.065)
    assert f.loc[("erode20", "1-stage +LR"), "delta_lr"] == pytest.approx(0.0)
    assert math.isnan(f.loc[("erode20", "1-stage +AA"), "delta_lr"])


def test_the_noise_curve_figure_is_drawn(tmp_path):
    from wsss.report.figures import noise_curves

    exps = [_exp(s, {"clean": 0.6, "erode20": 0.5}, {"clean": 0.6, "erode20": 0.55}, 0.5) for s in (0, 1)]
    out = noise_curves(exps, tmp_path / "n.png")
    assert out.is_file() and out.stat().st_size > 1000
    assert np.asarray(Image.open(out)).ndim == 3


def test_a_supportnet_initialised_single_stage_net_needs_the_checkpoint():
    from wsss.io import WsssInputError
    from wsss.methods.single_stage import build_net

    cfg = config.validate({**TINY, "single_stage": {**TINY["single_stage"], "init_from_supportnet": True}})
    with pytest.raises(WsssInputError, match="--support"):
        build_net(cfg["single_stage"], None)
