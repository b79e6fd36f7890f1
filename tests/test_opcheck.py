"""torch.library.opcheck: schema, autograd registration, fake tensor, aot dispatch (dynamic)."""

import pytest
import torch

from conftest import DEVICES, make_inputs

ALL_CHECKS = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
CASES = [
    # k, G, stride, dilation, combine, layout, dtype
    (3, 1, 1, 1, "mul", "contiguous", torch.float64),
    (3, 2, 2, 1, "add", "contiguous", torch.float64),
    (5, 4, 3, 2, "mul", "sliced", torch.float64),
    (3, 2, 2, 1, "mul", "channels_last", torch.float32),
    (1, 1, 1, 1, "add", "expanded", torch.float32),
    (3, 1, 2, 1, "mul", "contiguous", torch.bfloat16),
]


def opcheck(op, args):
    result = torch.library.opcheck(op, args, test_utils=ALL_CHECKS)
    assert result == {name: "SUCCESS" for name in ALL_CHECKS}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("k,G,stride,dilation,combine,layout,dtype", CASES)
def test_opcheck_ddf(k, G, stride, dilation, combine, layout, dtype, device):
    x, cf, sf = make_inputs(2, 4, 7, 6, k, G, stride, dtype, device, layout, requires_grad=True)
    opcheck(torch.ops.ddf.ddf.default, (x, cf, sf, stride, dilation, combine))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mask", [[True, True, True], [True, False, False], [False, True, True], [False, False, True]])
def test_opcheck_ddf_backward(mask, device):
    x, cf, sf = make_inputs(2, 4, 7, 6, 3, 2, 2, device=device, requires_grad=True)
    go = torch.randn(2, 4, 4, 3, dtype=torch.float64, device=device, requires_grad=True)
    opcheck(torch.ops.ddf.ddf_backward.default, (go, x, cf, sf, 2, 1, "mul", mask))
