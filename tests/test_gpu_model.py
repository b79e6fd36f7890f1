"""tools/cuda_static/gpu_model.py: its launch plans (the library's own, through
torch.ops.ddf._cuda_tiled_plan), its SASS loop analysis, each effect of the conservative
estimate (pure functions, hand-computed cases), and a run on the built library (a CUDA build:
the cubins are read, no GPU is needed)."""

import dataclasses
import functools
import re
import subprocess
from collections import defaultdict

import pytest
import torch

from tools.cuda_static import cuda_resources as cr
from tools.cuda_static import gpu_model as gm

PLAN_FIELDS = ["tx", "ty", "tz", "ch", "rows", "halo_h", "halo_w", "tiles", "splits", "split_channels", "shared_bytes"]

# The plans of the ResNet-50 DDF shapes (B=64, k=3, stride 1, one head), as
# csrc/cuda/ddf_cuda_tiled_plan.h makes them (the figures of the Python copy of the plan that
# the model kept until issue 17, which was checked against the C++ on 68 geometries):
# PLAN_FIELDS per (kernel, C, map size).
RESNET50_PLANS = {
    ("forward", 64, 56): [32, 8, 1, 8, 1, 10, 34, 14, 2, 32, 11168],
    ("forward", 128, 28): [32, 8, 1, 8, 1, 10, 34, 4, 4, 32, 11168],
    ("forward", 256, 14): [16, 16, 1, 8, 1, 18, 18, 1, 16, 16, 10656],
    ("forward", 512, 7): [8, 8, 4, 8, 1, 10, 10, 1, 16, 32, 13952],
    ("grad_input", 64, 56): [32, 8, 1, 8, 1, 11, 35, 14, 2, 32, 12704],
    ("grad_input", 128, 28): [32, 8, 1, 8, 1, 11, 35, 4, 4, 32, 12704],
    ("grad_input", 256, 14): [16, 16, 1, 8, 1, 19, 19, 1, 16, 16, 11936],
    ("grad_input", 512, 7): [8, 8, 4, 8, 1, 11, 11, 1, 16, 32, 17024],
    ("filter_grads", 64, 56): [32, 8, 1, 8, 2, 18, 34, 8, 1, 64, 38656],
    ("filter_grads", 128, 28): [32, 8, 1, 8, 2, 18, 34, 2, 2, 64, 38656],  # 2 splits: 256 blocks, one wave
    ("filter_grads", 256, 14): [16, 8, 2, 8, 2, 18, 18, 1, 4, 64, 40192],
    ("filter_grads", 512, 7): [8, 4, 8, 8, 2, 10, 10, 1, 4, 128, 47360],
}


@pytest.mark.parametrize("kernel,C,S", sorted(RESNET50_PLANS))
def test_model_plans_the_resnet50_shapes_as_the_library_does(kernel, C, S):
    # Any build has the op, CPU-only too: the plan is host code.
    raw = torch.ops.ddf._cuda_tiled_plan(kernel, gm.BATCH, C, S, S, gm.K, 1, 1, 1)
    assert raw == [1] + RESNET50_PLANS[kernel, C, S]
    p = gm.plan_tiled(kernel, gm.BATCH, C, S, S, gm.K, 1, 1, 1)
    assert [getattr(p, f) for f in PLAN_FIELDS] == RESNET50_PLANS[kernel, C, S]


def test_filter_grads_split_for_whole_waves():
    """The filter-gradient plan picks the channel splits whose waves x steps per block is least
    (ddf_cuda_tiled_plan.h, plan_split_channels), with a wave of 132 SMs x 2 blocks for k = 3."""
    assert torch.ops.ddf._cuda_tiled_filter_grads_wave(3) == [132, 2]
    assert torch.ops.ddf._cuda_tiled_filter_grads_wave(7) == [132, 1]

    def splits(B, C, S, k=3):
        p = gm.plan_tiled("filter_grads", B, C, S, S, k, 1, 1, 1)
        return p.tiles * p.splits * B, p.splits, p.split_channels

    # 128@28², B=64: 128 blocks per split. 3 splits of 48 channels (384 blocks: 2 waves of 6
    # steps, the old plan) cost 12; 2 splits of 64 (256 blocks, 1 wave of 8 steps) cost 8.
    assert splits(64, 128, 28) == (256, 2, 64)
    # B=32: 64 blocks per split. 4 splits (256 blocks, 1 wave x 4 steps) ties with 8 (512
    # blocks, 2 waves x 2 steps): the fewer splits.
    assert splits(32, 128, 28) == (256, 4, 32)
    # Already a wave and more without splitting (64@56², B=64: 512 blocks): one split.
    assert splits(64, 64, 56) == (512, 1, 64)
    # k = 7: one block per SM, a wave of 132. 64 channels at 28², B=4: 8 blocks per split
    # (tiles of 32 x 8 rows: 4 tiles), 1 lane of 8 channels a step: 8 splits of 8 (64 blocks,
    # one wave of 1 step).
    blocks, n, channels = splits(4, 64, 28, k=7)
    assert (n, channels) == (8, 8) and blocks <= 132


