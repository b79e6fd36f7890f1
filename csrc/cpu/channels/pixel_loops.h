// The innermost loops of the channel kernels (forward.h, backward.h): one vector holds
// channels of a head, which share each tap's spatial-filter value, over a run of pixels
// that all have the same taps inside the image. Written once and instantiated per ISA
// (../vec/isa.h), like the row kernels' loops.
#pragma once

#include <algorithm>
#include <cstdint>

#include "../../ddf_geometry.h"
#include "../vec/vector.h"

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

// Taps handled together by pixel_filter_grads: their spatial-filter gradient sums stay in
// registers while the loop runs over the channels.
constexpr int64_t kTapChunk = 9;

// tap_chunk_grads for one tap and the channels c0 <= c < C past the last full vector:
// adds p * dF/da(sfv) to gcf[c] and returns sum + the sum of p * dF/db(cf[c]), with
// p = go[c] * in[c]. The pointers are __restrict__ (the gradient row never overlaps the
// operands) so that GCC compiles one version of the loop: without, it versioned the loop on
// a run-time overlap test of the buffers' addresses, and the two versions fused the
// multiply-adds differently, so that a call's last bits depended on where the heap put the
// buffers (AVX-512, one call in ~100; tests/test_backward.py, "wherever the heap").
template <Combine M, typename acc_t>
DDF_INLINE acc_t remainder_channel_grads(const acc_t* __restrict__ go, const acc_t* __restrict__ in,
                                         const acc_t* __restrict__ cf, acc_t* __restrict__ gcf, acc_t sfv,
                                         int64_t c0, int64_t C, acc_t sum) {
  const acc_t da = dcombine_da<M>(sfv);
  for (int64_t c = c0; c < C; ++c) {
    const acc_t p = go[c] * in[c];
    sum += p * dcombine_db<M>(cf[c]);
    gcf[c] += p * da;
  }
  return sum;
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
    sums[m] = remainder_channel_grads<M>(go, in + off[m0 + m], cf[m0 + m], gcf[m0 + m], sfv[m], full, C,
                                         horizontal_sum<acc_t, Bytes>(part[m]));
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

}  // namespace cpu
}  // namespace ddf
