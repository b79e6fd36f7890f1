"""The CPU kernels vectorized over channels (csrc/cpu/channels/) against the reference.

The CPU plan (csrc/cpu/plan.h) sends float32/float64 calls here when a head has at least 8
channels and the operands' channels are contiguous (channels_last), or the NCHW map is small
(the forward through transposed bands, the backward on channels_last copies). The other
tests mostly use narrower heads, so they rarely reach them. Each test below asserts, through
cpu_path, that the channel paths it is about were taken. These cover each path: input read in
place or transposed (whole band, row by row, strided columns), output written in place or
transposed, full vectors of channels and the channels left over (widths that are not a
multiple of any vector), border and interior pixel runs, stride phases of the input gradient,
every k/stride/dilation, both combines, heads, output masks, and planted NaN/Inf.
"""

import itertools

import pytest
import torch

import ddf_ops
from conftest import TOLERANCES, cpu_path, out_size

# (C, G): heads of 8, 19, 24, 10, 37 and 16 channels.
WIDTHS = [(8, 1), (19, 1), (48, 2), (40, 4), (74, 2), (32, 2)]
# Small maps: NCHW inputs take this kernel too at some of them (the plan decides; the tests
# assert that each layout's channel path was reached).
SIZES = [(7, 7), (5, 9), (1, 3), (4, 4), (10, 10)]


def rand(gen, *shape, dtype=torch.float64):
    return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)


def inputs(layout, B, C, H, W, k, G, stride, gen, dtype=torch.float64):
    """x, cf, sf in one of the layouts that reach a distinct path of the kernel."""
    Ho, Wo = out_size(H, stride), out_size(W, stride)
    x, cf, sf = rand(gen, B, C, H, W, dtype=dtype), rand(gen, B, C, k, k, dtype=dtype), rand(gen, B, G * k * k, Ho, Wo, dtype=dtype)
    cl = torch.channels_last
    if layout == "nchw":  # transposed whole bands in and out
        pass
    elif layout == "channels_last":  # read and written in place
        x, cf, sf = x.contiguous(memory_format=cl), cf.contiguous(memory_format=cl), sf.contiguous(memory_format=cl)
    elif layout == "channels_last_x_only":  # spatial filter NCHW: its taps are Ho*Wo apart
        x = x.contiguous(memory_format=cl)
    elif layout == "channels_last_sliced":  # channels contiguous, pixels further apart than C
        x = rand(gen, B, H, W + 2, C + 5, dtype=dtype)[:, :, 1:-1, 3:-2].permute(0, 3, 1, 2)
        assert x.stride(1) == 1 and x.stride(2) != x.size(1)
    elif layout == "nchw_rows_apart":  # rows not contiguous: transposed row by row
        x = rand(gen, B, C, H, W + 3, dtype=dtype)[..., 2:-1]
    elif layout == "nchw_strided_columns":  # columns strided: copied element by element
        x = rand(gen, B, C, H, 2 * W, dtype=dtype)[..., ::2]
    else:
        raise ValueError(layout)
    return x, cf, sf


LAYOUTS = ["nchw", "channels_last", "channels_last_x_only", "channels_last_sliced", "nchw_rows_apart", "nchw_strided_columns"]


@pytest.mark.isa
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("combine", ["mul", "add"])
@pytest.mark.parametrize("k,stride,dilation", [(1, 1, 1), (3, 1, 1), (3, 2, 1), (3, 1, 2), (5, 1, 1), (5, 2, 3), (7, 3, 1)])
def test_matches_reference_float64(k, stride, dilation, combine, layout):
    gen = torch.Generator().manual_seed(k * 100 + stride * 10 + dilation)
    paths = set()
    for (C, G), (H, W) in itertools.product(WIDTHS, SIZES):
        x, cf, sf = inputs(layout, 2, C, H, W, k, G, stride, gen)
        paths.add(cpu_path(x, cf, sf, stride, dilation, combine))
        out = ddf_ops.ddf(x, cf, sf, stride, dilation, combine)
        expected = ddf_ops.reference.ddf(x, cf, sf, stride, dilation, combine)
        torch.testing.assert_close(out, expected, **TOLERANCES[torch.float64], msg=f"C={C} G={G} H={H} W={W}")
    assert ("channels_in_place" if "channels_last" in layout else "channels_transposed") in paths, paths


