// Strided block copies between the operands and the kernels' buffers, converting the type,
// vectorized per instruction set where rows are contiguous.
#pragma once

#include <cstdint>
#include <type_traits>
#include <utility>

#include "isa.h"
#include "vector.h"

namespace ddf {
namespace cpu {

// GCC turns a plain copy loop into a memcpy call, which costs more than the copy for the
// short rows of small images (7 x 7: 28 bytes).
#if defined(__GNUC__) && !defined(__clang__)
#define DDF_NO_MEMCPY_CALLS __attribute__((optimize("no-tree-loop-distribute-patterns")))
#else
#define DDF_NO_MEMCPY_CALLS
#endif

// A block of rows in or out of the acc_t buffers, converting the type:
//   dst[r*dst_rs + c*dst_cs] = src[r*src_rs + c*src_cs]   for r < rows, c < cols.
// One call per plane, not per row; vectorized per instruction set where rows are contiguous.
template <typename S, typename D>
DDF_INLINE void copy_block_body(
    const S* src,
    int64_t src_rs,
    int64_t src_cs,
    D* dst,
    int64_t dst_rs,
    int64_t dst_cs,
    int64_t rows,
    int64_t cols) {
  if (src_cs == 1 && dst_cs == 1 && src_rs == cols && dst_rs == cols) {
    cols *= rows;  // the rows are one contiguous run on both sides
    rows = 1;
  }
  for (int64_t r = 0; r < rows; ++r) {
    const S* from = src + r * src_rs;
    D* to = dst + r * dst_rs;
    if (src_cs == 1 && dst_cs == 1) {
      for (int64_t c = 0; c < cols; ++c) to[c] = static_cast<D>(from[c]);
    } else {
      for (int64_t c = 0; c < cols; ++c) to[c * dst_cs] = static_cast<D>(from[c * src_cs]);
    }
  }
}

#define DDF_COPY_BLOCK(ISA, TARGET)                                                                  \
  template <typename S, typename D>                                                                 \
  TARGET DDF_NO_MEMCPY_CALLS void copy_block_isa(IsaTag<ISA>, const S* src, int64_t src_rs, int64_t src_cs, \
                                                  D* dst, int64_t dst_rs, int64_t dst_cs, int64_t rows, int64_t cols) { \
    copy_block_body(src, src_rs, src_cs, dst, dst_rs, dst_cs, rows, cols);                         \
  }
DDF_FOR_EACH_ISA(DDF_COPY_BLOCK)
#undef DDF_COPY_BLOCK

template <typename S, typename D>
void copy_block(const S* src, int64_t src_rs, int64_t src_cs, D* dst, int64_t dst_rs, int64_t dst_cs, int64_t rows, int64_t cols) {
  with_isa([&](auto isa) { copy_block_isa(isa, src, src_rs, src_cs, dst, dst_rs, dst_cs, rows, cols); });
}

// A transposition of a rows x cols block, rows contiguous on both sides:
//   dst[c*dst_rs + r] = src[r*src_rs + c]   for r < rows, c < cols.
// It moves NCHW bands in and out of the channel-vectorized kernels (../channels/).
// Tiles of N x N elements (N = one 32-byte vector, or 16 bytes on the baseline ISA) are
// transposed in registers with log2(N) rounds of interleaves (the perfect shuffle: round
// after round, row 2i and 2i+1 become the low and high interleave of rows i and i + N/2);
// the edges, and compilers without __builtin_shuffle, go element by element.
template <typename T>
DDF_INLINE void transpose_scalar(const T* src, int64_t src_rs, T* dst, int64_t dst_rs, int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
  for (int64_t r = r0; r < r1; ++r)
    for (int64_t c = c0; c < c1; ++c) dst[c * dst_rs + r] = src[r * src_rs + c];
}

#if defined(__GNUC__) && !defined(__clang__)
#define DDF_HAVE_SHUFFLE 1
template <typename T, int64_t N>
struct Interleave {
  using Index = std::conditional_t<sizeof(T) == 4, int32_t, int64_t>;
  typedef Index mask __attribute__((vector_size(N * sizeof(T))));
  // Lane 2i takes element i of the first operand, lane 2i + 1 element i of the second
  // (elements N/2 + i for the high half).
  template <size_t... I>
  static constexpr mask make(bool high, std::index_sequence<I...>) {
    return mask{static_cast<Index>(I / 2 + (I % 2 == 0 ? 0 : N) + (high ? N / 2 : 0))...};
  }
  static constexpr mask lo = make(false, std::make_index_sequence<N>());
  static constexpr mask hi = make(true, std::make_index_sequence<N>());
};
#else
#define DDF_HAVE_SHUFFLE 0
#endif

template <typename T, int64_t Bytes>
DDF_INLINE void transpose_body(const T* src, int64_t src_rs, T* dst, int64_t dst_rs, int64_t rows, int64_t cols) {
#if DDF_HAVE_SHUFFLE
  constexpr int64_t N = Bytes / int64_t(sizeof(T));
  using V = VecN<T, Bytes>;
  using IL = Interleave<T, N>;
  const int64_t rows_full = rows / N * N, cols_full = cols / N * N;
  for (int64_t r = 0; r < rows_full; r += N) {
    for (int64_t c = 0; c < cols_full; c += N) {
      V v[N], w[N];
      for (int64_t i = 0; i < N; ++i) v[i] = load<V>(src + (r + i) * src_rs + c);
      for (int64_t round = 1; round < N; round *= 2) {
        for (int64_t i = 0; i < N / 2; ++i) {
          w[2 * i] = __builtin_shuffle(v[i], v[i + N / 2], IL::lo);
          w[2 * i + 1] = __builtin_shuffle(v[i], v[i + N / 2], IL::hi);
        }
        for (int64_t i = 0; i < N; ++i) v[i] = w[i];
      }
      for (int64_t i = 0; i < N; ++i) store(dst + (c + i) * dst_rs + r, v[i]);
    }
  }
  transpose_scalar(src, src_rs, dst, dst_rs, 0, rows_full, cols_full, cols);
  transpose_scalar(src, src_rs, dst, dst_rs, rows_full, rows, 0, cols);
#else
  transpose_scalar(src, src_rs, dst, dst_rs, 0, rows, 0, cols);
#endif
}

// Tiles of at most 32 bytes a side: on AVX-512 too (8 x 8 floats in 8 registers).
template <Isa I>
constexpr int64_t kTransposeBytes = kIsaBytes<I> < 32 ? kIsaBytes<I> : 32;

#define DDF_TRANSPOSE(ISA, TARGET)                                                                         \
  template <typename T>                                                                                    \
  TARGET void transpose_isa(IsaTag<ISA>, const T* src, int64_t src_rs, T* dst, int64_t dst_rs, int64_t rows, \
                            int64_t cols) {                                                                \
    transpose_body<T, kTransposeBytes<ISA>>(src, src_rs, dst, dst_rs, rows, cols);                         \
  }
DDF_FOR_EACH_ISA(DDF_TRANSPOSE)
#undef DDF_TRANSPOSE

template <typename T>
void transpose_block(const T* src, int64_t src_rs, T* dst, int64_t dst_rs, int64_t rows, int64_t cols) {
  with_isa([&](auto isa) { transpose_isa(isa, src, src_rs, dst, dst_rs, rows, cols); });
}

}  // namespace cpu
}  // namespace ddf
