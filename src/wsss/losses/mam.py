"""Multi-scale Attentive Module (MAM): SupportNet's multi-scale CAMs guide MainNet's CAMs.

What the paper says (abstract only; its equations are unknown): "The MAM utilizes
CAMs inferred at multiple scales from the SupportNet as self-supervision to guide
the MainNet. Based on the dissimilarity between the multi-scale CAMs from MainNet
and SupportNet, CAMs from the MainNet are trained to expand to the
less-discriminative regions."

Everything below is OUR formulation; the closest published relative is SEAM's
equivariant regularisation (Wang et al., CVPR'20: L1 between the CAM of a
rescaled image and the rescaled CAM). See docs/methods.md.

Recipe (one training step; S = scales, e.g. (0.5, 1.0, 1.5)):
  with torch.no_grad():                        # SupportNet: target only
      T = fuse_multiscale([normalize_cam(a) for a in cams_at_scales(support, x, S, flip=True, size=hw)])
  M = [normalize_cam(a, detach_max=...) for a in cams_at_scales(main, x, S_main, size=hw)]   # with grad
  loss = mam_loss(M, T, labels, ...)           # added to the classification loss by the trainer

Every MainNet scale is compared with the SAME fused target: the fused target is
more complete than any single scale (at 0.5 the receptive field covers whole
objects, so body pixels "see" the discriminative part), so each scale is pulled
toward the union of what all scales find.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = [
    "fuse_multiscale",
    "attentive_weight",
    "mam_loss",
    "MEASURES",
    "dissimilarity_target",
    "dissimilarity_mam_loss",
]

MEASURES = ("l1", "l2", "kl")


def fuse_multiscale(cams: Sequence[torch.Tensor], mode: str = "mean", renormalize: bool = False) -> torch.Tensor:
    """Fuse per-scale normalised CAMs (each [B,K,H,W], same size) into one target.

        T = 1/|S| sum_s A_s        (mode='mean', default)
        T = max_s A_s              (mode='max'; DESIGN.md: floods the background)

    ``renormalize=True`` divides each fused map by its spatial max (+1e-5) again,
    so its peak is 1 even when the scales' peaks do not coincide.
    """
    if len(cams) == 0:
        raise ValueError("need at least one CAM")
    stack = torch.stack(list(cams), dim=0)
    if mode == "mean":
        fused = stack.mean(dim=0)
    elif mode == "max":
        fused = stack.amax(dim=0)
    else:
        raise ValueError(f"mode must be 'mean' or 'max', got {mode!r}")
    if renormalize:
        fused = fused / (fused.amax(dim=(-2, -1), keepdim=True) + 1e-5)
    return fused


def attentive_weight(
    target: torch.Tensor,
    main: torch.Tensor,
    gamma: float = 1.0,
    labels: torch.Tensor | None = None,
    gate_threshold: float = 0.0,
) -> torch.Tensor:
    """The "attentive" weight: strong SupportNet evidence where MainNet is still weak.

        w_bc(i) = [c in Y_b] * [T_bc(i) >= gate_threshold] * T_bc(i)^gamma * (1 - clamp(M_bc(i), 0, 1))

    computed under stop-gradient (a constant for the loss). ``target`` T and
    ``main`` M are [B,K,H,W] normalised CAMs; ``labels`` [B,K] (None = all
    classes). gamma > 1 suppresses weak evidence (the blurry rim and context
    background, which a plain L1 pushes up); the (1 - M) factor focuses on
    regions MainNet has not yet covered (our choice, in the spirit of the
    paper's "attentive" + "expand to less-discriminative regions").
    """
    t = target.detach().clamp(0.0, 1.0)
    m = main.detach().clamp(0.0, 1.0)
    w = t.pow(gamma) * (1.0 - m)
    if gate_threshold > 0:
        w = w * (t >= gate_threshold).to(w.dtype)
    if labels is not None:
        w = w * labels.to(w.dtype)[:, :, None, None]
    return w


def _dissimilarity(main: torch.Tensor, target: torch.Tensor, measure: str, eps: float) -> torch.Tensor:
    if measure == "l1":
        return (target - main).abs()
    if measure == "l2":
        return (target - main).pow(2)
    if measure == "kl":
        # per-pixel Bernoulli KL(T || M). M is clipped to [0,1] with a straight-through
        # gradient (a plain clamp would kill the gradient exactly where MainNet's CAM
        # is 0 or negative, i.e. where expansion is needed), then squeezed affinely
        # into [eps, 1-eps] so the logs stay finite.
        t = target.clamp(0, 1) * (1 - 2 * eps) + eps
        m = main + (main.clamp(0, 1) - main).detach()
        m = m * (1 - 2 * eps) + eps
        return t * (t.log() - m.log()) + (1 - t) * ((1 - t).log() - (1 - m).log())
    raise ValueError(f"measure must be one of {MEASURES}, got {measure!r}")


def mam_loss(
    main_cams_per_scale: Sequence[torch.Tensor],
    target: torch.Tensor,
    labels: torch.Tensor,
    measure: str = "l1",
    gate_threshold: float = 0.3,
    one_sided: bool = True,
    gamma: float = 1.0,
    attentive: bool = True,
    suppress_below: float | None = None,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Weighted dissimilarity between each MainNet scale and the fused SupportNet target.

        L = 1/|S| sum_s  sum_{b,c,i} w^s_bc(i) u^s_bc(i) d(M^s_bc(i), T_bc(i))  /  (H W sum_b |Y_b|)

    M^s: MainNet's normalised CAM at scale s (with grad), resized to the target's
    H x W (may be signed: a raw CAM divided by its positive max keeps gradient
    where the raw CAM < 0, which a ReLU'd one does not); T: fused SupportNet
    target (gradient stopped here); d: 'l1' |T-M|
    (SEAM's measure, default), 'l2' (T-M)^2, or 'kl' the Bernoulli
    KL(T||M) = T log(T/M) + (1-T) log((1-T)/(1-M)) (M clipped to [0,1] with a
    straight-through gradient).
    w = attentive_weight(T, M^s, gamma, labels, gate_threshold) if ``attentive``
    else [c in Y_b][T >= gate_threshold]. u = [T > M^s] (stop-grad) if
    ``one_sided`` (only pushes MainNet UP toward the target: expansion), else 1.
    ``suppress_below`` (optional, our remedy for background flooding): pixels of
    present classes with T < suppress_below and M^s > T also get a push DOWN
    with weight 1 (they are included in u and w regardless of one_sided / gate).
    Absent classes never contribute. Defaults: l1 (SEAM), gate 0.3 (DESIGN.md's
    naive run: the only MAM variant that helped), one-sided, gamma 1.
    """
    if len(main_cams_per_scale) == 0:
        raise ValueError("need at least one MainNet scale")
    t = target.detach()
    present = labels.to(t.dtype)[:, :, None, None]
    denom = present.sum() * t.shape[-1] * t.shape[-2]
    total = t.new_zeros(())
    for m in main_cams_per_scale:
        if m.shape != t.shape:
            raise ValueError(f"MainNet CAM {tuple(m.shape)} and target {tuple(t.shape)} differ; resize first")
        if attentive:
            w = attentive_weight(t, m, gamma=gamma, labels=labels, gate_threshold=gate_threshold)
        else:
            w = present * (t >= gate_threshold).to(t.dtype)
        u = (t > m.detach()).to(t.dtype) if one_sided else torch.ones_like(t)
        if suppress_below is not None:
            down = (t < suppress_below) & (m.detach() > t)
            down = down.to(t.dtype) * present
            w = torch.where(down.bool(), down, w)
            u = torch.maximum(u, down)
        d = _dissimilarity(m, t, measure, eps)
        total = total + (w * u * d).sum()
    return total / (len(main_cams_per_scale) * denom.clamp_min(1.0))


# --- the authors' compiled code (inferred; issue 16, docs/methods.md "Authors' formulation") ---------------------


def dissimilarity_target(main: torch.Tensor, support_cams: Sequence[torch.Tensor]) -> torch.Tensor:
    """The (2 - cos)-weighted multi-scale target of the authors' compiled code (inferred), under stop-gradient.

        cos^s_bc = <M_bc, S^s_bc> / (||M_bc|| ||S^s_bc||)        (over the h x w map of class c of image b)
        T_bc = 1/|S| sum_s (2 - cos^s_bc) * S^s_bc

    ``main`` M [B,K,h,w] (one MainNet scale), ``support_cams`` S^s: SupportNet's CAMs at each of its scales,
    each [B,K,h,w]. A scale whose CAM looks least like MainNet's weighs most (the "dissimilarity").
    """
    if len(support_cams) == 0:
        raise ValueError("need SupportNet's CAMs at one scale at least")
    m = main.detach().flatten(2)
    target = torch.zeros_like(main, dtype=support_cams[0].dtype)
    for s in support_cams:
        if s.shape != main.shape:
            raise ValueError(
                f"SupportNet CAM {tuple(s.shape)} and MainNet CAM {tuple(main.shape)} differ; resize first"
            )
        cos = torch.nn.functional.cosine_similarity(m, s.detach().flatten(2), dim=-1, eps=1e-8)  # [B,K]
        target = target + (2.0 - cos)[:, :, None, None] * s.detach()
    return target / len(support_cams)


def dissimilarity_mam_loss(
    main_cams_per_scale: Sequence[torch.Tensor],
    support_cams: Sequence[torch.Tensor],
    labels: torch.Tensor,
) -> torch.Tensor:
    """MAM of the authors' compiled code (inferred): L1 from each MainNet scale to its detached target.

        L = sum_{k in main scales} sum_{b,c in Y_b,i} | T^k_bc(i) - M^k_bc(i) | / (h w sum_b |Y_b|),
        T^k = dissimilarity_target(M^k, {S^s})

    Summed over MainNet's scales (as that code does), averaged over the image classes' pixels (our choice: the
    compiled code's reduction over classes is not recoverable; absent classes are left out here).
    """
    if len(main_cams_per_scale) == 0:
        raise ValueError("need at least one MainNet scale")
    present = labels.to(main_cams_per_scale[0].dtype)[:, :, None, None]
    h, w = main_cams_per_scale[0].shape[-2:]
    denom = (present.sum() * h * w).clamp_min(1.0)
    total = main_cams_per_scale[0].new_zeros(())
    for m in main_cams_per_scale:
        t = dissimilarity_target(m, support_cams)
        total = total + ((t - m).abs() * present).sum()
    return total / denom
