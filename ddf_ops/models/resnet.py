"""ResNet-50/101 and their DDF versions, from one piece of code.

The plain ResNet is torchvision's (ResNet v1.5: the stride sits on the 3x3 conv of the
bottleneck), with the same module names and initialization, except that the last batch norm
of each bottleneck starts at zero as in timm (``zero_init_last=True``; torchvision's default
is ``zero_init_residual=False``); ``resnet50()`` has exactly 25,557,032 parameters. The
DDF-ResNets (Zhou et al., CVPR 2021, official code: timm's ResNet with the bottleneck's
``conv2`` replaced) swap the 3x3 conv of *every* bottleneck for a
:class:`~ddf_ops.nn.DDFPack` with the same stride; nothing else changes.
"""

import sys
import warnings
from collections.abc import Callable
from functools import partial

from torch import Tensor, nn

from ..nn import DDFPack
from ..nn._checks import COMBINES, check_choice, check_int
from ..nn._reset import reset_leaves

# Builds the bottleneck's spatial (3x3) layer from (width, stride): width channels in and out.
SpatialLayer = Callable[[int, int], nn.Module]

STAGE_PLANES = (64, 128, 256, 512)
RESNET50_LAYERS = (3, 4, 6, 3)
RESNET101_LAYERS = (3, 4, 23, 3)


