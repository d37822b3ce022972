"""Hide-and-Seek (Singh & Lee, "Hide-and-Seek: Forcing a Network to be Meticulous for Weakly-supervised Object
and Action Localization", ICCV 2017; arXiv 1704.04232): a second positive control of the MainNet ablation
(issue 14), a published CAM-expansion method that changes only the training input. Written from the paper's
description, no code copied.

Each training image is cut into a grid of S × S patches (from the top-left corner; the last row and column may be
partial) and every patch is hidden with probability p_hide, independently. The paper fills a hidden patch with the training
data's mean value; we fill it with 0 after our normalisation (:func:`wsss.data.datasets.normalize`), the ImageNet
mean colour, which is also our crops' padding. The paper's "mixed" setting draws S per image from a set of sizes,
0 meaning "hide nothing". A mask is a function of (run seed, epoch, image id) (:func:`image_generator`). The net then trains on the hidden
image with the ordinary classification loss; at test time nothing is hidden::

    x̃_b = x_b ⊙ (1 − M_b) + μ · M_b,   M_b(i) = h_b(⌊i / S_b⌋),   h_b(·) ~ Bernoulli(p_hide),   S_b ~ U(sizes)
    L = L_cls(MainNet(x̃), y)

When the discriminative part is hidden, the class must be found on what is left of the object, so the net cannot
rest on the part alone.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import torch


def hide_mask(
    h: int, w: int, sizes: Sequence[int], hide_prob: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """[h, w] boolean mask of one image's hidden pixels: a patch size drawn from ``sizes`` (0 = none hidden),
    then each patch of that grid hidden with probability ``hide_prob``."""
    if not sizes or any(int(s) < 0 for s in sizes):
        raise ValueError(f"hide-and-seek patch sizes must be a non-empty list of sizes >= 0, got {list(sizes)}")
    if not 0.0 <= hide_prob <= 1.0:
        raise ValueError(f"hide-and-seek hide_prob must lie in [0, 1], got {hide_prob}")
    s = int(sizes[int(torch.randint(len(sizes), (1,), generator=generator))])
    if s == 0:
        return torch.zeros(h, w, dtype=torch.bool)
    hidden = torch.rand(-(-h // s), -(-w // s), generator=generator) < hide_prob
    return hidden.repeat_interleave(s, 0).repeat_interleave(s, 1)[:h, :w]


def image_generator(seed: int, epoch: int, image_id: str) -> torch.Generator:
    """The generator of one image's mask in one epoch: a function of (run seed, epoch, image id) only, so the
    masks do not change with the batch size, the order of the batches or the number of processes."""
    key = zlib.crc32(f"{int(seed)}/{int(epoch)}/{image_id}".encode())
    return torch.Generator().manual_seed(key)


def hide(x: torch.Tensor, mask: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    """x with the pixels of ``mask`` ([B, H, W], broadcast over channels) set to ``fill`` (a new tensor)."""
    if mask.shape != (x.shape[0], *x.shape[-2:]):
        raise ValueError(f"hide mask {tuple(mask.shape)} does not fit the images {tuple(x.shape)}")
    return x.masked_fill(mask.to(x.device)[:, None], fill)
