"""Static performance model of the CUDA kernels: estimates, not measurements.

    python -m tools.cuda_static.gpu_model [--library PATH] [--markdown] [--device h100|h200|all]

No GPU is needed (none was available when this was written). For the ResNet-50 DDF shapes
(B=64; 64@56², 128@28², 256@14², 512@7²; k=3, stride 1, one head, 'mul') in float32, float16
and bfloat16, it reads the sm_90 cubin (registers, SASS loops) and the library's own tiled
launch plans (torch.ops.ddf._cuda_tiled_plan), and gives every kernel two estimates side by
side, on each device of DEVICES (H100 SXM, H200):

  optimistic    the model as it was until issue 18 (kept so that history compares): time =
                max(moved bytes / achievable bandwidth, instructions / issue rate), with
                achievable bandwidth = min(peak DRAM, bytes in flight / latency) from every
                resident thread keeping its step's loads in flight all the time, instructions
                counted per useful output at the peak issue rate (4 warp instructions per
                clock per SM), no launch cost, no waves; bandwidth shares against peak DRAM.
  conservative  per launch: Gpu.launch_s + the waves of blocks (waves()), each wave's time by the
                overlap rule (wave_time()) from one block's work: its warp instructions
                counting every launched lane at the sustained issue rate (issue_time()), its
                staging phases' round trips to memory (staging_rounds(): Little's law from the
                staging loads only) and its share of the DRAM bytes at copy bandwidth (0.9 x
                peak, copy_bandwidth()); the last, partial wave costs a full wave of its
                busiest SM (tail). Bandwidth shares against copy bandwidth.

Designs: "generic", "tiled" (NCHW) and "nhwc" (contiguous channels_last: the channels_last
forward, grad_input and filter gradients, plans from torch.ops.ddf._cuda_nhwc_plan). The issue-18 targets are judged on the conservative column
of "tiled" (targets()), issue 19's on that of "nhwc" (targets_nhwc()); a miss prints where
the time goes (launch, issue, DRAM, serial staging + compute, the tail). Neither column
models: too few warps to reach the sustained issue rate, shared-memory bank conflicts, L1
hits, or the generic kernels' grid-stride details (their conservative figure is their
per-element SASS on every launched lane, a round trip per element). Every figure is an
estimate from the cubin and this model; `make gpu-check` on a GPU measures the real ones
(benchmarks/bench_gpu.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import subprocess
import sys
from typing import Dict, List, Optional, Tuple

from tools.cuda_static import cuda_resources as cr


# --------------------------------------------------------------------------- devices


@dataclasses.dataclass(frozen=True)
class Gpu:
    """Every parameter of the model, named once, with its source."""

    name: str
    # Peak DRAM bandwidth, B/s. NVIDIA H100 datasheet (SXM5: 3.35 TB/s HBM3); NVIDIA H200
    # datasheet (SXM: 4.8 TB/s HBM3e).
    dram_bw: float
    # Streaming multiprocessors. NVIDIA H100 datasheet / Hopper whitepaper (H100 SXM5: 132 of
    # GH100's 144); H200 is the same GH100 part with 132 SMs.
    sms: int = 132
    # SM clock under load, Hz: the clock the model has used since issue 8 (H100 SXM boost is
    # 1.98 GHz per the datasheet; under a memory-heavy load it runs lower). Same for H200.
    clock_hz: float = 1.755e9
    # What a device-to-device copy reaches, as a fraction of peak DRAM bandwidth: issue 18's
    # reference ("bandwidth measured against a copy at 90% of peak").
    copy_efficiency: float = 0.90
    # Warp instructions issued per clock per SM at peak: 4 sub-partitions, one dispatch each
    # (Hopper whitepaper, "SM architecture"; CUDA C++ Programming Guide, compute capability 9.0).
    peak_issue: float = 4.0
    # Sustained warp instructions per clock per SM for this mix (shared-memory loads, FFMA,
    # index math, barriers): issue 18's ceiling (2.5-3 observed on such kernels; 2.75 taken).
    sustained_issue: float = 2.75
    # Cost of one kernel launch on a stream, s: issue 18's figure (3 µs per launch).
    launch_s: float = 3e-6
    # Loaded DRAM round trip, s: the model's figure since issue 8 (pointer-chase latency on
    # Hopper is ~0.5 µs unloaded and grows under load). An assumption, not a measurement.
    dram_latency_s: float = 700e-9
    # L2-hit round trip, s, for loads of small tensors every tile re-reads (the channel filter):
    # an assumption of the same kind (pointer chases put Hopper's L2 hits at a few hundred ns).
    l2_latency_s: float = 300e-9
    # Per-SM occupancy limits (max 64 warps, 32 blocks, 228 KiB shared memory, 64 K registers
    # per SM): the CUDA occupancy data for compute capability 9.0, cuda_resources.GPU_LIMITS.
    arch: str = "sm_90"

    @property
    def copy_bw(self) -> float:
        return copy_bandwidth(self)

    @property
    def limits(self) -> cr.GpuLimits:
        return cr.limits_for(self.arch)


H100_SXM = Gpu("H100 SXM", dram_bw=3.35e12)
H200 = Gpu("H200", dram_bw=4.8e12)
DEVICES = {"h100": H100_SXM, "h200": H200}

# The pre-issue-18 module constants (the optimistic model's H100 figures), kept for callers.
DRAM_BW = H100_SXM.dram_bw
SMS = H100_SXM.sms
CLOCK_HZ = H100_SXM.clock_hz
ISSUE_PER_SM_CLOCK = H100_SXM.peak_issue
DRAM_LATENCY_S = H100_SXM.dram_latency_s
THREAD_INSTR_PER_S = SMS * ISSUE_PER_SM_CLOCK * CLOCK_HZ * 32

SHAPES = [(64, 56), (128, 28), (256, 14), (512, 7)]  # (channels, map size), ResNet-50 stages
BATCH = 64
K = 3
DTYPES = ("float32", "float16", "bfloat16")
# The mangled template argument of each dtype, and its bytes.
DTYPE_TAG = {"float32": "f", "float16": "6__half", "bfloat16": "13__nv_bfloat16"}
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}

# Per-element SASS of the generic kernels (issue 8, sm_90): forward and grad_input per
# element, grad_spatial per (pixel, channel) of a head plus a per-element part, grad_channel
# per (pixel, tap) term.
GENERIC_SASS = {"forward": 850, "grad_input": 1250, "grad_spatial": (14, 150), "grad_channel": 191}

# Issue 18's targets, judged on the conservative column.
TARGET_FWD_COPY_SHARE = {"float32": 0.70, "float16": 0.60, "bfloat16": 0.60}  # at 56² and 28²
TARGET_FWD_COPY_SHARE_ALL = 0.50  # every shape
TARGET_FWD_SASS = {"float32": 40, "float16": 30, "bfloat16": 30}  # per output
TARGET_BWD_OVER_FWD = 2.5


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


@dataclasses.dataclass
class NhwcPlan:
    vector: int  # channels per thread
    channel_lanes: int  # threads per pixel
    block_channels: int
    tile_w: int
    tile_h: int
    tiles: int
    channel_blocks: int
    shared_bytes: int
    head_blocks: int  # the filter gradients: blocks per head (1: whole heads in a block)
    head_lanes: int  # the filter gradients: shuffle-tree width over a head's lanes
    steps_w: int  # steps of a tile row: tile_w, or ceil(tile_w / 2) where a forward step takes two pixels

    @property
    def step(self) -> int:
        """Pixels per step of the pixel loop (pixels_per_step in ddf_cuda_nhwc_plan.h)."""
        return _ceil_div(self.tile_w, self.steps_w)


def plan_nhwc(B: int, C: int, H: int, W: int, k: int, G: int, s: int, d: int, element_bytes: int,
              kernel: str = "forward") -> Optional[NhwcPlan]:
    """A channels_last kernel's plan (forward, grad_input or filter_grads) for a contiguous
    channels_last call, or None when the call takes the generic kernels
    (torch.ops.ddf._cuda_nhwc_plan, csrc/cuda/ddf_cuda_nhwc_plan.h)."""
    import torch

    load_library()
    if not hasattr(torch.ops.ddf, "_cuda_nhwc_plan"):
        raise RuntimeError("the loaded ddf library has no _cuda_nhwc_plan op: rebuild it (make build)")
    fields = torch.ops.ddf._cuda_nhwc_plan(B, C, H, W, k, G, s, d, element_bytes, kernel)
    return NhwcPlan(*fields[1:]) if fields[0] else None


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


_INSN = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);", re.M)


def sass_functions(text: str) -> Dict[str, List[Tuple[int, str, str]]]:
    """cuobjdump -sass text of one arch -> mangled name -> [(address, opcode, operands)]; a
    predicated instruction's operands start with its guard (e.g. "@!P0 ")."""
    funcs: Dict[str, List[Tuple[int, str, str]]] = {}
    parts = re.split(r"\n\s*Function : (\S+)", text)
    for name, body in zip(parts[1::2], parts[2::2]):
        funcs[name] = [(int(a, 16), op, (guard.strip() + " " if guard else "") + rest.strip())
                       for a, guard, op, rest in _INSN.findall(body)]
    return funcs


