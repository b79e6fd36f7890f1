"""tools/cuda_static/gpu_model.py: its launch plans (the library's own, through
torch.ops.ddf._cuda_tiled_plan), its SASS loop analysis, and a run on the built library (a
CUDA build: the cubins are read, no GPU is needed)."""

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
    ("forward", 64, 56): [32, 8, 1, 8, 1, 10, 34, 14, 2, 32, 11264],
    ("forward", 128, 28): [32, 8, 1, 8, 1, 10, 34, 4, 4, 32, 11264],
    ("forward", 256, 14): [16, 16, 1, 8, 1, 18, 18, 1, 16, 16, 10752],
    ("forward", 512, 7): [8, 8, 4, 8, 1, 10, 10, 1, 16, 32, 14336],
    ("grad_input", 64, 56): [32, 8, 1, 8, 1, 11, 35, 14, 2, 32, 26768],
    ("grad_input", 128, 28): [32, 8, 1, 8, 1, 11, 35, 4, 4, 32, 26768],
    ("grad_input", 256, 14): [16, 16, 1, 8, 1, 19, 19, 1, 16, 16, 25136],
    ("grad_input", 512, 7): [8, 8, 4, 8, 1, 11, 11, 1, 16, 32, 21872],
    ("filter_grads", 64, 56): [32, 8, 1, 8, 2, 18, 34, 8, 1, 64, 38656],
    ("filter_grads", 128, 28): [32, 8, 1, 8, 2, 18, 34, 2, 3, 48, 38656],
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


def test_smaller_calls_and_calls_that_take_the_generic_kernels():
    # Fewer channels than a lane step, stride 2, dilation 3, k = 7: planned, shrunk.
    p = gm.plan_tiled("forward", 1, 3, 20, 33, 7, 1, 2, 3)
    assert [getattr(p, f) for f in PLAN_FIELDS] == [32, 8, 1, 3, 1, 33, 81, 2, 1, 3, 32736]
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


def test_time_is_the_larger_of_memory_and_issue():
    # Plenty of bytes in flight: memory-bound at the DRAM rate.
    assert gm.estimate_time(3.35e9, 0, 1.0, 8, 4) == pytest.approx(1e-3)
    # No memory traffic: instruction-bound.
    assert gm.estimate_time(0, gm.THREAD_INSTR_PER_S, 1.0, 8, 4) == pytest.approx(1.0)
    # Few threads resident: Little's law caps the bandwidth.
    assert gm.estimate_time(3.35e9, 0, 0.01, 1, 2) > 1e-2


def test_model_on_the_built_library(capsys):
    library = cr.default_library()
    cuobjdump = cr.find_tool("cuobjdump", "CUOBJDUMP")
    if torch.version.cuda is None or library is None or cuobjdump is None:
        pytest.skip("needs a CUDA build of the library and cuobjdump (the model reads its cubins)")
    if cr.analyze_library(library).cpu_only:
        pytest.skip("CPU-only build of the library: no cubins to model")
    assert gm.main(["--library", library]) == 0
    out = capsys.readouterr().out
    assert "ESTIMATES" in out
    for C, S in gm.SHAPES:
        for design in ("generic", "tiled"):
            assert f"| {C}@{S}² | float32 | {design} | forward |" in out
            assert f"| {C}@{S}² | float16 | {design} | forward |" in out
