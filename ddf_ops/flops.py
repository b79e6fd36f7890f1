"""FLOP formulas for the ddf ops, so ``torch.utils.flop_counter.FlopCounterMode`` counts them.

Conventions (those of FlopCounterMode for convolutions: a multiply-accumulate is 2 FLOPs;
batch norm, ReLU, pooling and additions are not counted):

- forward: every output element takes k*k taps; each tap combines its two filter values
  (1 FLOP, ``cf*sf`` or ``cf+sf``) and multiply-accumulates the input (2 FLOPs), so
  ``3 * k*k * B*C*Ho*Wo``. A depth-wise k x k conv would count ``2 * k*k * B*C*Ho*Wo``.
- backward: each requested gradient (input, channel filter, spatial filter) costs what the
  forward does, one product with the third operand and an accumulation per tap and output
  element, as FlopCounterMode counts one forward-sized product per gradient of a conv.

Comparison with the paper (which counted multiply-accumulates, "FLOPs", with thop): thop
only counts the modules it knows, so the paper's DDF-ResNet numbers leave out the ddf op
itself, and include batch norm, which FlopCounterMode leaves out. Halved, our counts are within
0.06G of the paper's (ResNet-50 4.09 vs 4.1, DDF-ResNet-50 2.27 vs 2.3, ResNet-101 7.80 vs 7.8,
DDF-ResNet-101 4.04 vs 4.1); ``python -m ddf_ops`` prints the table and
``ddf_ops/demo/table.py`` explains the differences.
"""

import torch
from torch.utils.flop_counter import flop_registry, register_flop_formula


def _taps_and_outputs(input_shape, channel_filter_shape, stride: int) -> tuple[int, int]:
    batch, channels, height, width = input_shape
    kernel_size = channel_filter_shape[-1]
    out_height, out_width = (height - 1) // stride + 1, (width - 1) // stride + 1
    return kernel_size * kernel_size, batch * channels * out_height * out_width


def ddf_flop(
    input_shape, channel_filter_shape, spatial_filter_shape, stride=1, dilation=1, combine="mul", *, out_shape=None
) -> int:
    """FLOPs of ``ddf``: 3 per tap per output element (combine, multiply, accumulate)."""
    taps, outputs = _taps_and_outputs(input_shape, channel_filter_shape, stride)
    return 3 * taps * outputs


def ddf_backward_flop(
    grad_output_shape,
    input_shape,
    channel_filter_shape,
    spatial_filter_shape,
    stride,
    dilation,
    combine,
    output_mask,
    *,
    out_shape=None,
) -> int:
    """FLOPs of ``ddf_backward``: a forward's worth per requested gradient."""
    taps, outputs = _taps_and_outputs(input_shape, channel_filter_shape, stride)
    return 3 * taps * outputs * sum(bool(wanted) for wanted in output_mask)


# Guarded so that a second import (e.g. importlib.reload) does not hit "duplicate registrations".
if torch.ops.ddf.ddf not in flop_registry:
    register_flop_formula(torch.ops.ddf.ddf)(ddf_flop)
if torch.ops.ddf.ddf_backward not in flop_registry:
    register_flop_formula(torch.ops.ddf.ddf_backward)(ddf_backward_flop)