def _predicated(rest: str) -> bool:
    return rest.startswith("@")


def _target(rest: str) -> Optional[int]:
    m = re.search(r"0x([0-9a-f]+)", rest)
    return int(m.group(1), 16) if m else None


_REG = re.compile(r"\bR(\d+)\b")
_WIDTH_REGS = {".64": 2, ".128": 4}


def _load_destination(op: str, rest: str) -> List[int]:
    """The registers a global load writes (LDG.E.64 R4 writes R4 and R5)."""
    operands = rest[rest.index(" ") + 1:] if _predicated(rest) else rest
    m = _REG.match(operands.strip())
    if not m:
        return []
    width = next((n for suffix, n in _WIDTH_REGS.items() if suffix in op), 1)
    return list(range(int(m.group(1)), int(m.group(1)) + width))


def _reads(op: str, rest: str, regs: List[int]) -> bool:
    """Whether an instruction reads any of regs: a source operand (past the first, which is the
    destination, except for stores and branches, which have none)."""
    operands = rest[rest.index(" ") + 1:] if _predicated(rest) else rest
    parts = operands.split(",")
    sources = parts if op.startswith(("ST", "RED", "BRA", "EXIT", "BAR")) else parts[1:]
    found = {int(r) for part in sources for r in _REG.findall(part)}
    # A 64-bit address operand (R4.64) reads R4 and R5.
    found |= {int(r) + 1 for part in sources for r in re.findall(r"\bR(\d+)\.64\b", part)}
    return any(r in found for r in regs)


def serialized_loads(insns: List[Tuple[int, str, str]]) -> int:
    """Global loads (LDG) whose value is read before the next global load is issued, in program
    order: each such load makes the next one wait a round trip to memory when the two could
    have gone out together. ptxas did this to every half-precision staging load written as
    `guard ? widen(p[i]) : 0.f` (a conversion under the guard, right after its load): the
    tiled kernels ran at half the float32 speed on an H200. Counted on straight-line order, so
    it is a comparison between variants of one kernel, not an exact count of round trips."""
    loads = [i for i, (_, op, _) in enumerate(insns) if op.startswith("LDG")]
    count = 0
    for i, next_load in zip(loads, loads[1:]):
        regs = _load_destination(insns[i][1], insns[i][2])
        if regs and any(_reads(op, rest, regs) for _, op, rest in insns[i + 1:next_load]):
            count += 1
    return count


def cheapest_full_path(insns: List[Tuple[int, str, str]], start: int, end: int, work: str = "FFMA") -> Tuple[int, int]:
    """Over straight-line code with forward branches only, [start, end]: of the paths from
    start to its end, the one that runs the most `work` instructions and, of those, the fewest
    instructions. Returns (work, instructions). This picks out of the forward's compute the
    path a step of finite values takes (all channels, the unchecked taps) among its copies
    (fewer channels, checked taps), without knowing the predicates. A branch is conditional
    when guarded; one that leaves the range, an unguarded EXIT or the range's last
    instruction ends a path; a backward branch (a loop) is not straight-line code."""
    region = [(a, op, rest) for a, op, rest in insns if start <= a <= end]
    index = {a: i for i, (a, _, _) in enumerate(region)}
    n = len(region)
    best: List[Tuple[int, int]] = [(0, 0)] * (n + 1)  # (work, -instructions) from i to the end

    for i in reversed(range(n)):
        a, op, rest = region[i]
        succ: List[int] = []
        if op.startswith("BRA"):
            t = _target(rest)
            if t is not None and t <= a and i != n - 1:
                raise ValueError(f"a loop at {a:#x} in code the model takes as straight-line")
            if t is not None and a < t <= end:
                succ.append(index[t])
            elif i != n - 1:
                succ.append(n)  # leaves the range: the path ends
            if _predicated(rest) or op == "BRA.DIV":
                succ.append(i + 1)
        elif op.startswith("EXIT"):
            succ = [n] + ([i + 1] if _predicated(rest) else [])
        else:
            succ = [i + 1]
        w, c = max(best[j] for j in succ) if succ else (0, 0)
        best[i] = (w + (op == work), c - 1)
    return best[0][0], -best[0][1]


def loops_of(insns: List[Tuple[int, str, str]]) -> List[Loop]:
    """The loops (backward branches) of one function, nested by address range; outermost first.
    A branch back from past the function's last EXIT is no loop: the compiler places the
    divergent fallbacks of warp votes (BRA.DIV targets) there, and they jump back into the
    body (only the final self-branch there counts, a trivial loop)."""
    exits = [a for a, op, _ in insns if op.startswith("EXIT")]
    body_end = max(exits) if exits else None
    spans = []
    for addr, op, rest in insns:
        target = _target(rest)
        if op.startswith("BRA") and target is not None and target <= addr:
            if body_end is not None and addr > body_end and target != addr:
                continue
            spans.append((target, addr))
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
    inner: int  # instructions of the inner loop, per iteration (0: a grouped kernel has none)
    staging: int  # instructions of the staging loop, per element (all channels of a step)
    step: int  # instructions of the step loop outside its nested loops (once per step)
    first_warp: int = 0  # of those, the ones only a lane's first warp runs (channel-filter staging)
    # Grouped kernels (the forward and grad_input since their channels are staged in groups of
    # four): no inner loop; the step's compute is straight-line after its last barrier, in copies (fewer
    # channels, checked taps). compute: the instructions of the path a step of finite values
    # with all its channels takes (cheapest_full_path); compute_code: all the copies' code,
    # part of `step`.
    compute: int = 0
    compute_code: int = 0


def tiled_sass(insns: List[Tuple[int, str, str]], reducing: bool) -> TiledSass:
    """The tiled kernel's costs. reducing: the filter-gradient kernel, whose inner loop reduces
    with warp shuffles instead of writing an output. A kernel that writes outputs with no
    inner loop is grouped (TiledSass.compute)."""
    roots = loops_of(insns)
    every = list(walk(roots))
    mark = "SHFL" if reducing else "STG"
    inner = [lp for lp in every if not lp.children and lp.has(mark) and lp.has("LDS")]
    staging = [lp for lp in every if not lp.children and lp.has("LDG") and lp.has("STS") and not lp.has("VOTE.ANY")]
    if (not inner and reducing) or not staging:
        raise ValueError("unexpected loop structure: the model needs updating for this kernel")
    fast = min(inner, key=lambda l: l.size) if inner else None
    stage = max(staging, key=lambda l: l.size)
    # The step loop: the smallest loop with a barrier around both (the compiler also peels
    # and rotates copies of it, which do not nest them).
    around = [stage] + ([fast] if fast else [])
    steps = [l for l in every if l.has("BAR") and l.start <= min(x.start for x in around)
             and max(x.end for x in around) <= l.end]
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
    region = first_warp_region(insns, step.start, step.end) if not reducing else range(0)
    first = sum(1 for a, _, _ in insns if a in region and a not in covered)
    if fast:
        return TiledSass(fast.size, stage.size, own, first)
    # Grouped: the compute runs from the step's last barrier to its back-branch.
    last_bar = max(a for a, op, _ in insns if op.startswith("BAR") and step.start <= a <= step.end)
    if any(last_bar < a <= step.end for a in covered):
        raise ValueError("a loop after the step's last barrier: the model needs updating for this kernel")
    work, path = cheapest_full_path(insns, last_bar + 16, step.end)
    if work == 0:
        raise ValueError("no FFMA after the step's last barrier: the model needs updating for this kernel")
    code = sum(1 for a, _, _ in insns if last_bar < a <= step.end)
    return TiledSass(0, stage.size, own, first, compute=path, compute_code=code)


