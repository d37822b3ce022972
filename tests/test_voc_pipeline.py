"""The real-data path through the DAG: config/voc12.yaml's DAG, and the VOC + SBD stages run by Snakemake
against archives in the real layouts served from 127.0.0.1 (no internet), then the whole pipeline on them."""

import json

import pytest
import yaml
from conftest import BIN, REPO, copy_workflow, run

SBD_NAME = "benchmark.tgz"
VOC_NAME = "VOCtrainval_11-May-2012.tar"


def test_voc12_config_shows_the_full_dag():
    p = run([BIN / "snakemake", "-n", "--configfile", "config/voc12.yaml"], cwd=REPO)
    jobs = p.stdout.split("Job stats:")[1]
    for rule, n in [("download", 2), ("prepare_voc", 1), ("train_mainnet", 4), ("extract_cams", 5), ("train_seg", 2)]:
        assert f"\n{rule}" in jobs and f" {n}\n" in jobs.split(f"\n{rule}")[1].split("\n")[0] + "\n", rule


def _tiny_voc_config(work, server, archives) -> str:
    cfg = yaml.safe_load((REPO / "config/smoke.yaml").read_text())
    cfg["name"] = "vocmini"
    cfg["data"] = {
        "source": "voc_sbd",
        "train_split": "train_aug",
        "cam_split": "train",
        "val_split": "val",
        "voc": {
            "download_dir": "raw",
            "extract_dir": "raw/extracted",
            "expect_counts": False,
            # a mirror that drops the first connection midway (resume), then the good one
            "urls": {
                "voc2012_trainval": [f"{server.base}/drop/{VOC_NAME}"],
                "sbd": [f"{server.base}/corrupt/{SBD_NAME}", f"{server.base}/range/{SBD_NAME}"],
            },
            "md5": {"voc2012_trainval": archives["voc_md5"], "sbd": archives["sbd_md5"]},
            "timeout_s": 5,
        },
    }
    for section in ("supportnet", "segment"):
        cfg[section]["train"]["crop"] = 16
        cfg[section]["train"]["batch_size"] = 2
    cfg["mainnet"]["train"].update(crop=16, batch_size=2)
    # (smoke's batch of 8 is larger than these 6 training images: no step would be trained, and the trainer says so)
    cfg["single_stage"]["train"].update(crop=16, batch_size=2)
    cfg["refine"]["random_walk"]["train"].update(crop=16, batch_size=2)
    (work / "config/vocmini.yaml").write_text(yaml.safe_dump(cfg))
    return "config/vocmini.yaml"


def test_voc_sbd_data_stages_through_snakemake(tmp_path, server, archives):
    work = copy_workflow(tmp_path / "w")
    cfg = _tiny_voc_config(work, server, archives)
    run([BIN / "snakemake", "results/vocmini/data/VOC2012", "--cores", "1", "--configfile", cfg], cwd=work)
    data = work / "results/vocmini/data/VOC2012"
    splits = {s: (data / f"ImageSets/Segmentation/{s}.txt").read_text().split() for s in ("train", "val", "train_aug")}
    assert len(splits["train"]) == 3 and len(splits["val"]) == 3 and len(splits["train_aug"]) == 6
    assert not set(splits["train_aug"]) & set(splits["val"])
    labels = json.loads((data / "labels.json").read_text())
    assert labels["2010_000100"] == [9, 18]  # chair (difficult) + sofa, from the XML
    report = json.loads((work / "results/vocmini/metrics/data.json").read_text())
    assert report["data_source"] == "voc_sbd"
    # the XML/mask disagreement is reported, not dropped
    assert "2007_000032" in (data / "label_disagreements.json").read_text()
    assert '"disagreements": 1' in json.dumps(report)
    # the drop mirror was resumed with a Range request; the corrupt SBD mirror was skipped for the good one
    assert any(r for path, r in server.requests if path.startswith("/drop/"))
    assert any(path.startswith("/range/") for path, _ in server.requests)


@pytest.mark.slow
def test_whole_pipeline_on_the_served_voc(tmp_path, server, archives):
    work = copy_workflow(tmp_path / "w")
    cfg = _tiny_voc_config(work, server, archives)
    run([BIN / "snakemake", "--cores", "2", "--configfile", cfg], cwd=work)
    seg = json.loads((work / "results/vocmini/seed0/metrics/seg_pseudo.json").read_text())
    scored = [v for v in seg["per_class_iou"].values() if v is not None]
    assert seg["protocol"]["split"] == "val" and seg["protocol"]["images"] == 3
    assert seg["miou"] == pytest.approx(sum(scored) / len(scored))
    cam = json.loads((work / "results/vocmini/seed0/metrics/cam_supportnet.json").read_text())
    assert cam["protocol"]["split"] == "train" and "part_recall" not in cam  # no synthetic probes on real data
    assert (work / "results/vocmini/report/index.html").is_file()


def test_real_voc_sample_through_the_evaluation():
    """The 60 official VOC 2012 masks in ../shared: perfect predictions score 1, all-background a hand-computed
    value (255 ignored)."""
    import os
    from pathlib import Path

    import numpy as np

    from wsss.data import voc
    from wsss.io import read_label_png
    from wsss.metrics import ConfusionMatrix

    root = Path(os.environ.get("WSSS_VOC_SAMPLE", REPO.parent / "shared/data/voc2012-sample")) / "VOC2012"
    if not root.is_dir():
        pytest.skip(f"{root} absent")
    ids = voc.read_split(root, "val")
    masks = [read_label_png(voc.mask_path(root, i)) for i in ids]
    perfect, background = ConfusionMatrix(), ConfusionMatrix()
    for m in masks:
        perfect.update(m, m)
        background.update(np.zeros_like(m), m)
    assert perfect.compute()["miou"] == pytest.approx(1.0)
    valid = np.concatenate([m[m != 255] for m in masks])
    classes = np.unique(valid)
    expected = (valid == 0).sum() / valid.size / len(classes)  # only background scores, over the present classes
    assert background.compute()["miou"] == pytest.approx(expected)
    assert all(set(voc.labels_from_mask(m)) <= set(range(1, 21)) for m in masks)
