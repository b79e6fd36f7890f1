"""CPU benchmark: ddf against the alternatives a user has, at ResNet-50 shapes, in one run.

    python -m benchmarks.bench_cpu [--batch 8] [--min-run-time 1.0] [--stages 0 1 2 3]

For each stage of ResNet-50 (B=8, k=3, float32, NCHW) it times forward and forward+backward
of: the ddf op; oneDNN's depth-wise conv (what the paper says DDF should cost about the
same as); a dense 3x3 conv; the pure-PyTorch reference, eager and compiled by Inductor.
Ratios are taken against our op within the same run (torch.utils.benchmark, median).
"""

import argparse
import platform
import sys

import torch
import torch.utils.benchmark as benchmark

from benchmarks.common import RESNET50_STAGES, Case, candidates, forward_backward, markdown_table
from benchmarks.plot import DEFAULT_PATH as PLOT_PATH, plot_or_explain

OURS = "ddf (ours)"


def time_ms(fn, min_run_time: float) -> float:
    for _ in range(3):  # warm-up (and Inductor compilation)
        fn()
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1e3


def run(case: Case, backward: bool, min_run_time: float):
    fns = candidates(case, requires_grad=backward)
    times = {}
    for name, fn in fns.items():
        times[name] = time_ms(forward_backward(fn) if backward else fn, min_run_time)
        print(f"  {case.label} {'fwd+bwd' if backward else 'fwd'} {name}: {times[name]:.3f} ms", file=sys.stderr)
    return times


def table(cases, results, title):
    names = list(results[0].keys())
    header = ["shape"] + [f"{n} ms" for n in names] + [f"ours / {n}" for n in names if n != OURS]
    rows = []
    for case, times in zip(cases, results):
        ours = times[OURS]
        rows.append(
            [case.label]
            + [f"{times[n]:.3f}" for n in names]
            + [f"{ours / times[n]:.2f}x" for n in names if n != OURS]
        )
    return markdown_table(title, rows, header)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--min-run-time", type=float, default=1.0, help="seconds of timing per measurement")
    parser.add_argument("--stages", type=int, nargs="*", default=[0, 1, 2, 3], help="ResNet-50 stages (0-3)")
    parser.add_argument(
        "--no-layouts", dest="layouts", action="store_false", help="only the NCHW B=8 rows (no channels_last, B=1)"
    )
    parser.add_argument("--plot", default=PLOT_PATH, help="PNG of the ratio tables ('' for none; needs matplotlib)")
    args = parser.parse_args()

    stages = [RESNET50_STAGES[i] for i in args.stages]
    cases = [Case(args.batch, *st) for st in stages]
    if args.layouts:
        # channels_last inputs (all three tensors), and B=1 inference (latency).
        cases += [Case(args.batch, *st, channels_last=True) for st in stages]
        cases += [Case(1, *st) for st in stages]
    print(
        f"# CPU benchmark: {platform.processor() or platform.machine()}, ISA of the ddf kernels "
        f"{torch.ops.ddf._cpu_isa()} (ATen: {torch.backends.cpu.get_cpu_capability()}; set ATEN_CPU_CAPABILITY="
        f"avx2/default to force a lower one), {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"B={args.batch} unless the row says, k=3, float32, NCHW unless the row says"
    )
    with torch.no_grad():
        fwd = [run(c, False, args.min_run_time) for c in cases]
    # Training rows: NCHW and channels_last at B=8 (B=1 is an inference case).
    train_cases = [c for c in cases if c.B == args.batch]
    fwd_bwd = [run(c, True, args.min_run_time) for c in train_cases]
    print()
    print(table(cases, fwd, "forward"))
    print()
    print(table(train_cases, fwd_bwd, "forward + backward"))
    if args.plot:
        title = (
            f"{platform.processor() or platform.machine()}, ddf kernels {torch.ops.ddf._cpu_isa()}, "
            f"{torch.get_num_threads()} threads, torch {torch.__version__}, B={args.batch}"
        )
        plot_or_explain([c.label for c in train_cases], fwd[: len(train_cases)], fwd_bwd, args.plot, title)


if __name__ == "__main__":
    main()