@pytest.mark.isa
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_float32_resnet_shapes(layout):
    # The widths the benchmark runs (vectors of 16 and 8 floats with nothing left over), at
    # a reduced batch, and a large channels_last map.
    gen = torch.Generator().manual_seed(5)
    for C, size in [(512, 7), (256, 7), (64, 20)] + ([(64, 56)] if layout == "channels_last" else []):
        x, cf, sf = inputs(layout, 2, C, size, size, 3, 1, 1, gen, dtype=torch.float32)
        out = ddf_ops.ddf(x, cf, sf)
        expected = ddf_ops.reference.ddf(x.double(), cf.double(), sf.double())
        torch.testing.assert_close(out.double(), expected, **TOLERANCES[torch.float32], msg=f"{C}@{size}")


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_output_layout_follows_input(layout):
    gen = torch.Generator().manual_seed(1)
    x, cf, sf = inputs(layout, 2, 16, 5, 5, 3, 1, 1, gen)
    out = ddf_ops.ddf(x, cf, sf)
    assert out.is_contiguous(memory_format=torch.channels_last if layout == "channels_last" else torch.contiguous_format)


@pytest.mark.isa
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_deterministic_across_threads(layout):
    gen = torch.Generator().manual_seed(2)
    x, cf, sf = inputs(layout, 3, 40, 9, 10, 3, 2, 1, gen, dtype=torch.float32)
    first = ddf_ops.ddf(x, cf, sf)
    threads = torch.get_num_threads()
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            assert torch.equal(ddf_ops.ddf(x, cf, sf), first), n
    finally:
        torch.set_num_threads(threads)


@pytest.mark.isa
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("combine", ["mul", "add"])
@pytest.mark.parametrize("k,stride,dilation", [(3, 1, 1), (5, 2, 1), (3, 1, 2)])
def test_nonfinite_values_reach_exactly_what_depends_on_them(k, stride, dilation, combine, layout):
    # This kernel visits only the taps inside the image, so it needs no recomputation: an Inf
    # or NaN anywhere (the border too) must reach exactly the outputs whose taps read it.
    gen = torch.Generator().manual_seed(k + stride + dilation)
    for which in range(4):
        x, cf, sf = inputs("nchw", 2, 19, 6, 7, k, 1, stride, gen)
        for n, t in enumerate((x, cf, sf)):
            if which in (n, 3):
                flat = t.view(-1)
                for m in range(3):
                    flat[int(torch.randint(flat.numel(), (1,), generator=gen))] = [float("inf"), float("-inf"), float("nan")][m]
        x[1, 3, 0, 6] = float("inf")  # a corner, read by padding taps in a padded kernel
        expected = ddf_ops.reference.ddf_inside_taps(x, cf, sf, stride, dilation, combine)
        if layout == "channels_last":
            x, cf, sf = (t.contiguous(memory_format=torch.channels_last) for t in (x, cf, sf))
        got = ddf_ops.ddf(x, cf, sf, stride, dilation, combine)
        assert torch.equal(got.isnan(), expected.isnan()), f"operand {which}: NaN positions differ"
        assert torch.equal(got.isinf(), expected.isinf()), f"operand {which}: inf positions differ"
        finite = expected.isfinite()
        assert torch.equal(got[expected.isinf()], expected[expected.isinf()]), "inf signs differ"
        torch.testing.assert_close(got[finite], expected[finite], **TOLERANCES[torch.float64])


