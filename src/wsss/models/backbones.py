"""Backbones: a width-configurable small ResNet and torchvision's ResNet-18/50/101.

Every backbone returned by :func:`build_backbone` is an ``nn.Module`` with an
``out_channels`` attribute whose ``forward(x)`` returns the final feature map at
stride ``output_stride`` (8 or 16; 32 = no dilation). The last stages replace
their stride by dilation, as in DeepLab.

The modules only use convolutions, BatchNorm, ReLU, max-pooling and additions,
so they run in ``channels_last`` without layout conversions:
``model.to(memory_format=torch.channels_last)`` and feed
``x.contiguous(memory_format=torch.channels_last)``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import nn
from torchvision.models import resnet as tv_resnet

__all__ = [
    "build_backbone",
    "freeze_bn",
    "init_from_supportnet",
    "ResNetBackbone",
    "BACKBONES",
    "load_torchvision_weights",
]

BACKBONES = ("resnet_small", "resnet18", "resnet50", "resnet101")

_TV_WEIGHTS = {
    "resnet18": ("resnet18", "ResNet18_Weights"),
    "resnet50": ("resnet50", "ResNet50_Weights"),
    "resnet101": ("resnet101", "ResNet101_Weights"),
}


def _dilations(output_stride: int) -> tuple[bool, bool, bool]:
    """``replace_stride_with_dilation`` for layer2..layer4 (torchvision convention)."""
    table = {8: (False, True, True), 16: (False, False, True), 32: (False, False, False)}
    if output_stride not in table:
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
    return table[output_stride]


def _set_conv_dilation(conv: nn.Conv2d, dilation: int) -> None:
    if conv.kernel_size == (3, 3):
        conv.dilation = (dilation, dilation)
        conv.padding = (dilation, dilation)


def _dilate_basic_layer(layer: nn.Sequential, previous_dilation: int, dilation: int) -> None:
    """Turn the stride-2 first block of a BasicBlock layer into stride 1 + dilation.

    Mirrors torchvision's ``_make_layer(dilate=True)``: the first block keeps the
    previous dilation (it sits at the old resolution), the others use the new one.
    torchvision's BasicBlock refuses ``dilation > 1`` in its constructor, so the
    convolutions are patched after construction.
    """
    for i, block in enumerate(layer):
        if i == 0:
            block.conv1.stride = (1, 1)
            block.stride = 1
            if block.downsample is not None:
                block.downsample[0].stride = (1, 1)
        d = previous_dilation if i == 0 else dilation
        _set_conv_dilation(block.conv1, d)
        _set_conv_dilation(block.conv2, d)


class ResNetBackbone(nn.Module):
    """Stem + layer1..layer4 of a ResNet; ``forward`` returns layer4's output."""

    def __init__(self, stem: nn.Module, layers: Sequence[nn.Module], out_channels: int, output_stride: int):
        super().__init__()
        self.stem = stem
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.out_channels = int(out_channels)
        self.output_stride = int(output_stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)


def _resnet_small(widths: Sequence[int], blocks: Sequence[int], output_stride: int) -> ResNetBackbone:
    if len(widths) != 4 or len(blocks) != 4:
        raise ValueError("widths and blocks need 4 entries (one per stage)")
    if any(b < 1 for b in blocks):
        raise ValueError("each stage needs at least one block")
    block = tv_resnet.BasicBlock
    stem = nn.Sequential(
        nn.Conv2d(3, widths[0], kernel_size=7, stride=2, padding=3, bias=False),
        nn.BatchNorm2d(widths[0]),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
    )
    layers = []
    inplanes = widths[0]
    for stage, (w, n) in enumerate(zip(widths, blocks)):
        stride = 1 if stage == 0 else 2
        downsample = None
        if stride != 1 or inplanes != w:
            downsample = nn.Sequential(tv_resnet.conv1x1(inplanes, w, stride), nn.BatchNorm2d(w))
        mods = [block(inplanes, w, stride, downsample)]
        mods += [block(w, w) for _ in range(1, n)]
        layers.append(nn.Sequential(*mods))
        inplanes = w
    dilation = 1
    for layer, dilate in zip(layers[1:], _dilations(output_stride)):
        if dilate:
            previous, dilation = dilation, dilation * 2
            _dilate_basic_layer(layer, previous, dilation)
    _init_weights(nn.ModuleList([stem, *layers]))
    return ResNetBackbone(stem, layers, widths[-1], output_stride)


def _init_weights(module: nn.Module) -> None:
    # torchvision ResNet's default initialisation (zero_init_residual=False).
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _weights_enum(name: str):
    _, enum_name = _TV_WEIGHTS[name]
    return getattr(tv_resnet, enum_name).IMAGENET1K_V1


