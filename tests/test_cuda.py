"""CUDA-only behaviour: agreement with the CPU kernels, streams, devices, CUDA graphs and
deterministic backward. The device-parametrized suites (forward, backward, opcheck,
compile, export, bad inputs) run on CUDA as well. Without a GPU all of these skip."""

import itertools

import pytest
import torch

import ddf_ops
from conftest import CUDA_MARKS, make_inputs

pytestmark = CUDA_MARKS


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "sliced", "expanded"])
def test_cpu_cuda_agreement(dtype, layout):
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}[dtype]
    for k, stride, dilation, G, combine in itertools.product([1, 3, 5], [1, 2], [1, 2], [1, 4], ["mul", "add"]):
        x, cf, sf = make_inputs(2, 8, 13, 11, k, G, stride, dtype, "cpu", layout, requires_grad=True)
        go = torch.randn(2, 8, sf.shape[2], sf.shape[3]).to(dtype)
        out = ddf_ops.ddf(x, cf, sf, stride, dilation, combine)
        grads = torch.autograd.grad(out, (x, cf, sf), go)
        xc, cfc, sfc = (t.detach().cuda().requires_grad_() for t in (x, cf, sf))
        out_c = ddf_ops.ddf(xc, cfc, sfc, stride, dilation, combine)
        grads_c = torch.autograd.grad(out_c, (xc, cfc, sfc), go.cuda())
        for a, b in zip((out, *grads), (out_c, *grads_c)):
            torch.testing.assert_close(b.cpu().double(), a.double(), rtol=tol, atol=tol * max(1.0, a.abs().max().item()))


def test_runs_on_current_stream():
    x, cf, sf = make_inputs(4, 16, 64, 64, 3, 2, 1, torch.float32, "cuda")
    expected = ddf_ops.ddf(x, cf, sf)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        out = ddf_ops.ddf(x, cf, sf)
        out.add_(0)  # ordered after the kernel on the same stream
    torch.cuda.current_stream().wait_stream(stream)
    torch.testing.assert_close(out, expected)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_second_device():
    x, cf, sf = make_inputs(2, 4, 9, 8, 3, 1, 1, torch.float32, "cuda:1", requires_grad=True)
    out = ddf_ops.ddf(x, cf, sf)
    assert out.device == torch.device("cuda:1")
    out.sum().backward()
    expected = ddf_ops.ddf(*(t.detach().cpu() for t in (x, cf, sf)))
    torch.testing.assert_close(out.cpu(), expected)


def test_compile_reduce_overhead_cuda_graphs():
    torch._dynamo.reset()
    x, cf, sf = make_inputs(2, 8, 17, 15, 3, 2, 2, torch.float32, "cuda")
    compiled = torch.compile(lambda a, b, c: ddf_ops.ddf(a, b, c, 2).relu(), mode="reduce-overhead", fullgraph=True)
    for _ in range(3):  # warm-up, record, replay
        out = compiled(x, cf, sf)
    torch.testing.assert_close(out, ddf_ops.ddf(x, cf, sf, 2).relu())


def test_backward_bitwise_deterministic():
    x, cf, sf = make_inputs(8, 32, 57, 55, 5, 4, 2, torch.float32, "cuda", requires_grad=True)
    go = torch.randn(8, 32, 29, 28, device="cuda")
    first = torch.autograd.grad(ddf_ops.ddf(x, cf, sf, 2, 2), (x, cf, sf), go)
    for _ in range(3):
        again = torch.autograd.grad(ddf_ops.ddf(x, cf, sf, 2, 2), (x, cf, sf), go)
        for a, b in zip(first, again):
            assert torch.equal(a, b)


def test_deterministic_algorithms_mode():
    x, cf, sf = make_inputs(2, 8, 13, 11, 3, 2, 1, torch.float32, "cuda", requires_grad=True)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        ddf_ops.ddf(x, cf, sf).sum().backward()  # must not raise: no nondeterministic path
    finally:
        torch.use_deterministic_algorithms(previous)


