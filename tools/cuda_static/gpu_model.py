"""Static performance model of the CUDA kernels: estimates, not measurements.

    python -m tools.cuda_static.gpu_model [--library PATH] [--markdown]

No GPU is needed (none was available when this was written). For the ResNet-50 DDF shapes
(B=64; 64@56², 128@28², 256@14², 512@7²; k=3, stride 1, one head) in float32 and float16, it
prints, for the landed generic kernels and the tiled kernels side by side:

  * min DRAM bytes: every tensor a kernel reads or writes, once;
  * bytes moved: what the design reads and writes, counting its re-reads (the spatial
    filter once per channel split, the float partial sums of the filter gradients, the
    staged halos, which are counted as L2 traffic, not DRAM);
  * SASS instructions per output: the tiled kernels' inner loop, read from cuobjdump (the
    loop that writes an output, or reduces a (pixel, channel) term), plus the staging loop
    times the halo elements per output, plus the per-step code divided over the step's
    outputs. The generic kernels' figures are the per-element counts of issue 8's analysis;
  * registers (cubin) and theoretical occupancy with the launch's real shared memory (the
    tiled launches' blocks, grids and shared memory are the library's own plan,
    torch.ops.ddf._cuda_tiled_plan, so the library is loaded);
  * the estimated time: the larger of DRAM bytes / achievable bandwidth and instructions /
    issue rate, where achievable bandwidth is min(3.35 TB/s, bytes in flight / latency)
    (Little's law, from occupancy, the launch's blocks and the loads each thread keeps in
    flight), and a launch of fewer blocks than SMs issues on fewer SMs; hence the
    fraction of H100 DRAM bandwidth (3.35 TB/s) and the backward/forward ratio.

Every figure is an estimate from the cubin and this model; `make gpu-check` on a GPU measures
the real ones (benchmarks/bench_gpu.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import subprocess
import sys
from typing import Dict, List, Optional, Tuple

from tools.cuda_static import cuda_resources as cr

# H100 SXM5: DRAM bandwidth, SMs, sustained clock under load, warp instructions issued per
# SM per clock (4 sub-partitions), and a loaded DRAM latency for Little's law.
DRAM_BW = 3.35e12
SMS = 132
CLOCK_HZ = 1.755e9
ISSUE_PER_SM_CLOCK = 4
DRAM_LATENCY_S = 700e-9
THREAD_INSTR_PER_S = SMS * ISSUE_PER_SM_CLOCK * CLOCK_HZ * 32

SHAPES = [(64, 56), (128, 28), (256, 14), (512, 7)]  # (channels, map size), ResNet-50 stages
BATCH = 64
K = 3

# Per-element SASS of the generic kernels (issue 8, sm_90): forward and grad_input per
# element, grad_spatial per (pixel, channel) of a head plus a per-element part, grad_channel
# per (pixel, tap) term.
GENERIC_SASS = {"forward": 850, "grad_input": 1250, "grad_spatial": (14, 150), "grad_channel": 191}


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@dataclasses.dataclass
class Plan:
    tx: int
    ty: int
    tz: int
    ch: int
    rows: int
    halo_h: int
    halo_w: int
    tiles: int
    splits: int
    split_channels: int
    shared_bytes: int


def load_library(path: Optional[str] = None) -> None:
    """Loads the ddf library into this process unless one is loaded already: `path` (the
    library whose cubins are modelled), else ddf_ops' own (or $DDF_OPS_LIBRARY)."""
    import torch

    if hasattr(torch.ops.ddf, "ddf"):
        return
    if path:
        torch.ops.load_library(path)
    else:
        import ddf_ops  # noqa: F401  (loads the library)


