"""Property-based fuzzing (hypothesis): random valid configurations against the reference."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ddf_ops
from conftest import emulated_cuda_kernels, make_inputs, reference_grads, requires_emulation


@st.composite
def configs(draw, max_channels):
    # Up to 40 channels on the CPU: heads of 8 and more take the kernels vectorized over
    # channels (with channels left over past the last vector); the emulator stays at 8.
    C = draw(st.integers(1, max_channels))
    G = draw(st.sampled_from([g for g in range(1, C + 1) if C % g == 0]))
    return dict(
        B=draw(st.integers(1, 3)),
        C=C,
        G=G,
        H=draw(st.integers(1, 12)),
        W=draw(st.integers(1, 12)),
        k=draw(st.sampled_from([1, 3, 5, 7])),
        stride=draw(st.integers(1, 4)),
        dilation=draw(st.integers(1, 4)),
        combine=draw(st.sampled_from(["mul", "add"])),
        layout=draw(st.sampled_from(["contiguous", "channels_last", "sliced", "expanded"])),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def check_against_reference(cfg):
    stride, dilation, combine = cfg["stride"], cfg["dilation"], cfg["combine"]
    x, cf, sf = make_inputs(
        cfg["B"], cfg["C"], cfg["H"], cfg["W"], cfg["k"], cfg["G"], stride,
        layout=cfg["layout"], requires_grad=True, seed=cfg["seed"],
    )
    out = ddf_ops.ddf(x, cf, sf, stride, dilation, combine)
    torch.testing.assert_close(out, ddf_ops.reference.ddf(x, cf, sf, stride, dilation, combine))
    # In the output's layout, as autograd hands it over (channels_last stays channels_last).
    go = torch.empty_like(out).copy_(torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(cfg["seed"])))
    got = torch.autograd.grad(out, (x, cf, sf), go)
    for a, b in zip(got, reference_grads(x, cf, sf, go, stride, dilation, combine)):
        torch.testing.assert_close(a, b)


# derandomize: CI explores the same configurations every run (reproducible failures).
@settings(max_examples=150, deadline=None, derandomize=True)
@given(configs(max_channels=40))
def test_forward_and_backward_match_reference(cfg):
    check_against_reference(cfg)


# The CUDA kernels under the host emulator: fewer examples (seconds each, not milliseconds).
@requires_emulation
@settings(max_examples=40, deadline=None, derandomize=True)
@given(configs(max_channels=8))
def test_emulated_cuda_forward_and_backward_match_reference(cfg):
    with emulated_cuda_kernels():
        check_against_reference(cfg)