def test_more_rows_than_one_grid_holds():
    """More plane rows than 65535 blocks of the grid's y dimension cover (grid-stride loops),
    and many planes of a tiny image."""
    x, cf, sf = make_inputs(1, 1, 10_000_000, 2, 3, 1, 1, torch.float32, "cuda", requires_grad=True)
    out = ddf_ops.ddf(x, cf, sf)
    torch.testing.assert_close(out, ddf_ops.reference.ddf(x, cf, sf))
    out.sum().backward()
    x, cf, sf = make_inputs(1, 70000, 3, 2, 1, 1, 1, torch.float32, "cuda")
    torch.testing.assert_close(ddf_ops.ddf(x, cf, sf), ddf_ops.reference.ddf(x, cf, sf))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_shared_memory_edge(dtype):
    """Forward k=3, stride 2, dilation 4 on 28x28: 8 channels of its 39x39 halo once asked for
    exactly 49,152 bytes of dynamic shared memory, which with the kernel's static bytes a GPU
    refuses to launch. The plan now budgets static plus dynamic; every result matches the CPU.
    (make gpu-check runs this test under compute-sanitizer too.)"""
    budget, static, dynamic = torch.ops.ddf._cuda_tiled_shared_budget()
    for kernel in ("forward", "grad_input", "filter_grads"):
        plan = torch.ops.ddf._cuda_tiled_plan(kernel, 2, 8, 28, 28, 3, 1, 2, 4)
        assert plan[0] == 1 and plan[11] + static <= budget, (kernel, plan)
    assert torch.ops.ddf._cuda_tiled_plan("forward", 2, 8, 28, 28, 3, 1, 2, 4)[6:8] == [39, 39]
    x, cf, sf = make_inputs(2, 8, 28, 28, 3, 1, 2, dtype, "cpu", requires_grad=True)
    go = torch.randn(2, 8, 14, 14).to(dtype)
    out = ddf_ops.ddf(x, cf, sf, 2, 4)
    grads = torch.autograd.grad(out, (x, cf, sf), go)
    xc, cfc, sfc = (t.detach().cuda().requires_grad_() for t in (x, cf, sf))
    out_c = ddf_ops.ddf(xc, cfc, sfc, 2, 4)
    grads_c = torch.autograd.grad(out_c, (xc, cfc, sfc), go.cuda())
    torch.cuda.synchronize()  # a refused launch or a fault surfaces here at the latest
    tol = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}[dtype]
    for a, b in zip((out, *grads), (out_c, *grads_c)):
        torch.testing.assert_close(b.cpu().double(), a.double(), rtol=tol, atol=tol * max(1.0, a.abs().max().item()))


# Calls of network size on the GPU, in both layouts: the tiled kernels with several tiles, several
# channel steps per block (their step loops turn, as they never do at the sizes above), full
# waves and the last wave's tail, against the float64 reference computed on the GPU from the
# same (rounded) inputs. (B, C, size, k, heads, stride, dilation, combine)
NETWORK_CALLS = [
    (8, 64, 56, 3, 1, 1, 1, "mul"),  # ResNet-50 stage 1
    (8, 128, 28, 3, 1, 2, 1, "mul"),  # a stride-2 first block
    (8, 256, 14, 5, 4, 1, 2, "add"),
    (8, 512, 7, 7, 8, 1, 1, "mul"),
    (3, 37, 33, 3, 37, 2, 2, "mul"),  # odd sizes, heads of one channel, C not a vector multiple
]


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("call", NETWORK_CALLS, ids=lambda c: "B{}_C{}_{}x{}_k{}_G{}_s{}_d{}_{}".format(c[0], c[1], c[2], c[2], *c[3:]))
def test_network_sized_calls_match_the_float64_reference(call, dtype, layout):
    B, C, size, k, G, stride, dilation, combine = call
    x, cf, sf = make_inputs(B, C, size, size, k, G, stride, dtype, "cuda", layout, requires_grad=True, seed=size)
    go = torch.randn(sf.shape[0], C, sf.shape[2], sf.shape[3], device="cuda").to(dtype)
    if layout == "channels_last":
        go = go.contiguous(memory_format=torch.channels_last)
    forward_path = torch.ops.ddf._cuda_plan(x, cf, sf, stride, dilation, combine, None)
    backward_path = torch.ops.ddf._cuda_plan(x, cf, sf, stride, dilation, combine, go)
    assert forward_path.startswith("tiled_nhwc" if layout == "channels_last" else "tiled"), forward_path
    nhwc = "tiled_nhwc" if layout == "channels_last" else "tiled"
    assert backward_path == f"grad_input={nhwc} filter_grads={nhwc}", backward_path
    out = ddf_ops.ddf(x, cf, sf, stride, dilation, combine)
    grads = torch.autograd.grad(out, (x, cf, sf), go)
    leaves = [t.detach().double().requires_grad_() for t in (x, cf, sf)]
    expected_out = ddf_ops.reference.ddf(*leaves, stride, dilation, combine)
    expected = (expected_out, *torch.autograd.grad(expected_out, leaves, go.double()))
    torch.cuda.synchronize()
    tol = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 4e-3}[dtype]
    for name, actual, wanted in zip(("out", "grad_input", "grad_channel", "grad_spatial"), (out, *grads), expected):
        torch.testing.assert_close(
            actual.double(), wanted, rtol=tol, atol=tol * wanted.abs().max().item(), msg=lambda m: f"{name} ({forward_path}; {backward_path}): {m}"
        )
