"""Regional Contrastive Module (RCM): pixel-to-prototype contrast guided by SupportNet.

What the paper says (abstract only; its equations are unknown): "The RCM extracts
two forms of self-supervision from SupportNet: (1) class region masks generated
from the CAMs and (2) class-wise prototypes obtained from the features according
to the class region masks. Then, every pixel-wise feature of the MainNet is
trained by the prototype in a contrastive manner, sharpening the resulting CAMs."

Everything below is OUR formulation; the closest published one is PPC (Du et al.,
CVPR'22, pixel-to-prototype InfoNCE with tau = 0.1). See docs/methods.md.

Pipeline (one training step; no autograd through SupportNet):
  region = region_labels(norm. SupportNet CAM at feature size, labels, fg, bg)
  protos, present = class_prototypes(SupportNet features/projections, region)
  loss = pixel_prototype_contrast(MainNet projections, region, protos, present, tau)

Classes: region value 0 = background, c + 1 = classifier output c, 255 = ignored.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "IGNORE_INDEX",
    "region_labels",
    "class_prototypes",
    "pixel_prototype_contrast",
    "PrototypeMemory",
    "multiscale_region_masks",
    "leave_one_out_prototypes",
    "PrototypeQueue",
]

IGNORE_INDEX = 255


def region_labels(
    support_cam_norm: torch.Tensor,
    labels: torch.Tensor,
    fg_threshold: float = 0.5,
    bg_threshold: float = 0.2,
) -> torch.Tensor:
    """Class region masks from SupportNet's normalised CAMs.

    With M_b(i) = max_{c in Y_b} A_bc(i) and c*(i) = argmax_{c in Y_b} A_bc(i)
    (Y_b = the classes present in image b; absent classes never win):

        R_b(i) = 0            if M_b(i) <  bg_threshold        (background)
                 c*(i) + 1    if M_b(i) >= fg_threshold        (class region)
                 255          otherwise                         (uncertain, ignored)

    ``support_cam_norm`` [B,K,h,w] in [0,1], ``labels`` [B,K] in {0,1}. An image
    with no present class is all background. Returns int64 [B,h,w].
    Defaults: fg 0.5 / bg 0.2 (DESIGN.md's naive MainNet; PPC uses bg 0.20).
    """
    if not 0.0 <= bg_threshold <= fg_threshold:
        raise ValueError(f"need 0 <= bg_threshold <= fg_threshold, got {bg_threshold}, {fg_threshold}")
    present = labels.bool()[:, :, None, None]
    cam = support_cam_norm.masked_fill(~present, float("-inf"))
    maxv, argc = cam.max(dim=1)
    region = torch.full_like(argc, IGNORE_INDEX)
    region[maxv >= fg_threshold] = argc[maxv >= fg_threshold] + 1
    region[maxv < bg_threshold] = 0
    return region


def _region_onehot(region: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[B,h,w] -> float [B,h*w,num_classes]; ignored / out-of-range pixels are all-zero rows."""
    r = region.flatten(1).long()
    valid = (r >= 0) & (r < num_classes)
    r = torch.where(valid, r, torch.full_like(r, num_classes))
    return F.one_hot(r, num_classes + 1)[..., :num_classes].float()


def class_prototypes(
    features: torch.Tensor,
    region: torch.Tensor,
    num_classes: int = 21,
    scope: str = "batch",
    weights: torch.Tensor | None = None,
    normalize_features: bool = True,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-wise prototypes: mean of (L2-normalised) features under each region.

        p_k = normalize( sum_{b,i: R_b(i)=k} w_b(i) f~_b(i) / sum_{b,i: R_b(i)=k} w_b(i) ),
        f~ = f / ||f||_2   (if ``normalize_features``)

    ``features`` [B,D,h,w] (SupportNet's projections or raw features; must live in
    the same space as the pixel embeddings they are contrasted with), ``region``
    [B,h,w] from :func:`region_labels` (255 ignored). ``weights`` [B,h,w] >= 0
    (optional): e.g. the SupportNet CAM value, as PPC's CAM-weighted prototypes;
    default uniform. ``scope='batch'`` pools over the whole batch -> protos
    [K,D], present [K]; ``scope='image'`` pools per image -> [B,K,D], [B,K].
    Absent prototypes are zero vectors with ``present`` False.
    ``reduce`` (``scope='batch'`` only), e.g. ``wsss.engine.distributed.all_reduce_sum``, sums the per-class
    feature sums and masses over the processes of a DDP run before normalising, so the prototypes are those of the
    global batch on every process (as with one process).
    """
    if features.shape[-2:] != region.shape[-2:]:
        raise ValueError(f"features {tuple(features.shape)} and region {tuple(region.shape)} differ in size")
    f = F.normalize(features, dim=1) if normalize_features else features
    onehot = _region_onehot(region, num_classes).to(f.dtype)  # [B,N,K]
    if weights is not None:
        onehot = onehot * weights.flatten(1).to(f.dtype).unsqueeze(-1)
    sums = torch.einsum("bnk,bdn->bkd", onehot, f.flatten(2))  # [B,K,D]
    mass = onehot.sum(dim=1)  # [B,K]
    if scope == "batch":
        sums, mass = sums.sum(0), mass.sum(0)
        if reduce is not None:
            sums, mass = reduce(sums), reduce(mass)
    elif scope != "image":
        raise ValueError(f"scope must be 'batch' or 'image', got {scope!r}")
    present = mass > 0
    protos = F.normalize(sums / mass.clamp_min(1e-12).unsqueeze(-1), dim=-1)
    protos = protos * present.unsqueeze(-1).to(protos.dtype)
    return protos, present


def pixel_prototype_contrast(
    pixel_emb: torch.Tensor,
    region: torch.Tensor,
    protos: torch.Tensor,
    present: torch.Tensor,
    temperature: float = 0.1,
    labels: torch.Tensor | None = None,
    pixel_weights: torch.Tensor | None = None,
    return_count: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Pixel-to-prototype InfoNCE (PPC-style), averaged over labelled pixels.

        L = 1/|Omega| sum_{(b,i) in Omega} -log( exp(<f_bi, p_{y_bi}>/tau) / sum_{k in P_b} exp(<f_bi, p_k>/tau) )

    f_bi: MainNet's L2-normalised pixel embedding [B,D,h,w]; y_bi = ``region``;
    Omega = pixels with y != 255 whose prototype is present; P_b = present
    prototypes (``present`` [K] for batch prototypes [K,D], or [B,K] for
    per-image prototypes [B,K,D]). Optional ``labels`` [B,K-1] restricts P_b to
    background + the classes of image b (our option; default: all present, as
    PPC). Optional ``pixel_weights`` [B,h,w] gives a weighted mean instead.
    Returns 0 (with a graph) when no pixel is labelled. tau = 0.1 from PPC.
    ``return_count=True`` returns (loss, the mean's denominator: |Omega| or the weight sum), which a DDP run needs
    to turn the per-process mean into the global-batch mean (``wsss.engine.distributed.global_mean``).
    """
    B, D, h, w = pixel_emb.shape
    if region.shape != (B, h, w):
        raise ValueError(f"region {tuple(region.shape)} does not match embeddings {(B, h, w)}")
    emb = pixel_emb.flatten(2).transpose(1, 2)  # [B,N,D]
    protos = protos.to(emb.dtype)
    if protos.dim() == 2:
        logits = emb @ protos.t()  # [B,N,K]
        allowed = present.bool()[None, :].expand(B, -1)
    else:
        logits = torch.einsum("bnd,bkd->bnk", emb, protos)
        allowed = present.bool()
    K = logits.shape[-1]
    if labels is not None:
        keep = torch.cat([torch.ones_like(labels[:, :1]), labels], dim=1).bool()
        allowed = allowed & keep
    logits = (logits / temperature).masked_fill(~allowed[:, None, :], float("-inf"))
    tgt = region.flatten(1).long()
    in_range = (tgt >= 0) & (tgt < K)
    safe = torch.where(in_range, tgt, torch.zeros_like(tgt))
    valid = in_range & torch.gather(allowed, 1, safe)
    if not bool(valid.any()):
        zero = pixel_emb.sum() * 0.0
        return (zero, zero.detach()) if return_count else zero
    nll = F.cross_entropy(logits[valid], tgt[valid], reduction="none")
    if pixel_weights is None:
        loss, count = nll.mean(), torch.tensor(float(nll.numel()), dtype=nll.dtype, device=nll.device)
    else:
        wv = pixel_weights.flatten(1)[valid].to(nll.dtype)
        count = wv.sum().clamp_min(1e-12)
        loss = (wv * nll).sum() / count
    return (loss, count.detach()) if return_count else loss


class PrototypeMemory(nn.Module):
    """Momentum (EMA) bank of batch prototypes; a buffer, so it is saved in checkpoints.

        m_k <- normalize( momentum * m_k + (1 - momentum) * p_k )   if k present in the batch
        m_k <- p_k                                                  the first time k is seen

    ``get()`` returns (protos [K,D], seen [K]) to pass to
    :func:`pixel_prototype_contrast`. MoCo/PPC-style smoothing is our option;
    the paper's use of a memory is unknown.
    """

    def __init__(self, num_classes: int = 21, dim: int = 128, momentum: float = 0.9):
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise ValueError("momentum must be in [0, 1)")
        self.momentum = float(momentum)
        self.register_buffer("protos", torch.zeros(num_classes, dim))
        self.register_buffer("seen", torch.zeros(num_classes, dtype=torch.bool))

    @torch.no_grad()
    def update(self, protos: torch.Tensor, present: torch.Tensor) -> None:
        protos = protos.detach().to(self.protos.dtype)
        present = present.bool()
        new = present & ~self.seen
        old = present & self.seen
        mixed = F.normalize(self.momentum * self.protos + (1 - self.momentum) * protos, dim=-1)
        self.protos[old] = mixed[old]
        self.protos[new] = protos[new]
        self.seen |= present

    def get(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.protos.clone(), self.seen.clone()


# --- the authors' compiled code (inferred; issue 16, docs/methods.md "Authors' formulation") ---------------------


def multiscale_region_masks(cams_per_scale, labels: torch.Tensor, threshold: float) -> torch.Tensor:
    """Region masks of the authors' compiled code (inferred): every pixel is a class or background, none ignored.

        A_bc(i) = [c in Y_b] * sum_s relu(CAM^s_bc(i))        (the CAMs at each scale, resized to one grid)
        A~_bc(i) = A_bc(i) / max_j A_bc(j)
        R_b(i) = argmax_c A~_bc(i) + 1   if max_c A~_bc(i) >= threshold,   else 0 (background)

    ``cams_per_scale``: a sequence of [B,K,h,w] CAMs (ReLU'd or raw: the ReLU is applied here), ``labels`` [B,K].
    ``threshold`` is TH, whose value the compiled code does not give (a config option, docs/methods.md).
    Returns int64 [B,h,w] with values in {0, ..., K}.
    """
    if len(cams_per_scale) == 0:
        raise ValueError("need the CAMs of at least one scale")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"the region threshold must lie in [0, 1], got {threshold}")
    a = sum(F.relu(c) for c in cams_per_scale) * labels.to(cams_per_scale[0].dtype)[:, :, None, None]
    a = a / (a.amax(dim=(-2, -1), keepdim=True) + 1e-5)
    maxv, argc = a.max(dim=1)
    return torch.where(maxv >= threshold, argc + 1, torch.zeros_like(argc))


def leave_one_out_prototypes(
    features: torch.Tensor,
    region: torch.Tensor,
    num_classes: int = 21,
    memory: torch.Tensor | None = None,
    memory_count: torch.Tensor | None = None,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cross-image prototypes of the authors' compiled code (inferred): image i is contrasted with the prototypes of
    the OTHER images of the batch.

        q_bk = normalize( sum_{i: R_b(i)=k} f~_b(i) )                       (per image and class; f~ = f / ||f||)
        p_bk = normalize( (sum_{b' != b, k in b'} q_b'k + sum_m M_mk) / (#{b' != b: k in b'} + n_k) )

    ``features`` [B,D,h,w] (SupportNet's, of the second view), ``region`` [B,h,w] from
    :func:`multiscale_region_masks` (class k + 1; 0 = background, a prototype of its own). ``memory`` [K,N,D] with
    ``memory_count`` [K] valid entries per class (optional): earlier batches' prototypes added to every image's
    mean. ``reduce`` (DDP): the batch sums are all-reduced, so "the other images" are those of the global batch.
    Returns (protos [B,K,D], present [B,K], q [B,K,D] with its own mask ``q.norm(dim=-1) > 0``: this batch's
    per-image prototypes, for the memory).
    """
    if features.shape[-2:] != region.shape[-2:]:
        raise ValueError(f"features {tuple(features.shape)} and region {tuple(region.shape)} differ in size")
    f = F.normalize(features, dim=1)
    onehot = _region_onehot(region, num_classes).to(f.dtype)  # [B,N,K]
    q = F.normalize(torch.einsum("bnk,bdn->bkd", onehot, f.flatten(2)), dim=-1)  # [B,K,D]; zero where absent
    has = (onehot.sum(dim=1) > 0).to(f.dtype)  # [B,K]
    total, count = q.sum(0), has.sum(0)  # [K,D], [K]
    if reduce is not None:
        total, count = reduce(total), reduce(count)
    others, n_others = total[None] - q, count[None] - has  # [B,K,D], [B,K]
    if memory is not None and memory_count is not None:
        others = others + memory.to(f.dtype).sum(1)[None]
        n_others = n_others + memory_count.to(f.dtype)[None]
    present = n_others > 0.5
    protos = F.normalize(others / n_others.clamp_min(1.0).unsqueeze(-1), dim=-1)
    return protos * present.unsqueeze(-1).to(protos.dtype), present, q


class PrototypeQueue(nn.Module):
    """The authors' optional memory (inferred): the last ``size`` prototypes of each class, first in first out.

    ``push(q, has)`` appends the batch's mean prototype of each class present in it (detached; under DDP the
    caller passes the global batch's); ``get()`` returns (entries [K,size,D], count [K]) for
    :func:`leave_one_out_prototypes`. A buffer, so a resumed training restores it.
    """

    def __init__(self, num_classes: int = 21, dim: int = 128, size: int = 5):
        super().__init__()
        if size < 1:
            raise ValueError("the prototype queue needs size >= 1")
        self.register_buffer("entries", torch.zeros(num_classes, size, dim))
        self.register_buffer("count", torch.zeros(num_classes, dtype=torch.long))

    @torch.no_grad()
    def push(self, protos: torch.Tensor, present: torch.Tensor) -> None:
        """``protos`` [K,D] (rows of absent classes ignored), ``present`` [K] bool."""
        p = protos.detach().to(self.entries.dtype)
        for k in torch.nonzero(present.bool()).flatten().tolist():
            self.entries[k] = torch.cat([self.entries[k, 1:], p[k : k + 1]], dim=0)
            self.count[k] = min(int(self.count[k]) + 1, self.entries.shape[1])

    def get(self) -> tuple[torch.Tensor, torch.Tensor]:
        # only the newest count[k] rows of class k are filled; the older rows are zeros and add nothing
        return self.entries.clone(), self.count.clone()
