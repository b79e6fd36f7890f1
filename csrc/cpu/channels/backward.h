// The backward of the channel kernels (BackwardPath::ChannelsInPlace, ChannelsCopied), for
// float32 and float64: the counterpart of forward.h. Without it, channels_last training
// transposed four tensors to NCHW and two back, at every call.
//
// - grad_input is a transposed DDF: input pixel (iy, ix) gathers grad_output at the output
//   pixels whose taps read it. Along a row, the input columns of one stride phase
//   (ix, ix + s, ...) read consecutive output columns with the same taps, so each run of
//   them is one pixel_segment call of the forward, with grad_output in place of the input.
// - The filter gradients share one product per tap, channel and pixel,
//   p = grad_output[c, y, x] * X[c, tap's pixel]:
//     grad_spatial_filter[h*k*k + t, y, x] = sum over the head's channels c of p * dF/db(cf[c, t])
//     grad_channel_filter[c, t]            = sum over pixels (y, x)          of p * dF/da(sf[t, y, x])
//   The first is a vector sum over channels, reduced across lanes in a fixed order; the
//   second accumulates in a per-task row per tap, and the tasks' rows (bands of output
//   rows, their number fixed by the shape) are summed in band order: results do not depend
//   on the threads.
// Only taps inside the image are visited, as in the forward (no 0 * inf).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "../../ddf_checks.h"
#include "../plan.h"
#include "layout.h"
#include "pixel_loops.h"

