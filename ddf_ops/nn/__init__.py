"""DDF modules: FilterNorm, DDFPack (the DDF module) and DDFUpPack (DDF-Up)."""

from .ddf_pack import DDFPack
from .ddf_up_pack import DDFUpPack
from .filter_norm import FilterNorm

__all__ = ["DDFPack", "DDFUpPack", "FilterNorm"]
