"""ddf_ops: the Decoupled Dynamic Filter (Zhou et al., CVPR 2021) as a PyTorch operator.

Importing the package loads the compiled library, which registers ``torch.ops.ddf.ddf``
and ``torch.ops.ddf.ddf_backward`` with their CPU/CUDA, meta, autograd and autocast kernels.
"""

from ._library import has_cuda_kernels, library_path, load_library

load_library()

from . import reference  # noqa: E402
from .functional import ddf  # noqa: E402

__all__ = ["ddf", "has_cuda_kernels", "library_path", "reference"]
__version__ = "0.1.0"
from . import flops, models, nn  # noqa: E402,F401  (FLOP formulas; ddf_ops.nn, ddf_ops.models)
