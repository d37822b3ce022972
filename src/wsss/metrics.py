"""Segmentation, CAM and classification metrics (numpy only; torch only for the optional all-reduce).

Conventions (see ``shared/research/peers.md`` §1.6 and §3.4, where peers disagree):

* **Confusion matrix**: rows = ground truth, columns = prediction, ``int64`` (SEAM/PuzzleCAM accumulate in 32-bit
  ``multiprocessing.Value('i')`` counters, which overflow on large sets; we do not).
* **Ignored GT** (``gt == ignore_index``, 255 in VOC) is never counted (IRN/chainercv, AFA, SEAM all agree).
* **Ignored prediction** (a pseudo label of 255) depends on ``pred_ignore``:

  - ``'skip'`` (default; AFA ``pseudo_scores``: ``lt[lp == 255] = 255``): the pixel is dropped, so the score measures
    the *confident* part of the pseudo label only. :class:`ConfusionMatrix` also counts the dropped pixels so that a
    report can give the coverage next to the mIoU.
  - ``'background'`` (IRN ``eval_sem_seg``: 255 → 0): the pixel counts as a background prediction, which penalises
    ignored foreground.

  The two give different numbers on the same files; record the policy with the result.
* **mIoU** is the mean IoU over the classes that occur in the ground truth *or* the prediction of the evaluated set
  (union > 0); a class absent from both has an undefined IoU (``NaN``, written ``None`` in JSON) and is left out of the
  mean. On VOC val/train every class occurs, so this equals the usual mean over 21 classes; on small or synthetic sets
  it avoids counting an absent class as 0 or 1.
* **CAM evaluation** (:func:`cam_to_label`, :class:`ThresholdSweep`): a constant background plane at the threshold is
  put before the class CAMs and the argmax taken (IRN ``eval_cam``: ``np.pad(cams, ..., constant_values=thres)``).
  A pixel is foreground iff its max CAM is strictly above the threshold (ties go to background).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

PRED_IGNORE_POLICIES = ("skip", "background")


# ----------------------------------------------------------------------------------------------------------------------
# confusion matrix and IoU


def _as_int_array(a: Any, name: str) -> np.ndarray:
    if hasattr(a, "detach"):  # torch.Tensor
        a = a.detach().cpu().numpy()
    a = np.asarray(a)
    if a.dtype.kind not in "iub":
        raise TypeError(f"{name}: expected an integer label array, got dtype {a.dtype}")
    return a


def confusion_matrix(
    pred: np.ndarray,
    gt: np.ndarray,
    num_classes: int = 21,
    ignore_index: int = 255,
    pred_ignore: str = "skip",
) -> np.ndarray:
    """Confusion matrix ``int64 [num_classes, num_classes]``: rows = GT class, columns = predicted class.

    Pixels with ``gt == ignore_index`` are skipped. Predicted ``ignore_index`` pixels are skipped
    (``pred_ignore='skip'``, AFA convention) or counted as background, class 0 (``pred_ignore='background'``, IRN
    convention). Any other value outside ``0..num_classes-1`` raises ``ValueError``.
    """
    m, _ = _confusion_and_skipped(pred, gt, num_classes, ignore_index, pred_ignore)
    return m


def _confusion_and_skipped(
    pred: Any, gt: Any, num_classes: int, ignore_index: int, pred_ignore: str
) -> tuple[np.ndarray, int]:
    if pred_ignore not in PRED_IGNORE_POLICIES:
        raise ValueError(f"pred_ignore must be one of {PRED_IGNORE_POLICIES}, got {pred_ignore!r}")
    pred = _as_int_array(pred, "pred")
    gt = _as_int_array(gt, "gt")
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground-truth shape {gt.shape}")
    pred = pred.ravel().astype(np.int64, copy=False)
    gt = gt.ravel().astype(np.int64, copy=False)
    valid = gt != ignore_index
    pred_ign = pred == ignore_index
    skipped = 0
    if pred_ignore == "skip":
        skipped = int(np.count_nonzero(valid & pred_ign))
        valid &= ~pred_ign
        g, p = gt[valid], pred[valid]
    else:
        g, p = gt[valid], np.where(pred_ign[valid], 0, pred[valid])
    if g.size:
        if g.min() < 0 or g.max() >= num_classes:
            raise ValueError(f"ground truth holds values outside 0..{num_classes - 1} and {ignore_index} (ignore)")
        if p.min() < 0 or p.max() >= num_classes:
            raise ValueError(f"prediction holds values outside 0..{num_classes - 1} and {ignore_index} (ignore)")
    m = np.bincount(g * num_classes + p, minlength=num_classes * num_classes)
    return m.reshape(num_classes, num_classes).astype(np.int64, copy=False), skipped


def iou_from_confusion(conf: np.ndarray) -> tuple[float, np.ndarray]:
    """Return ``(miou, per_class_iou)`` from a confusion matrix (rows GT, columns prediction).

    ``per_class_iou[c] = TP / (TP + FP + FN)``; it is ``NaN`` for a class absent from both GT and prediction (union 0).
    ``miou`` is the mean over the classes with union > 0 (``NaN`` if there is none).
    """
    conf = np.asarray(conf, dtype=np.float64)
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / np.where(union > 0, union, 1), np.nan)
    present = ~np.isnan(iou)
    miou = float(iou[present].mean()) if present.any() else float("nan")
    return miou, iou


def _nan_to_none(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


class ConfusionMatrix:
    """Accumulating confusion matrix with JSON round trip and an optional ``torch.distributed`` all-reduce.

    ``pred_ignored`` counts pixels with valid GT that were dropped because the prediction was ``ignore_index``
    (``pred_ignore='skip'`` only); ``compute()['pred_ignored_share']`` is their share of the valid-GT pixels.
    """

    def __init__(self, num_classes: int = 21, ignore_index: int = 255, pred_ignore: str = "skip") -> None:
        if pred_ignore not in PRED_IGNORE_POLICIES:
            raise ValueError(f"pred_ignore must be one of {PRED_IGNORE_POLICIES}, got {pred_ignore!r}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.pred_ignore = pred_ignore
        self.matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        self.pred_ignored = 0

    # -- accumulation
    def update(self, pred: np.ndarray, gt: np.ndarray) -> ConfusionMatrix:
        m, skipped = _confusion_and_skipped(pred, gt, self.num_classes, self.ignore_index, self.pred_ignore)
        self.matrix += m
        self.pred_ignored += skipped
        return self

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add ``other`` into ``self`` (in place); both must share ``num_classes`` and ``pred_ignore``."""
        if other.num_classes != self.num_classes or other.pred_ignore != self.pred_ignore:
            raise ValueError(
                f"cannot merge confusion matrices with (num_classes, pred_ignore) = "
                f"{(self.num_classes, self.pred_ignore)} and {(other.num_classes, other.pred_ignore)}"
            )
        self.matrix += other.matrix
        self.pred_ignored += other.pred_ignored
        return self

    def all_reduce(self) -> ConfusionMatrix:
        """Sum the matrix over all ranks if ``torch.distributed`` is initialised; a no-op otherwise."""
        try:
            import torch
            import torch.distributed as dist
        except ImportError:  # pragma: no cover
            return self
        if not (dist.is_available() and dist.is_initialized()):
            return self
        flat = np.concatenate([self.matrix.ravel(), [self.pred_ignored]]).astype(np.int64)
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        t = torch.from_numpy(flat).to(device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        flat = t.cpu().numpy()
        self.matrix = flat[:-1].reshape(self.num_classes, self.num_classes).copy()
        self.pred_ignored = int(flat[-1])
        return self

    def reset(self) -> None:
        self.matrix[:] = 0
        self.pred_ignored = 0

    @property
    def total(self) -> int:
        """Number of pixels counted."""
        return int(self.matrix.sum())

    # -- results
    def compute(self) -> dict[str, Any]:
        """Metrics as JSON-ready Python values (``None`` where undefined).

        * ``miou`` / ``per_class_iou``: see :func:`iou_from_confusion`.
        * ``pixel_accuracy``: diagonal / total.
        * ``mean_accuracy``: mean over GT-present classes of TP / #GT pixels (per-class recall).
        * ``fp_rate`` / ``fn_rate``: PuzzleCAM ``evaluate.py`` style, mean over present classes of FP/union and
          FN/union (so IoU + FP + FN = 1 per class).
        * ``fg_fp_rate``: share of GT-background pixels predicted as any foreground class;
          ``fg_fn_rate``: share of GT-foreground pixels predicted as background.
        * ``pred_ignored_share``: share of valid-GT pixels skipped because the prediction was ignore (``'skip'``).
        """
        m = self.matrix.astype(np.float64)
        total = m.sum()
        miou, iou = iou_from_confusion(self.matrix)
        tp = np.diag(m)
        gt_count = m.sum(1)
        pred_count = m.sum(0)
        union = gt_count + pred_count - tp
        present = union > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            acc_c = tp / gt_count
            fp = (pred_count - tp) / union
            fn = (gt_count - tp) / union
        gt_present = gt_count > 0
        bg_total = m[0].sum()
        fg_total = m[1:].sum()
        seen = total + self.pred_ignored
        return {
            "miou": _nan_to_none(miou),
            "per_class_iou": [_nan_to_none(v) for v in iou],
            "pixel_accuracy": _nan_to_none(tp.sum() / total) if total else None,
            "mean_accuracy": _nan_to_none(acc_c[gt_present].mean()) if gt_present.any() else None,
            "fp_rate": _nan_to_none(fp[present].mean()) if present.any() else None,
            "fn_rate": _nan_to_none(fn[present].mean()) if present.any() else None,
            "fg_fp_rate": _nan_to_none(m[0, 1:].sum() / bg_total) if bg_total else None,
            "fg_fn_rate": _nan_to_none(m[1:, 0].sum() / fg_total) if fg_total else None,
            "pred_ignored_share": _nan_to_none(self.pred_ignored / seen) if seen else None,
            "pixels": int(total),
            "pred_ignore": self.pred_ignore,
        }

    # -- serialisation
    def to_dict(self) -> dict[str, Any]:
        return {
            "num_classes": self.num_classes,
            "ignore_index": self.ignore_index,
            "pred_ignore": self.pred_ignore,
            "pred_ignored": int(self.pred_ignored),
            "matrix": self.matrix.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ConfusionMatrix:
        cm = cls(int(d["num_classes"]), int(d.get("ignore_index", 255)), d.get("pred_ignore", "skip"))
        mat = np.asarray(d["matrix"], dtype=np.int64)
        if mat.shape != (cm.num_classes, cm.num_classes):
            raise ValueError(f"matrix shape {mat.shape} does not match num_classes {cm.num_classes}")
        cm.matrix = mat.copy()
        cm.pred_ignored = int(d.get("pred_ignored", 0))
        return cm

    def __repr__(self) -> str:
        return f"ConfusionMatrix(num_classes={self.num_classes}, pixels={self.total}, pred_ignore={self.pred_ignore!r})"


# ----------------------------------------------------------------------------------------------------------------------
# CAM → label and the threshold sweep


def _cam_keys(cam: Any, keys: Any) -> tuple[np.ndarray, np.ndarray]:
    if hasattr(cam, "detach"):
        cam = cam.detach().cpu().numpy()
    cam = np.asarray(cam, dtype=np.float32)
    keys = np.asarray(keys, dtype=np.int64).reshape(-1)
    if cam.ndim != 3 or cam.shape[0] != keys.size:
        raise ValueError(f"cam must be [K,H,W] with K = len(keys) = {keys.size}, got shape {cam.shape}")
    return cam, keys


def cam_to_label(cam: np.ndarray, keys: Sequence[int], bg_threshold: float) -> np.ndarray:
    """CAM → label map, the peers' CAM evaluation protocol (IRN ``eval_cam``).

    ``cam`` float ``[K,H,W]`` (class ``keys[k]`` in plane ``k``), a constant background plane ``bg_threshold`` is put in
    front and the argmax taken: a pixel gets ``keys[argmax_k cam]`` iff ``max_k cam > bg_threshold`` else 0.
    Returns uint8 ``[H,W]``. ``K = 0`` gives all background.
    """
    cam, keys = _cam_keys(cam, keys)
    if keys.size == 0:
        return np.zeros(cam.shape[1:], dtype=np.uint8)
    arg = cam.argmax(0)
    fg = cam.max(0) > np.float32(bg_threshold)
    return np.where(fg, keys[arg], 0).astype(np.uint8)


class ThresholdSweep:
    """One confusion matrix per background threshold, filled in a single pass per image.

    Per image the foreground argmax and max are computed once; each pixel's position among the sorted thresholds is
    found by ``searchsorted`` and the matrices for all thresholds follow from cumulative sums of one ``bincount``
    (O(pixels · log T + T · n²)). Equivalent to ``cam_to_label`` + ``confusion_matrix`` per threshold.
    """

    def __init__(self, thresholds: Iterable[float], num_classes: int = 21, ignore_index: int = 255) -> None:
        self.thresholds = [float(t) for t in thresholds]
        if not self.thresholds:
            raise ValueError("ThresholdSweep needs at least one threshold")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        t32 = np.asarray(self.thresholds, dtype=np.float32)
        self._order = np.argsort(t32, kind="stable")
        self._sorted = t32[self._order]
        self.matrices = np.zeros((len(self.thresholds), self.num_classes, self.num_classes), dtype=np.int64)

    def update(self, cam: np.ndarray, keys: Sequence[int], gt: np.ndarray) -> ThresholdSweep:
        cam, keys = _cam_keys(cam, keys)
        gt = _as_int_array(gt, "gt")
        if gt.shape != cam.shape[1:]:
            raise ValueError(f"gt shape {gt.shape} differs from CAM size {cam.shape[1:]}")
        n, T = self.num_classes, len(self.thresholds)
        g = gt.ravel().astype(np.int64)
        valid = g != self.ignore_index
        g = g[valid]
        if g.size and (g.min() < 0 or g.max() >= n):
            raise ValueError(f"ground truth holds values outside 0..{n - 1} and {self.ignore_index} (ignore)")
        if keys.size and (keys.min() < 1 or keys.max() >= n):
            raise ValueError(f"keys must be foreground class ids 1..{n - 1}, got {keys.tolist()}")
        if keys.size == 0:
            bg = np.bincount(g, minlength=n)
            self.matrices[:, :, 0] += bg[None, :]
            return self
        flat = cam.reshape(keys.size, -1)[:, valid]
        arg = keys[flat.argmax(0)]
        vmax = flat.max(0)
        # b = number of (sorted) thresholds strictly below the pixel's max: foreground for sorted index j < b.
        b = np.searchsorted(self._sorted, vmax, side="left")
        counts = np.bincount((b * n + g) * n + arg, minlength=(T + 1) * n * n).reshape(T + 1, n, n)
        # foreground part for sorted threshold j: pixels with b > j
        fg = np.cumsum(counts[::-1], axis=0)[::-1][1:]  # [T,n,n], fg[j] = sum_{b>j}
        # background part for sorted threshold j: pixels with b <= j, predicted 0
        bgc = np.cumsum(counts.sum(2), axis=0)[:T]  # [T,n]
        sorted_mats = fg.copy()
        sorted_mats[:, :, 0] += bgc
        self.matrices[self._order] += sorted_mats
        return self

    def merge(self, other: ThresholdSweep) -> ThresholdSweep:
        if other.thresholds != self.thresholds or other.num_classes != self.num_classes:
            raise ValueError("cannot merge sweeps with different thresholds or num_classes")
        self.matrices += other.matrices
        return self

    def confusion(self, index: int) -> ConfusionMatrix:
        cm = ConfusionMatrix(self.num_classes, self.ignore_index)
        cm.matrix = self.matrices[index].copy()
        return cm

    def curve(self) -> list[dict[str, float | None]]:
        """``[{threshold, miou}]`` in the order the thresholds were given."""
        return [
            {"threshold": t, "miou": _nan_to_none(iou_from_confusion(m)[0])}
            for t, m in zip(self.thresholds, self.matrices)
        ]

    def best(self) -> tuple[float, ConfusionMatrix]:
        """The threshold with the highest mIoU (first one on ties) and its confusion matrix."""
        mious = np.array([iou_from_confusion(m)[0] for m in self.matrices])
        mious = np.where(np.isnan(mious), -np.inf, mious)
        i = int(np.argmax(mious))
        return self.thresholds[i], self.confusion(i)


# ----------------------------------------------------------------------------------------------------------------------
# part / body recall


class RegionRecall:
    """Recall on the discriminative part (``part_mask == 1``) and on the body (``part_mask == 2``).

    Among pixels of the region whose GT is a foreground class (not 0, not ``ignore_index``), the share predicted as
    exactly their GT class (a predicted 255 counts as a miss). ``None`` when the region holds no such pixel.
    """

    def __init__(self, ignore_index: int = 255) -> None:
        self.ignore_index = ignore_index
        self.part_hit = self.part_total = self.body_hit = self.body_total = 0

    def update(self, pred_label: np.ndarray, gt: np.ndarray, part_mask: np.ndarray) -> RegionRecall:
        pred = _as_int_array(pred_label, "pred_label")
        gt = _as_int_array(gt, "gt")
        pm = _as_int_array(part_mask, "part_mask")
        if not (pred.shape == gt.shape == pm.shape):
            raise ValueError(f"shapes differ: pred {pred.shape}, gt {gt.shape}, part_mask {pm.shape}")
        obj = (gt != 0) & (gt != self.ignore_index)
        hit = pred == gt
        part, body = obj & (pm == 1), obj & (pm == 2)
        self.part_total += int(np.count_nonzero(part))
        self.part_hit += int(np.count_nonzero(part & hit))
        self.body_total += int(np.count_nonzero(body))
        self.body_hit += int(np.count_nonzero(body & hit))
        return self

    def merge(self, other: RegionRecall) -> RegionRecall:
        self.part_hit += other.part_hit
        self.part_total += other.part_total
        self.body_hit += other.body_hit
        self.body_total += other.body_total
        return self

    def compute(self) -> dict[str, Any]:
        return {
            "part_recall": self.part_hit / self.part_total if self.part_total else None,
            "body_recall": self.body_hit / self.body_total if self.body_total else None,
            "part_pixels": self.part_total,
            "body_pixels": self.body_total,
        }


def region_recall(pred_label: np.ndarray, gt: np.ndarray, part_mask: np.ndarray) -> dict[str, Any]:
    """Single-image :class:`RegionRecall`: ``{part_recall, body_recall, part_pixels, body_pixels}``."""
    return RegionRecall().update(pred_label, gt, part_mask).compute()


# ----------------------------------------------------------------------------------------------------------------------
# background claimed by context classes


class ContextShare:
    """How much GT background is claimed by context classes (e.g. a class that co-occurs with sky or water).

    Two groups of foreground classes: the *context* classes and the *other* foreground classes. For a group G:

        share_G = (# GT-background pixels predicted as a class of G, summed over images whose image-level labels
                   contain a class of G) / (# GT-background pixels of those images)

    An image with classes of both groups counts in both denominators. Image-level labels are taken from
    ``image_classes`` if given, else from the GT map (values other than 0 and ``ignore_index``). A predicted
    ``ignore_index`` claims nothing. ``None`` when no image of the group (or no background pixel) was seen.
    """

    def __init__(self, context_classes: Iterable[int], ignore_index: int = 255) -> None:
        self.context_classes = {int(c) for c in context_classes}
        self.ignore_index = ignore_index
        self.ctx_claimed = self.ctx_bg = self.ctx_images = 0
        self.other_claimed = self.other_bg = self.other_images = 0

    def update(
        self, pred_label: np.ndarray, gt: np.ndarray, image_classes: Iterable[int] | None = None
    ) -> ContextShare:
        pred = _as_int_array(pred_label, "pred_label")
        gt = _as_int_array(gt, "gt")
        if pred.shape != gt.shape:
            raise ValueError(f"prediction shape {pred.shape} differs from ground-truth shape {gt.shape}")
        if image_classes is None:
            present = {int(c) for c in np.unique(gt)} - {0, self.ignore_index}
        else:
            present = {int(c) for c in image_classes} - {0, self.ignore_index}
        has_ctx = bool(present & self.context_classes)
        has_other = bool(present - self.context_classes)
        if not (has_ctx or has_other):
            return self
        bg = gt == 0
        n_bg = int(np.count_nonzero(bg))
        pb = pred[bg]
        is_fg = (pb != 0) & (pb != self.ignore_index)
        is_ctx = (
            np.isin(pb, np.fromiter(self.context_classes, dtype=np.int64))
            if self.context_classes
            else np.zeros_like(is_fg)
        )
        if has_ctx:
            self.ctx_images += 1
            self.ctx_bg += n_bg
            self.ctx_claimed += int(np.count_nonzero(is_ctx))
        if has_other:
            self.other_images += 1
            self.other_bg += n_bg
            self.other_claimed += int(np.count_nonzero(is_fg & ~is_ctx))
        return self

    def merge(self, other: ContextShare) -> ContextShare:
        for k in ("ctx_claimed", "ctx_bg", "ctx_images", "other_claimed", "other_bg", "other_images"):
            setattr(self, k, getattr(self, k) + getattr(other, k))
        return self

    def compute(self) -> dict[str, Any]:
        return {
            "context_bg_share": self.ctx_claimed / self.ctx_bg if self.ctx_bg else None,
            "other_bg_share": self.other_claimed / self.other_bg if self.other_bg else None,
            "context_images": self.ctx_images,
            "other_images": self.other_images,
        }


def context_background_share(
    pred_label: np.ndarray,
    gt: np.ndarray,
    context_classes: set[int],
    image_classes: Iterable[int] | None = None,
) -> dict[str, Any]:
    """Single-image :class:`ContextShare`: ``{context_bg_share, other_bg_share, context_images, other_images}``."""
    return ContextShare(context_classes).update(pred_label, gt, image_classes).compute()


# ----------------------------------------------------------------------------------------------------------------------
# classification


def average_precision(scores: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Multi-label average precision: ``(mAP, per_class_ap)``; ``scores``/``labels`` are ``[N, C]``.

    Non-interpolated AP, as scikit-learn's ``average_precision_score``: AP = Σ_k (R_k − R_{k−1}) P_k over the distinct
    score thresholds in decreasing order (tied scores form one step). A class with no positive has AP ``NaN`` and is
    left out of the mean. ``labels`` are 0/1 (bool accepted).
    """
    if hasattr(scores, "detach"):
        scores = scores.detach().cpu().numpy()
    if hasattr(labels, "detach"):
        labels = labels.detach().cpu().numpy()
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels)
    if s.ndim == 1:
        s, y = s[:, None], y[:, None]
    if s.shape != y.shape or s.ndim != 2:
        raise ValueError(f"scores {s.shape} and labels {y.shape} must both be [N, C]")
    y = y > 0.5
    ap = np.full(s.shape[1], np.nan)
    for c in range(s.shape[1]):
        pos = int(y[:, c].sum())
        if pos == 0:
            continue
        order = np.argsort(-s[:, c], kind="mergesort")
        sc, yc = s[order, c], y[order, c]
        tp = np.cumsum(yc)
        # last index of each group of tied scores
        last = np.r_[np.nonzero(np.diff(sc))[0], sc.size - 1]
        tp_k = tp[last].astype(np.float64)
        prec = tp_k / (last + 1)
        rec = tp_k / pos
        ap[c] = float(np.sum(np.diff(np.r_[0.0, rec]) * prec))
    m = float(np.nanmean(ap)) if np.any(~np.isnan(ap)) else float("nan")
    return m, ap


__all__ = [
    "PRED_IGNORE_POLICIES",
    "confusion_matrix",
    "iou_from_confusion",
    "ConfusionMatrix",
    "cam_to_label",
    "ThresholdSweep",
    "RegionRecall",
    "region_recall",
    "ContextShare",
    "context_background_share",
    "average_precision",
]


def gt_filled(cam: np.ndarray, keys, gt: np.ndarray, fill: float) -> np.ndarray:
    """The oracle CAM of the headroom: ``cam`` ([K,H,W], planes for the image classes ``keys``) with every pixel
    whose ground truth is class ``keys[k]`` raised to at least ``fill`` in plane k (255 and other pixels kept)."""
    out = np.array(cam, dtype=np.float32, copy=True)
    for k, c in enumerate(np.asarray(keys).tolist()):
        obj = gt == c
        out[k][obj] = np.maximum(out[k][obj], np.float32(fill))
    return out
