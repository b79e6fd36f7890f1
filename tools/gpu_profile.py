"""What `make gpu-check` profiles with Nsight Compute (GPU_PROFILE=1): one forward and one
backward of ddf at ResNet-50's shapes (B=64, k=3, s=1, one head, mul), in both layouts,
float32 and bfloat16 (the arguments narrow this down, for a closer look at a few kernels). It
prints each call before making it, so that ncu's rows (one per kernel launch, in launch order)
can be matched to the calls.

    python -m tools.gpu_profile [--stages 0 1 2 3] [--layouts nchw channels_last]
                                [--dtypes float32 bfloat16] [--forward-only]
    python -m tools.gpu_profile --summarize LOG   # ncu's --csv rows in LOG: a table per kernel
"""

import argparse
import csv
import itertools
import re
import sys

import torch

import ddf_ops
from benchmarks.common import RESNET50_STAGES, Case, ddf_inputs

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def summarize(lines) -> str:
    """ncu's output with --csv (one row per metric of each launch, after the program's own
    output) -> the calls this script made, in order, then a markdown table with a row per
    launch in launch order (a forward is one launch; a backward two to four, then the next
    call's). With --csv, ncu does not say which launch came from which call."""
    launches, calls = {}, []
    for line in lines:
        if line.startswith("call: "):
            calls.append(line[len("call: "):].strip())
            continue
        row = next(csv.reader([line]), [])
        if len(row) == 15 and row[0].isdigit():
            launch = launches.setdefault(int(row[0]), {"kernel": re.sub(r"\(.*", "", row[4]).replace("void ", "")})
            launch[row[12]] = float(row[14].replace(",", ""))
    out = [f"{i}. {c}" for i, c in enumerate(calls, 1)] + [
        "",
        "| # | kernel | µs | DRAM read MB | warp instructions (M) | achieved occupancy | registers |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, m in sorted(launches.items()):
        out.append(
            f"| {i} | {m['kernel']} | {m.get('gpu__time_duration.sum', 0) / 1e3:.1f} | "
            f"{m.get('dram__bytes_read.sum', 0) / 1e6:.1f} | {m.get('smsp__inst_executed.sum', 0) / 1e6:.2f} | "
            f"{m.get('sm__warps_active.avg.pct_of_peak_sustained_active', 0):.0f}% | "
            f"{m.get('launch__registers_per_thread', 0):.0f} |"
        )
    return "\n".join(out)


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--summarize":
        with open(sys.argv[2], encoding="utf-8", errors="replace") as f:
            print(summarize(f))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", type=int, nargs="*", default=[0, 1, 2, 3])
    parser.add_argument("--layouts", nargs="*", default=["nchw", "channels_last"], choices=["nchw", "channels_last"])
    parser.add_argument("--dtypes", nargs="*", default=["float32", "bfloat16"], choices=list(DTYPES))
    parser.add_argument("--forward-only", action="store_true")
    args = parser.parse_args()
    for layout, dtype_name, stage in itertools.product(args.layouts, args.dtypes, args.stages):
        dtype = DTYPES[dtype_name]
        case = Case(64, *RESNET50_STAGES[stage], dtype=dtype, device="cuda", channels_last=layout == "channels_last")
        x, cf, sf = ddf_inputs(case, requires_grad=not args.forward_only)
        memory_format = torch.channels_last if case.channels_last else torch.contiguous_format
        go = torch.randn(x.shape, device="cuda", dtype=dtype).contiguous(memory_format=memory_format)
        torch.cuda.synchronize()
        print(f"call: forward {layout} {dtype} {case.label}: {torch.ops.ddf._cuda_plan(x, cf, sf, 1, 1, 'mul', None)}", flush=True)
        out = ddf_ops.ddf(x, cf, sf)
        torch.cuda.synchronize()
        if not args.forward_only:
            print(f"call: backward {layout} {dtype} {case.label}: {torch.ops.ddf._cuda_plan(x, cf, sf, 1, 1, 'mul', go)}", flush=True)
            torch.autograd.grad(out, (x, cf, sf), go)
            torch.cuda.synchronize()


if __name__ == "__main__":
    main()
