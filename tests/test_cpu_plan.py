"""The CPU planner (csrc/cpu/plan.h) through torch.ops.ddf._cpu_plan: every path is reached by
the call a user would make for it, and that call's result matches the float64 reference.

The other kernel test files pick their shapes for a path and assert, through the same op, that
the path was reached (tests/conftest.py: cpu_path), so no test restates a threshold.
"""

import pytest
import torch

import ddf_ops
from conftest import TOLERANCES, cpu_path, reference_grads


def rand(*shape, dtype=torch.float64, channels_last=False, seed=0):
    t = torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)
    return t.contiguous(memory_format=torch.channels_last) if channels_last else t


def operands(B, C, H, W, k, G, stride, dtype=torch.float64, channels_last=False):
    Ho, Wo = (H - 1) // stride + 1, (W - 1) // stride + 1
    return (
        rand(B, C, H, W, dtype=dtype, channels_last=channels_last, seed=1),
        rand(B, C, k, k, dtype=dtype, seed=2),
        rand(B, G * k * k, Ho, Wo, dtype=dtype, channels_last=channels_last, seed=3),
    )


# (name, operands, stride, dilation, combine, expected forward path)
FORWARD = [
    ("NCHW, stride 1, mul", operands(2, 4, 11, 9, 3, 1, 1), 1, 1, "mul", "rows_in_place"),
    ("NCHW float16, stride 1, mul", operands(2, 4, 11, 9, 3, 1, 1, torch.float16), 1, 1, "mul", "rows_dense"),
    ("NCHW, rows apart", (rand(2, 4, 11, 12)[..., 1:10],) + operands(2, 4, 11, 9, 3, 1, 1)[1:], 1, 1, "mul", "rows_dense"),
    ("NCHW, stride 2", operands(2, 4, 11, 9, 3, 2, 2), 2, 1, "mul", "rows_phase_planes"),
    ("NCHW, add", operands(2, 4, 11, 9, 5, 2, 1), 1, 2, "add", "rows_phase_planes"),
    ("channels_last, narrow heads", operands(2, 6, 11, 9, 3, 2, 1, channels_last=True), 1, 1, "mul", "rows_in_place"),
    ("channels_last", operands(2, 16, 11, 9, 3, 1, 1, channels_last=True), 1, 1, "mul", "channels_in_place"),
    ("channels_last, stride 2, add", operands(2, 32, 11, 9, 3, 2, 2, channels_last=True), 2, 1, "add", "channels_in_place"),
    ("NCHW 7x7, stride 2", operands(2, 16, 7, 7, 3, 1, 2), 2, 1, "mul", "channels_transposed"),
    ("NCHW 4x4, mul", operands(2, 16, 4, 4, 3, 1, 1), 1, 1, "mul", "channels_transposed"),
    ("NCHW 7x7, wide heads, mul", operands(2, 16, 7, 7, 3, 1, 1), 1, 1, "mul", "rows_in_place"),
    ("NCHW 7x7, wide heads, add", operands(2, 16, 7, 7, 3, 1, 1), 1, 1, "add", "channels_transposed"),
    ("NCHW 20x20, wide heads, add", operands(2, 16, 20, 20, 3, 1, 1), 1, 1, "add", "rows_phase_planes"),
    ("stride as large as the image", operands(1, 4, 600, 600, 3, 2, 600), 600, 1, "mul", "elementwise"),
    ("no pixels", operands(0, 4, 9, 9, 3, 1, 1), 1, 1, "mul", "empty"),
]


@pytest.mark.parametrize("name,ops,stride,dilation,combine,path", FORWARD, ids=[f[0] for f in FORWARD])
def test_forward_path_and_result(name, ops, stride, dilation, combine, path):
    x, cf, sf = ops
    plan = torch.ops.ddf._cpu_plan(x, cf, sf, stride, dilation, combine)
    assert plan.split()[0] == path, plan
    out = ddf_ops.ddf(x, cf, sf, stride, dilation, combine)
    expected = ddf_ops.reference.ddf(x.double(), cf.double(), sf.double(), stride, dilation, combine)
    torch.testing.assert_close(out.double(), expected, **TOLERANCES[x.dtype])