def test_opcheck_channels_last():
    gen = torch.Generator().manual_seed(3)
    x, cf, sf = inputs("channels_last", 2, 16, 5, 6, 3, 2, 2, gen)
    for t in (x, cf, sf):
        t.requires_grad_(True)
    torch.library.opcheck(torch.ops.ddf.ddf.default, (x, cf, sf, 2, 1, "mul"))


# ---- Backward --------------------------------------------------------------------------------

# The NCHW ones run on channels_last copies (small maps: the plan's ChannelsCopied): transposed
# in registers where contiguous (nchw), by ATen where not (the views).
BACKWARD_LAYOUTS = LAYOUTS


def grad_output_like(x, sf, gen):
    """grad_output in the layout autograd would hand over: the output's, which follows x."""
    go = rand(gen, x.shape[0], x.shape[1], sf.shape[2], sf.shape[3], dtype=x.dtype)
    return go.contiguous(memory_format=torch.channels_last) if x.stride(1) == 1 else go


@pytest.mark.isa
@pytest.mark.parametrize("layout", BACKWARD_LAYOUTS)
@pytest.mark.parametrize("combine", ["mul", "add"])
@pytest.mark.parametrize("k,stride,dilation", [(1, 1, 1), (3, 1, 1), (3, 2, 1), (3, 1, 2), (5, 2, 3), (5, 3, 1), (7, 1, 1)])
def test_grads_match_reference_float64(k, stride, dilation, combine, layout):
    gen = torch.Generator().manual_seed(k * 100 + stride * 10 + dilation)
    paths = set()
    for (C, G), (H, W) in itertools.product(WIDTHS, SIZES + [(12, 5)]):
        x, cf, sf = inputs(layout, 2, C, H, W, k, G, stride, gen)
        go = grad_output_like(x, sf, gen)
        paths.add(cpu_path(x, cf, sf, stride, dilation, combine, go))
        got = torch.ops.ddf.ddf_backward(go, x, cf, sf, stride, dilation, combine, [True, True, True])
        leaves = [t.detach().clone().requires_grad_(True) for t in (x, cf, sf)]
        expected = torch.autograd.grad(ddf_ops.reference.ddf(*leaves, stride, dilation, combine), leaves, go)
        for name, a, b in zip(("input", "channel_filter", "spatial_filter"), got, expected):
            torch.testing.assert_close(a, b, **TOLERANCES[torch.float64], msg=f"{name}: C={C} G={G} H={H} W={W}")
    # x, grad_output and grad_input with contiguous channels (grad_input takes the input's memory
    # format: a sliced channels-contiguous view gets an NCHW grad_input, written through a copy).
    in_place = layout in ("channels_last", "channels_last_x_only")
    assert ("channels_in_place" if in_place else "channels_copied") in paths, paths


@pytest.mark.isa
@pytest.mark.parametrize("layout", ["channels_last", "nchw"])
@pytest.mark.parametrize("mask", [m for m in itertools.product([False, True], repeat=3) if any(m)])
def test_each_gradient_alone(mask, layout):
    gen = torch.Generator().manual_seed(7)
    x, cf, sf = inputs(layout, 2, 19, 6, 7, 3, 1, 2, gen)
    go = grad_output_like(x, sf, gen)
    every = torch.ops.ddf.ddf_backward(go, x, cf, sf, 2, 1, "mul", [True, True, True])
    some = torch.ops.ddf.ddf_backward(go, x, cf, sf, 2, 1, "mul", list(mask))
    for wanted, a, b in zip(mask, some, every):
        if wanted:
            assert torch.equal(a, b)
        else:
            assert a is None


