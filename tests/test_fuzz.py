"""Property-based fuzzing (hypothesis): random valid configurations against the reference.

CI explores the same examples every run (the "ci" profile: derandomized, so a failure
reproduces). HYPOTHESIS_PROFILE=long draws new random examples, 20 times as many, for long
runs (`HYPOTHESIS_PROFILE=long .venv/bin/python -m pytest tests/test_fuzz.py`); it prints
the failing example and a @reproduce_failure blob.
"""

import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ddf_ops
from conftest import emulated_cuda_kernels, make_inputs, reference_grads, requires_emulation

settings.register_profile("ci", derandomize=True, deadline=None)
settings.register_profile("long", derandomize=False, deadline=None, print_blob=True)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
settings.load_profile(PROFILE)


def examples(n):
    return n * 20 if PROFILE == "long" else n


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
        dtype=draw(st.sampled_from([torch.float64, torch.float32])),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def assert_matches(got, expected, what):
    """float64: 1e-10; float32: 1e-5 relative to the result's scale (its largest entry)."""
    if got.dtype == torch.float64:
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10, msg=what)
    else:
        assert got.dtype == torch.float32
        scale = expected.abs().max().item() if expected.numel() else 0.0
        torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5 * scale, msg=what)


def check_against_reference(cfg):
    stride, dilation, combine = cfg["stride"], cfg["dilation"], cfg["combine"]
    x, cf, sf = make_inputs(
        cfg["B"], cfg["C"], cfg["H"], cfg["W"], cfg["k"], cfg["G"], stride,
        dtype=cfg["dtype"], layout=cfg["layout"], requires_grad=True, seed=cfg["seed"],
    )
    out = ddf_ops.ddf(x, cf, sf, stride, dilation, combine)
    assert out.dtype == cfg["dtype"]
    # The reference in float64 on the same (rounded) inputs.
    expected = ddf_ops.reference.ddf(x.double(), cf.double(), sf.double(), stride, dilation, combine)
    assert_matches(out, expected, "output")
    # In the output's layout, as autograd hands it over (channels_last stays channels_last).
    go = torch.empty_like(out).copy_(torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(cfg["seed"])))
    got = torch.autograd.grad(out, (x, cf, sf), go)
    for name, a, b in zip(("grad_input", "grad_channel_filter", "grad_spatial_filter"), got, reference_grads(x, cf, sf, go, stride, dilation, combine)):
        assert a.dtype == cfg["dtype"]
        assert_matches(a, b, name)


@pytest.mark.isa
@settings(max_examples=examples(150))
@given(configs(max_channels=40))
def test_forward_and_backward_match_reference(cfg):
    check_against_reference(cfg)


# The CUDA kernels under the host emulator: fewer examples (seconds each, not milliseconds).
@requires_emulation
@settings(max_examples=examples(40))
@given(configs(max_channels=8))
def test_emulated_cuda_forward_and_backward_match_reference(cfg):
    with emulated_cuda_kernels():
        check_against_reference(cfg)
