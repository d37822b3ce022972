"""Single-stage segmentation network (Araslanov & Roth, CVPR'20 "Single-Stage Semantic Segmentation From Image
Labels", official code visinf/1-stage-wseg ``models/stage_net.py``; facts in ../shared/research/papers.md §2.5),
the presumed base of AA&LR (Zhang et al., ACM MM'21), plus a pixel-embedding head for AA&LR's label-reassign loss.

Structure (our code; what follows 1-stage and what is ours is said per part)::

    backbone (wsss.models.backbones, output stride 8)
      layer2 (stride 8) ----------------------------------- shallow -----+
      layer4 --> ASPP (torchvision's, as wsss.models.deeplab) --> deep  |
      deep  = 3x3 conv(cat[deep, 1x1 skip(shallow)])      (1-stage: ASPP + skip from conv3 + 3x3 conv)
      gci   = GCI(shallow, deep)                          (1-stage "global cue injection": AdaIN of the shallow
                                                           features by the global max of the deep ones)
      x     = SG(deep, gci, psi)                          (1-stage stochastic gate; psi = 0 drops the branch)
      logits_fg = last_conv(x)                            (3x3 conv, dropout, 1x1 to K = 20 classes)
      logits = cat[bg, logits_fg]   bg = constant 1       (1-stage: constant background logit) or learned
      seg_logits = logits, or cat[bg, seg_conv(x)]         (seg_head 'shared' = 1-stage; 'separate' = ours)
      emb    = normalize(proj(x))                         (ours: 1x1 conv -> ReLU -> 1x1 conv, L2-normalised)

Differences from 1-stage, all for the small CPU benchmark: the shallow features come from ``layer2`` (stride 8,
so no upsampling is needed; 1-stage's ``conv3`` sits at stride 4), widths follow ``head_channels`` instead of
256, and the decoder's BatchNorms train (1-stage freezes them; ``freeze_bn`` freezes the backbone's).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.segmentation import deeplabv3 as tv_deeplab

from .backbones import build_backbone, freeze_bn

__all__ = [
    "SingleStageNet",
    "single_stage_from_config",
    "load_single_stage",
    "StochasticGate",
    "GlobalCueInjection",
    "BACKGROUND_MODES",
    "SEG_HEADS",
]

BACKGROUND_MODES = ("constant", "learned")
SEG_HEADS = ("shared", "separate")


def _conv_bn_relu(cin: int, cout: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class StochasticGate(nn.Module):
    """1-stage's stochastic gate (``models/mods/sg.py``): at training time each feature element takes the
    (shifted, rescaled) deep value with probability 1 - psi and the shallow one with probability psi, so that
    E[x] = deep; at test time x = (1 - psi) deep + psi shallow. Uses torch's RNG (reproducible under a seed)."""

    def __init__(self, psi: float):
        super().__init__()
        if not 0.0 <= psi < 1.0:
            raise ValueError(f"sg_psi must be in [0, 1), got {psi}")
        self.psi = float(psi)

    def forward(self, deep: torch.Tensor, shallow: torch.Tensor) -> torch.Tensor:
        p = self.psi
        if not self.training:
            return (1.0 - p) * deep + p * shallow
        keep = (torch.rand_like(deep) >= p).to(deep.dtype)
        deep = (deep - p * shallow) / max(1e-8, 1.0 - p)
        return keep * deep + (1.0 - keep) * shallow


class GlobalCueInjection(nn.Module):
    """1-stage's GCI (``models/mods/gci.py``): shallow features, batch-normalised without affine parameters, are
    modulated by (gamma + 1, beta) taken from the spatial max of a 1x1 projection of the deep features."""

    def __init__(self, shallow_channels: int, channels: int):
        super().__init__()
        self.fc_deep = _conv_bn_relu(channels, 2 * channels, 1)
        self.fc_skip = nn.Sequential(
            nn.Conv2d(shallow_channels, channels, 1, bias=False), nn.BatchNorm2d(channels, affine=False)
        )
        self.fc_cls = _conv_bn_relu(channels, channels, 1)

    def forward(self, shallow: torch.Tensor, deep: torch.Tensor) -> torch.Tensor:
        attrs = self.fc_deep(deep).amax(dim=(2, 3))  # [B, 2C]
        gamma, beta = attrs.chunk(2, dim=1)
        x = self.fc_skip(shallow)
        x = F.relu(x * (gamma[:, :, None, None] + 1.0) + beta[:, :, None, None])
        return self.fc_cls(x)


