"""End to end: the smoke DAG through Snakemake, then the re-run and invalidation properties of the DAG."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import BIN, run
from PIL import Image

pytestmark = pytest.mark.e2e

NETS = ["supportnet", "mainnet_baseline", "mainnet_rcm_mam", "mainnet_puzzle"]
CRF_NETS = ["supportnet", "mainnet_baseline", "mainnet_rcm_mam"]


def _json(p: Path):
    return json.loads(p.read_text())


def _mean_of_classes(m: dict, key: str = "per_class_iou") -> float:
    """The mean IoU over the classes a metric file scores (absent classes are null)."""
    values = [v for v in m[key].values() if v is not None]
    return sum(values) / len(values)


N_CALIB = 5  # smoke: data.calibration_fraction 0.2 of the 24 train ids (round(4.8)); the other 19 are scored


def _rescored(folder: Path, data: Path, split: str) -> float:
    """mIoU of a pseudo-label folder recomputed from its PNGs on the scored ids of ``split`` (the ones after the
    calibration subset; pseudo-label 255 skipped, as the stages do)."""
    from wsss.evaluation import score_labels

    ids = (data / f"ImageSets/Segmentation/{split}.txt").read_text().split()
    return score_labels(folder, data, ids[N_CALIB:])["miou"]


def test_every_output_and_metric(smoke_run):
    root = smoke_run / "results" / "smoke"
    exp = root / "seed0"  # the smoke config has one seed
    ids = (root / "data/VOC2012/ImageSets/Segmentation/train.txt").read_text().split()
    val_ids = (root / "data/VOC2012/ImageSets/Segmentation/val.txt").read_text().split()
    assert len(ids) == 24 and len(val_ids) == 12
    for net in NETS:
        ck = __import__("torch").load(exp / f"models/{net}/checkpoint.pt", weights_only=False)
        assert {"model", "optimizer", "scheduler", "epoch", "rng", "config"} <= set(ck)
        m = _json(exp / f"metrics/cam_{net}.json")
        # the sweep covers the configured thresholds plus the fixed one; its best on the calibration subset is the
        # threshold, and the reported mIoU is the scored ids' at that threshold
        assert m["best_threshold"] in (0.1, 0.15, 0.2, 0.3)
        assert [c["threshold"] for c in m["curve"]] == [0.1, 0.15, 0.2, 0.3]
        assert m["best_threshold"] == max(m["calibration_curve"], key=lambda c: c["miou"])["threshold"]
        at_best = next(c["miou"] for c in m["curve"] if c["threshold"] == m["best_threshold"])
        assert at_best == pytest.approx(m["miou"]) == pytest.approx(_mean_of_classes(m))
        assert m["protocol"]["images"] == len(ids) - N_CALIB and "first 5 ids" in m["protocol"]["calibration_subset"]
        assert m["part_recall"] > 0 and m["body_recall"] > 0
        # the rescaling-invariant section: both rings, a rate reached on the scored ids near the one matched on
        # the calibration subset, and a part-biased CAM's recall falling with the distance to the part
        inv = m["matched_rate"]
        assert inv["rate"] == 0.45 and list(inv["rings"]) == ["1-2", "3-4"]
        r12 = inv["rings"]["1-2"]
        assert 0.2 < r12["achieved_rate"] < 0.7 and 0 < r12["body_recall"] < r12["part_recall"]
        assert 0 < r12["boundary_miou"] < 1 and r12["context_fp"] is not None
        if net == "supportnet":  # its CAM covers the discriminative part more than the body (the planted bias)
            assert m["part_recall"] > m["body_recall"] + 0.03
        assert m["protocol"]["split"] == "train"
        cams = sorted((exp / f"cams/{net}").glob("*.npz"))
        assert [c.stem for c in cams] == sorted(ids)
        z = np.load(cams[0])
        img = Image.open(root / f"data/VOC2012/JPEGImages/{cams[0].stem}.jpg")
        assert z["cam"].dtype == np.float16 and z["cam"].shape[1:] == (img.height, img.width)
        assert z["cam"].max() <= 1.0 + 1e-3
        hist = _json(exp / f"metrics/train_{net}.json")["history"]
        assert hist and all(np.isfinite(h["loss"]) for h in hist)
    for net in CRF_NETS:
        m = _json(exp / f"metrics/pseudo_{net}_crf.json")
        assert m["miou"] == pytest.approx(_rescored(exp / f"pseudo/{net}_crf", root / "data/VOC2012", "train"))
        # smoke: refine.calibrate_background crf_sweep over gammas 1, 2 x alphas 1, 2, 4 on the 5 calibration
        # images (refine.calibration_images 6 is capped by the subset); the best point is used
        cal = m["protocol"]["background_calibration"]
        grid = [(r["cam_gamma"], r["bg_alpha"]) for r in cal["curve"]]
        assert grid == [(g, a) for g in (1.0, 2.0) for a in (1.0, 2.0, 4.0)] and cal["images"] == N_CALIB
        best = max(cal["curve"], key=lambda r: r["miou"])
        assert cal["chosen"] == {"cam_gamma": best["cam_gamma"], "bg_alpha": best["bg_alpha"]}
        assert f"alpha {best['bg_alpha']:.4g}" in m["protocol"]["background"]
        assert m["protocol"]["cam_power"] == best["cam_gamma"] and m["protocol"]["images"] == len(ids) - N_CALIB
        pngs = sorted((exp / f"pseudo/{net}_crf").glob("*.png"))
        assert len(pngs) == len(ids)
        assert Image.open(pngs[0]).mode == "P"
    for src in ("pseudo", "gt"):
        m = _json(exp / f"metrics/seg_{src}.json")
        assert m["miou"] == pytest.approx(_mean_of_classes(m))
        assert m["miou_crf"] == pytest.approx(_mean_of_classes(m, "per_class_iou_crf"))
        assert m["protocol"]["images"] == len(val_ids)
        assert len(list((exp / f"seg/{src}/val").glob("*.png"))) == 2
    # the affinity random walk on the final MainNet, and DeepLab trained on its labels (smoke: pseudo_labels rw)
    rw = _json(exp / "metrics/pseudo_mainnet_rcm_mam_rw.json")
    assert rw["protocol"]["refinement"] == "affinity random walk"
    # smoke: refine.random_walk.calibration_values 0.15, 0.25, 0.35 on the calibration images; the best is walked
    cal = rw["protocol"]["background_calibration"]
    assert [r["bg_score"] for r in cal["curve"]] == [0.15, 0.25, 0.35] and cal["images"] == N_CALIB
    best = max(cal["curve"], key=lambda r: r["miou"])
    assert cal["chosen"] == {"bg_score": best["bg_score"]} == {"bg_score": rw["protocol"]["random_walk"]["bg_score"]}
    assert rw["miou"] == pytest.approx(_rescored(exp / "pseudo/mainnet_rcm_mam_rw", root / "data/VOC2012", "train"))
    rw_pngs = sorted((exp / "pseudo/mainnet_rcm_mam_rw").glob("*.png"))
    assert len(rw_pngs) == len(ids)
    labels_rw = np.array(Image.open(rw_pngs[0]))
    z = np.load(exp / f"cams/mainnet_rcm_mam/{rw_pngs[0].stem}.npz")
    assert set(np.unique(labels_rw)) <= {0, *z["keys"].tolist(), 255}  # the image's classes, background, unsure
    # the walked (and CRF'd) labels keep foreground: a per-plane normalisation of the walked scores once lifted the
    # constant background plane to 1 and the CRF made every pixel background
    all_rw = np.concatenate([np.array(Image.open(p)).ravel() for p in rw_pngs])
    assert ((all_rw > 0) & (all_rw < 255)).mean() > 0.05
    assert "mainnet_rcm_mam_rw" in _json(exp / "metrics/seg_pseudo.json")["train_labels"]
    assert _json(exp / "metrics/train_affinity_mainnet_rcm_mam.json")["history"]
    # class-balanced CE: the weights written are median-frequency weights of the label counts
    tr = _json(exp / "metrics/train_seg_pseudo.json")
    counts = {k: v for k, v in tr["label_pixel_counts"].items() if v > 0}
    med = float(np.median([c / sum(counts.values()) for c in counts.values()]))
    for k, c in counts.items():
        assert abs(tr["class_weights"][k] - med / (c / sum(counts.values()))) < 1e-4
    # the VOC-server export: one palette PNG per image of the split under the comp6 path, ids 0..20
    import tarfile

    with tarfile.open(exp / "export/voc_val_comp6.tar.gz") as tar:
        names = sorted(tar.getnames())
        assert names == sorted(f"results/VOC2012/Segmentation/comp6_test_cls/{i}.png" for i in val_ids)
        png = Image.open(tar.extractfile(names[0]))
        assert png.mode == "P" and np.array(png).max() <= 20
        assert png.size == Image.open(root / f"data/VOC2012/JPEGImages/{Path(names[0]).stem}.jpg").size
    rep = root / "report"
    html = (rep / "index.html").read_text()
    assert "http://" not in html.replace("http://www.w3.org", "") and "data:image/png;base64" in html
    csv = (rep / "tables.csv").read_text()
    # a number in the report is the number in the metric file
    assert f"{_json(exp / 'metrics/cam_supportnet.json')['miou']:.6f}"[:6] in csv
    md = (rep / "tables.md").read_text()
    assert "+random walk pseudo labels" in md and "Mean and spread over seeds" in md
    # the single-stage method (AA&LR): its baseline and full variant trained, evaluated and in the report
    for v in ("baseline", "aa_lr"):
        m = _json(exp / f"metrics/seg_single_stage_{v}.json")
        assert m["miou"] == pytest.approx(_mean_of_classes(m)) and m["variant"] == v
        assert f"seed0/metrics/seg_single_stage_{v}.json" in md
    assert "AA&LR single-stage model (val)" in md and "1-stage +AA+LR" in md
    for fig in ("threshold_curves", "training_curves", "qualitative_train", "qualitative_val", "synthetic_samples"):
        assert (rep / "figures" / f"{fig}.png").is_file()
    # no temporary leftovers of the atomic writers, and no resumable state once the trainings have finished
    assert not [p for p in exp.rglob("*") if ".tmp" in p.name]
    assert not [p for p in (exp / "state").rglob("*.pt")]
    # every stage read exactly the config keys it declared (undeclared ones would have failed the job)
    logs = [p.read_text() for p in root.rglob("logs/*.log") if not p.name.startswith("config_")]
    assert len(logs) == 28  # one per stage job of the smoke DAG
    assert not [t for t in logs if "declares config keys it did not read" in t]


def _dry_run_jobs(work: Path, *extra) -> dict:
    p = run([BIN / "snakemake", "-n", "--cores", "2", "--configfile", "config/smoke.yaml", *extra], cwd=work)
    out = p.stdout + p.stderr
    if "Nothing to be done" in out:
        return {}
    table = out.split("Job stats:")[1].split("Reasons:")[0] if "Job stats:" in out else ""
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M) if m.group(1) != "total"}


def test_rerun_with_nothing_changed_runs_no_job(smoke_run):
    assert _dry_run_jobs(smoke_run) == {}


def test_changing_a_crf_parameter_reruns_only_refinement_and_after(smoke_run):
    cfg_path = smoke_run / "config/smoke.yaml"
    original = cfg_path.read_text()
    try:
        cfg = yaml.safe_load(original)
        cfg["refine"]["crf"]["n_iter"] = 3
        cfg_path.write_text(yaml.safe_dump(cfg))
        jobs = _dry_run_jobs(smoke_run)
    finally:
        cfg_path.write_text(original)
    # CRF labels feed the affinity net (label_source crf), whose walk feeds DeepLab (pseudo_labels rw)
    # the slices of crf, random_walk (it runs a CRF of the walked scores in smoke) and the report changed
    assert jobs == {
        "config": 3,
        "crf": 3,
        "train_affinity": 1,
        "random_walk": 1,
        "train_seg": 1,
        "eval_seg": 1,
        "export_seg": 1,
        "report": 1,
        "all": 1,
    }


def test_adding_a_seed_runs_only_that_seed(smoke_run):
    cfg_path = smoke_run / "config/smoke.yaml"
    original = cfg_path.read_text()
    try:
        cfg = yaml.safe_load(original)
        cfg["seeds"] = [0, 1]
        cfg_path.write_text(yaml.safe_dump(cfg))
        jobs = _dry_run_jobs(smoke_run)
        out = run([BIN / "snakemake", "-n", "--cores", "2", "--configfile", "config/smoke.yaml"], cwd=smoke_run)
    finally:
        cfg_path.write_text(original)
    # every per-seed job once (for seed 1), the shared data not again, and the report that gathers both seeds
    assert jobs == {
        "config": 1,
        "train_supportnet": 1,
        "train_mainnet": 3,
        "extract_cams": 4,
        "eval_cams": 4,
        "crf": 3,
        "train_affinity": 1,
        "random_walk": 1,
        "train_seg": 2,
        "eval_seg": 2,
        "export_seg": 1,
        "train_single_stage": 2,
        "eval_single_stage": 2,
        "report": 1,
        "all": 1,
    }
    text = out.stdout + out.stderr
    assert "results/smoke/seed1/" in text
    assert not re.search(r"output: [^\n]*results/smoke/seed0/", text)


def test_command_line_overrides_are_refused(smoke_run):
    p = run(
        [BIN / "snakemake", "-n", "--configfile", "config/smoke.yaml", "--config", "name=other"],
        cwd=smoke_run,
        check=False,
    )
    assert p.returncode != 0
    assert "--config do not reach the stages" in p.stdout + p.stderr


def test_snakemake_report_embeds_ours(smoke_run):
    run([BIN / "snakemake", "--configfile", "config/smoke.yaml", "--report", "sm_report.zip"], cwd=smoke_run)
    import zipfile

    z = zipfile.ZipFile(smoke_run / "sm_report.zip")
    ours = (smoke_run / "results/smoke/report/tables.md").read_bytes()
    embedded = [n for n in z.namelist() if n.endswith("/tables.md")]
    assert embedded and z.read(embedded[0]) == ours  # our report, as the pipeline wrote it


def _metric_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("metrics/*.json"))}


def _set(cfg_path: Path, section: str, key: str, value) -> None:
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg.setdefault(section, {}).setdefault("train" if key == "lr" else "crf", {})[key] = value
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))


def _copy_run(smoke_run: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(smoke_run, dst, symlinks=True)  # file times kept: the copy is up to date
    assert _dry_run_jobs(dst) == {}
    return dst


@pytest.mark.slow
@pytest.mark.parametrize("section,key,value", [("refine", "n_iter", 3), ("supportnet", "lr", 0.004)])
def test_an_upstream_change_retrains_downstream_and_reverting_restores_every_metric(
    smoke_run, tmp_path, section, key, value
):
    """Issue 12's two reproductions: a CRF parameter (its labels feed the affinity net, whose walk feeds DeepLab)
    and SupportNet's learning rate (every MainNet starts from it). The re-run trains the downstream networks afresh
    (no stale resume state, no "resumed" in their logs) and their metrics change; reverting the config reproduces
    every metric file of the first run byte for byte."""
    work = _copy_run(smoke_run, tmp_path / "run")
    root = work / "results/smoke"
    first = _metric_files(root)
    cfg_path = work / "config/smoke.yaml"
    original = cfg_path.read_text()
    _set(cfg_path, section, key, value)
    run([BIN / "snakemake", "--cores", "2", "--configfile", "config/smoke.yaml"], cwd=work, timeout=1500)
    changed = _metric_files(root)
    retrained = (
        ["train_affinity_mainnet_rcm_mam", "train_seg_pseudo"]
        if section == "refine"
        else [
            "train_supportnet",
            "train_mainnet_baseline",
            "train_mainnet_rcm_mam",
            "train_affinity_mainnet_rcm_mam",
            "train_seg_pseudo",
            "train_seg_gt",
            "train_single_stage_aa_lr",
        ]
    )
    for name in retrained:
        log = (root / f"seed0/logs/{name}.log").read_text()
        assert "resumed from" not in log, name
    moved = {
        "refine": ["pseudo_supportnet_crf", "train_affinity_mainnet_rcm_mam", "seg_pseudo"],
        "supportnet": [
            "train_supportnet",
            "train_mainnet_baseline",
            "train_mainnet_rcm_mam",
            "cam_mainnet_rcm_mam",
            "seg_pseudo",
        ],
    }[section]
    for name in moved:
        f = f"seed0/metrics/{name}.json"
        assert changed[f] != first[f], f"{f} did not change after {section}.{key} changed"
    if section == "refine":  # the classifiers and their CAMs are upstream of the CRF: untouched
        assert all(changed[f] == first[f] for f in first if "/cam_" in f or "train_mainnet" in f)
    cfg_path.write_text(original)
    run([BIN / "snakemake", "--cores", "2", "--configfile", "config/smoke.yaml"], cwd=work, timeout=1500)
    assert _metric_files(root) == first


def test_outputs_are_readable_by_others_and_byte_reproducible(smoke_run, tmp_path):
    """Every output of the run has the modes a plain open()/mkdir() gives under the umask (0644 / 0755 under 022),
    and the dataset folder, the export archive and the report page come out byte-identical when made again from
    the same inputs (no random temp names, no timings, no dates)."""
    import os
    import stat

    root = smoke_run / "results/smoke"
    umask = os.umask(0o022)
    os.umask(umask)
    wrong = [
        (str(p), oct(stat.S_IMODE(p.stat().st_mode)))
        for p in [root, *root.rglob("*")]
        if stat.S_IMODE(p.stat().st_mode) != ((0o777 if p.is_dir() else 0o666) & ~umask)
    ]
    assert not wrong, wrong[:5]

    def files(folder: Path) -> dict:
        return {
            str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".snakemake_timestamp"
        }  # (Snakemake's marker in folder outputs)

    params = "results/smoke/params"
    run(
        [
            BIN / "wsss",
            "make_data",
            "--params",
            f"{params}/make_data.json",
            "--data",
            tmp_path / "VOC2012",
            "--metrics",
            tmp_path / "data.json",
        ],
        cwd=smoke_run,
    )
    assert files(tmp_path / "VOC2012") == files(root / "data/VOC2012")
    assert (tmp_path / "data.json").read_bytes() == (root / "metrics/data.json").read_bytes()
    run(
        [
            BIN / "wsss",
            "export_seg",
            "--params",
            f"{params}/export_seg.json",
            "--threads",
            "2",
            "--seed",
            "0",
            "--split",
            "val",
            "--data",
            root / "data/VOC2012",
            "--ckpt",
            root / "seed0/models/deeplab_pseudo/checkpoint.pt",
            "--archive",
            tmp_path / "export.tar.gz",
            "--metrics",
            tmp_path / "export.json",
        ],
        cwd=smoke_run,
    )
    assert (tmp_path / "export.tar.gz").read_bytes() == (root / "seed0/export/voc_val_comp6.tar.gz").read_bytes()
    run(
        [
            BIN / "wsss",
            "report",
            "--params",
            f"{params}/report.json",
            "--data",
            root / "data/VOC2012",
            "--out",
            tmp_path / "report",
            "--exp",
            "results/smoke",
        ],
        cwd=smoke_run,
    )
    for name in ("index.html", "tables.md", "tables.csv"):
        assert (tmp_path / "report" / name).read_bytes() == (root / "report" / name).read_bytes(), name