def first_warp_region(insns: List[Tuple[int, str, str]], start: int, end: int) -> range:
    """Addresses of the step loop [start, end] that only a lane's first warp runs: the
    channel-filter staging of the forward and grad_input (stage_channel_filters: `if (t >= 32)
    return;`, then a VOTE.ANY per channel). It is the code a forward branch skips from before
    the step's first VOTE.ANY to past its last (the innermost such branch); empty if none."""
    votes = [a for a, op, _ in insns if op == "VOTE.ANY" and start <= a <= end]
    if not votes:
        return range(0)
    lo, hi = min(votes), max(votes)
    best = None
    for a, op, rest in insns:
        t = _target(rest)
        if op == "BRA" and t is not None and start <= a < lo and hi < t <= end + 16:
            best = (a, t)  # the last one before the votes: the innermost
    return range(best[0] + 16, best[1], 16) if best else range(0)




def _enclosing(lp: Loop, every: List[Loop]) -> Optional[Loop]:
    """The smallest loop whose address range strictly contains lp's."""
    outer = [c for c in every if c is not lp and c.start <= lp.start and lp.end <= c.end
             and (c.start, c.end) != (lp.start, lp.end)]
    return min(outer, key=lambda c: c.size) if outer else None


@dataclasses.dataclass
class TiledLoops:
    """What the conservative model counts of a tiled kernel's SASS besides TiledSass: each
    loop's instructions per trip (0: the kernel has none), and the code in no loop."""

    staging: int  # stage_planes' remainder loop, per trip (one load per channel of the step)
    filter: int  # filter gradients: the channel-filter staging loop, per trip (0 elsewhere)
    filter_loads: int  # its loads per trip
    grad_output: int  # filter gradients: the loop loading the thread's grad_output values
    grad_output_loads: int
    other: int  # further loops in the step loop (counted one trip per step)
    outside: int  # instructions in no loop: prologue and epilogue, once per warp
    handoff: int  # filter gradients: the lanes' hand-off loop after the steps, per trip


def tiled_loops(insns: List[Tuple[int, str, str]], reducing: bool) -> TiledLoops:
    roots = loops_of(insns)
    every = list(walk(roots))
    # Leaves without a barrier: the compiler's rotated copies of the step loop (which hold a
    # barrier) nest nothing, but are no loop of their own.
    leaves = [lp for lp in every if not lp.children and not lp.has("BAR")]
    mark = "SHFL" if reducing else "STG"
    inner = min((lp for lp in leaves if lp.has(mark) and lp.has("LDS")), key=lambda l: l.size, default=None)
    loads = [lp for lp in leaves if lp.has("LDG") and lp.has("STS")]

    def n_ldg(lp: Loop) -> int:
        return sum(op.startswith("LDG") for op in lp.ops)

    # stage_planes' remainder loop: a leaf with one load per channel of the step; else the
    # largest load-store loop, as tiled_sass takes it.
    staged = ([lp for lp in loads if not lp.has("VOTE.ANY") and n_ldg(lp) >= 4]
              or [lp for lp in loads if not lp.has("VOTE.ANY")])
    if not staged:
        raise ValueError("unexpected loop structure: the model needs updating for this kernel")
    stage = max(staged, key=lambda l: l.size)
    around = [stage] + ([inner] if inner else [])  # (a grouped kernel has no inner loop)
    steps = [l for l in every if l.has("BAR") and l.start <= min(x.start for x in around)
             and max(x.end for x in around) <= l.end]
    step = min(steps, key=lambda l: l.size)
    covered = set()
    for lp in every:
        covered.update(range(lp.start, lp.end + 1, 16))
    outside = sum(1 for a, _, _ in insns if a not in covered)
    handoff = [lp for lp in every if not lp.children and lp.has("BAR") and lp.start > step.end]
    if reducing:
        inside = [lp for lp in loads if lp is not stage and step.start <= lp.start and lp.end <= step.end]
        flt = [lp for lp in inside if lp.start < stage.start]
        go = [lp for lp in inside if lp.start > stage.end]
        filter_loop = max(flt, key=lambda l: l.size) if flt else None
        go_loop = max(go, key=lambda l: l.size) if go else None
    else:
        # The channel filters are staged straight-line (stage_channel_filters unrolls): a loop
        # with their votes is a structure tiled_work does not model.
        if any(lp.has("VOTE.ANY") for lp in loads):
            raise ValueError("a channel-filter staging loop: the model needs updating for this kernel")
        filter_loop = go_loop = None
    known = {id(x) for x in (inner, stage, filter_loop, go_loop) if x is not None}
    # Other loops of the step (filter gradients: the warp sums, the channel partials' writes),
    # but not the inner loop's checked copies (the non-finite paths).
    other = sum(lp.size for lp in leaves if id(lp) not in known and step.start <= lp.start and lp.end <= step.end
                and not (lp.has(mark) and lp.has("LDS")))
    return TiledLoops(stage.size,
                      filter_loop.size if filter_loop else 0, n_ldg(filter_loop) if filter_loop else 0,
                      go_loop.size if go_loop else 0, n_ldg(go_loop) if go_loop else 0,
                      other, outside, max((l.size for l in handoff), default=0))
# --------------------------------------------------------------------------- conservative effects
#
# Each effect is one small function; tests/test_gpu_model.py pins each with a hand-computed case.


def copy_bandwidth(gpu: Gpu) -> float:
    """The bandwidth shares are taken against: what a copy reaches, copy_efficiency x peak."""
    return gpu.copy_efficiency * gpu.dram_bw


def launched_warps(threads_per_block: int, warp_size: int = 32) -> int:
    """Warps a block launches: its threads rounded up to whole warps (a partial warp issues
    like a full one)."""
    return _ceil_div(threads_per_block, warp_size)


def issue_time(warp_instructions: float, gpu: Gpu, sms: int = 1) -> float:
    """Seconds to issue `warp_instructions` on `sms` SMs at the sustained rate (not the peak)."""
    return warp_instructions / (gpu.sustained_issue * gpu.clock_hz * sms)