# (name, operands, stride, dilation, combine, grad_output layout, expected backward path)
BACKWARD = [
    ("NCHW", operands(2, 4, 11, 9, 3, 1, 1), 1, 1, "mul", False, "rows_phase_planes"),
    ("NCHW float32, wide heads, large map", operands(1, 16, 20, 20, 3, 1, 1, torch.float32), 1, 1, "mul", False, "rows_phase_planes"),
    ("NCHW, wide heads, small map", operands(2, 16, 9, 7, 3, 1, 2), 2, 1, "add", False, "channels_copied"),
    ("channels_last, wide heads", operands(2, 16, 11, 9, 3, 2, 1, channels_last=True), 1, 2, "mul", True, "channels_in_place"),
    ("channels_last input, NCHW grad_output", operands(2, 16, 11, 9, 3, 1, 1, channels_last=True), 1, 1, "mul", False, "channels_copied"),
    ("channels_last, narrow heads", operands(2, 6, 11, 9, 3, 3, 1, channels_last=True), 1, 1, "mul", True, "rows_phase_planes"),
    ("stride as large as the image", operands(1, 4, 600, 600, 3, 2, 600), 600, 1, "add", False, "elementwise"),
]


@pytest.mark.parametrize("name,ops,stride,dilation,combine,go_cl,path", BACKWARD, ids=[b[0] for b in BACKWARD])
def test_backward_path_and_result(name, ops, stride, dilation, combine, go_cl, path):
    x, cf, sf = ops
    go = rand(x.shape[0], x.shape[1], sf.shape[2], sf.shape[3], dtype=x.dtype, channels_last=go_cl, seed=4)
    mask = [True, True, True]
    plan = torch.ops.ddf._cpu_plan(x, cf, sf, stride, dilation, combine, go, mask)
    assert plan.split()[0] == path, plan
    got = torch.ops.ddf.ddf_backward(go, x, cf, sf, stride, dilation, combine, mask)
    expected = reference_grads(x, cf, sf, go, stride, dilation, combine)
    tol = TOLERANCES[x.dtype]
    for a, b in zip(got, expected):
        torch.testing.assert_close(a.double(), b, rtol=tol["rtol"], atol=tol["atol"] * max(1.0, b.abs().max().item()))


def test_backward_plan_follows_the_mask():
    # grad_input's layout matters only when it is wanted: a channels_last input with an NCHW
    # grad_input would need a copy, but without grad_input the in-place path runs.
    x, cf, sf = operands(2, 16, 11, 9, 3, 1, 1, channels_last=True)
    go = rand(2, 16, 11, 9, channels_last=True)
    assert cpu_path(x, cf, sf, go=go, mask=[False, True, True]) == "channels_in_place"
    assert cpu_path(x, cf, sf, go=go, mask=[True, True, True]) == "channels_in_place"


def test_plan_reports_parameters_and_isa():
    x, cf, sf = operands(2, 16, 11, 9, 3, 1, 1, channels_last=True)
    words = torch.ops.ddf._cpu_plan(x, cf, sf).split()
    assert words[0] == "channels_in_place"
    params = dict(w.split("=") for w in words[1:] if "=" in w)
    assert params["isa"] == torch.ops.ddf._cpu_isa()
    rows, count = map(int, params["bands"].split("x"))
    assert rows * count >= 11 > rows * (count - 1)  # the bands cover the output rows exactly
    assert int(params["pixel_stride"]) % (64 // x.element_size()) == 0 and int(params["pixel_stride"]) > 16


def test_filter_gradient_bands_do_not_follow_the_threads():
    # The channel-filter gradient sums per-band partials in band order: its bands must not
    # depend on the thread count (bitwise reproducible results); the others may.
    x, cf, sf = operands(2, 4, 40, 9, 3, 1, 1)
    go = rand(2, 4, 40, 9)
    threads = torch.get_num_threads()
    plans = []
    try:
        for n in (1, 3):
            torch.set_num_threads(n)
            words = torch.ops.ddf._cpu_plan(x, cf, sf, 1, 1, "mul", go).split()
            plans.append(dict(w.split("=") for w in words[1:] if "=" in w))
    finally:
        torch.set_num_threads(threads)
    assert plans[0]["filter_grad_bands"] == plans[1]["filter_grad_bands"]
    assert plans[0]["input_grad_bands"] != plans[1]["input_grad_bands"]


def test_plan_checks_its_arguments_as_the_op_does():
    x, cf, sf = operands(2, 4, 9, 9, 3, 1, 1)
    with pytest.raises(ValueError, match="dilation"):
        torch.ops.ddf._cpu_plan(x, cf, sf, 1, 0, "mul")
    with pytest.raises(ValueError, match="combine"):
        torch.ops.ddf._cpu_plan(x, cf, sf, 1, 1, "max")