namespace ddf {
namespace cpu {
namespace channels {

// grad_input (gi, channels contiguous) of the whole call.
template <Combine M, typename scalar_t>
void pixel_input_grad(
    const scalar_t* go_ptr,
    const Strides4& gos,
    const std::vector<scalar_t>& cfT,
    const scalar_t* sf_ptr,
    const Strides4& ss,
    scalar_t* gi_ptr,
    const Strides4& gis,
    const Geometry& g,
    const Bands& input_bands) {
  const int64_t kk = g.taps(), cph = g.channels_per_head(), s = g.stride;
  const int64_t R = input_bands.rows, bands = input_bands.count;
  at::parallel_for(0, g.B * g.G * bands, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> rows_i, rows_y, off(kk);
    std::vector<const scalar_t*> cfp(kk), sfp(kk);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / (g.G * bands), h = task / bands % g.G, c0 = h * cph;
      const int64_t iy0 = task % bands * R, iy1 = std::min(g.H, iy0 + R);
      const scalar_t* go = go_ptr + b * gos.n + c0;
      for (int64_t iy = iy0; iy < iy1; ++iy) {
        // The kernel rows i that read input row iy, and from which output row y.
        rows_i.clear(), rows_y.clear();
        for (int64_t i = 0; i < g.k; ++i) {
          const int64_t y = g.output_coord(iy, i, g.Ho);
          if (y >= 0) rows_i.push_back(i), rows_y.push_back(y);
        }
        scalar_t* gi_row = gi_ptr + b * gis.n + c0 + iy * gis.h;
        // Each stride phase of the columns, in runs of columns with the same taps.
        for (int64_t first = 0; first < std::min(s, g.W); ++first) {
          for (int64_t ix0 = first; ix0 < g.W;) {
            int64_t j_lo, j_hi;
            g.reaching_taps(ix0, g.Wo, j_lo, j_hi);
            int64_t ix1 = ix0 + s, n = 1;
            for (int64_t lo, hi; ix1 < g.W; ix1 += s, ++n) {
              g.reaching_taps(ix1, g.Wo, lo, hi);
              if (lo != j_lo || hi != j_hi) break;
            }
            int64_t taps = 0;
            for (size_t r = 0; r < rows_i.size(); ++r) {
              for (int64_t j = j_lo; j < j_hi; ++j) {
                const int64_t x = g.output_coord(ix0, j, g.Wo);  // the same parity along the run
                if (x < 0) continue;
                const int64_t t = rows_i[r] * g.k + j;
                off[taps] = rows_y[r] * gos.h + x * gos.w;
                cfp[taps] = cfT.data() + (b * kk + t) * g.C + c0;
                sfp[taps] = sf_ptr + ss.offset(b, h * kk + t, rows_y[r], x);
                ++taps;
              }
            }
            if (taps == 0) {
              for (int64_t q = 0; q < n; ++q) {
                scalar_t* px = gi_row + (ix0 + q * s) * gis.w;
                std::fill(px, px + cph, scalar_t(0));
              }
            } else {
              with_isa([&](auto isa) {
                pixel_segment<M, scalar_t>(
                    isa, gi_row + ix0 * gis.w, s * gis.w, n, go, gos.w, off.data(), cfp.data(), sfp.data(), ss.w, taps,
                    cph);
              });
            }
            ix0 = ix1;
          }
        }
      }
    }
  });
}

// grad_channel_filter and/or grad_spatial_filter (null where not wanted) of the whole call.
template <Combine M, typename scalar_t>
void pixel_filter_grads(
    const scalar_t* go_ptr,
    const Strides4& gos,
    const scalar_t* x_ptr,
    const Strides4& xs,
    const std::vector<scalar_t>& cfT,
    const scalar_t* sf_ptr,
    const Strides4& ss,
    scalar_t* gc_ptr,
    const Strides4& gcs,
    scalar_t* gs_ptr,
    const Strides4& gss,
    const Geometry& g,
    const Bands& output_bands) {
  const int64_t kk = g.taps(), cph = g.channels_per_head(), s = g.stride;
  // Bands fixed by the shape (not the threads; see kFilterGradTasks): grad_channel_filter
  // sums them in order.
  const int64_t R = output_bands.rows, bands = output_bands.count;
  // Per-band sums of grad_channel_filter: [b][band][tap][c].
  std::vector<scalar_t> partial(gc_ptr != nullptr ? static_cast<size_t>(g.B * bands * kk * g.C) : 0);
  at::parallel_for(0, g.B * g.G * bands, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> off(kk);
    std::vector<const scalar_t*> cfp(kk), sfp(kk);
    std::vector<scalar_t> gcf_rows(kk * cph);
    std::vector<scalar_t*> gcf(kk), gsf(kk);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / (g.G * bands), h = task / bands % g.G, band = task % bands, c0 = h * cph;
      const int64_t y0 = band * R, y1 = std::min(g.Ho, y0 + R);
      std::fill(gcf_rows.begin(), gcf_rows.end(), scalar_t(0));
      for (int64_t y = y0; y < y1; ++y) {
        if (gs_ptr != nullptr) {
          // Taps outside the image read nothing: their gradient is zero (the runs below
          // overwrite the others).
          for (int64_t t = 0; t < kk; ++t)
            for (int64_t xo = 0; xo < g.Wo; ++xo) gs_ptr[gss.offset(b, h * kk + t, y, xo)] = scalar_t(0);
        }
        int64_t i_lo, i_hi;
        g.inside_taps(y, g.H, i_lo, i_hi);
        // Runs of pixels with the same column taps (the borders, and the interior).
        for (int64_t x0 = 0; x0 < g.Wo;) {
          int64_t j_lo, j_hi;
          const int64_t x1 = same_taps_run(g, x0, j_lo, j_hi);
          int64_t taps = 0;
          for (int64_t i = i_lo; i < i_hi; ++i) {
            for (int64_t j = j_lo; j < j_hi; ++j, ++taps) {
              const int64_t t = i * g.k + j;
              off[taps] = g.input_coord(y, i) * xs.h + g.input_coord(x0, j) * xs.w;
              cfp[taps] = cfT.data() + (b * kk + t) * g.C + c0;
              sfp[taps] = sf_ptr + ss.offset(b, h * kk + t, y, x0);
              gcf[taps] = gcf_rows.data() + t * cph;
              gsf[taps] = gs_ptr != nullptr ? gs_ptr + gss.offset(b, h * kk + t, y, x0) : nullptr;
            }
          }
          if (taps > 0) {
            with_isa([&](auto isa) {
              ddf::cpu::pixel_filter_grads<M, scalar_t>(
                  isa, go_ptr + b * gos.n + c0 + y * gos.h + x0 * gos.w, gos.w, x1 - x0, x_ptr + b * xs.n + c0, s * xs.w,
                  off.data(), cfp.data(), sfp.data(), ss.w, taps, cph, gcf.data(), gs_ptr != nullptr ? gsf.data() : nullptr,
                  gss.w);
            });
          }
          x0 = x1;
        }
      }
      if (gc_ptr != nullptr) {
        for (int64_t t = 0; t < kk; ++t) {
          std::copy(gcf_rows.data() + t * cph, gcf_rows.data() + (t + 1) * cph,
                    partial.data() + ((b * bands + band) * kk + t) * g.C + c0);
        }
      }
    }
  });
  if (gc_ptr == nullptr) return;
  at::parallel_for(0, g.B * g.C, 64, [&](int64_t begin, int64_t end) {
    for (int64_t bc = begin; bc < end; ++bc) {
      const int64_t b = bc / g.C, c = bc % g.C;
      for (int64_t t = 0; t < kk; ++t) {
        scalar_t sum = 0;
        for (int64_t band = 0; band < bands; ++band) sum += partial[((b * bands + band) * kk + t) * g.C + c];
        gc_ptr[gcs.offset(b, c, t / g.k, t % g.k)] = sum;
      }
    }
  });
}

