"""Pseudo labels corrupted in known ways, for the AA&LR controlled-noise experiment (issue 16).

Each corruption takes a ground-truth mask and changes ``rate`` of every object's pixels (the object = one class's
region of the image), so the noise rate means the same for every kind: the share of object pixels whose label is
wrong. Pixels are changed in the order a kind's distance gives, ties broken at random:

- ``dilate``: the background pixels nearest to the object take its class (the boundary grows outwards: the
  context bleed of a CAM that spills onto the background around an object);
- ``erode``: the object's pixels nearest to its boundary become background (the boundary shrinks inwards);
- ``body_to_background``: the object's pixels farthest from an anchor pixel (drawn at random inside the object)
  become background (a CAM that keeps one part and loses the far end of the body; the anchor stands in for the
  discriminative part, which a mask alone does not show);
- ``context_bleed``: the background pixels of the co-occurring context (the synthetic benchmark's context rows,
  ``context_rows``) nearest to the object take its class; an image without context is left unchanged (the achieved
  rate, :func:`noise_stats`, says how much changed).

Ignored pixels (255) stay ignored. Everything is a function of (mask, kind, rate, generator): the experiment's
labels are reproducible from the seed.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["KINDS", "IGNORE_INDEX", "corrupt", "noise_stats"]

KINDS = ("dilate", "erode", "body_to_background", "context_bleed")
IGNORE_INDEX = 255


def _take(order_key: np.ndarray, candidates: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Flat indices of the ``n`` candidate pixels with the smallest ``order_key`` (random tie-break)."""
    idx = np.flatnonzero(candidates)
    if n <= 0 or idx.size == 0:
        return idx[:0]
    key = order_key.ravel()[idx] + rng.random(idx.size) * 1e-3  # ties (equal distances) in random order
    return idx[np.argsort(key, kind="stable")[: min(n, idx.size)]]


def corrupt(
    gt: np.ndarray,
    kind: str,
    rate: float,
    rng: np.random.Generator,
    context_rows: tuple[int, int] | None = None,
) -> np.ndarray:
    """A copy of ``gt`` (HxW uint8; 0 background, 1-20 classes, 255 ignored) with ``rate`` of each object's pixels
    corrupted by ``kind`` (module docstring). ``context_rows`` ([y0, y1) of the context fill) only for
    ``context_bleed``."""
    if kind not in KINDS:
        raise ValueError(f"unknown label-noise kind {kind!r}; choose from {list(KINDS)}")
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"the noise rate must lie in [0, 1], got {rate}")
    out = gt.copy()
    classes = [int(c) for c in np.unique(gt) if 0 < c < IGNORE_INDEX]
    rng_order = rng.permutation(len(classes))  # the classes claim background pixels in a random order
    for ci in rng_order:
        c = classes[ci]
        region = gt == c
        n = int(round(rate * int(region.sum())))
        if n == 0:
            continue
        if kind in ("dilate", "context_bleed"):
            free = (gt == 0) & (out == 0)  # background not yet claimed by another class
            if kind == "context_bleed":
                band = np.zeros_like(free)
                if context_rows is not None:
                    band[context_rows[0] : context_rows[1]] = True
                free &= band
            dist = ndimage.distance_transform_edt(~region)  # distance to the object
            out.ravel()[_take(dist, free, n, rng)] = c
        elif kind == "erode":
            dist = ndimage.distance_transform_edt(region)  # distance to the outside (1 = boundary pixels)
            out.ravel()[_take(dist, region, n, rng)] = 0
        else:  # body_to_background
            ys, xs = np.nonzero(region)
            a = int(rng.integers(ys.size))
            yy, xx = np.indices(gt.shape)
            far = -np.hypot(yy - ys[a], xx - xs[a])  # farthest first
            out.ravel()[_take(far, region, n, rng)] = 0
    return out


def noise_stats(gt: np.ndarray, noisy: np.ndarray) -> dict[str, int]:
    """Pixel counts of a corrupted mask against its ground truth (ignored GT pixels left out): ``object`` (GT object
    pixels), ``wrong`` (pixels whose label differs), ``fg_to_bg``, ``bg_to_fg``, ``fg_to_fg``; the achieved rate is
    wrong / object."""
    valid = gt != IGNORE_INDEX
    g, z = gt[valid].astype(np.int64), noisy[valid].astype(np.int64)
    wrong = g != z
    return {
        "object": int((g > 0).sum()),
        "wrong": int(wrong.sum()),
        "fg_to_bg": int((wrong & (g > 0) & (z == 0)).sum()),
        "bg_to_fg": int((wrong & (g == 0) & (z > 0)).sum()),
        "fg_to_fg": int((wrong & (g > 0) & (z > 0)).sum()),
    }
