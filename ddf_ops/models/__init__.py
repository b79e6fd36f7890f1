"""ResNet-50/101 and DDF-ResNet-50/101 (the 3x3 conv of every bottleneck a DDFPack)."""

from .checkpoint import load_official_checkpoint
from .complexity import count_flops, count_parameters
from .resnet import Bottleneck, ResNet, ddf_resnet, ddf_resnet50, ddf_resnet101, resnet50, resnet101

__all__ = [
    "Bottleneck",
    "ResNet",
    "count_flops",
    "count_parameters",
    "ddf_resnet",
    "ddf_resnet50",
    "ddf_resnet101",
    "load_official_checkpoint",
    "resnet50",
    "resnet101",
]
