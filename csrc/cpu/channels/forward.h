// The forward of the channel kernels (ForwardPath::ChannelsInPlace, ChannelsTransposed),
// for float32 and float64.
//
// The row kernels (../rows/) vectorize along image rows: they are fast on NCHW tensors they
// can read in place, but where they copy bands, small maps (7 x 7) spend most of their time
// on per-channel work (band copies, padding), and on channels_last tensors every row is
// strided. Here the vector runs along the channels of a head instead, which share the
// spatial-filter value of every tap of a pixel:
//   out[b, c, y, x] = sum over the taps (i, j) inside the image of
//                     X[b, c, iy, ix] * F(cf[b, c, i, j], sf[b, h*k*k + i*k + j, y, x])
// with the input pixel's channels contiguous (channels_last, read in place; or an NCHW band
// transposed into a task buffer), and the channel filter transposed once per call to
// [b][tap][c]. Only the taps inside the image are visited: there is no padding, so no
// 0 * inf, and every element is the same fixed-order sum whatever the threads.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "../../ddf_geometry.h"
#include "../plan.h"
#include "../vec/copy.h"
#include "layout.h"
#include "pixel_loops.h"

namespace ddf {
namespace cpu {
namespace channels {

// The forward of the whole call (see the top of this file). scalar_t is float or double.
template <Combine M, typename scalar_t>
void pixel_forward(
    const scalar_t* x_ptr,
    const Strides4& xs,
    const scalar_t* cf_ptr,
    const Strides4& cs,
    const scalar_t* sf_ptr,
    const Strides4& ss,
    scalar_t* out_ptr,
    const Strides4& os,
    const Geometry& g,
    const ForwardPlan& plan) {
  const int64_t kk = g.taps(), cph = g.channels_per_head(), s = g.stride, d = g.dilation, pad = g.pad();
  const int64_t bpx = plan.pixel_stride;  // (see ForwardPlan)
  const std::vector<scalar_t> cfT = transposed_channel_filter(cf_ptr, cs, g);

  // The output is ours (ddf_empty_output): channels_last, or NCHW with contiguous rows.
  const bool in_place_in = xs.c == 1, in_place_out = os.c == 1;
  TORCH_INTERNAL_ASSERT(in_place_out || (os.w == 1 && os.h == g.Wo), "ddf: unexpected output strides");
  TORCH_INTERNAL_ASSERT(in_place_in == (plan.path == ForwardPath::ChannelsInPlace) && in_place_out == plan.output_in_place);
  const int64_t R = plan.bands.rows, bands = plan.bands.count;

  at::parallel_for(0, g.B * g.G * bands, 1, [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> in_buf, out_buf(in_place_out ? 0 : R * g.Wo * bpx);  // (R is bounded below)
    std::vector<int64_t> off(kk);
    std::vector<const scalar_t*> cfp(kk), sfp(kk);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / (g.G * bands), h = task / bands % g.G, y0 = task % bands * R, ny = std::min(R, g.Ho - y0);
      const int64_t c0 = h * cph;
      // The input the segments read: rows [iy_lo, iy_hi) of the image, channels contiguous.
      const int64_t iy_lo = std::max<int64_t>(0, y0 * s - pad);
      const int64_t iy_hi = std::min(g.H, (y0 + ny - 1) * s - pad + (g.k - 1) * d + 1);
      const scalar_t* in;
      int64_t in_row, in_px;
      if (in_place_in) {
        in = x_ptr + b * xs.n + c0 + iy_lo * xs.h;
        in_row = xs.h, in_px = xs.w;
      } else {
        // NCHW band -> [row][column][channel].
        in_buf.resize(std::max<int64_t>(iy_hi - iy_lo, 0) * g.W * bpx);
        if (xs.w == 1 && xs.h == g.W) {  // the band's rows are one run per channel
          transpose_block(x_ptr + xs.offset(b, c0, iy_lo, 0), xs.c, in_buf.data(), bpx, cph, (iy_hi - iy_lo) * g.W);
        } else {
          for (int64_t iy = iy_lo; iy < iy_hi; ++iy) {
            scalar_t* dst = in_buf.data() + (iy - iy_lo) * g.W * bpx;
            if (xs.w == 1) {
              transpose_block(x_ptr + xs.offset(b, c0, iy, 0), xs.c, dst, bpx, cph, g.W);
            } else {
              copy_block(x_ptr + xs.offset(b, c0, iy, 0), xs.c, xs.w, dst, int64_t(1), bpx, cph, g.W);
            }
          }
        }
        in = in_buf.data();
        in_row = g.W * bpx, in_px = bpx;
      }
      for (int64_t y = y0; y < y0 + ny; ++y) {
        int64_t i_lo, i_hi;
        g.inside_taps(y, g.H, i_lo, i_hi);
        scalar_t* out_row = in_place_out ? out_ptr + b * os.n + c0 + y * os.h : out_buf.data() + (y - y0) * g.Wo * bpx;
        const int64_t out_px = in_place_out ? os.w : bpx;
        // Segments of pixels with the same column taps (the borders, and the interior).
        for (int64_t x0 = 0; x0 < g.Wo;) {
          int64_t j_lo, j_hi;
          const int64_t x1 = same_taps_run(g, x0, j_lo, j_hi);
          int64_t taps = 0;
          for (int64_t i = i_lo; i < i_hi; ++i) {
            for (int64_t j = j_lo; j < j_hi; ++j, ++taps) {
              const int64_t t = i * g.k + j;
              off[taps] = (g.input_coord(y, i) - iy_lo) * in_row + g.input_coord(x0, j) * in_px;
              cfp[taps] = cfT.data() + (b * kk + t) * g.C + c0;
              sfp[taps] = sf_ptr + ss.offset(b, h * kk + t, y, x0);
            }
          }
          if (taps == 0) {
            for (int64_t x = x0; x < x1; ++x) std::fill(out_row + x * out_px, out_row + x * out_px + cph, scalar_t(0));
          } else {
            with_isa([&](auto isa) {
              pixel_segment<M, scalar_t>(
                  isa, out_row + x0 * out_px, out_px, x1 - x0, in, s * in_px, off.data(), cfp.data(), sfp.data(), ss.w,
                  taps, cph);
            });
          }
          x0 = x1;
        }
      }
      if (!in_place_out) {
        // [row][column][channel] -> NCHW; the band's rows are one run per channel.
        transpose_block(out_buf.data(), bpx, out_ptr + os.offset(b, c0, y0, 0), os.c, ny * g.Wo, cph);
      }
    }
  });
}

// The family's face.
template <Combine M, typename scalar_t>
void forward(const ForwardPlan& plan, const at::Tensor& input, const at::Tensor& cf, const at::Tensor& sf,
             at::Tensor& out, const Geometry& g) {
  pixel_forward<M>(input.const_data_ptr<scalar_t>(), strides_of(input), cf.const_data_ptr<scalar_t>(), strides_of(cf),
                   sf.const_data_ptr<scalar_t>(), strides_of(sf), out.mutable_data_ptr<scalar_t>(), strides_of(out), g,
                   plan);
}

}  // namespace channels
}  // namespace cpu
}  // namespace ddf
