"""Stage: dense-CRF refinement of CAMs into pseudo labels (VOC palette PNGs, 255 = ignore), and their mIoU.

The background score is ``(1 - max CAM)^alpha`` (PSA/SEAM) or a constant; the CRF runs on all cores
(``wsss.parallel.imap_ordered``). Pseudo-label mIoU is measured on ``cam_split`` against the ground truth with
pseudo-label 255 pixels skipped (AFA's ``pseudo_scores`` convention); the share of ignored pixels is reported
beside it so the two cannot be confused.

``refine.calibrate_background`` picks the background per net (cam_threshold: from the net's best CAM threshold;
crf_sweep: the best of a grid on a subset of cam_split), recorded under ``protocol.background_calibration``.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np

from wsss import metrics
from wsss.data import voc
from wsss.io import (WsssInputError, atomic_dir, load_npz, read_image, read_json, read_label_png, write_json,
                     write_label_png)
from wsss.parallel import imap_ordered
from wsss.refine.crf import cam_to_pseudo_label
from wsss.stages.eval_cams import per_class_dict


def _label(image_id: str, *, cams_dir: Path, data_root: Path, rcfg: dict) -> tuple[str, np.ndarray]:
    z = load_npz(cams_dir / f"{image_id}.npz")
    img = read_image(voc.image_path(data_root, image_id))
    label = cam_to_pseudo_label(
        img, z["cam"].astype(np.float32), z["keys"],
        bg_alpha=rcfg["bg_alpha"], bg_mode=rcfg["bg_mode"], bg_constant=rcfg["bg_constant"],
        ignore_confidence=rcfg["ignore_confidence"], **rcfg["crf"],
    )
    return image_id, label


def _one(image_id: str, *, cams_dir: Path, data_root: Path, out_dir: Path, rcfg: dict) -> str:
    _, label = _label(image_id, cams_dir=cams_dir, data_root=data_root, rcfg=rcfg)
    write_label_png(out_dir / f"{image_id}.png", label)
    return image_id


def from_cam_threshold(rcfg: dict, cam_metrics: Path | None) -> tuple[dict, dict]:
    """``calibrate_background: cam_threshold``: the background decision boundary at the net's best CAM threshold t
    (constant mode → bg_constant = t; power mode → alpha = ln t / ln(1 - t), so (1 - t)^alpha = t)."""
    if cam_metrics is None:
        raise WsssInputError("refine.calibrate_background: cam_threshold needs --cam-metrics (the net's eval_cams JSON)")
    t = read_json(cam_metrics).get("best_threshold")
    if not isinstance(t, (int, float)) or not 0 < t < 1:
        raise WsssInputError(f"{cam_metrics}: best_threshold {t!r} is not in (0, 1); re-run eval_cams")
    out = dict(rcfg)
    if rcfg["bg_mode"] == "constant":
        out["bg_constant"] = float(t)
    else:
        out["bg_alpha"] = float(np.log(t) / np.log1p(-t))
    return out, {"method": "cam_threshold", "cam_threshold": float(t)}


def _score(ids: list[str], *, cams_dir: Path, data_root: Path, rcfg: dict, threads: int, desc: str) -> float:
    cm = metrics.ConfusionMatrix(pred_ignore="skip")
    fn = partial(_label, cams_dir=cams_dir, data_root=data_root, rcfg=rcfg)
    for image_id, label in imap_ordered(fn, ids, workers=threads, desc=desc):
        cm.update(label, read_label_png(voc.mask_path(data_root, image_id)))
    return float(cm.compute()["miou"])


def crf_sweep(rcfg: dict, eval_ids: list[str], *, cams_dir: Path, data_root: Path, threads: int,
              net_name: str) -> tuple[dict, dict]:
    """``calibrate_background: crf_sweep``: the background parameter with the best pseudo-label mIoU on the first
    ``calibration_images`` ids of cam_split (power mode: ``calibration_alphas``; constant: ``calibration_constants``)."""
    key, grid = (("bg_constant", rcfg["calibration_constants"]) if rcfg["bg_mode"] == "constant"
                 else ("bg_alpha", rcfg["calibration_alphas"]))
    ids = eval_ids[: rcfg["calibration_images"]]
    curve = []
    for v in grid:
        miou = _score(ids, cams_dir=cams_dir, data_root=data_root, rcfg={**rcfg, key: float(v)}, threads=threads,
                      desc=f"CRF calibration {net_name} {key}={v}")
        curve.append({key: float(v), "miou": miou})
    best = max(curve, key=lambda r: r["miou"])  # first best on ties: the grid's order decides
    return {**rcfg, key: best[key]}, {"method": "crf_sweep", "parameter": key, "images": len(ids), "curve": curve,
                                      "chosen": best[key]}


def check_splits(data_root: Path, split: str, eval_split: str) -> tuple[list[str], list[str]]:
    """(ids to label, ids to score) of a pseudo-label stage: cam_split must lie within train_split and have masks."""
    ids = voc.read_split(data_root, split)
    eval_ids = voc.read_split(data_root, eval_split)
    missing = sorted(set(eval_ids) - set(ids))
    if missing:
        raise WsssInputError(f"data.cam_split '{eval_split}' has {len(missing)} ids outside data.train_split '{split}' "
                             f"(first {missing[:3]}); pseudo labels are made on train_split, which must hold cam_split")
    voc.check_ids(data_root, ids, need_masks=False, split=split)
    voc.check_ids(data_root, eval_ids, need_masks=True, split=eval_split)
    return ids, eval_ids


def score_labels(folder: Path, data_root: Path, eval_ids: list[str]) -> dict:
    """mIoU of the label PNGs in ``folder`` on ``eval_ids`` (pseudo-label 255 pixels skipped, AFA convention)."""
    cm = metrics.ConfusionMatrix(pred_ignore="skip")
    for image_id in eval_ids:
        cm.update(read_label_png(folder / f"{image_id}.png"), read_label_png(voc.mask_path(data_root, image_id)))
    return cm.compute()


def pseudo_metrics(net_name: str, res: dict, *, split: str, eval_split: str, n_eval: int, protocol: dict) -> dict:
    """The metric file of a pseudo-label stage (CRF or random walk)."""
    return {
        "net": net_name,
        "protocol": {"split": eval_split, "images": n_eval, "labelled_split": split, **protocol,
                     "pseudo_label_255": "skipped (pixels the pseudo label ignores are not scored)",
                     "ignore": "255 in GT ignored"},
        "miou": res["miou"],
        "per_class_iou": per_class_dict(res["per_class_iou"]),
        "ignore_fraction": res["pred_ignored_share"],
        "precision": res["pixel_accuracy"],
    }


def run(cfg: dict, *, net_name: str, cams_dir: Path, data_root: Path, split: str, eval_split: str, out_dir: Path,
        metrics_out: Path, threads: int = 1, cam_metrics: Path | None = None) -> None:
    rcfg, calibration = cfg["refine"], None
    # check everything the evaluation needs before the CRF runs, and score the labels before the folder is
    # renamed into place: a failure leaves no pseudo-label folder behind
    ids, eval_ids = check_splits(data_root, split, eval_split)
    if rcfg["calibrate_background"] == "cam_threshold":
        rcfg, calibration = from_cam_threshold(rcfg, cam_metrics)
    elif rcfg["calibrate_background"] == "crf_sweep":
        rcfg, calibration = crf_sweep(rcfg, eval_ids, cams_dir=cams_dir, data_root=data_root, threads=threads,
                                      net_name=net_name)
    with atomic_dir(out_dir) as tmp:
        fn = partial(_one, cams_dir=cams_dir, data_root=data_root, out_dir=tmp, rcfg=rcfg)
        for _ in imap_ordered(fn, ids, workers=threads, desc=f"CRF {net_name}"):
            pass
        res = score_labels(tmp, data_root, eval_ids)
    write_json(metrics_out, pseudo_metrics(net_name, res, split=split, eval_split=eval_split, n_eval=len(eval_ids),
                                           protocol={
        "refinement": "dense CRF",
        "background": f"{rcfg['bg_mode']} (alpha {rcfg['bg_alpha']:.4g}, constant {rcfg['bg_constant']:.4g})",
        "background_calibration": calibration,
        "crf": rcfg["crf"],
        "ignore_confidence": rcfg["ignore_confidence"],
    }))