def test_smaller_calls_and_calls_that_take_the_generic_kernels():
    # Fewer channels than a lane step, stride 2, dilation 3, k = 7: planned. The forward
    # stages a group of four channels (ddf_cuda_tiled_plan.h, grouped_lane_floats): 49 x 8
    # filter floats and 4 x 2676 tile floats (the 33 x 81 halo rounded up to 4).
    p = gm.plan_tiled("forward", 1, 3, 20, 33, 7, 1, 2, 3)
    assert [getattr(p, f) for f in PLAN_FIELDS] == [32, 8, 1, 3, 1, 33, 81, 2, 1, 3, (49 * 8 + 4 * 2676) * 4]
    p = gm.plan_tiled("filter_grads", 2, 6, 37, 70, 3, 1, 2, 1)
    assert [getattr(p, f) for f in PLAN_FIELDS] == [32, 8, 1, 3, 2, 33, 65, 4, 2, 3, 32928]
    # k = 9, stride 3, and a halo (dilation 40, k = 7) over 48 KiB: generic kernels.
    assert torch.ops.ddf._cuda_tiled_plan("forward", 64, 64, 56, 56, 9, 1, 1, 1) == [0]
    assert gm.plan_tiled("grad_input", 64, 64, 56, 56, 3, 1, 3, 1) is None
    assert gm.plan_tiled("forward", 1, 2, 300, 3, 7, 1, 1, 40) is None


def test_plan_op_rejects_what_the_plan_cannot_take():
    with pytest.raises(RuntimeError, match="kernel must be"):
        torch.ops.ddf._cuda_tiled_plan("backward", 1, 4, 8, 8, 3, 1, 1, 1)
    with pytest.raises(RuntimeError, match="divide C"):
        torch.ops.ddf._cuda_tiled_plan("forward", 1, 4, 8, 8, 3, 3, 1, 1)
    with pytest.raises(RuntimeError, match="odd"):
        torch.ops.ddf._cuda_tiled_plan("forward", 1, 4, 8, 8, 4, 1, 1, 1)


SASS = """
        Function : kern
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
        /*0020*/                   LDG.E R2, desc[UR4][R4.64] ;
        /*0030*/                   STS [R3], R2 ;
        /*0040*/               @P0 BRA 0x20 ;
        /*0050*/                   LDS R5, [R3] ;
        /*0060*/                   FFMA R6, R5, R5, R6 ;
        /*0070*/                   STG.E desc[UR4][R8.64], R6 ;
        /*0080*/              @!P1 BRA 0x50 ;
        /*0090*/               @P2 BRA 0x10 ;
        /*00a0*/                   EXIT ;
        /*00b0*/                   BRA 0xb0;
"""


def test_loops_nest_and_count_their_own_instructions():
    funcs = gm.sass_functions(SASS)
    assert list(funcs) == ["kern"] and len(funcs["kern"]) == 12
    roots = gm.loops_of(funcs["kern"])
    # The self-branch at 0xb0 is its own (trivial) loop; the step loop 0x10-0x90 nests two.
    step = next(l for l in roots if l.start == 0x10)
    assert (step.size, step.own) == (9, 2)
    assert sorted((c.start, c.end) for c in step.children) == [(0x20, 0x40), (0x50, 0x80)]
    ts = gm.tiled_sass(funcs["kern"], reducing=False)
    assert (ts.inner, ts.staging, ts.step) == (4, 3, 2)


VOTE_SASS = """
        Function : votes
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
        /*0020*/               @P0 BRA 0x70 ;
        /*0030*/                   LDG.E R2, desc[UR4][R4.64] ;
        /*0040*/                   STS [R3], R2 ;
        /*0050*/                   BRA.DIV UR6, 0xd0 ;
        /*0060*/                   VOTE.ANY R5, PT, P1 ;
        /*0070*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
        /*0080*/                   LDS R5, [R3] ;
        /*0090*/                   STG.E desc[UR4][R8.64], R5 ;
        /*00a0*/               @P2 BRA 0x10 ;
        /*00b0*/                   EXIT ;
        /*00c0*/                   NOP ;
        /*00d0*/                   VOTE.ANY R5, PT, P1 ;
        /*00e0*/                   BRA 0x60 ;
        /*00f0*/                   BRA 0xf0;
"""


def test_first_warp_region_and_vote_fallbacks():
    insns = gm.sass_functions(VOTE_SASS)["votes"]
    # The fallback at 0xd0 jumps back into the body from past the last EXIT: no loop. The step
    # loop is 0x10-0xa0; the self-branch at 0xf0 stays a trivial loop.
    assert sorted((l.start, l.end) for l in gm.walk(gm.loops_of(insns))) == [(0x10, 0xa0), (0xf0, 0xf0)]
    # `@P0 BRA 0x70` skips 0x30-0x60, the load, store and vote of the first warp only.
    assert list(gm.first_warp_region(insns, 0x10, 0xa0)) == [0x30, 0x40, 0x50, 0x60]
    assert gm.first_warp_region(insns, 0x70, 0xa0) == range(0)


