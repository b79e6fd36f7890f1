"""An input of more than 2^31 elements: 64-bit index math, checked against the reference.

About 9 GB of memory (bfloat16) and a minute on 2 cores; it runs in CI (`make test`).
Deselect with `-m "not slow"` for quick local runs.
"""

import pytest
import torch

import ddf_ops


@pytest.mark.slow
@pytest.mark.timeout(1800)  # a minute on 2 quiet cores; pyproject's 600 s would be tight on busy ones
def test_more_than_2_31_elements_in_one_plane():
    # One 46341 x 46341 plane: rows past 46340 start beyond element 2^31, so a 32-bit
    # offset (iy * W + ix) would wrap. Stride 3 keeps the spatial filter as big as the input.
    H = W = 46341
    s, k, d = 3, 3, 2
    Ho = Wo = (H - 1) // s + 1
    gen = torch.Generator().manual_seed(0)
    x = torch.empty(1, 1, H, W, dtype=torch.bfloat16).uniform_(-1, 1, generator=gen)
    assert x.numel() > 2**31
    cf = torch.empty(1, 1, k, k, dtype=torch.bfloat16).uniform_(0.5, 1.5, generator=gen)
    sf = torch.empty(1, k * k, Ho, Wo, dtype=torch.bfloat16).uniform_(-1, 1, generator=gen)
    out = ddf_ops.ddf(x, cf, sf, s, d)
    assert out.shape == (1, 1, Ho, Wo)

    pad = (k - 1) // 2 * d
    assert pad < s  # so the crops below hold every tap of their centre pixel
    for y, xo in [(0, 0), (Ho // 2, Wo // 3), (Ho - 1, 0), (Ho - 1, Wo - 1), (Ho - 2, Wo - 5)]:
        # The reference on a crop aligned to the stride grid: crop output (y - y0, xo - x0)
        # is the global (y, xo), its taps inside the crop or outside the image.
        y0, x0, y1, x1 = max(0, y - 1), max(0, xo - 1), min(Ho, y + 2), min(Wo, xo + 2)
        crop = x[..., y0 * s : min(H, y1 * s), x0 * s : min(W, x1 * s)]
        ref = ddf_ops.reference.ddf(crop.double(), cf.double(), sf[..., y0:y1, x0:x1].double(), s, d)
        assert ref.shape[2:] == (y1 - y0, x1 - x0)
        torch.testing.assert_close(out[0, 0, y, xo].double(), ref[0, 0, y - y0, xo - x0], rtol=1e-2, atol=1e-2)
