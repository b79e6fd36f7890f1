"""ddf_ops: the Decoupled Dynamic Filter (Zhou et al., CVPR 2021) as a PyTorch operator.

Importing the package loads the compiled library, which registers ``torch.ops.ddf.ddf``
and ``torch.ops.ddf.ddf_backward`` with their CPU/CUDA, meta, autograd and autocast kernels,
and the op's FLOP formula for ``torch.utils.flop_counter``; it then registers the Python
autograd Functions of ``_transforms`` that add torch.func transforms and forward-mode AD.

Example:
    >>> import torch, ddf_ops
    >>> x = torch.randn(2, 8, 10, 10)
    >>> channel_filter = torch.randn(2, 8, 3, 3)
    >>> spatial_filter = torch.randn(2, 9, 5, 5)  # one head, k*k taps per output pixel
    >>> ddf_ops.ddf(x, channel_filter, spatial_filter, stride=2).shape
    torch.Size([2, 8, 5, 5])
    >>> ddf_ops.__version__ == ddf_ops.build_info()["version"]
    True
"""

from ._library import build_info, has_cuda_kernels, library_path, load_library
from ._version import __version__

load_library()

from . import _transforms  # noqa: E402

_transforms.register()  # torch.func transforms and forward-mode AD (see _transforms.py)

from . import flops, models, nn, onnx, reference  # noqa: E402,F401  (flops: registers the FLOP formulas)
from .functional import ddf  # noqa: E402

__all__ = ["build_info", "ddf", "has_cuda_kernels", "library_path", "models", "nn", "onnx", "reference"]
