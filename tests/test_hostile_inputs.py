"""The op as a hostile user would call it (issue 9): huge strides and dilations, kernel sizes
that overflow, NaN/Inf, unbacked sizes, None. Every case must give the right answer in
bounded memory or raise a clear error naming the argument and the bound."""

import itertools
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.symbolic_shapes import ShapeEnv

import ddf_ops
from conftest import DEVICES_AND_EMULATED, ROOT, is_emulated

inside = ddf_ops.reference.ddf_inside_taps
HUGE_STEPS = [1000, 10**4, 2**31, 2**32, 2**62, 2**63 - 1]


def grads_of(fn, x, cf, sf, go, stride, dilation, combine):
    leaves = [t.detach().requires_grad_() for t in (x, cf, sf)]
    out = fn(*leaves, stride, dilation, combine)
    return (out, *torch.autograd.grad(out, leaves, go))


def assert_same(got, expected, what):
    """Equal NaN positions, equal infinities, finite values close (float64)."""
    assert torch.equal(got.isnan(), expected.isnan()), f"{what}: NaN positions differ"
    assert torch.equal(got.isinf(), expected.isinf()), f"{what}: inf positions differ"
    finite = expected.isfinite()
    assert torch.equal(got[expected.isinf()], expected[expected.isinf()]), f"{what}: inf signs differ"
    torch.testing.assert_close(got[finite], expected[finite], rtol=1e-10, atol=1e-10, msg=what)


def check_against_inside_taps(x, cf, sf, stride, dilation, combine, seed=0):
    gen = torch.Generator().manual_seed(seed)
    go = torch.randn(sf.shape[0], x.shape[1], sf.shape[2], sf.shape[3], generator=gen, dtype=x.dtype)
    got = grads_of(torch.ops.ddf.ddf, x, cf, sf, go, stride, dilation, combine)
    expected = grads_of(inside, x, cf, sf, go, stride, dilation, combine)
    for name, a, b in zip(("output", "grad_input", "grad_channel_filter", "grad_spatial_filter"), got, expected):
        assert_same(a, b, f"{name} stride={stride} dilation={dilation} {combine}")


