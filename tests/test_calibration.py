"""Held-out calibration (issue 14): every value chosen on the GT is chosen on the first ids of cam_split and the
numbers are scored on the others; the CRF's joint (CAM power γ, background α) sweep, and its edge warning."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from conftest import run_stage
from test_cam_measures import TINY, _write_cams

from wsss import config
from wsss.data import synthetic, voc
from wsss.evaluation import held_out
from wsss.io import WsssInputError
from wsss.refine import calibration


def test_held_out_takes_the_first_ids_and_leaves_some_to_score():
    ids = [f"i{k}" for k in range(10)]
    assert held_out(ids, 0.2, "train") == (ids[:2], ids[2:])
    assert held_out(ids, 0.01, "train") == (ids[:1], ids[1:])  # at least one calibration image
    with pytest.raises(WsssInputError, match="calibration_fraction.*no image to score"):
        held_out(ids, 0.96, "train")
    with pytest.raises(WsssInputError, match="at least 2 images"):
        config.validate({"data": {"synthetic": {"n_train": 1}}})


def test_edges_names_each_axis_whose_best_is_its_end():
    grid = {"cam_gamma": [0.5, 1.0, 2.0], "bg_alpha": [1.0, 2.0, 4.0]}
    assert calibration.edges({"cam_gamma": 1.0, "bg_alpha": 2.0}, grid) == []
    assert calibration.edges({"cam_gamma": 0.5, "bg_alpha": 4.0}, grid) == ["cam_gamma low", "bg_alpha high"]
    assert calibration.edges({"cam_gamma": 1.0, "bg_alpha": 1.0}, {"cam_gamma": [1.0], "bg_alpha": [1.0, 2.0]}) == [
        "bg_alpha low"
    ]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    work = tmp_path_factory.mktemp("calibration")
    cfg = config.validate(json.loads(json.dumps(TINY)))
    root = work / "VOC2012"
    synthetic.generate(root, cfg["data"]["synthetic"])
    _write_cams(root, work / "cams", lambda x: x)
    return cfg, root, work / "cams"


def test_joint_sweep_tries_every_pair_on_calibration_ids_only(tiny, caplog):
    cfg, root, cams = tiny
    ids = voc.read_split(root, "train")
    rcfg = {
        **cfg["refine"],
        "crf": {**cfg["refine"]["crf"], "n_iter": 2},
        "calibration_gammas": [0.5, 1.0, 3.0],
        "calibration_alphas": [0.25, 2.0, 32.0],
        "calibration_images": 3,
    }
    with caplog.at_level(logging.WARNING, logger="wsss"):
        chosen, gamma, rec = calibration.crf_sweep(
            rcfg, ids[:2], cams_dir=cams, data_root=root, threads=1, net_name="supportnet"
        )
    assert rec["images"] == 2  # calibration_images 3 is capped by the 2 calibration ids given
    assert [(r["cam_gamma"], r["bg_alpha"]) for r in rec["curve"]] == [
        (g, a) for g in (0.5, 1.0, 3.0) for a in (0.25, 2.0, 32.0)
    ]
    best = max(rec["curve"], key=lambda r: r["miou"])
    assert (
        rec["chosen"]
        == {"cam_gamma": gamma, "bg_alpha": chosen["bg_alpha"]}
        == {
            "cam_gamma": best["cam_gamma"],
            "bg_alpha": best["bg_alpha"],
        }
    )
    # the grid's points differ: γ does reach the CRF
    assert len({round(r["miou"], 9) for r in rec["curve"]}) > 3
    assert rec["at_edge"] == calibration.edges(
        rec["chosen"], {"cam_gamma": [0.5, 1.0, 3.0], "bg_alpha": [0.25, 2.0, 32.0]}
    )
    warned = [r for r in caplog.records if "edge of the grid" in r.getMessage()]
    assert bool(warned) == bool(rec["at_edge"])
    # the same calibration from the other ids gives another curve: the ids given are the ones scored
    _, _, other = calibration.crf_sweep(rcfg, ids[2:4], cams_dir=cams, data_root=root, threads=1, net_name="s")
    assert [r["miou"] for r in other["curve"]] != [r["miou"] for r in rec["curve"]]


def test_a_one_point_axis_never_warns_and_the_best_interior_point_does_not(tiny, caplog, monkeypatch):
    cfg, root, cams = tiny
    ids = voc.read_split(root, "train")
    # a score with its maximum inside the grid: no warning; at the end: a warning naming the axis
    for peak, expect in ((2.0, []), (4.0, ["bg_alpha high"])):
        monkeypatch.setattr(
            calibration, "score", lambda ids, rcfg, gamma, peak=peak, **kw: -abs(rcfg["bg_alpha"] - peak)
        )
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="wsss"):
            _, gamma, rec = calibration.crf_sweep(
                {**cfg["refine"], "calibration_gammas": [1.0], "calibration_alphas": [1.0, 2.0, 4.0]},
                ids[:2],
                cams_dir=cams,
                data_root=root,
                threads=1,
                net_name="n",
            )
        assert rec["at_edge"] == expect and gamma == 1.0
        assert bool([r for r in caplog.records if "bg_alpha high" in r.getMessage()]) == bool(expect)


def test_crf_stage_calibrates_on_the_first_ids_and_scores_the_rest(tiny, tmp_path):
    cfg, root, cams = tiny
    cfg = json.loads(json.dumps(cfg))
    cfg["refine"].update(calibrate_background="crf_sweep", calibration_gammas=[1.0, 2.0], calibration_alphas=[1.0, 4.0])
    cfg["refine"]["crf"]["n_iter"] = 2
    m = tmp_path / "p.json"
    run_stage("crf", cfg, seed=0, net="supportnet", data=root, cams=cams, pseudo=tmp_path / "pseudo", metrics=m)
    out = json.loads(m.read_text())
    ids = voc.read_split(root, "train")
    n_cal = round(0.2 * len(ids))
    assert out["protocol"]["images"] == len(ids) - n_cal
    assert out["protocol"]["background_calibration"]["images"] == n_cal
    assert out["protocol"]["calibration_subset"].startswith(f"first {n_cal} ids of train")
    from wsss.evaluation import score_labels

    assert out["miou"] == pytest.approx(score_labels(tmp_path / "pseudo", root, ids[n_cal:])["miou"])
    assert out["miou"] != pytest.approx(score_labels(tmp_path / "pseudo", root, ids)["miou"])
    assert np.isfinite(out["protocol"]["cam_power"])
