"""AffinityNet (PSA, Ahn & Kwak CVPR'18): a ResNet backbone + a light embedding head at stride 8.

Head (psa ``net/resnet38_aff.py``): 1×1 convs without bias from three depths (there: conv4 512 → 64, conv5
1024 → 128, bn7 4096 → 256; here: layer2 → 64, layer3 → 128, layer4 → 256), ELU each, concatenated (448) and a
1×1 conv 448 → ``embed_dim`` (448 in PSA) + ELU. Layer2 is at stride 8 for every ``output_stride``; deeper maps
with a coarser stride are bilinearly upsampled to it. Initialisation as PSA: Kaiming-normal for the three
projections, Xavier-uniform with gain 4 for the last conv. Affinities come from
:func:`wsss.refine.affinity.pairwise_affinity` on the embedding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import build_backbone, layer_out_channels

__all__ = ["AffinityNet", "affinity_net_from_config", "load_affinity_net"]


class AffinityNet(nn.Module):
    """``forward(x [B,3,H,W]) -> embedding [B, embed_dim, ⌈H/s⌉, ⌈W/s⌉]`` at stride s = ``stride`` (8, PSA; or 4)."""

    def __init__(
        self, backbone_cfg: dict, embed_dim: int = 448, dims: tuple[int, int, int] = (64, 128, 256), stride: int = 8
    ):
        super().__init__()
        if stride not in (4, 8):
            raise ValueError(f"AffinityNet stride must be 4 or 8, got {stride}")
        cfg = dict(backbone_cfg)
        name = cfg.pop("name", "resnet_small")
        self.backbone = build_backbone(name, **cfg)
        # stride 4 (ours, for small images; IRN also walks at stride 4): layer1 joins with a 32-channel projection
        self.layers = (1, 2, 3, 4) if stride == 4 else (2, 3, 4)
        dims = ((32,) + tuple(dims)) if stride == 4 else tuple(dims)
        chans = [layer_out_channels(getattr(self.backbone, f"layer{i}")) for i in self.layers]
        self.proj = nn.ModuleList(nn.Conv2d(c, d, kernel_size=1, bias=False) for c, d in zip(chans, dims))
        self.fuse = nn.Conv2d(sum(dims), embed_dim, kernel_size=1, bias=False)
        self.embed_dim = embed_dim
        self.stride = stride
        for m in self.proj:
            nn.init.kaiming_normal_(m.weight)
        nn.init.xavier_uniform_(self.fuse.weight, gain=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.backbone
        f1 = b.layer1(b.stem(x))
        f2 = b.layer2(f1)
        f3 = b.layer3(f2)
        f4 = b.layer4(f3)
        feats = (f1, f2, f3, f4) if self.stride == 4 else (f2, f3, f4)
        size = feats[0].shape[-2:]
        outs = []
        for f, proj in zip(feats, self.proj):
            if f.shape[-2:] != size:
                f = F.interpolate(f, size=size, mode="bilinear", align_corners=False)
            outs.append(F.elu(proj(f)))
        return F.elu(self.fuse(torch.cat(outs, dim=1)))


def affinity_net_from_config(rw) -> AffinityNet:
    """The affinity network of a ``refine.random_walk`` config section (backbone, embed_dim, stride)."""
    return AffinityNet(dict(rw["backbone"]), embed_dim=rw["embed_dim"], stride=rw["stride"])


def load_affinity_net(path) -> tuple[AffinityNet, dict]:
    """(the affinity network in eval mode, its checkpoint dict) of a ``train_affinity`` output."""
    from wsss.engine.checkpoint import load_model

    return load_model(
        path, section="random_walk", build=affinity_net_from_config, kind="affinity network checkpoint (train_affinity)"
    )
