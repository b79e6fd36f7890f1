"""The functional API: a thin wrapper over ``torch.ops.ddf.ddf``.

No shape logic lives here, so ``torch.fx.symbolic_trace`` records a single op call and the
op's own (C++) checks and meta kernel decide everything.
"""

from torch import Tensor

import torch


def ddf(
    input: Tensor,
    channel_filter: Tensor,
    spatial_filter: Tensor,
    stride: int = 1,
    dilation: int = 1,
    combine: str = "mul",
) -> Tensor:
    r"""Decoupled dynamic filter (Zhou et al., CVPR 2021).

    .. math::
        \text{out}[b,c,y,x] = \sum_{i,j<k} X[b, c, ys + (i-r)d, xs + (j-r)d]
        \, F(\text{cf}[b,c,i,j], \text{sf}[b, g(c)k^2 + ik + j, y, x])

    with X zero outside the image, :math:`r = (k-1)/2`, :math:`g(c) = c // (C/G)` and
    :math:`F(a, b) = ab` (``combine="mul"``) or :math:`a + b` (``"add"``).

    Args:
        input: ``(B, C, H, W)``.
        channel_filter: ``(B, C, k, k)``, one k x k filter per channel; k odd.
        spatial_filter: ``(B, G*k*k, Ho, Wo)``, one k x k filter per pixel per head; G divides C.
        stride: s >= 1. ``Ho = ceil(H / s)``, ``Wo = ceil(W / s)``: the size
            ``nn.Conv2d(padding=d*(k-1)//2, stride=s)`` gives (the original CUDA code used
            ``H // s``, which differs for odd sizes).
        dilation: d >= 1.
        combine: ``"mul"`` or ``"add"``.

    Returns:
        ``(B, C, Ho, Wo)``, channels_last if ``input`` is.

    All tensors share one device and one dtype (float32, float64, float16 or bfloat16;
    the half types accumulate in float32). Under ``torch.autocast`` mixed dtypes run in the
    autocast dtype.

    Example:
        Two heads, stride 2: the spatial filter has ``2*3*3`` channels at the output size.

        >>> import torch
        >>> import ddf_ops
        >>> x = torch.randn(2, 8, 9, 9, dtype=torch.float64)
        >>> channel_filter = torch.randn(2, 8, 3, 3, dtype=torch.float64)
        >>> spatial_filter = torch.randn(2, 2 * 3 * 3, 5, 5, dtype=torch.float64)
        >>> out = ddf_ops.ddf(x, channel_filter, spatial_filter, stride=2)
        >>> out.shape
        torch.Size([2, 8, 5, 5])
        >>> torch.allclose(out, ddf_ops.reference.ddf(x, channel_filter, spatial_filter, stride=2))
        True
    """
    return torch.ops.ddf.ddf.default(input, channel_filter, spatial_filter, stride, dilation, combine)
