"""The CRF pseudo label of one image from its CAM file, and the per-net calibration of its background score.

``refine.calibrate_background`` (docs/methods.md): ``none`` keeps the configured background; ``cam_threshold``
puts the background's decision boundary at the net's best CAM threshold t (constant mode: bg_constant = t; power
mode: alpha = ln t / ln(1 - t), so that (1 - t)^alpha = t); ``crf_sweep`` takes the best pseudo-label mIoU over a
grid on the first ``calibration_images`` ids of cam_split.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np

from wsss import metrics
from wsss.data import voc
from wsss.io import WsssInputError, load_npz, read_image, read_json, read_label_png
from wsss.parallel import imap_ordered
from wsss.refine.crf import cam_to_pseudo_label


def background_args(rcfg) -> dict:
    """The background keyword arguments of :func:`cam_to_pseudo_label` that ``rcfg["bg_mode"]`` uses."""
    if rcfg["bg_mode"] == "constant":
        return {"bg_mode": "constant", "bg_constant": rcfg["bg_constant"]}
    return {"bg_mode": rcfg["bg_mode"], "bg_alpha": rcfg["bg_alpha"]}


def label_image(image_id: str, *, cams_dir: Path, data_root: Path, rcfg) -> tuple[str, np.ndarray]:
    """(id, uint8 CRF pseudo label) of one image from its CAM file and the ``refine`` config ``rcfg``."""
    z = load_npz(cams_dir / f"{image_id}.npz")
    img = read_image(voc.image_path(data_root, image_id))
    cam = z["cam"].astype(np.float32)
    if cam.shape[1:] != img.shape[:2]:
        raise WsssInputError(
            f"{cams_dir / image_id}.npz: CAM size {cam.shape[1:]} differs from the image's "
            f"{img.shape[:2]} ({voc.image_path(data_root, image_id)}); re-run extract_cams"
        )
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


def score(ids: list[str], *, cams_dir: Path, data_root: Path, rcfg, threads: int, desc: str) -> float:
    """Pseudo-label mIoU of ``ids`` (pseudo-label 255 skipped) with the refine config ``rcfg``."""
    cm = metrics.ConfusionMatrix(pred_ignore="skip")
    fn = partial(label_image, cams_dir=cams_dir, data_root=data_root, rcfg=rcfg)
    for image_id, label in imap_ordered(fn, ids, workers=threads, desc=desc):
        cm.update(label, read_label_png(voc.mask_path(data_root, image_id)))
    return float(cm.compute()["miou"])


def crf_sweep(
    rcfg: dict, eval_ids: list[str], *, cams_dir: Path, data_root: Path, threads: int, net_name: str
) -> tuple[dict, dict]:
    """``calibrate_background: crf_sweep``: the background parameter with the best pseudo-label mIoU on the first
    ``calibration_images`` ids of cam_split (power mode: ``calibration_alphas``; constant: ``calibration_constants``)."""
    key, grid = (
        ("bg_constant", rcfg["calibration_constants"])
        if rcfg["bg_mode"] == "constant"
        else ("bg_alpha", rcfg["calibration_alphas"])
    )
    ids = eval_ids[: rcfg["calibration_images"]]
    curve = []
    for v in grid:
        miou = score(
            ids,
            cams_dir=cams_dir,
            data_root=data_root,
            rcfg={**rcfg, key: float(v)},
            threads=threads,
            desc=f"CRF calibration {net_name} {key}={v}",
        )
        curve.append({key: float(v), "miou": miou})
    best = max(curve, key=lambda r: r["miou"])  # first best on ties: the grid's order decides
    return {**rcfg, key: best[key]}, {
        "method": "crf_sweep",
        "parameter": key,
        "images": len(ids),
        "curve": curve,
        "chosen": best[key],
    }
