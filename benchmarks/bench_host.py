"""Host time per call: what the op costs the CPU thread that launches it, on a tensor so small
that the kernel is negligible (1x4x3x3, one thread), against the depth-wise conv's.

    python -m benchmarks.bench_host [--min-run-time 1.0]

On a GPU a training step whose kernels take less than this waits on the host: on an H200 the
DDF backward at B=64 and 7x7 ran 46 us of kernels in a 334 us step (benchmarks/RESULTS.md).
The grad-enabled forward runs ddf_ops' Python autograd.Function (torch.func and forward-AD
support, ddf_ops/_transforms.py); no_grad skips it.
"""

import argparse
import platform

import torch
import torch.nn.functional as F
import torch.utils.benchmark as benchmark

import ddf_ops
from benchmarks.common import markdown_table


def time_us(fn, min_run_time: float) -> float:
    for _ in range(100):
        fn()
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=1)
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1e6


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--min-run-time", type=float, default=1.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x, cf, sf = (torch.randn(*s, generator=g).requires_grad_() for s in ((1, 4, 3, 3), (1, 4, 3, 3), (1, 9, 3, 3)))
    w = torch.randn(4, 1, 3, 3, generator=g).requires_grad_()
    go = torch.ones(1, 4, 3, 3)

    def ddf():
        return ddf_ops.ddf(x, cf, sf)

    def conv():
        return F.conv2d(x, w, padding=1, groups=4)

    rows = []
    for name, fn, leaves in (("ddf (ours)", ddf, (x, cf, sf)), ("depthwise conv", conv, (x, w))):
        with torch.no_grad():
            no_grad = time_us(fn, args.min_run_time)
        forward = time_us(fn, args.min_run_time)
        step = time_us(lambda: torch.autograd.grad(fn(), leaves, go), args.min_run_time)
        rows.append([name, f"{no_grad:.0f}", f"{forward:.0f}", f"{step:.0f}"])
    print(f"# host time per call, µs (median), 1x4x3x3, one thread: {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}")
    print(markdown_table("host time (µs)", rows, ["op", "forward, no_grad", "forward, grad enabled", "forward + backward"]))


if __name__ == "__main__":
    main()