def plan_tiled(kernel: str, B: int, C: int, H: int, W: int, k: int, G: int, s: int, d: int) -> Optional[Plan]:
    """The tiled plan of one call (kernel: forward, grad_input or filter_grads), or None when
    the call takes the generic kernels. The library computes it (torch.ops.ddf._cuda_tiled_plan,
    csrc/cuda/ddf_cuda_tiled_plan.h), so the model sizes the launches a GPU really gets."""
    import torch

    load_library()
    if not hasattr(torch.ops.ddf, "_cuda_tiled_plan"):
        raise RuntimeError("the loaded ddf library has no _cuda_tiled_plan op (built before it was added): "
                           "rebuild it (make build)")
    fields = torch.ops.ddf._cuda_tiled_plan(kernel, B, C, H, W, k, G, s, d)
    return Plan(*fields[1:]) if fields[0] else None


# --------------------------------------------------------------------------- SASS loops


@dataclasses.dataclass
class Loop:
    start: int
    end: int
    ops: List[str]
    children: List["Loop"] = dataclasses.field(default_factory=list)

    def has(self, *names: str) -> bool:
        return all(any(op.startswith(n) for op in self.ops) for n in names)

    @property
    def size(self) -> int:
        return len(self.ops)

    @property
    def own(self) -> int:
        return self.size - sum(c.size for c in self.children)


_INSN = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);", re.M)


def sass_functions(text: str) -> Dict[str, List[Tuple[int, str, str]]]:
    """cuobjdump -sass text of one arch -> mangled name -> [(address, opcode, operands)]."""
    funcs: Dict[str, List[Tuple[int, str, str]]] = {}
    parts = re.split(r"\n\s*Function : (\S+)", text)
    for name, body in zip(parts[1::2], parts[2::2]):
        funcs[name] = [(int(a, 16), op, rest) for a, op, rest in _INSN.findall(body)]
    return funcs


def loops_of(insns: List[Tuple[int, str, str]]) -> List[Loop]:
    """The loops (backward branches) of one function, nested by address range; outermost first."""
    spans = []
    for addr, op, rest in insns:
        m = re.search(r"0x([0-9a-f]+)", rest)
        if op.startswith("BRA") and m and int(m.group(1), 16) <= addr:
            spans.append((int(m.group(1), 16), addr))
    loops = [Loop(a, b, [op for x, op, _ in insns if a <= x <= b]) for a, b in sorted(set(spans))]
    roots: List[Loop] = []
    for lp in sorted(loops, key=lambda l: (l.start, -l.end)):
        parent = None
        for cand in loops:
            if cand is not lp and cand.start <= lp.start and lp.end <= cand.end and (cand.start, cand.end) != (lp.start, lp.end):
                if parent is None or parent.size > cand.size:
                    parent = cand
        (parent.children if parent else roots).append(lp)
    return roots


def walk(loops: List[Loop]):
    for lp in loops:
        yield lp
        yield from walk(lp.children)


@dataclasses.dataclass
class TiledSass:
    inner: int  # instructions of the inner loop, per iteration
    staging: int  # instructions of the staging loop, per element (all channels of a step)
    step: int  # instructions of the step loop outside its nested loops (once per step)


def tiled_sass(insns: List[Tuple[int, str, str]], reducing: bool) -> TiledSass:
    """The tiled kernel's three costs. reducing: the filter-gradient kernel, whose inner loop
    reduces with warp shuffles instead of writing an output."""
    roots = loops_of(insns)
    every = list(walk(roots))
    mark = "SHFL" if reducing else "STG"
    inner = [lp for lp in every if not lp.children and lp.has(mark) and lp.has("LDS")]
    staging = [lp for lp in every if not lp.children and lp.has("LDG") and lp.has("STS") and not lp.has("VOTE.ANY")]
    if not inner or not staging:
        raise ValueError("unexpected loop structure: the model needs updating for this kernel")
    fast = min(inner, key=lambda l: l.size)
    stage = max(staging, key=lambda l: l.size)
    # The step loop: the smallest loop with a barrier around both (the compiler also peels
    # and rotates copies of it, which do not nest them).
    steps = [l for l in every if l.has("BAR") and l.start <= min(fast.start, stage.start)
             and max(fast.end, stage.end) <= l.end]
    if not steps:
        raise ValueError("no step loop around the inner and the staging loops")
    step = min(steps, key=lambda l: l.size)
    # Its own code: what no loop inside its range covers (ranges, not the parent links: the
    # rotated copies overlap, so a loop inside may hang under another parent).
    covered = set()
    for lp in every:
        if lp is not step and step.start <= lp.start and lp.end <= step.end:
            covered.update(range(lp.start, lp.end + 1, 16))
    own = sum(1 for a, _, _ in insns if step.start <= a <= step.end and a not in covered)
    return TiledSass(fast.size, stage.size, own)


