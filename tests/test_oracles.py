"""Oracles beyond ddf_ops.reference, and corners the other suites reach only in part.

- sf = 1 ("mul") / sf = 0 ("add") makes the op a dynamic depth-wise convolution: F.conv2d per
  batch element with that element's channel filters, an oracle that shares no code with
  ddf_ops.reference (outputs, and the input and channel-filter gradients through conv2d's
  own autograd), at every k, stride and dilation, on the CPU and the emulated CUDA kernels
  (float32 there reaches the tiled kernels).
- Half-precision accumulation: operands whose float32 sums are exact but whose partial sums
  are 2^10 times the result, so that the float32-accumulated result rounded once is known
  bit for bit, and a kernel accumulating in float16/bfloat16 is tens of ulps off (the test
  emulates that accumulation and checks that it would fail).
- float32 in the CPU kernels vectorized over channels, with heads whose widths leave channels
  over after the vectors of 8 and 16 (the other float32 tests use multiples of 16).
- stride-0 (expanded) inputs and grad_outputs, along each dimension.
- k = 9 and 11 on the CPU, forward and backward.

Tolerances: float64 1e-10; float32 1e-5 relative to the result's scale (its largest entry).
"""

import itertools

import pytest
import torch
import torch.nn.functional as F

import ddf_ops
from conftest import DEVICES_AND_EMULATED, TOLERANCES, is_emulated, out_size

pytestmark = pytest.mark.isa  # every test here compares results computed by the CPU's vector loops


def rand(gen, *shape, dtype=torch.float64):
    return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)


def assert_matches(got, expected, what=""):
    """got (any dtype) against a float64 result. float32: 1e-5 relative to the largest entry,
    since sums of tens of float32 products carry absolute errors of that order whatever the
    size of the single entry."""
    if got.dtype == torch.float64:
        torch.testing.assert_close(got, expected, **TOLERANCES[torch.float64], msg=what)
        return
    assert got.dtype == torch.float32, got.dtype
    scale = expected.abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5 * max(scale, 1e-30), msg=what)


def reference_grads(x, cf, sf, go, stride, dilation, combine):
    leaves = [t.detach().double().requires_grad_() for t in (x, cf, sf)]
    out = ddf_ops.reference.ddf(*leaves, stride, dilation, combine)
    return (out, *torch.autograd.grad(out, leaves, go.double()))


def op_grads(x, cf, sf, go, stride, dilation, combine):
    leaves = [t.detach().requires_grad_() for t in (x, cf, sf)]
    out = ddf_ops.ddf(*leaves, stride, dilation, combine)
    return (out, *torch.autograd.grad(out, leaves, go))


NAMES = ("output", "grad_input", "grad_channel_filter", "grad_spatial_filter")


# ---- The depth-wise convolution special case, against F.conv2d ---------------------------