GROUPED_SASS = """
        Function : grouped
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
        /*0020*/                   LDG.E R2, desc[UR4][R4.64] ;
        /*0030*/                   STS [R3], R2 ;
        /*0040*/               @P0 BRA 0x20 ;
        /*0050*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
        /*0060*/               @P1 BRA 0x100 ;
        /*0070*/               @P3 BRA 0xb0 ;
        /*0080*/                   FFMA R6, R5, R5, R6 ;
        /*0090*/                   FFMA R6, R5, R5, R6 ;
        /*00a0*/                   BRA 0xf0 ;
        /*00b0*/               @P4 BRA 0xd0 ;
        /*00c0*/                   FFMA R6, R5, R5, R6 ;
        /*00d0*/               @P5 BRA 0xf0 ;
        /*00e0*/                   FFMA R6, R5, R5, R6 ;
        /*00f0*/                   STG.E desc[UR4][R8.64], R6 ;
        /*0100*/                   IADD3 R7, R7, 0x1, RZ ;
        /*0110*/               @P2 BRA 0x10 ;
        /*0120*/                   EXIT ;
        /*0130*/                   BRA 0x130;
"""


def test_grouped_compute_is_the_cheapest_path_through_all_the_work():
    insns = gm.sass_functions(GROUPED_SASS)["grouped"]
    # Guards are kept with the operands; an unguarded BRA has no fall-through.
    assert insns[6] == (0x60, "BRA", "@P1 0x100") and insns[10] == (0xa0, "BRA", "0xf0")
    # From after the last barrier: the no-pixel path (0 FFMA), the checked copy (2 FFMA in 9
    # instructions with every tap inside) and the unchecked one (2 FFMA in 8): the last.
    assert gm.cheapest_full_path(insns, 0x60, 0x110) == (2, 8)
    ts = gm.tiled_sass(insns, reducing=False)
    # No inner loop: the step loop 0x10-0x110 owns 17 - 3 (staging) = 14, of which 12 after
    # its last barrier are compute code.
    assert (ts.inner, ts.staging, ts.step, ts.compute, ts.compute_code) == (0, 3, 14, 8, 12)
    loops = gm.tiled_loops(insns, reducing=False)
    assert (loops.staging, loops.other, loops.outside) == (3, 0, 2)
    # A loop in that code is not straight-line: the model refuses to guess.
    looped = GROUPED_SASS.replace("@P5 BRA 0xf0", "@P5 BRA 0xc0")
    with pytest.raises(ValueError, match="loop"):
        gm.tiled_sass(gm.sass_functions(looped)["grouped"], reducing=False)


def test_tiled_loops_on_a_kernel_without_row_loop():
    loops = gm.tiled_loops(gm.sass_functions(SASS)["kern"], reducing=False)
    # The staging loop is the step's own child here; no filter loop.
    assert (loops.staging, loops.filter, loops.outside) == (3, 0, 2)


def test_optimistic_time_is_the_larger_of_memory_and_issue():
    # The optimistic estimate, unchanged since issue 8 (H100 figures by default).
    # Plenty of bytes in flight: memory-bound at the DRAM rate.
    assert gm.estimate_time(3.35e9, 0, 1.0, 8, 4) == pytest.approx(1e-3)
    # No memory traffic: instruction-bound at the peak issue rate.
    assert gm.estimate_time(0, gm.THREAD_INSTR_PER_S, 1.0, 8, 4) == pytest.approx(1.0)
    # Few threads resident: Little's law caps the bandwidth.
    assert gm.estimate_time(3.35e9, 0, 0.01, 1, 2) > 1e-2
    # H200: its own DRAM bandwidth.
    assert gm.estimate_time(4.8e9, 0, 1.0, 8, 4, gpu=gm.H200) == pytest.approx(1e-3)


# --------------------------------------------------------------------------- the conservative effects


def test_device_parameters_are_named_once():
    h100, h200 = gm.DEVICES["h100"], gm.DEVICES["h200"]
    assert (h100.dram_bw, h200.dram_bw) == (3.35e12, 4.8e12)
    for g in (h100, h200):
        assert (g.sms, g.clock_hz, g.peak_issue, g.sustained_issue) == (132, 1.755e9, 4.0, 2.75)
        assert (g.copy_efficiency, g.launch_s, g.arch) == (0.90, 3e-6, "sm_90")
        assert (g.limits.max_warps_per_sm, g.limits.max_blocks_per_sm, g.limits.smem_per_sm) == (64, 32, 228 * 1024)
    # The optimistic model's module constants are the H100's.
    assert gm.THREAD_INSTR_PER_S == 132 * 4 * 1.755e9 * 32


