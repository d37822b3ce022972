"""CAM measures that a monotone rescaling of the CAM cannot move (issue 14).

The threshold-swept CAM mIoU and "body recall at the best threshold" are not evidence that a CAM grew: a CAM
raised to a power γ < 1 has more of every region above a fixed threshold, and the sweep picks another threshold.
Every number here depends on the CAMs of a net only through the **order** of their values, so a strictly
increasing map f applied to every CAM value of the net (CAM^γ, log, a sigmoid, ...) leaves it unchanged, and a
net only scores better by ranking object pixels above background pixels.

**Operating point: a matched boundary false-positive rate.** For a ring R of ground-truth background pixels at
Euclidean distance ``lo - 1 < d <= hi`` px from the nearest non-background pixel (object or the 255 border; so
the ring lies just outside what the GT labels), with the per-pixel score s(x) = max over the image's classes of
the CAM, the threshold t_R is the order statistic of the scores of every ring pixel of the split such that a share
``rate`` of them has s > t_R. At t_R a pixel is predicted as its argmax image class where s > t_R, else background
(:func:`wsss.metrics.cam_to_label`), and we report:

- ``achieved_rate``: the share of ring pixels with s > t_R (``rate`` up to ties);
- ``fg_recall``: share of object pixels predicted as their class; ``part_recall`` / ``body_recall``: the same on
  the discriminative-part / body pixels (synthetic data: ``PartMasks``);
- ``body_recall_by_distance``: body recall in bins of the distance to the nearest part pixel of the same class
  (synthetic data): where the CAM stops as it leaves the part;
- ``context_fp``: share of GT background pixels inside an image's context fill (water, grass, ...; synthetic data,
  ``synthetic.json``'s ``context_rows``) predicted as foreground; ``bg_fp``: the same over all background pixels;
- ``boundary_miou``: mIoU over the trimap band, the pixels within ``trimap_width`` px of a GT label boundary
  (the 255 border counts as a label), 255 pixels not scored (DeepLab's trimap evaluation, Chen et al. 2018).

The threshold itself is not reported: it is the one number a rescaling does move.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from wsss.metrics import ConfusionMatrix, cam_to_label

IGNORE = 255


def ring_name(ring: Sequence[int]) -> str:
    return f"{int(ring[0])}-{int(ring[1])}"


def distance_to_labelled(gt: np.ndarray) -> np.ndarray:
    """Per pixel, the Euclidean distance (px) to the nearest non-background GT pixel (0 on those pixels; inf
    everywhere when the image has none)."""
    bg = gt == 0
    if bg.all():
        return np.full(gt.shape, np.inf)
    return ndimage.distance_transform_edt(bg)


def ring_mask(gt: np.ndarray, ring: Sequence[int], dist: np.ndarray | None = None) -> np.ndarray:
    """GT background pixels at distance ``ring[0] - 1 < d <= ring[1]`` from the nearest non-background pixel."""
    d = distance_to_labelled(gt) if dist is None else dist
    return (gt == 0) & (d > ring[0] - 1) & (d <= ring[1])


def trimap_band(gt: np.ndarray, width: float) -> np.ndarray:
    """Pixels within ``width`` px (Euclidean) of a GT label boundary: a pixel whose 4-neighbour has another value
    (255 included) is on the boundary."""
    edge = np.zeros(gt.shape, dtype=bool)
    dy, dx = gt[1:] != gt[:-1], gt[:, 1:] != gt[:, :-1]
    edge[1:] |= dy
    edge[:-1] |= dy
    edge[:, 1:] |= dx
    edge[:, :-1] |= dx
    if not edge.any():
        return edge
    return ndimage.distance_transform_edt(~edge) <= width


def scores(cam: np.ndarray) -> np.ndarray:
    """s(x) = max over the image's classes of the CAM ``[K,H,W]``; -inf where K = 0 (never foreground)."""
    if cam.shape[0] == 0:
        return np.full(cam.shape[1:], -np.inf, dtype=np.float32)
    return cam.max(0)


