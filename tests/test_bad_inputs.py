"""Bad input raises a clear error naming the argument, the expected and the actual value,
the same on every device (the meta kernel shares the checks), and never crashes."""

import re

import pytest
import torch

import ddf_ops
from conftest import CUDA_AVAILABLE, CUDA_MARKS, requires_cuda

# Devices whose kernels must reject bad input. "meta" runs the meta kernel, which is
# what fake tensors, torch.compile and torch.export see.
CHECK_DEVICES = ["cpu", "meta", pytest.param("cuda", marks=CUDA_MARKS)]


def good(device, dtype=torch.float32):
    x = torch.randn(2, 4, 7, 6, dtype=dtype, device=device)
    cf = torch.randn(2, 4, 3, 3, dtype=dtype, device=device)
    sf = torch.randn(2, 18, 4, 3, dtype=dtype, device=device)  # 2 heads, stride 2
    return x, cf, sf


def replaced(device, **changes):
    """Good arguments (stride 2) with some replaced; tensors given as shapes or tensors."""
    x, cf, sf = good(device)
    args = dict(input=x, channel_filter=cf, spatial_filter=sf, stride=2, dilation=1, combine="mul")
    for name, value in changes.items():
        if isinstance(value, tuple):
            value = torch.randn(*value, device=device)
        args[name] = value
    return args


# (case id, changes, exception type, regex of the message)
CASES = [
    ("input rank", dict(input=(4, 7, 6)), ValueError, r"input to be a 4-D tensor \(B, C, H, W\), but got a 3-D tensor of shape \[4, 7, 6\]"),
    ("channel_filter rank", dict(channel_filter=(2, 4, 9)), ValueError, r"channel_filter to be a 4-D tensor .* 3-D tensor"),
    ("spatial_filter rank", dict(spatial_filter=(2, 18, 12)), ValueError, r"spatial_filter to be a 4-D tensor .* 3-D tensor"),
    ("batch of channel_filter", dict(channel_filter=(3, 4, 3, 3)), ValueError, r"channel_filter.size\(0\) to equal the batch size input.size\(0\) = 2, but got channel_filter of shape \[3, 4, 3, 3\]"),
    ("channels of channel_filter", dict(channel_filter=(2, 5, 3, 3)), ValueError, r"channel_filter.size\(1\) to equal the channels input.size\(1\) = 4, but got channel_filter of shape \[2, 5, 3, 3\]"),
    ("batch of spatial_filter", dict(spatial_filter=(1, 18, 4, 3)), ValueError, r"spatial_filter.size\(0\) to equal the batch size input.size\(0\) = 2, but got spatial_filter of shape \[1, 18, 4, 3\]"),
    ("spatial size", dict(spatial_filter=(2, 18, 3, 3)), ValueError, r"spatial_filter to have spatial size \(Ho, Wo\) = \(4, 3\) for input \(H, W\) = \(7, 6\) and stride 2, but got spatial_filter of shape \[2, 18, 3, 3\]"),
    ("floor output size", dict(spatial_filter=(2, 18, 3, 3), stride=2), ValueError, r"\(Ho, Wo\) = \(4, 3\)"),
    ("even kernel", dict(channel_filter=(2, 4, 4, 4), spatial_filter=(2, 32, 4, 3)), ValueError, r"odd kernel size k = channel_filter.size\(2\) >= 1, but got k = 4"),
    ("non-square kernel", dict(channel_filter=(2, 4, 3, 5)), ValueError, r"square k x k filters .* shape \[2, 4, 3, 5\]"),
    ("empty kernel", dict(channel_filter=(2, 4, 0, 0)), ValueError, r"odd kernel size .* but got k = 0"),
    ("spatial channels not a multiple of k*k", dict(spatial_filter=(2, 10, 4, 3)), ValueError, r"spatial_filter.size\(1\) to be a positive multiple G\*k\*k of k\*k = 9 \(G heads\), but got spatial_filter of shape \[2, 10, 4, 3\]"),
    ("zero heads", dict(spatial_filter=(2, 0, 4, 3)), ValueError, r"positive multiple G\*k\*k of k\*k = 9"),
    ("heads not dividing C", dict(spatial_filter=(2, 27, 4, 3)), ValueError, r"heads G = spatial_filter.size\(1\) / \(k\*k\) = 3 to divide the channels C = input.size\(1\) = 4"),
    ("stride 0", dict(stride=0), ValueError, r"stride >= 1, but got 0"),
    ("negative dilation", dict(dilation=-1), ValueError, r"dilation >= 1, but got -1"),
    ("unknown combine", dict(combine="max"), ValueError, r'combine to be "mul" or "add", but got "max"'),
]


@pytest.mark.parametrize("device", CHECK_DEVICES)
@pytest.mark.parametrize("case,changes,exc,message", CASES, ids=[c[0] for c in CASES])
def test_bad_argument(case, changes, exc, message, device):
    with pytest.raises(exc, match=message) as info:
        ddf_ops.ddf(**replaced(device, **changes))
    assert str(info.value).startswith("ddf: expected ")


@pytest.mark.parametrize("device", CHECK_DEVICES)
def test_mixed_dtypes(device):
    x, cf, sf = good(device)
    with pytest.raises(TypeError, match=r"expected spatial_filter to have the same dtype as input \(Float\), but got Double"):
        ddf_ops.ddf(x, cf, sf.double(), 2)


@pytest.mark.parametrize("device", CHECK_DEVICES)
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.complex64], ids=str)
def test_unsupported_dtypes(dtype, device):
    x, cf, sf = (t.to(dtype) for t in good(device))
    with pytest.raises(TypeError, match=r"expected input to have a floating-point dtype \(float32, float64, float16 or bfloat16\), but got"):
        ddf_ops.ddf(x, cf, sf, 2)


def test_tensors_on_different_devices():
    x, cf, sf = good("cpu")
    with pytest.raises(ValueError, match=r"expected channel_filter to be on the same device as input \(meta\), but got cpu"):
        ddf_ops.ddf(x.to("meta"), cf, sf.to("meta"), 2)


@requires_cuda
def test_cpu_cuda_mix():
    x, cf, sf = good("cpu")
    with pytest.raises(ValueError, match=r"expected spatial_filter to be on the same device as input \(cuda:0\), but got cpu"):
        ddf_ops.ddf(x.cuda(), cf.cuda(), sf, 2)


@pytest.mark.parametrize("device", CHECK_DEVICES)
def test_bad_grad_output(device):
    x, cf, sf = good(device)
    go = torch.randn(2, 4, 7, 6, device=device)
    with pytest.raises(ValueError, match=r"expected grad_output to have the output shape \(B, C, Ho, Wo\) = \(2, 4, 4, 3\), but got \[2, 4, 7, 6\]"):
        torch.ops.ddf.ddf_backward(go, x, cf, sf, 2, 1, "mul", [True, True, True])


def test_errors_match_across_devices():
    """The meta kernel (fake tensors) reports exactly what the CPU kernel reports."""
    for _, changes, exc, _ in CASES:
        messages = []
        for device in ["cpu", "meta"] + (["cuda"] if CUDA_AVAILABLE else []):
            with pytest.raises(exc) as info:
                ddf_ops.ddf(**replaced(device, **changes))
            messages.append(re.sub(r"\n.*", "", str(info.value), flags=re.S))
        assert len(set(messages)) == 1, messages


def test_reference_rejects_unknown_combine():
    x, cf, sf = good("cpu")
    with pytest.raises(ValueError, match="combine"):
        ddf_ops.reference.ddf(x, cf, sf, 2, 1, "max")
