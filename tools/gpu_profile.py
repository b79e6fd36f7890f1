"""What `make gpu-check` profiles with Nsight Compute (GPU_PROFILE=1): one forward and one
backward of ddf at each of ResNet-50's four shapes (B=64, k=3, s=1, one head, mul), in both
layouts, float32 and bfloat16. It prints each call before making it, so that ncu's rows (one per
kernel launch, in launch order) can be matched to the calls."""

import itertools

import torch

import ddf_ops
from benchmarks.common import RESNET50_STAGES, Case, ddf_inputs


def main():
    for layout, dtype, (C, size) in itertools.product(("nchw", "channels_last"), (torch.float32, torch.bfloat16), RESNET50_STAGES):
        case = Case(64, C, size, dtype=dtype, device="cuda", channels_last=layout == "channels_last")
        x, cf, sf = ddf_inputs(case, requires_grad=True)
        go = torch.randn(x.shape, device="cuda", dtype=dtype).contiguous(memory_format=x.suggest_memory_format())
        torch.cuda.synchronize()
        print(f"call: forward {layout} {dtype} {case.label}: {torch.ops.ddf._cuda_plan(x, cf, sf, 1, 1, 'mul', None)}", flush=True)
        out = ddf_ops.ddf(x, cf, sf)
        torch.cuda.synchronize()
        print(f"call: backward {layout} {dtype} {case.label}: {torch.ops.ddf._cuda_plan(x, cf, sf, 1, 1, 'mul', go)}", flush=True)
        torch.autograd.grad(out, (x, cf, sf), go)
        torch.cuda.synchronize()

if __name__ == "__main__":
    main()
