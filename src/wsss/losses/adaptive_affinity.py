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

None of these is AAF's "adaptive" part: 'balanced' is the plain AAF pair loss with AffinityNet's balance. AAF's
adaptive affinity fields learn, per class, how much each kernel size counts, adversarially (a minimax game: the
network minimises the loss, the size weights maximise it, so that each class is trained at the sizes where it is
worst); :func:`adversarial_affinity_loss` with :class:`KernelWeights` is that (``aa.weighting: adversarial``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "IGNORE_INDEX",
    "WEIGHTINGS",
    "pairwise_kl",
    "adaptive_affinity_loss",
    "per_class_kernel_losses",
    "adversarial_affinity_loss",
    "KernelWeights",
]

IGNORE_INDEX = 255
WEIGHTINGS = ("balanced", "confidence", "none", "adversarial")
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


def _pair_sets(logp: torch.Tensor, pseudo: torch.Tensor, dilations):
    """For each dilation index k and offset with a valid pair: (k, slices of i, slices of j, y_i, same-label mask,
    different-label mask, KL(p_i || p_j)); pairs with an ignored pixel are in neither mask."""
    H, W = pseudo.shape[-2:]
    valid_px = pseudo != IGNORE_INDEX
    for k, d in enumerate(dilations):
        if d >= H and d >= W:
            continue
        for dy, dx in _OFFSETS:
            (sy, sx), (ty, tx) = _pairs(H, W, d, dy, dx)
            yi, yj = pseudo[:, sy, sx], pseudo[:, ty, tx]
            ok = valid_px[:, sy, sx] & valid_px[:, ty, tx]
            if yi.numel() == 0 or not bool(ok.any()):
                continue
            kl = pairwise_kl(logp[:, :, sy, sx], logp[:, :, ty, tx])
            yield k, (sy, sx), (ty, tx), yi, (yi == yj) & ok, (yi != yj) & ok, kl


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
    if weighting == "adversarial":
        raise ValueError("weighting 'adversarial' needs its kernel weights: use adversarial_affinity_loss")
    B, C, H, W = seg_logits.shape
    if pseudo.shape != (B, H, W):
        raise ValueError(f"pseudo {tuple(pseudo.shape)} does not match logits {(B, H, W)}")
    logp = F.log_softmax(seg_logits.float(), dim=1)
    if weighting == "confidence":
        conf = logp.detach().exp().amax(1) if confidence is None else confidence.detach().to(logp.dtype)
    zero = seg_logits.sum() * 0.0
    pos_sum, pos_n, neg_sum, neg_n, w_sum, wl_sum = zero, 0.0, zero, 0.0, zero, zero
    for _, (sy, sx), (ty, tx), _, same, diff, kl in _pair_sets(logp, pseudo, dilations):
        loss = torch.where(same, kl, F.relu(margin - kl))
        okf = (same | diff).to(loss.dtype)
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


def per_class_kernel_losses(
    seg_logits: torch.Tensor, pseudo: torch.Tensor, dilations=(1, 2, 4), margin: float = 3.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The AAF pair losses split by the class of pixel i and by kernel size (dilation):

        l+_{c,k} = mean_{pairs at dilation d_k, y_i = y_j = c} KL(p_i || p_j)                 (same-label pairs)
        l-_{c,k} = mean_{pairs at dilation d_k, y_i = c != y_j} max(0, margin - KL(p_i || p_j)) (different labels)

    Returns (losses [2, C, K]: index 0 same-label, 1 different-label; counts [2, C, K]: how many pairs, 0 = none,
    where the loss is 0)."""
    B, C, H, W = seg_logits.shape
    if pseudo.shape != (B, H, W):
        raise ValueError(f"pseudo {tuple(pseudo.shape)} does not match logits {(B, H, W)}")
    logp = F.log_softmax(seg_logits.float(), dim=1)
    zeros = logp.new_zeros(C)
    sums = [[zeros for _ in dilations] for _ in range(2)]  # [sign][size] -> [C]
    counts = [[zeros for _ in dilations] for _ in range(2)]
    for k, _, _, yi, same, diff, kl in _pair_sets(logp, pseudo, dilations):
        for sign, mask, val in ((0, same, kl), (1, diff, F.relu(margin - kl))):
            cls = torch.where(mask, yi, torch.zeros_like(yi)).flatten()
            m = mask.flatten().to(logp.dtype)
            sums[sign][k] = sums[sign][k] + zeros.index_add(0, cls, val.flatten() * m)
            counts[sign][k] = counts[sign][k] + zeros.index_add(0, cls, m).detach()
    sums = torch.stack([torch.stack(row, -1) for row in sums])  # [2, C, K]
    counts = torch.stack([torch.stack(row, -1) for row in counts])
    return sums / counts.clamp_min(1.0), counts


def adversarial_affinity_loss(
    seg_logits: torch.Tensor,
    pseudo: torch.Tensor,
    kernel_logits: torch.Tensor,
    dilations=(1, 2, 4),
    margin: float = 3.0,
) -> torch.Tensor:
    """AAF's adaptive affinity fields (Ke et al., ECCV 2018), our implementation from the paper's description:

        L = 1/|P| sum_{(s,c) in P} sum_k softmax_k(a_{s,c})_k * l^s_{c,k}

    with l^s from :func:`per_class_kernel_losses` (s = same / different label), P the (s, c) that have pairs, and
    a [2, C, K] the kernel-size logits (``kernel_logits``, e.g. :class:`KernelWeights`): the network descends L,
    the logits ascend it (:meth:`KernelWeights.ascend` after each step), so each class is trained hardest at the
    kernel sizes where its affinities are worst."""
    losses, counts = per_class_kernel_losses(seg_logits, pseudo, dilations, margin)
    if kernel_logits.shape != losses.shape:
        raise ValueError(
            f"kernel logits {tuple(kernel_logits.shape)} must be [2, classes, kernel sizes] = {tuple(losses.shape)}"
        )
    has = counts > 0
    w = torch.softmax(kernel_logits.to(losses.dtype).masked_fill(~has, float("-inf")), dim=-1)
    w = torch.nan_to_num(w, nan=0.0)  # a (sign, class) with no pair at any size: all -inf
    rows = has.any(-1)
    if not bool(rows.any()):
        return seg_logits.sum() * 0.0
    return (w * losses).sum() / rows.sum()


class KernelWeights(nn.Module):
    """The kernel-size logits a [2, C, K] of :func:`adversarial_affinity_loss`, trained by gradient **ascent**.

    They are not in the network's optimiser: the objective's backward fills their ``.grad`` and :meth:`ascend`
    then takes a plain step a <- a + lr * grad (averaged over the processes of a DDP run) and clears it. Zero at
    the start: every size weighs 1/K."""

    def __init__(self, num_classes: int, num_sizes: int, lr: float = 0.1):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(2, num_classes, num_sizes))
        self.lr = float(lr)

    @torch.no_grad()
    def ascend(self, reduce=None, world: int = 1) -> None:
        g = self.logits.grad
        if g is None:
            return
        if reduce is not None and world > 1:
            g = reduce(g) / world
        self.logits.add_(g, alpha=self.lr)
        self.logits.grad = None
