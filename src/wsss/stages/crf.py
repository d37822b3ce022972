"""Stage crf: dense-CRF refinement of one net's CAMs into pseudo labels (VOC palette PNGs, 255 = ignore) on
train_split, and their mIoU on cam_split.

The background score is ``(1 - max CAM)^alpha`` (PSA/SEAM) or a constant; the CRF runs on all cores
(``wsss.parallel.imap_ordered``). Pseudo-label mIoU is measured on ``cam_split`` against the ground truth with
pseudo-label 255 pixels skipped (AFA's ``pseudo_scores`` convention); the share of ignored pixels is reported
beside it so the two cannot be confused. ``refine.calibrate_background`` picks the background (and, in
``crf_sweep``, the CAM power γ) per net on the calibration subset of cam_split (``data.calibration_fraction``)
(:mod:`wsss.refine.calibration`), recorded under ``protocol.background_calibration``; the mIoU is scored on the
other ids of cam_split.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from wsss.evaluation import check_splits, held_out, pseudo_metrics, score_labels
from wsss.io import atomic_dir, write_json, write_label_png
from wsss.parallel import imap_ordered
from wsss.refine.calibration import crf_sweep, from_cam_threshold, label_image


def _one(image_id: str, *, cams: Path, data: Path, out_dir: Path, rcfg, gamma: float) -> str:
    _, label = label_image(image_id, cams_dir=cams, data_root=data, rcfg=rcfg, gamma=gamma)
    write_label_png(out_dir / f"{image_id}.png", label)
    return image_id


def run(
    cfg,
    *,
    seed: int,
    net: str,
    data: Path,
    cams: Path,
    pseudo: Path,
    metrics: Path,
    cam_metrics: Path | None = None,
    threads: int = 1,
) -> None:
    rcfg, calibration, gamma = cfg["refine"], None, 1.0
    split, eval_split = cfg["data"]["train_split"], cfg["data"]["cam_split"]
    # check everything the evaluation needs before the CRF runs, and score the labels before the folder is
    # renamed into place: a failure leaves no pseudo-label folder behind
    ids, eval_ids = check_splits(data, split, eval_split)
    calib_ids, scored_ids = held_out(eval_ids, cfg["data"]["calibration_fraction"], eval_split)
    if rcfg["calibrate_background"] == "cam_threshold":
        rcfg, calibration = from_cam_threshold(rcfg, cam_metrics)
    elif rcfg["calibrate_background"] == "crf_sweep":
        rcfg, gamma, calibration = crf_sweep(
            rcfg, calib_ids, cams_dir=cams, data_root=data, threads=threads, net_name=net
        )
    with atomic_dir(pseudo) as tmp:
        fn = partial(_one, cams=cams, data=data, out_dir=tmp, rcfg=rcfg, gamma=gamma)
        for _ in imap_ordered(fn, ids, workers=threads, desc=f"CRF {net}"):
            pass
        res = score_labels(tmp, data, scored_ids)
    background = (
        f"constant {rcfg['bg_constant']:.4g}"
        if rcfg["bg_mode"] == "constant"
        else f"{rcfg['bg_mode']} (alpha {rcfg['bg_alpha']:.4g})"
    )
    write_json(
        metrics,
        pseudo_metrics(
            net,
            res,
            split=split,
            eval_split=eval_split,
            n_calibration=len(calib_ids),
            n_eval=len(scored_ids),
            protocol={
                "refinement": "dense CRF",
                "cam_power": gamma,
                "background": background,
                "background_calibration": calibration,
                "crf": rcfg["crf"],
                "ignore_confidence": rcfg["ignore_confidence"],
            },
        ),
    )
