// The vector type every CPU kernel's inner loops are written with, and its loads and stores.
//
// Each loop is written once (an always-inlined *_body template) with GCC/Clang vector
// extensions and instantiated per instruction set at its native width by an overload that
// carries a `target` attribute (isa.h): callers pick one with with_isa().
#pragma once

#include <cstdint>

#include "../../ddf_geometry.h"
#include "isa.h"

#define DDF_INLINE inline __attribute__((always_inline))

// Unrolls a loop over register-held accumulators. Without it GCC kept some arrays of
// accumulators on the stack on AVX2 (zeroed with rep stos, stored through 16-byte copies):
// 1.5x slower.
#if defined(__GNUC__) && !defined(__clang__)
#define DDF_UNROLL _Pragma("GCC unroll 16")
#else
#define DDF_UNROLL
#endif

namespace ddf {
namespace cpu {

// The helpers below are inlined into each ISA's clone, so the note GCC gives about the ABI
// of passing such vectors between functions of different ISAs does not apply.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif
// A vector of Bytes bytes of acc_t (GCC/Clang vector extension), at the ISA's native width:
// 64 bytes on AVX-512, 32 on AVX2, 16 on SSE2 and NEON. (A vector wider than the ISA's
// registers is lowered through the stack: 64-byte vectors made AVX2 5x slower than SSE2.)
template <typename acc_t, int64_t Bytes>
struct Simd {
  typedef acc_t type __attribute__((vector_size(Bytes)));
};
template <typename acc_t, int64_t Bytes>
using VecN = typename Simd<acc_t, Bytes>::type;

template <Isa I>
constexpr int64_t kIsaBytes =
#if defined(__aarch64__)
    16;
#else
    I == Isa::Avx512 ? 64 : I == Isa::Avx2 ? 32 : 16;
#endif

template <typename V, typename acc_t>
DDF_INLINE V load(const acc_t* p) {
  V v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}

template <typename V, typename acc_t>
DDF_INLINE void store(acc_t* p, const V& v) {
  __builtin_memcpy(p, &v, sizeof(v));
}

// Elements of acc_t in 64 bytes, the widest ISA's vector. Sums split into this many
// independent parts (a channel-filter gradient's lanes) keep the same summation order, and
// so the same result, on every run and every ISA.
template <typename acc_t>
constexpr int64_t kLanes = 64 / int64_t(sizeof(acc_t));

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

}  // namespace cpu
}  // namespace ddf
