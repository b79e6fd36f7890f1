"""The CUDA kernels under the host emulator, beyond the device-parametrized suites (which run
them as the "cuda_emulated" device): routing, bitwise determinism, agreement with the CPU
kernels, argument checks."""

import pytest
import torch

import ddf_ops
from conftest import EMULATION_MARKS, emulated_cuda_kernels, make_inputs

pytestmark = EMULATION_MARKS


def cpu_kernel_of_ddf() -> str:
    """The active CPU kernel of ddf::ddf, as the dispatcher lists it ("registered at FILE:LINE")."""
    (line,) = [line for line in torch._C._dispatch_dump("ddf::ddf").splitlines() if line.startswith("CPU:")]
    return line


def test_override_routes_to_emulated_kernels_and_is_removed():
    before = cpu_kernel_of_ddf()
    with emulated_cuda_kernels():
        during = cpu_kernel_of_ddf()
    assert "ddf_cpu.cpp" in before and "conftest.py" in during, (before, during)
    assert cpu_kernel_of_ddf() == before


def forward_and_grads(dtype, layout, k, stride, dilation, G, combine, seed=0):
    x, cf, sf = make_inputs(2, 4, 11, 9, k, G, stride, dtype, "cpu", layout, requires_grad=True, seed=seed)
    out = ddf_ops.ddf(x, cf, sf, stride, dilation, combine)
    go = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(dtype)
    return (out, *torch.autograd.grad(out, (x, cf, sf), go))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_bitwise_deterministic_across_runs(dtype):
    with emulated_cuda_kernels():
        first = forward_and_grads(dtype, "contiguous", 3, 2, 1, 2, "mul")
        second = forward_and_grads(dtype, "contiguous", 3, 2, 1, 2, "mul")
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "sliced", "expanded"])
def test_agrees_with_cpu_kernels(dtype, layout):
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}[dtype]
    for k, stride, dilation, G, combine in [(1, 1, 2, 1, "mul"), (3, 2, 2, 4, "add"), (3, 1, 1, 2, "mul")]:
        cpu = forward_and_grads(dtype, layout, k, stride, dilation, G, combine)
        with emulated_cuda_kernels():
            emulated = forward_and_grads(dtype, layout, k, stride, dilation, G, combine)
        for a, b in zip(cpu, emulated):
            assert b.dtype == a.dtype and b.shape == a.shape and b.stride() == a.stride()
            torch.testing.assert_close(b.double(), a.double(), rtol=tol, atol=tol * max(1.0, a.abs().max().item()))


def test_emulated_op_checks_arguments_like_the_real_one():
    x, cf, sf = make_inputs(2, 4, 7, 6, 3, 2, 1)
    with pytest.raises(ValueError, match="odd kernel size"):
        torch.ops.ddf_emu.ddf(x, cf[..., :2, :2].contiguous(), sf)