@pytest.mark.parametrize("device", DEVICES_AND_EMULATED)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("k", [1, 3, 5, 7])
def test_depthwise_conv_special_case(k, dtype, device):
    C, H, W = 5, 10, 9  # an even and an odd side
    gen = torch.Generator().manual_seed(k)
    for stride, dilation, combine in itertools.product([1, 2, 3], [1, 2, 3], ["mul", "add"]):
        Ho, Wo = out_size(H, stride), out_size(W, stride)
        G = [1, C][(stride + dilation) % 2]  # heads do not matter when sf is constant
        x = rand(gen, 2, C, H, W, dtype=dtype).to(device)
        cf = rand(gen, 2, C, k, k, dtype=dtype).to(device)  # a different filter per batch element
        sf = torch.full((2, G * k * k, Ho, Wo), 1.0 if combine == "mul" else 0.0, dtype=dtype, device=device)
        go = rand(gen, 2, C, Ho, Wo, dtype=dtype).to(device)
        what = f"k={k} stride={stride} dilation={dilation} {combine}"
        # The emulator needs about a second per backward: gradients on one dilation per stride there.
        with_grads = not is_emulated(device) or dilation == (stride + k) % 3 + 1
        xl, cfl = (t.double().requires_grad_(with_grads) for t in (x, cf))
        conv = torch.cat([
            F.conv2d(xl[b : b + 1], cfl[b].unsqueeze(1), stride=stride, dilation=dilation,
                     padding=dilation * (k - 1) // 2, groups=C)
            for b in range(2)
        ])
        if not with_grads:
            assert_matches(ddf_ops.ddf(x, cf, sf, stride, dilation, combine), conv, what)
            continue
        out, grad_x, grad_cf, _ = op_grads(x, cf, sf, go, stride, dilation, combine)
        assert_matches(out, conv.detach(), what)
        want_x, want_cf = torch.autograd.grad(conv, (xl, cfl), go.double())
        assert_matches(grad_x, want_x, "grad_input " + what)
        assert_matches(grad_cf, want_cf, "grad_channel_filter " + what)


# ---- float16/bfloat16 accumulate in float32 -----------------------------------------------

MANTISSA_BITS = {torch.float16: 10, torch.bfloat16: 7}
MIN_EXPONENT = {torch.float16: -14, torch.bfloat16: -126}


def ulp(v, dtype):
    """The spacing of dtype's numbers at |v| (v float64)."""
    e = torch.floor(torch.log2(v.abs().clamp_min(2.0 ** MIN_EXPONENT[dtype])))
    return torch.exp2(e.clamp_min(MIN_EXPONENT[dtype]) - MANTISSA_BITS[dtype])


def cancelling_operands(k, dtype, combine, H, W, gen):
    """x, cf, sf (one image, two channels, one head, stride 1) whose per-tap products, in
    row-major tap order, come in triples +A, d, -A with A in [32, 64) a multiple of 1/4 and
    |d| < 1/4 a multiple of 1/512: the result (the sum of the d) is about 2^-10 of the
    partial sums. All products and partial sums are multiples of 1/1024 below 2^8, so float32
    adds them exactly in any order: the correct result is the float64 one rounded once.
    x is +-{1/2, 1, 2} and cf is 1 ("mul") or 0 ("add"), so each sf value is a product over
    a power of two, exact in float16 and bfloat16. Channel 1 is channel 0 times -2."""
    taps, r = k * k, (k - 1) // 2
    x0 = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)[torch.randint(3, (H, W), generator=gen)]
    x0 = x0 * (torch.randint(2, (H, W), generator=gen) * 2 - 1)
    products = torch.empty(taps, H, W, dtype=torch.float64)
    for t in range(taps):
        if t % 3 == 0 and t + 2 < taps:
            products[t] = 32 + torch.randint(128, (H, W), generator=gen) / 4
        elif t % 3 == 2:
            products[t] = -products[t - 2]
        else:  # the small ones, and the taps left over past the last triple
            products[t] = torch.randint(-127, 128, (H, W), generator=gen) / 512
    # x0 at tap t of output pixel (y, x), zero outside the image.
    at_taps = F.unfold(x0[None, None], k, padding=r).view(taps, H, W)
    sf = torch.where(at_taps != 0, products / at_taps.where(at_taps != 0, 1.0), products)
    x = torch.stack([x0, -2 * x0])[None]
    cf = torch.full((1, 2, k, k), 1.0 if combine == "mul" else 0.0, dtype=torch.float64)
    for t in (x, sf):
        assert torch.equal(t.to(dtype).double(), t), "operands must be exact in the half type"
    return x.to(dtype), cf.to(dtype), sf[None].to(dtype), products * at_taps.ne(0)


def half_accumulated(products, dtype, order):
    """What a kernel that accumulated in dtype would give for channel 0: the exact products
    (float32) added one by one in the given tap order, the sum rounded to dtype each time."""
    acc = torch.zeros(products.shape[1:], dtype=dtype)
    for t in order:
        acc = (acc.float() + products[t].float()).to(dtype)
    return acc.double()


