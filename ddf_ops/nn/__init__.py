"""DDF modules: FilterNorm, DDFPack (the DDF module) and DDFUpPack (DDF-Up).

Example:
    A DDFPack in place of a 3x3 conv, then a DDF-Up that doubles the resolution:

    >>> import torch
    >>> from ddf_ops.nn import DDFPack, DDFUpPack
    >>> block = torch.nn.Sequential(DDFPack(16, stride=2), torch.nn.ReLU(), DDFUpPack(16, scale_factor=2))
    >>> block(torch.randn(2, 16, 8, 8)).shape
    torch.Size([2, 16, 8, 8])
"""

from .ddf_pack import DDFPack
from .ddf_up_pack import DDFUpPack
from .filter_norm import FilterNorm

__all__ = ["DDFPack", "DDFUpPack", "FilterNorm"]
