// The direct CPU kernels: every result element computed on its own by the element functions
// of ddf_elementwise.h (the ones the generic CUDA kernels run), which visit only the taps
// inside the image.
//
// They serve two cases the flat band layout of ddf_cpu.cpp cannot:
//  - geometries whose flat buffers would be large next to the tensors (a huge stride or
//    dilation): these kernels need no buffer at all, so memory stays that of the tensors;
//  - a task of the flat kernels whose results came out non-finite. The flat loops also
//    multiply the zeros that stand for pixels outside the image (0 * inf = NaN), so a
//    non-finite result may be an artefact; the task is recomputed here, where a non-finite
//    value reaches exactly the results that depend on it, as in conv2d. (A finite flat
//    result had only finite terms, so the extra zero terms changed nothing.)
//
// Each element is a fixed-order sum, so results do not depend on the threads.
#pragma once

#include <ATen/Parallel.h>

#include <cstdint>
#include <type_traits>

#include "../ddf_elementwise.h"
#include "ddf_cpu_isa.h"
#include "ddf_cpu_taps.h"

namespace ddf {
namespace cpu {

// Pointers and strides of the operands of one call (null where a result is not wanted).
template <typename scalar_t>
struct Operands {
  const scalar_t* x = nullptr;
  Strides4 xs{};
  const scalar_t* cf = nullptr;
  Strides4 cs{};
  const scalar_t* sf = nullptr;
  Strides4 ss{};
  const scalar_t* go = nullptr;
  Strides4 gos{};
};

// out[b, c, y, :] for c in [c0, c1), y in [y0, y1).
template <Combine M, typename scalar_t>
void direct_forward(const Operands<scalar_t>& o, scalar_t* out, const Strides4& os, const Geometry& g, int64_t b,
                    int64_t c0, int64_t c1, int64_t y0, int64_t y1) {
  for (int64_t c = c0; c < c1; ++c)
    for (int64_t y = y0; y < y1; ++y)
      for (int64_t x = 0; x < g.Wo; ++x)
        out[os.offset(b, c, y, x)] =
            narrow<scalar_t>(forward_element<M>(o.x, o.xs, o.cf, o.cs, o.sf, o.ss, g, b, c, y, x));
}

// grad_input[b, c, iy, :] for c in [c0, c1), iy in [iy0, iy1).
template <Combine M, typename scalar_t>
void direct_grad_input(const Operands<scalar_t>& o, scalar_t* gi, const Strides4& gis, const Geometry& g, int64_t b,
                       int64_t c0, int64_t c1, int64_t iy0, int64_t iy1) {
  for (int64_t c = c0; c < c1; ++c)
    for (int64_t iy = iy0; iy < iy1; ++iy)
      for (int64_t ix = 0; ix < g.W; ++ix)
        gi[gis.offset(b, c, iy, ix)] =
            narrow<scalar_t>(grad_input_element<M>(o.go, o.gos, o.cf, o.cs, o.sf, o.ss, g, b, c, iy, ix));
}

// grad_spatial_filter[b, h*k*k + tap, y, :] for every tap of head h, y in [y0, y1).
template <Combine M, typename scalar_t>
void direct_grad_spatial(const Operands<scalar_t>& o, scalar_t* gs, const Strides4& gss, const Geometry& g, int64_t b,
                         int64_t h, int64_t y0, int64_t y1) {
  const int64_t kk = g.taps();
  for (int64_t tap = 0; tap < kk; ++tap)
    for (int64_t y = y0; y < y1; ++y)
      for (int64_t x = 0; x < g.Wo; ++x)
        gs[gss.offset(b, h * kk + tap, y, x)] = narrow<scalar_t>(
            grad_spatial_element<M>(o.go, o.gos, o.x, o.xs, o.cf, o.cs, g, b, h, tap / g.k, tap % g.k, y, x));
}

// grad_channel_filter[b, c, :, :], each a sum over the output pixels whose tap is inside.
template <Combine M, typename scalar_t>
void direct_grad_channel(const Operands<scalar_t>& o, scalar_t* gc, const Strides4& gcs, const Geometry& g, int64_t b,
                         int64_t c) {
  using acc_t = typename AccType<scalar_t>::type;
  for (int64_t i = 0; i < g.k; ++i) {
    for (int64_t j = 0; j < g.k; ++j) {
      acc_t sum = 0;
      for (int64_t y = 0; y < g.Ho; ++y)
        for (int64_t x = 0; x < g.Wo; ++x) sum += grad_channel_term<M>(o.go, o.gos, o.x, o.xs, o.sf, o.ss, g, b, c, i, j, y, x);
      gc[gcs.offset(b, c, i, j)] = narrow<scalar_t>(sum);
    }
  }
}

// The whole ops, for the geometries the flat layout does not take (parallel over rows).
template <Combine M, typename scalar_t>
void direct_forward_all(const Operands<scalar_t>& o, scalar_t* out, const Strides4& os, const Geometry& g) {
  at::parallel_for(0, g.B * g.C * g.Ho, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t y = r % g.Ho, c = r / g.Ho % g.C, b = r / (g.Ho * g.C);
      direct_forward<M>(o, out, os, g, b, c, c + 1, y, y + 1);
    }
  });
}

template <Combine M, typename scalar_t>
void direct_grad_input_all(const Operands<scalar_t>& o, scalar_t* gi, const Strides4& gis, const Geometry& g) {
  at::parallel_for(0, g.B * g.C * g.H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t iy = r % g.H, c = r / g.H % g.C, b = r / (g.H * g.C);
      direct_grad_input<M>(o, gi, gis, g, b, c, c + 1, iy, iy + 1);
    }
  });
}

template <Combine M, typename scalar_t>
void direct_filter_grads_all(const Operands<scalar_t>& o, scalar_t* gc, const Strides4& gcs, scalar_t* gs,
                             const Strides4& gss, const Geometry& g) {
  if (gs != nullptr) {
    at::parallel_for(0, g.B * g.G * g.Ho, 1, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t y = r % g.Ho, h = r / g.Ho % g.G, b = r / (g.Ho * g.G);
        direct_grad_spatial<M>(o, gs, gss, g, b, h, y, y + 1);
      }
    });
  }
  if (gc != nullptr) {
    at::parallel_for(0, g.B * g.C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t bc = begin; bc < end; ++bc) direct_grad_channel<M>(o, gc, gcs, g, bc / g.C, bc % g.C);
    });
  }
}

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
