"""Report tables, built only from the experiment's metric files (plus ``published.py`` for context).

Every table is a :class:`Table`: a DataFrame of raw values (mIoU etc. as fractions in [0, 1]) and a column
format map used when rendering Markdown/HTML (fractions shown x100 with one decimal).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from wsss.io import WsssInputError, read_json
from wsss.report.inputs import ABLATION_ORDER, CONTROL, FULL, Experiment, net_label, num, protocol_of
from wsss.report.published import published_frame
from wsss.variants import MAINNET_VARIANTS, SINGLE_STAGE_VARIANTS

# column format kinds: "frac" (x100, 1 dec), "delta" (x100, signed, 1 dec), "pct" (already %, 1 dec),
# "thr" (2 dec), anything else: text
NAN = math.nan


@dataclass
class Table:
    name: str
    title: str
    caption: str
    frame: pd.DataFrame
    formats: dict[str, str] = field(default_factory=dict)

    def formatted(self) -> pd.DataFrame:
        """Strings for display: fractions x100 with one decimal, NaN as an em dash."""
        out = self.frame.copy().astype(object)
        for col in out.columns:
            kind = self.formats.get(col, "text")
            out[col] = [format_value(v, kind) for v in self.frame[col]]
        return out


def format_value(v: Any, kind: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if kind == "frac":
        return f"{100 * float(v):.1f}"
    if kind == "delta":
        return f"{100 * float(v):+.1f}"
    if kind == "pct":
        return f"{float(v):.1f}"
    if kind == "thr":
        return f"{float(v):.2f}"
    return str(v)


def _sub(a: float, b: float) -> float:
    return a - b if not (math.isnan(a) or math.isnan(b)) else NAN


def _ratio_pct(a: float, b: float) -> float:
    return 100.0 * a / b if not (math.isnan(a) or math.isnan(b) or b == 0) else NAN


def matched(d: dict, key: str, path, ring: str | None = None) -> float:
    """``key`` of the rescaling-invariant section ``matched_rate`` of a CAM metric file, in ``ring`` (default: the
    first ring); NaN when the file has no such section (an older file, or the key is None)."""
    rings = (d.get("matched_rate") or {}).get("rings") or {}
    if not rings:
        return NAN
    return num(rings.get(ring or next(iter(rings)), {}), key, path)


def matched_far_body(d: dict, path) -> tuple[float, str | None]:
    """Body recall in the last (farthest) distance-to-part bin of the first ring of ``matched_rate``, and the bin's
    name: where a CAM that grows from its discriminative part has the most to find. NaN (and None) when the file
    has no such section or the benchmark has no part masks."""
    rings = (d.get("matched_rate") or {}).get("rings") or {}
    bins = next(iter(rings.values()), {}).get("body_recall_by_distance") if rings else None
    if not bins:
        return NAN, None
    name = list(bins)[-1]
    v = bins[name]
    if v is None:
        return NAN, name
    if not isinstance(v, (int, float)):
        raise ValueError(f"{path}: matched_rate body_recall_by_distance[{name!r}] is not a number: {v!r}")
    return float(v), name


def first_ring(exp: Experiment) -> str | None:
    for d in exp.cam.values():
        rings = (d.get("matched_rate") or {}).get("rings")
        if rings:
            return next(iter(rings))
    return None


# ------------------------------------------------------------------------------------------ (a) CAM quality
def cam_quality(exp: Experiment) -> Table:
    rows = []
    for net, d in exp.cam.items():
        path = exp.paths[f"cam_{net}"]
        part, body = num(d, "part_recall", path), num(d, "body_recall", path)
        rows.append(
            {
                "net": net,
                "model": net_label(net),
                "miou": num(d, "miou", path),
                "best_threshold": num(d, "best_threshold", path),
                "fixed_threshold": num(d, "fixed_threshold", path),
                "miou_fixed_threshold": num(d, "miou_fixed_threshold", path),
                "part_recall": part,
                "body_recall": body,
                "part_body_gap": _sub(part, body),
                "context_bg_share": num(d, "context_bg_share", path),
                "other_bg_share": num(d, "other_bg_share", path),
                "miou_gt_filled": num(d.get("gt_filled") or {}, "miou", path),
            }
        )
    fmt = {
        "miou": "frac",
        "best_threshold": "thr",
        "fixed_threshold": "thr",
        "miou_fixed_threshold": "frac",
        "part_recall": "frac",
        "body_recall": "frac",
        "part_body_gap": "delta",
        "context_bg_share": "frac",
        "other_bg_share": "frac",
        "miou_gt_filled": "frac",
    }
    return Table(
        "cam_quality",
        "CAM quality, threshold-swept (train split; a rescaling of the CAM moves these)",
        "CAM mIoU at the best background threshold of the sweep (chosen on the calibration subset's GT, scored on "
        "the other ids) and at the fixed threshold; part/body recall at that best threshold = "
        "share of discriminative-part / body pixels of the objects recovered by the CAM (as computed by the CAM "
        "evaluation; see its protocol). A CAM raised to a power scores about the same mIoU with another body "
        "recall: compare nets on the matched-rate table instead; "
        "gap = part - body recall (smaller means more of the object is covered); context/other bg share = "
        "share of context / other background pixels wrongly claimed by the CAM; gt_filled = the oracle headroom: "
        "the same CAM with every ground-truth object pixel raised to at least cams.oracle_fill, swept and scored "
        "alike (what a CAM that covered its objects would score with this CAM's background). Values x100.",
        pd.DataFrame(rows, columns=["net", "model", *fmt]),
        fmt,
    )


# ------------------------------------------------------------------------------------------ (a') matched rate
MATCHED_COLS = ("achieved_rate", "fg_recall", "part_recall", "body_recall", "context_fp", "bg_fp", "boundary_miou")


def cam_matched(exp: Experiment) -> Table:
    rows, bins = [], []
    for net, d in exp.cam.items():
        sec = d.get("matched_rate") or {}
        for ring, r in (sec.get("rings") or {}).items():
            path = exp.paths[f"cam_{net}"]
            row = {"net": net, "model": net_label(net), "ring_px": ring, "fp_rate": num(sec, "rate", path)}
            row.update({k: num(r, k, path) for k in MATCHED_COLS})
            for b, v in (r.get("body_recall_by_distance") or {}).items():
                col = f"body_recall_{b}px"
                bins += [col] if col not in bins else []
                row[col] = NAN if v is None else float(v)
            rows.append(row)
    fmt = {"fp_rate": "frac", **{k: "frac" for k in MATCHED_COLS}, **{b: "frac" for b in bins}}
    return Table(
        "cam_matched",
        "CAM quality at a matched boundary false-positive rate (train split; rescaling-invariant)",
        "For each ring of GT background at ring_px px from the objects, every net gets the threshold at which a "
        "share fp_rate of the ring's pixels is claimed as foreground (achieved_rate: the share reached, ties "
        "aside); at that threshold: recall of all object pixels (fg), of the discriminative part and of the body; "
        "body recall by distance to the part; context_fp = share of background in the context fills claimed as "
        "foreground; bg_fp = the same over all background; boundary_miou = mIoU within the trimap band of the GT "
        "boundaries (see the CAM protocol). These depend on the CAM only through the order of its values, so a "
        "monotone rescaling (CAM^gamma, ...) cannot move them (tests/test_cam_measures.py). Values x100.",
        pd.DataFrame(rows, columns=["net", "model", "ring_px", *fmt]),
        fmt,
    )


# ------------------------------------------------------------------------------------------ (b) ablation
def ablation(exp: Experiment) -> Table:
    order = [n for n in ABLATION_ORDER if n in exp.cam] + [n for n in exp.cam if n not in ABLATION_ORDER]

    def cam(n: str, key: str) -> float:
        return num(exp.cam[n], key, exp.paths[f"cam_{n}"]) if n in exp.cam else NAN

    def pseudo(n: str) -> float:
        return num(exp.pseudo[n], "miou", exp.paths[f"pseudo_{n}_crf"]) if n in exp.pseudo else NAN

    def rw(n: str) -> float:
        return num(exp.rw[n], "miou", exp.paths[f"pseudo_{n}_rw"]) if n in exp.rw else NAN

    def inv(n: str, key: str) -> float:
        return matched(exp.cam[n], key, exp.paths[f"cam_{n}"]) if n in exp.cam else NAN

    ctrl_cam, ctrl_pseudo = cam(CONTROL, "miou"), pseudo(CONTROL)
    rows = []
    for n in order:
        rows.append(
            {
                "net": n,
                "model": net_label(n),
                "cam_miou": cam(n, "miou"),
                "delta_cam_miou": _sub(cam(n, "miou"), ctrl_cam),
                **{
                    col: v
                    for key in ("body_recall", "context_fp", "boundary_miou")
                    for col, v in (
                        (f"matched_{key}", inv(n, key)),
                        (f"delta_matched_{key}", _sub(inv(n, key), inv(CONTROL, key))),
                    )
                },
                "pseudo_miou": pseudo(n),
                "delta_pseudo_miou": _sub(pseudo(n), ctrl_pseudo),
                "rw_miou": rw(n),
                "delta_rw_miou": _sub(rw(n), rw(CONTROL)),
            }
        )
    cols = [
        "net",
        "model",
        "cam_miou",
        "delta_cam_miou",
        "matched_body_recall",
        "delta_matched_body_recall",
        "matched_context_fp",
        "delta_matched_context_fp",
        "matched_boundary_miou",
        "delta_matched_boundary_miou",
        "pseudo_miou",
        "delta_pseudo_miou",
        "rw_miou",
        "delta_rw_miou",
    ]
    fmt = {c: ("delta" if c.startswith("delta") else "frac") for c in cols[2:]}
    return Table(
        "ablation",
        "Ablation (train split)",
        f"CAM mIoU (threshold-swept), then at a matched false-positive rate in the {first_ring(exp) or '-'} px ring "
        "(rescaling-invariant, see the matched-rate table): body recall, context false positives and boundary mIoU; "
        f"and +CRF pseudo-label mIoU per model; delta = difference to the fair "
        f"control '{net_label(CONTROL)}' (same backbone, schedule and data, without RCM/MAM), in points x100. "
        "Pseudo mIoU (+CRF) and RW mIoU (+affinity random walk) are shown only for models whose labels were made.",
        pd.DataFrame(rows, columns=cols),
        fmt,
    )


# ------------------------------------------------------------------------------------------ (c) pipeline
def _pipeline_rows(exp: Experiment) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def add(stage: str, stem: str, d: dict, key: str, ref: str) -> None:
        rows.append(
            {
                "stage": stage,
                "file": exp.rel(stem),
                "metric_key": key,
                "split": str(protocol_of(d).get("split", "")),
                "miou": num(d, key, exp.paths[stem]),
                "ref": ref,
            }
        )

    if "supportnet" in exp.cam:
        add("SupportNet CAM", "cam_supportnet", exp.cam["supportnet"], "miou", "miou")
    main = exp.main_net()
    if main:
        add(f"{net_label(main)} CAM", f"cam_{main}", exp.cam[main], "miou", "miou")
    pnet = exp.pseudo_net()
    if pnet:
        add(f"CRF pseudo labels ({net_label(pnet)})", f"pseudo_{pnet}_crf", exp.pseudo[pnet], "miou", "miou")
    rnet = pnet if pnet in exp.rw else (main if main in exp.rw else None)
    if rnet:
        add(f"+random walk pseudo labels ({net_label(rnet)})", f"pseudo_{rnet}_rw", exp.rw[rnet], "miou", "miou")
    for src, d in exp.seg.items():
        if src == "gt":
            continue
        what = "pseudo labels" if src == "pseudo" else src
        add(f"DeepLab val, trained on {what}", f"seg_{src}", d, "miou", "miou")
        add(f"DeepLab val, trained on {what}, +CRF", f"seg_{src}", d, "miou_crf", "miou_crf")
    if "gt" in exp.seg:
        add("Fully supervised upper bound (DeepLab on GT)", "seg_gt", exp.seg["gt"], "miou", "")
        add("Fully supervised upper bound (DeepLab on GT), +CRF", "seg_gt", exp.seg["gt"], "miou_crf", "")
    return rows


def pipeline(exp: Experiment) -> Table:
    rows = _pipeline_rows(exp)
    gt = exp.seg.get("gt")
    for r in rows:
        ub = num(gt, r["ref"], exp.paths["seg_gt"]) if (gt is not None and r["ref"]) else NAN
        r["upper_bound"] = ub
        r["pct_of_upper_bound"] = _ratio_pct(r["miou"], ub)
        del r["ref"]
    cols = ["stage", "file", "metric_key", "split", "miou", "upper_bound", "pct_of_upper_bound"]
    return Table(
        "pipeline",
        "Pipeline",
        "mIoU at each stage. % of upper bound = stage mIoU / mIoU of the same DeepLab trained on ground-truth masks "
        "(no-CRF numbers against the no-CRF upper bound, +CRF against +CRF). CAM and pseudo-label numbers are on "
        "the train split, DeepLab numbers on val (see 'split'), so the ratio compares quality levels, not one image set.",
        pd.DataFrame(rows, columns=cols),
        {"miou": "frac", "upper_bound": "frac", "pct_of_upper_bound": "pct"},
    )


# ------------------------------------------------------------------------------------------ (d) per class
def per_class(exp: Experiment) -> Table:
    columns: dict[str, dict] = {}
    for n, d in exp.cam.items():
        columns[f"{net_label(n)} CAM"] = d.get("per_class_iou") or {}
    for n, d in exp.pseudo.items():
        columns[f"{net_label(n)} +CRF pseudo"] = d.get("per_class_iou") or {}
    for n, d in exp.rw.items():
        columns[f"{net_label(n)} +RW pseudo"] = d.get("per_class_iou") or {}
    for s, d in exp.seg.items():
        columns[f"DeepLab ({s})"] = d.get("per_class_iou") or {}
        columns[f"DeepLab ({s}) +CRF"] = d.get("per_class_iou_crf") or {}
    columns = {k: v for k, v in columns.items() if v}
    classes: list[str] = []
    for v in columns.values():
        classes += [c for c in v if c not in classes]
    rows = [
        {"class": c, **{k: (NAN if v.get(c) is None else float(v[c])) for k, v in columns.items()}} for c in classes
    ]
    return Table(
        "per_class",
        "Per-class IoU",
        "IoU per class (rows) at each stage (columns), x100. CAM and pseudo columns: train split; DeepLab: val.",
        pd.DataFrame(rows, columns=["class", *columns]),
        {k: "frac" for k in columns},
    )


# ------------------------------------------------------------------------------------------ (e) published
def run_scale(exp: Experiment, config: dict | None) -> dict[str, str]:
    """What makes this run's numbers not comparable with a paper's: training images, backbone, schedule, from the
    run's config and split list (empty without a validated config: the keys below come with the schema's
    defaults)."""
    if not config or not {"data", "supportnet"} <= set(config):
        return {}
    from wsss.data.voc import read_split

    split = config["data"]["train_split"]
    try:
        n = str(len(read_split(exp.data_root, split)))
    except WsssInputError:  # the split list is the data stage's; the report still renders without it
        n = "?"
    sn, seg = config["supportnet"], config.get("segment", {})
    schedule = f"SupportNet {sn['train']['epochs']} epochs at {sn['train']['crop']} px crops"
    if seg.get("enabled", True) and "train" in seg:
        schedule += f", {seg.get('model', 'DeepLab')} {seg['train']['epochs']} epochs"
    return {
        "backbone": str(sn["backbone"]["name"]),
        "seg_net": str(seg.get("model", "-")) if seg.get("enabled", True) else "-",
        "note": f"not comparable: {n} training images ({config['data']['source']} {split}), "
        f"{sn['backbone']['name']}, {schedule}",
    }


def published(exp: Experiment | None = None, config: dict | None = None) -> Table:
    """Peers' published numbers, with this run's numbers in the same columns as the first row (when given); with the
    run's ``config`` that row names its backbone, segmentation net and scale (:func:`run_scale`)."""
    df = published_frame()
    if exp is not None:
        main, final = exp.main_net(), exp.final_pseudo()
        seg = exp.seg.get("pseudo", {})

        def pct(d: dict, key: str, path_key: str) -> float:
            return 100 * num(d, key, exp.paths.get(path_key, path_key)) if d else NAN

        ours = {
            "method": f"wsss (this run: {exp.root.parent.name if exp.seed is not None else exp.root.name})",
            "venue": "this run",
            "backbone": "see config",
            "seg_net": "see config",
            "cam_train_pct": pct(exp.cam.get(main, {}), "miou", f"cam_{main}"),
            "pseudo_train_pct": pct(final[1], "miou", final[2]) if final else NAN,
            "val_pct": pct(seg, "miou_crf", "seg_pseudo"),
            "test_pct": NAN,
            "sources": f"{exp.rel(f'cam_{main}')}, {exp.rel(final[2]) if final else '-'}, {exp.rel('seg_pseudo')} (+CRF)",
            "note": "this run's data and protocol (see the protocol table)",
            **run_scale(exp, config),
        }
        df = pd.concat([pd.DataFrame([ours]), df], ignore_index=True)
    return Table(
        "published",
        "This run beside published peers on real PASCAL VOC 2012",
        "mIoU % as published, each with its source (see shared/research/papers.md §3), and this run's numbers in "
        "the first row. The published numbers are real-VOC numbers with other backbones and schedules: this run's "
        "numbers are NOT comparable with them unless it ran on VOC 2012 with the protocol the paper used. "
        "Unverified (recalled) numbers are left out.",
        df,
        {c: "pct" for c in df.columns if c.endswith("_pct")},
    )