def matched_threshold(ring_scores: np.ndarray, rate: float) -> float:
    """The order statistic t of ``ring_scores`` with a share ``rate`` of the scores above it (fewer on ties):
    t = the (k+1)-th largest score, k = round(rate · n). A strictly increasing map of the scores maps t onto the
    threshold of the mapped scores, so the set {s > t} does not change."""
    s = np.sort(np.asarray(ring_scores, dtype=np.float32).ravel())[::-1]
    if s.size == 0:
        raise ValueError("no ring pixel in the split: the matched-rate threshold is undefined")
    k = int(round(rate * s.size))
    if k >= s.size:
        return float(-np.inf)
    return float(s[k])


@dataclass
class _Counts:
    """Hit/total counters of one operating point."""

    bins: Sequence[float]
    ring_fp: int = 0
    ring_n: int = 0
    fg_hit: int = 0
    fg_n: int = 0
    part_hit: int = 0
    part_n: int = 0
    body_hit: int = 0
    body_n: int = 0
    ctx_fp: int = 0
    ctx_n: int = 0
    bg_fp: int = 0
    bg_n: int = 0
    dist_hit: np.ndarray = field(init=False)
    dist_n: np.ndarray = field(init=False)
    trimap: ConfusionMatrix = field(default_factory=lambda: ConfusionMatrix(pred_ignore="skip"))

    def __post_init__(self) -> None:
        self.dist_hit = np.zeros(len(self.bins) + 1, dtype=np.int64)
        self.dist_n = np.zeros(len(self.bins) + 1, dtype=np.int64)


def _share(hit: int, n: int) -> float | None:
    return hit / n if n else None


def _bin_names(bins: Sequence[float]) -> list[str]:
    edges = [0, *bins]
    return [f"{edges[i]:g}-{edges[i + 1]:g}" for i in range(len(bins))] + [f">{bins[-1]:g}"]


class MatchedRate:
    """Accumulate a split's CAMs, then compute every measure at the matched rate of each ring.

    ``add(cam, keys, gt, part_mask=None, context_rows=None)`` per image (``cam`` float ``[K,H,W]`` over the image
    classes ``keys``; ``part_mask`` 0/1/2/255 as the synthetic ``PartMasks``; ``context_rows`` the [y0, y1) rows of
    the image's context fill or None), then ``compute()``. Memory: the images are kept (as the CAM evaluation
    already does) because the thresholds need the whole split's ring scores first.
    """

    def __init__(
        self,
        rate: float,
        rings: Iterable[Sequence[int]] = ((1, 2), (3, 4)),
        distance_bins: Sequence[float] = (4, 8, 16),
        trimap_width: float = 4,
    ) -> None:
        if not 0 < rate < 1:
            raise ValueError(f"rate {rate} must lie in (0, 1)")
        self.rate = float(rate)
        self.rings = [tuple(int(v) for v in r) for r in rings]
        self.bins = [float(b) for b in distance_bins]
        self.trimap_width = float(trimap_width)
        self._items: list[tuple] = []
        self._ring_scores: dict[tuple, list[np.ndarray]] = {r: [] for r in self.rings}

    def add(
        self,
        cam: np.ndarray,
        keys: Sequence[int],
        gt: np.ndarray,
        part_mask: np.ndarray | None = None,
        context_rows: Sequence[int] | None = None,
        *,
        calibrate: bool = True,
        score: bool = True,
    ) -> None:
        """Add one image: its ring scores choose the thresholds if ``calibrate``, its pixels are scored if
        ``score`` (a held-out protocol adds the calibration images with ``score=False`` and the scored ones with
        ``calibrate=False``)."""
        cam = np.asarray(cam, dtype=np.float32)
        keys = np.asarray(keys, dtype=np.int64).ravel()
        if cam.shape[1:] != gt.shape or cam.shape[0] != keys.size:
            raise ValueError(f"CAM {cam.shape} / keys {keys.size} do not fit the GT {gt.shape}")
        s = scores(cam)
        dist = distance_to_labelled(gt)
        rings = {r: ring_mask(gt, r, dist) for r in self.rings}
        if calibrate:
            for r, m in rings.items():
                self._ring_scores[r].append(s[m])
        if not score:
            return
        body_dist = None if part_mask is None else _body_distance(gt, part_mask)
        self._items.append(
            (cam, keys, gt, part_mask, context_rows, rings, body_dist, trimap_band(gt, self.trimap_width))
        )

    def thresholds(self) -> dict[tuple, float]:
        return {r: matched_threshold(np.concatenate(v), self.rate) for r, v in self._ring_scores.items()}

    def compute(self) -> dict:
        """``{"rate", "rings": {"1-2": {measures}, ...}, "distance_bins", "trimap_width"}`` (see the module doc)."""
        if not self._items:
            raise ValueError("no image added to be scored")
        out = {}
        for ring, t in self.thresholds().items():
            c = _Counts(self.bins)
            for cam, keys, gt, part_mask, context_rows, rings, body_dist, band in self._items:
                pred = cam_to_label(cam, keys, t)
                _count(c, pred, rings[ring])
                _count_regions(c, pred, gt, part_mask, body_dist, context_rows, band)
            dist = {name: _share(int(h), int(n)) for name, h, n in zip(_bin_names(self.bins), c.dist_hit, c.dist_n)}
            has_parts = self._items[0][3] is not None
            out[ring_name(ring)] = {
                "achieved_rate": _share(c.ring_fp, c.ring_n),
                "ring_pixels": c.ring_n,
                "fg_recall": _share(c.fg_hit, c.fg_n),
                "part_recall": _share(c.part_hit, c.part_n),
                "body_recall": _share(c.body_hit, c.body_n),
                "body_recall_by_distance": dist if has_parts else None,
                "context_fp": _share(c.ctx_fp, c.ctx_n),
                "bg_fp": _share(c.bg_fp, c.bg_n),
                "boundary_miou": c.trimap.compute()["miou"],
            }
        return {
            "rate": self.rate,
            "rings": out,
            "distance_bins": _bin_names(self.bins),
            "trimap_width": self.trimap_width,
        }