def _caller_outside_this_module() -> int:
    """The ``warnings.warn`` stacklevel that names the first caller outside this module (the
    builders below call ``ResNet`` on the user's behalf)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_globals.get("__name__") == __name__:
        frame, level = frame.f_back, level + 1
    return level


def conv3x3(width: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)


def ddf3x3(width: int, stride: int, combine: str) -> DDFPack:
    return DDFPack(width, kernel_size=3, stride=stride, combine=combine)


class Bottleneck(nn.Module):
    """1x1 reduce -> spatial layer (3x3 conv or DDF, carrying the stride) -> 1x1 expand, + shortcut.

    Example:
        >>> import torch
        >>> from ddf_ops.models import Bottleneck
        >>> from ddf_ops.nn import DDFPack
        >>> block = Bottleneck(64, 32, stride=2, spatial_layer=lambda width, stride: DDFPack(width, stride=stride))
        >>> block(torch.randn(2, 64, 8, 8)).shape
        torch.Size([2, 128, 4, 4])
        >>> block.downsample is not None  # the shortcut changes channels and size too
        True
    """

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int, spatial_layer: SpatialLayer):
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = spatial_layer(planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class ResNet(nn.Module):
    """Bottleneck ResNet for 3-channel images: 7x7/2 stem, max pool, four stages, pool, fc.

    Args:
        layers: bottlenecks per stage, e.g. ``(3, 4, 6, 3)`` for ResNet-50.
        spatial_layer: builds each bottleneck's 3x3 layer from ``(width, stride)``.
        num_classes: outputs of the final fully connected layer.
        zero_init_last: start each residual branch at zero (the last batch norm of every
            bottleneck has ``bn3.weight = 0``, so each block starts as ``ReLU(shortcut)``). Default True: the official DDF models are timm ResNets, and timm's
            ResNet (``zero_init_last=True``) is the training recipe of the paper. False gives
            torchvision's initialization (BN weights 1).
        zero_init_residual: deprecated alias of ``zero_init_last`` (torchvision's name);
            overrides it when given, with a ``DeprecationWarning``.

    Attributes ``num_classes``, ``num_features`` (2048) and ``feature_info`` (the five feature
    maps in timm's format) let timm's helpers and feature wrappers use the model.

    Example:
        A small ResNet, one bottleneck per stage:

        >>> import torch
        >>> from ddf_ops.models import ResNet
        >>> model = ResNet((1, 1, 1, 1), num_classes=10).eval()
        >>> x = torch.randn(1, 3, 64, 64)
        >>> model(x).shape
        torch.Size([1, 10])
        >>> model.features(x).shape
        torch.Size([1, 2048, 2, 2])
        >>> [(info["num_chs"], info["reduction"]) for info in model.feature_info]
        [(64, 2), (256, 4), (512, 8), (1024, 16), (2048, 32)]
    """

    def __init__(
        self,
        layers: tuple[int, ...],
        spatial_layer: SpatialLayer = conv3x3,
        num_classes: int = 1000,
        zero_init_last: bool = True,
        zero_init_residual: bool | None = None,
    ):
        super().__init__()
        if zero_init_residual is not None:
            warnings.warn(
                "ResNet(zero_init_residual=...) is deprecated; use zero_init_last (default True, "
                "as timm and the official DDF models)",
                DeprecationWarning,
                stacklevel=_caller_outside_this_module(),
            )
            zero_init_last = zero_init_residual
        if len(layers) != len(STAGE_PLANES) or any(not isinstance(n, int) or n < 1 for n in layers):
            raise ValueError(f"layers must be {len(STAGE_PLANES)} positive block counts, got {layers!r}")
        check_int("num_classes", num_classes)
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_channels = 64
        for index, (planes, blocks) in enumerate(zip(STAGE_PLANES, layers)):
            stage = []
            for block in range(blocks):
                stride = 2 if index > 0 and block == 0 else 1
                stage.append(Bottleneck(in_channels, planes, stride, spatial_layer))
                in_channels = planes * Bottleneck.expansion
            setattr(self, f"layer{index + 1}", nn.Sequential(*stage))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)
        self.num_classes, self.num_features = num_classes, in_channels
        # The feature maps in timm's format (timm's feature wrappers, features_only=True): the
        # stem's ReLU, then each stage; module names in forward order.
        self.feature_info = [dict(num_chs=64, reduction=2, module="relu")] + [
            dict(num_chs=planes * Bottleneck.expansion, reduction=4 * 2**index, module=f"layer{index + 1}")
            for index, planes in enumerate(STAGE_PLANES)
        ]
        self.zero_init_last = bool(zero_init_last)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torchvision's initialization (which timm, and so the official DDF code, shares):
        He-normal (fan_out) for every conv, the DDF branches' included; BN to identity; then,
        with ``zero_init_last``, ``bn3.weight = 0`` in every bottleneck (timm's default)."""
        reset_leaves(self)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        if self.zero_init_last:
            for module in self.modules():
                if isinstance(module, Bottleneck):
                    nn.init.zeros_(module.bn3.weight)

    def features(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.avgpool(self.features(x)).flatten(1))


def ddf_resnet(
    layers: tuple[int, ...], combine: str = "mul", num_classes: int = 1000, zero_init_last: bool = True, **kwargs
) -> ResNet:
    """A DDF-ResNet with any number of bottlenecks per stage (``ResNet`` keyword arguments pass through).

    Example:
        >>> import torch
        >>> from ddf_ops.models import ddf_resnet
        >>> from ddf_ops.nn import DDFPack
        >>> model = ddf_resnet((1, 1, 2, 1), combine="add", num_classes=10).eval()
        >>> [m.combine for m in model.modules() if isinstance(m, DDFPack)]
        ['add', 'add', 'add', 'add', 'add']
        >>> model(torch.randn(1, 3, 64, 64)).shape
        torch.Size([1, 10])
    """
    check_choice("combine", combine, COMBINES)
    return ResNet(layers, partial(ddf3x3, combine=combine), num_classes, zero_init_last, **kwargs)


def resnet50(num_classes: int = 1000, zero_init_last: bool = True, **kwargs) -> ResNet:
    """ResNet-50 (torchvision structure; 25,557,032 parameters with 1000 classes).
    ``zero_init_last``: see :class:`ResNet` (default True, timm's recipe).

    Example:
        >>> import torch
        >>> from ddf_ops.models import count_parameters, resnet50
        >>> model = resnet50().eval()
        >>> count_parameters(model)
        25557032
        >>> model(torch.randn(1, 3, 64, 64)).shape
        torch.Size([1, 1000])
    """
    return ResNet(RESNET50_LAYERS, conv3x3, num_classes, zero_init_last, **kwargs)


def resnet101(num_classes: int = 1000, zero_init_last: bool = True, **kwargs) -> ResNet:
    """ResNet-101 (torchvision structure; 44,549,160 parameters with 1000 classes).
    ``zero_init_last``: see :class:`ResNet` (default True, timm's recipe).

    Example:
        >>> from ddf_ops.models import count_parameters, resnet101
        >>> count_parameters(resnet101())
        44549160
    """
    return ResNet(RESNET101_LAYERS, conv3x3, num_classes, zero_init_last, **kwargs)


def ddf_resnet50(combine: str = "mul", num_classes: int = 1000, zero_init_last: bool = True, **kwargs) -> ResNet:
    """DDF-ResNet-50: every bottleneck's 3x3 conv is a DDFPack (16.8M parameters).
    ``zero_init_last``: see :class:`ResNet` (default True, as the official models).

    Example:
        >>> import torch
        >>> from ddf_ops.models import count_parameters, ddf_resnet50
        >>> from ddf_ops.nn import DDFPack
        >>> model = ddf_resnet50(combine="mul").eval()
        >>> count_parameters(model)
        16843748
        >>> sum(isinstance(m, DDFPack) for m in model.modules())  # one per bottleneck
        16
        >>> model(torch.randn(1, 3, 64, 64)).shape
        torch.Size([1, 1000])
    """
    return ddf_resnet(RESNET50_LAYERS, combine, num_classes, zero_init_last, **kwargs)


def ddf_resnet101(combine: str = "mul", num_classes: int = 1000, zero_init_last: bool = True, **kwargs) -> ResNet:
    """DDF-ResNet-101: every bottleneck's 3x3 conv is a DDFPack (28.1M parameters).
    ``zero_init_last``: see :class:`ResNet` (default True, as the official models).

    Example:
        >>> from ddf_ops.models import count_parameters, ddf_resnet101
        >>> from ddf_ops.nn import DDFPack
        >>> model = ddf_resnet101(combine="add")
        >>> count_parameters(model)
        28146912
        >>> sum(isinstance(m, DDFPack) for m in model.modules())  # one per bottleneck
        33
    """
    return ddf_resnet(RESNET101_LAYERS, combine, num_classes, zero_init_last, **kwargs)
