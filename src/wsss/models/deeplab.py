"""Segmentation networks trained on pseudo labels: DeepLab-v2, DeepLabV3 (torchvision), DeepLabv3+.

``build_segmenter(...)`` returns a module whose ``forward(x)`` gives logits [B,num_classes,H,W] at the input
size, and whose ``.backbone`` is the :class:`~wsss.models.backbones.ResNetBackbone` (for initialisation).

- DeepLab-v2 (Chen et al., TPAMI 2017, "DeepLab: semantic image segmentation with deep convolutional nets,
  atrous convolution, and fully connected CRFs"): ResNet at output stride 8 and ASPP-v2 = four parallel 3x3
  atrous convolutions (rates 6, 12, 18, 24 for VOC) each predicting the classes directly, summed. The WSSS
  standard final network (PSA, IRN, SEAM all report it; deeplab-pytorch's VOC config: ResNet-101, rates
  6/12/18/24, poly lr, batch 10, 321 crops).
- DeepLabV3 (Chen et al. 2017): torchvision's ``DeepLabV3`` with its ``DeepLabHead`` (ASPP with image pooling).
- DeepLabv3+ (Chen et al., ECCV 2018): torchvision's ``ASPP`` at output stride 16, a decoder that concatenates
  the 4x-upsampled ASPP output with 48-channel projected layer1 features (stride 4), two 3x3 convs and a 1x1
  classifier, then bilinear upsampling to the input.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet as tv_resnet
from torchvision.models.segmentation import deeplabv3 as tv_deeplab

from .backbones import ResNetBackbone, build_backbone, layer_out_channels, load_torchvision_weights

__all__ = ["build_segmenter", "segmenter_from_config", "load_segmenter", "Segmenter", "SEGMENTERS"]

SEGMENTERS = (
    "deeplabv3_small",
    "deeplabv3_resnet50",
    "deeplabv3_resnet101",
    "deeplabv2_small",
    "deeplabv2_resnet50",
    "deeplabv2_resnet101",
    "deeplabv3plus_small",
    "deeplabv3plus_resnet50",
    "deeplabv3plus_resnet101",
)


class _DictBackbone(nn.Module):
    """Adapts a feature-map backbone to DeepLabV3's ``OrderedDict(out=...)`` interface."""

    def __init__(self, body: ResNetBackbone):
        super().__init__()
        self.body = body
        self.out_channels = body.out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
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

    @property
    def backbone(self) -> nn.Module:
        bb = self.net.backbone
        return bb.body if isinstance(bb, _DictBackbone) else bb

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)["out"]


class ASPPv2(nn.Module):
    """DeepLab-v2's ASPP: parallel 3x3 atrous convs (one per rate) straight to class scores, summed."""

    def __init__(self, in_channels: int, num_classes: int, rates: Sequence[int]):
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, num_classes, 3, padding=r, dilation=r, bias=True) for r in rates
        )
        for conv in self.branches:  # DeepLab-v2 initialises the classifiers with N(0, 0.01)
            nn.init.normal_(conv.weight, 0, 0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(branch(x) for branch in self.branches)


class DeepLabV2(nn.Module):
    """ResNet (output stride 8) + :class:`ASPPv2`; logits upsampled bilinearly to the input size."""

    def __init__(self, backbone: ResNetBackbone, num_classes: int, rates: Sequence[int]):
        super().__init__()
        self.backbone = backbone
        self.aspp = ASPPv2(backbone.out_channels, num_classes, rates)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.aspp(self.backbone(x))
        return F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)


class DeepLabV3Plus(nn.Module):
    """torchvision ASPP on layer4 + the v3+ decoder on layer1 (stride 4); logits at the input size."""

    def __init__(
        self, backbone: ResNetBackbone, num_classes: int, rates: Sequence[int], channels: int, low_channels: int = 48
    ):
        super().__init__()
        self.backbone = backbone
        low_in = layer_out_channels(backbone.layer1)
        self.aspp = tv_deeplab.ASPP(backbone.out_channels, list(rates), out_channels=channels)
        self.low = nn.Sequential(
            nn.Conv2d(low_in, low_channels, 1, bias=False), nn.BatchNorm2d(low_channels), nn.ReLU()
        )
        self.decoder = nn.Sequential(
            nn.Conv2d(channels + low_channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.Conv2d(channels, num_classes, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.backbone
        low = b.layer1(b.stem(x))
        high = self.aspp(b.layer4(b.layer3(b.layer2(low))))
        high = F.interpolate(high, size=low.shape[-2:], mode="bilinear", align_corners=False)
        out = self.decoder(torch.cat([high, self.low(low)], dim=1))
        return F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)


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
    ``deeplabv2_*``: :class:`DeepLabV2` at OS 8 with ``atrous_rates`` (VOC: 6/12/18/24).
    ``deeplabv3plus_*``: :class:`DeepLabV3Plus` at OS 16 with ``atrous_rates`` (VOC: 6/12/18) and
    ``aspp_channels`` (VOC: 256). ``*_small`` use ``backbone_cfg`` (resnet_small); ``*_resnet50|101`` the
    torchvision ResNets (ImageNet weights when ``pretrained``).
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
    arch, _, depth = name.partition("_")
    if arch in ("deeplabv2", "deeplabv3plus") and depth in ("small", "resnet50", "resnet101"):
        os_ = 8 if arch == "deeplabv2" else 16
        if depth == "small":
            cfg = {"name": "resnet_small"}
            cfg.update(backbone_cfg or {})
            cfg["output_stride"] = os_
            bname = cfg.pop("name")
            body = build_backbone(bname, pretrained=pretrained, **cfg)
        else:
            body = build_backbone(depth, output_stride=os_, pretrained=pretrained)
        if arch == "deeplabv2":
            return DeepLabV2(body, num_classes, atrous_rates)
        return DeepLabV3Plus(body, num_classes, atrous_rates, aspp_channels)
    raise ValueError(f"unknown segmenter {name!r}; choose from {SEGMENTERS}")


def segmenter_from_config(scfg) -> nn.Module:
    """The segmentation network of a ``segment`` config section (model, backbone, aspp_channels, atrous_rates)."""
    bcfg = dict(scfg["backbone"])
    pretrained = bcfg.pop("pretrained")
    return build_segmenter(
        scfg["model"],
        num_classes=21,
        backbone_cfg=bcfg,
        pretrained=pretrained,
        aspp_channels=scfg["aspp_channels"],
        atrous_rates=tuple(scfg["atrous_rates"]),
    )


def load_segmenter(path) -> tuple[nn.Module, dict]:
    """(the segmentation network in eval mode, its checkpoint dict) of a ``train_seg`` output."""
    from wsss.engine.checkpoint import load_model

    return load_model(path, section="segment", build=segmenter_from_config, kind="segmentation checkpoint (train_seg)")
