"""Pixel-adaptive mask refinement (PAMR; Araslanov & Roth, CVPR'20, "Single-Stage
Semantic Segmentation From Image Labels").

Facts taken from the official code (visinf/1-stage-wseg ``models/mods/pamr.py``; see
../shared/research/papers.md §2.5); the code below is our own.

For pixel i and its neighbours j in N(i) = the 8 neighbours of the 3x3 window at each
dilation d in D (|N(i)| = 8|D|; replicate padding at the border):

    sigma_c(i) = std_c over the 9|D| samples {I_c(i + o_d)}  (3x3 window incl. the centre,
                  for every d; the centre is counted |D| times; unbiased std, as torch.std)
    k(i, j)    = -1/C sum_c |I_c(i) - I_c(j)| / (eps + 0.1 * sigma_c(i)),   eps = 1e-8
    a(i, j)    = softmax_{j in N(i)} k(i, j)
    m^{t+1}(i) = sum_{j in N(i)} a(i, j) m^t(j),   t = 0..n_iter-1

The affinity is fixed (computed once from the image); masks are interpolated bilinearly
(align_corners=True) to the image size first. Differences from a "textbook" kernel:
the std is per channel and per pixel (not global), the centre pixel itself is NOT one of
the neighbours (no self-loop), and the softmax runs jointly over all dilations.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["pamr", "pamr_present", "local_affinity"]

_OFFSETS = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]


def _shifts(x: torch.Tensor, dilations, with_centre: bool = False) -> torch.Tensor:
    """x [B,C,H,W] -> [B,C,P,H,W]: x(i + d*o) for every dilation d and offset o (replicate pad)."""
    H, W = x.shape[-2:]
    out = []
    offs = _OFFSETS + ([(0, 0)] if with_centre else [])
    for d in dilations:
        xp = F.pad(x, [d] * 4, mode="replicate")
        for dy, dx in offs:
            out.append(xp[..., d + dy * d : d + dy * d + H, d + dx * d : d + dx * d + W])
    return torch.stack(out, dim=2)


def local_affinity(image: torch.Tensor, dilations=(1, 2, 4, 8, 12, 24), eps: float = 1e-8) -> torch.Tensor:
    """Affinity a(i, j) [B,1,8|D|,H,W] (sums to 1 over dim 2); see the module docstring."""
    image = image.float()
    sigma = _shifts(image, dilations, with_centre=True).std(dim=2, keepdim=True)  # [B,C,1,H,W]
    diff = (_shifts(image, dilations) - image.unsqueeze(2)).abs()  # [B,C,P,H,W]
    k = -(diff / (eps + 0.1 * sigma)).mean(dim=1, keepdim=True)
    return F.softmax(k, dim=2)


@torch.no_grad()
def pamr(
    image: torch.Tensor,
    masks: torch.Tensor,
    dilations=(1, 2, 4, 8, 12, 24),
    n_iter: int = 10,
) -> torch.Tensor:
    """Refine ``masks`` [B,K,h,w] with the image [B,3,H,W]; returns [B,K,H,W].

    Defaults (1-stage-wseg): dilations (1,2,4,8,12,24), 10 iterations. Masks that sum to
    1 over K keep doing so (each step is a convex combination). No gradient (1-stage
    detaches the refined masks before building the pseudo ground truth).
    """
    if image.dim() != 4 or masks.dim() != 4 or image.shape[0] != masks.shape[0]:
        raise ValueError(f"need image [B,3,H,W] and masks [B,K,h,w], got {tuple(image.shape)}, {tuple(masks.shape)}")
    H, W = image.shape[-2:]
    m = masks.float()
    if m.shape[-2:] != (H, W):
        m = F.interpolate(m, size=(H, W), mode="bilinear", align_corners=True)
    aff = local_affinity(image, dilations)
    for _ in range(n_iter):
        m = (_shifts(m, dilations) * aff).sum(dim=2)
    return m


@torch.no_grad()
def pamr_present(image: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor, **kw) -> torch.Tensor:
    """:func:`pamr` of the background and the image-label classes only; the other planes are 0.

    ``masks`` [B,C,h,w] with plane 0 the background and plane c + 1 class c of ``labels`` [B,C-1] (multi-hot).
    PAMR acts on each plane separately, and the pseudo GT (:func:`wsss.losses.single_stage.pseudo_gt`) zeroes the
    planes of absent classes, so the pseudo GT is the same as with every plane refined (1-stage refines all 21), at
    a fraction of the cost.
    """
    B, C = masks.shape[:2]
    present = torch.cat([torch.ones_like(labels[:, :1]), labels], dim=1) > 0  # [B,C]
    k = int(present.sum(1).max())
    # indices of the present planes, padded with the background plane (refined again, then discarded)
    order = torch.sort(present.to(torch.int8), dim=1, descending=True, stable=True).indices[:, :k]
    idx = torch.where(torch.gather(present, 1, order), order, torch.zeros_like(order))
    sub = pamr(image, torch.gather(masks, 1, idx[:, :, None, None].expand(-1, -1, *masks.shape[-2:])), **kw)
    out = sub.new_zeros(B, C, *sub.shape[-2:])
    return out.scatter(1, idx[:, :, None, None].expand(-1, -1, *sub.shape[-2:]), sub)
