"""CAM classifier (used for both SupportNet and MainNet) and multi-scale CAM inference.

Net: backbone -> F [B,C,h,w]; CAM head = 1x1 conv without bias -> raw CAM A [B,K,h,w];
logits = GAP(A) (equal to the classic GAP-then-FC because both are linear);
optional projection head (1x1 conv -> ReLU -> 1x1 conv to ``proj_dim`` channels, default the backbone's,
L2-normalised per pixel) for the Regional Contrastive Module (``mainnet.rcm.embedding: projection``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wsss.engine.checkpoint import load_checkpoint

from .backbones import build_backbone

__all__ = ["CAMNet", "build_cam_net", "load_cam_net", "image_cam", "multiscale_cam", "cams_at_scales", "normalize_cam"]


class CAMNet(nn.Module):
    """``forward(x, with_proj=False) -> {"logits" [B,K], "cam" [B,K,h,w], "features" [B,C,h,w], ["proj" [B,D,h,w]]}``.

    ``cam`` is the raw (signed, un-normalised) class activation map; ``proj`` is
    L2-normalised along the channel dimension. ``backbone_cfg`` is passed to
    :func:`wsss.models.backbones.build_backbone` (``name`` plus its keyword args).
    """

    def __init__(self, backbone_cfg: dict, num_classes: int = 20, proj_dim: int | None = None):
        super().__init__()
        cfg = dict(backbone_cfg)
        name = cfg.pop("name", "resnet_small")
        self.backbone = build_backbone(name, **cfg)
        c = self.backbone.out_channels
        self.num_classes = num_classes
        self.classifier = nn.Conv2d(c, num_classes, kernel_size=1, bias=False)
        self.proj = nn.Sequential(
            nn.Conv2d(c, c, kernel_size=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c, c if proj_dim is None else int(proj_dim), kernel_size=1),
        )

    def forward(self, x: torch.Tensor, with_proj: bool = False) -> dict[str, torch.Tensor]:
        feats = self.backbone(x)
        cam = self.classifier(feats)
        out = {"logits": cam.mean(dim=(2, 3)), "cam": cam, "features": feats}
        if with_proj:
            out["proj"] = F.normalize(self.proj(feats), dim=1)
        return out


def build_cam_net(backbone_cfg: dict) -> CAMNet:
    """SupportNet's and MainNet's architecture (one, since MainNet starts from SupportNet's weights)."""
    return CAMNet(backbone_cfg, num_classes=20)


def load_cam_net(path) -> tuple[CAMNet, dict]:
    """(the CAM network in eval mode, its checkpoint dict) of a ``train_supportnet`` / ``train_mainnet`` output."""
    ckpt = load_checkpoint(path, kind="CAM network checkpoint (train_supportnet / train_mainnet)", need=("backbone",))
    net = build_cam_net(ckpt["backbone"])
    net.load_state_dict(ckpt["model"])
    return net.eval(), ckpt


def rescale(images: torch.Tensor, s: float) -> torch.Tensor:
    """``images`` [B,C,H,W] resized by the factor ``s`` (bilinear; at least 1 px a side; ``s`` 1 returns them)."""
    if s == 1.0:
        return images
    H, W = images.shape[-2:]
    return F.interpolate(
        images, size=(max(1, round(H * s)), max(1, round(W * s))), mode="bilinear", align_corners=False
    )


def cams_at_scales(
    net: nn.Module,
    images: torch.Tensor,
    scales: Sequence[float] = (0.5, 1.0, 1.5),
    flip: bool = False,
    size: tuple[int, int] | None = None,
    activation: str = "relu",
) -> list[torch.Tensor]:
    """ReLU'd CAMs of ``images`` rescaled by each factor in ``scales``, each upsampled to ``size``.

    Returns one tensor [B,K,*size] per scale (default ``size`` = the image size).
    With ``flip`` each entry is the CAM of the image plus the un-flipped CAM of
    its horizontal flip (one network pass on a 2B batch). Keeps the autograd
    graph: wrap in ``torch.no_grad()`` for targets/extraction; leave it on for
    MainNet's per-scale CAMs in the MAM loss. ``activation='none'`` keeps the
    raw (signed) CAM: a ReLU has zero gradient where the raw CAM is negative, so
    a loss that should push MainNet's CAM up there (MAM) needs the raw map.
    """
    if activation not in ("relu", "none"):
        raise ValueError(f"activation must be 'relu' or 'none', got {activation!r}")
    size = tuple(images.shape[-2:]) if size is None else tuple(size)
    out = []
    for s in scales:
        x = rescale(images, s)
        if flip:
            x = torch.cat([x, x.flip(-1)], dim=0)
        cam = net(x)["cam"]
        if activation == "relu":
            cam = F.relu(cam)
        cam = F.interpolate(cam, size=size, mode="bilinear", align_corners=False)
        if flip:
            a, b = cam.chunk(2, dim=0)
            cam = a + b.flip(-1)
        out.append(cam)
    return out


def multiscale_cam(
    net: nn.Module,
    images: torch.Tensor,
    scales: Sequence[float] = (0.5, 1.0, 1.5),
    flip: bool = True,
) -> torch.Tensor:
    """Sum over scales (and flips) of ReLU'd CAMs bilinearly upsampled to H x W: [B,K,H,W].

    Not normalised (use :func:`normalize_cam`). Does not switch the net's mode or
    disable autograd: callers do ``net.eval()`` and ``torch.no_grad()``.
    """
    return torch.stack(cams_at_scales(net, images, scales, flip), dim=0).sum(dim=0)


def normalize_cam(cam: torch.Tensor, eps: float = 1e-5, detach_max: bool = False) -> torch.Tensor:
    """Divide each [H,W] map of ``cam`` [B,K,H,W] by its spatial max plus ``eps``.

    The max is floored at 0, so for a ReLU'd CAM this is exactly max-normalisation
    into [0,1]; a raw CAM keeps its negative values (scaled by the same factor).

    ``detach_max=True`` stops the gradient through the max, so a loss on the
    normalised map cannot be lowered by shrinking the map's peak (an option for
    MainNet's CAMs in the MAM loss; see docs/methods.md).
    """
    m = cam.amax(dim=(-2, -1), keepdim=True).clamp_min(0.0)
    if detach_max:
        m = m.detach()
    return cam / (m + eps)


@torch.no_grad()
def image_cam(net: nn.Module, image: torch.Tensor, label: torch.Tensor, scales, flip: bool):
    """(keys [K] VOC ids, cam float16 [K,H,W] in [0,1]) of one normalised image [3,H,W]: the multi-scale (+ flip)
    CAM of the image's own classes (``label`` [20] multi-hot), each max-normalised (the CAM file contract)."""
    keys = torch.nonzero(label).flatten()
    dev = next(net.parameters()).device
    cam = multiscale_cam(net, image[None].to(dev), scales=scales, flip=flip)[0]
    keys = keys.to(dev)
    cam = normalize_cam(cam[keys][None])[0] if len(keys) else cam[:0]
    return (keys + 1).cpu().numpy().astype(np.int64), cam.cpu().numpy().astype(np.float16)