def load_torchvision_weights(weights) -> dict:
    """State dict of a torchvision ``WeightsEnum`` member, from ``$TORCH_HOME`` or the web.

    Raises ``WsssInputError`` (a ``RuntimeError``) naming the file and where to put it when the file is
    neither cached nor downloadable (e.g. an offline machine).
    """
    fname = os.path.basename(weights.url)
    target = os.path.join(torch.hub.get_dir(), "checkpoints", fname)
    try:
        return weights.get_state_dict(progress=False, check_hash=False)
    except Exception as exc:  # URLError, HTTPError, OSError, ... all mean "not available"
        from wsss.io import WsssInputError  # a RuntimeError: bad input the CLI reports without a traceback

        raise WsssInputError(
            f"pretrained weights {fname!r} are not in the torch hub cache and could not be downloaded "
            f"({type(exc).__name__}: {exc}). Place {fname} under $TORCH_HOME/hub/checkpoints/ "
            f"(here: {target}) or set pretrained=False."
        ) from exc


def _torchvision_resnet(name: str, output_stride: int, pretrained: bool) -> ResNetBackbone:
    ctor_name, _ = _TV_WEIGHTS[name]
    ctor = getattr(tv_resnet, ctor_name)
    dil = _dilations(output_stride)
    if name == "resnet18":
        # torchvision's BasicBlock raises on replace_stride_with_dilation: patch afterwards.
        net = ctor(weights=None)
    else:
        net = ctor(weights=None, replace_stride_with_dilation=list(dil))
    if pretrained:
        net.load_state_dict(load_torchvision_weights(_weights_enum(name)))
    if name == "resnet18":
        dilation = 1
        for layer, dilate in zip([net.layer2, net.layer3, net.layer4], dil):
            if dilate:
                previous, dilation = dilation, dilation * 2
                _dilate_basic_layer(layer, previous, dilation)
    stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
    out_channels = net.fc.in_features
    return ResNetBackbone(stem, [net.layer1, net.layer2, net.layer3, net.layer4], out_channels, output_stride)


def build_backbone(
    name: str,
    *,
    widths: Sequence[int] = (32, 64, 128, 256),
    blocks: Sequence[int] = (1, 1, 1, 1),
    output_stride: int = 8,
    pretrained: bool = False,
) -> ResNetBackbone:
    """Build a backbone; ``widths``/``blocks`` only apply to ``resnet_small``.

    ``resnet_small``: torchvision BasicBlocks, stem 7x7/2 conv + 3x3/2 max-pool,
    stages of ``widths`` channels with ``blocks`` blocks; stride 2 in stages 2-4,
    replaced by dilation to reach ``output_stride``. No pretrained weights exist.
    ``resnet18|50|101``: torchvision constructors; ``pretrained=True`` loads
    ``ResNet*_Weights.IMAGENET1K_V1`` from ``$TORCH_HOME/hub/checkpoints/``.
    """
    if name == "resnet_small":
        if pretrained:
            raise ValueError("resnet_small has no pretrained weights; use pretrained=False")
        return _resnet_small(tuple(widths), tuple(blocks), output_stride)
    if name in _TV_WEIGHTS:
        return _torchvision_resnet(name, output_stride, pretrained)
    raise ValueError(f"unknown backbone {name!r}; choose from {BACKBONES}")


def _keep_bn_eval(module: nn.Module, args) -> None:
    # forward pre-hook: a later ``model.train()`` cannot switch a frozen BN back.
    module.training = False


def freeze_bn(module: nn.Module) -> nn.Module:
    """Put every BatchNorm in ``module`` in eval mode for good and freeze its affine params.

    After this, BN uses its running statistics (which stop updating) even after
    ``module.train()``, so a sample's output does not depend on the rest of the
    batch (training becomes invariant to how a batch is split). A forward
    pre-hook (module-level function, so the model stays picklable and
    deep-copyable) re-asserts eval mode; ``_wsss_frozen`` marks frozen layers.
    Returns ``module``.
    """
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
            for p in m.parameters(recurse=False):
                p.requires_grad_(False)
            if not getattr(m, "_wsss_frozen", False):
                m.register_forward_pre_hook(_keep_bn_eval)
                m._wsss_frozen = True
    return module


def init_from_supportnet(backbone: nn.Module, support_ckpt, *, key: str) -> int:
    """Copy a SupportNet checkpoint's backbone weights into ``backbone`` (all tensors, same architecture: strict);
    returns the number of tensors copied. ``key`` names the config switch, for the error message."""
    from wsss.engine.checkpoint import load_checkpoint
    from wsss.io import WsssInputError

    sd = load_checkpoint(support_ckpt, kind="SupportNet checkpoint (train_supportnet)", need=("backbone",))["model"]
    src = {k[len("backbone.") :]: v for k, v in sd.items() if k.startswith("backbone.")}
    try:
        backbone.load_state_dict(src, strict=True)
    except RuntimeError as e:
        raise WsssInputError(
            f"{support_ckpt}: SupportNet's backbone does not match this network's ({str(e).splitlines()[0]}); use the "
            f"same backbone config as supportnet.backbone or set {key}: false"
        ) from e
    return len(src)