# --------------------------------------------------------------------------- model


@dataclasses.dataclass
class Row:
    shape: str
    dtype: str
    design: str
    kernel: str
    min_bytes: float
    moved_bytes: float
    sass_per_output: float  # estimated total per output
    inner_per_output: float  # the inner loop alone (cuobjdump)
    outputs: int
    registers: int
    occupancy: float
    time_s: float

    @property
    def bw_fraction(self) -> float:
        return self.moved_bytes / self.time_s / DRAM_BW


def estimate_time(moved: float, instr_total: float, occupancy: float, loads_in_flight: float, e: int,
                  blocks: Optional[int] = None, threads: int = 256) -> float:
    """max(bytes / achievable bandwidth, instructions / issue rate). A launch of fewer blocks
    than the GPU holds keeps fewer threads resident (less in flight) and, below one block
    per SM, leaves SMs idle."""
    resident_threads = occupancy * 2048 * SMS
    issue = THREAD_INSTR_PER_S
    if blocks is not None:
        resident_threads = min(resident_threads, blocks * threads)
        issue *= min(1.0, blocks / SMS)
    achievable = min(DRAM_BW, resident_threads * loads_in_flight * e / DRAM_LATENCY_S)
    return max(moved / achievable, instr_total / issue)


def occupancy_of(regs: int, threads: int, static_smem: int, dynamic: int) -> float:
    lim = cr.limits_for("sm_90")
    return cr.occupancy(regs, threads, static_smem, lim, dynamic_smem=dynamic).fraction


