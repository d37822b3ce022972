"""The CRF pseudo label of one image from its CAM file, and the per-net calibration of its background score.

``refine.calibrate_background`` (docs/methods.md): ``none`` keeps the configured background; ``cam_threshold``
puts the background's decision boundary at the net's best CAM threshold t (constant mode: bg_constant = t; power
mode: alpha = ln t / ln(1 - t), so that (1 - t)^alpha = t); ``crf_sweep`` takes the best pseudo-label mIoU over
the joint grid of CAM powers γ (the CRF sees CAM^γ) and background values, on calibration images only (the
caller passes ids disjoint from the scored ones), and warns when the best sits at an edge of the grid.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import numpy as np

from wsss import metrics
from wsss.data import voc
from wsss.io import WsssInputError, load_npz, read_image, read_json, read_label_png
from wsss.parallel import imap_ordered
from wsss.refine.crf import cam_to_pseudo_label

log = logging.getLogger("wsss")


def background_args(rcfg) -> dict:
    """The background keyword arguments of :func:`cam_to_pseudo_label` that ``rcfg["bg_mode"]`` uses."""
    if rcfg["bg_mode"] == "constant":
        return {"bg_mode": "constant", "bg_constant": rcfg["bg_constant"]}
    return {"bg_mode": rcfg["bg_mode"], "bg_alpha": rcfg["bg_alpha"]}


def label_image(image_id: str, *, cams_dir: Path, data_root: Path, rcfg, gamma: float = 1.0) -> tuple[str, np.ndarray]:
    """(id, uint8 CRF pseudo label) of one image from its CAM file (raised to the power ``gamma``) and the
    ``refine`` config ``rcfg``."""
    z = load_npz(cams_dir / f"{image_id}.npz")
    img = read_image(voc.image_path(data_root, image_id))
    cam = z["cam"].astype(np.float32)
    if cam.shape[1:] != img.shape[:2]:
        raise WsssInputError(
            f"{cams_dir / image_id}.npz: CAM size {cam.shape[1:]} differs from the image's "
            f"{img.shape[:2]} ({voc.image_path(data_root, image_id)}); re-run extract_cams"
        )
    if gamma != 1.0:
        cam = np.maximum(cam, 0.0) ** np.float32(gamma)
    label = cam_to_pseudo_label(
        img, cam, z["keys"], ignore_confidence=rcfg["ignore_confidence"], **background_args(rcfg), **rcfg["crf"]
    )
    return image_id, label


def from_cam_threshold(rcfg: dict, cam_metrics: Path | None) -> tuple[dict, dict]:
    """``calibrate_background: cam_threshold``: (the refine config with the calibrated background, the record)."""
    if cam_metrics is None:
        raise WsssInputError(
            "refine.calibrate_background: cam_threshold needs --cam-metrics (the net's eval_cams JSON)"
        )
    t = read_json(cam_metrics).get("best_threshold")
    if not isinstance(t, (int, float)) or not 0 < t < 1:
        raise WsssInputError(f"{cam_metrics}: best_threshold {t!r} is not in (0, 1); re-run eval_cams")
    out = dict(rcfg)
    if rcfg["bg_mode"] == "constant":
        out["bg_constant"] = float(t)
    else:
        out["bg_alpha"] = float(np.log(t) / np.log1p(-t))
    return out, {"method": "cam_threshold", "cam_threshold": float(t)}


def score(
    ids: list[str], *, cams_dir: Path, data_root: Path, rcfg, threads: int, desc: str, gamma: float = 1.0
) -> float:
    """Pseudo-label mIoU of ``ids`` (pseudo-label 255 skipped) with the refine config ``rcfg`` and CAM power
    ``gamma``."""
    cm = metrics.ConfusionMatrix(pred_ignore="skip")
    fn = partial(label_image, cams_dir=cams_dir, data_root=data_root, rcfg=rcfg, gamma=gamma)
    for image_id, label in imap_ordered(fn, ids, workers=threads, desc=desc):
        cm.update(label, read_label_png(voc.mask_path(data_root, image_id)))
    return float(cm.compute()["miou"])


def edges(chosen: dict, grid: dict[str, list[float]]) -> list[str]:
    """The grid axes (of more than one value) whose chosen value is the axis' lowest or highest:
    ``["bg_alpha high", ...]``."""
    out = []
    for key, values in grid.items():
        if len(values) > 1 and chosen[key] in (min(values), max(values)):
            out.append(f"{key} {'low' if chosen[key] == min(values) else 'high'}")
    return out


def crf_sweep(
    rcfg: dict, calibration_ids: list[str], *, cams_dir: Path, data_root: Path, threads: int, net_name: str
) -> tuple[dict, float, dict]:
    """``calibrate_background: crf_sweep``: (the refine config with the chosen background, the chosen CAM power
    γ, the record) of the best pseudo-label mIoU over calibration_gammas × the background grid (power mode:
    ``calibration_alphas``; constant: ``calibration_constants``) on the first ``calibration_images`` of
    ``calibration_ids``."""
    key, values = (
        ("bg_constant", rcfg["calibration_constants"])
        if rcfg["bg_mode"] == "constant"
        else ("bg_alpha", rcfg["calibration_alphas"])
    )
    grid = {"cam_gamma": [float(g) for g in rcfg["calibration_gammas"]], key: [float(v) for v in values]}
    ids = calibration_ids[: rcfg["calibration_images"]]
    curve = []
    for g in grid["cam_gamma"]:
        for v in grid[key]:
            miou = score(
                ids,
                cams_dir=cams_dir,
                data_root=data_root,
                rcfg={**rcfg, key: v},
                gamma=g,
                threads=threads,
                desc=f"CRF calibration {net_name} gamma={g:g} {key}={v:g}",
            )
            curve.append({"cam_gamma": g, key: v, "miou": miou})
    best = max(curve, key=lambda r: r["miou"])  # first best on ties: the grid's order decides
    at_edge = edges(best, grid)
    if at_edge:
        log.warning(
            "CRF calibration of %s: the best point (%s) is at the edge of the grid (%s); widen that axis "
            "(refine.calibration_gammas, calibration_alphas or calibration_constants)",
            net_name,
            ", ".join(f"{k} {best[k]:g}" for k in grid),
            ", ".join(at_edge),
        )
    return (
        {**rcfg, key: best[key]},
        best["cam_gamma"],
        {
            "method": "crf_sweep",
            "parameters": list(grid),
            "images": len(ids),
            "curve": curve,
            "chosen": {k: best[k] for k in grid},
            "at_edge": at_edge,
        },
    )
