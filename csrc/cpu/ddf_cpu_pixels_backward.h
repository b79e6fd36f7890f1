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

// The filter gradients of one output pixel: for its taps m < taps (inside the image) and
// channels c < C of a head, with p = go[c] * in[off[m] + c]:
//   gsf[m]     = sum_c p * dF/db(cf[m][c])
//   gcf[m][c] += p * dF/da(sf[m])
template <Combine M, typename acc_t, int64_t Bytes>
DDF_INLINE void pixel_filter_grads_body(
    const acc_t* go,
    const acc_t* in,
    const int64_t* off,
    const acc_t* const* cf,
    const acc_t* sf,
    int64_t taps,
    int64_t C,
    acc_t* const* gcf,
    acc_t* gsf) {
  using V = VecN<acc_t, Bytes>;
  constexpr int64_t lanes = Bytes / int64_t(sizeof(acc_t)), TC = kTapChunk;
  const int64_t full = C / lanes * lanes;
  for (int64_t m0 = 0; m0 < taps; m0 += TC) {
    const int64_t mt = std::min(TC, taps - m0);
    V part[TC] = {};
    for (int64_t c = 0; c < full; c += lanes) {
      const V gv = load<V>(go + c);
      for (int64_t m = m0; m < m0 + mt; ++m) {
        const V p = gv * load<V>(in + off[m] + c);
        part[m - m0] += M == Combine::Mul ? p * load<V>(cf[m] + c) : p;
        store(gcf[m] + c, load<V>(gcf[m] + c) + (M == Combine::Mul ? p * sf[m] : p));
      }
    }
    for (int64_t m = m0; m < m0 + mt; ++m) {
      acc_t sum = 0;
      for (int64_t l = 0; l < lanes; ++l) sum += part[m - m0][l];
      for (int64_t c = full; c < C; ++c) {  // the channels past the last full vector
        const acc_t p = go[c] * in[off[m] + c];
        sum += p * dcombine_db<M>(cf[m][c]);
        gcf[m][c] += p * dcombine_da<M>(sf[m]);
      }
      gsf[m] = sum;
    }
  }
}

#define DDF_PIXEL_GRAD_LOOPS(ISA, TARGET)                                                                    \
  template <Combine M, typename acc_t>                                                                       \
  TARGET void pixel_filter_grads(IsaTag<ISA>, const acc_t* go, const acc_t* in, const int64_t* off,          \
                                 const acc_t* const* cf, const acc_t* sf, int64_t taps, int64_t C,           \
                                 acc_t* const* gcf, acc_t* gsf) {                                            \
    pixel_filter_grads_body<M, acc_t, kIsaBytes<ISA>>(go, in, off, cf, sf, taps, C, gcf, gsf);               \
  }
DDF_PIXEL_GRAD_LOOPS(Isa::Baseline, )
#if DDF_X86_ISA_DISPATCH
DDF_PIXEL_GRAD_LOOPS(Isa::Avx2, DDF_TARGET_AVX2)
DDF_PIXEL_GRAD_LOOPS(Isa::Avx512, DDF_TARGET_AVX512)
#endif
#undef DDF_PIXEL_GRAD_LOOPS

// Whether the channel-vectorized backward runs (float32 or float64): heads of at least 8
// channels, and input, grad_output and grad_input with contiguous channels.
inline bool use_pixel_backward(const Geometry& g, const Strides4& xs, const Strides4& gos, const Strides4* gis) {
  return g.channels_per_head() >= 8 && xs.c == 1 && gos.c == 1 && (gis == nullptr || gis->c == 1);
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
  const int64_t kk = g.taps(), cph = g.channels_per_head();
  // Bands fixed by the shape (not the threads): grad_channel_filter sums them in order.
  const int64_t R = std::max<int64_t>(1, ceil_div(g.Ho, ceil_div(tasks_fixed, g.B * g.G))), bands = ceil_div(g.Ho, R);
  // Per-band sums of grad_channel_filter: [b][band][tap][c].
  std::vector<scalar_t> partial(gc_ptr != nullptr ? static_cast<size_t>(g.B * bands * kk * g.C) : 0);
  at::parallel_for(0, g.B * g.G * bands, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> off(kk), tap_of(kk);
    std::vector<const scalar_t*> cfp(kk);
    std::vector<scalar_t> sfv(kk), gsf(kk), gcf_rows(kk * cph);
    std::vector<scalar_t*> gcf(kk);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / (g.G * bands), h = task / bands % g.G, band = task % bands, c0 = h * cph;
      const int64_t y0 = band * R, y1 = std::min(g.Ho, y0 + R);
      std::fill(gcf_rows.begin(), gcf_rows.end(), scalar_t(0));
      const scalar_t* x = x_ptr + b * xs.n + c0;
      for (int64_t y = y0; y < y1; ++y) {
        int64_t i_lo, i_hi;
        g.inside_taps(y, g.H, i_lo, i_hi);
        for (int64_t xo = 0; xo < g.Wo; ++xo) {
          int64_t j_lo, j_hi;
          g.inside_taps(xo, g.W, j_lo, j_hi);
          int64_t taps = 0;
          for (int64_t i = i_lo; i < i_hi; ++i) {
            for (int64_t j = j_lo; j < j_hi; ++j, ++taps) {
              const int64_t t = i * g.k + j;
              tap_of[taps] = t;
              off[taps] = g.input_coord(y, i) * xs.h + g.input_coord(xo, j) * xs.w;
              cfp[taps] = cfT.data() + (b * kk + t) * g.C + c0;
              sfv[taps] = sf_ptr[ss.offset(b, h * kk + t, y, xo)];
              gcf[taps] = gcf_rows.data() + t * cph;
            }
          }
          if (taps > 0) {
            with_isa([&](auto isa) {
              pixel_filter_grads<M, scalar_t>(
                  isa, go_ptr + b * gos.n + c0 + y * gos.h + xo * gos.w, x, off.data(), cfp.data(), sfv.data(), taps, cph,
                  gcf.data(), gsf.data());
            });
          }
          if (gs_ptr != nullptr) {
            // Taps outside the image read nothing: their gradient is zero.
            for (int64_t t = 0; t < kk; ++t) gs_ptr[gss.offset(b, h * kk + t, y, xo)] = scalar_t(0);
            for (int64_t m = 0; m < taps; ++m) gs_ptr[gss.offset(b, h * kk + tap_of[m], y, xo)] = gsf[m];
          }
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
