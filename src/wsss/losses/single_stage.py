"""Single-stage (1-stage-wseg) classification scores and pseudo ground truth.

Source: Araslanov & Roth, CVPR'20 ("Single-Stage Semantic Segmentation From Image
Labels"), official code visinf/1-stage-wseg ``models/stage_net.py`` (equations as
transcribed in ../shared/research/papers.md §2.5). AA&LR (Zhang et al., ACM MM'21) is
presumed (not confirmed) to build on it: its Fig. 2 caption says "we create pseudo masks
through the classification branch and then use the masks as segmentation supervision".

Channel 0 = background, channel c + 1 = foreground class c (K foreground classes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["IGNORE_INDEX", "ngwp_scores", "focal_size_penalty", "class_scores", "pseudo_gt", "mask_loss"]

IGNORE_INDEX = 255


def ngwp_scores(logits: torch.Tensor) -> torch.Tensor:
    """Normalised global weighted pooling, [B,K+1,H,W] -> [B,K+1].

        m = softmax_c(y),   s_c = sum_i y_{i,c} m_{i,c} / (1 + sum_i m_{i,c})

    y = logits (1-stage concatenates a constant background logit before the softmax;
    that is the caller's business). All K+1 channels are returned; 1-stage uses [:, 1:].
    """
    m = torch.softmax(logits, dim=1).flatten(2)
    y = logits.flatten(2)
    return (y * m).sum(-1) / (1.0 + m.sum(-1))


def focal_size_penalty(m: torch.Tensor, p: float = 3.0, lam: float = 0.01) -> torch.Tensor:
    """Focal mask-size penalty, masks m [B,K+1,H,W] (softmax probabilities) -> [B,K+1].

        f_c = (1 - mbar_c)^p * log(lam + mbar_c),   mbar_c = mean_i m_{i,c}

    p = 3, lam = 0.01 (1-stage-wseg). Non-positive; ~0 for large masks, very negative
    for empty ones, so adding it to the score pushes present classes to claim pixels.
    """
    mbar = m.flatten(2).mean(-1)
    return (1.0 - mbar).pow(p) * torch.log(lam + mbar)


def class_scores(logits: torch.Tensor, p: float = 3.0, lam: float = 0.01) -> torch.Tensor:
    """1-stage classification scores for the K foreground classes: (s_c + f_c)[:, 1:].

    Train with multi-label soft margin against the image labels [B,K].
    """
    m = torch.softmax(logits, dim=1)
    return (ngwp_scores(logits) + focal_size_penalty(m, p, lam))[:, 1:]


@torch.no_grad()
def pseudo_gt(
    masks_refined: torch.Tensor,
    labels: torch.Tensor,
    fg_factor: float = 0.6,
    bg_factor: float = 0.7,
    floor: float = 0.2,
) -> torch.Tensor:
    """Pseudo ground truth from (PAMR-)refined masks [B,K+1,H,W] -> int64 [B,H,W].

    labels: [B,K] foreground image labels (background is prepended as present) or
    [B,K+1]. With m~_c = m_c * y_c (absent classes zeroed):

        t_c   = max( factor_c * max_i m~_{i,c}, floor ),  factor_0 = bg_factor, factor_c>0 = fg_factor
        claim_{i,c} = [ m~_{i,c} > t_c ]
        gt(i) = the c with claim_{i,c}        if exactly one class claims i
                255                           if none or more than one class claims i

    Defaults 0.6 / 0.7 / 0.2 and "ambiguous pixels removed" are 1-stage-wseg's
    (``pseudo_gtmask``). Strict ">" as there. In 1-stage, unclaimed pixels are all-zero
    rows of the one-hot target, i.e. they carry no loss: here they are 255 too.
    """
    B, C, H, W = masks_refined.shape
    y = labels.to(masks_refined.dtype)
    if y.shape[1] == C - 1:
        y = torch.cat([torch.ones_like(y[:, :1]), y], dim=1)
    elif y.shape[1] != C:
        raise ValueError(f"labels {tuple(labels.shape)} do not fit masks {tuple(masks_refined.shape)}")
    m = masks_refined * y[:, :, None, None]
    mx = m.flatten(2).max(-1).values  # [B,C]
    factor = torch.full_like(mx, fg_factor)
    factor[:, 0] = bg_factor
    thr = (mx * factor).clamp_min(floor)
    claim = m > thr[:, :, None, None]
    n = claim.sum(1)
    gt = claim.float().argmax(1)
    return torch.where(n == 1, gt, torch.full_like(gt, IGNORE_INDEX))


def mask_loss(
    logits: torch.Tensor, target: torch.Tensor, labels: torch.Tensor, *, balanced: bool, require_all_classes: bool
) -> torch.Tensor:
    """Segmentation CE of ``logits`` [B,C,H,W] against the pseudo GT ``target`` [B,H,W] (255 ignored).

    ``balanced`` (1-stage ``balanced_mask_loss_ce``): pixel of class c weighted by (N - N_c) / (1 + N), N = labelled
    pixels of the image, averaged over all of the image's pixels::

        L_i = 1/|Ω| Σ_{p labelled} (N_i - N_{i,y_p}) / (1 + N_i) · CE(logits_p, y_p)

    else the plain mean of CE over the labelled pixels. ``require_all_classes`` (1-stage): an image counts only if
    its pseudo GT holds every image-label class + background. Returns the mean of L_i over the batch.
    """
    B, C = logits.shape[:2]
    ce = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="none").flatten(1)  # 0 at ignore
    valid = (target != IGNORE_INDEX).flatten(1)
    safe = torch.where(valid, target.flatten(1), torch.zeros_like(target.flatten(1)))
    counts = F.one_hot(safe, C).mul(valid[..., None]).sum(1).to(ce.dtype)  # [B,C]
    if balanced:
        n_tot = counts.sum(1, keepdim=True)
        w = ((n_tot - counts) / (1.0 + n_tot)).gather(1, safe) * valid
        per_image = (w * ce).mean(1)
    else:
        per_image = (ce * valid).sum(1) / valid.sum(1).clamp_min(1)
    if require_all_classes:
        want = labels.sum(1).to(ce.dtype) + 1.0
        have = (counts > 0).sum(1).to(ce.dtype)
        per_image = per_image * (want == have).to(ce.dtype)
    return per_image.mean()