def test_inside_taps_reference_agrees_with_the_padded_reference_on_finite_inputs():
    gen = torch.Generator().manual_seed(1)
    for k, s, d, G in [(3, 1, 1, 1), (5, 2, 3, 2), (1, 3, 1, 1), (7, 1, 2, 4)]:
        x = torch.randn(2, 4, 9, 7, generator=gen, dtype=torch.float64)
        cf = torch.randn(2, 4, k, k, generator=gen, dtype=torch.float64)
        sf = torch.randn(2, G * k * k, (9 - 1) // s + 1, (7 - 1) // s + 1, generator=gen, dtype=torch.float64)
        for combine in ("mul", "add"):
            torch.testing.assert_close(inside(x, cf, sf, s, d, combine), ddf_ops.reference.ddf(x, cf, sf, s, d, combine))


# ---- Huge strides and dilations: right answers, no crash, bounded memory -----------------


@pytest.mark.parametrize("step", HUGE_STEPS)
@pytest.mark.parametrize("k", [1, 3])
def test_huge_stride(step, k):
    gen = torch.Generator().manual_seed(k)
    x = torch.randn(1, 2, 3, 5, generator=gen, dtype=torch.float64)
    cf = torch.randn(1, 2, k, k, generator=gen, dtype=torch.float64)
    sf = torch.randn(1, k * k, 1, 1 if step >= 5 else 2, generator=gen, dtype=torch.float64)
    check_against_inside_taps(x, cf, sf, step, 1, "mul")


@pytest.mark.parametrize("step", HUGE_STEPS + [3000])
@pytest.mark.parametrize("k", [3, 5])
def test_huge_dilation(step, k):
    gen = torch.Generator().manual_seed(k)
    x = torch.randn(1, 2, 4, 6, generator=gen, dtype=torch.float64)
    cf = torch.randn(1, 2, k, k, generator=gen, dtype=torch.float64)
    sf = torch.randn(1, k * k, 4, 6, generator=gen, dtype=torch.float64)
    for combine in ("mul", "add"):
        check_against_inside_taps(x, cf, sf, 1, step, combine)


def test_huge_dilation_reads_only_the_centre_tap():
    # The repro: zeros came out where the answer is ones.
    ones = torch.ones(1, 1, 3, 3)
    for k, d in [(5, 2**62), (3, 2**63 - 1)]:
        out = torch.ops.ddf.ddf(ones, torch.ones(1, 1, k, k), torch.ones(1, k * k, 3, 3), 1, d)
        torch.testing.assert_close(out, ones)


def test_huge_steps_keep_memory_bounded():
    # In a fresh process, so that the peak RSS measures these calls only. Before the fix,
    # stride 1000 on a 3x3 image allocated 530 MB, and stride 10**4 raised std::bad_alloc.
    script = textwrap.dedent(
        """
        import resource, torch, ddf_ops
        def peak_mb():
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        def run(stride, dilation, H, W):
            x = torch.randn(1, 2, H, W, requires_grad=True)
            cf = torch.randn(1, 2, 3, 3, requires_grad=True)
            sf = torch.randn(1, 9, (H - 1) // stride + 1, (W - 1) // stride + 1, requires_grad=True)
            torch.ops.ddf.ddf(x, cf, sf, stride, dilation).sum().backward()
        run(1, 1, 3, 3)
        before = peak_mb()
        for s, d, H, W in [(1000, 1, 3, 3), (10**4, 1, 3, 3), (2**31, 1, 3, 3), (1, 3000, 40, 50),
                           (10**4, 1, 1, 20000), (1, 10**4, 1, 20000), (7, 5000, 64, 64)]:
            run(s, d, H, W)
        print(peak_mb() - before)
        """
    )
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    grown = float(subprocess.run([sys.executable, "-c", script], env=env, check=True, capture_output=True, text=True).stdout)
    assert grown < 64, f"peak RSS grew by {grown:.0f} MB"


# ---- Sizes that overflow: clear errors naming the argument and the bound ------------------


def test_kernel_size_past_the_bound_is_a_clear_error():
    k = 2**30 + 1  # k*k would still fit; the bound keeps every tap offset in int64 too
    cf = torch.randn(1, 1, 1, 1).expand(1, 1, k, k)
    with pytest.raises(ValueError, match=r"kernel size k = channel_filter.size\(2\) to be at most 1073741824, but got k = 1073741825"):
        torch.ops.ddf.ddf(torch.randn(1, 1, 3, 3), cf, torch.randn(1, 9, 3, 3))
    with FakeTensorMode():
        with pytest.raises(ValueError, match="at most 1073741824"):
            torch.ops.ddf.ddf(torch.randn(1, 1, 3, 3), torch.empty(1, 1, k, k), torch.empty(1, 9, 3, 3))


def test_image_past_the_bound_is_a_clear_error():
    x = torch.randn(1, 1, 1, 1).expand(1, 1, 1, 2**62)
    with pytest.raises(ValueError, match=r"input.size\(3\) to be at most 2305843009213693952, but got 4611686018427387904"):
        torch.ops.ddf.ddf(x, torch.randn(1, 1, 1, 1), torch.randn(1, 1, 1, 1).expand(1, 1, 1, 2**62), 2**62)


def test_padding_past_the_bound_is_a_clear_error():
    # (k-1)/2 * dilation overflows int64 only with an image as large as the dilation.
    x = torch.randn(1, 1, 1, 1).expand(1, 1, 1, 2**40)
    cf = torch.randn(1, 1, 1, 1).expand(1, 1, 2**29 + 1, 2**29 + 1)
    sf = torch.randn(1, 1, 1, 1).expand(1, (2**29 + 1) ** 2, 1, 1)
    with pytest.raises(ValueError, match=r"padding \(k-1\)/2 \* dilation = 268435456 \* 1099511627776"):
        torch.ops.ddf.ddf(x, cf, sf, 2**41, 2**41)


# ---- Non-finite values reach exactly the results that depend on them ----------------------

NONFINITE_CASES = list(itertools.product([1, 3, 5], [1, 2, 3], [1, 2], [1, 2], ["mul", "add"]))


def plant(t, gen, count):
    flat = t.view(-1) if t.is_contiguous() else None
    assert flat is not None
    for n in range(count):
        i = int(torch.randint(flat.numel(), (1,), generator=gen))
        flat[i] = [float("inf"), float("-inf"), float("nan")][n % 3]


@pytest.mark.isa
@pytest.mark.parametrize("case", range(len(NONFINITE_CASES)))
def test_nonfinite_values_reach_exactly_what_depends_on_them(case):
    k, s, d, G, combine = NONFINITE_CASES[case]
    gen = torch.Generator().manual_seed(case)
    H, W = 5 + case % 3, 6 + case % 4
    x = torch.randn(2, 4, H, W, generator=gen, dtype=torch.float64)
    cf = torch.randn(2, 4, k, k, generator=gen, dtype=torch.float64)
    sf = torch.randn(2, G * k * k, (H - 1) // s + 1, (W - 1) // s + 1, generator=gen, dtype=torch.float64)
    # One kind of tensor poisoned per case (then all of them): a leak from one operand into
    # results that do not depend on it would be hidden by a second operand's own NaNs.
    which = case % 4
    for n, t in enumerate((x, cf, sf)):
        if which == 3 or which == n:
            plant(t, gen, 2)
    check_against_inside_taps(x, cf, sf, s, d, combine, seed=case)


@pytest.mark.isa
def test_inf_in_the_last_column_stays_out_of_unrelated_channel_filter_gradients():
    # The repro: grad_channel_filter[..., 0] was NaN (0 * inf at a padding column).
    x = torch.randn(1, 1, 4, 5, dtype=torch.float64)
    x[0, 0, 1, 4] = float("inf")
    cf = torch.randn(1, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(torch.ops.ddf.ddf(x, cf, torch.randn(1, 9, 4, 5, dtype=torch.float64)).sum(), cf)
    assert g[..., 0].isfinite().all(), g


@pytest.mark.isa
@pytest.mark.parametrize("device", DEVICES_AND_EMULATED)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nonfinite_float32_and_devices(device, dtype):
    # Border values that only padding taps would read, on every device, both dtypes.
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 6, 7, generator=gen, dtype=torch.float64)
    cf = torch.randn(2, 4, 3, 3, generator=gen, dtype=torch.float64)
    sf = torch.randn(2, 9, 6, 7, generator=gen, dtype=torch.float64)
    x[0, 1, 5, 6] = float("inf")
    x[1, 2, 0, 3] = float("nan")
    sf[0, 0, 0, 0] = float("inf")  # tap (0, 0) of pixel (0, 0) lies outside the image
    cf[1, 3, 2, 2] = float("-inf")
    go = torch.randn(2, 4, 6, 7, generator=gen, dtype=torch.float64)
    go[1, 0, 5, 0] = float("inf")
    expected = grads_of(inside, x, cf, sf, go, 1, 1, "mul")
    got = grads_of(torch.ops.ddf.ddf, *(t.to(dtype=dtype, device=device) for t in (x, cf, sf, go)), 1, 1, "mul")
    for name, a, b in zip(("output", "grad_input", "grad_channel_filter", "grad_spatial_filter"), got, expected):
        a = a.double().cpu()
        assert torch.equal(a.isnan(), b.isnan()), f"{name}: NaN positions differ"
        assert torch.equal(a.isinf(), b.isinf()), f"{name}: inf positions differ"
        torch.testing.assert_close(a[b.isfinite()], b[b.isfinite()], rtol=1e-4, atol=1e-4)


@pytest.mark.isa
def test_finite_overflow_at_a_padding_tap_is_not_nan():
    # cf * sf overflows float32 at a tap outside the image: the flat kernel's 0 * inf there
    # must not reach the output (the output pixel's inside taps are finite).
    x = torch.ones(1, 1, 3, 3)
    cf = torch.ones(1, 1, 3, 3)
    cf[0, 0, 0, 0] = 3e38
    sf = torch.ones(1, 9, 3, 3)
    sf[0, 0, 0, 0] = 3e38  # tap (0, 0) of pixel (0, 0): outside
    out = torch.ops.ddf.ddf(x, cf, sf)
    assert out.isfinite().all(), out


# ---- Unbacked (data-dependent) sizes --------------------------------------------------------


@pytest.mark.parametrize("dim", range(4))
def test_unbacked_size_traces_under_fake_tensors(dim):
    shape_env = ShapeEnv()
    with FakeTensorMode(shape_env=shape_env):
        u = shape_env.create_unbacked_symint()
        sizes = [2, 4, 6, 7]
        sizes[dim] = u
        x = torch.empty(*sizes)
        B, C, H, W = x.shape
        cf, sf = torch.empty(B, C, 3, 3), torch.empty(B, 9, H, W)
        out = torch.ops.ddf.ddf(x, cf, sf, 1, 1, "mul")
        assert out.shape == x.shape
        gi, gc, gs = torch.ops.ddf.ddf_backward(out, x, cf, sf, 1, 1, "mul", [True, True, True])
        assert gi.shape == x.shape and gc.shape == cf.shape and gs.shape == sf.shape
        xl = torch.empty(*sizes).contiguous(memory_format=torch.channels_last)
        out = torch.ops.ddf.ddf(xl, cf, sf, 1, 1, "mul")
        assert out.shape == x.shape


@pytest.mark.integration  # torch.compile
def test_unbacked_width_compiles_fullgraph():
    def f(x, cf, sf, n):
        w = n.item()
        torch._check(w <= x.shape[3])
        return torch.ops.ddf.ddf(x[..., :w], cf, sf[..., :w], 1, 1, "mul")

    gen = torch.Generator().manual_seed(0)
    x, cf, sf = torch.randn(2, 3, 6, 8, generator=gen), torch.randn(2, 3, 3, 3, generator=gen), torch.randn(2, 9, 6, 8, generator=gen)
    n = torch.tensor(5)
    with torch._dynamo.config.patch(capture_scalar_outputs=True):
        for backend in ("aot_eager", "inductor"):
            torch._dynamo.reset()
            torch.testing.assert_close(torch.compile(f, fullgraph=True, backend=backend)(x, cf, sf, n), f(x, cf, sf, n))


# ---- None ------------------------------------------------------------------------------------


@pytest.mark.parametrize("position", range(3))
def test_none_names_the_argument(position):
    args = [torch.randn(1, 1, 3, 3), torch.randn(1, 1, 3, 3), torch.randn(1, 9, 3, 3)]
    name = ["input", "channel_filter", "spatial_filter"][position]
    args[position] = None
    with pytest.raises(TypeError, match=f"expected {name} to be a Tensor, but got None"):
        torch.ops.ddf.ddf(*args)
    with torch.no_grad(), pytest.raises(TypeError, match=f"expected {name} to be a Tensor, but got None"):
        torch.ops.ddf.ddf(*args)
    go = torch.randn(1, 1, 3, 3)
    with pytest.raises(TypeError, match=f"expected {name} to be a Tensor, but got None"):
        torch.ops.ddf.ddf_backward(go, *args, 1, 1, "mul", [True, True, True])
    with pytest.raises(TypeError, match="expected grad_output to be a Tensor, but got None"):
        torch.ops.ddf.ddf_backward(None, *[torch.randn(1, 1, 3, 3)] * 2, torch.randn(1, 9, 3, 3), 1, 1, "mul", [True] * 3)


@pytest.mark.isa
@pytest.mark.parametrize("size", [(16, 16), (14, 15), (30, 9)])
def test_nonfinite_neighbours_in_memory_do_not_leak_into_a_view(size):
    # The stride-1 forward reads a contiguous image in place, past its rows into the
    # neighbouring rows and channels (multiplied by zeroed filter taps). Poisoned neighbours
    # must not reach the view's results.
    H, W = size
    gen = torch.Generator().manual_seed(H)
    big = torch.randn(2, 6, H, W, generator=gen)
    big[:, 0] = float("inf")
    big[:, 3] = float("nan")
    big[:, 5] = float("-inf")
    x = big[:, 1:3]  # channels 1 and 2: contiguous planes between poisoned ones
    y = big[:, 4:5]
    for view in (x, y):
        C = view.shape[1]
        cf = torch.randn(2, C, 3, 3, generator=gen)
        sf = torch.randn(2, 9, H, W, generator=gen)
        out = torch.ops.ddf.ddf(view, cf, sf)
        assert out.isfinite().all()
        torch.testing.assert_close(out, ddf_ops.reference.ddf(view, cf, sf), rtol=1e-5, atol=1e-5)
