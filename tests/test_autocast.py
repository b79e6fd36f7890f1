"""Autocast: ddf runs in the autocast dtype, as convolutions do; mixed dtypes are cast."""

import pytest
import torch

import ddf_ops
from conftest import CUDA_MARKS, make_inputs


@pytest.mark.parametrize(
    "device,dtype",
    [
        ("cpu", torch.bfloat16),
        ("cpu", torch.float16),
        pytest.param("cuda", torch.float16, marks=CUDA_MARKS),
        pytest.param("cuda", torch.bfloat16, marks=CUDA_MARKS),
    ],
)
def test_autocast_runs_in_autocast_dtype(device, dtype):
    x, cf, sf = make_inputs(2, 4, 9, 8, 3, 2, 1, torch.float32, device, requires_grad=True)
    cf_half = cf.detach().to(dtype)  # mixed dtypes: an error outside autocast
    with pytest.raises(TypeError, match="same dtype as input"):
        ddf_ops.ddf(x, cf_half, sf)
    with torch.autocast(device, dtype=dtype):
        out = ddf_ops.ddf(x, cf_half, sf)
    assert out.dtype == dtype
    expected = ddf_ops.reference.ddf(x.to(dtype).double(), cf_half.double(), sf.to(dtype).double())
    torch.testing.assert_close(out.double(), expected, rtol=2e-2, atol=2e-2)
    out.float().sum().backward()  # gradients come back in the leaves' dtype
    assert x.grad.dtype == torch.float32 and sf.grad.dtype == torch.float32
