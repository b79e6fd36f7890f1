"""Shared fixtures and input builders for the ddf op tests."""

import contextlib
import importlib
import os
import warnings

import pytest
import torch

import ddf_ops  # noqa: F401  (loads the library)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CUDA_AVAILABLE = torch.cuda.is_available()
# CUDA tests carry the `cuda` marker (`make gpu-check` runs `pytest -m cuda`) and skip,
# visibly, where there is no GPU.
CUDA_MARKS = [pytest.mark.cuda, pytest.mark.skipif(not CUDA_AVAILABLE, reason="no CUDA device: CUDA test skipped")]


def with_marks(marks):
    def decorate(test):
        for mark in marks:
            test = mark(test)
        return test

    return decorate


requires_cuda = with_marks(CUDA_MARKS)

# Test dependencies (the Makefile's TEST_DEPS: expecttest, timm, torchvision, onnx, ...). A
# machine without one (the GPU machine, a user's environment) skips the tests that need it,
# visibly; `make test` and `make test-fast` install them all and set DDF_REQUIRE_TEST_DEPS=1,
# where a dependency that fails to import is an error: there a skip would report a broken
# install (or a broken import inside the dependency) as a pass.
REQUIRE_TEST_DEPS = os.environ.get("DDF_REQUIRE_TEST_DEPS") == "1"


def import_test_dependency(name: str):
    """pytest.importorskip(name), or a plain import (ImportError fails) under DDF_REQUIRE_TEST_DEPS=1."""
    if REQUIRE_TEST_DEPS:
        return importlib.import_module(name)
    return pytest.importorskip(name)


def require_test_capability(available: bool, reason: str):
    """skipif(not available) for a capability of the installed test dependencies (not of the
    hardware): under DDF_REQUIRE_TEST_DEPS=1 the tests run, and fail, instead of skipping."""
    return pytest.mark.skipif(not available and not REQUIRE_TEST_DEPS, reason=reason)



# The CUDA kernels under the host emulator (tests/cuda_emulation): the test-only ops
# ddf_emu::ddf / ddf_backward, built by CMake (`make cuda-emulation`, part of `make test`).
EMULATION_LIBRARY = os.environ.get(
    "DDF_CUDA_EMULATION_LIBRARY", os.path.join(ROOT, "build", "cmake", "libddf_cuda_emulation_op.so")
)
EMULATION_AVAILABLE = os.path.isfile(EMULATION_LIBRARY)
if EMULATION_AVAILABLE:
    torch.ops.load_library(EMULATION_LIBRARY)
elif os.environ.get("DDF_REQUIRE_CUDA_EMULATION") == "1":
    raise RuntimeError(f"DDF_REQUIRE_CUDA_EMULATION=1 but {EMULATION_LIBRARY} does not exist (build it with CMake)")
EMULATION_MARKS = [
    pytest.mark.cuda_emulation,
    pytest.mark.skipif(not EMULATION_AVAILABLE, reason="CUDA emulation library not built: emulated-CUDA test skipped"),
]

requires_emulation = with_marks(EMULATION_MARKS)


class EmulatedCuda(str):
    """The "cuda_emulated" device: tensors live on the CPU, and for the duration of the test
    ddf's CPU kernels are the CUDA kernels run by the host emulator (see emulated_cuda_kernels).
    A str equal to "cpu", so tests build their tensors with it unchanged."""


EMULATED_CUDA = pytest.param(EmulatedCuda("cpu"), id="cuda_emulated", marks=EMULATION_MARKS)

# Every device-parametrized test runs on the CPU and, where there is a GPU, on CUDA.
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA_MARKS)]
# Also on the CUDA kernels under the emulator: for the tests whose sizes the emulator runs in
# seconds (it runs each block's threads as OS threads, about 2 us per thread per barrier).
DEVICES_AND_EMULATED = DEVICES + [EMULATED_CUDA]


def is_emulated(device) -> bool:
    return isinstance(device, EmulatedCuda)


