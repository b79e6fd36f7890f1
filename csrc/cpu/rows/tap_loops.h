// The innermost loops of the row kernels (forward.h, backward.h).
//
// The row kernels lay a band of rows out flat, rows of a fixed length L (bands.h), so that
// every tap t of every output pixel in the band reads its operands at one constant shift:
// a loop over a flat index p runs all pixels of the band at once, whatever the image
// width (no short rows, no edge cases). The bands are padded with kBlock zeros at the end
// and n is rounded up to a multiple of kBlock, so these loops only ever see full blocks:
// the block's accumulators live in registers across all taps.
//
// Each loop is written once (the *_body templates, always inlined) and instantiated per
// instruction set by the overloads at the bottom (../vec/isa.h): callers pick one with
// with_isa().
#pragma once

#include <cstdint>

#include "../../ddf_geometry.h"
#include "../vec/vector.h"

namespace ddf {
namespace cpu {

// Vectors accumulated together in registers by apply_taps, per channel: with kChannelBlock
// channels, 8 accumulators and 4 filter vectors, 12 of the 16 (SSE2, AVX2) or 32 (AVX-512,
// NEON) vector registers.
constexpr int64_t kBlockVecs = 4;
// Outputs per block of the widest ISA (4 x 64 bytes); flat ranges are padded to a multiple,
// which is also a multiple of every narrower ISA's block.
template <typename acc_t>
constexpr int64_t kBlock = kBlockVecs * 64 / int64_t(sizeof(acc_t));
// Channels processed together: they share each load of the spatial filter, which the
// loops are otherwise bound by (measured 1.8x faster than one channel at a time).
constexpr int64_t kChannelBlock = 2;

// For CB channels k at once, over p < n (n a multiple of 64 bytes; blocks of kBlockVecs
// vectors, then single vectors):
//   out[k][p] = sum_t a[k*taps + t][p] * F(c[k*taps + t], w[t][p])
// Forward: a = the input at tap t's shift, w = the spatial filter, c = the channel filter.
// Input gradient: a = grad_output and w = the spatial filter, both at the tap's shift.
template <Combine M, int64_t CB, typename acc_t, int64_t Bytes>
DDF_INLINE void apply_taps_body(
    acc_t* const* out,
    int64_t n,
    const acc_t* const* a,
    const acc_t* const* w,
    const acc_t* c,
    int64_t taps) {
  using V = VecN<acc_t, Bytes>;
  constexpr int64_t lanes = Bytes / int64_t(sizeof(acc_t)), BV = kBlockVecs;
  int64_t p0 = 0;
  for (; p0 + BV * lanes <= n; p0 += BV * lanes) {
    V acc[CB][BV] = {};
    for (int64_t t = 0; t < taps; ++t) {
      V wv[BV];
      DDF_UNROLL for (int64_t v = 0; v < BV; ++v) wv[v] = load<V>(w[t] + p0 + v * lanes);
      DDF_UNROLL for (int64_t k = 0; k < CB; ++k) {
        const acc_t* at = a[k * taps + t] + p0;
        const acc_t ct = c[k * taps + t];
        DDF_UNROLL for (int64_t v = 0; v < BV; ++v) {
          acc[k][v] += load<V>(at + v * lanes) * (M == Combine::Mul ? wv[v] * ct : wv[v] + ct);
        }
      }
    }
    DDF_UNROLL for (int64_t k = 0; k < CB; ++k) {
      DDF_UNROLL for (int64_t v = 0; v < BV; ++v) store(out[k] + p0 + v * lanes, acc[k][v]);
    }
  }
  // A remainder shorter than a block (n is a multiple of 64 bytes): one vector at a time.
  for (; p0 < n; p0 += lanes) {
    V acc[CB] = {};
    for (int64_t t = 0; t < taps; ++t) {
      const V wv = load<V>(w[t] + p0);
      DDF_UNROLL for (int64_t k = 0; k < CB; ++k) {
        const acc_t ct = c[k * taps + t];
        acc[k] += load<V>(a[k * taps + t] + p0) * (M == Combine::Mul ? wv * ct : wv + ct);
      }
    }
    DDF_UNROLL for (int64_t k = 0; k < CB; ++k) store(out[k] + p0, acc[k]);
  }
}

// Filter gradients of CB channels k over p < n (n a multiple of kBlock), for every tap t:
//   gc_lanes[(k*taps + t)*kLanes + l] += sum_{p = l mod kLanes} g[k][p] * a[k*taps+t][p] * dF/da(w[t][p])
//   gw[t][p] += sum_k g[k][p] * a[k*taps+t][p] * dF/db(c[k*taps+t])
// (each if not null). g (grad_output) is zero wherever p is not a real pixel, so
// padding adds nothing. The kLanes partial sums are R native vectors.
template <Combine M, int64_t CB, typename acc_t, int64_t Bytes>
DDF_INLINE void tap_grads_body(
    const acc_t* const* g,
    int64_t n,
    const acc_t* const* a,
    const acc_t* const* w,
    const acc_t* c,
    int64_t taps,
    acc_t* gc_lanes,
    acc_t* const* gw) {
  using V = VecN<acc_t, Bytes>;
  constexpr int64_t lanes = Bytes / int64_t(sizeof(acc_t)), R = kLanes<acc_t> / lanes, group = kLanes<acc_t>;
  for (int64_t t = 0; t < taps; ++t) {
    const acc_t* wt = w[t];
    acc_t* dst = gw != nullptr ? gw[t] : nullptr;
    V part[CB][R];
    acc_t f[CB];
    DDF_UNROLL for (int64_t k = 0; k < CB; ++k) {
      DDF_UNROLL for (int64_t r = 0; r < R; ++r)
        part[k][r] = gc_lanes != nullptr ? load<V>(gc_lanes + (k * taps + t) * group + r * lanes) : V{};
      f[k] = dcombine_db<M>(c[k * taps + t]);
    }
    for (int64_t p0 = 0; p0 < n; p0 += group) {
      DDF_UNROLL for (int64_t r = 0; r < R; ++r) {
        const int64_t p = p0 + r * lanes;
        V ga[CB];
        DDF_UNROLL for (int64_t k = 0; k < CB; ++k) ga[k] = load<V>(g[k] + p) * load<V>(a[k * taps + t] + p);
        if (gc_lanes != nullptr) {
          const V wv = load<V>(wt + p);
          DDF_UNROLL for (int64_t k = 0; k < CB; ++k) part[k][r] += M == Combine::Mul ? ga[k] * wv : ga[k];
        }
        if (dst != nullptr) {
          V sum = load<V>(dst + p);
          DDF_UNROLL for (int64_t k = 0; k < CB; ++k) sum += ga[k] * f[k];
          store(dst + p, sum);
        }
      }
    }
    if (gc_lanes != nullptr) {
      DDF_UNROLL for (int64_t k = 0; k < CB; ++k)
        DDF_UNROLL for (int64_t r = 0; r < R; ++r) store(gc_lanes + (k * taps + t) * group + r * lanes, part[k][r]);
    }
  }
}

// The per-ISA instances. The first argument picks one (see with_isa in ../vec/isa.h).
#define DDF_TAP_LOOPS(ISA, TARGET)                                                                          \
  template <Combine M, int64_t CB, typename acc_t>                                                          \
  TARGET void apply_taps(IsaTag<ISA>, acc_t* const* out, int64_t n, const acc_t* const* a,                  \
                         const acc_t* const* w, const acc_t* c, int64_t taps) {                             \
    apply_taps_body<M, CB, acc_t, kIsaBytes<ISA>>(out, n, a, w, c, taps);                                  \
  }                                                                                                         \
  template <Combine M, int64_t CB, typename acc_t>                                                          \
  TARGET void tap_grads(IsaTag<ISA>, const acc_t* const* g, int64_t n, const acc_t* const* a,               \
                        const acc_t* const* w, const acc_t* c, int64_t taps, acc_t* gc_lanes, acc_t* const* gw) { \
    tap_grads_body<M, CB, acc_t, kIsaBytes<ISA>>(g, n, a, w, c, taps, gc_lanes, gw);                        \
  }

DDF_FOR_EACH_ISA(DDF_TAP_LOOPS)
#undef DDF_TAP_LOOPS

}  // namespace cpu
}  // namespace ddf