class SingleStageNet(nn.Module):
    """``forward(x, with_embedding=False) -> {"logits", "seg_logits" [B,K+1,h,w], ["embedding" [B,D,h,w]]}``, stride 8.

    ``logits`` is the classification branch (nGWP scores, pseudo masks); ``seg_logits`` the segmentation prediction:
    the same tensor with ``seg_head='shared'`` (1-stage), a second ``last_conv`` over the same decoder features with
    ``'separate'`` (our reading of AA&LR's Fig. 2, which names a "classification branch" that makes the pseudo masks
    and a "segmentation prediction" trained with CE + AA).

    Channel 0 of ``logits`` is the background (a constant ``background_logit`` in 1-stage's 'constant' mode),
    channel c + 1 the foreground class c. ``backbone_cfg``: the backbone config section (``name`` plus the keyword
    args of :func:`wsss.models.backbones.build_backbone`; ``pretrained`` allowed). The backbone must run at output
    stride 8 (the head's shallow branch is ``layer2``, at stride 8).
    """

    def __init__(
        self,
        backbone_cfg: dict,
        num_classes: int = 20,
        *,
        head_channels: int = 64,
        atrous_rates: Sequence[int] = (2, 4, 6),
        embedding_dim: int = 64,
        sg_psi: float = 0.3,
        background: str = "constant",
        background_logit: float = 1.0,
        dropout: Sequence[float] = (0.5, 0.1),
        freeze_backbone_bn: bool = False,
        seg_head: str = "shared",
    ):
        super().__init__()
        cfg = dict(backbone_cfg)
        name = cfg.pop("name", "resnet_small")
        if cfg.get("output_stride", 8) != 8:
            raise ValueError("the single-stage net needs backbone.output_stride 8 (its shallow branch is layer2)")
        if background not in BACKGROUND_MODES:
            raise ValueError(f"background must be one of {BACKGROUND_MODES}, got {background!r}")
        if seg_head not in SEG_HEADS:
            raise ValueError(f"seg_head must be one of {SEG_HEADS}, got {seg_head!r}")
        self.backbone = build_backbone(name, **cfg)
        if freeze_backbone_bn:
            freeze_bn(self.backbone)
        c_deep = self.backbone.out_channels
        c_shallow = self._channels(self.backbone.layer2)
        c = int(head_channels)
        self.num_classes = int(num_classes)
        self.background, self.background_logit = background, float(background_logit)
        self.aspp = tv_deeplab.ASPP(c_deep, list(atrous_rates), out_channels=c)
        self.skip = _conv_bn_relu(c_shallow, max(8, c // 4), 1)
        self.fuse = _conv_bn_relu(c + max(8, c // 4), c, 3)
        self.sg_psi = float(sg_psi)
        self.gci = GlobalCueInjection(c_shallow, c) if self.sg_psi > 0 else None
        self.sg = StochasticGate(self.sg_psi) if self.sg_psi > 0 else None
        n_out = self.num_classes + (1 if background == "learned" else 0)
        d1, d2 = dropout

        def last_conv() -> nn.Sequential:
            return nn.Sequential(
                _conv_bn_relu(c, c, 3), nn.Dropout(d1), _conv_bn_relu(c, c, 3), nn.Dropout(d2), nn.Conv2d(c, n_out, 1)
            )

        self.last_conv = last_conv()
        self.seg_conv = last_conv() if seg_head == "separate" else None
        self.proj = nn.Sequential(nn.Conv2d(c, c, 1), nn.ReLU(), nn.Conv2d(c, int(embedding_dim), 1))
        extra = [m for m in (self.gci, self.seg_conv) if m is not None]
        for m in [self.skip, self.fuse, self.last_conv, self.proj] + extra:
            for mod in m.modules():
                if isinstance(mod, nn.Conv2d):
                    nn.init.kaiming_normal_(mod.weight)  # 1-stage's decoder init

    @staticmethod
    def _channels(layer: nn.Module) -> int:
        convs = [m for m in layer.modules() if isinstance(m, nn.Conv2d)]
        bns = [m for m in layer.modules() if isinstance(m, nn.BatchNorm2d)]
        return bns[-1].num_features if bns else convs[-1].out_channels

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(shallow = layer2 output, deep = layer4 output), both at stride 8."""
        b = self.backbone
        x = b.layer1(b.stem(x))
        shallow = b.layer2(x)
        return shallow, b.layer4(b.layer3(shallow))

    def _with_background(self, fg: torch.Tensor) -> torch.Tensor:
        if self.background == "constant":
            return torch.cat([torch.full_like(fg[:, :1], self.background_logit), fg], dim=1)
        return fg

    def forward(self, x: torch.Tensor, with_embedding: bool = False) -> dict[str, torch.Tensor]:
        shallow, deep = self.features(x)
        y = self.aspp(deep)
        y = self.fuse(torch.cat([y, self.skip(shallow)], dim=1))
        if self.sg is not None:
            y = self.sg(y, self.gci(shallow, y))
        logits = self._with_background(self.last_conv(y))
        seg = logits if self.seg_conv is None else self._with_background(self.seg_conv(y))
        out = {"logits": logits, "seg_logits": seg}
        if with_embedding:
            out["embedding"] = F.normalize(self.proj(y), dim=1)
        return out


def single_stage_from_config(scfg) -> SingleStageNet:
    """The single-stage net of a ``single_stage`` config section."""
    return SingleStageNet(
        scfg["backbone"],
        num_classes=20,
        head_channels=scfg["head_channels"],
        atrous_rates=scfg["atrous_rates"],
        embedding_dim=scfg["embedding_dim"],
        sg_psi=scfg["sg_psi"],
        background=scfg["background"],
        background_logit=scfg["background_logit"],
        freeze_backbone_bn=scfg["freeze_backbone_bn"],
        seg_head=scfg["seg_head"],
    )


def load_single_stage(path) -> tuple[SingleStageNet, dict]:
    """(the single-stage net in eval mode, its checkpoint dict) of a ``train_single_stage`` output."""
    from wsss.engine.checkpoint import load_model

    return load_model(
        path,
        section="single_stage",
        build=single_stage_from_config,
        kind="single-stage checkpoint (train_single_stage)",
    )