def model(funcs, res, dtype: str) -> List[Row]:
    e = 4 if dtype == "float32" else 2
    tag = "f" if dtype == "float32" else "6__half"
    kk = K * K
    rows: List[Row] = []

    def fn(pattern: str) -> str:
        names = [n for n in funcs if re.search(pattern, n)]
        if len(names) != 1:
            raise ValueError(f"{len(names)} kernels match {pattern}")
        return names[0]

    def usage(name: str) -> Tuple[int, int]:
        for f in res.functions:
            if f.arch == "sm_90" and f.name == name:
                return f.registers, f.shared
        raise ValueError(f"no sm_90 resource usage for {name}")

    for C, S in SHAPES:
        B = BATCH
        x = out = B * C * S * S
        sf = B * kk * S * S
        cf = B * C * kk
        shape = f"{C}@{S}²"

        # Generic kernels: one thread per element, every tensor read once from DRAM (the
        # caches absorb the tap re-reads), one load in flight per thread.
        def generic(kernel: str, pattern: str, min_b: float, outputs: int, sass: float) -> None:
            regs, smem = usage(fn(pattern))
            occ = occupancy_of(regs, 256, smem, 0)
            t = estimate_time(min_b, sass * outputs, occ, 1, e)
            rows.append(Row(shape, dtype, "generic", kernel, min_b, min_b, sass, sass, outputs, regs, occ, t))

        generic("forward", rf"4cuda14forward_kernelI{tag}LNS_7CombineE0E", e * (x + cf + sf + out), out,
                GENERIC_SASS["forward"])
        generic("grad_input", rf"4cuda17grad_input_kernelI{tag}LNS_7CombineE0E", e * (out + cf + sf + x), x,
                GENERIC_SASS["grad_input"])
        per_px, per_elem = GENERIC_SASS["grad_spatial"]
        generic("grad_spatial", rf"4cuda19grad_spatial_kernelI{tag}LNS_7CombineE0E", e * (out + x + cf + sf), sf,
                per_px * C + per_elem)
        generic("grad_channel", rf"4cuda19grad_channel_kernelI{tag}LNS_7CombineE0E", e * (out + x + sf + cf),
                cf, GENERIC_SASS["grad_channel"] * S * S)

        # Tiled kernels.
        for kernel, pattern, reducing in (
            ("forward", rf"tiled20tiled_forward_kernelI{tag}LNS_7CombineE0ELi3ELi1E", False),
            ("grad_input", rf"tiled23tiled_grad_input_kernelI{tag}LNS_7CombineE0ELi3ELi1E", False),
            ("filter_grads", rf"tiled25tiled_filter_grads_kernelI{tag}LNS_7CombineE0ELi3ELi1ELi2E", True),
        ):
            p = plan_tiled(kernel, B, C, S, S, K, 1, 1, 1)
            name = fn(pattern)
            ts = tiled_sass(funcs[name], reducing)
            regs, smem = usage(name)
            threads = p.tx * p.ty * p.tz
            occ = occupancy_of(regs, threads, smem, p.shared_bytes)
            tile_px = p.tx * p.ty * p.rows  # pixels of a lane
            halo_per_px = p.halo_h * p.halo_w / tile_px  # staged elements per pixel and channel
            # Per output: the inner loop (per channel; per R pixels when reducing), the staging
            # loop (per staged element, for all ch channels), the step's own code.
            outputs_per_step = p.ch * p.rows
            inner = ts.inner / (p.rows if reducing else 1)
            sass = inner + ts.staging * halo_per_px / p.ch + ts.step / outputs_per_step
            if kernel == "forward":
                min_b = e * (x + cf + sf + out)
                moved = e * (x + out + cf + sf * p.splits)
                outputs = out
            elif kernel == "grad_input":
                min_b = e * (out + cf + sf + x)
                moved = e * (out + x + cf + sf * p.splits)
                outputs = x
            else:
                min_b = e * (out + x + cf + sf + cf + sf)
                channel = e * cf if p.tiles == 1 else 4 * p.tiles * B * C * kk
                spatial = e * sf if p.splits == 1 else 4 * sf * p.splits
                moved = e * (out + x + cf + sf * p.splits) + channel + spatial
                outputs = out
            blocks = p.tiles * p.splits * B
            t = estimate_time(moved, sass * outputs, occ, p.ch, e, blocks, threads)
            rows.append(Row(shape, dtype, "tiled", kernel, min_b, moved, sass, inner, outputs, regs, occ, t))
            if kernel == "filter_grads":
                # The fixed-order sums of the partials: one thread per result element, whose
                # loop (read from the SASS) runs once per tile or split.
                for what, count, reads in (("channel", cf, p.tiles if p.tiles > 1 else 0),
                                           ("spatial", sf, p.splits if p.splits > 1 else 0)):
                    if reads == 0:
                        continue
                    name = fn(rf"tiled{len(what) + 20}sum_{what}_partials_kernelI{tag}E")
                    loop = min((l for l in walk(loops_of(funcs[name])) if not l.children and l.has("LDG")),
                               key=lambda l: l.size)
                    regs, smem = usage(name)
                    occ = occupancy_of(regs, 256, smem, 0)
                    n = 4 * count * reads + e * count
                    unroll = sum(1 for op in loop.ops if op.startswith("LDG"))  # independent loads per trip
                    per = loop.size * reads / unroll
                    rows.append(Row(shape, dtype, "tiled", f"sum_{what}_partials", 0, n, per, per, count, regs, occ,
                                    estimate_time(n, per * count, occ, min(unroll, reads), e, _ceil_div(count, 256))))
    return rows