def test_bandwidth_is_measured_against_a_copy_at_90_percent_of_peak():
    assert gm.copy_bandwidth(gm.H100_SXM) == pytest.approx(3.015e12)
    assert gm.copy_bandwidth(gm.H200) == pytest.approx(4.32e12)


def test_issue_at_the_sustained_rate():
    # 2.75 warp instructions per clock at 1.755 GHz: 4.82625e9 per second per SM.
    assert gm.issue_time(4.82625e9, gm.H100_SXM) == pytest.approx(1.0)
    assert gm.issue_time(4.82625e9 * 132, gm.H100_SXM, sms=132) == pytest.approx(1.0)
    # 4/2.75 = 1.45x the peak-rate time.
    assert gm.issue_time(4e9, gm.H100_SXM) / (4e9 / (4 * 1.755e9)) == pytest.approx(4 / 2.75)


def test_lanes_are_counted_as_launched():
    assert [gm.launched_warps(t) for t in (1, 32, 33, 256)] == [1, 1, 2, 8]
    # 56²: 32x8 threads per lane, two column tiles (32 + 24 columns): every warp has a pixel,
    # the second tile's warps have 24 of 32 (28 of 32 lanes over the map) and issue for all.
    assert gm.live_warps(32, 8, 1, 56, 56) == 8
    # 28²: one column tile of 28 of 32 lanes, four row tiles of 8 rows: the last has 4 rows,
    # so 4 warps of its 8 have no pixel and skip the compute: (8 + 8 + 8 + 4) / 4.
    assert gm.live_warps(32, 8, 1, 28, 28) == 7
    # 14²: 16x16 threads, a warp is two rows of 16 (14 of 16 columns): rows 14-15 have none.
    assert gm.live_warps(16, 16, 1, 14, 14) == 7
    # 7²: 8x8 threads in 4 channel lanes, a warp is four rows of 8: both warps of a lane have
    # pixels (28 and 21 of 32 lanes: 49 of 64).
    assert gm.live_warps(8, 8, 4, 7, 7) == 8


def test_staging_trips_and_round_trips():
    # A thread stages halo elements t, t + 256, ...: its first `slots` with all their loads in
    # flight, the rest one per trip of the remainder loop. The kernels' slots, from the library:
    assert [gm.halo_slots(k) for k in ("forward", "grad_input", "filter_grads")] == [1, 1, 2]
    # The 56² forward's halo, 10 x 34 = 340 elements on 32 x 8 threads, one slot: threads 0-83
    # take a second element in one remainder trip (warps 0-2); two round trips per step.
    assert gm.staging_rounds(10, 34, 32, 8, 1) == 2
    assert gm.staging_trips(10, 34, 32, 8, 1) == [1] * 3 + [0] * 5
    # With two slots: no remainder trip, one round trip.
    assert gm.staging_rounds(10, 34, 32, 8, 2) == 1 and gm.staging_trips(10, 34, 32, 8, 2) == [0] * 8
    # The filter gradients' 18 x 34 = 612, two slots: threads 0-99 take a third element, one
    # trip (warps 0-3: warp 3 for its lanes 96-99); two round trips per step.
    assert gm.staging_rounds(18, 34, 32, 8, 2) == 2
    assert gm.staging_trips(18, 34, 32, 8, 2) == [1] * 4 + [0] * 4
    # 7²: a 10 x 10 halo on 8 x 8 threads: threads 0-35 take two.
    assert gm.staging_rounds(10, 10, 8, 8, 1) == 2 and gm.staging_trips(10, 10, 8, 8, 1) == [1, 1]
    # k = 7, stride 2, dilation 3: 33 x 81 = 2673 elements, 11 for thread 0: 1 + 10 round trips.
    assert gm.staging_rounds(33, 81, 32, 8, 1) == 11
    assert gm.staging_trips(33, 81, 32, 8, 1)[0] == 10 and gm.staging_trips(33, 81, 32, 8, 1)[-1] == 9


def test_loads_in_flight_from_the_staging_phase_only():
    # 256 threads with 8 four-byte loads each in flight, 700 ns: 11.7 GB/s per block.
    assert gm.little_bandwidth(256 * 8 * 4, 700e-9) == pytest.approx(256 * 8 * 4 / 700e-9)
    g = gm.H100_SXM
    # Latency-bound: 4 DRAM and 8 L2 round trips, few bytes.
    assert gm.memory_time(4, 8, 1000, g) == pytest.approx(4 * 700e-9 + 8 * 300e-9)
    # Bandwidth-bound: a block's bytes at the SM's share of copy bandwidth (3.015e12 / 132).
    share = 3.015e12 / 132
    assert gm.memory_time(1, 0, share * 1e-5, g) == pytest.approx(1e-5)


