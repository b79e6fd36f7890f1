// The backward vectorized over channels, for channels_last input and grad_output (float32,
// float64): the counterpart of ddf_cpu_pixels.h. Without it, channels_last training
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

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "ddf_cpu_pixels.h"

namespace ddf {
namespace cpu {

// Taps handled together by pixel_filter_grads: their spatial-filter gradient sums stay in
// registers while the loop runs over the channels.
constexpr int64_t kTapChunk = 9;

// The sum of a vector's lanes, as a tree of halves (a fixed order on each ISA): a chain of
// one add per lane cost as much as the channel loop at 64 channels.
template <typename acc_t, int64_t Bytes>
DDF_INLINE acc_t horizontal_sum(const VecN<acc_t, Bytes>& v) {
  if constexpr (Bytes == 2 * int64_t(sizeof(acc_t))) {
    return v[0] + v[1];
  } else {
    using Half = VecN<acc_t, Bytes / 2>;
    Half lo, hi;
    __builtin_memcpy(&lo, &v, Bytes / 2);
    __builtin_memcpy(&hi, reinterpret_cast<const char*>(&v) + Bytes / 2, Bytes / 2);
    return horizontal_sum<acc_t, Bytes / 2>(lo + hi);
  }
}

// Taps m0 .. m0 + MT (MT <= kTapChunk; a compile-time count keeps the sums in registers,
// 0 for a run-time count mt) of one pixel: see pixel_filter_grads_body.
template <Combine M, int64_t MT, typename acc_t, int64_t Bytes>
DDF_INLINE void tap_chunk_grads(
    const acc_t* go,
    const acc_t* in,
    const int64_t* off,
    const acc_t* const* cf,
    const acc_t* sfv,
    int64_t m0,
    int64_t mt,
    int64_t C,
    acc_t* const* gcf,
    acc_t* sums) {
  using V = VecN<acc_t, Bytes>;
  constexpr int64_t lanes = Bytes / int64_t(sizeof(acc_t));
  const int64_t n = MT > 0 ? MT : mt, full = C / lanes * lanes;
  V part[kTapChunk];
  DDF_UNROLL for (int64_t m = 0; m < (MT > 0 ? MT : n); ++m) part[m] = V{};
  for (int64_t c = 0; c < full; c += lanes) {
    const V gv = load<V>(go + c);
    DDF_UNROLL for (int64_t m = 0; m < (MT > 0 ? MT : n); ++m) {
      const V p = gv * load<V>(in + off[m0 + m] + c);
      part[m] += M == Combine::Mul ? p * load<V>(cf[m0 + m] + c) : p;
      acc_t* row = gcf[m0 + m] + c;
      store(row, load<V>(row) + (M == Combine::Mul ? p * sfv[m] : p));
    }
  }
  for (int64_t m = 0; m < n; ++m) {
    acc_t sum = horizontal_sum<acc_t, Bytes>(part[m]);
    for (int64_t c = full; c < C; ++c) {  // the channels past the last full vector
      const acc_t p = go[c] * in[off[m0 + m] + c];
      sum += p * dcombine_db<M>(cf[m0 + m][c]);
      gcf[m0 + m][c] += p * dcombine_da<M>(sfv[m]);
    }
    sums[m] = sum;
  }
}

// The filter gradients of a run of nx output pixels of a row with the same taps inside the
// image (m < taps), for the channels c < C of a head, with p = go[x][c] * in[x][off[m] + c]:
//   gsf[m][x*gsf_step]  = sum_c p * dF/db(cf[m][c])    (if gsf is not null)
//   gcf[m][c]          += p * dF/da(sf[m][x*sf_step])
// (go[x] = go + x*go_step, in[x] = in + x*in_step).
template <Combine M, typename acc_t, int64_t Bytes>
DDF_INLINE void pixel_filter_grads_body(
    const acc_t* go,
    int64_t go_step,
    int64_t nx,
    const acc_t* in,
    int64_t in_step,
    const int64_t* off,
    const acc_t* const* cf,
    const acc_t* const* sf,
    int64_t sf_step,
    int64_t taps,
    int64_t C,
    acc_t* const* gcf,
    acc_t* const* gsf,
    int64_t gsf_step) {
  constexpr int64_t TC = kTapChunk;
  acc_t sfv[TC], sums[TC];
  for (int64_t x = 0; x < nx; ++x) {
    for (int64_t m0 = 0; m0 < taps; m0 += TC) {
      const int64_t mt = std::min(TC, taps - m0);
      for (int64_t m = 0; m < mt; ++m) sfv[m] = sf[m0 + m][x * sf_step];
      if (mt == TC) {
        tap_chunk_grads<M, TC, acc_t, Bytes>(go + x * go_step, in + x * in_step, off, cf, sfv, m0, mt, C, gcf, sums);
      } else {
        tap_chunk_grads<M, 0, acc_t, Bytes>(go + x * go_step, in + x * in_step, off, cf, sfv, m0, mt, C, gcf, sums);
      }
      if (gsf != nullptr) {
        for (int64_t m = 0; m < mt; ++m) gsf[m0 + m][x * gsf_step] = sums[m];
      }
    }
  }
}

#define DDF_PIXEL_GRAD_LOOPS(ISA, TARGET)                                                                    \
  template <Combine M, typename acc_t>                                                                       \
  TARGET void pixel_filter_grads(IsaTag<ISA>, const acc_t* go, int64_t go_step, int64_t nx, const acc_t* in, \
                                 int64_t in_step, const int64_t* off, const acc_t* const* cf,                \
                                 const acc_t* const* sf, int64_t sf_step, int64_t taps, int64_t C,           \
                                 acc_t* const* gcf, acc_t* const* gsf, int64_t gsf_step) {                   \
    pixel_filter_grads_body<M, acc_t, kIsaBytes<ISA>>(                                                       \
        go, go_step, nx, in, in_step, off, cf, sf, sf_step, taps, C, gcf, gsf, gsf_step);                    \
  }
DDF_FOR_EACH_ISA(DDF_PIXEL_GRAD_LOOPS)
#undef DDF_PIXEL_GRAD_LOOPS

// NCHW operands whose maps are at most this many output pixels run here too, on channels_last
// copies (measured faster than the flat kernels, copies included, up to 14 x 14).
constexpr int64_t kPixelsMaxNchwBackwardMap = 256;

// Whether the channel-vectorized backward runs (float32 or float64): heads of at least 8
// channels, and input, grad_output and grad_input with contiguous channels (in_place), or
// a small map.
inline bool use_pixel_backward(const Geometry& g, bool in_place) {
  return g.channels_per_head() >= 8 && (in_place || static_cast<double>(g.Ho) * g.Wo <= kPixelsMaxNchwBackwardMap);
}

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
    int64_t tasks_wanted) {
  const int64_t kk = g.taps(), cph = g.channels_per_head(), s = g.stride;
  const int64_t R = std::max<int64_t>(1, ceil_div(g.H, ceil_div(tasks_wanted, g.B * g.G))), bands = ceil_div(g.H, R);
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
    int64_t tasks_fixed) {
  const int64_t kk = g.taps(), cph = g.channels_per_head(), s = g.stride;
  // Bands fixed by the shape (not the threads): grad_channel_filter sums them in order.
  const int64_t R = std::max<int64_t>(1, ceil_div(g.Ho, ceil_div(tasks_fixed, g.B * g.G))), bands = ceil_div(g.Ho, R);
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
              pixel_filter_grads<M, scalar_t>(
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

}  // namespace cpu
}  // namespace ddf
