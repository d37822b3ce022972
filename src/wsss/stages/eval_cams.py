"""Stage eval_cams: CAM quality on ``cam_split`` against the ground truth.

Protocol (printed into the metric file): background = a constant threshold plane, argmax over
(background, image classes); the threshold is swept over ``cams.thresholds`` against the ground truth (as SEAM's
``--curve`` and PuzzleCAM's evaluate.py do) and also reported at the fixed ``cams.fixed_threshold``. 255 in the
ground truth is ignored. On the synthetic benchmark it also measures the biases the benchmark plants: recall on
discriminative-part versus body pixels, and background claimed by context classes versus the others.
"""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from wsss import metrics as metrics_
from wsss.data import voc
from wsss.engine import distributed as dist
from wsss.evaluation import bias_probes, check_same_size, per_class_dict
from wsss.io import load_npz, read_label_png, write_json


def run(cfg, *, seed: int, net: str, data: Path, cams: Path, metrics: Path, curve: Path, threads: int = 1) -> None:
    if not dist.is_main():  # CPU-bound and cheap: under torchrun rank 0 alone evaluates, the others exit
        return
    ccfg, split = cfg["cams"], cfg["data"]["cam_split"]
    ids = voc.read_split(data, split)
    thresholds = sorted(set(ccfg["thresholds"]) | {ccfg["fixed_threshold"]})
    sweep = metrics_.ThresholdSweep(thresholds)
    items = []
    for image_id in tqdm(ids, desc=f"eval CAMs {net}", mininterval=5, disable=None):
        z = load_npz(cams / f"{image_id}.npz")
        gt = read_label_png(voc.mask_path(data, image_id))
        cam = z["cam"].astype("float32")
        check_same_size(cam, gt, what=f"CAM {cams / image_id}.npz", mask=voc.mask_path(data, image_id))
        sweep.update(cam, z["keys"], gt)
        items.append((image_id, cam, z["keys"], gt))
    best_thr, best_cm = sweep.best()
    fixed_cm = sweep.confusion(thresholds.index(ccfg["fixed_threshold"]))
    best = best_cm.compute()

    part_dir, context = bias_probes(data)
    region, ctx = metrics_.RegionRecall(), metrics_.ContextShare(context)
    for image_id, cam, keys, gt in items:
        pred = metrics_.cam_to_label(cam, keys, best_thr)
        if part_dir is not None:
            region.update(pred, gt, read_label_png(part_dir / f"{image_id}.png", num_classes=3))
        ctx.update(pred, gt, image_classes=keys.tolist())
    result = {
        "net": net,
        "protocol": {
            "split": split,
            "images": len(ids),
            "scales": list(ccfg["scales"]),
            "flip": ccfg["flip"],
            "background": "constant threshold plane, argmax over background + image classes",
            "threshold_selection": "swept against the ground truth of this split (best reported)",
            "ignore": "255 in GT ignored",
            "image_labels": "ground-truth image-level labels (the WSSS supervision)",
        },
        "miou": best["miou"],
        "best_threshold": best_thr,
        "curve": sweep.curve(),
        "per_class_iou": per_class_dict(best["per_class_iou"]),
        "fg_fp_rate": best["fg_fp_rate"],
        "fg_fn_rate": best["fg_fn_rate"],
        "fixed_threshold": ccfg["fixed_threshold"],
        "miou_fixed_threshold": fixed_cm.compute()["miou"],
    }
    if part_dir is not None:
        result.update({k: v for k, v in region.compute().items() if k in ("part_recall", "body_recall")})
    if context:
        shares = ctx.compute()
        result.update({"context_bg_share": shares["context_bg_share"], "other_bg_share": shares["other_bg_share"]})
    write_json(metrics, result)
    write_json(curve, result["curve"])