def test_the_overlap_rule():
    # One block per SM: staging and compute alternate, nothing overlaps: the sum.
    assert gm.wave_time(1, 2.0, 3.0, 1.0) == (5.0, "serial")
    # Two blocks: one block's staging hides under the other's compute: the larger of the
    # SM's issue (2 x 2) and its blocks' serial chain (2 + 3).
    assert gm.wave_time(2, 2.0, 3.0, 1.0) == (5.0, "serial")
    assert gm.wave_time(2, 4.0, 3.0, 1.0) == (8.0, "issue")
    # Four blocks, each issuing 1 and waiting 2: the SM issues 4, the chain is 3.
    assert gm.wave_time(4, 1.0, 2.0, 0.5) == (4.0, "issue")
    # DRAM-bound: the blocks' bytes at the SM's copy share.
    assert gm.wave_time(4, 0.5, 1.5, 1.5) == (6.0, "dram")


def test_waves_and_the_last_waves_tail():
    # 1792 blocks, 132 SMs x 4: three full waves of 528, then 208 blocks, 2 on the busiest SM.
    assert gm.waves(1792, 132, 4) == (3, 2)
    # 1024: one full wave, then 496: 4 on the busiest SM: the tail costs a full wave.
    assert gm.waves(1024, 132, 4) == (1, 4)
    assert gm.waves(528, 132, 4) == (1, 0)
    assert gm.waves(100, 132, 4) == (0, 1)


def test_launch_cost_waves_and_tail_add_up():
    g = gm.H100_SXM
    per_sec = 2.75 * 1.755e9
    # 132 x 2 + 1 blocks, 2 per SM; each issues 1 µs of instructions and waits 2 µs, few bytes.
    work = gm.BlockWork(blocks=265, threads=256, per_sm=2, warp_instr=per_sec * 1e-6, dram_rounds=0,
                        l2_rounds=0, dram_bytes=265 * 100.0)
    work.dram_rounds = 2e-6 / g.dram_latency_s
    t = gm.launch_time(work, g)
    assert (t.full_waves, t.tail_per_sm) == (1, 1)
    assert t.wave_s == pytest.approx(3e-6) and t.wave_bound == "serial"  # max(2 x 1, 1 + 2)
    assert t.tail_s == pytest.approx(3e-6)  # one block: the sum
    assert t.total_s == pytest.approx(3e-6 + 3e-6 + 3e-6)  # launch + wave + tail
    assert "3 launch" in t.describe()


def test_a_tiled_forward_block_by_hand():
    # The 56² forward: plan, SASS costs and loops as the sm_90 cubin has them since the
    # forward stages its channels in groups of four (no inner loop: the step's compute is one
    # straight-line path of 252 instructions for its 8 channels, among 524 of compute code).
    p = gm.Plan(*RESNET50_PLANS["forward", 64, 56])
    ts = gm.TiledSass(inner=0, staging=76, step=853, first_warp=229, compute=252, compute_code=524)
    tl = gm.TiledLoops(staging=76, filter=0, filter_loads=0, grad_output=0, grad_output_loads=0,
                       other=0, outside=422, handoff=0)
    work = gm.tiled_work("forward", p, ts, tl, per_sm=3, B=64, S=56, moved=1.0)
    # 4 steps of 8 channels, 8 warps. Per step: one remainder trip of 76 on warps 0-2 (threads
    # 0-83 stage a second halo element); the step's own 853 less the channel-filter staging
    # (229) and the compute code (524) on every warp, that staging on the lane's first warp;
    # the compute path, 252, on the 8 live warps.
    per_step = 3 * 76 + 8 * (853 - 229 - 524) + 229 + 8 * 252
    assert work.warp_instr == 4 * per_step + 8 * 422
    assert work.parts["filter staging"] == 4 * 229
    assert work.parts["compute"] == 4 * 8 * 252
    # Round trips: the spatial-filter taps, then per step the slot's and the remainder trip's
    # loads (DRAM) and the channel filters, all in flight together (L2).
    assert (work.dram_rounds, work.l2_rounds, work.blocks) == (1 + 4 * 2, 4, 14 * 2 * 64)
    t = gm.launch_time(work, gm.H100_SXM)
    assert t.issue_s == pytest.approx(work.warp_instr / (2.75 * 1.755e9))
    assert t.memory_s == pytest.approx(9 * 700e-9 + 4 * 300e-9)
    # 1792 blocks, 3 per SM on 132 SMs: 4 waves of 396, then 208 blocks (2 on the busiest SM).
    assert (t.full_waves, t.tail_per_sm) == (4, 2)


@functools.lru_cache(maxsize=1)
def _library_with_cubins():
    library = cr.default_library()
    cuobjdump = cr.find_tool("cuobjdump", "CUOBJDUMP")
    if torch.version.cuda is None or library is None or cuobjdump is None:
        return None, "needs a CUDA build of the library and cuobjdump (the model reads its cubins)"
    if cr.analyze_library(library).cpu_only:
        return None, "CPU-only build of the library: no cubins to model"
    return (library, cuobjdump), None


def built_library_with_cubins():
    """The built library and cuobjdump, or a (visible) skip when there are no cubins to model
    (looked up once per session: analyze_library runs cuobjdump)."""
    found, why_not = _library_with_cubins()
    if found is None:
        pytest.skip(why_not)
    return found


