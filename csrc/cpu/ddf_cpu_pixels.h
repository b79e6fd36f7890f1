// The forward vectorized over channels ("pixel-major"), for float32 and float64.
//
// The flat band kernels of ddf_cpu.cpp vectorize along image rows: they are fast on NCHW
// tensors they can read in place (ddf_cpu_head.h), but where they copy bands, small maps
// (7 x 7) spend most of their time on per-channel work (band copies, padding), and on
// channels_last tensors every row is strided. Here the vector runs along the channels of a
// head instead, which share the spatial-filter value of every tap of a pixel:
//   out[b, c, y, x] = sum over the taps (i, j) inside the image of
//                     X[b, c, iy, ix] * F(cf[b, c, i, j], sf[b, h*k*k + i*k + j, y, x])
// with the input pixel's channels contiguous (channels_last, read in place; or an NCHW band
// transposed into a task buffer), and the channel filter transposed once per call to
// [b][tap][c]. Only the taps inside the image are visited: there is no padding, so no
// 0 * inf, and every element is the same fixed-order sum whatever the threads.
#pragma once

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "../ddf_scalar.h"
#include "ddf_cpu_copy.h"
#include "ddf_cpu_taps.h"

namespace ddf {
namespace cpu {

// Output pixels computed together: their independent sums hide the FMA latency.
constexpr int64_t kPixelBlock = 4;

// One segment of nx output pixels of a row that all have the same taps inside the image,
// for the C channels of one head (m < taps; in, cf and out channel-contiguous):
//   out[x*out_step + c] = sum_m in[x*in_step + off[m] + c] * F(cf[m][c], sf[m][x*sf_step])
template <Combine M, typename acc_t, int64_t Bytes>
DDF_INLINE void pixel_segment_body(
    acc_t* out,
    int64_t out_step,
    int64_t nx,
    const acc_t* in,
    int64_t in_step,
    const int64_t* off,
    const acc_t* const* cf,
    const acc_t* const* sf,
    int64_t sf_step,
    int64_t taps,
    int64_t C) {
  using V = VecN<acc_t, Bytes>;
  constexpr int64_t lanes = Bytes / int64_t(sizeof(acc_t)), PX = kPixelBlock, CV = kPixelBlock;
  const int64_t full = C / lanes * lanes;
  // kPixelBlock pixels x one vector of channels ...
  int64_t x = 0;
  for (; x + PX <= nx; x += PX) {
    for (int64_t c = 0; c < full; c += lanes) {
      V acc[PX] = {};
      for (int64_t m = 0; m < taps; ++m) {
        const V cv = load<V>(cf[m] + c);
        const acc_t* src = in + x * in_step + off[m] + c;
        const acc_t* s = sf[m] + x * sf_step;
        DDF_UNROLL for (int64_t p = 0; p < PX; ++p) {
          const acc_t sp = s[p * sf_step];
          acc[p] += load<V>(src + p * in_step) * (M == Combine::Mul ? cv * sp : cv + sp);
        }
      }
      DDF_UNROLL for (int64_t p = 0; p < PX; ++p) store(out + (x + p) * out_step + c, acc[p]);
    }
  }
  // ... then the pixels left (the borders of a row are segments of one pixel): one pixel x
  // kPixelBlock vectors of channels, then x one vector.
  for (; x < nx; ++x) {
    int64_t c = 0;
    for (; c + CV * lanes <= full; c += CV * lanes) {
      V acc[CV] = {};
      for (int64_t m = 0; m < taps; ++m) {
        const acc_t sp = sf[m][x * sf_step];
        const acc_t* src = in + x * in_step + off[m] + c;
        DDF_UNROLL for (int64_t v = 0; v < CV; ++v) {
          const V cv = load<V>(cf[m] + c + v * lanes);
          acc[v] += load<V>(src + v * lanes) * (M == Combine::Mul ? cv * sp : cv + sp);
        }
      }
      DDF_UNROLL for (int64_t v = 0; v < CV; ++v) store(out + x * out_step + c + v * lanes, acc[v]);
    }
    for (; c < full; c += lanes) {
      V acc = {};
      for (int64_t m = 0; m < taps; ++m) {
        const acc_t sp = sf[m][x * sf_step];
        const V cv = load<V>(cf[m] + c);
        acc += load<V>(in + x * in_step + off[m] + c) * (M == Combine::Mul ? cv * sp : cv + sp);
      }
      store(out + x * out_step + c, acc);
    }
  }
  // Channels past the last full vector, one at a time.
  for (int64_t c = full; c < C; ++c) {
    for (int64_t x = 0; x < nx; ++x) {
      acc_t acc = 0;
      for (int64_t m = 0; m < taps; ++m) {
        acc += in[x * in_step + off[m] + c] * combine_filters<M>(cf[m][c], sf[m][x * sf_step]);
      }
      out[x * out_step + c] = acc;
    }
  }
}

#define DDF_PIXEL_LOOPS(ISA, TARGET)                                                                         \
  template <Combine M, typename acc_t>                                                                       \
  TARGET void pixel_segment(IsaTag<ISA>, acc_t* out, int64_t out_step, int64_t nx, const acc_t* in,          \
                            int64_t in_step, const int64_t* off, const acc_t* const* cf, const acc_t* const* sf, \
                            int64_t sf_step, int64_t taps, int64_t C) {                                      \
    pixel_segment_body<M, acc_t, kIsaBytes<ISA>>(out, out_step, nx, in, in_step, off, cf, sf, sf_step, taps, C); \
  }
DDF_FOR_EACH_ISA(DDF_PIXEL_LOOPS)
#undef DDF_PIXEL_LOOPS

// An NCHW input whose maps are at most this many pixels runs here too, through a transposed
// band (measured faster than the flat kernels' copies at 7 x 7; slower at 14 x 14 on AVX2,
// where the transpositions cost more than the flat kernels lose) ...
constexpr int64_t kPixelsMaxNchwMap = 100;
// ... but only up to this many where the flat forward reads the input in place
// (ddf_cpu_head.h): that was faster from 5 x 5 up, on AVX-512 and AVX2, and level at 4 x 4
// (B=8, 512 channels, 2 threads).
constexpr int64_t kPixelsMaxNchwMapFlatInPlace = 16;
// Output rows of a transposed band, at least (see pixel_forward).
constexpr int64_t kMinTransposedBandRows = 4;
// Bytes of a task's transposed input band.
constexpr int64_t kPixelsMaxBandBytes = 1 << 20;

// Whether the channel-vectorized forward runs for this call (float32 or float64): heads of
// at least 8 channels (narrower ones would be all remainder), and an input whose channels
// are contiguous, or a small NCHW map. flat_in_place: whether the flat forward would read
// this input in place.
inline bool use_pixel_forward(const Geometry& g, const Strides4& xs, bool flat_in_place) {
  if (g.channels_per_head() < 8) return false;
  if (xs.c == 1) return true;
  const double in_rows = static_cast<double>(g.k - 1) * g.dilation + g.stride + 1;  // one output row's input
  const int64_t max_map = flat_in_place ? kPixelsMaxNchwMapFlatInPlace : kPixelsMaxNchwMap;
  return static_cast<double>(g.Ho) * g.Wo <= max_map && in_rows * g.W * g.channels_per_head() * 8 <= kPixelsMaxBandBytes;
}

// The run of output columns x0 <= x < x1 (x1 is returned) whose column taps inside the image
// are those of x0, [j_lo, j_hi): a border column, or the interior. Every pixel of a run reads
// at the same shift per tap, so one kernel call takes the whole run.
inline int64_t same_taps_run(const Geometry& g, int64_t x0, int64_t& j_lo, int64_t& j_hi) {
  g.inside_taps(x0, g.W, j_lo, j_hi);
  int64_t x1 = x0 + 1;
  for (int64_t lo, hi; x1 < g.Wo; ++x1) {
    g.inside_taps(x1, g.W, lo, hi);
    if (lo != j_lo || hi != j_hi) break;
  }
  return x1;
}

// The channel filter as cfT[b][tap][c]: each tap's values for the channels of a head are
// one vector load.
template <typename scalar_t>
std::vector<scalar_t> transposed_channel_filter(const scalar_t* cf_ptr, const Strides4& cs, const Geometry& g) {
  const int64_t kk = g.taps();
  std::vector<scalar_t> cfT(static_cast<size_t>(g.B * kk * g.C));
  at::parallel_for(0, g.B * kk, ceil_div(4096, g.C), [&](int64_t begin, int64_t end) {
    for (int64_t bt = begin; bt < end; ++bt) {
      const int64_t b = bt / kk, t = bt % kk;
      const scalar_t* src = cf_ptr + cs.offset(b, 0, t / g.k, t % g.k);
      scalar_t* dst = cfT.data() + bt * g.C;
      for (int64_t c = 0; c < g.C; ++c) dst[c] = src[c * cs.c];
    }
  });
  return cfT;
}

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
    int64_t tasks_wanted) {
  const int64_t kk = g.taps(), cph = g.channels_per_head(), s = g.stride, d = g.dilation, pad = g.pad();
  // Pixel stride of the task buffers: one 64-byte line more than the channels, so that the
  // taps' pixels do not all fall in the same few cache sets (a power-of-two stride such as
  // 512 floats made the kernel 1.7x slower).
  const int64_t bpx = ceil_div(cph, kLanes<scalar_t>) * kLanes<scalar_t> + kLanes<scalar_t>;
  const std::vector<scalar_t> cfT = transposed_channel_filter(cf_ptr, cs, g);

  // Band rows: as many as the input buffer allows (transposed input), split further so
  // that every thread gets work.
  // The output is ours (ddf_empty_output): channels_last, or NCHW with contiguous rows.
  const bool in_place_in = xs.c == 1, in_place_out = os.c == 1;
  TORCH_INTERNAL_ASSERT(in_place_out || (os.w == 1 && os.h == g.Wo), "ddf: unexpected output strides");
  int64_t R = std::max<int64_t>(1, ceil_div(g.Ho, ceil_div(tasks_wanted, g.B * g.G)));
  if (!in_place_in) {
    // Each band transposes its input rows plus the (k-1)*d halo rows: with a small batch,
    // bands of one row (7 tasks for a 7 x 7 map at B=1) transposed each row three times
    // (3x3 kernel), which made B=1 slower than the flat kernels on AVX2.
    R = std::max(R, std::min<int64_t>(g.Ho, kMinTransposedBandRows));
    const int64_t row_bytes = g.W * bpx * int64_t(sizeof(scalar_t));
    const int64_t max_in_rows = std::max<int64_t>(kPixelsMaxBandBytes / row_bytes, (g.k - 1) * d + 1);
    R = std::max<int64_t>(1, std::min(R, (max_in_rows - (g.k - 1) * d - 1) / s + 1));
  }
  if (!in_place_out) R = std::max<int64_t>(1, std::min(R, kPixelsMaxBandBytes / (g.Wo * bpx * int64_t(sizeof(scalar_t)))));
  const int64_t bands = ceil_div(g.Ho, R);

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

}  // namespace cpu
}  // namespace ddf