def summarize(rows: List[Row]) -> List[dict]:
    """Per (shape, dtype, design): forward time, backward time and their ratio."""
    out = []
    keys = sorted({(r.shape, r.dtype, r.design) for r in rows}, key=lambda k: (k[1], k[2], -int(k[0].split("@")[1][:-1])))
    for shape, dtype, design in keys:
        sel = [r for r in rows if (r.shape, r.dtype, r.design) == (shape, dtype, design)]
        fwd = sum(r.time_s for r in sel if r.kernel == "forward")
        bwd = sum(r.time_s for r in sel if r.kernel != "forward")
        fwd_row = next(r for r in sel if r.kernel == "forward")
        out.append(dict(shape=shape, dtype=dtype, design=design, forward_us=fwd * 1e6, backward_us=bwd * 1e6,
                        ratio=bwd / fwd, forward_bw=fwd_row.min_bytes / fwd / DRAM_BW))
    return out


def markdown(rows: List[Row]) -> str:
    lines = ["| shape | dtype | design | kernel | min DRAM MB | moved MB | inner-loop SASS/output | est. SASS/output | regs | "
             "occupancy | est. µs | est. DRAM BW |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.shape} | {r.dtype} | {r.design} | {r.kernel} | {r.min_bytes / 1e6:.1f} | {r.moved_bytes / 1e6:.1f} | "
                     f"{r.inner_per_output:.0f} | {r.sass_per_output:.0f} | {r.registers} | {r.occupancy:.0%} | "
                     f"{r.time_s * 1e6:.1f} | {r.bw_fraction:.0%} |")
    lines += ["", "| shape | dtype | design | forward µs | backward µs | backward/forward | forward share of 3.35 TB/s (min bytes) |",
              "|---|---|---|---|---|---|---|"]
    for s in summarize(rows):
        lines.append(f"| {s['shape']} | {s['dtype']} | {s['design']} | {s['forward_us']:.1f} | {s['backward_us']:.1f} | "
                     f"{s['ratio']:.2f} | {s['forward_bw']:.0%} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--library", default=cr.default_library())
    ap.add_argument("--markdown", action="store_true", help="print markdown tables (for benchmarks/RESULTS.md)")
    args = ap.parse_args(argv)
    cuobjdump = cr.find_tool("cuobjdump", "CUOBJDUMP")
    if not args.library or not cuobjdump:
        print("gpu_model: needs the built library (make build) and cuobjdump", file=sys.stderr)
        return 2
    sass = subprocess.run([cuobjdump, "-sass", "-arch", "sm_90", args.library], capture_output=True, text=True)
    if sass.returncode != 0 or "Function :" not in sass.stdout:
        print(f"gpu_model: no sm_90 kernels in {args.library} (a CPU-only build?)", file=sys.stderr)
        return 2
    res = cr.parse_res_usage(subprocess.run([cuobjdump, "-res-usage", args.library], capture_output=True,
                                            text=True).stdout)
    # The launch plans come from the library, preferably the one whose cubins are read.
    load_library(args.library)
    funcs = sass_functions(sass.stdout)
    try:
        rows = model(funcs, res, "float32") + model(funcs, res, "float16")
    except RuntimeError as e:  # a library older than _cuda_tiled_plan
        print(f"gpu_model: {e}", file=sys.stderr)
        return 2
    print("ESTIMATES from a static model (cubin registers and SASS, H100 figures), not measurements.")
    print(f"H100 SXM: {DRAM_BW / 1e12:.2f} TB/s DRAM, {SMS} SMs at {CLOCK_HZ / 1e9:.3f} GHz, "
          f"{DRAM_LATENCY_S * 1e9:.0f} ns DRAM latency; B={BATCH}, k={K}, stride 1, one head, 'mul'.")
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