@functools.lru_cache(maxsize=1)
def _sm90_functions(library: str, cuobjdump: str):
    # cuobjdump -sass of every kernel is about 110 MB of text (15 s): once per session.
    text = subprocess.run([cuobjdump, "-sass", "-arch", "sm_90", library], capture_output=True, text=True).stdout
    return gm.sass_functions(text)


def built_sm90_functions():
    """The built library's sm_90 SASS per kernel (gm.sass_functions), or a visible skip."""
    return _sm90_functions(*built_library_with_cubins())


# A channels_last forward's SASS (sm_90 syntax): the staging loop unrolled by two (2 loads a
# trip) and its remainder (1), then the pixel loop with an interior path (2 FFMA) and a border
# path (2 FFMA, longer), and a pixel the map does not have (0 FFMA).
NHWC_SASS = """
        Function : nhwc
        /*0000*/                   S2R R0, SR_TID.X ;
        /*0010*/                   LDG.E R2, desc[UR4][R4.64] ;
        /*0020*/                   LDG.E R3, desc[UR4][R6.64] ;
        /*0030*/                   STS [R8], R2 ;
        /*0040*/                   STS [R9], R3 ;
        /*0050*/               @P0 BRA 0x10 ;
        /*0060*/                   LDG.E R2, desc[UR4][R4.64] ;
        /*0070*/                   STS [R8], R2 ;
        /*0080*/               @P1 BRA 0x60 ;
        /*0090*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
        /*00a0*/               @P2 BRA 0x160 ;
        /*00b0*/               @P3 BRA 0x110 ;
        /*00c0*/                   LDG.E.128 R12, desc[UR4][R10.64] ;
        /*00d0*/                   FFMA R20, R12, R14, R20 ;
        /*00e0*/                   FFMA R21, R13, R15, R21 ;
        /*00f0*/                   STG.E.128 desc[UR4][R16.64], R20 ;
        /*0100*/                   BRA 0x160 ;
        /*0110*/                   ISETP.GE.AND P4, PT, R1, R2, PT ;
        /*0120*/               @P4 LDG.E.128 R12, desc[UR4][R10.64] ;
        /*0130*/                   FFMA R20, R12, R14, R20 ;
        /*0140*/                   FFMA R21, R13, R15, R21 ;
        /*0150*/                   STG.E.128 desc[UR4][R16.64], R20 ;
        /*0160*/                   IADD3 R1, R1, 0x1, RZ ;
        /*0170*/               @P5 BRA 0xa0 ;
        /*0180*/                   EXIT ;
        /*0190*/                   BRA 0x190 ;
        .........................
"""


def test_nhwc_sass_counts_the_interior_pixel_and_the_staging_loops():
    ns = gm.nhwc_sass(gm.sass_functions(NHWC_SASS)["nhwc"])
    # Pixel loop 0xa0-0x170: the interior path 0xa0, 0xb0, 0xc0-0x100, 0x160, 0x170 (2 FFMA in
    # 9); the border path has the same FFMA in 10, the missing pixel none.
    assert ns.pixel == 9
    # Staging: the two-load loop (5 instructions), the remainder (3); outside every loop: the
    # S2R, the barrier and EXIT (the self-branch after it is a loop of its own).
    assert (ns.stage, ns.stage_loads, ns.stage_rest, ns.outside) == (5, 2, 3, 3)


# A pixel loop (0x40-0x160) stepping two pixels: a row loop per spatial-filter layout (0x60-0x90
# and 0xb0-0xe0, 4 instructions a trip), entered past the checks, each leaving for the stores of
# both pixels (0xf0, 0x100); the fallback (0x120-0x140) takes one pixel at a time.
NHWC_PAIR_SASS = """
        Function : pair
        /*0000*/                   S2R R0, SR_TID.X ;
        /*0010*/                   LDG.E R2, desc[UR4][R4.64] ;
        /*0020*/                   STS [R8], R2 ;
        /*0030*/               @P0 BRA 0x10 ;
        /*0040*/               @P1 BRA 0x120 ;
        /*0050*/               @P2 BRA 0xb0 ;
        /*0060*/                   LDG.E.128 R12, desc[UR4][R10.64] ;
        /*0070*/                   FFMA R20, R12, R14, R20 ;
        /*0080*/                   FFMA R21, R13, R15, R21 ;
        /*0090*/               @P3 BRA 0x60 ;
        /*00a0*/                   BRA 0xf0 ;
        /*00b0*/                   LDG.E.128 R12, desc[UR4][R10.64] ;
        /*00c0*/                   IMAD R10, R10, R11, RZ ;
        /*00d0*/                   FFMA R20, R12, R14, R20 ;
        /*00e0*/               @P3 BRA 0xb0 ;
        /*00f0*/                   STG.E.128 desc[UR4][R16.64], R20 ;
        /*0100*/                   STG.E.128 desc[UR4][R18.64], R24 ;
        /*0110*/                   BRA 0x150 ;
        /*0120*/                   LDG.E.128 R12, desc[UR4][R10.64] ;
        /*0130*/                   FFMA R20, R12, R14, R20 ;
        /*0140*/                   STG.E.128 desc[UR4][R16.64], R20 ;
        /*0150*/                   IADD3 R1, R1, 0x1, RZ ;
        /*0160*/               @P5 BRA 0x40 ;
        /*0170*/                   EXIT ;
        .........................
"""