def live_warps(tx: int, ty: int, tz: int, map_h: int, map_w: int, rows: int = 1) -> float:
    """Warps per block that issue the compute loop, averaged over the map's tiles: a warp issues
    it for all its 32 lanes when any of them has a map pixel (lanes counted as launched, not as
    useful: at 56², 28² and 14² 28 of 32 lanes have one, at 7² 49 of 64), and a warp none of whose
    lanes has one skips it (`if (!pixel) continue;`). Lanes are (x, y) = (i % tx, i // tx) of a
    channel lane's tx * ty threads, i = 32 * warp + lane; a thread covers map rows y0 + y * rows."""
    tiles_x, tiles_y = _ceil_div(map_w, tx), _ceil_div(map_h, ty * rows)
    per_lane = tx * ty // 32
    live = 0
    for tile_y in range(tiles_y):
        for tile_x in range(tiles_x):
            for w in range(per_lane):
                threads = range(32 * w, 32 * w + 32)
                row = any(tile_y * ty * rows + (i // tx) * rows < map_h for i in threads)
                col = any(tile_x * tx + i % tx < map_w for i in threads)
                live += row and col
    return live * tz / (tiles_x * tiles_y)


def halo_slots(kernel: str) -> int:
    """The halo elements per thread whose loads the kernel's staging (stage_planes) issues
    together before its remainder loop: halo_slots() of csrc/cuda/ddf_cuda_tiled_plan.h,
    read from the library (torch.ops.ddf._cuda_tiled_halo_slots)."""
    import torch

    load_library()
    if not hasattr(torch.ops.ddf, "_cuda_tiled_halo_slots"):
        raise RuntimeError("the loaded ddf library has no _cuda_tiled_halo_slots op: rebuild it (make build)")
    return dict(zip(("forward", "grad_input", "filter_grads"), torch.ops.ddf._cuda_tiled_halo_slots()))[kernel]


def staging_trips(halo_h: int, halo_w: int, tx: int, ty: int, slots: int) -> List[int]:
    """Trips of stage_planes' remainder loop that each warp of a channel lane issues in one
    step. A thread stages halo elements lane_thread + q x (tx x ty): the first `slots`
    straight-line (step code, all their loads in flight), the rest one per trip; a warp
    issues as many trips as its busiest lane."""
    n, elems = tx * ty, halo_h * halo_w
    return [max(max(_ceil_div(max(elems - i, 0), n) - slots, 0) for i in range(32 * w, 32 * w + 32))
            for w in range(n // 32)]


def staging_rounds(halo_h: int, halo_w: int, tx: int, ty: int, slots: int) -> int:
    """Round trips to memory on a step's critical path: one for the slots (all their loads in
    flight, then their stores), then one per remainder trip (each trip's loads are stored
    before the next trip's go out); the barrier after staging waits for thread 0, which has
    the most elements."""
    return 1 + max(_ceil_div(halo_h * halo_w, tx * ty) - slots, 0)


def little_bandwidth(bytes_in_flight: float, latency_s: float) -> float:
    """Little's law: the bandwidth that `bytes_in_flight` sustain at a round trip of `latency_s`.
    The conservative model counts in flight only the loads of a staging trip (memory_time())."""
    return bytes_in_flight / latency_s


def memory_time(dram_rounds: float, l2_rounds: float, block_bytes: float, gpu: Gpu) -> float:
    """One block's memory phases, s: each round trip (a staging trip, the filter loads, the
    prologue's loads) costs a full latency, since only that trip's loads are in flight and the
    block issues nothing else meanwhile (Little's law over the staging loads only, no overlap
    with the block's own compute); and the block's DRAM bytes need at least their time at the
    SM's share of copy bandwidth (copy_bandwidth / SMs: an SM never gets more)."""
    latency = dram_rounds * gpu.dram_latency_s + l2_rounds * gpu.l2_latency_s
    return max(latency, block_bytes / (copy_bandwidth(gpu) / gpu.sms))


def wave_time(per_sm: int, issue_s: float, memory_s: float, bytes_s: float) -> Tuple[float, str]:
    """The overlap rule: the time of one wave on an SM holding `per_sm` co-resident blocks, each
    issuing for issue_s (issue_time() of its warp instructions), spending memory_s in its
    memory phases (memory_time()), of which bytes_s is its DRAM bytes at the SM's copy share.
    Returns (seconds, bound), bound in {"issue", "dram", "serial"}.

    Within a block, staging (global loads into shared memory) and compute alternate between
    barriers, and no kernel double-buffers, so a block alone takes issue_s + memory_s. Across
    blocks, one block's staging overlaps other co-resident blocks' compute, and nothing more:

        time = max(per_sm * issue_s, per_sm * bytes_s, issue_s + memory_s)

    The SM's issue slots are shared by its blocks (the first term), so is its DRAM share (the
    second), and no block finishes before its own serial chain of staging and compute (the
    third). With per_sm == 1 this is issue_s + memory_s, the sum: nothing overlaps. With
    per_sm >= 2 it is max(issue, memory) of the SM's blocks when their phases interleave
    perfectly, which is the best co-residency allows: still optimistic in that respect."""
    terms = {"issue": per_sm * issue_s, "dram": per_sm * bytes_s, "serial": issue_s + memory_s}
    bound = max(terms, key=terms.get)
    return terms[bound], bound


def waves(blocks: int, sms: int, per_sm: int) -> Tuple[int, int]:
    """(full waves, blocks on the busiest SM of the last, partial wave; 0 when there is none).
    A wave is sms x per_sm blocks. The partial last wave lasts as long as its busiest SM, which
    holds ceil(leftover / sms) blocks: a tail of 1 block per SM costs a full wave's time of 1
    block (wave_time(1, ...)), whatever the other SMs do."""
    full, rest = divmod(blocks, sms * per_sm)
    return full, _ceil_div(rest, sms)


@dataclasses.dataclass
class BlockWork:
    """One kernel launch as the conservative model sees it (per block: the launch's average)."""

    blocks: int
    threads: int  # per block
    per_sm: int  # co-resident blocks per SM (occupancy: registers, shared memory, warps, blocks)
    warp_instr: float  # warp instructions one block issues, every launched lane counted
    dram_rounds: float  # DRAM round trips on one block's critical path
    l2_rounds: float  # L2 round trips on it
    dram_bytes: float  # DRAM bytes of the whole launch, spread evenly over its blocks
    parts: Dict[str, float] = dataclasses.field(default_factory=dict)  # warp_instr by phase


@dataclasses.dataclass
class Timing:
    """The conservative time of one launch and where it goes."""

    launch_s: float
    full_waves: int
    wave_s: float
    wave_bound: str
    tail_per_sm: int  # blocks on the busiest SM of the last, partial wave (0: none)
    tail_s: float
    tail_bound: str
    issue_s: float  # one block's issue time at the sustained rate
    memory_s: float  # one block's memory phases
    per_sm: int

    @property
    def total_s(self) -> float:
        return self.launch_s + self.full_waves * self.wave_s + self.tail_s

    def describe(self) -> str:
        parts = [f"{self.launch_s * 1e6:.0f} launch"]
        if self.full_waves:
            parts.append(f"{self.full_waves} wave{'s' if self.full_waves > 1 else ''} x {self.wave_s * 1e6:.1f} "
                         f"({self.wave_bound}-bound, {self.per_sm} blocks/SM)")
        if self.tail_per_sm:
            parts.append(f"tail {self.tail_s * 1e6:.1f} ({self.tail_per_sm} block{'s' if self.tail_per_sm > 1 else ''}"
                         f"/SM, {self.tail_bound}-bound)")
        return (" + ".join(parts) + f"; per block: issue {self.issue_s * 1e6:.2f}, memory phases "
                f"{self.memory_s * 1e6:.2f} µs")


def launch_time(work: BlockWork, gpu: Gpu) -> Timing:
    """The launch cost + the full waves + the tail, each wave by wave_time()."""
    issue_s = issue_time(work.warp_instr, gpu)
    block_bytes = work.dram_bytes / work.blocks
    bytes_s = block_bytes / (copy_bandwidth(gpu) / gpu.sms)
    memory_s = memory_time(work.dram_rounds, work.l2_rounds, block_bytes, gpu)
    full, tail = waves(work.blocks, gpu.sms, work.per_sm)
    wave_s, wave_bound = wave_time(work.per_sm, issue_s, memory_s, bytes_s)
    tail_s, tail_bound = wave_time(tail, issue_s, memory_s, bytes_s) if tail else (0.0, "")
    return Timing(gpu.launch_s, full, wave_s, wave_bound, tail, tail_s, tail_bound, issue_s, memory_s, work.per_sm)




# --------------------------------------------------------------------------- model


@dataclasses.dataclass
class Row:
    gpu: str
    shape: str
    dtype: str
    design: str
    kernel: str
    min_bytes: float
    moved_bytes: float
    sass_per_output: float  # optimistic: estimated total per output
    inner_per_output: float  # the inner loop alone (cuobjdump)
    outputs: int
    registers: int
    occupancy: float
    time_s: float  # optimistic
    work: BlockWork
    cons: Timing  # conservative
    dram_bw: float = DRAM_BW

    @property
    def bw_fraction(self) -> float:
        """Optimistic: moved bytes against peak DRAM bandwidth."""
        return self.moved_bytes / self.time_s / self.dram_bw

    @property
    def cons_s(self) -> float:
        return self.cons.total_s

    @property
    def cons_sass_per_output(self) -> float:
        """Conservative: warp instructions issued x 32 lanes, per output (every launched lane)."""
        return self.work.warp_instr * self.work.blocks * 32 / self.outputs


def estimate_time(moved: float, instr_total: float, occupancy: float, loads_in_flight: float, e: int,
                  blocks: Optional[int] = None, threads: int = 256, gpu: Gpu = H100_SXM) -> float:
    """The optimistic estimate (the model until issue 18, unchanged): max(bytes / achievable
    bandwidth, instructions / peak issue rate). A launch of fewer blocks than the GPU holds
    keeps fewer threads resident (less in flight) and, below one block per SM, leaves SMs idle."""
    resident_threads = occupancy * gpu.limits.max_threads_per_sm * gpu.sms
    issue = gpu.sms * gpu.peak_issue * gpu.clock_hz * 32
    if blocks is not None:
        resident_threads = min(resident_threads, blocks * threads)
        issue *= min(1.0, blocks / gpu.sms)
    achievable = min(gpu.dram_bw, resident_threads * loads_in_flight * e / gpu.dram_latency_s)
    return max(moved / achievable, instr_total / issue)


def occupancy_of(regs: int, threads: int, static_smem: int, dynamic: int) -> cr.Occupancy:
    return cr.occupancy(regs, threads, static_smem, cr.limits_for("sm_90"), dynamic_smem=dynamic)


def tiled_work(kernel: str, p: Plan, ts: TiledSass, tl: TiledLoops, per_sm: int, B: int, S: int,
               moved: float) -> BlockWork:
    """The conservative model's view of one tiled launch, from its plan and SASS (see the kernels in
    csrc/cuda/ddf_cuda_tiled_kernels.cuh for the phases counted here)."""
    threads = p.tx * p.ty * p.tz
    warps = launched_warps(threads)
    lane_threads = p.tx * p.ty
    steps = p.split_channels // (p.tz * p.ch)
    blocks = p.tiles * p.splits * B
    slots = halo_slots(kernel)
    trips = staging_trips(p.halo_h, p.halo_w, p.tx, p.ty, slots)
    # Per step, every warp: its staging remainder trips, the step loop's own code (with the
    # straight-line staging of the halo slots and of the channel filters), the other loops once.
    # Warp instructions of one block by phase: per step, then once per block.
    parts = {"staging": p.tz * sum(t * tl.staging for t in trips),
             "step code": warps * (ts.step + tl.other)}
    dram_rounds = steps * staging_rounds(p.halo_h, p.halo_w, p.tx, p.ty, slots)
    if kernel == "filter_grads":
        kk = K * K
        filter_trips = _ceil_div(_ceil_div(p.ch * kk, lane_threads), max(tl.filter_loads, 1))
        # The thread's grad_output values: straight-line (no loop: one round trip, its code in
        # the step's own), or a loop of grad_output_loads loads a trip.
        go_trips = _ceil_div(p.ch * p.rows, tl.grad_output_loads) if tl.grad_output else 1
        parts["filter staging"] = warps * filter_trips * tl.filter
        parts["staging"] += warps * go_trips * tl.grad_output
        # Every warp runs the channel loop for all ch channels (the warp sums need whole warps).
        parts["compute"] = warps * p.ch * ts.inner
        dram_rounds += 1 + steps * go_trips  # the spatial-filter taps, then each step's grad_output loads
        l2_rounds = steps * _ceil_div(p.ch * kk, lane_threads)
        once = {"prologue/epilogue": warps * tl.outside + warps * (p.tz - 1) * tl.handoff}
    else:
        # The lane's first warp stages the channel filters straight-line, all the step's loads
        # first: one round trip (to L2: every tile re-reads them); the other warps branch
        # around that code. The compute loop runs on the warps with a pixel.
        parts["filter staging"] = p.tz * ts.first_warp
        parts["step code"] -= warps * ts.first_warp
        l2_rounds = steps
        if ts.compute:  # grouped: one straight-line path for the step's channels
            parts["step code"] -= warps * ts.compute_code
            parts["compute"] = live_warps(p.tx, p.ty, p.tz, S, S) * ts.compute
        else:
            parts["compute"] = live_warps(p.tx, p.ty, p.tz, S, S) * p.ch * ts.inner
        once = {"prologue/epilogue": warps * tl.outside}
        dram_rounds += 1  # the element's spatial-filter taps, all in flight
    parts = {k: v * steps for k, v in parts.items()}
    parts.update(once)
    return BlockWork(blocks, threads, per_sm, sum(parts.values()), dram_rounds, l2_rounds, moved, parts)


@dataclasses.dataclass
class NhwcSass:
    """The channels_last forward's SASS as the model counts it (csrc/cuda/ddf_cuda_nhwc_kernels.cuh)."""

    pixel: int  # one step (one pixel, or a pair: nhwc_sass) of a thread's channels through the pixel loop
    stage: int  # the channel-filter staging loop's size (the compiler unrolls it)
    stage_loads: int  # its loads per trip (in flight together)
    stage_rest: int  # the remainder loop's size, one load per trip (0: none)
    outside: int  # instructions in no loop, counted once per warp (every branch's: conservative)


def _loads(lp: Loop, op: str = "LDG") -> int:
    return sum(o.startswith(op) for o in lp.ops)


def nhwc_staging(insns: List[Tuple[int, str, str]], every: List[Loop], stages: List[Loop], pixel: int) -> NhwcSass:
    """A channels_last kernel's channel-filter staging and its code in no loop. The staging
    loops load and store to shared memory; the kernel has two pairs (a contiguous channel
    filter, any strides), each an unrolled loop and its remainder: the model takes the cheapest
    of each kind (the contiguous filter's, what networks pass)."""
    if not stages:
        raise ValueError("unexpected loop structure: the model needs updating for this kernel")
    covered = set()
    for x in every:
        covered.update(range(x.start, x.end + 1, 16))
    outside = sum(1 for a, _, _ in insns if a not in covered)
    unroll = max(_loads(l) for l in stages)
    main = min((l for l in stages if _loads(l) == unroll), key=lambda l: l.size)
    rest = [l for l in stages if _loads(l) < unroll]
    return NhwcSass(pixel, main.size, unroll, min(l.size for l in rest) if rest else 0, outside)


def shortest_path(insns: List[Tuple[int, str, str]], start: int, target: int) -> int:
    """Over straight-line code with forward branches only, the fewest instructions a path from
    start runs before it reaches target (by falling through or branching there); a path that
    branches past target, exits or loops back never reaches it."""
    region = [(a, op, rest) for a, op, rest in insns if start <= a < target]
    index = {a: i for i, (a, _, _) in enumerate(region)}
    n, never = len(region), float("inf")
    best = [never] * n + [0]  # from region[i]; index n: target reached
    for i in reversed(range(n)):
        a, op, rest = region[i]
        succ = []
        if op.startswith("BRA"):
            t = _target(rest)
            if t == target:
                succ.append(n)
            elif t is not None and a < t < target:
                succ.append(index[t])
            if _predicated(rest) or op == "BRA.DIV":
                succ.append(i + 1)
        elif not op.startswith("EXIT") or _predicated(rest):
            succ.append(i + 1)
        best[i] = 1 + min((best[j] for j in succ), default=never)
    if best[0] == never:
        raise ValueError(f"no path from {start:#x} reaches {target:#x}")
    return int(best[0])


def nhwc_sass(insns: List[Tuple[int, str, str]], k: int = K) -> NhwcSass:
    """The pixel loop is the loop that stores (STG). Of the paths through it, the one with the
    most FFMA and the fewest instructions (cheapest_full_path): a pixel with every tap inside
    the image and the spatial filter's taps contiguous. A pixel loop that holds loops steps two
    pixels at a time (interior_pair in ddf_cuda_nhwc_kernels.cuh: one loop per spatial-filter
    layout, k trips over the tap rows): its step costs the shortest way into a row loop, k
    trips of its cheapest full path and the shortest way from it to the next step, the
    cheapest of the loops. The staging as nhwc_staging()."""
    every = list(walk(loops_of(insns)))
    pixel_loops = [lp for lp in every if lp.has("STG")]
    if len(pixel_loops) != 1 or any(r.children or r.has("STG") for r in pixel_loops[0].children):
        raise ValueError("unexpected loop structure: the model needs updating for this kernel")
    lp = pixel_loops[0]
    if not lp.children:
        _, pixel = cheapest_full_path(insns, lp.start, lp.end)
    else:
        after = {a: b for (a, _, _), (b, _, _) in zip(insns, insns[1:])}
        pixel = min(shortest_path(insns, lp.start, r.start) + k * cheapest_full_path(insns, r.start, r.end)[1] +
                    shortest_path(insns, after[r.end], lp.end) + 1 for r in lp.children)
    stages = [l for l in every if l.has("LDG") and l.has("STS") and not l.has("STG")]
    return nhwc_staging(insns, every, stages, pixel)


def nhwc_pixel_iterations(p: NhwcPlan, map_h: int, map_w: int, threads: int = 256) -> List[float]:
    """Per warp of a block, the pixel-loop iterations in which some lane of the warp has a pixel
    of the map (averaged over the tiles): the warp issues the whole step then, for every lane
    (lanes counted as launched). A thread of pixel lane lp takes steps lp, lp + pixel_lanes, ...
    of its tile, row-major in rows of steps_w steps of p.step pixels."""
    pixel_lanes = threads // p.channel_lanes
    tiles_x, tiles_y = _ceil_div(map_w, p.tile_w), _ceil_div(map_h, p.tile_h)
    steps = p.steps_w * p.tile_h
    per_warp = [0.0] * (threads // 32)
    for ty in range(tiles_y):
        for tx in range(tiles_x):
            for w in range(threads // 32):
                lanes = sorted({t // p.channel_lanes for t in range(32 * w, 32 * w + 32)})
                q = 0
                while any(lp + q * pixel_lanes < steps for lp in lanes):
                    ours = [lp + q * pixel_lanes for lp in lanes if lp + q * pixel_lanes < steps]
                    if any(ty * p.tile_h + st // p.steps_w < map_h and tx * p.tile_w + st % p.steps_w * p.step < map_w
                           for st in ours):
                        per_warp[w] += 1
                    q += 1
    return [n / (tiles_x * tiles_y) for n in per_warp]


def nhwc_work(p: NhwcPlan, ns: NhwcSass, per_sm: int, B: int, S: int, k: int, moved: float) -> BlockWork:
    """The conservative model's view of one channels_last forward launch. Per block: every warp
    stages its share of the channel filters (the unrolled loop's trips, each one round trip to
    L2, then the remainder's), runs its code outside the loops once, and the pixel path once
    per pixel iteration; each pixel iteration is one DRAM round trip on the block's critical
    path (its loads all in flight, then its compute: nothing of the thread's overlaps them)."""
    threads, warps = 256, 8
    elements = _ceil_div(k * k * p.block_channels, threads)  # staged filter values per thread
    main_trips, rest_trips = divmod(elements, max(ns.stage_loads, 1))
    iterations = nhwc_pixel_iterations(p, S, S, threads)
    parts = {"filter staging": warps * (main_trips * ns.stage + rest_trips * ns.stage_rest),
             "compute": sum(iterations) * ns.pixel,
             "prologue/epilogue": warps * ns.outside}
    blocks = p.tiles * p.channel_blocks * B
    dram_rounds = max(_ceil_div(p.steps_w * p.tile_h - lp, threads // p.channel_lanes)
                      for lp in range(threads // p.channel_lanes))
    return BlockWork(blocks, threads, per_sm, sum(parts.values()), dram_rounds, main_trips + rest_trips, moved, parts)


@dataclasses.dataclass
class NhwcGradSass:
    """The channels_last filter-gradient kernel's SASS as the model counts it
    (csrc/cuda/ddf_cuda_nhwc_backward_kernels.cuh)."""

    round: int  # one (pixel, tap) of a thread: the cheapest full path through the round loop
    shuffle_step: int  # one step of the head's shuffle tree (unrolled in the round loop)
    store: int  # the grad_spatial_filter store of a head's first lane
    tap: int  # the tap loop's own code, once per tap (the sums' stores to shared memory)
    sum_trip: int  # one channel's sum: the sum loop's own code
    sum_inner: int  # its inner loop over the pixel lanes, per trip
    sum_unroll: int  # pixel lanes per inner trip (its shared loads)
    stage: NhwcSass  # the channel-filter staging, counted as the forward's


def nhwc_filter_grads_sass(insns: List[Tuple[int, str, str]]) -> NhwcGradSass:
    """The tap loop is the loop with the barrier; inside it, the round loop is the one that
    loads from global memory and shuffles, the sum loop the one that stores to global memory
    and holds the loop over the pixel lanes (shared loads). Of the round loop's paths, the one
    with the most FFMA and the fewest instructions (cheapest_full_path) skips the head's
    shuffle steps and the store: they are added back, per step (from one SHFL.DOWN to the next)
    and per (pixel, tap) (from the tree's last add to the first store)."""
    every = list(walk(loops_of(insns)))
    taps = [lp for lp in every if lp.has("BAR")]
    if len(taps) != 1:
        raise ValueError("unexpected loop structure: the model needs updating for this kernel")
    tap = taps[0]
    rounds = [lp for lp in tap.children if lp.has("LDG") and lp.has("SHFL")]
    sums = [lp for lp in tap.children if lp.has("STG") and lp.children]
    if len(rounds) != 1 or len(sums) != 1:
        raise ValueError("unexpected loop structure: the model needs updating for this kernel")
    lp = rounds[0]
    _, path = cheapest_full_path(insns, lp.start, lp.end)
    body = [(a, op) for a, op, _ in insns if lp.start <= a <= lp.end]
    shfl = [i for i, (_, op) in enumerate(body) if op.startswith("SHFL.DOWN")]
    step = shfl[1] - shfl[0] if len(shfl) > 1 else 4
    stores = [i for i, (_, op) in enumerate(body) if op.startswith("STG")]
    tree_end = next((i for i in range(shfl[-1], len(body)) if body[i][1].startswith("FADD")), shfl[-1]) if shfl else 0
    store = stores[0] - tree_end if stores else 0
    inner = min(sums[0].children, key=lambda l: l.size)
    stages = [l for l in every if l.has("LDG") and l.has("STS") and not l.has("SHFL")]
    staging = nhwc_staging(insns, every, stages, 0)
    return NhwcGradSass(path, step, store, tap.own, sums[0].own, inner.size, max(_loads(inner, "LDS"), 1), staging)


def nhwc_filter_grads_work(p: NhwcPlan, ng: NhwcGradSass, per_sm: int, B: int, S: int, k: int,
                           moved: float) -> BlockWork:
    """The conservative model's view of one channels_last filter-gradient launch. Per block and
    tap, every warp runs every round (the shuffles keep whole warps together): the round path,
    the head's shuffle steps (log2 head_lanes) and the store (some lane of every warp is a
    head's first); then the tap's own code, and the warps that hold a channel of the block sum
    the pixel lanes' sums. Memory: the first tap's rounds are DRAM round trips on the block's
    critical path, the other taps' loads hit L1 (the same grad_output, the neighbouring input),
    and each tap's barrier and sums are one L2 round trip (their stores)."""
    threads, warps = 256, 8
    kk = k * k
    pixel_lanes = threads // p.channel_lanes
    rounds = _ceil_div(p.tile_w * p.tile_h, pixel_lanes)
    steps = max(p.head_lanes.bit_length() - 1, 0)
    sum_warps = min(warps, _ceil_div(p.block_channels, 32))  # warps with a channel to sum (one trip each)
    per_round = ng.round + steps * ng.shuffle_step + ng.store
    elements = _ceil_div(kk * p.block_channels, threads)
    main_trips, rest_trips = divmod(elements, max(ng.stage.stage_loads, 1))
    parts = {"filter staging": warps * (main_trips * ng.stage.stage + rest_trips * ng.stage.stage_rest),
             "rounds": kk * warps * rounds * per_round,
             "channel-filter sums": kk * (warps * ng.tap + sum_warps * (
                 ng.sum_trip + _ceil_div(pixel_lanes, ng.sum_unroll) * ng.sum_inner)),
             "prologue/epilogue": warps * ng.stage.outside}
    blocks = p.tiles * p.channel_blocks * B
    return BlockWork(blocks, threads, per_sm, sum(parts.values()), rounds, main_trips + rest_trips + kk, moved, parts)


def model(funcs, res, dtype: str, gpu: Gpu = H100_SXM) -> List[Row]:
    e = DTYPE_BYTES[dtype]
    tag = DTYPE_TAG[dtype]
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

    def row(*args, work: BlockWork) -> Row:
        return Row(gpu.name, *args, work=work, cons=launch_time(work, gpu), dram_bw=gpu.dram_bw)

    for C, S in SHAPES:
        B = BATCH
        x = out = B * C * S * S
        sf = B * kk * S * S
        cf = B * C * kk
        shape = f"{C}@{S}²"

        # Generic kernels: one thread per element, every tensor read once from DRAM (the
        # caches absorb the tap re-reads), one load in flight per thread. Conservative: every
        # launched lane of their grids (PixelLaunch: a row of a power of two columns up to 32)
        # issues the per-element SASS, one round trip per element.
        tile_cols = min(32, 1 << (S - 1).bit_length())
        tile_rows = 256 // tile_cols

        def generic(kernel: str, pattern: str, min_b: float, outputs: int, sass: float, planes: int) -> None:
            regs, smem = usage(fn(pattern))
            occ = occupancy_of(regs, 256, smem, 0)
            t = estimate_time(min_b, sass * outputs, occ.fraction, 1, e, gpu=gpu)
            if kernel == "grad_channel":  # a 256-thread block per (b, c, tap) reduces over the map
                blocks, trips = planes, _ceil_div(S * S, 256)
                work = BlockWork(blocks, 256, occ.blocks_per_sm, 8 * trips * GENERIC_SASS["grad_channel"], trips, 0, min_b)
            else:
                blocks = _ceil_div(S, tile_cols) * _ceil_div(planes * S, tile_rows)
                work = BlockWork(blocks, 256, occ.blocks_per_sm, 8 * sass, 1, 0, min_b)
            rows.append(row(shape, dtype, "generic", kernel, min_b, min_b, sass, sass, outputs, regs, occ.fraction, t,
                            work=work))

        generic("forward", rf"4cuda14forward_kernelI{tag}LNS_7CombineE0E", e * (x + cf + sf + out), out,
                GENERIC_SASS["forward"], B * C)
        generic("grad_input", rf"4cuda17grad_input_kernelI{tag}LNS_7CombineE0E", e * (out + cf + sf + x), x,
                GENERIC_SASS["grad_input"], B * C)
        per_px, per_elem = GENERIC_SASS["grad_spatial"]
        generic("grad_spatial", rf"4cuda19grad_spatial_kernelI{tag}LNS_7CombineE0E", e * (out + x + cf + sf), sf,
                per_px * C + per_elem, B * kk)
        generic("grad_channel", rf"4cuda19grad_channel_kernelI{tag}LNS_7CombineE0E", e * (out + x + sf + cf),
                cf, GENERIC_SASS["grad_channel"] * S * S, B * C * kk)

        def partial_sums(design: str, tiles: int, splits: int) -> None:
            """The fixed-order sums of the filter gradients' partials: one thread per result
            element, whose loop (read from the SASS) runs once per tile or split."""
            for what, count, reads in (("channel", cf, tiles if tiles > 1 else 0),
                                       ("spatial", sf, splits if splits > 1 else 0)):
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
                sum_blocks = _ceil_div(count, 256)
                trips = _ceil_div(reads, unroll)
                every = list(walk(loops_of(funcs[name])))
                outer = _enclosing(loop, every)  # the grid-stride loop: its own code once per element
                per_thread = loop.size * trips + (outer.own if outer else 0)
                work = BlockWork(sum_blocks, 256, occ.blocks_per_sm, 8 * per_thread, trips, 0, n)
                rows.append(row(shape, dtype, design, f"sum_{what}_partials", 0, n, per, per, count, regs,
                                occ.fraction, estimate_time(n, per * count, occ.fraction, min(unroll, reads), e,
                                                            sum_blocks, gpu=gpu), work=work))

        # Tiled kernels.
        for kernel, pattern, reducing in (
            ("forward", rf"tiled20tiled_forward_kernelI{tag}LNS_7CombineE0ELi3ELi1E", False),
            ("grad_input", rf"tiled23tiled_grad_input_kernelI{tag}LNS_7CombineE0ELi3ELi1E", False),
            ("filter_grads", rf"tiled25tiled_filter_grads_kernelI{tag}LNS_7CombineE0ELi3ELi1ELi2E", True),
        ):
            p = plan_tiled(kernel, B, C, S, S, K, 1, 1, 1)
            name = fn(pattern)
            ts = tiled_sass(funcs[name], reducing)
            tl = tiled_loops(funcs[name], reducing)
            regs, smem = usage(name)
            threads = p.tx * p.ty * p.tz
            occ = occupancy_of(regs, threads, smem, p.shared_bytes)
            tile_px = p.tx * p.ty * p.rows  # pixels of a lane
            halo_per_px = p.halo_h * p.halo_w / tile_px  # staged elements per pixel and channel
            # Per output: the inner loop (per channel; per R pixels when reducing), the staging
            # loop (per staged element, for all ch channels), the step's own code.
            outputs_per_step = p.ch * p.rows
            # (Grouped: the step's compute path, for its ch channels, is not step code.)
            inner = ts.compute / p.ch if ts.compute else ts.inner / (p.rows if reducing else 1)
            # (The step's first-warp-only code, the channel-filter staging, once per lane's warps.)
            step_sass = ts.step - ts.compute_code - ts.first_warp + ts.first_warp / (p.tx * p.ty // 32)
            sass = inner + ts.staging * halo_per_px / p.ch + step_sass / outputs_per_step
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
            t = estimate_time(moved, sass * outputs, occ.fraction, p.ch, e, blocks, threads, gpu=gpu)
            work = tiled_work(kernel, p, ts, tl, occ.blocks_per_sm, B, S, moved)
            rows.append(row(shape, dtype, "tiled", kernel, min_b, moved, sass, inner, outputs, regs, occ.fraction, t,
                            work=work))
            if kernel == "filter_grads":
                partial_sums("tiled", p.tiles, p.splits)
        # The channels_last kernels: forward, grad_input (the same loop structure, over the
        # input map) and the filter gradients, with their partial sums.
        p = plan_nhwc(B, C, S, S, K, 1, 1, 1, e)
        if p is not None:
            for kernel, min_b, outputs in (("forward", e * (x + cf + sf + out), out),
                                           ("grad_input", e * (out + cf + sf + x), x)):
                q = plan_nhwc(B, C, S, S, K, 1, 1, 1, e, kernel)
                name = fn(rf"nhwc{len(kernel) + 12}nhwc_{kernel}_kernelI{tag}LNS_7CombineE0ELi3ELi1ELi{q.vector}E")
                ns = nhwc_sass(funcs[name])
                regs, smem = usage(name)
                occ = occupancy_of(regs, 256, smem, q.shared_bytes)
                moved = min_b - e * sf + e * sf * q.channel_blocks
                work = nhwc_work(q, ns, occ.blocks_per_sm, B, S, K, moved)
                sass = ns.pixel / q.vector / q.step
                t = estimate_time(moved, sass * outputs, occ.fraction, K * K, e, work.blocks, 256, gpu=gpu)
                rows.append(row(shape, dtype, "nhwc", kernel, min_b, moved, sass, sass, outputs, regs, occ.fraction, t,
                                work=work))
            q = plan_nhwc(B, C, S, S, K, 1, 1, 1, e, "filter_grads")
            name = fn(rf"nhwc24nhwc_filter_grads_kernelI{tag}LNS_7CombineE0ELi3ELi1ELi{q.vector}E")
            ng = nhwc_filter_grads_sass(funcs[name])
            regs, smem = usage(name)
            occ = occupancy_of(regs, 256, smem, q.shared_bytes)
            min_b = e * (out + x + cf + sf + cf + sf)
            channel = e * cf if q.tiles == 1 else 4 * q.tiles * B * C * kk
            spatial = e * sf if q.head_blocks == 1 else 4 * sf * q.head_blocks
            moved = e * (out + x + cf + sf * q.channel_blocks) + channel + spatial
            work = nhwc_filter_grads_work(q, ng, occ.blocks_per_sm, B, S, K, moved)
            thread_channels = q.block_channels // q.channel_lanes
            sass = (ng.round + max(q.head_lanes.bit_length() - 1, 0) * ng.shuffle_step) * kk / thread_channels
            t = estimate_time(moved, sass * out, occ.fraction, 2 * thread_channels // q.vector, e, work.blocks, 256,
                              gpu=gpu)
            rows.append(row(shape, dtype, "nhwc", "filter_grads", min_b, moved, sass, sass, out, regs, occ.fraction, t,
                            work=work))
            partial_sums("nhwc", q.tiles, q.head_blocks)
    return rows



BACKWARD = ("grad_input", "grad_spatial", "grad_channel", "filter_grads", "sum_channel_partials", "sum_spatial_partials")


def summarize(rows: List[Row]) -> List[dict]:
    """Per (device, shape, dtype, design): forward and backward time in both columns (the
    backward: every launch of ddf_backward with all three gradients), their ratio, the
    forward's bandwidth share (min bytes: optimistic against peak DRAM, conservative against
    copy bandwidth) and its SASS per output."""
    out = []
    order = {d: i for i, d in enumerate(DTYPES)}
    keys = sorted({(r.gpu, r.shape, r.dtype, r.design) for r in rows},
                  key=lambda k: (k[0], k[3] != "tiled", order[k[2]], -int(k[1].split("@")[1][:-1])))
    for gpu, shape, dtype, design in keys:
        sel = [r for r in rows if (r.gpu, r.shape, r.dtype, r.design) == (gpu, shape, dtype, design)]
        fwd = next(r for r in sel if r.kernel == "forward")
        bwd = [r for r in sel if r.kernel in BACKWARD]
        copy_bw = fwd.dram_bw * DEVICES_BY_NAME[gpu].copy_efficiency
        out.append(dict(
            gpu=gpu, shape=shape, dtype=dtype, design=design,
            forward_us=fwd.time_s * 1e6, backward_us=sum(r.time_s for r in bwd) * 1e6,
            cons_forward_us=fwd.cons_s * 1e6, cons_backward_us=sum(r.cons_s for r in bwd) * 1e6,
            ratio=sum(r.time_s for r in bwd) / fwd.time_s, cons_ratio=sum(r.cons_s for r in bwd) / fwd.cons_s,
            forward_bw=fwd.min_bytes / fwd.time_s / fwd.dram_bw,
            cons_forward_copy=fwd.min_bytes / fwd.cons_s / copy_bw,
            sass=fwd.sass_per_output, cons_sass=fwd.cons_sass_per_output,
            forward=fwd, backward=bwd))
    return out


DEVICES_BY_NAME = {g.name: g for g in DEVICES.values()}


def targets(rows: List[Row]) -> List[Tuple[bool, str]]:
    """Issue 18's targets on the conservative column of the tiled kernels: (passed, line); a
    miss says where the time (or the instructions) go."""
    lines = []
    for s in summarize(rows):
        if s["design"] != "tiled":
            continue
        where = f"{s['gpu']} {s['shape']} {s['dtype']}"
        fwd: Row = s["forward"]
        size = int(s["shape"].split("@")[1][:-1])
        need = TARGET_FWD_COPY_SHARE[s["dtype"]] if size in (56, 28) else TARGET_FWD_COPY_SHARE_ALL
        ok = s["cons_forward_copy"] >= need
        lines.append((ok, f"{where}: forward {s['cons_forward_copy']:.0%} of copy bandwidth (target >= {need:.0%})"
                          + ("" if ok else f": {fwd.cons_s * 1e6:.1f} µs = {fwd.cons.describe()}")))
        need = TARGET_FWD_SASS[s["dtype"]]
        ok = s["cons_sass"] <= need
        split = ", ".join(f"{k} {v * fwd.work.blocks * 32 / fwd.outputs:.0f}" for k, v in fwd.work.parts.items())
        lines.append((ok, f"{where}: forward {s['cons_sass']:.0f} SASS per output (target <= {need})"
                          + ("" if ok else f": {split}")))
        ok = s["cons_ratio"] <= TARGET_BWD_OVER_FWD
        split = ", ".join(f"{r.kernel} {r.cons_s * 1e6:.1f}" for r in s["backward"])
        lines.append((ok, f"{where}: backward {s['cons_ratio']:.2f}x forward (target <= {TARGET_BWD_OVER_FWD})"
                          + ("" if ok else f": forward {fwd.cons_s * 1e6:.1f} µs, backward {split} µs")))
    return lines


# Issue 19's targets for the channels_last path (design "nhwc"), on the conservative column.
TARGET_NHWC_FWD_COPY_SHARE = 0.70  # at 56² and 28², every float dtype
TARGET_NHWC_OVER_GENERIC = 5.0  # the forward at least this much faster than the generic kernels


def targets_nhwc(rows: List[Row]) -> List[Tuple[bool, str]]:
    """Issue 19's targets on the conservative column of the channels_last kernels."""
    lines = []
    summary = summarize(rows)
    for s in summary:
        if s["design"] != "nhwc":
            continue
        where = f"{s['gpu']} {s['shape']} {s['dtype']}"
        fwd: Row = s["forward"]
        size = int(s["shape"].split("@")[1][:-1])
        need = TARGET_NHWC_FWD_COPY_SHARE if size in (56, 28) else TARGET_FWD_COPY_SHARE_ALL
        ok = s["cons_forward_copy"] >= need
        split = ", ".join(f"{k} {v * fwd.work.blocks * 32 / fwd.outputs:.0f}" for k, v in fwd.work.parts.items())
        lines.append((ok, f"{where}: channels_last forward {s['cons_forward_copy']:.0%} of copy bandwidth "
                          f"(target >= {need:.0%}), {s['cons_sass']:.0f} SASS per output"
                          + ("" if ok else f": {fwd.cons_s * 1e6:.1f} µs = {fwd.cons.describe()}; SASS/output: {split}")))
        generic = next(g for g in summary if g["design"] == "generic" and
                       (g["gpu"], g["shape"], g["dtype"]) == (s["gpu"], s["shape"], s["dtype"]))
        speedup = generic["cons_forward_us"] / s["cons_forward_us"]
        lines.append((speedup >= TARGET_NHWC_OVER_GENERIC,
                      f"{where}: channels_last forward {speedup:.1f}x the generic kernels (target >= "
                      f"{TARGET_NHWC_OVER_GENERIC:.0f}x)"))
        ok = s["cons_ratio"] <= TARGET_BWD_OVER_FWD
        lines.append((ok, f"{where}: channels_last backward {s['cons_ratio']:.2f}x forward (target <= "
                          f"{TARGET_BWD_OVER_FWD})"
                          + ("" if ok else ": " + ", ".join(f"{r.kernel} {r.cons_s * 1e6:.1f}" for r in s["backward"]) + " µs")))
    return lines


def markdown(rows: List[Row], kernels: bool = True) -> str:
    lines = []
    if kernels:
        lines += ["| device | shape | dtype | design | kernel | min DRAM MB | moved MB | regs | occupancy | blocks | "
                  "blocks/SM | optimistic µs | conservative µs | conservative: where the time goes (µs) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r.gpu} | {r.shape} | {r.dtype} | {r.design} | {r.kernel} | {r.min_bytes / 1e6:.1f} | "
                         f"{r.moved_bytes / 1e6:.1f} | {r.registers} | {r.occupancy:.0%} | {r.work.blocks} | "
                         f"{r.work.per_sm} | {r.time_s * 1e6:.1f} | {r.cons_s * 1e6:.1f} | {r.cons.describe()} |")
        lines.append("")
    lines += ["| device | shape | dtype | design | forward µs opt. / cons. | backward µs opt. / cons. | "
              "backward/forward opt. / cons. | forward share: of peak DRAM (opt.) / of copy BW (cons.) | "
              "forward SASS/output opt. / cons. |",
              "|---|---|---|---|---|---|---|---|---|"]
    for s in summarize(rows):
        lines.append(f"| {s['gpu']} | {s['shape']} | {s['dtype']} | {s['design']} | {s['forward_us']:.1f} / "
                     f"{s['cons_forward_us']:.1f} | {s['backward_us']:.1f} / {s['cons_backward_us']:.1f} | "
                     f"{s['ratio']:.2f} / {s['cons_ratio']:.2f} | {s['forward_bw']:.0%} / {s['cons_forward_copy']:.0%} | "
                     f"{s['sass']:.0f} / {s['cons_sass']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--library", default=cr.default_library())
    ap.add_argument("--markdown", action="store_true", help="print the per-kernel table too (markdown)")
    ap.add_argument("--device", choices=sorted(DEVICES) + ["all"], default="all")
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
    gpus = list(DEVICES.values()) if args.device == "all" else [DEVICES[args.device]]
    try:
        rows = [r for gpu in gpus for dtype in DTYPES for r in model(funcs, res, dtype, gpu)]
    except RuntimeError as e:  # a library older than _cuda_tiled_plan
        print(f"gpu_model: {e}", file=sys.stderr)
        return 2
    print("ESTIMATES from a static model (sm_90 cubin registers and SASS, the library's launch plans), "
          "not measurements.")
    print(f"B={BATCH}, k={K}, stride 1, one head, 'mul'. Optimistic: the model until issue 18 (peak issue, "
          "useful lanes, bytes in flight all the time, no waves, no launch cost, peak DRAM).")
    for g in gpus:
        print(f"{g.name}: {g.dram_bw / 1e12:.2f} TB/s peak DRAM, copy {copy_bandwidth(g) / 1e12:.2f} TB/s "
              f"({g.copy_efficiency:.0%}), {g.sms} SMs at {g.clock_hz / 1e9:.3f} GHz, issue {g.sustained_issue} "
              f"sustained / {g.peak_issue:.0f} peak warp instr/clk/SM, DRAM {g.dram_latency_s * 1e9:.0f} ns, "
              f"L2 {g.l2_latency_s * 1e9:.0f} ns, {g.launch_s * 1e6:.0f} µs per launch.")
    print(markdown(rows, kernels=args.markdown))
    print()
    print("Issue 18 targets, conservative column, tiled kernels:")
    for ok, line in targets(rows):
        print(("PASS " if ok else "MISS ") + line)
    print()
    print("Issue 19 targets, conservative column, channels_last kernels:")
    for ok, line in targets_nhwc(rows):
        print(("PASS " if ok else "MISS ") + line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