@pytest.mark.isa
@pytest.mark.parametrize("layout", ["channels_last", "nchw"])
def test_grads_float32_resnet_shapes(layout):
    gen = torch.Generator().manual_seed(6)
    for C, size in [(512, 7), (64, 20), (256, 14)]:
        x, cf, sf = inputs(layout, 2, C, size, size, 3, 1, 1, gen, dtype=torch.float32)
        go = grad_output_like(x, sf, gen)
        got = torch.ops.ddf.ddf_backward(go, x, cf, sf, 1, 1, "mul", [True, True, True])
        leaves = [t.detach().double().requires_grad_(True) for t in (x, cf, sf)]
        expected = torch.autograd.grad(ddf_ops.reference.ddf(*leaves), leaves, go.double())
        for name, a, b in zip(("input", "channel_filter", "spatial_filter"), got, expected):
            # Sums over up to C*H*W float32 terms: compared relative to the largest entry.
            torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-4 * b.abs().max().item(), msg=f"{name} {C}@{size}")


@pytest.mark.isa
@pytest.mark.parametrize("layout", ["channels_last", "nchw"])
def test_grads_deterministic_across_threads(layout):
    gen = torch.Generator().manual_seed(8)
    x, cf, sf = inputs(layout, 3, 40, 11, 10, 3, 2, 1, gen, dtype=torch.float32)
    go = grad_output_like(x, sf, gen)
    first = torch.ops.ddf.ddf_backward(go, x, cf, sf, 1, 1, "mul", [True, True, True])
    threads = torch.get_num_threads()
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            again = torch.ops.ddf.ddf_backward(go, x, cf, sf, 1, 1, "mul", [True, True, True])
            assert all(torch.equal(a, b) for a, b in zip(again, first)), n
    finally:
        torch.set_num_threads(threads)


@pytest.mark.isa
@pytest.mark.parametrize("layout", ["channels_last", "nchw"])
@pytest.mark.parametrize("combine", ["mul", "add"])
def test_grads_nonfinite_reach_exactly_what_depends_on_them(combine, layout):
    gen = torch.Generator().manual_seed(9)
    for which, (k, stride, dilation) in itertools.product(range(4), [(3, 1, 1), (5, 2, 1), (3, 1, 2)]):
        x, cf, sf = inputs("nchw", 2, 19, 6, 7, k, 1, stride, gen)
        go = rand(gen, 2, 19, sf.shape[2], sf.shape[3])
        for n, t in enumerate((x, cf, sf, go)):
            if which == n:
                flat = t.view(-1)
                for m in range(3):
                    flat[int(torch.randint(flat.numel(), (1,), generator=gen))] = [float("inf"), float("-inf"), float("nan")][m]
        x[1, 3, 0, 6] = float("inf")  # a corner, read by padding taps in a padded kernel
        leaves = [t.clone().requires_grad_(True) for t in (x, cf, sf)]
        out = ddf_ops.reference.ddf_inside_taps(*leaves, stride, dilation, combine)
        expected = torch.autograd.grad(out, leaves, go)
        if layout == "channels_last":
            go, x, cf, sf = (t.contiguous(memory_format=torch.channels_last) for t in (go, x, cf, sf))
        got = torch.ops.ddf.ddf_backward(go, x, cf, sf, stride, dilation, combine, [True, True, True])
        for name, a, b in zip(("input", "channel_filter", "spatial_filter"), got, expected):
            msg = f"{name}, operand {which}, k={k} s={stride} d={dilation}"
            assert torch.equal(a.isnan(), b.isnan()), f"{msg}: NaN positions differ"
            assert torch.equal(a.isinf(), b.isinf()), f"{msg}: inf positions differ"
            torch.testing.assert_close(a[b.isfinite()], b[b.isfinite()], **TOLERANCES[torch.float64], msg=msg)


def test_gradcheck_channels_last():
    gen = torch.Generator().manual_seed(10)
    x, cf, sf = inputs("channels_last", 1, 16, 4, 5, 3, 2, 2, gen)
    leaves = [t.requires_grad_(True) for t in (x, cf, sf)]
    assert torch.autograd.gradcheck(lambda a, b, c: ddf_ops.ddf(a, b, c, 2, 1, "add"), leaves)
