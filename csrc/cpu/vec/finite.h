// The finiteness check of a block of results: the row kernels compute the zeros that stand
// for pixels outside the image too (0 * inf = NaN), so a non-finite result of theirs is
// recomputed by the elementwise kernels (../elementwise/).
#pragma once

#include <cstdint>
#include <type_traits>

#include "isa.h"
#include "vector.h"

namespace ddf {
namespace cpu {

// Whether every v[r*row_stride + col], r < rows, col < cols, is finite: no exponent field
// all ones. Integer tests, so the loop vectorizes (a float sum would not, without reordering).
// Instantiated per ISA like the tap loops: the forward checks every output it writes, and
// at 14 x 14 the SSE2 loop took half as long as the taps themselves.
template <typename acc_t>
DDF_INLINE bool all_finite_body(const acc_t* v, int64_t row_stride, int64_t rows, int64_t cols) {
  using bits_t = std::conditional_t<sizeof(acc_t) == 4, uint32_t, uint64_t>;
  constexpr bits_t exponent = sizeof(acc_t) == 4 ? bits_t(0x7f800000u) : bits_t(0x7ff0000000000000ull);
  bits_t bad = 0;
  if (row_stride == cols) {
    cols *= rows;
    rows = 1;
  }
  for (int64_t r = 0; r < rows; ++r) {
    const acc_t* row = v + r * row_stride;
    for (int64_t col = 0; col < cols; ++col) {
      bits_t u;
      __builtin_memcpy(&u, row + col, sizeof(u));
      bad |= static_cast<bits_t>((u & exponent) == exponent);
    }
  }
  return bad == 0;
}

#define DDF_ALL_FINITE(ISA, TARGET)                                                                   \
  template <typename acc_t>                                                                          \
  TARGET bool all_finite_isa(IsaTag<ISA>, const acc_t* v, int64_t row_stride, int64_t rows, int64_t cols) { \
    return all_finite_body(v, row_stride, rows, cols);                                              \
  }
DDF_FOR_EACH_ISA(DDF_ALL_FINITE)
#undef DDF_ALL_FINITE

template <typename acc_t>
bool all_finite(const acc_t* v, int64_t row_stride, int64_t rows, int64_t cols) {
  return with_isa([&](auto isa) { return all_finite_isa(isa, v, row_stride, rows, cols); });
}

}  // namespace cpu
}  // namespace ddf
