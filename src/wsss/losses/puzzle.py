"""Puzzle-CAM's puzzle module (Jo & Yu, "Puzzle-CAM: Improved localization via matching partial and full
features", ICIP 2021; arXiv 2101.11253): the positive control of the MainNet ablation (issue 14), a published
CAM-expansion method run through our tables beside the fair control. Written from the paper's equations; the
defaults that the paper leaves open are those of its code (``train_classification_with_puzzle.py``: 4 pieces,
``level feature``, ``re_loss L1 masking``, α 4 ramped over the first half of training), cited, not copied.

The image x is cut into n × n tiles, each tile goes through the same network on its own, and the tiles' class
maps are put back together into a reconstructed map A^re of the full image's map A^s (both before any ReLU or
normalisation: the code's ``level feature``)::

    L = L_cls(GAP(A^s), y) + L_p-cls(GAP(A^re), y) + α(t) · L_re,
    L_re = 1 / (B·K·h·w) · Σ_{b,k,i} y_{b,k} · |A^s_{b,k,i} − A^re_{b,k,i}|          (the code's "masking")

with L_cls the multi-label soft-margin loss and α(t) = α · min(1, t / (ramp · T)) at training progress t of T
(the code's ``alpha_schedule``). A tile that holds only part of an object must still raise that class by itself,
and L_re asks the full image's map to agree with the tiles' maps: the map cannot rest on one discriminative
part.
"""

from __future__ import annotations

import torch


def tile(x: torch.Tensor, n: int) -> torch.Tensor:
    """[B, C, H, W] → [n²·B, C, H/n, W/n]: tile (r, c) of every image, tiles in row-major order, each tile's
    batch of B consecutive (H and W must be multiples of n)."""
    b, c, h, w = x.shape
    if h % n or w % n:
        raise ValueError(
            f"image size {h}x{w} is not a multiple of the {n}x{n} puzzle tiles; use a crop divisible by {n}"
        )
    th, tw = h // n, w // n
    return torch.cat([x[:, :, r * th : (r + 1) * th, c_ * tw : (c_ + 1) * tw] for r in range(n) for c_ in range(n)])


def merge(tiles: torch.Tensor, n: int) -> torch.Tensor:
    """The inverse of :func:`tile` for per-tile maps: [n²·B, K, h, w] → [B, K, n·h, n·w]."""
    parts = tiles.chunk(n * n, dim=0)
    rows = [torch.cat(parts[r * n : (r + 1) * n], dim=3) for r in range(n)]
    return torch.cat(rows, dim=2)


def reconstruction_loss(cam: torch.Tensor, merged: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """L_re = mean over (B, K, h, w) of y_{b,k} · |A^s − A^re| (``cam``, ``merged``: [B, K, h, w]; ``labels``
    [B, K] in {0, 1}): classes absent from the image contribute zeros to the mean, as in the code's masking."""
    if cam.shape != merged.shape:
        raise ValueError(f"full-image map {tuple(cam.shape)} and reconstructed map {tuple(merged.shape)} differ")
    return ((cam - merged).abs() * labels[:, :, None, None].to(cam.dtype)).mean()


def alpha_at(progress: float, alpha: float, ramp: float) -> float:
    """α(t) = α · min(1, t / ramp) at training progress t ∈ [0, 1] (ramp 0: α from the start)."""
    return alpha if ramp <= 0 else alpha * min(1.0, progress / ramp)
