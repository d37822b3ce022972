"""Scoring against the ground truth, shared by every evaluating stage: classifier mAP, segmentation predictions
(multi-scale + flip softmax, with and without CRF), pseudo-label folders, and the score keys of the metric files.

The confusion matrix, mIoU and the threshold sweep themselves are in :mod:`wsss.metrics`; this module runs them
over a split's files. torch is imported only by the two functions that run a network, so that the stages that
only score files run without it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from wsss import metrics
from wsss.data import voc
from wsss.io import WsssInputError, read_json, read_label_png, write_label_png
from wsss.parallel import imap_ordered


def per_class_dict(values: Sequence) -> dict:
    return {name: v for name, v in zip(voc.VOC_CLASSES, values)}


def scores_with_crf(res: dict, res_crf: dict) -> dict:
    """The four score keys every segmentation evaluation writes: mIoU and per-class IoU, without and with CRF."""
    return {
        "miou": res["miou"],
        "miou_crf": res_crf["miou"],
        "per_class_iou": per_class_dict(res["per_class_iou"]),
        "per_class_iou_crf": per_class_dict(res_crf["per_class_iou"]),
    }


def classifier_map(net, data_root: Path, split: str) -> float:
    """Mean average precision of a CAM classifier (``net(x)["logits"]``) on the full images of ``split``."""
    import torch

    from wsss.data.datasets import ClassificationDataset

    net.eval()
    p = next(net.parameters())
    ds = ClassificationDataset(data_root, split, crop=0, train=False)
    scores, labels = [], []
    with torch.no_grad():
        for i in range(len(ds)):
            item = ds[i]
            scores.append(net(item["image"][None].to(p.device, p.dtype))["logits"][0].float().cpu().numpy())
            labels.append(item["label"].numpy())
    return float(metrics.average_precision(np.stack(scores), np.stack(labels))[0])


def predict_probs(net, img: np.ndarray, scales: Sequence[float], flip: bool) -> np.ndarray:
    """Softmax [C,H,W] of ``net(x)`` (logits at the input size) averaged over scales (and flips) for one uint8
    HxWx3 image."""
    import torch

    with torch.no_grad():
        return _predict_probs(net, img, scales, flip)


def _predict_probs(net, img: np.ndarray, scales: Sequence[float], flip: bool) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    from wsss.data.datasets import normalize

    x = normalize(img)[None]
    h, w = img.shape[:2]
    acc, n = None, 0
    for s in scales:
        xs = (
            x
            if s == 1.0
            else F.interpolate(
                x, size=(max(8, round(h * s)), max(8, round(w * s))), mode="bilinear", align_corners=False
            )
        )
        batch = torch.cat([xs, xs.flip(-1)]) if flip else xs
        logits = F.interpolate(net(batch), size=(h, w), mode="bilinear", align_corners=False)
        probs = logits.softmax(1)
        p = probs[:1] + (probs[1:].flip(-1) if flip else 0)
        acc = p if acc is None else acc + p
        n += 2 if flip else 1
    return (acc / n)[0].numpy()


def score_predictions(
    fn: Callable, ids: list[str], *, data_root: Path, save_dir: Path, n_saved: int, threads: int, desc: str
) -> tuple[dict, dict]:
    """Run ``fn(image_id) -> (id, pred, pred_crf)`` over ``ids`` on ``threads`` workers; return the confusion-matrix
    results without and with CRF against the GT masks, saving the first ``n_saved`` predictions into ``save_dir``."""
    cm, cm_crf = metrics.ConfusionMatrix(), metrics.ConfusionMatrix()
    keep = set(ids[:n_saved])
    for image_id, pred, pred_crf in imap_ordered(fn, ids, workers=threads, desc=desc):
        gt = read_label_png(voc.mask_path(data_root, image_id))
        check_same_size(pred, gt, what=f"prediction of {image_id}", mask=voc.mask_path(data_root, image_id))
        cm.update(pred, gt)
        cm_crf.update(pred_crf, gt)
        if image_id in keep:
            write_label_png(save_dir / f"{image_id}.png", pred)
    return cm.compute(), cm_crf.compute()


def check_same_size(array: np.ndarray, gt: np.ndarray, *, what: str, mask: Path) -> None:
    if array.shape[-2:] != gt.shape:
        raise WsssInputError(
            f"{mask}: mask size {gt.shape} differs from the {what} {tuple(array.shape[-2:])}; "
            "the image and its mask must have the same size"
        )


def check_splits(data_root: Path, split: str, eval_split: str) -> tuple[list[str], list[str]]:
    """(ids to label, ids to score) of a pseudo-label stage: cam_split must lie within train_split and have masks."""
    ids = voc.read_split(data_root, split)
    eval_ids = voc.read_split(data_root, eval_split)
    missing = sorted(set(eval_ids) - set(ids))
    if missing:
        raise WsssInputError(
            f"data.cam_split '{eval_split}' has {len(missing)} ids outside data.train_split '{split}' "
            f"(first {missing[:3]}); pseudo labels are made on train_split, which must hold cam_split"
        )
    voc.check_ids(data_root, ids, need_masks=False, split=split)
    voc.check_ids(data_root, eval_ids, need_masks=True, split=eval_split)
    return ids, eval_ids


def held_out(eval_ids: list[str], fraction: float, eval_split: str) -> tuple[list[str], list[str]]:
    """(calibration ids, scored ids) of cam_split: its first max(1, round(fraction · N)) ids
    (``data.calibration_fraction``), on which every value is chosen against the GT, and the others, on which
    every number is scored."""
    n = max(1, round(fraction * len(eval_ids)))
    if n >= len(eval_ids):
        raise WsssInputError(
            f"data.calibration_fraction = {fraction} of data.cam_split '{eval_split}' ({len(eval_ids)} ids) leaves "
            "no image to score; the split needs at least 2 images and a fraction that leaves one"
        )
    return eval_ids[:n], eval_ids[n:]


def held_out_protocol(eval_split: str, n_calibration: int, n_scored: int) -> dict:
    """The protocol lines of a held-out calibration."""
    return {
        "calibration_subset": f"first {n_calibration} ids of {eval_split} (every value chosen on GT is chosen here)",
        "scored": f"the other {n_scored} ids of {eval_split} (disjoint from the calibration subset)",
    }


def score_labels(folder: Path, data_root: Path, eval_ids: list[str]) -> dict:
    """mIoU of the label PNGs in ``folder`` on ``eval_ids`` (pseudo-label 255 pixels skipped, AFA convention)."""
    cm = metrics.ConfusionMatrix(pred_ignore="skip")
    for image_id in eval_ids:
        label, mask = read_label_png(folder / f"{image_id}.png"), voc.mask_path(data_root, image_id)
        gt = read_label_png(mask)
        check_same_size(label, gt, what=f"pseudo label of {image_id}", mask=mask)
        cm.update(label, gt)
    return cm.compute()


def pseudo_metrics(
    net_name: str, res: dict, *, split: str, eval_split: str, n_calibration: int, n_eval: int, protocol: dict
) -> dict:
    """The metric file of a pseudo-label stage (CRF or random walk): ``res`` scored on the ``n_eval`` ids of
    ``eval_split`` after its ``n_calibration`` calibration ids."""
    return {
        "net": net_name,
        "protocol": {
            "split": eval_split,
            "images": n_eval,
            **held_out_protocol(eval_split, n_calibration, n_eval),
            "labelled_split": split,
            **protocol,
            "pseudo_label_255": "skipped (pixels the pseudo label ignores are not scored)",
            "ignore": "255 in GT ignored",
        },
        "miou": res["miou"],
        "per_class_iou": per_class_dict(res["per_class_iou"]),
        "ignore_fraction": res["pred_ignored_share"],
        "precision": res["pixel_accuracy"],
    }


def bias_probes(data_root: Path) -> tuple[Path | None, set[int]]:
    """(part-mask folder or None, context class ids) of a synthetic dataset; (None, set()) for real data."""
    part_dir = data_root / "PartMasks"
    meta = data_root / "synthetic.json"
    context = {int(c) for c in read_json(meta).get("context_classes", {})} if meta.is_file() else set()
    return (part_dir if part_dir.is_dir() else None), context


def context_rows(data_root: Path) -> dict[str, list[int] | None]:
    """Per image id, the [y0, y1) rows of its context fill (None without one) of a synthetic dataset; {} for real
    data."""
    meta = data_root / "synthetic.json"
    if not meta.is_file():
        return {}
    return {k: v.get("context_rows") for k, v in read_json(meta).get("images", {}).items()}


def periodic_map(net, data_root: Path, split: str, epochs: int) -> Callable[[int], dict]:
    """``end_of_epoch`` for a classifier's training: val mAP a few times per run (every max(2, epochs // 3)
    epochs) and after the last epoch."""
    every = max(2, epochs // 3)

    def end_of_epoch(epoch: int) -> dict:
        if (epoch + 1) % every == 0 or epoch + 1 == epochs:
            return {"val_map": classifier_map(net, data_root, split)}
        return {}

    return end_of_epoch


def classifier_metrics(name: str, variant: str, history: list[dict], epochs: int) -> dict:
    """The metric file of a CAM classifier's training."""
    last_map = next((h["val_map"] for h in reversed(history) if "val_map" in h), None)
    return {"net": name, "variant": variant, "history": history, "final": {"val_map": last_map, "epochs": epochs}}
