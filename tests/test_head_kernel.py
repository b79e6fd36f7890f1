"""The NCHW forward read in place (csrc/cpu/rows/head_loop.h) against the reference.

It runs for "mul", stride 1, float32/float64 inputs with contiguous rows, on the channels
whose shifted reads stay inside the input's storage (the first channel of the tensor reads
before it, and the last one past it: those go through the copying path). Each call covers
a run of channels of one head: blocks of 2 (4 on AVX-512) channels x 4 vectors, then the
rest of the band's pixels (1 to 4 vectors) across up to 8 channels at once, then single
channels. The sizes below give every remainder length on each ISA and dtype (n = H*W
pixels per band; a vector holds 8 or 16 float32, 4 or 8 float64), and channel counts that
are not a multiple of any block. The CPU plan (cpu_path) says which calls take this kernel:
wide heads on the smallest maps go to the channel-vectorized kernel instead
(test_channels_vectorized.py), and the test checks that no other call does.
"""

import itertools

import pytest
import torch

import ddf_ops
from conftest import TOLERANCES, cpu_path

SIZES = [(8, 8), (11, 13), (9, 12), (7, 7), (5, 7), (3, 40), (17, 19), (2, 3), (1, 1)]
# (channels per head, heads): single channels, less than a block, and leftovers after
# blocks of 2, 4 and 8.
HEADS = [(1, 3), (3, 2), (5, 1), (11, 2), (13, 1)]
KERNELS = [(1, 1), (3, 1), (3, 2), (5, 1), (7, 3)]  # (k, dilation)


def rand(gen, *shape):
    return torch.randn(*shape, generator=gen, dtype=torch.float64)


def operands(gen, B, C, H, W, k, G, dtype, embedded=False):
    """x, cf, sf; with `embedded`, x is a slice of a larger tensor, so that every channel's
    reads stay inside its storage and all of them run in place."""
    if embedded:
        x = rand(gen, B + 1, C + 2, H, W)[1:, 1:-1]
        assert x.stride(2) == W and x.stride(3) == 1
    else:
        x = rand(gen, B, C, H, W)
    return x.to(dtype), rand(gen, B, C, k, k).to(dtype), rand(gen, B, G * k * k, H, W).to(dtype)


@pytest.mark.isa
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("k,dilation", KERNELS)
@pytest.mark.parametrize("embedded", [False, True], ids=["plain", "embedded"])
def test_matches_reference(k, dilation, dtype, embedded):
    gen = torch.Generator().manual_seed(k * 10 + dilation)
    for (H, W), (cph, G) in itertools.product(SIZES, HEADS):
        x, cf, sf = operands(gen, 2, cph * G, H, W, k, G, dtype, embedded)
        path = cpu_path(x, cf, sf, 1, dilation, "mul")
        assert path == "rows_in_place" or (H * W <= 16 and cph >= 8), f"H={H} W={W} C/head={cph}: {path}"
        got = ddf_ops.ddf(x, cf, sf, 1, dilation, "mul")
        expected = ddf_ops.reference.ddf(x.double(), cf.double(), sf.double(), 1, dilation, "mul")
        torch.testing.assert_close(got.double(), expected, **TOLERANCES[dtype], msg=f"H={H} W={W} C/head={cph} G={G}")


@pytest.mark.isa
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("k,dilation", [(3, 1), (5, 2)])
def test_nonfinite_values_reach_exactly_what_depends_on_them(k, dilation, dtype):
    # The taps read across row ends and into the neighbouring channels, where the spatial
    # filter is zero: an Inf there makes 0 * inf. Such channels are recomputed, so the NaN
    # and Inf must land exactly where the taps inside the image put them, in the main
    # blocks, in the remainder and at the borders, and nowhere else.
    gen = torch.Generator().manual_seed(k + dilation)
    for (H, W), which in itertools.product([(11, 13), (9, 12), (17, 19)], range(4)):
        x, cf, sf = operands(gen, 2, 13, H, W, k, 1, torch.float64)
        for n, t in enumerate((x, cf, sf)):
            if which in (n, 3):
                flat = t.view(-1)
                for m in range(3):
                    flat[int(torch.randint(flat.numel(), (1,), generator=gen))] = [float("inf"), float("-inf"), float("nan")][m]
        x[0, 4, H - 1, W - 1] = float("inf")  # last pixel of a plane: the next channel's taps read it
        x[1, 6, 0, 0] = float("nan")  # first pixel: the previous channel's taps read it
        x[1, 9, H // 2, W - 1] = float("-inf")  # end of a row: the next row's first pixel reads it
        expected = ddf_ops.reference.ddf_inside_taps(x, cf, sf, 1, dilation, "mul")
        got = ddf_ops.ddf(x.to(dtype), cf.to(dtype), sf.to(dtype), 1, dilation, "mul").double()
        msg = f"H={H} W={W} operand {which}"
        assert torch.equal(got.isnan(), expected.isnan()), f"{msg}: NaN positions differ"
        assert torch.equal(got.isinf(), expected.isinf()), f"{msg}: inf positions differ"
        assert torch.equal(got[expected.isinf()], expected[expected.isinf()]), f"{msg}: inf signs differ"
        finite = expected.isfinite()
        torch.testing.assert_close(got[finite], expected[finite], **TOLERANCES[dtype], msg=msg)


@pytest.mark.isa
def test_bitwise_identical_across_thread_counts():
    # The bands, and so which pixels fall in the main blocks and which in the remainder,
    # depend on the thread count: both must compute each output the same way.
    gen = torch.Generator().manual_seed(5)
    threads = torch.get_num_threads()
    try:
        for (H, W), (cph, G) in itertools.product([(40, 37), (61, 9)], [(13, 1), (3, 2)]):
            x, cf, sf = operands(gen, 2, cph * G, H, W, 3, G, torch.float32)
            results = []
            for n in (1, 2, 3):
                torch.set_num_threads(n)
                results.append(ddf_ops.ddf(x, cf, sf))
            assert all(torch.equal(r, results[0]) for r in results[1:]), f"H={H} W={W} C/head={cph}"
    finally:
        torch.set_num_threads(threads)
