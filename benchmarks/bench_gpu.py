"""GPU benchmark: ddf against the alternatives at ResNet-50 shapes, in one run, with CUDA events.

    python -m benchmarks.bench_gpu [--batch 64] [--dtypes float32 float16 bfloat16] [--reps 50]

For each stage of ResNet-50 (B=64, k=3, NCHW) and dtype it times forward and
forward+backward of: the ddf op; cuDNN's depth-wise conv; a dense 3x3 conv; the pure-PyTorch
reference, eager and compiled by Inductor (Triton). It reports the ddf forward's achieved
DRAM bandwidth (bytes it must move / time) against a measured device-to-device copy, and
checks the targets: forward >= 70% of copy bandwidth and >= 1.5x faster than the
Inductor-compiled reference, backward <= 3x forward.
"""

import argparse
import statistics
import sys

import torch

import ddf_ops
from benchmarks.common import RESNET50_STAGES, Case, candidates, forward_backward, markdown_table

OURS = "ddf (ours)"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def time_ms(fn, reps: int) -> float:
    """Median of `reps` timings with CUDA events, after warm-up (and compilation)."""
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def copy_bandwidth_gbs(reps: int) -> float:
    """Device-to-device copy rate, counting bytes read and written."""
    src = torch.empty(512 * 2**20, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), reps)
    return 2 * src.numel() / ms / 1e6


def forward_bytes(case: Case) -> int:
    """What the forward must move at least: read input, channel and spatial filters; write output."""
    elem = torch.empty((), dtype=case.dtype).element_size()
    x = case.B * case.C * case.size**2
    return elem * (2 * x + case.B * case.C * case.k**2 + case.B * case.k**2 * case.size**2)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--dtypes", nargs="*", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--reps", type=int, default=50)
    parser.add_argument("--stages", type=int, nargs="*", default=[0, 1, 2, 3])
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench_gpu: no CUDA device", file=sys.stderr)
        return 2
    if not ddf_ops.has_cuda_kernels():
        print("bench_gpu: the library was built without CUDA kernels", file=sys.stderr)
        return 2

    copy_gbs = copy_bandwidth_gbs(args.reps)
    print(f"# GPU benchmark: {torch.cuda.get_device_name()}, torch {torch.__version__}, B={args.batch}, k=3, NCHW")
    print(f"# device-to-device copy: {copy_gbs:.0f} GB/s (read + write)")
    failures = []
    for dtype_name in args.dtypes:
        rows_fwd, rows_bwd = [], []
        for stage in args.stages:
            case = Case(args.batch, *RESNET50_STAGES[stage], dtype=DTYPES[dtype_name], device="cuda")
            with torch.no_grad():
                fwd = {n: time_ms(f, args.reps) for n, f in candidates(case, requires_grad=False).items()}
            both = {n: time_ms(forward_backward(f), args.reps) for n, f in candidates(case, requires_grad=True).items()}
            gbs = forward_bytes(case) / fwd[OURS] / 1e6
            speedup = fwd["reference (Inductor)"] / fwd[OURS]
            backward_ratio = (both[OURS] - fwd[OURS]) / fwd[OURS]
            rows_fwd.append(
                [case.label]
                + [f"{t:.3f}" for t in fwd.values()]
                + [f"{gbs:.0f} GB/s ({100 * gbs / copy_gbs:.0f}%)", f"{speedup:.2f}x"]
            )
            rows_bwd.append([case.label] + [f"{t:.3f}" for t in both.values()] + [f"{backward_ratio:.2f}x"])
            if gbs < 0.7 * copy_gbs:
                failures.append(f"{dtype_name} {case.label}: forward at {100 * gbs / copy_gbs:.0f}% of copy bandwidth")
            if speedup < 1.5:
                failures.append(f"{dtype_name} {case.label}: forward only {speedup:.2f}x faster than Inductor")
            if backward_ratio > 3:
                failures.append(f"{dtype_name} {case.label}: backward {backward_ratio:.2f}x the forward")
            print(f"  done {dtype_name} {case.label}", file=sys.stderr)
        names = list(fwd)
        print()
        print(markdown_table(f"forward, {dtype_name} (ms)", rows_fwd, ["shape"] + names + ["ours: DRAM", "Inductor / ours"]))
        print()
        print(markdown_table(f"forward + backward, {dtype_name} (ms)", rows_bwd, ["shape"] + names + ["ours: backward / forward"]))
    print()
    print("targets: " + ("all met" if not failures else "MISSED: " + "; ".join(failures)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
