"""Stage eval_cams: CAM quality on ``cam_split`` against the ground truth.

Protocol (printed into the metric file): background = a constant threshold plane, argmax over
(background, image classes); the threshold is swept over ``cams.thresholds`` against the ground truth of the
calibration subset (the first ids of cam_split, ``data.calibration_fraction`` of them; SEAM's ``--curve`` and
PuzzleCAM's evaluate.py sweep on the images they score) and every number is scored on the other ids, at that threshold and
at the fixed ``cams.fixed_threshold``. 255 in the ground truth is ignored. On the synthetic benchmark it also
measures the biases the benchmark plants: recall on discriminative-part versus body pixels, and background claimed
by context classes versus the others.

Those numbers move under a monotone rescaling of the CAM. The ``matched_rate`` section does not: every measure
there is taken at the threshold that gives each net the same false-positive rate in rings of background around
the objects (``cams.matched``; :mod:`wsss.cam_measures`).

The ``gt_filled`` section is an oracle, the headroom of this CAM: every ground-truth pixel of an image class
raised to at least ``cams.oracle_fill`` (:func:`wsss.metrics.gt_filled`), then swept and scored as the CAM is.
"""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from wsss import cam_measures
from wsss import metrics as metrics_
from wsss.data import voc
from wsss.evaluation import bias_probes, check_same_size, context_rows, held_out, held_out_protocol, per_class_dict
from wsss.io import load_npz, read_label_png, write_json
from wsss.parallel import launched_rank


def run(cfg, *, seed: int, net: str, data: Path, cams: Path, metrics: Path, curve: Path, threads: int = 1) -> None:
    if launched_rank() != 0:  # CPU-bound and cheap: under torchrun rank 0 alone evaluates, the others exit
        return
    ccfg, split = cfg["cams"], cfg["data"]["cam_split"]
    calib_ids, scored_ids = held_out(voc.read_split(data, split), cfg["data"]["calibration_fraction"], split)
    thresholds = sorted(set(ccfg["thresholds"]) | {ccfg["fixed_threshold"]})
    part_dir, context = bias_probes(data)
    rows = context_rows(data)
    mcfg = ccfg["matched"]
    matched = cam_measures.MatchedRate(
        mcfg["fp_rate"], mcfg["rings"], distance_bins=mcfg["distance_bins"], trimap_width=mcfg["trimap_width"]
    )
    # the calibration subset chooses the swept threshold and the matched-rate thresholds; the others are scored
    calib_sweep, sweep = metrics_.ThresholdSweep(thresholds), metrics_.ThresholdSweep(thresholds)
    fill = ccfg["oracle_fill"]
    oracle_calib, oracle = metrics_.ThresholdSweep(thresholds), metrics_.ThresholdSweep(thresholds)
    calib_set, items = set(calib_ids), []
    for image_id in tqdm(calib_ids + scored_ids, desc=f"eval CAMs {net}", mininterval=5, disable=None):
        z = load_npz(cams / f"{image_id}.npz")
        gt = read_label_png(voc.mask_path(data, image_id))
        cam = z["cam"].astype("float32")
        check_same_size(cam, gt, what=f"CAM {cams / image_id}.npz", mask=voc.mask_path(data, image_id))
        part = None if part_dir is None else read_label_png(part_dir / f"{image_id}.png", num_classes=3)
        scored = image_id not in calib_set
        (sweep if scored else calib_sweep).update(cam, z["keys"], gt)
        (oracle if scored else oracle_calib).update(metrics_.gt_filled(cam, z["keys"], gt, fill), z["keys"], gt)
        matched.add(cam, z["keys"], gt, part, rows.get(image_id), calibrate=not scored, score=scored)
        if scored:
            items.append((cam, z["keys"], gt, part))
    best_thr, _ = calib_sweep.best()
    oracle_thr, _ = oracle_calib.best()
    best = sweep.confusion(thresholds.index(best_thr)).compute()
    fixed_cm = sweep.confusion(thresholds.index(ccfg["fixed_threshold"]))
    region, ctx = metrics_.RegionRecall(), metrics_.ContextShare(context)
    for cam, keys, gt, part in items:
        pred = metrics_.cam_to_label(cam, keys, best_thr)
        if part is not None:
            region.update(pred, gt, part)
        ctx.update(pred, gt, image_classes=keys.tolist())
    result = {
        "net": net,
        "protocol": {
            "split": split,
            **held_out_protocol(split, len(calib_ids), len(scored_ids)),
            "images": len(scored_ids),
            "scales": list(ccfg["scales"]),
            "flip": ccfg["flip"],
            "background": "constant threshold plane, argmax over background + image classes",
            "threshold_selection": "swept against the ground truth of the calibration subset (its best applied)",
            "ignore": "255 in GT ignored",
            "image_labels": "ground-truth image-level labels (the WSSS supervision)",
            "matched_rate": (
                f"rescaling-invariant: each ring's threshold gives a share {mcfg['fp_rate']} of the calibration "
                "subset's ring pixels to the foreground (wsss.cam_measures)"
            ),
        },
        "miou": best["miou"],
        "best_threshold": best_thr,
        "calibration_curve": calib_sweep.curve(),
        "curve": sweep.curve(),
        "per_class_iou": per_class_dict(best["per_class_iou"]),
        "fg_fp_rate": best["fg_fp_rate"],
        "fg_fn_rate": best["fg_fn_rate"],
        "fixed_threshold": ccfg["fixed_threshold"],
        "miou_fixed_threshold": fixed_cm.compute()["miou"],
        "matched_rate": matched.compute(),
        "gt_filled": {
            "fill": fill,
            "best_threshold": oracle_thr,
            "miou": oracle.confusion(thresholds.index(oracle_thr)).compute()["miou"],
            "what": "oracle headroom: every GT pixel of an image class raised to at least `fill`, swept and scored "
            "as the CAM",
        },
    }
    if part_dir is not None:
        result.update({k: v for k, v in region.compute().items() if k in ("part_recall", "body_recall")})
    if context:
        shares = ctx.compute()
        result.update({"context_bg_share": shares["context_bg_share"], "other_bg_share": shares["other_bg_share"]})
    write_json(metrics, result)
    write_json(curve, result["curve"])
