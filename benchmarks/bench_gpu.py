"""GPU benchmark: ddf against the alternatives at ResNet-50 shapes, in one run, with CUDA events.

    python -m benchmarks.bench_gpu [--batch 64] [--dtypes float32 float16 bfloat16] [--reps 50]
                                   [--layouts nchw channels_last] [--inductor-stages 0 1 2 3]

For each stage of ResNet-50 (B=64, k=3), layout and dtype it times forward and
forward+backward of: the ddf op (and names the CUDA path it took); cuDNN's depth-wise conv; a
dense 3x3 conv; the pure-PyTorch reference, eager and (at --inductor-stages: each compile takes
seconds) compiled by Inductor (Triton). It reports the ddf forward's achieved DRAM bandwidth
(bytes it must move / time) against a measured device-to-device copy, and checks the targets:
forward >= 70% of copy bandwidth and >= 1.5x faster than the Inductor-compiled reference,
backward <= 3x forward.
"""

import argparse
import itertools
import statistics
import sys

import torch

import ddf_ops
from benchmarks.common import RESNET50_STAGES, Case, candidates, ddf_inputs, forward_backward, markdown_table

OURS = "ddf (ours)"
INDUCTOR = "reference (Inductor)"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def time_ms(fn, reps: int, calls: int = 10) -> float:
    """Median over `reps` samples, with CUDA events, of the time per call of `calls` calls made
    back to back, after warm-up (and compilation). Back to back, as in a training step: the
    host launches the next call while the GPU runs this one, so a call costs its GPU time
    unless the host takes longer to launch it. (One call between two events, on an idle GPU,
    adds the host's launch latency to every sample: at 7x7 that was most of the figure.)"""
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / calls)
    return statistics.median(times)


def copy_bandwidth_gbs(reps: int) -> float:
    """Device-to-device copy rate, counting bytes read and written."""
    src = torch.empty(512 * 2**20, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), reps, calls=1)
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
    parser.add_argument("--layouts", nargs="*", default=["nchw", "channels_last"], choices=["nchw", "channels_last"])
    parser.add_argument("--inductor-stages", type=int, nargs="*", default=[0, 1, 2, 3])
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench_gpu: no CUDA device", file=sys.stderr)
        return 2
    if not ddf_ops.has_cuda_kernels():
        print("bench_gpu: the library was built without CUDA kernels", file=sys.stderr)
        return 2

    copy_gbs = copy_bandwidth_gbs(args.reps)
    print(f"# GPU benchmark: {torch.cuda.get_device_name()}, torch {torch.__version__}, B={args.batch}, k=3, s=1, d=1, one head, mul")
    print(f"# device-to-device copy: {copy_gbs:.0f} GB/s (read + write)")
    failures = []
    for layout, dtype_name in itertools.product(args.layouts, args.dtypes):
        rows_fwd, rows_bwd = [], []
        names = []
        for stage in args.stages:
            case = Case(args.batch, *RESNET50_STAGES[stage], dtype=DTYPES[dtype_name], device="cuda", channels_last=layout == "channels_last")
            with_inductor = stage in args.inductor_stages

            def timed(requires_grad):
                calls = candidates(case, requires_grad=requires_grad)
                if not with_inductor:
                    calls.pop(INDUCTOR)
                wrap = forward_backward if requires_grad else (lambda f: f)
                with torch.set_grad_enabled(requires_grad):
                    return {n: time_ms(wrap(f), args.reps) for n, f in calls.items()}

            fwd, both = timed(False), timed(True)
            names = names if len(names) > len(fwd) else list(fwd)
            x, cf, sf = ddf_inputs(case, requires_grad=False)
            go = torch.ones_like(x)
            path = torch.ops.ddf._cuda_plan(x, cf, sf, 1, 1, "mul", None)
            backward_path = torch.ops.ddf._cuda_plan(x, cf, sf, 1, 1, "mul", go)
            gbs = forward_bytes(case) / fwd[OURS] / 1e6
            backward_ratio = (both[OURS] - fwd[OURS]) / fwd[OURS]
            speedup = fwd[INDUCTOR] / fwd[OURS] if INDUCTOR in fwd else None
            rows_fwd.append(
                [case.label, path]
                + [f"{fwd[n]:.3f}" if n in fwd else "-" for n in names]
                + [f"{gbs:.0f} GB/s ({100 * gbs / copy_gbs:.0f}%)", f"{speedup:.2f}x" if speedup else "-"]
            )
            rows_bwd.append([case.label, backward_path] + [f"{both[n]:.3f}" if n in both else "-" for n in names] + [f"{backward_ratio:.2f}x"])
            label = f"{dtype_name} {case.label}"
            if gbs < 0.7 * copy_gbs:
                failures.append(f"{label}: forward at {100 * gbs / copy_gbs:.0f}% of copy bandwidth")
            if speedup is not None and speedup < 1.5:
                failures.append(f"{label}: forward only {speedup:.2f}x faster than Inductor")
            if backward_ratio > 3:
                failures.append(f"{label}: backward {backward_ratio:.2f}x the forward")
            print(f"  done {label}", file=sys.stderr)
        print()
        print(markdown_table(f"forward, {layout}, {dtype_name} (ms)", rows_fwd, ["shape", "ours: path"] + names + ["ours: DRAM", "Inductor / ours"]))
        print()
        print(markdown_table(f"forward + backward, {layout}, {dtype_name} (ms)", rows_bwd, ["shape", "ours: path"] + names + ["ours: backward / forward"]))
        sys.stdout.flush()
    print()
    print("targets: " + ("all met" if not failures else "MISSED: " + "; ".join(failures)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
