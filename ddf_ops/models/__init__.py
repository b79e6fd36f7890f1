"""ResNet-50/101 and DDF-ResNet-50/101 (the 3x3 conv of every bottleneck a DDFPack).

Example:
    The paper's complexity table, in FLOPs (2 per multiply-accumulate) at 224x224:

    >>> from ddf_ops.models import count_flops, ddf_resnet50, resnet50
    >>> for build in (resnet50, ddf_resnet50):
    ...     print(f"{build.__name__}: {count_flops(build) / 1e9:.2f} GFLOPs")
    resnet50: 8.18 GFLOPs
    ddf_resnet50: 4.55 GFLOPs
"""

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
