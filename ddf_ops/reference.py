"""Pure-PyTorch DDF: the test oracle (and a fallback for devices with no kernel).

Written for obviousness, not speed: one shifted, strided view of the padded input per tap.
It is differentiable, traceable and compilable, so the benchmarks also compile it with
Inductor as the baseline the op has to beat.
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
    """Same semantics and arguments as :func:`ddf_ops.ddf` (see ``../shared/DESIGN.md``)."""
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
