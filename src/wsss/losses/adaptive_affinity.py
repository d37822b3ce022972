"""Adaptive affinity (AA) loss: pairwise affinity learned on the segmentation output.

What the paper says (AA&LR, Zhang et al., ACM MM'21; abstract + Fig. 2 caption only):
"we introduce an adaptive affinity loss to thoroughly learn the local pairwise affinity"
and "we train the segmentation prediction with a novel adaptive affinity learning method
and traditional cross entropy loss". Its equation is unknown.

Everything below is OUR formulation, grounded in
  * Adaptive Affinity Fields (AAF; Ke et al., ECCV'18): on softmax outputs p, neighbours
    with the same label minimise KL(p_i || p_j); different labels minimise
    max(0, m - KL(p_i || p_j)). AAF code uses margin m = 3.0 (kld_margin).
  * AffinityNet (Ahn & Kwak, CVPR'18): positive and negative pairs are averaged
    separately and then summed (class-balanced pair loss).
"Adaptive" is our reading as the weighting of the pairs (option ``weighting``).

Pairs: for every pixel i, every dilation d and every offset o in the 8-neighbourhood,
j = i + d*o. A pair is used when j is inside the image and y_i, y_j != 255 (y = pseudo
labels). Both orders (i,j) and (j,i) occur, so the asymmetric KL is symmetrised in effect.

    l_ij = KL(p_i || p_j)                 if y_i == y_j    (positive pair)
           max(0, margin - KL(p_i || p_j)) if y_i != y_j    (negative pair)

    'balanced':   L = mean_{pos} l_ij + mean_{neg} l_ij    (an empty set contributes 0)
    'confidence': L = sum w_ij l_ij / sum w_ij,  w_ij = c_i c_j   (c: pseudo-label confidence)
    'none':       L = mean_{all valid pairs} l_ij
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["IGNORE_INDEX", "WEIGHTINGS", "pairwise_kl", "adaptive_affinity_loss"]

IGNORE_INDEX = 255
WEIGHTINGS = ("balanced", "confidence", "none")
_OFFSETS = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]


def _pairs(H: int, W: int, d: int, dy: int, dx: int):
    """Slices (src, dst) so that x[..., src] is pixel i and x[..., dst] is j = i + d*(dy,dx)."""
    sy, sx = dy * d, dx * d
    hy, wx = max(0, H - abs(sy)), max(0, W - abs(sx))  # overlap size (0 if the shift leaves the image)
    src = (slice(max(0, -sy), max(0, -sy) + hy), slice(max(0, -sx), max(0, -sx) + wx))
    dst = (slice(max(0, sy), max(0, sy) + hy), slice(max(0, sx), max(0, sx) + wx))
    return src, dst


def pairwise_kl(logp_i: torch.Tensor, logp_j: torch.Tensor) -> torch.Tensor:
    """KL(p_i || p_j) = sum_c p_i (log p_i - log p_j) over dim 1."""
    return (logp_i.exp() * (logp_i - logp_j)).sum(1)


def adaptive_affinity_loss(
    seg_logits: torch.Tensor,
    pseudo: torch.Tensor,
    dilations=(1, 2, 4),
    margin: float = 3.0,
    weighting: str = "balanced",
    confidence: torch.Tensor | None = None,
) -> torch.Tensor:
    """AA loss on segmentation logits [B,C,H,W] against pseudo labels [B,H,W] (255 ignored).

    See the module docstring for the equations. ``confidence`` [B,H,W] in [0,1] is used by
    weighting='confidence'; if None, the detached max softmax probability of the
    prediction is used (our choice). Defaults: dilations (1,2,4) (ours; AAF uses a 3x3
    window at several sizes), margin 3.0 (AAF code), weighting 'balanced' (AffinityNet).
    Returns a scalar with a graph (0 when no valid pair).
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    B, C, H, W = seg_logits.shape
    if pseudo.shape != (B, H, W):
        raise ValueError(f"pseudo {tuple(pseudo.shape)} does not match logits {(B, H, W)}")
    logp = F.log_softmax(seg_logits.float(), dim=1)
    valid_px = pseudo != IGNORE_INDEX
    if weighting == "confidence":
        conf = logp.detach().exp().amax(1) if confidence is None else confidence.detach().to(logp.dtype)
    zero = seg_logits.sum() * 0.0
    pos_sum, pos_n, neg_sum, neg_n, w_sum, wl_sum = zero, 0.0, zero, 0.0, zero, zero
    for d in dilations:
        if d >= H and d >= W:
            continue
        for dy, dx in _OFFSETS:
            (sy, sx), (ty, tx) = _pairs(H, W, d, dy, dx)
            yi, yj = pseudo[:, sy, sx], pseudo[:, ty, tx]
            ok = valid_px[:, sy, sx] & valid_px[:, ty, tx]
            if yi.numel() == 0 or not bool(ok.any()):
                continue
            kl = pairwise_kl(logp[:, :, sy, sx], logp[:, :, ty, tx])
            same = (yi == yj) & ok
            diff = (yi != yj) & ok
            loss = torch.where(same, kl, F.relu(margin - kl))
            okf = ok.to(loss.dtype)
            if weighting == "balanced":
                pos_sum = pos_sum + (loss * same).sum()
                neg_sum = neg_sum + (loss * diff).sum()
                pos_n += float(same.sum())
                neg_n += float(diff.sum())
            elif weighting == "confidence":
                w = conf[:, sy, sx] * conf[:, ty, tx] * okf
                w_sum = w_sum + w.sum()
                wl_sum = wl_sum + (w * loss).sum()
            else:
                wl_sum = wl_sum + (loss * okf).sum()
                w_sum = w_sum + okf.sum()
    if weighting == "balanced":
        out = zero
        if pos_n > 0:
            out = out + pos_sum / pos_n
        if neg_n > 0:
            out = out + neg_sum / neg_n
        return out
    if float(w_sum.detach()) <= 0:
        return zero
    return wl_sum / w_sum
