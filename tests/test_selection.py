"""The held-out choice of the AA weight (issue 16; single_stage.selection): the weight reaches the training, the
evaluation scores the calibration subset of cam_split (chosen on) apart from val (reported), the DAG has one job
per (variant, weight) only when asked, and the report picks on the held-out number, not on val."""

from pathlib import Path

import pytest

from wsss import config, registry
from wsss.data import synthetic, voc
from wsss.evaluation import held_out
from wsss.io import WsssInputError, read_json, write_json
from wsss.report.inputs import Experiment
from wsss.report.tables import aa_selection
from wsss.variants import format_weight, selection_variants, selection_weights

TINY = {
    "data": {"synthetic": {"n_train": 16, "n_val": 4, "size_min": 48, "size_max": 56}},
    "supportnet": {"backbone": {"widths": [8, 8, 16, 16]}, "train": {"epochs": 1, "batch_size": 8, "crop": 48}},
    "single_stage": {
        "backbone": {"widths": [8, 8, 16, 16]},
        "init_from_supportnet": False,
        "head_channels": 8,
        "embedding_dim": 8,
        "train": {"epochs": 1, "batch_size": 8, "crop": 48},
        "warmup_epochs": 0,
        "scales": [1.0],
        "flip": False,
        "selection": {"enabled": True, "variants": ["aa", "aa_lr"], "aa_weights": [0.05, 0.5]},
    },
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("select") / "VOC2012"
    cfg = config.validate(TINY)
    synthetic.generate(root, cfg["data"]["synthetic"])
    return cfg, root


def test_weights_become_their_shortest_decimal_wildcards():
    assert [format_weight(w) for w in (0, 0.01, 0.03, 0.1, 1.0, 2.5, 10)] == [
        "0",
        "0.01",
        "0.03",
        "0.1",
        "1",
        "2.5",
        "10",
    ]
    assert all(float(format_weight(w)) == w for w in (0, 0.01, 0.03, 0.1, 1.0, 2.5))
    with pytest.raises(ValueError, match="plain decimal"):
        format_weight(1e-5)


def test_the_dag_has_one_job_per_variant_and_weight_only_when_asked():
    cfg = config.validate(TINY)
    assert selection_variants(cfg) == ["aa", "aa_lr"] and selection_weights(cfg) == ["0.05", "0.5"]
    report = registry.STAGES["report"]
    paths = sorted(str(p) for p in registry.input_paths(report, cfg, {})["select"])
    assert len(paths) == 2 * 2 and any(p.endswith("seed0/metrics/select_aa_lr_aa0.05.json") for p in paths)
    off = config.validate({**TINY, "single_stage": {**TINY["single_stage"], "selection": {"enabled": False}}})
    assert selection_weights(off) == [] and registry.input_paths(report, off, {})["select"] == []


def test_a_change_of_the_configured_weight_leaves_the_selection_jobs_alone():
    """The job's wildcard replaces single_stage.aa.weight: its slice must not hold it (else changing the weight
    the main variants train with would re-train every selection model), while the other AA keys stay in it."""
    stage = registry.STAGES["train_select"]
    wc = {"seed": 0, "variant": "aa", "aaw": "0.5"}
    a = config.validate(TINY)
    b = config.validate({**TINY, "single_stage": {**TINY["single_stage"], "aa": {"weight": 0.7}}})
    c = config.validate({**TINY, "single_stage": {**TINY["single_stage"], "aa": {"dilations": [1, 2]}}})
    assert registry.slice_text(stage, a, wc) == registry.slice_text(stage, b, wc)
    assert registry.slice_text(stage, a, wc) != registry.slice_text(stage, c, wc)
    main = registry.STAGES["train_single_stage"]
    assert registry.slice_text(main, a, {"seed": 0, "variant": "aa"}) != registry.slice_text(
        main, b, {"seed": 0, "variant": "aa"}
    )


def test_the_stages_train_at_the_wildcard_weight_and_score_the_calibration_subset_apart(tiny, tmp_path):
    from wsss.stages import eval_select, train_select

    cfg, root = tiny
    view = config.stage_view(cfg, registry.STAGES["train_select"], {"seed": 0, "variant": "aa", "aaw": "0.5"})
    ck = tmp_path / "m.pt"
    train_select.run(
        view,
        seed=0,
        variant="aa",
        aaw="0.5",
        data=root,
        ckpt=ck,
        metrics=tmp_path / "t.json",
        plot=tmp_path / "p.json",
        state=tmp_path / "s.pt",
    )
    import torch

    assert torch.load(ck, weights_only=False)["config"]["single_stage"]["aa"]["weight"] == 0.5
    assert (
        read_json(tmp_path / "t.json")["aa_weight"] == 0.5 and "loss_aa" in read_json(tmp_path / "t.json")["history"][0]
    )
    ev = config.stage_view(cfg, registry.STAGES["eval_select"], {"seed": 0, "variant": "aa", "aaw": "0.5"})
    eval_select.run(ev, seed=0, variant="aa", aaw="0.5", data=root, ckpt=ck, metrics=tmp_path / "e.json")
    e = read_json(tmp_path / "e.json")
    calib, scored = held_out(voc.read_split(root, "train"), cfg["data"]["calibration_fraction"], "train")
    assert e["heldout"]["images"] == len(calib) < len(calib) + len(scored)
    assert e["heldout"]["split"] == "train" and e["val"]["split"] == "val"
    assert e["val"]["images"] == len(voc.read_split(root, "val")) and e["aa_weight"] == 0.5
    assert all(0 <= e[p][k] <= 1 for p in ("heldout", "val") for k in ("miou", "miou_crf"))
    with pytest.raises(WsssInputError, match="not the job's 0.05"):
        eval_select.run(ev, seed=0, variant="aa", aaw="0.05", data=root, ckpt=ck, metrics=tmp_path / "x.json")


def _exp(tmp_path: Path, seed: int, scores: dict) -> Experiment:
    e = Experiment(tmp_path / f"seed{seed}", [], [], [], seed=seed)
    for (v, w), (heldout, val) in scores.items():
        d = {
            "heldout": {"miou": heldout, "miou_crf": heldout + 0.01, "ids": "the first 3 ids of train"},
            "val": {"miou": val, "miou_crf": val + 0.01},
            "protocol": {"chosen_on": "heldout"},
        }
        stem = f"select_{v}_aa{w}"
        write_json(tmp_path / f"{stem}_{seed}.json", d)
        e.select[(v, w)] = d
        e.paths[stem] = tmp_path / f"{stem}_{seed}.json"
    return e


def test_the_report_picks_the_best_held_out_weight_not_the_best_on_val(tmp_path):
    # weight 0.1 is best on the held-out images in the mean over two seeds; 1 would win on val
    s0 = {("aa", "0.1"): (0.50, 0.40), ("aa", "1"): (0.45, 0.48)}
    s1 = {("aa", "0.1"): (0.52, 0.42), ("aa", "1"): (0.49, 0.46)}
    t = aa_selection([_exp(tmp_path, 0, s0), _exp(tmp_path, 1, s1)], "miou_crf", configured_weight=1.0).frame
    t = t.set_index("aa_weight")
    assert t.loc[0.1, "chosen"] == "yes" and t.loc[1.0, "chosen"] == ""
    assert t.loc[1.0, "best_on_val"] == "yes" and t.loc[1.0, "configured"] == "yes"
    assert t.loc[0.1, "heldout_miou_crf"] == pytest.approx(0.52) and t.loc[0.1, "val_miou"] == pytest.approx(0.41)
    assert t.loc[0.1, "heldout_miou_sd"] == pytest.approx(0.01414, abs=1e-4)
