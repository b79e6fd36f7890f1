"""Which CUDA kernels a call takes (csrc/cuda/ddf_cuda_paths.h), through
torch.ops.ddf._cuda_plan: every build has it and no GPU is needed. The channels_last calls that
DDF networks make take the channels_last tiled kernels, forward and backward (issue 19); a
DDF-ResNet block in channels_last under bfloat16 autocast runs on the emulated CUDA kernels with
every ddf call, forward and backward, on the channels_last kernels, and agrees with the CPU
kernels."""

from functools import partial

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import emulated_cuda_kernels, make_inputs, requires_emulation
from ddf_ops.models.resnet import Bottleneck, ddf3x3

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def cuda_path(x, cf, sf, stride=1, dilation=1, combine="mul", go=None):
    return torch.ops.ddf._cuda_plan(x, cf, sf, stride, dilation, combine, go)


# Both passes of a channels_last backward on the channels_last kernels.
BOTH = "grad_input=tiled_nhwc filter_grads=tiled_nhwc"


# ResNet-50's four DDF shapes (channels@size) at batch 2, stride 1 and the stride-2 first block.
RESNET_SHAPES = [(64, 56), (128, 28), (256, 14), (512, 7)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("channels,size", RESNET_SHAPES, ids=lambda v: str(v))
@pytest.mark.parametrize("stride", [1, 2])
def test_channels_last_resnet_calls_take_the_nhwc_forward(dtype, channels, size, stride):
    x, cf, sf = make_inputs(2, channels, size, size, 3, 1, stride, dtype, "cpu", "channels_last")
    vector = 16 // x.element_size()
    assert cuda_path(x, cf, sf, stride).startswith(f"tiled_nhwc vector={vector} "), cuda_path(x, cf, sf, stride)
    # Half precision at stride 1 walks its tiles in pairs of pixels (pixels_per_step).
    step = 2 if vector == 8 and stride == 1 else 1
    assert cuda_path(x, cf, sf, stride).endswith(f" step={step}"), cuda_path(x, cf, sf, stride)
    # Contiguous NCHW keeps the NCHW tiled kernels.
    xc, cfc, sfc = (t.contiguous() for t in (x, cf, sf))
    assert cuda_path(xc, cfc, sfc, stride) == "tiled"


def test_mixed_and_unusual_layouts():
    x, cf, sf = make_inputs(2, 16, 9, 9, 3, 2, 1, torch.float32, "cpu", "channels_last")
    # An NCHW spatial filter (a 1x1 convolution that is not channels_last) with a channels_last
    # input: still the channels_last kernels (they read the spatial filter with its strides).
    assert cuda_path(x, cf, sf.contiguous()).startswith("tiled_nhwc vector=4")
    # A view one channel in: misaligned for 16-byte vectors, one channel per thread.
    wide = make_inputs(2, 17, 9, 9, 3, 1, 1, torch.float32, "cpu", "channels_last")[0]
    assert cuda_path(wide[:, 1:], cf, sf).startswith("tiled_nhwc vector=1")
    # Heads of one channel: one channel per thread.
    x1, cf1, sf1 = make_inputs(2, 16, 9, 9, 3, 16, 1, torch.float32, "cpu", "channels_last")
    assert cuda_path(x1, cf1, sf1).startswith("tiled_nhwc vector=1")
    # float64, stride 3, k = 9: the generic kernels.
    assert cuda_path(x.double(), cf.double(), sf.double()) == "generic"
    x3, cf3, sf3 = make_inputs(2, 16, 9, 9, 3, 2, 3, torch.float32, "cpu", "channels_last")
    assert cuda_path(x3, cf3, sf3, 3) == "generic"
    # The backward of a channels_last call: the channels_last kernels; float64 the generic ones.
    go = torch.randn(2, 16, 9, 9).to(memory_format=torch.channels_last)
    assert cuda_path(x, cf, sf, go=go) == BOTH
    # A pass not asked for (output_mask) is not planned.
    plan = torch.ops.ddf._cuda_plan
    assert plan(x, cf, sf, 1, 1, "mul", go, [False, True, True]) == "grad_input=none filter_grads=tiled_nhwc"
    assert plan(x, cf, sf, 1, 1, "mul", go, [True, False, False]) == "grad_input=tiled_nhwc filter_grads=none"
    assert cuda_path(*(t.double() for t in (x, cf, sf)), go=go.double()) == "grad_input=generic filter_grads=generic"
    xc, cfc, sfc, goc = (t.contiguous() for t in (x, cf, sf, go))
    assert cuda_path(xc, cfc, sfc, go=goc) == "grad_input=tiled filter_grads=tiled"
    # A grad_output in another layout than the input's (a user's NCHW gradient; out.sum()'s
    # expanded one) is copied into the input's layout first, never sent to the generic kernels.
    assert cuda_path(x, cf, sf, go=goc) == BOTH + " grad_output_to_channels_last"
    ones = torch.ones(()).expand(2, 16, 9, 9)
    assert cuda_path(x, cf, sf, go=ones) == BOTH + " grad_output_to_channels_last"
    assert cuda_path(xc, cfc, sfc, go=ones) == "grad_input=tiled filter_grads=tiled grad_output_to_nchw"
    assert cuda_path(xc, cfc, sfc, go=go) == "grad_input=tiled filter_grads=tiled grad_output_to_nchw"
    # An NCHW spatial filter with channels_last input and grad_output (a 1x1 convolution that
    # is not channels_last): the channels_last kernels read it with its strides.
    assert cuda_path(x, cf, sfc, go=go) == BOTH


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("channels,size", RESNET_SHAPES, ids=lambda v: str(v))
@pytest.mark.parametrize("stride", [1, 2])
def test_channels_last_resnet_backward_takes_the_nhwc_kernels(dtype, channels, size, stride):
    x, cf, sf = make_inputs(2, channels, size, size, 3, 1, stride, dtype, "cpu", "channels_last")
    go = torch.ops.ddf.ddf(x, cf, sf, stride)
    assert go.is_contiguous(memory_format=torch.channels_last)
    assert cuda_path(x, cf, sf, stride, go=go) == BOTH


@requires_emulation
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_channels_last_views_on_the_emulated_kernels(dtype):
    """A channels_last input, a view of it one channel in (misaligned, NCHW output), and one
    with an NCHW spatial filter: each takes the path the plan names, forward and backward, and
    agrees with the CPU kernels, gradients included."""
    tol = dict(rtol=2e-2, atol=2e-2) if dtype != torch.float32 else dict(rtol=1e-5, atol=1e-5)
    x, cf, sf = make_inputs(2, 17, 9, 10, 3, 1, 1, dtype, "cpu", "channels_last")
    calls = {
        "tiled_nhwc vector=": (x[:, :16], cf[:, :16], sf),
        "tiled_nhwc vector=1": (x[:, 1:], cf[:, 1:], sf),
        "tiled_nhwc vector": (x[:, :16], cf[:, :16], sf.contiguous()),
    }
    for expected, args in calls.items():
        assert cuda_path(*args).startswith(expected), cuda_path(*args)
        leaves = [a.detach().requires_grad_() for a in args]
        out = torch.ops.ddf.ddf(*leaves)
        backward = cuda_path(*args, go=torch.ones_like(out))
        assert backward.startswith("grad_input=tiled_nhwc filter_grads=tiled_nhwc"), backward
        cpu = torch.autograd.grad(out, leaves, torch.ones_like(out))
        with emulated_cuda_kernels():
            emu_out = torch.ops.ddf.ddf(*leaves)
            emu = torch.autograd.grad(emu_out, leaves, torch.ones_like(emu_out))
        assert emu_out.stride() == out.stride()
        torch.testing.assert_close(emu_out.float(), out.float(), **tol)
        for a, b in zip(emu, cpu):
            torch.testing.assert_close(a.float(), b.float(), **tol)


def test_plan_checks_its_arguments():
    x, cf, sf = make_inputs(2, 4, 7, 6, 3, 2, 1)
    with pytest.raises(ValueError, match="odd kernel size"):
        cuda_path(x, cf[..., :2, :2].contiguous(), sf)


class DdfCalls(TorchDispatchMode):
    """Records the arguments of every ddf::ddf and ddf::ddf_backward call."""

    def __init__(self):
        super().__init__()
        self.calls = []
        self.backward_calls = []

    NAMES = ("input", "channel_filter", "spatial_filter", "stride", "dilation", "combine")
    DEFAULTS = dict(stride=1, dilation=1, combine="mul")

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.ddf.ddf.default:
            self.calls.append({**self.DEFAULTS, **dict(zip(self.NAMES, args)), **kwargs})
        if func is torch.ops.ddf.ddf_backward.default:
            named = {**self.DEFAULTS, **dict(zip(("grad_output",) + self.NAMES + ("output_mask",), args)), **kwargs}
            self.backward_calls.append(named)
        return func(*args, **kwargs)


def bottleneck_outputs(stride):
    torch.manual_seed(0)
    block = Bottleneck(256, 64, stride, partial(ddf3x3, combine="mul")).train().to(memory_format=torch.channels_last)
    x = torch.randn(2, 256, 14, 14).to(memory_format=torch.channels_last).requires_grad_()
    calls = DdfCalls()
    with calls:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = block(x)
        out.float().square().sum().backward()
    return out, x.grad, calls


@requires_emulation
@pytest.mark.parametrize("stride", [1, 2])
def test_ddf_resnet_block_channels_last_bf16_runs_tiled(stride):
    cpu_out, cpu_grad, _ = bottleneck_outputs(stride)
    with emulated_cuda_kernels():
        out, grad, calls = bottleneck_outputs(stride)
    assert calls.calls and calls.backward_calls, "the block made no ddf call, or no backward"
    for call in calls.calls:
        x = call["input"]
        assert x.dtype == torch.bfloat16 and x.is_contiguous(memory_format=torch.channels_last)
        path = cuda_path(*(call[n] for n in DdfCalls.NAMES))
        assert path.startswith("tiled_nhwc vector=8"), path
    for call in calls.backward_calls:
        path = torch.ops.ddf._cuda_plan(*(call[n] for n in DdfCalls.NAMES), call["grad_output"], call["output_mask"])
        assert path == BOTH, path
    torch.testing.assert_close(out.float(), cpu_out.float(), rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(grad, cpu_grad, rtol=3e-2, atol=3e-2)


def test_filter_gradient_plan_counts_the_partial_sums_launch():
    """The channels_last filter-gradient plan (ddf_cuda_nhwc_plan.h) weighs a tiling's busiest
    SM and, for a map of several tiles, the launch that sums the tiles' grad_channel_filter
    partials: ResNet-50's 7x7 calls at B=64 take one tile (no partial sums; one block per SM),
    its 56x56 ones still seven column strips of 8 x 56."""
    # [use, vector, channel_lanes, block_channels, tile_w, tile_h, tiles, ...]
    for element_bytes in (4, 2):
        small = torch.ops.ddf._cuda_nhwc_plan(64, 512, 7, 7, 3, 1, 1, 1, element_bytes, "filter_grads")
        assert small[0] == 1 and small[6] == 1, small
        large = torch.ops.ddf._cuda_nhwc_plan(64, 64, 56, 56, 3, 1, 1, 1, element_bytes, "filter_grads")
        assert large[0] == 1 and large[6] == 7, large
