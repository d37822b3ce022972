"""Report stage: tables reproduce the metric files, the HTML is self-contained, every figure is written."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from wsss.io import WsssInputError, read_json, save_npz, write_jpeg, write_json, write_label_png
from wsss.report import build_report
from wsss.report.published import NUMBER_FIELDS, PUBLISHED

NETS = ["supportnet", "mainnet_baseline", "mainnet_rcm_mam"]
CRF_NETS = ["supportnet", "mainnet_rcm_mam"]
SOURCES = ["pseudo", "gt"]
CAM = {  # net -> (miou, best_threshold, part_recall, body_recall)
    "supportnet": (0.41, 0.20, 0.80, 0.35),
    "mainnet_baseline": (0.45, 0.25, 0.82, 0.40),
    "mainnet_rcm_mam": (0.52, 0.30, 0.85, 0.55),
}
# net -> (body recall, context FP, boundary mIoU) at the matched rate of the 1-2 px ring (3-4: each minus 0.1)
MATCHED = {
    "supportnet": (0.30, 0.20, 0.50),
    "mainnet_baseline": (0.33, 0.25, 0.52),
    "mainnet_rcm_mam": (0.31, 0.35, 0.51),
}
PSEUDO = {"supportnet": 0.47, "mainnet_rcm_mam": 0.58}
SEG = {"pseudo": (0.55, 0.57), "gt": (0.70, 0.72)}
H, W = 12, 16


def _protocol(split: str) -> dict:
    return {"split": split, "scales": [1.0, 0.5], "flip": True, "threshold_selection": "sweep"}


def _matched(body: float, ctx: float, boundary: float) -> dict:
    def ring(shift: float) -> dict:
        return {
            "achieved_rate": 0.45,
            "ring_pixels": 1000,
            "fg_recall": body + 0.1 - shift,
            "part_recall": 0.9,
            "body_recall": body - shift,
            "body_recall_by_distance": {"0-4": 0.9, "4-8": body - shift, ">8": None},
            "context_fp": ctx - shift,
            "bg_fp": 0.1,
            "boundary_miou": boundary - shift,
        }

    return {"rate": 0.45, "rings": {"1-2": ring(0.0), "3-4": ring(0.1)}, "distance_bins": ["0-4", "4-8", ">8"]}


def write_metrics(e: Path) -> None:
    m = e / "metrics"
    for net, (miou, thr, part, body) in CAM.items():
        write_json(
            m / f"train_{net}.json",
            {
                "net": net,
                "final": {"val_map": 0.6, "epochs": 2, "seconds": 1.0},
                "history": [
                    {"epoch": 1, "loss": 0.9, "loss_cls": 0.7, "loss_rcm": 0.2, "val_map": 0.5},
                    {"epoch": 2, "loss": 0.6, "loss_cls": 0.5, "loss_rcm": 0.1, "val_map": 0.6},
                ],
            },
        )
        write_json(
            m / f"cam_{net}.json",
            {
                "net": net,
                "protocol": _protocol("train"),
                "miou": miou,
                "best_threshold": thr,
                "curve": [{"threshold": t, "miou": miou - abs(t - thr)} for t in (0.1, 0.2, 0.3, 0.4)],
                "per_class_iou": {"aeroplane": miou + 0.01, "bicycle": None},
                "part_recall": part,
                "body_recall": body,
                "context_bg_share": 0.1,
                "other_bg_share": 0.05,
                "fixed_threshold": 0.15,
                "miou_fixed_threshold": miou - 0.02,
                "matched_rate": _matched(*MATCHED[net]),
                "gt_filled": {"fill": 0.5, "best_threshold": 0.3, "miou": miou + 0.2},
            },
        )
    for net, miou in PSEUDO.items():
        write_json(
            m / f"pseudo_{net}_crf.json",
            {
                "net": net,
                "protocol": _protocol("train"),
                "miou": miou,
                "per_class_iou": {"aeroplane": miou},
                "ignore_fraction": 0.2,
                "precision": 0.9,
            },
        )
    for src, (miou, miou_crf) in SEG.items():
        write_json(
            m / f"seg_{src}.json",
            {
                "source": src,
                "protocol": _protocol("val"),
                "miou": miou,
                "miou_crf": miou_crf,
                "per_class_iou": {"aeroplane": miou},
                "per_class_iou_crf": {"aeroplane": miou_crf},
                "history": [{"epoch": 1, "loss": 1.0}],
                "train_labels": "pseudo/mainnet_rcm_mam_crf" if src == "pseudo" else "SegmentationClass",
            },
        )


def write_data(e: Path) -> None:
    voc = e / "data" / "VOC2012"
    rng = np.random.default_rng(0)
    ids = {"train": ["t1", "t2"], "val": ["v1"]}
    label = np.zeros((H, W), np.uint8)
    label[3:9, 4:12] = 1
    part = (label > 0).astype(np.uint8) * 2
    part[3:5, 4:7] = 1
    for split, split_ids in ids.items():
        (voc / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(split_ids) + "\n")
        for i in split_ids:
            write_jpeg(voc / "JPEGImages" / f"{i}.jpg", rng.integers(0, 255, (H, W, 3)))
            write_label_png(voc / "SegmentationClass" / f"{i}.png", label)
            write_label_png(voc / "PartMasks" / f"{i}.png", part)
            if split == "train":
                for net in NETS:
                    save_npz(
                        e / "cams" / net / f"{i}.npz", keys=np.array([1]), cam=rng.random((1, H, W)).astype(np.float16)
                    )
                for net in CRF_NETS:
                    write_label_png(e / "pseudo" / f"{net}_crf" / f"{i}.png", label)
            else:
                for src in SOURCES:
                    write_label_png(e / "seg" / src / "val" / f"{i}.png", label)
    write_json(voc / "labels.json", {i: [1] for s in ids.values() for i in s})
    write_json(voc / "synthetic.json", {"counts": {"train": 2, "val": 1}})


@pytest.fixture()
def exp(tmp_path: Path) -> Path:
    e = tmp_path / "results" / "toy"
    write_metrics(e)
    write_data(e)
    return e


def run(e: Path, **kw) -> dict:
    args = dict(
        nets=NETS,
        crf_nets=CRF_NETS,
        seg_sources=SOURCES,
        title="toy report",
        config={"name": "toy", "cam": {"scales": [1.0, 0.5]}},
        n_qualitative=2,
    )
    args.update(kw)
    return build_report(e, e / "report", **args)


def table(summary: dict, name: str) -> pd.DataFrame:
    df = pd.read_csv(summary["tables_csv"])
    return df[df["table"] == name].reset_index(drop=True)


def test_tables_equal_inputs(exp: Path) -> None:
    s = run(exp)
    cq = table(s, "cam_quality").set_index("net")
    for net, (miou, thr, part, body) in CAM.items():
        assert cq.loc[net, "miou"] == pytest.approx(miou)
        assert cq.loc[net, "best_threshold"] == pytest.approx(thr)
        assert cq.loc[net, "miou_fixed_threshold"] == pytest.approx(miou - 0.02)
        assert cq.loc[net, "part_body_gap"] == pytest.approx(part - body)
        assert cq.loc[net, "miou_gt_filled"] == pytest.approx(miou + 0.2)  # the oracle headroom

    ab = table(s, "ablation").set_index("net")
    assert list(ab.index) == NETS
    assert ab.loc["mainnet_rcm_mam", "delta_cam_miou"] == pytest.approx(0.52 - 0.45)
    # the ablation's body recall is the matched-rate one (first ring), not the swept one (0.55 - 0.40)
    assert ab.loc["mainnet_rcm_mam", "matched_body_recall"] == pytest.approx(0.31)
    assert ab.loc["mainnet_rcm_mam", "delta_matched_body_recall"] == pytest.approx(0.31 - 0.33)
    assert ab.loc["mainnet_rcm_mam", "delta_matched_context_fp"] == pytest.approx(0.35 - 0.25)
    assert ab.loc["supportnet", "delta_matched_boundary_miou"] == pytest.approx(0.50 - 0.52)

    cm = table(s, "cam_matched")
    assert len(cm) == 2 * len(CAM) and set(cm["ring_px"]) == {"1-2", "3-4"}
    row = cm[(cm["net"] == "mainnet_rcm_mam") & (cm["ring_px"] == "3-4")].iloc[0]
    assert row["body_recall"] == pytest.approx(0.21) and row["context_fp"] == pytest.approx(0.25)
    assert row["fp_rate"] == pytest.approx(0.45) and row["body_recall_4-8px"] == pytest.approx(0.21)
    assert math.isnan(row["body_recall_>8px"])
    assert ab.loc["mainnet_baseline", "delta_cam_miou"] == pytest.approx(0.0)
    assert ab.loc["mainnet_rcm_mam", "pseudo_miou"] == pytest.approx(0.58)
    assert math.isnan(ab.loc["mainnet_baseline", "pseudo_miou"])  # no CRF pseudo labels for the control

    pl = table(s, "pipeline").set_index("stage")
    assert pl.loc["SupportNet CAM", "miou"] == pytest.approx(0.41)
    assert pl.loc["MainNet +RCM+MAM CAM", "pct_of_upper_bound"] == pytest.approx(100 * 0.52 / 0.70)
    assert pl.loc["CRF pseudo labels (MainNet +RCM+MAM)", "miou"] == pytest.approx(0.58)
    assert pl.loc["DeepLab val, trained on pseudo labels", "pct_of_upper_bound"] == pytest.approx(100 * 0.55 / 0.70)
    assert pl.loc["DeepLab val, trained on pseudo labels, +CRF", "pct_of_upper_bound"] == pytest.approx(
        100 * 0.57 / 0.72
    )
    assert pl.loc["Fully supervised upper bound (DeepLab on GT)", "miou"] == pytest.approx(0.70)

    pc = table(s, "per_class").set_index("class")
    assert pc.loc["aeroplane", "SupportNet CAM"] == pytest.approx(0.42)
    assert math.isnan(pc.loc["bicycle", "SupportNet CAM"])
    assert pc.loc["aeroplane", "DeepLab (gt) +CRF"] == pytest.approx(0.72)

    hl = table(s, "headline").set_index("comparison")
    assert hl.loc["CAM mIoU: full model vs fair control", "delta"] == pytest.approx(0.07)
    assert hl.loc["Pseudo-label mIoU vs SupportNet CAM mIoU", "delta"] == pytest.approx(0.58 - 0.41)
    assert hl.loc["DeepLab val mIoU vs pseudo-label mIoU", "delta"] == pytest.approx(0.55 - 0.58)

    pr = table(s, "protocol")
    assert set(pr["file"]) == {f"metrics/cam_{n}.json" for n in NETS} | {
        f"metrics/pseudo_{n}_crf.json" for n in CRF_NETS
    } | {f"metrics/seg_{x}.json" for x in SOURCES}
    assert "1.0, 0.5" in set(pr.loc[pr["key"] == "scales", "value"])

    md = Path(s["tables_md"]).read_text()
    assert (
        "| mainnet_rcm_mam | MainNet +RCM+MAM | 52.0 | +7.0 | 31.0 | -2.0 | 35.0 | +10.0 | 51.0 | -1.0 | 58.0 | — |"
        in md
    )


def test_changed_input_changes_tables(exp: Path) -> None:
    path = exp / "metrics" / "cam_mainnet_rcm_mam.json"
    d = read_json(path)
    d["miou"] = 0.61
    write_json(path, d)
    s = run(exp)
    ab = table(s, "ablation").set_index("net")
    assert ab.loc["mainnet_rcm_mam", "cam_miou"] == pytest.approx(0.61)
    assert ab.loc["mainnet_rcm_mam", "delta_cam_miou"] == pytest.approx(0.61 - 0.45)
    assert table(s, "pipeline").set_index("stage").loc["MainNet +RCM+MAM CAM", "pct_of_upper_bound"] == pytest.approx(
        100 * 0.61 / 0.70
    )


def test_html_self_contained_and_figures_exist(exp: Path) -> None:
    s = run(exp)
    html = Path(s["index_html"]).read_text()
    assert not re.search(r'(src|href)\s*=\s*["\']?(https?:|//)', html, re.I)
    assert "<script" not in html and "<link" not in html
    srcs = re.findall(r'src="([^"]*)"', html)
    assert srcs and all(x.startswith("data:image/png;base64,") for x in srcs)
    expected = {"threshold_curves", "training_curves", "qualitative_train", "qualitative_val", "synthetic_samples"}
    assert set(s["figures"]) == expected and not s["figures_skipped"]
    assert len(srcs) == len(expected)
    for p in s["figures"].values():
        with Image.open(p) as im:
            assert im.format == "PNG"
    assert "NOT comparable" in html and "Headline" in html and "Protocol" in html
    assert "name: toy" in html  # config block
    for n in ("tables_md", "tables_csv"):
        assert Path(s[n]).is_file()


def test_missing_required_file_raises(exp: Path) -> None:
    (exp / "metrics" / "seg_gt.json").unlink()
    with pytest.raises(WsssInputError, match="seg_gt.json"):
        run(exp)


def test_missing_optional_file_skips_row(exp: Path) -> None:
    (exp / "metrics" / "cam_mainnet_rcm_mam.json").unlink()
    s = run(exp, optional={"cam_mainnet_rcm_mam"})
    assert s["inputs_skipped"] == ["metrics/cam_mainnet_rcm_mam.json"]
    assert "mainnet_rcm_mam" not in set(table(s, "ablation")["net"])
    hl = table(s, "headline").set_index("comparison")
    assert math.isnan(hl.loc["CAM mIoU: full model vs fair control", "delta"])


def test_published_numbers_have_sources() -> None:
    for p in PUBLISHED:
        for f in NUMBER_FIELDS:
            if getattr(p, f) is not None:
                assert f in p.sources and re.match(r"\[(READ|CODE|DERIVED|SECONDARY)\]", p.sources[f]), (p.method, f)
    aalr = next(p for p in PUBLISHED if p.method.startswith("AA&LR"))
    assert aalr.val == 63.9 and aalr.test is None  # the recalled test number is not used
    target = next(p for p in PUBLISHED if "2112.05351" in p.method)
    assert all(getattr(target, f) is None for f in NUMBER_FIELDS)


def test_this_run_sits_beside_the_published_peers(exp: Path) -> None:
    pub = table(run(exp), "published")
    ours = pub.iloc[0]
    assert ours["method"].startswith("wsss (this run")
    assert ours["cam_train_pct"] == pytest.approx(100 * CAM["mainnet_rcm_mam"][0])
    assert ours["pseudo_train_pct"] == pytest.approx(100 * PSEUDO["mainnet_rcm_mam"])
    assert ours["val_pct"] == pytest.approx(100 * SEG["pseudo"][1])  # the +CRF number, as the peers report
    assert len(pub) > 10 and (pub["method"].str.contains("AffinityNet")).any()


def test_pipeline_follows_the_configured_final_variant(exp: Path) -> None:
    pl = table(run(exp, final_net="mainnet_baseline"), "pipeline").set_index("stage")
    row = [r for r in pl.index if r.endswith(" CAM") and r.startswith("MainNet")]
    assert row == ["MainNet baseline (fair control) CAM"]
    assert pl.loc[row[0], "miou"] == pytest.approx(CAM["mainnet_baseline"][0])


def test_random_walk_and_single_stage_rows(exp: Path) -> None:
    m = exp / "metrics"
    write_json(
        m / "pseudo_mainnet_rcm_mam_rw.json",
        {"net": "mainnet_rcm_mam", "protocol": _protocol("train"), "miou": 0.61, "per_class_iou": {}},
    )
    for v, (a, b) in {"baseline": (0.40, 0.45), "aa": (0.43, 0.47), "lr": (0.39, 0.44), "aa_lr": (0.44, 0.50)}.items():
        write_json(
            m / f"seg_single_stage_{v}.json",
            {
                "variant": v,
                "protocol": _protocol("val"),
                "miou": a,
                "miou_crf": b,
                "pseudo_labels": {"masks": {"miou": a + 0.1}, "pamr_pseudo_gt": {"miou": a + 0.2}},
            },
        )
    s = run(exp, rw_nets=["mainnet_rcm_mam"], ss_variants=["baseline", "aa", "lr", "aa_lr"])
    ss = table(s, "single_stage").set_index("method")
    assert ss.loc["1-stage +AA+LR", "val_miou"] == pytest.approx(0.44)
    assert ss.loc["1-stage +AA+LR", "delta_val_crf"] == pytest.approx(0.05)  # 0.50 - 0.45 (the 1-stage baseline)
    assert ss.loc["1-stage +LR", "delta_val"] == pytest.approx(-0.01)
    assert ss.loc["1-stage +AA", "train_pseudo_gt_miou"] == pytest.approx(0.63)
    two = ss.loc["two-stage: DeepLab on the MainNet's pseudo labels"]
    assert two["val_miou"] == pytest.approx(SEG["pseudo"][0])
    ab = table(s, "ablation").set_index("net")
    assert ab.loc["mainnet_rcm_mam", "rw_miou"] == pytest.approx(0.61)
    per_seed = table(s, "ablation_seeds").set_index("net")  # the walk's column appears where a walk ran
    assert per_seed.loc["mainnet_rcm_mam", "rw"] == pytest.approx(0.61)
    assert math.isnan(per_seed.loc["mainnet_baseline", "rw"])
    pipe = table(s, "pipeline")
    assert any(pipe["stage"].str.startswith("+random walk pseudo labels")) and 0.61 in pipe["miou"].round(6).tolist()
    seeds = table(s, "seeds")
    row = seeds[(seeds["quantity"] == "single-stage val mIoU +CRF") & (seeds["net"] == "single_stage_aa_lr")]
    assert row["mean"].iloc[0] == pytest.approx(0.50) and row["n_seeds"].iloc[0] == 1
    assert row["delta_vs_control"].iloc[0] == pytest.approx(0.05)  # paired with the 1-stage baseline, not MainNet


def test_seed_table_mean_spread_and_paired_delta(tmp_path: Path) -> None:
    root = tmp_path / "results" / "multi"
    for k, shift in ((0, 0.0), (1, 0.02), (2, -0.02)):
        write_metrics(root / f"seed{k}")
        # seed k moves the full model and the control by the same shift, plus a fixed +0.03 for the full model
        for net, extra in (("mainnet_baseline", 0.0), ("mainnet_rcm_mam", 0.03)):
            p = root / f"seed{k}" / "metrics" / f"cam_{net}.json"
            d = read_json(p)
            d["miou"] = 0.5 + shift + extra
            d["context_bg_share"] = 0.1 + 2 * extra  # the full model claims more context background
            d["matched_rate"]["rings"]["1-2"]["body_recall"] = 0.4 + shift + 2 * extra
            d["matched_rate"]["rings"]["1-2"]["body_recall_by_distance"][">8"] = 0.2 + shift + 3 * extra
            write_json(p, d)
    write_data(root)
    s = run(root, seeds=[0, 1, 2])
    seeds = table(s, "seeds")
    full = seeds[(seeds["quantity"] == "CAM mIoU, threshold-swept (train)") & (seeds["net"] == "mainnet_rcm_mam")].iloc[
        0
    ]
    assert full["n_seeds"] == 3 and full["mean"] == pytest.approx(0.53) and full["sd"] == pytest.approx(0.02)
    # the paired delta removes the shared seed shift: exactly +0.03 with no spread
    assert full["delta_vs_control"] == pytest.approx(0.03) and full["delta_sd"] == pytest.approx(0.0, abs=1e-12)
    ctx = seeds[(seeds["quantity"] == "context bg claimed by the CAM (train)") & (seeds["net"] == "mainnet_rcm_mam")]
    assert ctx["mean"].iloc[0] == pytest.approx(0.16) and ctx["delta_vs_control"].iloc[0] == pytest.approx(0.06)
    body = seeds[seeds["quantity"] == "body recall, matched 1-2 px ring rate (train)"].set_index("net")
    assert body.loc["mainnet_rcm_mam", "delta_vs_control"] == pytest.approx(0.06)
    assert body.loc["mainnet_rcm_mam", "delta_sd"] == pytest.approx(0.0, abs=1e-12)
    assert body.loc["mainnet_baseline", "sd"] == pytest.approx(0.02)
    ab = table(s, "ablation_seeds").set_index("net")
    # matched body recall: the full model +0.06 over the control in every seed (sd 0), SupportNet lower
    assert ab.loc["mainnet_rcm_mam", "delta_body"] == pytest.approx(0.06)
    assert ab.loc["mainnet_rcm_mam", "delta_body_sd"] == pytest.approx(0.0, abs=1e-12)
    assert ab.loc["mainnet_rcm_mam", "body_gain_beyond_2sd"] == "yes"
    assert ab.loc["supportnet", "body_gain_beyond_2sd"] == "no"  # 0.30 - (0.40 + shift): a loss in every seed
    assert ab.loc["mainnet_rcm_mam", "n_seeds"] == 3
    # the farthest distance bin's body recall, paired alike: +0.09 in every seed; the fixture's SupportNet has none
    assert ab.loc["mainnet_rcm_mam", "far_body"] == pytest.approx(0.29)
    assert ab.loc["mainnet_rcm_mam", "delta_far_body"] == pytest.approx(0.09)
    assert ab.loc["mainnet_rcm_mam", "delta_far_body_sd"] == pytest.approx(0.0, abs=1e-12)
    assert math.isnan(ab.loc["supportnet", "far_body"])
    assert ab.loc["supportnet", "delta_body"] == pytest.approx(-0.10)
    assert ab.loc["mainnet_rcm_mam", "crf"] == pytest.approx(PSEUDO["mainnet_rcm_mam"])
    assert math.isnan(ab.loc["mainnet_rcm_mam", "delta_crf"])  # the fixture's control has no CRF labels
    assert "rw" not in ab.columns  # no walk ran: no walk column
    assert math.isnan(ab.loc["mainnet_baseline", "delta_body"])  # the control is the reference
    assert "seed0/metrics/cam_supportnet.json" in table(s, "pipeline")["file"].tolist()


def test_the_protocol_table_says_where_the_image_labels_come_from(exp: Path) -> None:
    """Issue 15: a VOC folder prepared without Annotations/ takes its image labels from the masks; the protocol
    table shows it (from the dataset's prepare_report.json), beside the metric files' protocols."""
    report = {"source": "voc2012", "label_source": "mask", "label_convention": "the classes of each mask", "x": 1}
    write_json(exp / "data" / "VOC2012" / "prepare_report.json", report)
    df = table(run(exp), "protocol")
    rows = df[df["file"] == "data/VOC2012/prepare_report.json"]
    assert dict(zip(rows["key"], rows["value"])) == {
        "source": "voc2012",
        "label_source": "mask",
        "label_convention": "the classes of each mask",
    }
    assert len(df) > len(rows)  # the metric files' rows are still there
    # a subset named by data.voc.max_ids_per_split: its rule and counts in one row
    report.update(counts={"train": 300, "val": 271, "labelled_images": 571})
    report["subset"] = {"rule": "first N ids", "max_ids_per_split": 300, "source_counts": {"train": 546, "val": 271}}
    write_json(exp / "data" / "VOC2012" / "prepare_report.json", report)
    df = table(run(exp), "protocol")
    rows = df[df["file"] == "data/VOC2012/prepare_report.json"]
    assert (
        dict(zip(rows["key"], rows["value"]))["subset"]
        == "first 300 ids of each split list (train 300 of 546, val 271 of 271)"
    )
    # one number per split (a mapping): each named split's own N
    report.update(counts={"train": 200, "val": 150, "labelled_images": 350})
    report["subset"]["max_ids_per_split"] = {"train": 200, "val": 150}
    write_json(exp / "data" / "VOC2012" / "prepare_report.json", report)
    rows = table(run(exp), "protocol").query("file == 'data/VOC2012/prepare_report.json'")
    assert dict(zip(rows["key"], rows["value"]))["subset"] == (
        "the first ids of each split list in its own order: 200 of train, 150 of val (train 200 of 546, val 150 of 271)"
    )


def test_files_outside_the_run_are_named_by_their_full_path(tmp_path: Path) -> None:
    """The protocol table names the dataset's prepare_report.json relative to results/<name> (the seed folder's
    parent in a multi-seed run), and by its full path when the data lies elsewhere (a typed path would lie)."""
    from wsss.report.inputs import Experiment

    run_dir = tmp_path / "results" / "r"
    seeded = Experiment(run_dir / "seed0", [], [], [], data_dir=run_dir / "data", seed=0)
    assert seeded.rel_path(seeded.data_root / "prepare_report.json") == "data/VOC2012/prepare_report.json"
    assert seeded.rel("cam_supportnet") == "seed0/metrics/cam_supportnet.json"
    elsewhere = Experiment(run_dir, [], [], [], data_dir=tmp_path / "shared" / "data")
    assert elsewhere.rel_path(elsewhere.data_root / "x.json") == str(
        tmp_path / "shared" / "data" / "VOC2012" / "x.json"
    )


def test_expected_trends_are_measured_from_the_metric_files(exp: Path) -> None:
    """The trends table: each row's two numbers are the files' and 'holds' follows its rule, both ways."""
    write_json(
        exp / "metrics" / "pseudo_mainnet_rcm_mam_rw.json",
        {"net": "mainnet_rcm_mam", "protocol": _protocol("train"), "miou": 0.54, "per_class_iou": {}},
    )
    tr = table(run(exp, rw_nets=["mainnet_rcm_mam"]), "trends").set_index("trend")
    crf = tr.loc["CRF pseudo labels > CAM (train)"]
    assert (crf["from_miou"], crf["to_miou"]) == (pytest.approx(0.52), pytest.approx(0.58)) and crf["holds"] == "yes"
    walk = tr.loc["random walk >= CRF alone (train)"]  # 0.54 < 0.58: reported as found
    assert walk["difference"] == pytest.approx(-0.04) and walk["holds"] == "no"
    # DeepLab trained on the CRF labels (seg_pseudo's train_labels): 0.57 (+CRF) against 0.58, within 5 points
    dl = tr.loc["DeepLab val within 5 points of its pseudo labels (train)"]
    assert dl["from_miou"] == pytest.approx(0.58) and dl["to_miou"] == pytest.approx(0.57) and dl["holds"] == "yes"
    ub = tr.loc["fully supervised upper bound > WSSS by >= 5 points (val, +CRF)"]
    assert ub["ratio_pct"] == pytest.approx(100 * 0.72 / 0.57) and ub["holds"] == "yes"
    write_json(exp / "metrics" / "seg_gt.json", {**read_json(exp / "metrics" / "seg_gt.json"), "miou_crf": 0.60})
    ub = (
        table(run(exp), "trends")
        .set_index("trend")
        .loc["fully supervised upper bound > WSSS by >= 5 points (val, +CRF)"]
    )
    assert ub["holds"] == "no"  # 0.60 - 0.57 < 0.05


def test_this_run_names_its_scale_beside_the_peers(exp: Path) -> None:
    """With the run's config the published table's first row says why it is not comparable (images, backbone,
    schedule), from the split list and the config, not typed in."""
    from wsss.config import validate

    cfg = validate({})
    pub = table(run(exp, config=cfg), "published").iloc[0]
    assert pub["backbone"] == cfg["supportnet"]["backbone"]["name"]
    assert pub["note"].startswith(f"not comparable: 2 training images ({cfg['data']['source']} train)")
    assert f"SupportNet {cfg['supportnet']['train']['epochs']} epochs" in pub["note"]


def test_the_train_figure_shows_the_walk_labels_where_a_walk_ran(exp: Path) -> None:
    without = Image.open(run(exp)["figures"]["qualitative_train"]).size
    write_json(
        exp / "metrics" / "pseudo_mainnet_rcm_mam_rw.json",
        {"net": "mainnet_rcm_mam", "protocol": _protocol("train"), "miou": 0.6, "per_class_iou": {}},
    )
    for i in ("t1", "t2"):
        write_label_png(exp / "pseudo" / "mainnet_rcm_mam_rw" / f"{i}.png", np.ones((H, W), np.uint8))
    with_walk = Image.open(run(exp, rw_nets=["mainnet_rcm_mam"])["figures"]["qualitative_train"]).size
    assert with_walk[1] == without[1] and with_walk[0] > without[0]  # one more column, same rows


def _write_select(exp: Path, scores: dict[str, tuple[float, float]]) -> None:
    for w, (heldout, val) in scores.items():
        write_json(
            exp / "metrics" / f"select_aa_aa{w}.json",
            {
                "variant": "aa",
                "aa_weight": float(w),
                "protocol": {"chosen_on": "heldout (GT masks of the calibration subset only)", "reported": "val"},
                "heldout": {"split": "train", "images": 3, "miou": heldout, "miou_crf": heldout, "ids": "first 3"},
                "val": {"split": "val", "images": 4, "miou": val, "miou_crf": val},
            },
        )


@pytest.mark.parametrize(
    ("heldout", "edge"),
    [((0.3, 0.5, 0.4), ""), ((0.5, 0.4, 0.3), ""), ((0.3, 0.4, 0.5), "1")],
    ids=["inside", "no-AA-wins", "largest"],
)
def test_a_held_out_pick_at_the_grid_edge_is_flagged(exp: Path, heldout: tuple, edge: str) -> None:
    """A pick at the largest weight may have its optimum beyond the grid, and so is flagged; weight 0 (no AA) is a
    complete answer at the low end, so a pick there is not."""
    weights = ["0", "0.1", "1"]
    _write_select(exp, {w: (h, 0.4) for w, h in zip(weights, heldout, strict=True)})
    sel = table(run(exp, select_variants=["aa"], select_weights=weights), "aa_selection")
    flagged = sel.loc[
        sel["at_grid_edge"].astype(object).fillna("").astype(str).str.startswith("yes"), "aa_weight"
    ].tolist()
    assert flagged == ([float(edge)] if edge else [])


def test_the_report_shows_the_held_out_aa_weight_choice_and_its_protocol(exp: Path) -> None:
    """Issue 16: with single_stage.selection on, the report reads eval_select's files, adds the selection table and
    lists, in the protocol table, that the weight is chosen on the calibration subset and val is only reported."""
    _write_select(exp, {"0.1": (0.5, 0.40), "1": (0.4, 0.45)})
    s = run(exp, select_variants=["aa"], select_weights=["0.1", "1"], config={"single_stage": {"aa": {"weight": 1}}})
    sel = table(s, "aa_selection").set_index("aa_weight")
    assert sel.loc[0.1, "chosen"] == "yes" and sel.loc[1.0, "best_on_val"] == "yes"
    assert sel.loc[1.0, "configured"] == "yes" and sel.loc[0.1, "val_miou_crf"] == pytest.approx(0.40)
    edge = sel["at_grid_edge"].astype(object).fillna("")
    assert edge[0.1].startswith("yes") and edge[1.0] == ""  # the pick is the smallest weight, and it is above 0
    prot = table(s, "protocol")
    rows = prot[prot["file"].str.contains("select_aa_aa0.1")]
    assert "calibration subset" in " ".join(rows["value"].astype(str)) and "heldout.ids" in rows["key"].tolist()
    (exp / "metrics" / "select_aa_aa1.json").unlink()
    with pytest.raises(WsssInputError, match="select_aa_aa1.json: required metric file of the AA-weight selection"):
        run(exp, select_variants=["aa"], select_weights=["0.1", "1"])


def test_mechanism_pairs_differ_in_one_piece() -> None:
    """Each contrast but the formulations' adds exactly one piece of wsss.variants to the other net, and none
    is against the fair control (the ablation table has those)."""
    from wsss.report.tables import FORMULATION_CONTRASTS, mechanism_pairs
    from wsss.variants import MAINNET_VARIANTS

    pairs = {(a, b) for a, b, _ in mechanism_pairs()}
    assert pairs == {
        ("mainnet_rcm_mam", "mainnet_rcm"),
        ("mainnet_rcm_mam", "mainnet_mam"),
        ("mainnet_authors", "mainnet_authors_rcm"),
        ("mainnet_authors", "mainnet_authors_mam"),
        ("mainnet_authors", "mainnet_authors_frozen"),
        ("mainnet_authors_frozen", "mainnet_rcm_mam"),
    }
    for a, b, _ in FORMULATION_CONTRASTS:
        assert a in MAINNET_VARIANTS and b in MAINNET_VARIANTS
    teacher = next(w for a, b, w in mechanism_pairs() if b == "mainnet_authors_frozen")
    assert teacher.startswith("the mean teacher")


def test_mechanism_contrast_is_paired_within_seeds(tmp_path: Path) -> None:
    """+RCM+MAM - (+RCM): within each seed the difference is +0.05 body recall while both nets move with the
    seed by ±0.04, so the paired sd is 0; the table lists only pairs whose nets both ran."""
    root = tmp_path / "results" / "multi"
    for k, shift in ((0, 0.0), (1, 0.04), (2, -0.04)):
        e = root / f"seed{k}"
        write_metrics(e)
        m = e / "metrics"
        for src, dst in (("train_mainnet_baseline", "train_mainnet_rcm"), ("cam_mainnet_baseline", "cam_mainnet_rcm")):
            d = read_json(m / f"{src}.json")
            d["net"] = "mainnet_rcm"
            write_json(m / f"{dst}.json", d)
        for net, body in (("mainnet_rcm", 0.30), ("mainnet_rcm_mam", 0.35)):
            p = m / f"cam_{net}.json"
            d = read_json(p)
            d["matched_rate"]["rings"]["1-2"]["body_recall"] = body + shift
            d["matched_rate"]["rings"]["1-2"]["context_fp"] = 0.2 + (0.1 * k if net == "mainnet_rcm_mam" else 0.0)
            write_json(p, d)
    write_data(root)
    s = run(root, seeds=[0, 1, 2], nets=[*NETS, "mainnet_rcm"])
    mc = table(s, "mechanism_contrasts")
    assert list(zip(mc["a"], mc["b"])) == [("mainnet_rcm_mam", "mainnet_rcm")]  # no mainnet_mam, no authors' nets
    row = mc.iloc[0]
    assert row["contrast"].startswith("our MAM") and row["n_seeds"] == 3
    assert row["delta_body"] == pytest.approx(0.05) and row["delta_body_sd"] == pytest.approx(0.0, abs=1e-12)
    assert row["body_beyond_2sd"] == "yes"
    assert row["delta_context"] == pytest.approx(0.1) and row["delta_context_sd"] == pytest.approx(0.1)
    assert math.isnan(row["delta_crf"])  # the fixture's +RCM net has no CRF labels
