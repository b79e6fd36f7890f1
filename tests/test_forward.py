"""Forward of the ddf op against the pure-PyTorch reference."""

import itertools

import pytest
import torch

import ddf_ops
from conftest import DEVICES_AND_EMULATED, TOLERANCES, make_inputs, out_size

SIZES = [(7, 10), (8, 5), (2, 3), (1, 1)]  # odd and even, and smaller than every kernel


def heads_for(C):
    return sorted({1, 2, C})


@pytest.mark.isa
@pytest.mark.parametrize("device", DEVICES_AND_EMULATED)
@pytest.mark.parametrize("combine", ["mul", "add"])
@pytest.mark.parametrize("dilation", [1, 2, 3])
@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("k", [1, 3, 5, 7])
def test_matches_reference_float64(k, stride, dilation, combine, device):
    C = 6
    for (H, W), G in itertools.product(SIZES, heads_for(C)):
        x, cf, sf = make_inputs(2, C, H, W, k, G, stride, device=device, seed=H * 100 + W + G)
        out = ddf_ops.ddf(x, cf, sf, stride, dilation, combine)
        expected = ddf_ops.reference.ddf(x, cf, sf, stride, dilation, combine)
        assert out.shape == (2, C, out_size(H, stride), out_size(W, stride))
        torch.testing.assert_close(out, expected, **TOLERANCES[torch.float64], msg=f"H={H} W={W} G={G}")


@pytest.mark.isa
@pytest.mark.parametrize("device", DEVICES_AND_EMULATED)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("combine", ["mul", "add"])
def test_reduced_precision_dtypes(dtype, combine, device):
    for k, stride, G in [(3, 1, 1), (5, 2, 2), (3, 3, 4)]:
        x, cf, sf = make_inputs(2, 4, 13, 11, k, G, stride, dtype=dtype, device=device)
        out = ddf_ops.ddf(x, cf, sf, stride, 1, combine)
        assert out.dtype == dtype
        # The reference in float64 on the same (rounded) inputs: only our output rounding differs.
        expected = ddf_ops.reference.ddf(x.double(), cf.double(), sf.double(), stride, 1, combine)
        torch.testing.assert_close(out.double(), expected, **TOLERANCES[dtype])


@pytest.mark.isa
@pytest.mark.parametrize("device", DEVICES_AND_EMULATED)
@pytest.mark.parametrize("layout", ["channels_last", "sliced", "expanded"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
def test_any_strides(layout, dtype, device):
    for k, stride, dilation, G in [(3, 1, 1, 1), (3, 2, 2, 2), (5, 3, 1, 4)]:
        x, cf, sf = make_inputs(3, 4, 9, 8, k, G, stride, dtype=dtype, device=device, layout=layout)
        if layout == "sliced":
            assert not any(t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last) for t in (x, cf, sf))
        out = ddf_ops.ddf(x, cf, sf, stride, dilation)
        expected = ddf_ops.reference.ddf(x.double(), cf.double(), sf.double(), stride, dilation)
        torch.testing.assert_close(out.double(), expected, **TOLERANCES[dtype])


@pytest.mark.parametrize("device", DEVICES_AND_EMULATED)
def test_output_layout_follows_input(device):
    x, cf, sf = make_inputs(2, 4, 6, 6, device=device, layout="channels_last")
    assert ddf_ops.ddf(x, cf, sf).is_contiguous(memory_format=torch.channels_last)
    x, cf, sf = make_inputs(2, 4, 6, 6, device=device, layout="sliced")
    assert ddf_ops.ddf(x, cf, sf).is_contiguous()


@pytest.mark.parametrize("device", DEVICES_AND_EMULATED)
@pytest.mark.parametrize("shape", [(0, 4, 5, 5), (2, 0, 5, 5), (2, 4, 0, 5), (2, 4, 5, 0)])
def test_empty(shape, device):
    B, C, H, W = shape
    x, cf, sf = make_inputs(B, C, H, W, 3, 1 if C == 0 else 2, 2, device=device)
    out = ddf_ops.ddf(x, cf, sf, 2)
    assert out.shape == (B, C, out_size(H, 2), out_size(W, 2))


@pytest.mark.isa
@pytest.mark.parametrize("device", DEVICES_AND_EMULATED)
def test_special_cases_of_the_op(device):
    """cf = 1 ("mul") / 0 ("add") is a pure spatial (involution-like) filter; sf = 1 / 0 a
    dynamic depth-wise convolution, which for one filter per channel is F.conv2d."""
    x, cf, sf = make_inputs(1, 4, 9, 7, k=3, G=1, device=device)
    weight = cf[0].unsqueeze(1)  # (C, 1, k, k)
    conv = torch.nn.functional.conv2d(x, weight, padding=2, dilation=2, groups=4)
    torch.testing.assert_close(ddf_ops.ddf(x, cf, torch.ones_like(sf), 1, 2, "mul"), conv)
    torch.testing.assert_close(ddf_ops.ddf(x, cf, torch.zeros_like(sf), 1, 2, "add"), conv)
    unfold = torch.nn.functional.unfold(x, 3, padding=1).view(1, 4, 9, 9, 7)
    spatial_only = (unfold * sf.view(1, 1, 9, 9, 7)).sum(2)
    torch.testing.assert_close(ddf_ops.ddf(x, torch.ones_like(cf), sf), spatial_only)
    torch.testing.assert_close(ddf_ops.ddf(x, torch.zeros_like(cf), sf, combine="add"), spatial_only)


@pytest.mark.isa
def test_deterministic_across_runs_and_threads():
    x, cf, sf = make_inputs(2, 8, 31, 29, 5, 2, 2, dtype=torch.float32)
    first = ddf_ops.ddf(x, cf, sf, 2, 2)
    threads = torch.get_num_threads()
    try:
        for n in (1, max(2, threads)):
            torch.set_num_threads(n)
            assert torch.equal(ddf_ops.ddf(x, cf, sf, 2, 2), first)
    finally:
        torch.set_num_threads(threads)