def test_nhwc_sass_counts_a_pair_step_through_its_row_loop():
    ns = gm.nhwc_sass(gm.sass_functions(NHWC_PAIR_SASS)["pair"], k=3)
    # Through the first row loop: in 0x40, 0x50 (2); 3 trips of 4; out 0xa0, 0xf0, 0x100,
    # 0x110, 0x150 and the loop's branch (6): 20. Through the second: in 0x40, 0x50 (2); 3 x 4;
    # out 0xf0, 0x100, 0x110, 0x150 and the branch (5): 19, the cheaper.
    assert ns.pixel == 2 + 3 * 4 + 5
    assert (ns.stage, ns.stage_loads, ns.stage_rest) == (3, 1, 0)


def test_nhwc_pixel_iterations_by_hand():
    # 16 channel lanes (16 pixel lanes per block, two per warp), tiles of 8 x 8 = 64 pixels:
    # each thread takes pixels lp, lp + 16, lp + 32, lp + 48: 4 iterations, every warp. On a
    # 7 x 8 map the tile's last row is missing: pixels 48-55 remain for iteration 3, those of
    # pixel lanes 0-7 (warps 0-3); warps 4-7 iterate 3 times with a pixel.
    p = gm.NhwcPlan(vector=4, channel_lanes=16, block_channels=64, tile_w=8, tile_h=8, tiles=1, channel_blocks=1,
                    shared_bytes=0, head_blocks=1, head_lanes=16, steps_w=8)
    assert gm.nhwc_pixel_iterations(p, 8, 8) == [4.0] * 8
    assert gm.nhwc_pixel_iterations(p, 7, 8) == [4.0] * 4 + [3.0] * 4
    # In pairs (rows of 4 steps of 2 pixels), 32 steps: 2 iterations each. On a 7 x 8 map the
    # last row's steps 28-31 are missing: those of pixel lanes 12-15 (warps 6, 7); a 8 x 7 map
    # keeps every step (the last of a row is one pixel).
    pairs = dataclasses.replace(p, steps_w=4)
    assert pairs.step == 2
    assert gm.nhwc_pixel_iterations(pairs, 8, 8) == [2.0] * 8
    assert gm.nhwc_pixel_iterations(pairs, 7, 8) == [2.0] * 6 + [1.0] * 2
    assert gm.nhwc_pixel_iterations(pairs, 8, 7) == [2.0] * 8
    ns = gm.NhwcSass(pixel=100, stage=40, stage_loads=4, stage_rest=10, outside=50)
    work = gm.nhwc_work(p, ns, per_sm=3, B=2, S=8, k=3, moved=1e6)
    # 9 x 64 filter values over 256 threads: 3 each = no unrolled trip + 3 remainder trips.
    assert work.parts == {"filter staging": 8 * 3 * 10, "compute": 32 * 100, "prologue/epilogue": 8 * 50}
    # 2 blocks (1 tile x 1 channel block x B = 2); 4 pixel iterations, 3 staging trips.
    assert (work.blocks, work.dram_rounds, work.l2_rounds) == (2, 4, 3)


def test_nhwc_filter_grads_work_by_hand():
    # 4 channel lanes of 16 channels (64 pixel lanes), an 8 x 8 tile: one round per tap; heads
    # of 4 lanes (2 shuffle steps); 2 warps hold the block's 64 channels for the sums.
    p = gm.NhwcPlan(vector=4, channel_lanes=4, block_channels=64, tile_w=8, tile_h=8, tiles=1, channel_blocks=1,
                    shared_bytes=0, head_blocks=1, head_lanes=4, steps_w=8)
    ng = gm.NhwcGradSass(round=100, shuffle_step=5, store=10, tap=30, sum_trip=20, sum_inner=8, sum_unroll=4,
                         stage=gm.NhwcSass(pixel=0, stage=40, stage_loads=4, stage_rest=10, outside=50))
    work = gm.nhwc_filter_grads_work(p, ng, per_sm=2, B=2, S=8, k=3, moved=1e6)
    # 9 taps x 8 warps x 1 round x (100 + 2 x 5 + 10); per tap 8 warps' own code and 2 warps'
    # sums of 64 pixel lanes, 4 a trip: 20 + 16 x 8; 9 x 64 filter values = 3 staging trips.
    assert work.parts == {"filter staging": 8 * 3 * 10, "rounds": 9 * 8 * 120,
                          "channel-filter sums": 9 * (8 * 30 + 2 * (20 + 16 * 8)), "prologue/epilogue": 8 * 50}
    assert (work.blocks, work.dram_rounds, work.l2_rounds) == (2, 1, 3 + 9)


