// One element of each result of ddf and ddf_backward, computed from strided pointers.
//
// The CUDA kernels are these functions run by one thread per element; the C++ test
// (tests/cpp/test_ddf.cpp) runs the very same functions on the host and compares them with
// the CPU kernels. Sums run in a fixed order (deterministic), accumulating in
// AccType<scalar_t> (values are widened through ddf_scalar.h, which the CUDA kernels
// specialize for __half and __nv_bfloat16).
#pragma once

#include "ddf_geometry.h"
#include "ddf_scalar.h"

namespace ddf {

// out[b, c, y, xo] = sum_{i,j} X[b, c, iy, ix] * F(cf[b,c,i,j], sf[b, head(c)*kk + ij, y, xo]).
template <Combine M, typename scalar_t>
DDF_HOST_DEVICE typename AccType<scalar_t>::type forward_element(
    const scalar_t* x, const Strides4& xs,
    const scalar_t* cf, const Strides4& cs,
    const scalar_t* sf, const Strides4& ss,
    const Geometry& g, int64_t b, int64_t c, int64_t y, int64_t xo) {
  using acc_t = typename AccType<scalar_t>::type;
  // Base pointers once per element; the tap loops only add row/column/tap offsets.
  const scalar_t* x_plane = x + b * xs.n + c * xs.c;
  const scalar_t* cf_c = cf + b * cs.n + c * cs.c;
  const scalar_t* sf_px = sf + b * ss.n + g.sf_channel(c, 0, 0) * ss.c + y * ss.h + xo * ss.w;
  acc_t acc = 0;
  // Only the taps inside the image: no value outside it (not even 0 * inf) reaches the sum.
  int64_t i_lo, i_hi, j_lo, j_hi;
  g.inside_taps(y, g.H, i_lo, i_hi);
  g.inside_taps(xo, g.W, j_lo, j_hi);
  for (int64_t i = i_lo; i < i_hi; ++i) {
    const scalar_t* x_row = x_plane + g.input_coord(y, i) * xs.h;
    for (int64_t j = j_lo; j < j_hi; ++j) {
      const int64_t ix = g.input_coord(xo, j);
      const acc_t f = combine_filters<M>(
          widen(cf_c[i * cs.h + j * cs.w]), widen(sf_px[(i * g.k + j) * ss.c]));
      acc += widen(x_row[ix * xs.w]) * f;
    }
  }
  return acc;
}

// grad_input[b, c, iy, ix]: the transposed filter, gathered over the output pixels whose
// taps read input pixel (iy, ix).
template <Combine M, typename scalar_t>
DDF_HOST_DEVICE typename AccType<scalar_t>::type grad_input_element(
    const scalar_t* go, const Strides4& gos,
    const scalar_t* cf, const Strides4& cs,
    const scalar_t* sf, const Strides4& ss,
    const Geometry& g, int64_t b, int64_t c, int64_t iy, int64_t ix) {
  using acc_t = typename AccType<scalar_t>::type;
  const scalar_t* go_plane = go + b * gos.n + c * gos.c;
  const scalar_t* cf_c = cf + b * cs.n + c * cs.c;
  const scalar_t* sf_head = sf + b * ss.n + g.sf_channel(c, 0, 0) * ss.c;
  acc_t acc = 0;
  int64_t i_lo, i_hi, j_lo, j_hi;
  g.reaching_taps(iy, g.Ho, i_lo, i_hi);
  g.reaching_taps(ix, g.Wo, j_lo, j_hi);
  for (int64_t i = i_lo; i < i_hi; ++i) {
    const int64_t y = g.output_coord(iy, i, g.Ho);
    if (y < 0) continue;
    for (int64_t j = j_lo; j < j_hi; ++j) {
      const int64_t xo = g.output_coord(ix, j, g.Wo);
      if (xo < 0) continue;
      const acc_t f = combine_filters<M>(
          widen(cf_c[i * cs.h + j * cs.w]),
          widen(sf_head[(i * g.k + j) * ss.c + y * ss.h + xo * ss.w]));
      acc += widen(go_plane[y * gos.h + xo * gos.w]) * f;
    }
  }
  return acc;
}

// grad_spatial_filter[b, h*kk + i*k + j, y, xo]: a sum over the channels of head h.
template <Combine M, typename scalar_t>
DDF_HOST_DEVICE typename AccType<scalar_t>::type grad_spatial_element(
    const scalar_t* go, const Strides4& gos,
    const scalar_t* x, const Strides4& xs,
    const scalar_t* cf, const Strides4& cs,
    const Geometry& g, int64_t b, int64_t h, int64_t i, int64_t j, int64_t y, int64_t xo) {
  using acc_t = typename AccType<scalar_t>::type;
  const int64_t iy = g.input_coord(y, i), ix = g.input_coord(xo, j), cph = g.channels_per_head();
  acc_t acc = 0;
  if (iy < 0 || iy >= g.H || ix < 0 || ix >= g.W) return acc;
  for (int64_t c = h * cph; c < (h + 1) * cph; ++c) {
    acc += widen(go[gos.offset(b, c, y, xo)]) * widen(x[xs.offset(b, c, iy, ix)]) *
        dcombine_db<M>(widen(cf[cs.offset(b, c, i, j)]));
  }
  return acc;
}

// One output pixel's term of grad_channel_filter[b, c, i, j] (which sums it over all pixels).
template <Combine M, typename scalar_t>
DDF_HOST_DEVICE typename AccType<scalar_t>::type grad_channel_term(
    const scalar_t* go, const Strides4& gos,
    const scalar_t* x, const Strides4& xs,
    const scalar_t* sf, const Strides4& ss,
    const Geometry& g, int64_t b, int64_t c, int64_t i, int64_t j, int64_t y, int64_t xo) {
  using acc_t = typename AccType<scalar_t>::type;
  const int64_t iy = g.input_coord(y, i), ix = g.input_coord(xo, j);
  if (iy < 0 || iy >= g.H || ix < 0 || ix >= g.W) return acc_t(0);
  return widen(go[gos.offset(b, c, y, xo)]) * widen(x[xs.offset(b, c, iy, ix)]) *
      dcombine_da<M>(widen(sf[ss.offset(b, g.sf_channel(c, i, j), y, xo)]));
}

}  // namespace ddf
