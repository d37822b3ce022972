"""Segmentation networks trained on pseudo labels (torchvision DeepLabV3).

``build_segmenter(...)`` returns a :class:`Segmenter` whose ``forward(x)`` gives
logits [B,num_classes,H,W] at the input size (torchvision's DeepLabV3 already
upsamples bilinearly; the wrapper only unpacks its ``{"out": ...}`` dict).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn
from torchvision.models import resnet as tv_resnet
from torchvision.models.segmentation import deeplabv3 as tv_deeplab

from .backbones import ResNetBackbone, build_backbone, load_torchvision_weights

__all__ = ["build_segmenter", "Segmenter", "SEGMENTERS"]

SEGMENTERS = ("deeplabv3_small", "deeplabv3_resnet50", "deeplabv3_resnet101")


class _DictBackbone(nn.Module):
    """Adapts a feature-map backbone to DeepLabV3's ``OrderedDict(out=...)`` interface."""

    def __init__(self, body: ResNetBackbone):
        super().__init__()
        self.body = body
        self.out_channels = body.out_channels

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        return OrderedDict(out=self.body(x))


class _SmallDeepLabHead(nn.Sequential):
    """torchvision's DeepLabHead with a configurable ASPP width (it hard-codes 256)."""

    def __init__(self, in_channels: int, num_classes: int, atrous_rates: Sequence[int], channels: int):
        super().__init__(
            tv_deeplab.ASPP(in_channels, atrous_rates, out_channels=channels),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.Conv2d(channels, num_classes, 1),
        )


class Segmenter(nn.Module):
    """Wraps a torchvision ``DeepLabV3``; ``forward(x) -> logits [B,num_classes,H,W]``."""

    def __init__(self, net: tv_deeplab.DeepLabV3):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)["out"]


def build_segmenter(
    name: str,
    *,
    num_classes: int = 21,
    backbone_cfg: dict | None = None,
    pretrained: bool = False,
    aspp_channels: int = 64,
    atrous_rates: Sequence[int] = (2, 4, 6),
) -> Segmenter:
    """Build a segmenter.

    ``deeplabv3_small``: ``DeepLabV3(resnet_small, DeepLabHead)`` with an ASPP of
    ``aspp_channels`` channels and ``atrous_rates`` (defaults sized for ~14x14
    feature maps of 112-128 px crops at output stride 8; torchvision's
    (12, 24, 36) assume 65x65 maps). ``backbone_cfg`` (keyword args of
    ``build_backbone``, optional ``name``) defaults to ``resnet_small`` at OS 8.
    ``deeplabv3_resnet50|101``: torchvision constructors (OS 8, ASPP 256, rates
    12/24/36, aux_loss off), ``weights=None`` and ImageNet backbone weights when
    ``pretrained``; ``backbone_cfg``/``aspp_*`` are ignored for them.
    """
    if name == "deeplabv3_small":
        cfg = {"name": "resnet_small", "output_stride": 8}
        cfg.update(backbone_cfg or {})
        bname = cfg.pop("name")
        body = build_backbone(bname, pretrained=pretrained, **cfg)
        head = _SmallDeepLabHead(body.out_channels, num_classes, atrous_rates, aspp_channels)
        return Segmenter(tv_deeplab.DeepLabV3(_DictBackbone(body), head, None))
    if name in ("deeplabv3_resnet50", "deeplabv3_resnet101"):
        depth = name.split("_")[-1]
        ctor = getattr(tv_deeplab, name)
        weights_enum = getattr(tv_resnet, f"ResNet{depth[6:]}_Weights").IMAGENET1K_V1
        if pretrained:
            load_torchvision_weights(weights_enum)  # clear RuntimeError when unavailable offline
        net = ctor(
            weights=None,
            weights_backbone=weights_enum if pretrained else None,
            num_classes=num_classes,
            aux_loss=False,
        )
        return Segmenter(net)
    raise ValueError(f"unknown segmenter {name!r}; choose from {SEGMENTERS}")
