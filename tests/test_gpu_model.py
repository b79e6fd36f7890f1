"""tools/cuda_static/gpu_model.py: its mirror of the tiled launch plan, its SASS loop analysis, and a
run on the built library (a CUDA build: the cubins are read, no GPU is needed)."""

import random

import pytest
import torch

from tools.cuda_static import cuda_resources as cr
from tools.cuda_static import gpu_model as gm
from conftest import requires_emulation

PLAN_FIELDS = ["tx", "ty", "tz", "ch", "rows", "halo_h", "halo_w", "tiles", "splits", "split_channels", "shared_bytes"]


def _geometries():
    rng = random.Random(8)
    shapes = [(64, 64, 56, 56, 3, 1, 1, 1), (64, 512, 7, 7, 3, 1, 1, 1), (2, 6, 37, 70, 3, 1, 2, 1),
              (1, 3, 20, 33, 7, 1, 2, 3), (1, 2, 12, 12, 7, 2, 1, 5), (3, 10, 5, 6, 3, 5, 2, 1),
              (1, 4, 1, 1, 5, 4, 1, 9), (1, 2, 300, 3, 7, 1, 1, 40)]
    for _ in range(60):
        G = rng.choice([1, 2, 4])
        shapes.append((rng.randint(1, 8), G * rng.randint(1, 40), rng.randint(1, 90), rng.randint(1, 90),
                       rng.choice([3, 5, 7]), G, rng.choice([1, 2]), rng.randint(1, 6)))
    return shapes


@requires_emulation
@pytest.mark.parametrize("kernel", ["forward", "grad_input", "filter_grads"])
def test_plan_mirror_matches_the_cpp_plan(kernel):
    for B, C, H, W, k, G, s, d in _geometries():
        cpp = torch.ops.ddf_emu.tiled_plan(kernel, B, C, H, W, k, G, s, d)
        py = gm.plan_tiled(kernel, B, C, H, W, k, G, s, d)
        where = f"{kernel} B={B} C={C} H={H} W={W} k={k} G={G} s={s} d={d}"
        if cpp[0] == 0:
            assert py is None, where
        else:
            assert py is not None, where
            assert [getattr(py, f) for f in PLAN_FIELDS] == cpp[1:], where


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