def _body_distance(gt: np.ndarray, part_mask: np.ndarray) -> np.ndarray:
    """Per body pixel (``part_mask == 2``, GT foreground), the distance to the nearest part pixel of its class
    (inf when that class shows no part pixel); nan elsewhere."""
    out = np.full(gt.shape, np.nan)
    for c in np.unique(gt):
        if c in (0, IGNORE):
            continue
        body = (part_mask == 2) & (gt == c)
        if not body.any():
            continue
        part = (part_mask == 1) & (gt == c)
        out[body] = ndimage.distance_transform_edt(~part)[body] if part.any() else np.inf
    return out


def _count(c: _Counts, pred: np.ndarray, ring: np.ndarray) -> None:
    c.ring_n += int(ring.sum())
    c.ring_fp += int(np.count_nonzero(pred[ring] != 0))


def _count_regions(
    c: _Counts,
    pred: np.ndarray,
    gt: np.ndarray,
    part_mask: np.ndarray | None,
    body_dist: np.ndarray | None,
    context_rows: Sequence[int] | None,
    band: np.ndarray,
) -> None:
    obj = (gt != 0) & (gt != IGNORE)
    hit = pred == gt
    c.fg_n += int(obj.sum())
    c.fg_hit += int(np.count_nonzero(obj & hit))
    bg = gt == 0
    c.bg_n += int(bg.sum())
    c.bg_fp += int(np.count_nonzero(bg & (pred != 0)))
    if part_mask is not None:
        part, body = obj & (part_mask == 1), obj & (part_mask == 2)
        c.part_n += int(part.sum())
        c.part_hit += int(np.count_nonzero(part & hit))
        c.body_n += int(body.sum())
        c.body_hit += int(np.count_nonzero(body & hit))
        d = body_dist[body]
        idx = np.searchsorted(np.asarray(c.bins), d, side="left")  # d <= bins[i] -> bin i; beyond -> last
        c.dist_n += np.bincount(idx, minlength=len(c.bins) + 1)
        c.dist_hit += np.bincount(idx[hit[body]], minlength=len(c.bins) + 1)
    if context_rows is not None:
        rows = np.zeros(gt.shape, dtype=bool)
        rows[int(context_rows[0]) : int(context_rows[1])] = True
        ctx = bg & rows
        c.ctx_n += int(ctx.sum())
        c.ctx_fp += int(np.count_nonzero(ctx & (pred != 0)))
    c.trimap.update(pred, np.where(band, gt, IGNORE).astype(np.uint8))