@pytest.mark.parametrize("device", DEVICES_AND_EMULATED)
@pytest.mark.parametrize("combine", ["mul", "add"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("k", [7, 9])  # 49 and 81 taps; k = 7 takes the tiled CUDA kernel
def test_half_types_accumulate_in_float32(k, dtype, combine, device):
    H = W = k + 3
    gen = torch.Generator().manual_seed(k)
    x, cf, sf, products = cancelling_operands(k, dtype, combine, H, W, gen)
    exact = ddf_ops.reference.ddf(x.double(), cf.double(), sf.double(), 1, 1, combine)
    assert torch.equal(exact[0, 1], -2 * exact[0, 0])
    torch.testing.assert_close(exact[0, 0], products.sum(0), rtol=0, atol=0)
    out = ddf_ops.ddf(x.to(device), cf.to(device), sf.to(device), 1, 1, combine).cpu()
    assert out.dtype == dtype
    # Exact float32 sums rounded once: at most half an ulp from the exact result.
    ulps = (out.double() - exact).abs() / ulp(exact, dtype)
    assert ulps.max() <= 0.5, f"{ulps.max():.1f} ulps off; worst at {divmod(int(ulps.argmax()), H * W)}"
    # The same check on a half-type accumulator would fail by a wide margin whichever way it
    # walks the taps (measured, worst interior pixel: 1240 to 10496 ulps for these seeds, both
    # types, both orders; the kernel: 0.5, the ties).
    interior = (slice(k // 2, H - k // 2),) * 2  # the pixels whose triples are all inside
    for order in (range(k * k), reversed(range(k * k))):
        wrong = half_accumulated(products, dtype, list(order))
        off = ((wrong - exact[0, 0]).abs() / ulp(exact[0, 0], dtype))[interior]
        assert off.max() > 8, f"the half-type accumulator would pass ({off.max():.1f} ulps): the case is too easy"


# ---- float32, heads with channels left over past the last vector (CPU) --------------------

# Channels per head: not multiples of 8 (AVX2 float32 vectors) or 16 (AVX-512), or multiples
# of 8 only (24, 40: one vector of 8 left over on AVX-512), from 8 to 40.
HEAD_WIDTHS = [(9, 1), (12, 2), (15, 1), (17, 2), (20, 1), (23, 1), (24, 2), (31, 1), (33, 1), (40, 1)]
# NCHW: at most 100 output pixels (forward vectorized over channels through transposed
# bands), up to 256 (backward on channels_last copies), more (the row kernels); channels_last
# always takes the channel kernels.
LEFTOVER_SIZES = [(7, 7), (5, 9), (12, 13), (17, 16)]


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("combine", ["mul", "add"])
def test_float32_leftover_channels(layout, combine):
    gen = torch.Generator().manual_seed(11)
    # Every width at two of the sizes (in turn), with two geometries: 40 cases.
    for n, ((cph, G), (k, stride, dilation)) in enumerate(itertools.product(HEAD_WIDTHS, [(3, 1, 1), (5, 2, 2)])):
        H, W = LEFTOVER_SIZES[n % len(LEFTOVER_SIZES)]
        C = cph * G
        Ho, Wo = out_size(H, stride), out_size(W, stride)
        x, cf, sf, go = (rand(gen, *s, dtype=torch.float32) for s in [(2, C, H, W), (2, C, k, k), (2, G * k * k, Ho, Wo), (2, C, Ho, Wo)])
        if layout == "channels_last":
            x, cf, sf, go = (t.contiguous(memory_format=torch.channels_last) for t in (x, cf, sf, go))
        got = op_grads(x, cf, sf, go, stride, dilation, combine)
        expected = reference_grads(x, cf, sf, go, stride, dilation, combine)
        for name, a, b in zip(NAMES, got, expected):
            assert a.dtype == torch.float32
            assert_matches(a, b, f"{name}: C/head={cph} G={G} {H}x{W} k={k} s={stride} d={dilation}")


# ---- stride-0 (expanded) operands ---------------------------------------------------------

EXPANSIONS = {
    "batch": lambda t: t[:1].expand(t.shape),
    "channels": lambda t: t[:, :1].expand(t.shape),
    "rows": lambda t: t[:, :, :1].expand(t.shape),
    "columns": lambda t: t[..., :1].expand(t.shape),
    "one_element": lambda t: t[:1, :1, :1, :1].expand(t.shape),
}
# (C, G, k, stride, dilation): narrow heads (the row kernels) and a head of 16 (the channel kernels).
EXPANDED_CASES = [(4, 1, 3, 1, 1), (4, 2, 5, 2, 1), (16, 1, 3, 1, 2), (16, 1, 3, 2, 1)]


@pytest.mark.parametrize("device", DEVICES_AND_EMULATED)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("expansion", list(EXPANSIONS))
@pytest.mark.parametrize("operand", ["input", "grad_output"])
def test_expanded_operands(operand, expansion, dtype, device):
    gen = torch.Generator().manual_seed(len(expansion))
    cases = EXPANDED_CASES
    if is_emulated(device):  # about a second per backward there: one case per parametrization
        cases = [EXPANDED_CASES[(len(expansion) + len(operand)) % len(EXPANDED_CASES)]]
    for C, G, k, stride, dilation in cases:
        H, W = 9, 8
        Ho, Wo = out_size(H, stride), out_size(W, stride)
        x, cf, sf, go = (rand(gen, *s, dtype=dtype) for s in [(2, C, H, W), (2, C, k, k), (2, G * k * k, Ho, Wo), (2, C, Ho, Wo)])
        if operand == "input":
            x = EXPANSIONS[expansion](x)
            assert 0 in x.stride()
        else:
            go = EXPANSIONS[expansion](go)
            assert 0 in go.stride()
        for combine in ("mul", "add"):
            got = op_grads(x, cf, sf, go, stride, dilation, combine)
            expected = reference_grads(x, cf, sf, go, stride, dilation, combine)
            for name, a, b in zip(NAMES, got, expected):
                assert_matches(a, b, f"{name}: {operand} expanded along {expansion}, C={C} G={G} k={k} s={stride} d={dilation} {combine}")


# ---- k = 9 and 11 on the CPU ---------------------------------------------------------------


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("k", [9, 11])
def test_large_kernels(k, dtype, layout):
    gen = torch.Generator().manual_seed(k)
    # Maps smaller than the kernel and a bit larger; heads of 3 (row kernels) and 16 (channel
    # kernels); each stride and dilation with each combine (the float64 reference of k = 11
    # takes a good part of a second per case).
    for (H, W), (C, G), (stride, dilation, combine) in itertools.product(
        [(6, 7), (13, 12)], [(3, 1), (16, 1), (6, 2)], [(1, 2, "mul"), (2, 1, "add"), (1, 1, "add"), (2, 2, "mul")]
    ):
        Ho, Wo = out_size(H, stride), out_size(W, stride)
        x, cf, sf, go = (rand(gen, *s, dtype=dtype) for s in [(2, C, H, W), (2, C, k, k), (2, G * k * k, Ho, Wo), (2, C, Ho, Wo)])
        if layout == "channels_last":
            x, cf, sf, go = (t.contiguous(memory_format=torch.channels_last) for t in (x, cf, sf, go))
        got = op_grads(x, cf, sf, go, stride, dilation, combine)
        expected = reference_grads(x, cf, sf, go, stride, dilation, combine)
        for name, a, b in zip(NAMES, got, expected):
            assert_matches(a, b, f"{name}: {H}x{W} C={C} G={G} s={stride} d={dilation} {combine}")