@contextlib.contextmanager
def emulated_cuda_kernels():
    """Routes ddf::ddf and ddf::ddf_backward on the CPU to the emulated CUDA kernels (the
    override is removed on exit). Autograd, double backward and compile reach them through the
    dispatcher, exactly as they reach the real CUDA kernels."""
    lib = torch.library.Library("ddf", "IMPL")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*Overriding a previously registered kernel.*")
            lib.impl("ddf", torch.ops.ddf_emu.ddf.default, "CPU")
            lib.impl("ddf_backward", torch.ops.ddf_emu.ddf_backward.default, "CPU")
        yield
    finally:
        lib._destroy()


@pytest.fixture(autouse=True)
def _emulated_cuda_device(request):
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and is_emulated(callspec.params.get("device")):
        with emulated_cuda_kernels():
            yield
    else:
        yield

# Tolerances against the float64 reference. The half types round inputs and output once
# (accumulation is float32), so their bound is a few ulps of the output.
TOLERANCES = {
    torch.float64: dict(rtol=1e-10, atol=1e-10),
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.float16: dict(rtol=4e-3, atol=4e-3),
    torch.bfloat16: dict(rtol=2e-2, atol=2e-2),
}


def out_size(n: int, stride: int) -> int:
    return (n - 1) // stride + 1 if n > 0 else 0


def make_inputs(
    B=2,
    C=4,
    H=7,
    W=9,
    k=3,
    G=1,
    stride=1,
    dtype=torch.float64,
    device="cpu",
    layout="contiguous",
    requires_grad=False,
    seed=0,
):
    """Random (never zero) input, channel_filter, spatial_filter in the given layout.

    layout: "contiguous"; "channels_last" (all three tensors); "sliced" (every tensor a
    non-contiguous view into a bigger one); "expanded" (channel_filter and spatial_filter
    expanded over the batch with stride 0).
    """
    gen = torch.Generator().manual_seed(seed)
    Ho, Wo = out_size(H, stride), out_size(W, stride)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)

    if layout == "contiguous":
        x, cf, sf = rand(B, C, H, W), rand(B, C, k, k), rand(B, G * k * k, Ho, Wo)
    elif layout == "channels_last":
        x, cf, sf = (
            t.contiguous(memory_format=torch.channels_last)
            for t in (rand(B, C, H, W), rand(B, C, k, k), rand(B, G * k * k, Ho, Wo))
        )
    elif layout == "sliced":
        x = rand(B + 1, C * 2, H + 3, W * 2 + 1)[1:, ::2, 2:-1, 1::2]
        cf = rand(B, C, k, k + 2)[..., 1:-1]
        sf = rand(B, G * k * k + 3, Ho + 1, Wo)[:, 3:, :-1].transpose(2, 3).contiguous().transpose(2, 3)
    elif layout == "expanded":
        x = rand(B, C, H, W)
        cf = rand(1, C, k, k).expand(B, C, k, k)
        sf = rand(1, G * k * k, Ho, Wo).expand(B, G * k * k, Ho, Wo)
    else:
        raise ValueError(layout)
    if requires_grad:
        # Leaves that keep the layout: gradients are compared on these.
        x, cf, sf = (t.detach().requires_grad_() for t in (x, cf, sf))
    return x, cf, sf


def cpu_path(x, cf, sf, stride=1, dilation=1, combine="mul", go=None, mask=(True, True, True)):
    """The path the CPU planner picks for this call (csrc/cpu/plan.h): the forward's, or the
    backward's when grad_output `go` is given. Tests assert it instead of restating thresholds."""
    return torch.ops.ddf._cpu_plan(x, cf, sf, stride, dilation, combine, go, list(mask)).split()[0]


def reference_grads(x, cf, sf, go, stride, dilation, combine):
    """Gradients of <reference(x, cf, sf), go> computed in float64."""
    leaves = [t.detach().double().requires_grad_() for t in (x, cf, sf)]
    out = ddf_ops.reference.ddf(*leaves, stride, dilation, combine)
    return torch.autograd.grad(out, leaves, go.double())
