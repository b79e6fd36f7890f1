"""Gradients of the ddf op: against the reference, gradcheck, double backward, masks."""

import itertools
import os

import pytest
import torch

import ddf_ops
from conftest import DEVICES, DEVICES_AND_EMULATED, TOLERANCES, is_emulated, make_inputs, reference_grads

SIZES = [(7, 10), (8, 5), (2, 3)]
# Set by `make sanitize`, whose library checks every access of every call (ASan + UBSan).
# What the sanitizers see is the code a call runs, and gradcheck's fast mode (one random
# projection of the Jacobian) runs the same kernels on the same shapes as the full Jacobian,
# which takes one backward per output element: there, test_gradcheck took 110 of the run's
# 220 worker-seconds. The plain runs check the full Jacobian.
SANITIZED = os.environ.get("DDF_TESTS_SANITIZED") == "1"


def grads(x, cf, sf, go, stride, dilation, combine):
    out = ddf_ops.ddf(x, cf, sf, stride, dilation, combine)
    return torch.autograd.grad(out, (x, cf, sf), go)


@pytest.mark.isa
@pytest.mark.parametrize("device", DEVICES_AND_EMULATED)
@pytest.mark.parametrize("combine", ["mul", "add"])
@pytest.mark.parametrize("dilation", [1, 2, 3])
@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("k", [1, 3, 5, 7])
def test_grads_match_reference_float64(k, stride, dilation, combine, device):
    C = 6
    configs = itertools.product(SIZES, [1, 2, C])
    if is_emulated(device):
        # One (size, heads) per parametrization, every heads value across them: the emulator
        # needs seconds per call (tests/cuda_emulation covers the full matrix in C++).
        configs = [(SIZES[(k + stride) % len(SIZES)], [1, 2, C][(k + stride + dilation) % 3])]
    for (H, W), G in configs:
        x, cf, sf = make_inputs(2, C, H, W, k, G, stride, device=device, requires_grad=True, seed=H + W * 10 + G)
        go = torch.randn(2, C, sf.shape[2], sf.shape[3], dtype=x.dtype, device=device)
        got = grads(x, cf, sf, go, stride, dilation, combine)
        expected = reference_grads(x, cf, sf, go, stride, dilation, combine)
        for name, a, b in zip(("input", "channel_filter", "spatial_filter"), got, expected):
            torch.testing.assert_close(a, b, **TOLERANCES[torch.float64], msg=f"{name} H={H} W={W} G={G}")