def test_model_on_the_built_library(capsys):
    library, _ = built_library_with_cubins()
    assert gm.main(["--library", library, "--markdown"]) == 0
    out = capsys.readouterr().out
    assert "ESTIMATES" in out
    for gpu in ("H100 SXM", "H200"):
        for C, S in gm.SHAPES:
            for design in ("generic", "tiled", "nhwc"):
                for dtype in gm.DTYPES:
                    assert f"| {gpu} | {C}@{S}² | {dtype} | {design} | forward |" in out
    assert "PASS " in out or "MISS " in out


def test_model_columns_on_the_built_library():
    library, cuobjdump = built_library_with_cubins()
    funcs = built_sm90_functions()
    res = cr.parse_res_usage(subprocess.run([cuobjdump, "-res-usage", library], capture_output=True, text=True).stdout)
    rows = gm.model(funcs, res, "float32", gm.H100_SXM)
    summary = {(s["shape"], s["design"]): s for s in gm.summarize(rows)}
    for C, S in gm.SHAPES:
        s = summary[f"{C}@{S}²", "tiled"]
        fwd = s["forward"]
        # The conservative column never beats the optimistic one, and its share is of copy
        # bandwidth (0.9 x peak), from the forward's minimum bytes.
        assert s["cons_forward_us"] > s["forward_us"]
        assert s["cons_forward_copy"] == pytest.approx(fwd.min_bytes / fwd.cons_s / (0.9 * 3.35e12))
        assert s["cons_sass"] > s["sass"]
        # Every backward launch pays the launch cost: grad_input, filter_grads and the partial sums.
        kernels = [r.kernel for r in s["backward"]]
        assert kernels[:2] == ["grad_input", "filter_grads"]
        assert s["cons_backward_us"] >= len(kernels) * 3.0


# Half-precision loads batched as the float32 ones (measured on an H200, 2026-12-04: written as
# `guard ? widen(p[i]) : 0.f`, every half and bfloat16 staging load waited for the one before,
# and the tiled kernels ran at half the float32 speed; csrc/cuda/ddf_cuda_kernels.cuh,
# zero_value()).
SERIALIZED_SASS = """
        Function : serialized
        /*0000*/              @!P4 LDG.E.U16.CONSTANT R16, desc[UR8][R16.64] ;
        /*0010*/              @!P4 IMAD.U32 R7, R16, 0x10000, RZ ;
        /*0020*/                   ISETP.LT.U32.OR P4, PT, R15, 0x5, P2 ;
        /*0030*/              @!P4 LDG.E.U16.CONSTANT R16, desc[UR8][R18.64] ;
        /*0040*/                   STS [R3], R16 ;
        /*0050*/                   LDG.E.64 R20, desc[UR8][R4.64] ;
        /*0060*/                   FADD R9, R21, R9 ;
        /*0070*/                   LDG.E R22, desc[UR8][R4.64] ;
        /*0080*/                   EXIT ;
        Function : batched
        /*0000*/              @!P1 LDG.E.U16.CONSTANT R51, desc[UR8][R4.64] ;
        /*0010*/              @!P2 LDG.E.U16.CONSTANT R50, desc[UR8][R20.64] ;
        /*0020*/                   IMAD.WIDE R4, R51, 0x4, R6 ;
        /*0030*/              @!P3 LDG.E.U16.CONSTANT R49, desc[UR8][R4.64] ;
        /*0040*/                   EXIT ;
"""


def test_serialized_loads_on_sass_snippets():
    funcs = gm.sass_functions(SERIALIZED_SASS)
    # serialized: the first load's R16 is read by the IMAD, the second's by the STS (a store:
    # every operand is a source), the 64-bit load's R21 by the FADD; the last load has no next.
    assert gm.serialized_loads(funcs["serialized"]) == 3
    # batched: R51 is read (the IMAD), but only after the second load went out; the IMAD's
    # destination R4 is no read of the first load's address.
    assert gm.serialized_loads(funcs["batched"]) == 0


def test_half_precision_loads_go_out_together_as_float32_ones():
    """Every kernel's float16 and bfloat16 variants have at most 3 loads more that wait for the
    one before than its float32 variant (sm_90 cubins). Before the two-phase loads, the tiled
    kernels' half variants had 16 to 37 more (their staging: 17-46 against 1-9)."""
    variants = defaultdict(dict)
    for name, insns in built_sm90_functions().items():
        m = re.match(r"^(.*?_kernelI)(f|6__half|13__nv_bfloat16)(.*?)EEv", name)
        if m:
            variants[m.group(1) + m.group(3)][m.group(2)] = gm.serialized_loads(insns)
    pairs = [(key, half, v[half] - v["f"]) for key, v in variants.items() if "f" in v for half in ("6__half", "13__nv_bfloat16") if half in v]
    assert len(pairs) >= 100, len(pairs)  # every templated kernel, both half types
    worse = [p for p in pairs if p[2] > 3]
    assert not worse, worse
