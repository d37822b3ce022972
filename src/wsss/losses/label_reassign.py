"""Label reassign (LR): correct erroneous pseudo labels in embedding space, then a
metric-learning loss against the corrected labels.

What the paper says (AA&LR, Zhang et al., ACM MM'21; abstract + Fig. 2 caption only):
"considering the existence of errors in the pseudo labels, we propose a novel label
reassign loss to mitigate over-fitting" and "we reassign the labeled point embedding and
also derive the LR loss". The reassignment rule, embedding and loss are unknown. Its
reference list includes center loss (Wen et al., ECCV'16), triplet-center loss (He et
al., CVPR'18) and Shoestring (Wang et al., CVPR'20).

Everything below is OUR formulation (centre-based, after those three):
  centres      mu_k = normalize( mean_{i: y_i = k} e_i )          (e: L2-normalised embeddings)
  reassignment s_ik = <e_i, mu_k>;  k* = argmax_{k present, k in C(i), k != y_i} s_ik
               (C(i): the classes of pixel i's own image, background included, when given)
               y'_i = k* (mode 'reassign') or 255 (mode 'ignore')  if s_ik* - s_iy_i > margin
               y'_i = y_i                                            otherwise (and for y_i = 255)
  loss         L = mean_{i: y'_i != 255} -log( exp(s_iy'_i / tau) / sum_{k present} exp(s_ik / tau) )
The loss is a softmax over centre similarities (InfoNCE to centres / a normalised
"softmax + center" form): it pulls e_i to its own centre (center loss) and pushes it
from the other centres (triplet-center loss, here with a softmax instead of a hinge).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["IGNORE_INDEX", "MODES", "class_centres", "reassign", "label_reassign_loss"]

IGNORE_INDEX = 255
MODES = ("reassign", "ignore")


def _flat(emb: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    B, D, H, W = emb.shape
    if labels.shape != (B, H, W):
        raise ValueError(f"labels {tuple(labels.shape)} do not match embeddings {(B, H, W)}")
    return emb.permute(0, 2, 3, 1).reshape(-1, D), labels.reshape(-1).long()


def class_centres(
    emb: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None, detach: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch class centres mu_k = normalize(mean of e_i with y_i = k) -> (centres [K,D], present [K]).

    ``emb`` [B,D,H,W] L2-normalised along D, ``labels`` [B,H,W] (255 ignored). K =
    ``num_classes`` or max label + 1. Absent centres are zero with present False.
    ``detach`` (default True, our choice): centres are targets, no gradient flows into them.
    """
    e, y = _flat(emb, labels)
    if detach:
        e = e.detach()
    valid = y != IGNORE_INDEX
    if num_classes is None:
        num_classes = int(y[valid].max()) + 1 if bool(valid.any()) else 1
    valid = valid & (y >= 0) & (y < num_classes)
    onehot = F.one_hot(y[valid], num_classes).to(e.dtype)  # [N,K]
    sums = onehot.t() @ e[valid]
    mass = onehot.sum(0)
    present = mass > 0
    centres = F.normalize(sums / mass.clamp_min(1).unsqueeze(1), dim=1) * present.unsqueeze(1).to(e.dtype)
    return centres, present


@torch.no_grad()
def reassign(
    emb: torch.Tensor,
    labels: torch.Tensor,
    centres: torch.Tensor,
    present: torch.Tensor,
    margin: float = 0.2,
    mode: str = "reassign",
    allowed: torch.Tensor | None = None,
) -> torch.Tensor:
    """New labels [B,H,W]: pixels much closer (cosine) to another present centre than to
    their own (difference > ``margin``) get that class ('reassign') or 255 ('ignore').

    ``allowed`` [B,K] (bool): the classes each image may take (its image labels and background); a pixel is only
    ever compared with, and moved to, a class of its own image (the batch's centres include classes other images
    hold: without it a pixel could be given a class its image does not contain, issue 16).
    Unchanged: well-placed pixels, 255 pixels, pixels whose own class has no centre.
    margin 0.2 (cosine units) is our choice, no source.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    e, y = _flat(emb, labels)
    K = centres.shape[0]
    present = present.bool()
    sim = e @ centres.to(e.dtype).t()  # [N,K]
    own_ok = (y != IGNORE_INDEX) & (y >= 0) & (y < K)
    own_ok = own_ok & present[torch.where(own_ok, y, torch.zeros_like(y))]
    safe = torch.where(own_ok, y, torch.zeros_like(y))
    s_own = sim.gather(1, safe[:, None]).squeeze(1)
    other = sim.masked_fill(~present[None, :], float("-inf"))
    if allowed is not None:
        B, _, H, W = emb.shape
        if allowed.shape != (B, K):
            raise ValueError(f"allowed {tuple(allowed.shape)} must be [batch, classes] = {(B, K)}")
        per_pixel = allowed.bool().to(e.device).repeat_interleave(H * W, dim=0)  # [N,K], the layout of _flat
        other = other.masked_fill(~per_pixel, float("-inf"))
    other = other.scatter(1, safe[:, None], float("-inf"))
    s_best, k_best = other.max(1)
    flip = own_ok & (s_best - s_own > margin)
    new = y.clone()
    new[flip] = k_best[flip] if mode == "reassign" else IGNORE_INDEX
    return new.view_as(labels).to(labels.dtype)


def label_reassign_loss(
    emb: torch.Tensor,
    new_labels: torch.Tensor,
    centres: torch.Tensor,
    present: torch.Tensor,
    temperature: float = 0.1,
) -> torch.Tensor:
    """Centre-softmax (InfoNCE-to-centres) loss of embeddings against reassigned labels.

        L = mean_{i: y'_i != 255, y'_i present} -log softmax_{k present}( <e_i, mu_k> / tau )[y'_i]

    tau = 0.1 (as PPC / our RCM; no AA&LR source). Returns 0 with a graph if no pixel counts.
    """
    e, y = _flat(emb, new_labels)
    K = centres.shape[0]
    present = present.bool()
    logits = (e @ centres.to(e.dtype).t() / temperature).masked_fill(~present[None, :], float("-inf"))
    ok = (y != IGNORE_INDEX) & (y >= 0) & (y < K)
    ok = ok & present[torch.where(ok, y, torch.zeros_like(y))]
    if not bool(ok.any()):
        return emb.sum() * 0.0
    return F.cross_entropy(logits[ok], y[ok])
