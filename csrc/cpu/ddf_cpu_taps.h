// The innermost loops of the CPU kernels.
//
// The driver (ddf_cpu.cpp) lays a band of rows out flat, rows of a fixed length L, so that
// every tap t of every output pixel in the band reads its operands at one constant shift:
// a loop over a flat index p runs all pixels of the band at once, whatever the image
// width (no short rows, no edge cases). The driver pads every buffer with kBlock zeros at
// the end and rounds n up to a multiple of kBlock, so these loops only ever see full
// blocks: the block's accumulators live in registers across all taps.
//
// Each loop is written once (the *_body templates, always inlined) and instantiated per
// instruction set by the overloads at the bottom, which carry a `target` attribute
// (ddf_cpu_isa.h): callers pick one with with_isa().
#pragma once

#include <cstdint>

#include "../ddf_geometry.h"
#include "ddf_cpu_isa.h"

#define DDF_INLINE inline __attribute__((always_inline))

namespace ddf {
namespace cpu {

// A 64-byte vector of acc_t (GCC/Clang vector extension): each target clone lowers its
// arithmetic to that clone's instructions (one AVX-512 register, two AVX2, four SSE).
// The helpers below are inlined into each clone, so the note GCC gives about the ABI of
// passing such vectors between functions of different ISAs does not apply.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif
template <typename acc_t>
struct Simd {
  typedef acc_t type __attribute__((vector_size(64)));
};
template <typename acc_t>
using Vec = typename Simd<acc_t>::type;
template <typename acc_t>
constexpr int64_t kVecLanes = 64 / sizeof(acc_t);

template <typename acc_t>
DDF_INLINE Vec<acc_t> load(const acc_t* p) {
  Vec<acc_t> v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}

template <typename acc_t>
DDF_INLINE void store(acc_t* p, const Vec<acc_t>& v) {
  __builtin_memcpy(p, &v, sizeof(v));
}

template <Combine M, typename acc_t>
DDF_INLINE Vec<acc_t> combine_vec(acc_t a, const Vec<acc_t>& b) {
  return M == Combine::Mul ? b * a : b + a;
}

// Vectors accumulated together in registers by apply_taps, per channel, at most. Each ISA
// takes what its registers hold with kChannelBlock channels and the k*k filter vectors:
// 4 (AVX-512, 32 zmm), 2 (AVX2 with 16 ymm, and NEON), 1 (SSE2, 16 xmm).
constexpr int64_t kBlockVecs = 4;
template <Isa I>
constexpr int64_t kIsaBlockVecs =
#if defined(__aarch64__)
    2;
#else
    I == Isa::Avx512 ? 4 : I == Isa::Avx2 ? 2 : 1;
#endif
// Outputs per block (256 bytes); flat ranges are padded to a multiple (of every ISA's block).
template <typename acc_t>
constexpr int64_t kBlock = kBlockVecs * kVecLanes<acc_t>;
// Channels processed together: they share each load of the spatial filter, which the
// loops are otherwise bound by (measured 1.8x faster than one channel at a time).
constexpr int64_t kChannelBlock = 2;

// Independent partial sums of a reduction (one vector). A fixed count, not the machine's
// vector width, keeps the summation order, and so the result, the same on every run.
template <typename acc_t>
constexpr int64_t kLanes = kVecLanes<acc_t>;

// For CB channels k at once, over p < n (n a multiple of kBlock):
//   out[k][p] = sum_t a[k*taps + t][p] * F(c[k*taps + t], w[t][p])
// Forward: a = the input at tap t's shift, w = the spatial filter, c = the channel filter.
// Input gradient: a = grad_output and w = the spatial filter, both at the tap's shift.
template <Combine M, int64_t CB, typename acc_t, int64_t BV>
DDF_INLINE void apply_taps_body(
    acc_t* const* out,
    int64_t n,
    const acc_t* const* a,
    const acc_t* const* w,
    const acc_t* c,
    int64_t taps) {
  constexpr int64_t lanes = kVecLanes<acc_t>;
  for (int64_t p0 = 0; p0 < n; p0 += BV * lanes) {
    Vec<acc_t> acc[CB][BV] = {};
    for (int64_t t = 0; t < taps; ++t) {
      Vec<acc_t> wv[BV];
      for (int64_t v = 0; v < BV; ++v) wv[v] = load(w[t] + p0 + v * lanes);
      for (int64_t k = 0; k < CB; ++k) {
        const acc_t* at = a[k * taps + t] + p0;
        const acc_t ct = c[k * taps + t];
        for (int64_t v = 0; v < BV; ++v) acc[k][v] += load(at + v * lanes) * combine_vec<M>(ct, wv[v]);
      }
    }
    for (int64_t k = 0; k < CB; ++k) {
      for (int64_t v = 0; v < BV; ++v) store(out[k] + p0 + v * lanes, acc[k][v]);
    }
  }
}

// Filter gradients of CB channels k over p < n (n a multiple of kBlock), for every tap t:
//   gc_lanes[(k*taps + t)*kLanes + l] += sum_{p = l mod kLanes} g[k][p] * a[k*taps+t][p] * dF/da(w[t][p])
//   gw[t][p] += sum_k g[k][p] * a[k*taps+t][p] * dF/db(c[k*taps+t])
// (each if not null). g (grad_output) is zero wherever p is not a real pixel, so
// padding adds nothing.
template <Combine M, int64_t CB, typename acc_t>
DDF_INLINE void tap_grads_body(
    const acc_t* const* g,
    int64_t n,
    const acc_t* const* a,
    const acc_t* const* w,
    const acc_t* c,
    int64_t taps,
    acc_t* gc_lanes,
    acc_t* const* gw) {
  constexpr int64_t lanes = kVecLanes<acc_t>;
  for (int64_t t = 0; t < taps; ++t) {
    const acc_t* wt = w[t];
    acc_t* dst = gw != nullptr ? gw[t] : nullptr;
    Vec<acc_t> part[CB];
    acc_t f[CB];
    for (int64_t k = 0; k < CB; ++k) {
      part[k] = gc_lanes != nullptr ? load(gc_lanes + (k * taps + t) * lanes) : Vec<acc_t>{};
      f[k] = dcombine_db<M>(c[k * taps + t]);
    }
    for (int64_t p = 0; p < n; p += lanes) {
      Vec<acc_t> ga[CB];
      for (int64_t k = 0; k < CB; ++k) ga[k] = load(g[k] + p) * load(a[k * taps + t] + p);
      if (gc_lanes != nullptr) {
        const Vec<acc_t> wv = load(wt + p);
        for (int64_t k = 0; k < CB; ++k) part[k] += M == Combine::Mul ? ga[k] * wv : ga[k];
      }
      if (dst != nullptr) {
        Vec<acc_t> sum = load(dst + p);
        for (int64_t k = 0; k < CB; ++k) sum += ga[k] * f[k];
        store(dst + p, sum);
      }
    }
    if (gc_lanes != nullptr) {
      for (int64_t k = 0; k < CB; ++k) store(gc_lanes + (k * taps + t) * lanes, part[k]);
    }
  }
}

// The per-ISA instances. The first argument picks one (see with_isa in ddf_cpu_isa.h).
#define DDF_TAP_LOOPS(ISA, TARGET)                                                                          \
  template <Combine M, int64_t CB, typename acc_t>                                                          \
  TARGET void apply_taps(IsaTag<ISA>, acc_t* const* out, int64_t n, const acc_t* const* a,                  \
                         const acc_t* const* w, const acc_t* c, int64_t taps) {                             \
    apply_taps_body<M, CB, acc_t, kIsaBlockVecs<ISA>>(out, n, a, w, c, taps);                              \
  }                                                                                                         \
  template <Combine M, int64_t CB, typename acc_t>                                                          \
  TARGET void tap_grads(IsaTag<ISA>, const acc_t* const* g, int64_t n, const acc_t* const* a,               \
                        const acc_t* const* w, const acc_t* c, int64_t taps, acc_t* gc_lanes, acc_t* const* gw) { \
    tap_grads_body<M, CB, acc_t>(g, n, a, w, c, taps, gc_lanes, gw);                                        \
  }

DDF_TAP_LOOPS(Isa::Baseline, )
#if DDF_X86_ISA_DISPATCH
DDF_TAP_LOOPS(Isa::Avx2, DDF_TARGET_AVX2)
DDF_TAP_LOOPS(Isa::Avx512, DDF_TARGET_AVX512)
#endif
#undef DDF_TAP_LOOPS

}  // namespace cpu
}  // namespace ddf
