"""Pure-PyTorch DDF: the test oracle (and a fallback for devices with no kernel).

Written for obviousness, not speed: one shifted, strided view of the padded input per tap.
It is differentiable, traceable and compilable, so the benchmarks also compile it with
Inductor as the baseline the op has to beat.

Example:
    The op and the oracle agree, in the values and in the gradients:

    >>> import torch
    >>> import ddf_ops
    >>> from ddf_ops import reference
    >>> x = torch.randn(1, 4, 7, 7, dtype=torch.float64, requires_grad=True)
    >>> channel_filter = torch.randn(1, 4, 3, 3, dtype=torch.float64)
    >>> spatial_filter = torch.randn(1, 9, 7, 7, dtype=torch.float64)
    >>> out = ddf_ops.ddf(x, channel_filter, spatial_filter, dilation=2, combine="add")
    >>> expected = reference.ddf(x, channel_filter, spatial_filter, dilation=2, combine="add")
    >>> torch.allclose(out, expected)
    True
    >>> (grad,) = torch.autograd.grad(out.sum(), x)
    >>> (expected_grad,) = torch.autograd.grad(expected.sum(), x)
    >>> torch.allclose(grad, expected_grad)
    True
"""

import torch
import torch.nn.functional as F
from torch import Tensor


def ddf(
    input: Tensor,
    channel_filter: Tensor,
    spatial_filter: Tensor,
    stride: int = 1,
    dilation: int = 1,
    combine: str = "mul",
) -> Tensor:
    """Same semantics and arguments as :func:`ddf_ops.ddf` (see ``docs/design.md``).

    Example:
        With a spatial filter of ones, "mul" is a depth-wise convolution by the channel filter:

        >>> import torch
        >>> import torch.nn.functional as F
        >>> from ddf_ops import reference
        >>> x = torch.randn(1, 4, 6, 6, dtype=torch.float64)
        >>> weight = torch.randn(4, 1, 3, 3, dtype=torch.float64)
        >>> ones = torch.ones(1, 3 * 3, 6, 6, dtype=torch.float64)
        >>> out = reference.ddf(x, weight.view(1, 4, 3, 3), ones)
        >>> torch.allclose(out, F.conv2d(x, weight, padding=1, groups=4))
        True
    """
    if combine not in ("mul", "add"):
        raise ValueError(f'combine must be "mul" or "add", got {combine!r}')
    B, C, H, W = input.shape
    k = channel_filter.shape[-1]
    G = spatial_filter.shape[1] // (k * k)
    Ho, Wo = (H - 1) // stride + 1, (W - 1) // stride + 1
    pad = (k - 1) // 2 * dilation

    x = F.pad(input, (pad, pad, pad, pad)).reshape(B, G, C // G, H + 2 * pad, W + 2 * pad)
    cf = channel_filter.reshape(B, G, C // G, k * k, 1, 1)
    sf = spatial_filter.reshape(B, G, 1, k * k, Ho, Wo)
    out = None
    for i in range(k):
        for j in range(k):
            t = i * k + j
            tap = x[..., i * dilation :: stride, j * dilation :: stride][..., :Ho, :Wo]
            f = cf[:, :, :, t] * sf[:, :, :, t] if combine == "mul" else cf[:, :, :, t] + sf[:, :, :, t]
            out = tap * f if out is None else out + tap * f
    return out.reshape(B, C, Ho, Wo)


def _inside(offsets, stride: int, dilation: int, reach: int, n: int, out: int):
    """For tap offsets t - reach: the input coordinate each output coordinate reads, clamped
    into the image, and whether it lies inside. Python integers, so any stride/dilation works."""
    index, inside = [], []
    for t in offsets:
        coords = [o * stride + (t - reach) * dilation for o in range(out)]
        inside.append([0 <= c < n for c in coords])
        index.append([min(max(c, 0), max(n - 1, 0)) for c in coords])
    return index, inside


def ddf_inside_taps(
    input: Tensor,
    channel_filter: Tensor,
    spatial_filter: Tensor,
    stride: int = 1,
    dilation: int = 1,
    combine: str = "mul",
) -> Tensor:
    """:func:`ddf` where taps outside the image do not exist, instead of reading zeros.

    The two agree on finite inputs. With inf or NaN they differ: here (as in the kernels) a
    non-finite value reaches exactly the results that depend on it, never through 0 * inf at
    the padding, in the values and in every gradient. The image is gathered tap by tap with
    Python-integer index arithmetic and nothing is padded, so any stride or dilation (up to
    2**63 - 1) works in memory proportional to the tensors. The oracle of the non-finite and
    huge-stride tests; slow (k*k gathers).

    Example:
        Tap (0, 0) of output pixel (0, 0) lies outside the image; an infinite spatial filter
        there gives NaN through the padding in :func:`ddf`, but not here (nor in the op):

        >>> import torch
        >>> import ddf_ops
        >>> from ddf_ops.reference import ddf, ddf_inside_taps
        >>> x = torch.randn(1, 2, 5, 5, dtype=torch.float64)
        >>> channel_filter = torch.randn(1, 2, 3, 3, dtype=torch.float64)
        >>> spatial_filter = torch.randn(1, 9, 5, 5, dtype=torch.float64)
        >>> torch.allclose(ddf_inside_taps(x, channel_filter, spatial_filter), ddf(x, channel_filter, spatial_filter))
        True
        >>> spatial_filter[0, 0, 0, 0] = float("inf")
        >>> bool(ddf(x, channel_filter, spatial_filter)[0, :, 0, 0].isnan().all())
        True
        >>> out = ddf_inside_taps(x, channel_filter, spatial_filter)
        >>> bool(out[0, :, 0, 0].isfinite().all())
        True
        >>> torch.allclose(out, ddf_ops.ddf(x, channel_filter, spatial_filter))
        True
    """
    if combine not in ("mul", "add"):
        raise ValueError(f'combine must be "mul" or "add", got {combine!r}')
    B, C, H, W = input.shape
    k = channel_filter.shape[-1]
    G = spatial_filter.shape[1] // (k * k)
    Ho, Wo = (H - 1) // stride + 1 if H else 0, (W - 1) // stride + 1 if W else 0
    r = (k - 1) // 2
    rows, rows_in = _inside(range(k), stride, dilation, r, H, Ho)
    cols, cols_in = _inside(range(k), stride, dilation, r, W, Wo)
    dev = input.device
    x = input.reshape(B, G, C // G, H, W)
    cf = channel_filter.reshape(B, G, C // G, k * k, 1, 1)
    sf = spatial_filter.reshape(B, G, 1, k * k, Ho, Wo)
    out = input.new_zeros(B, G, C // G, Ho, Wo)
    for i in range(k):
        for j in range(k):
            t = i * k + j
            mask = torch.tensor(rows_in[i], device=dev)[:, None] & torch.tensor(cols_in[j], device=dev)[None, :]
            if not bool(mask.any()):
                continue
            tap = x.index_select(3, torch.tensor(rows[i], device=dev)).index_select(4, torch.tensor(cols[j], device=dev))
            # Masked at every step (torch.where, not a product with a 0/1 mask), so that no
            # gradient multiplies a non-finite value by a masked zero: the gathered tap holds
            # real (clamped) pixels where the tap is outside.
            zero = torch.zeros((), dtype=input.dtype, device=dev)
            s = torch.where(mask, sf[:, :, :, t], zero)
            f = torch.where(mask, cf[:, :, :, t] * s if combine == "mul" else cf[:, :, :, t] + s, zero)
            out = out + torch.where(mask, tap * f, zero)
    return out.reshape(B, C, Ho, Wo)