# ------------------------------------------------------------------------------------------ (f) protocol
def _flatten(d: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(d, dict):
        out: dict[str, str] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    if isinstance(d, (list, tuple)):
        d = ", ".join(str(x) for x in d)
    return {prefix[:-1]: str(d)}


# what the protocol table shows of the VOC dataset folder's prepare_report.json (wsss.data.voc_prepare)
DATA_PROTOCOL_KEYS = ("source", "label_source", "label_convention")


def protocol(exp: Experiment) -> Table:
    rows = []
    prepared = exp.data_root / "prepare_report.json"
    if prepared.is_file():  # real VOC: where the image labels come from (the XML, or the masks)
        d = read_json(prepared)
        for k in DATA_PROTOCOL_KEYS:
            if isinstance(d, dict) and k in d:
                rows.append({"file": exp.rel_path(prepared), "key": k, "value": str(d[k])})
        subset = d.get("subset") if isinstance(d, dict) else None
        if isinstance(subset, dict):  # data.voc.max_ids_per_split: how many of the source lists' ids were kept
            source = subset.get("source_counts", {})
            kept = ", ".join(f"{s} {d.get('counts', {}).get(s, '?')} of {n}" for s, n in source.items())
            limit = subset.get("max_ids_per_split")
            if isinstance(limit, dict):
                named = ", ".join(f"{n} of {s}" for s, n in limit.items() if n is not None)
                value = f"the first ids of each split list in its own order: {named} ({kept})"
            else:
                value = f"first {limit} ids of each split list ({kept})"
            rows.append({"file": exp.rel_path(prepared), "key": "subset", "value": value})
    for kind in ("cam", "pseudo", "rw", "seg", "ss"):
        for name, d in getattr(exp, kind).items():
            stem = {"pseudo": f"pseudo_{name}_crf", "rw": f"pseudo_{name}_rw", "ss": f"seg_single_stage_{name}"}.get(
                kind, f"{kind}_{name}"
            )
            for k, v in _flatten(protocol_of(d)).items():
                rows.append({"file": exp.rel(stem), "key": k, "value": v})
    for (v, w), d in exp.select.items():  # the held-out AA-weight selection: what chooses, what is reported
        stem = f"select_{v}_aa{w}"
        for k, value in _flatten(protocol_of(d)).items():
            rows.append({"file": exp.rel(stem), "key": k, "value": value})
        rows.append({"file": exp.rel(stem), "key": "heldout.ids", "value": str(d["heldout"].get("ids"))})
    return Table(
        "protocol",
        "Evaluation protocol of every number",
        "The 'protocol' object of each metric file, flattened (split, scales, flip, threshold selection, ...); "
        "for real VOC, first, where the dataset's image labels come from and the subset rule (prepare_report.json).",
        pd.DataFrame(rows, columns=["file", "key", "value"]),
    )


# ------------------------------------------------------------------------------------------ headline
def headline(exp: Experiment) -> Table:
    def cam(n: str, k: str) -> float:
        return num(exp.cam[n], k, exp.paths[f"cam_{n}"]) if n in exp.cam else NAN

    def inv(n: str, k: str) -> float:
        return matched(exp.cam[n], k, exp.paths[f"cam_{n}"]) if n in exp.cam else NAN

    final = exp.final_pseudo()
    pseudo_miou = num(final[1], "miou", exp.paths[final[2]]) if final else NAN
    seg = exp.seg.get("pseudo")
    seg_path = exp.paths.get("seg_pseudo", "")
    seg_miou = num(seg, "miou", seg_path) if seg else NAN
    seg_crf = num(seg, "miou_crf", seg_path) if seg else NAN
    plabel = final[0] if final else "pseudo labels"
    spec = [
        (
            "CAM mIoU: full model vs fair control",
            f"{net_label(FULL)}",
            cam(FULL, "miou"),
            net_label(CONTROL),
            cam(CONTROL, "miou"),
        ),
        (
            "Body recall at a matched boundary false-positive rate: full model vs fair control",
            net_label(FULL),
            inv(FULL, "body_recall"),
            net_label(CONTROL),
            inv(CONTROL, "body_recall"),
        ),
        ("Pseudo-label mIoU vs SupportNet CAM mIoU", plabel, pseudo_miou, "SupportNet CAM", cam("supportnet", "miou")),
        ("DeepLab val mIoU vs pseudo-label mIoU", "DeepLab (pseudo), no CRF", seg_miou, plabel, pseudo_miou),
        ("DeepLab val mIoU (+CRF) vs pseudo-label mIoU", "DeepLab (pseudo), +CRF", seg_crf, plabel, pseudo_miou),
    ]
    rows = [
        {"comparison": c, "a": al, "a_value": a, "b": bl, "b_value": b, "delta": _sub(a, b)} for c, al, a, bl, b in spec
    ]
    return Table(
        "headline",
        "Headline comparisons",
        "delta = a - b in points x100. A dash means an input of this comparison is not part of this run. "
        "CAM and pseudo-label numbers are on train, DeepLab numbers on val.",
        pd.DataFrame(rows),
        {"a_value": "frac", "b_value": "frac", "delta": "delta"},
    )


# ------------------------------------------------------------------------------------------ (f) single stage
SS_LABELS = {"baseline": "1-stage baseline", "aa": "1-stage +AA", "lr": "1-stage +LR", "aa_lr": "1-stage +AA+LR"}


def single_stage(exp: Experiment) -> Table:
    """AA&LR's single-stage rows (val mIoU with and without CRF, and the masks/pseudo GT on the train split),
    deltas to the 1-stage baseline, beside the two-stage DeepLab on the same val split."""

    def val(d: dict, key: str, stem: str) -> float:
        return num(d, key, exp.paths[stem])

    def nested(d: dict, *keys) -> float:
        for k in keys:
            d = d.get(k) if isinstance(d, dict) else None
        return NAN if d is None else float(d)

    base = exp.ss.get("baseline")
    rows = []
    for v, d in exp.ss.items():
        stem = f"seg_single_stage_{v}"
        r = {
            "method": SS_LABELS.get(v, v),
            "file": exp.rel(stem),
            "val_miou": val(d, "miou", stem),
            "val_miou_crf": val(d, "miou_crf", stem),
            "train_masks_miou": nested(d, "pseudo_labels", "masks", "miou"),
            "train_pseudo_gt_miou": nested(d, "pseudo_labels", "pamr_pseudo_gt", "miou"),
        }
        if base is not None:
            b = "seg_single_stage_baseline"
            r["delta_val"] = _sub(r["val_miou"], val(base, "miou", b))
            r["delta_val_crf"] = _sub(r["val_miou_crf"], val(base, "miou_crf", b))
        rows.append(r)
    seg = exp.seg.get("pseudo")
    if seg is not None and exp.ss:
        rows.append(
            {
                "method": "two-stage: DeepLab on the MainNet's pseudo labels",
                "file": exp.rel("seg_pseudo"),
                "val_miou": val(seg, "miou", "seg_pseudo"),
                "val_miou_crf": val(seg, "miou_crf", "seg_pseudo"),
            }
        )
    cols = [
        "method",
        "file",
        "val_miou",
        "val_miou_crf",
        "delta_val",
        "delta_val_crf",
        "train_masks_miou",
        "train_pseudo_gt_miou",
    ]
    fmt = {
        "val_miou": "frac",
        "val_miou_crf": "frac",
        "delta_val": "delta",
        "delta_val_crf": "delta",
        "train_masks_miou": "frac",
        "train_pseudo_gt_miou": "frac",
    }
    return Table(
        "single_stage",
        "AA&LR single-stage model (val)",
        "Val mIoU of the single-stage model without and with CRF post-processing, per variant (baseline = 1-stage "
        "without the AA and LR losses); delta = difference to the 1-stage baseline, x100. train_masks = its "
        "multi-scale masks on the train split (classes cut by the image labels), train_pseudo_gt = the PAMR "
        "pseudo ground truth it trains on. The two-stage row is this run's DeepLab on the same val split.",
        pd.DataFrame(rows, columns=cols),
        fmt,
    )


# ------------------------------------------------------------------------------------------ (g) seeds
def _stats(values: list[float]) -> tuple[float, float, int]:
    v = [x for x in values if not math.isnan(x)]
    if not v:
        return NAN, NAN, 0
    mean = sum(v) / len(v)
    sd = math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else NAN
    return mean, sd, len(v)


def _quantities(exp: Experiment) -> list[tuple[str, str, float]]:
    """(quantity, net/source, value) of one run, for the seed table."""
    out = []
    for n, d in exp.cam.items():
        path = exp.paths[f"cam_{n}"]
        part, body = num(d, "part_recall", path), num(d, "body_recall", path)
        out += [
            ("CAM mIoU, threshold-swept (train)", n, num(d, "miou", path)),
            ("body recall at the swept threshold (train)", n, body),
            ("part - body recall gap at the swept threshold (train)", n, _sub(part, body)),
        ]
        for ring in (d.get("matched_rate") or {}).get("rings") or {}:
            out += [
                (f"body recall, matched {ring} px ring rate (train)", n, matched(d, "body_recall", path, ring)),
                (f"context FP, matched {ring} px ring rate (train)", n, matched(d, "context_fp", path, ring)),
                (f"boundary mIoU, matched {ring} px ring rate (train)", n, matched(d, "boundary_miou", path, ring)),
            ]
        if "context_bg_share" in d:  # synthetic data only: where the CAM's false positives go
            out += [
                ("context bg claimed by the CAM (train)", n, num(d, "context_bg_share", path)),
                ("other bg claimed by the CAM (train)", n, num(d, "other_bg_share", path)),
            ]
    for n, d in exp.pseudo.items():
        out.append(("pseudo-label mIoU, +CRF (train)", n, num(d, "miou", exp.paths[f"pseudo_{n}_crf"])))
    for n, d in exp.rw.items():
        out.append(("pseudo-label mIoU, +random walk (train)", n, num(d, "miou", exp.paths[f"pseudo_{n}_rw"])))
    for v, d in exp.ss.items():
        stem = f"seg_single_stage_{v}"
        out.append(("single-stage val mIoU", f"single_stage_{v}", num(d, "miou", exp.paths[stem])))
        out.append(("single-stage val mIoU +CRF", f"single_stage_{v}", num(d, "miou_crf", exp.paths[stem])))
    for src, d in exp.seg.items():
        what = "pseudo labels" if src == "pseudo" else ("GT (upper bound)" if src == "gt" else src)
        out.append((f"DeepLab val mIoU, trained on {what}", f"deeplab_{src}", num(d, "miou", exp.paths[f"seg_{src}"])))
        out.append(
            (f"DeepLab val mIoU +CRF, trained on {what}", f"deeplab_{src}", num(d, "miou_crf", exp.paths[f"seg_{src}"]))
        )
    return out


SS_CONTROL = "single_stage_baseline"


def _paired_control(net: str) -> str | None:
    """The run a number is compared with inside each seed: the fair control for MainNet variants, the 1-stage
    baseline for the AA/LR variants; None for everything else (and for the controls themselves)."""
    if net.startswith("mainnet_") and net != CONTROL:
        return CONTROL
    if net.startswith("single_stage_") and net != SS_CONTROL:
        return SS_CONTROL
    return None


def seed_spread(exps: list[Experiment]) -> Table:
    """Mean and spread over the seeds of every number the runs share; deltas to the fair control are paired
    (computed within each seed, then averaged), so seed-to-seed variation common to both cancels."""
    per_seed = [{(q, n): v for q, n, v in _quantities(e)} for e in exps]
    keys: list[tuple[str, str]] = []
    for d in per_seed:
        keys += [k for k in d if k not in keys]
    rows = []
    for q, n in keys:
        vals = [d.get((q, n), NAN) for d in per_seed]
        mean, sd, k = _stats(vals)
        control = _paired_control(n)
        deltas = [_sub(d.get((q, n), NAN), d.get((q, control), NAN)) for d in per_seed]
        dmean, dsd, _ = _stats(deltas) if control else (NAN, NAN, 0)
        rows.append(
            {
                "quantity": q,
                "model": net_label(n),
                "net": n,
                "n_seeds": k,
                "mean": mean,
                "sd": sd,
                "min": min((v for v in vals if not math.isnan(v)), default=NAN),
                "max": max((v for v in vals if not math.isnan(v)), default=NAN),
                "delta_vs_control": dmean,
                "delta_sd": dsd,
            }
        )
    seeds = [e.seed for e in exps]
    cols = ["quantity", "model", "net", "n_seeds", "mean", "sd", "min", "max", "delta_vs_control", "delta_sd"]
    fmt = {"mean": "frac", "sd": "frac", "min": "frac", "max": "frac", "delta_vs_control": "delta", "delta_sd": "frac"}
    return Table(
        "seeds",
        "Mean and spread over seeds",
        f"Seeds {seeds}: mean, sample standard deviation (sd, n-1; a dash with one seed), min and max of each "
        f"number, x100. delta_vs_control = paired difference to '{net_label(CONTROL)}' (MainNet variants) or to the "
        "1-stage baseline (AA/LR variants) within each seed, averaged (delta_sd its sd): a gain is distinguishable "
        "from seed noise when |delta| is clearly larger than delta_sd.",
        pd.DataFrame(rows, columns=cols),
        fmt,
    )


ABLATION_MEASURES = (
    ("body", "body recall, matched rate", "body_recall"),
    ("context", "context FP, matched rate", "context_fp"),
    ("boundary", "boundary mIoU, matched rate", "boundary_miou"),
)


def _ablation_measures(e: Experiment, n: str) -> dict[str, float]:
    """One net's numbers of one run for the ablation tables (NaN where the run lacks them)."""
    d = e.cam.get(n)
    out = {k: matched(d, key, e.paths[f"cam_{n}"]) if d else NAN for k, _, key in ABLATION_MEASURES}
    out["far_body"] = matched_far_body(d, e.paths[f"cam_{n}"])[0] if d else NAN
    out["crf"] = num(e.pseudo[n], "miou", e.paths[f"pseudo_{n}_crf"]) if n in e.pseudo else NAN
    out["rw"] = num(e.rw[n], "miou", e.paths[f"pseudo_{n}_rw"]) if n in e.rw else NAN
    return out


def _far_bin(exps: list[Experiment]) -> str | None:
    return next((b for e in exps for n, d in e.cam.items() if (b := matched_far_body(d, e.paths[f"cam_{n}"])[1])), None)


def _ablation_columns(exps: list[Experiment]) -> list[str]:
    """The measures the runs have: matched-rate body/context/boundary, far-body recall where the data has
    distance bins, +CRF, and +random walk where a walk ran."""
    measures = [*(k for k, _, _ in ABLATION_MEASURES)] + (["far_body"] if _far_bin(exps) else []) + ["crf"]
    return measures + (["rw"] if any(e.rw for e in exps) else [])


def ablation_over_seeds(exps: list[Experiment]) -> Table:
    """The ablation as paired differences to the fair control within each seed (mean ± sd over the seeds):
    matched-rate body recall, context false positives and boundary mIoU (first ring), +CRF pseudo-label mIoU
    (calibrated per net on the calibration subset) and, where a walk ran, +random-walk pseudo-label mIoU."""
    nets: list[str] = []
    for e in exps:
        nets += [n for n in e.cam if n not in nets]
    order = [n for n in ABLATION_ORDER if n in nets] + [n for n in nets if n not in ABLATION_ORDER]
    far_bin = _far_bin(exps)
    measures = _ablation_columns(exps)
    ctrl = [_ablation_measures(e, CONTROL) for e in exps]
    rows = []
    for n in order:
        vals = [_ablation_measures(e, n) for e in exps]
        row = {"net": n, "model": net_label(n), "n_seeds": sum(not math.isnan(v["body"]) for v in vals)}
        for m in measures:
            row[m] = _stats([v[m] for v in vals])[0]
            if n != CONTROL:
                d_mean, d_sd, _ = _stats([_sub(v[m], c[m]) for v, c in zip(vals, ctrl)])
                row[f"delta_{m}"], row[f"delta_{m}_sd"] = d_mean, d_sd
        d, sd = row.get("delta_body", NAN), row.get("delta_body_sd", NAN)
        row["body_gain_beyond_2sd"] = (
            "—" if math.isnan(d) or math.isnan(sd) else ("yes" if d > 2 * sd and d > 0 else "no")
        )
        rows.append(row)
    cols = ["net", "model", "n_seeds"]
    fmt: dict[str, str] = {}
    for m in measures:
        cols += [m, f"delta_{m}", f"delta_{m}_sd"]
        fmt.update({m: "frac", f"delta_{m}": "delta", f"delta_{m}_sd": "frac"})
    cols.append("body_gain_beyond_2sd")
    seeds = [e.seed for e in exps]
    ring = next((first_ring(e) for e in exps if first_ring(e)), "-")
    return Table(
        "ablation_seeds",
        "Ablation over seeds: paired differences to the fair control",
        f"Seeds {seeds}. body / context / boundary = body recall, context false positives and boundary mIoU at a "
        f"matched false-positive rate in the {ring} px ring (rescaling-invariant)"
        + (
            f"; far_body = body recall {far_bin} px from the discriminative part, at the same threshold"
            if far_bin
            else ""
        )
        + "; crf = +CRF pseudo-label mIoU, "
        "each net's CAM power and background calibrated on the calibration subset, scored on the other ids "
        "(rw = +random-walk pseudo-label mIoU, where a walk ran). "
        f"delta = the difference to '{net_label(CONTROL)}' (same initialisation, schedule and steps) within each "
        "seed, mean over the seeds, and its sd (n-1): a difference counts when it clearly exceeds its sd; "
        "body_gain_beyond_2sd says whether the body-recall gain exceeds 2 sd. Values x100.",
        pd.DataFrame(rows, columns=cols),
        fmt,
    )


# ------------------------------------------------------------------------------------------ mechanism contrasts
#: what each piece of a MainNet variant (wsss.variants.MAINNET_VARIANTS) is, for the contrast table
PIECE_LABELS = {
    "teacher": "the mean teacher (EMA SupportNet instead of a frozen one)",
    "authors_rcm": "the authors' RCM",
    "authors_mam": "the authors' MAM",
    "rcm": "our RCM",
    "mam": "our MAM",
    "puzzle": "Puzzle-CAM's tile loss",
    "hide_and_seek": "Hide-and-Seek's hiding",
}
#: contrasts between formulations rather than pieces: (a, b, what a - b is)
FORMULATION_CONTRASTS = (
    ("authors_frozen", "rcm_mam", "the authors' RCM+MAM against ours, both with a frozen SupportNet"),
)


def mechanism_pairs(variants: dict[str, tuple[str, ...]] = MAINNET_VARIANTS) -> list[tuple[str, str, str]]:
    """(net a, net b, what a - b isolates): every pair of MainNet variants where a has exactly one piece more than
    b (b not the fair control, whose differences the ablation table has), then FORMULATION_CONTRASTS."""
    out = []
    for a, pa in variants.items():
        for b, pb in variants.items():
            extra = set(pa) - set(pb)
            if b != "baseline" and set(pb) < set(pa) and len(extra) == 1:
                piece = PIECE_LABELS.get(next(iter(extra)), next(iter(extra)))
                out.append((f"mainnet_{a}", f"mainnet_{b}", f"{piece}, added to {net_label('mainnet_' + b)}"))
    return out + [(f"mainnet_{a}", f"mainnet_{b}", what) for a, b, what in FORMULATION_CONTRASTS]


def mechanism_contrasts(exps: list[Experiment], pairs: Sequence[tuple[str, str, str]] | None = None) -> Table:
    """Paired differences between two variants (a - b within each seed, mean ± sd over the seeds) for the
    measures of ``ablation_over_seeds``: the share of one piece, where the difference to the fair control mixes
    several. ``pairs`` defaults to ``mechanism_pairs()``; a pair is listed when the run has both nets."""
    measures = _ablation_columns(exps)
    rows = []
    for a, b, what in mechanism_pairs() if pairs is None else pairs:
        if not any(a in e.cam for e in exps) or not any(b in e.cam for e in exps):
            continue
        va, vb = [_ablation_measures(e, a) for e in exps], [_ablation_measures(e, b) for e in exps]
        row: dict[str, Any] = {"contrast": what, "a": a, "b": b}
        row["n_seeds"] = sum(not math.isnan(_sub(x["body"], y["body"])) for x, y in zip(va, vb))
        for m in measures:
            row[f"delta_{m}"], row[f"delta_{m}_sd"], _ = _stats([_sub(x[m], y[m]) for x, y in zip(va, vb)])
        d, sd = row["delta_body"], row["delta_body_sd"]
        row["body_beyond_2sd"] = "—" if math.isnan(d) or math.isnan(sd) else ("yes" if abs(d) > 2 * sd else "no")
        rows.append(row)
    cols = ["contrast", "a", "b", "n_seeds"]
    fmt: dict[str, str] = {}
    for m in measures:
        cols += [f"delta_{m}", f"delta_{m}_sd"]
        fmt.update({f"delta_{m}": "delta", f"delta_{m}_sd": "frac"})
    cols.append("body_beyond_2sd")
    seeds = [e.seed for e in exps]
    return Table(
        "mechanism_contrasts",
        "Mechanism contrasts over seeds: one piece at a time",
        f"Seeds {seeds}. delta = a - b within each seed, mean over the seeds, and its sd (n-1), for pairs of "
        "MainNet variants where a has one piece more than b (same initialisation, schedule and steps), so the "
        "difference is that piece's share given the others, and for the formulations against each other; measures "
        "as in 'Ablation over seeds'. body_beyond_2sd: |delta_body| > 2 sd. A pair is listed when the run has both "
        "variants. Values x100.",
        pd.DataFrame(rows, columns=cols),
        fmt,
    )


# ------------------------------------------------------------------------------------------ noise experiment
def _noise_keys(exps: list[Experiment]) -> tuple[list[str], list[str]]:
    settings = list(exps[0].noisy_labels)
    variants = list(dict.fromkeys(v for (_, v) in exps[0].noisy_seg))
    return settings, variants


def _final_epoch(e: Experiment, z: str, v: str) -> dict:
    rows = e.noisy_train.get((z, v), {}).get("per_epoch") or [{}]
    return rows[-1]


def _val(x) -> float:
    return NAN if x is None else float(x)


def _without_lr(v: str, variants: list[str]) -> str | None:
    """The variant with the same AA switch and LR off, when ``v`` has LR and that variant ran; else None."""
    aa, lr = SINGLE_STAGE_VARIANTS.get(v, (False, False))
    other = next((w for w, flags in SINGLE_STAGE_VARIANTS.items() if flags == (aa, False)), None)
    return other if lr and other in variants else None


def _paired(exps: list[Experiment], za: str, va: str, vb: str | None, zb: str) -> tuple[float, float]:
    """Mean and sd over the seeds of val mIoU(za, va) - val mIoU(zb, vb), paired within each seed; NaNs when
    ``vb`` is None."""
    if vb is None:
        return NAN, NAN

    def miou(e: Experiment, z: str, v: str) -> float:
        return num(e.noisy_seg[(z, v)], "miou", e.paths[f"seg_noisy_{z}_{v}"])

    mean, sd, _ = _stats([_sub(miou(e, za, va), miou(e, zb, vb)) for e in exps])
    return mean, sd


def noise_experiment(exps: list[Experiment]) -> Table:
    """AA&LR under controlled label noise (issue 16): val mIoU of every variant trained on ground truth corrupted
    by each kind at each rate, mean ± sd over the seeds, the paired difference to the baseline at the same
    setting, and LR's reassignment precision and recall in the last epoch."""
    settings, variants = _noise_keys(exps)
    rows = []
    for z in settings:
        kind = exps[0].noisy_labels[z]["kind"]
        rate = float(exps[0].noisy_labels[z]["rate"])
        achieved = _stats([float(e.noisy_labels[z]["achieved_rate"]) for e in exps])[0]
        for v in variants:
            miou = [num(e.noisy_seg[(z, v)], "miou", e.paths[f"seg_noisy_{z}_{v}"]) for e in exps]
            base = (
                [num(e.noisy_seg[(z, "baseline")], "miou", e.paths[f"seg_noisy_{z}_baseline"]) for e in exps]
                if ("baseline" in variants)
                else [NAN] * len(exps)
            )
            mean, sd, k = _stats(miou)
            d_mean, d_sd, _ = _stats([_sub(a, b) for a, b in zip(miou, base)]) if v != "baseline" else (NAN, NAN, 0)
            lr_mean, lr_sd = _paired(exps, z, v, _without_lr(v, variants), z)
            drop_mean, drop_sd = _paired(exps, "clean", v, v, z) if z != "clean" and "clean" in settings else (NAN,) * 2
            last = [_final_epoch(e, z, v) for e in exps]
            rows.append(
                {
                    "setting": z,
                    "kind": kind,
                    "rate": rate,
                    "achieved_rate": achieved,
                    "variant": SS_LABELS.get(v, v),
                    "n_seeds": k,
                    "miou": mean,
                    "miou_sd": sd,
                    "delta_vs_baseline": d_mean,
                    "delta_sd": d_sd,
                    "delta_lr": lr_mean,
                    "delta_lr_sd": lr_sd,
                    "drop_vs_clean": drop_mean,
                    "drop_sd": drop_sd,
                    "miou_crf": _stats(
                        [num(e.noisy_seg[(z, v)], "miou_crf", e.paths[f"seg_noisy_{z}_{v}"]) for e in exps]
                    )[0],
                    "lr_precision": _stats([_val(r.get("lr_precision")) for r in last])[0],
                    "lr_recall": _stats([_val(r.get("lr_recall")) for r in last])[0],
                }
            )
    cols = list(rows[0]) if rows else ["setting"]
    fmt = {
        "rate": "frac",
        "achieved_rate": "frac",
        "miou": "frac",
        "miou_sd": "frac",
        "delta_vs_baseline": "delta",
        "delta_sd": "frac",
        "delta_lr": "delta",
        "delta_lr_sd": "frac",
        "drop_vs_clean": "delta",
        "drop_sd": "frac",
        "miou_crf": "frac",
        "lr_precision": "frac",
        "lr_recall": "frac",
    }
    return Table(
        "noise_experiment",
        "AA&LR under controlled label noise",
        f"Seeds {[e.seed for e in exps]}. Every single-stage variant trained on the train split's ground truth "
        "corrupted by one kind at one rate (rate = share of each object's pixels made wrong; achieved_rate = wrong "
        "pixels / object pixels, measured), instead of its own PAMR pseudo GT, on the same schedule; val mIoU without "
        "CRF (mean, sd over the seeds), its paired difference to the baseline at the same setting (delta, sd), "
        "delta_lr = the paired difference of an LR variant to the same variant without LR (+LR - baseline, "
        "+AA+LR - +AA: what LR adds), drop_vs_clean = the same variant's clean val mIoU minus this setting's "
        "(paired; negative: the noise raised it), each with its sd over the seeds; miou_crf = val mIoU "
        "with CRF. lr_precision / lr_recall: in the last epoch, LR's moves that remove a wrong label over all its "
        "moves / over all wrong target pixels (training crops). Values x100.",
        pd.DataFrame(rows, columns=cols),
        fmt,
    )


def noise_memorisation(exps: list[Experiment]) -> Table:
    """Per setting and variant: agreement of the training predictions with the (corrupted) targets and with the
    truth, at its best epoch and at the last (mean over the seeds): memorisation of the noise shows as agreement
    with the truth falling from its peak while agreement with the targets keeps rising."""
    settings, variants = _noise_keys(exps)
    rows = []
    for z in settings:
        for v in variants:
            per = [e.noisy_train.get((z, v), {}).get("per_epoch") or [] for e in exps]
            gt_peak = _stats([max((_val(r.get("agree_gt")) for r in p), default=NAN) for p in per])[0]
            gt_last = _stats([_val(p[-1].get("agree_gt")) if p else NAN for p in per])[0]
            tg_last = _stats([_val(p[-1].get("agree_target")) if p else NAN for p in per])[0]
            rows.append(
                {
                    "setting": z,
                    "variant": SS_LABELS.get(v, v),
                    "epochs": max((len(p) for p in per), default=0),
                    "agree_target_last": tg_last,
                    "agree_gt_peak": gt_peak,
                    "agree_gt_last": gt_last,
                    "agree_gt_drop": _sub(gt_peak, gt_last),
                }
            )
    cols = list(rows[0]) if rows else ["setting"]
    fmt = {c: "frac" for c in cols if c.startswith("agree")}
    return Table(
        "noise_memorisation",
        "Controlled noise: agreement with the targets and with the truth over training",
        "Agreement (pixel accuracy on the training crops, 255 skipped) of each model's segmentation with its "
        "corrupted targets and with the ground truth, per epoch, mean over the seeds: the best epoch's agreement "
        "with the truth, the last epoch's, and the drop between them (memorisation of the noise). Values x100.",
        pd.DataFrame(rows, columns=cols),
        fmt,
    )


# ------------------------------------------------------------------------------------------ expected trends
#: the points by which DeepLab's val mIoU may trail its pseudo labels' train mIoU, and by which the fully
#: supervised upper bound must exceed it ("far above"), for the trends table (ours; issue 15's "within ~5 points")
TREND_POINTS = 0.05


def trends(exp: Experiment) -> Table:
    """The trends the field has seen on VOC, each measured on this run's metric files: CRF labels > CAM, the walk
    >= the CRF alone, DeepLab within ``TREND_POINTS`` of its pseudo labels, the upper bound far above."""
    rows = []
    peers = published_frame().set_index("method")
    psa, irn = peers.loc["AffinityNet / PSA"], peers.loc["IRN"]

    def add(trend: str, a: tuple[str, dict, str, str], b: tuple[str, dict, str, str], holds, published: str) -> None:
        va, vb = (num(d, key, exp.paths[stem]) for _, d, stem, key in (a, b))
        diff = _sub(vb, va)
        rows.append(
            {
                "trend": trend,
                "from": a[0],
                "from_miou": va,
                "to": b[0],
                "to_miou": vb,
                "difference": diff,
                "ratio_pct": _ratio_pct(vb, va),
                "holds": "—" if math.isnan(diff) else ("yes" if holds(diff) else "no"),
                "published": published,
            }
        )

    pnet = exp.pseudo_net()
    if pnet and pnet in exp.cam:
        add(
            "CRF pseudo labels > CAM (train)",
            (f"{net_label(pnet)} CAM", exp.cam[pnet], f"cam_{pnet}", "miou"),
            (f"{net_label(pnet)} +CRF", exp.pseudo[pnet], f"pseudo_{pnet}_crf", "miou"),
            lambda d: d > 0,
            f"PSA: CAM {psa.cam_train_pct} -> random walk {psa.pseudo_train_pct}; IRN's 48.3 -> 66.3 is quoted, "
            "unverified",
        )
    for n in (x for x in exp.rw if x in exp.pseudo):
        add(
            "random walk >= CRF alone (train)",
            (f"{net_label(n)} +CRF", exp.pseudo[n], f"pseudo_{n}_crf", "miou"),
            (f"{net_label(n)} +random walk", exp.rw[n], f"pseudo_{n}_rw", "miou"),
            lambda d: d >= 0,
            "PSA and IRN walk from CRF-seeded labels; no CRF-alone number of theirs is verified (papers.md §3)",
        )
    final, seg = exp.final_pseudo(), exp.seg.get("pseudo")
    if final and seg is not None:
        add(
            f"DeepLab val within {100 * TREND_POINTS:.0f} points of its pseudo labels (train)",
            (final[0], final[1], final[2], "miou"),
            ("DeepLab val, +CRF", seg, "seg_pseudo", "miou_crf"),
            lambda d: d >= -TREND_POINTS,
            f"PSA: random-walk labels {psa.pseudo_train_pct} (train) -> DeepLab {psa.val_pct} (val)",
        )
    if seg is not None and "gt" in exp.seg:
        add(
            f"fully supervised upper bound > WSSS by >= {100 * TREND_POINTS:.0f} points (val, +CRF)",
            ("DeepLab on pseudo labels", seg, "seg_pseudo", "miou_crf"),
            ("DeepLab on GT (upper bound)", exp.seg["gt"], "seg_gt", "miou_crf"),
            lambda d: d >= TREND_POINTS,
            f"IRN {irn.val_pct} val against DeepLabV3+ R101 fully supervised 78.6 (mmsegmentation, papers.md)",
        )
    cols = ["trend", "from", "from_miou", "to", "to_miou", "difference", "ratio_pct", "holds", "published"]
    return Table(
        "trends",
        "Expected trends (what the field has seen on VOC), measured on this run",
        "Each row compares two of this run's metric files (mIoU x100; ratio = to / from, %); 'holds' applies the "
        "row's rule. A trend that does not hold is reported as found. The last row's ratio is the fully supervised "
        "share: WSSS val / fully supervised val = 100 / ratio. Published numbers for context (papers.md §3), "
        "not comparable.",
        pd.DataFrame(rows, columns=cols),
        {"from_miou": "frac", "to_miou": "frac", "difference": "delta", "ratio_pct": "pct"},
    )


def build_tables(exp: Experiment, config: dict | None = None) -> list[Table]:
    tables = [headline(exp), cam_matched(exp), cam_quality(exp), ablation(exp), pipeline(exp)]
    if exp.ss:
        tables.append(single_stage(exp))
    return tables + [trends(exp), per_class(exp), published(exp, config), protocol(exp)]


def stacked_csv_frame(tables: list[Table]) -> pd.DataFrame:
    """All tables in one frame with a leading ``table`` column (raw values, union of columns)."""
    parts = [t.frame.assign(table=t.name)[["table", *t.frame.columns]] for t in tables if len(t.frame)]
    return pd.concat(parts, ignore_index=True, sort=False) if parts else pd.DataFrame(columns=["table"])


# ------------------------------------------------------------------------------------- AA-weight selection
def aa_selection(exps: list[Experiment], select_on: str = "miou_crf", configured_weight: float | None = None) -> Table:
    """The held-out choice of the AA weight (issue 16): per variant and weight, the mIoU on the calibration subset
    of cam_split (the held-out train images whose GT chooses) and on val (reported, never chosen on), each the mean
    over the seeds; ``chosen`` marks, per variant, the weight with the best held-out ``select_on`` mean. The val
    number of the pick is the selection's result; the other val numbers are shown only to see what choosing on val
    would have given (the optimism of that protocol)."""
    keys = list(exps[0].select)
    variants = list(dict.fromkeys(v for v, _ in keys))
    rows = []
    for v in variants:
        weights = [w for vv, w in keys if vv == v]
        block = []
        for w in weights:
            stem = f"select_{v}_aa{w}"
            row = {"variant": SS_LABELS.get(v, v), "aa_weight": float(w), "n_seeds": len(exps)}
            for part in ("heldout", "val"):
                for k in ("miou", "miou_crf"):
                    vals = [num(e.select[(v, w)][part], k, e.paths[stem]) for e in exps]
                    row[f"{part}_{k}"], row[f"{part}_{k}_sd"], _ = _stats(vals)
            block.append(row)
        best = max(
            range(len(block)), key=lambda i: -math.inf if math.isnan(x := block[i][f"heldout_{select_on}"]) else x
        )
        val_best = max(range(len(block)), key=lambda i: block[i][f"val_{select_on}"])
        grid = [row["aa_weight"] for row in block]
        pick = grid[best]
        # a pick at the grid's largest weight, or at its smallest when that is not 0 (no AA, a complete answer),
        # may have its optimum outside the grid
        edge = pick == max(grid) or (pick == min(grid) and pick > 0)
        for i, row in enumerate(block):
            row["chosen"] = "yes" if i == best else ""
            row["at_grid_edge"] = "yes: extend selection.aa_weights" if i == best and edge else ""
            row["best_on_val"] = "yes" if i == val_best else ""
            row["configured"] = "yes" if configured_weight is not None and row["aa_weight"] == configured_weight else ""
        rows += block
    cols = ["variant", "aa_weight", "n_seeds"]
    fmt: dict[str, str] = {}
    for part in ("heldout", "val"):
        for k in ("miou", "miou_crf"):
            cols += [f"{part}_{k}", f"{part}_{k}_sd"]
            fmt.update({f"{part}_{k}": "frac", f"{part}_{k}_sd": "frac"})
    cols += ["chosen", "at_grid_edge", "best_on_val", "configured"]
    ids = next((d["heldout"].get("ids") for d in exps[0].select.values()), None) or "the calibration subset"
    return Table(
        "aa_selection",
        "AA weight chosen on held-out train images",
        f"Each variant trained at each AA weight (single_stage.selection), scored with the val-time inference on "
        f"{ids} (heldout: the GT masks that choose) and on val (reported; never chosen on); mean and sd over the "
        f"seeds, x100. chosen = the best heldout {select_on}: its val number is the result. best_on_val = what "
        "choosing on the reported split would have picked; configured = single_stage.aa.weight, which the main "
        "variants train with (set it to the chosen weight). at_grid_edge = the pick is the grid's largest weight, "
        "or its smallest when that is above 0 (weight 0 = the variant without AA): the best weight may lie outside "
        "the grid.",
        pd.DataFrame(rows, columns=cols),
        fmt,
    )