// The family's face. ChannelsCopied: the operands the plan names get channels_last copies
// (small NCHW maps only, see kChannelsMaxNchwBackwardMap). An undefined gradient is not
// wanted.
template <Combine M, typename scalar_t>
void backward(const BackwardPlan& plan, const at::Tensor& grad_output, const at::Tensor& input,
              const at::Tensor& channel_filter, const at::Tensor& spatial_filter, at::Tensor& grad_input,
              at::Tensor& grad_channel_filter, at::Tensor& grad_spatial_filter, const Geometry& g) {
  const at::Tensor x = plan.input_to_channels_last ? channels_contiguous<scalar_t>(input) : input;
  const at::Tensor go = plan.grad_output_to_channels_last ? channels_contiguous<scalar_t>(grad_output) : grad_output;
  at::Tensor gi = plan.grad_input_via_channels_last
      ? at::empty(grad_input.sizes(), grad_input.options().memory_format(at::MemoryFormat::ChannelsLast))
      : grad_input;
  const std::vector<scalar_t> cfT = transposed_channel_filter(channel_filter.const_data_ptr<scalar_t>(),
                                                              strides_of(channel_filter), g);
  const scalar_t* sf_ptr = spatial_filter.const_data_ptr<scalar_t>();
  at::Tensor& grad_cf = grad_channel_filter;
  at::Tensor& grad_sf = grad_spatial_filter;
  if (grad_cf.defined() || grad_sf.defined()) {
    pixel_filter_grads<M>(
        go.const_data_ptr<scalar_t>(), strides_of(go), x.const_data_ptr<scalar_t>(), strides_of(x), cfT, sf_ptr,
        strides_of(spatial_filter), grad_cf.defined() ? grad_cf.mutable_data_ptr<scalar_t>() : nullptr,
        grad_cf.defined() ? strides_of(grad_cf) : Strides4{},
        grad_sf.defined() ? grad_sf.mutable_data_ptr<scalar_t>() : nullptr,
        grad_sf.defined() ? strides_of(grad_sf) : Strides4{}, g, plan.filter_grad_bands);
  }
  if (grad_input.defined()) {
    pixel_input_grad<M>(
        go.const_data_ptr<scalar_t>(), strides_of(go), cfT, sf_ptr, strides_of(spatial_filter),
        gi.mutable_data_ptr<scalar_t>(), strides_of(gi), g, plan.input_grad_bands);
    if (plan.grad_input_via_channels_last) copy_from_channels_contiguous<scalar_t>(grad_input, gi);
  }
}

}  // namespace channels
}  // namespace cpu
}  // namespace ddf