@pytest.mark.isa
@pytest.mark.parametrize("device", DEVICES_AND_EMULATED)
@pytest.mark.parametrize("layout", ["channels_last", "sliced", "expanded"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_grads_any_strides_and_dtypes(layout, dtype, device):
    tol = {torch.float64: 1e-10, torch.float32: 1e-4, torch.bfloat16: 5e-2, torch.float16: 1e-2}[dtype]
    for k, stride, dilation, G in [(3, 1, 1, 1), (3, 2, 2, 2), (5, 3, 1, 4)]:
        x, cf, sf = make_inputs(3, 4, 9, 8, k, G, stride, dtype, device, layout, requires_grad=True)
        go = torch.randn(3, 4, sf.shape[2], sf.shape[3], device=device).to(dtype)
        got = grads(x, cf, sf, go, stride, dilation, "mul")
        expected = reference_grads(x, cf, sf, go, stride, dilation, "mul")
        for a, b in zip(got, expected):
            assert a.dtype == dtype and a.shape == b.shape
            torch.testing.assert_close(a.double(), b, rtol=tol, atol=tol * b.abs().max().item())


@pytest.mark.isa
@pytest.mark.parametrize("device", DEVICES_AND_EMULATED)
def test_expanded_grad_output(device):
    """out.sum().backward() hands the kernel a grad_output of stride 0."""
    x, cf, sf = make_inputs(2, 4, 7, 6, 3, 2, 2, device=device, requires_grad=True)
    ddf_ops.ddf(x, cf, sf, 2).sum().backward()
    expected = reference_grads(x, cf, sf, torch.ones(2, 4, 4, 3, dtype=x.dtype, device=device), 2, 1, "mul")
    for t, e in zip((x, cf, sf), expected):
        torch.testing.assert_close(t.grad, e)


# Full Jacobians: 1 to 10 s per case on 2 quiet cores, but thousands of small op calls, which
# slow down badly on busy cores (up to 296 s for one case, measured on a shared machine): a
# longer limit than pyproject's 600 s.
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("device", DEVICES_AND_EMULATED)
@pytest.mark.parametrize("combine", ["mul", "add"])
@pytest.mark.parametrize("k,stride,dilation,G", [(1, 1, 1, 1), (3, 1, 1, 2), (3, 2, 2, 1), (5, 3, 1, 4), (3, 1, 3, 4)])
def test_gradcheck(k, stride, dilation, G, combine, device):
    x, cf, sf = make_inputs(2, 4, 7, 6, k, G, stride, device=device, requires_grad=True)
    fn = lambda *args: ddf_ops.ddf(*args, stride, dilation, combine)  # noqa: E731
    # fast_mode (a random projection of the Jacobian) on the emulator: the full Jacobian takes
    # one backward per output element.
    fast = is_emulated(device) or SANITIZED
    assert torch.autograd.gradcheck(fn, (x, cf, sf), fast_mode=fast)
    assert torch.autograd.gradgradcheck(fn, (x, cf, sf), fast_mode=fast)


@pytest.mark.parametrize("device", DEVICES_AND_EMULATED)
@pytest.mark.parametrize("combine", ["mul", "add"])
def test_gradcheck_of_backward_op(combine, device):
    """ddf_backward has its own autograd (double backward), for every output mask."""
    x, cf, sf = make_inputs(1, 4, 6, 5, 3, 2, 2, device=device, requires_grad=True)
    go = torch.randn(1, 4, 3, 3, dtype=torch.float64, device=device, requires_grad=True)
    for mask in itertools.product([False, True], repeat=3):
        if not any(mask):
            continue
        fn = lambda *a: [g for g in torch.ops.ddf.ddf_backward(*a, 2, 1, combine, list(mask)) if g is not None]  # noqa: E731
        assert torch.autograd.gradcheck(fn, (go, x, cf, sf), fast_mode=is_emulated(device)), mask


@pytest.mark.parametrize("device", DEVICES)
def test_triple_backward(device):
    x, cf, sf = make_inputs(1, 2, 5, 4, 3, 1, 1, device=device, requires_grad=True)
    fn = lambda *a: ddf_ops.ddf(*a, 1, 1, "mul")  # noqa: E731
    (g,) = torch.autograd.grad(fn(x, cf, sf).pow(2).sum(), (x,), create_graph=True)
    (gg,) = torch.autograd.grad(g.pow(2).sum(), (cf,), create_graph=True)
    (ggg,) = torch.autograd.grad(gg.sum(), (sf,))
    ref = ddf_ops.reference.ddf
    (g2,) = torch.autograd.grad(ref(x, cf, sf).pow(2).sum(), (x,), create_graph=True)
    (gg2,) = torch.autograd.grad(g2.pow(2).sum(), (cf,), create_graph=True)
    (ggg2,) = torch.autograd.grad(gg2.sum(), (sf,))
    torch.testing.assert_close(ggg, ggg2)


@pytest.mark.isa
@pytest.mark.parametrize("device", DEVICES_AND_EMULATED)
def test_output_mask_computes_only_what_is_asked(device):
    x, cf, sf = make_inputs(2, 4, 7, 6, 3, 2, 1, device=device)
    go = torch.randn(2, 4, 7, 6, dtype=x.dtype, device=device)
    full = torch.ops.ddf.ddf_backward(go, x, cf, sf, 1, 1, "mul", [True, True, True])
    for mask in itertools.product([False, True], repeat=3):
        got = torch.ops.ddf.ddf_backward(go, x, cf, sf, 1, 1, "mul", list(mask))
        for want, g, f in zip(mask, got, full):
            if want:
                torch.testing.assert_close(g, f)
            else:
                assert g is None


@pytest.mark.parametrize("device", DEVICES_AND_EMULATED)
def test_only_needed_grads_flow(device):
    x, cf, sf = make_inputs(2, 4, 7, 6, 3, 1, 1, device=device)
    x.requires_grad_()
    ddf_ops.ddf(x, cf, sf).sum().backward()
    assert x.grad is not None and cf.grad is None and sf.grad is None


@pytest.mark.parametrize("device", DEVICES_AND_EMULATED)
@pytest.mark.parametrize("shape", [(0, 4, 5, 5), (2, 4, 0, 5), (2, 4, 5, 0)])
def test_empty_grads(shape, device):
    B, C, H, W = shape
    x, cf, sf = make_inputs(B, C, H, W, 3, 2, 2, device=device, requires_grad=True)
    ddf_ops.ddf(x, cf, sf, 2).sum().backward()
    assert x.grad.shape == x.shape and sf.grad.shape == sf.shape
    # A channel filter that sees no pixel gets a zero gradient, not garbage.
    assert cf.grad.shape == cf.shape and torch.count_nonzero(cf.grad) == 0


@pytest.mark.isa
@pytest.mark.parametrize("combine", ["mul", "add"])
def test_backward_repeats_bitwise_wherever_the_heap_puts_its_buffers(combine):
    # Fewer channels than a vector (8 float32 < 16 AVX-512 lanes): the channel-vectorized
    # backward's scalar remainder, with a copied (non-contiguous) input. GCC versioned that
    # loop on a run-time overlap test of the gradient rows and the operand copies, and its two
    # versions fused multiply-adds differently: one call in ~100 gave another last bit,
    # depending on heap addresses. Buffers of varying sizes between the calls move them.
    g = torch.Generator().manual_seed(15)
    x = torch.randn(2, 8, 9, 22, generator=g)[..., ::2]
    cf = torch.randn(2, 8, 1, 1, generator=g)
    sf = torch.randn(2, 1, 9, 11, generator=g)
    go = torch.randn(2, 8, 9, 11, generator=g)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        first = torch.ops.ddf.ddf_backward(go, x, cf, sf, 1, 1, combine, [True, True, True])
        held = []
        for i in range(400):
            held.append(torch.empty(1 + 37 * i % 1500))
            again = torch.ops.ddf.ddf_backward(go, x, cf, sf, 1, 1, combine, [True, True, True])
            for name, a, b in zip(("input", "channel_filter", "spatial_filter"), again, first):
                assert torch.equal(a, b), f"call {i + 2}: grad_{name} differs from the first call's"
    finally:
        torch.set_num_threads(threads)


@pytest.mark.isa
def test_backward_deterministic_across_runs_and_threads():
    x, cf, sf = make_inputs(2, 8, 33, 30, 5, 2, 2, dtype=torch.float32, requires_grad=True)
    go = torch.randn(2, 8, 17, 15)
    first = grads(x, cf, sf, go, 2, 2, "mul")
    threads = torch.get_num_threads()
    try:
        for n in (1, max(2, threads), 1):
            torch.set_num_threads(n)
            for a, b in zip(grads(x, cf, sf, go, 2, 2, "mul"), first):
                assert torch.equal(a, b)
    finally:
        torch.set_num_threads(threads)
