// The elementwise CPU kernels of the backward (see forward.h).
#pragma once

#include <ATen/Parallel.h>

#include <cstdint>

#include <ATen/core/Tensor.h>

#include "../../ddf_checks.h"
#include "../../ddf_elementwise.h"
#include "../../ddf_scalar.h"
#include "../operands.h"
#include "../plan.h"

namespace ddf {
namespace cpu {
namespace elementwise {

// grad_input[b, c, iy, :] for c in [c0, c1), iy in [iy0, iy1).
template <Combine M, typename scalar_t>
void grad_input_rows(const Operands<scalar_t>& o, scalar_t* gi, const Strides4& gis, const Geometry& g, int64_t b,
                       int64_t c0, int64_t c1, int64_t iy0, int64_t iy1) {
  for (int64_t c = c0; c < c1; ++c)
    for (int64_t iy = iy0; iy < iy1; ++iy)
      for (int64_t ix = 0; ix < g.W; ++ix)
        gi[gis.offset(b, c, iy, ix)] =
            narrow<scalar_t>(grad_input_element<M>(o.go, o.gos, o.cf, o.cs, o.sf, o.ss, g, b, c, iy, ix));
}

// grad_spatial_filter[b, h*k*k + tap, y, :] for every tap of head h, y in [y0, y1).
template <Combine M, typename scalar_t>
void grad_spatial_rows(const Operands<scalar_t>& o, scalar_t* gs, const Strides4& gss, const Geometry& g, int64_t b,
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
void grad_channel(const Operands<scalar_t>& o, scalar_t* gc, const Strides4& gcs, const Geometry& g, int64_t b,
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

// The whole backward, for the geometries the plan gives this family (parallel over rows).
template <Combine M, typename scalar_t>
void grad_input_all(const Operands<scalar_t>& o, scalar_t* gi, const Strides4& gis, const Geometry& g) {
  at::parallel_for(0, g.B * g.C * g.H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t iy = r % g.H, c = r / g.H % g.C, b = r / (g.H * g.C);
      elementwise::grad_input_rows<M>(o, gi, gis, g, b, c, c + 1, iy, iy + 1);
    }
  });
}

template <Combine M, typename scalar_t>
void filter_grads_all(const Operands<scalar_t>& o, scalar_t* gc, const Strides4& gcs, scalar_t* gs,
                             const Strides4& gss, const Geometry& g) {
  if (gs != nullptr) {
    at::parallel_for(0, g.B * g.G * g.Ho, 1, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t y = r % g.Ho, h = r / g.Ho % g.G, b = r / (g.Ho * g.G);
        elementwise::grad_spatial_rows<M>(o, gs, gss, g, b, h, y, y + 1);
      }
    });
  }
  if (gc != nullptr) {
    at::parallel_for(0, g.B * g.C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t bc = begin; bc < end; ++bc) elementwise::grad_channel<M>(o, gc, gcs, g, bc / g.C, bc % g.C);
    });
  }
}

// The family's face (BackwardPath::Elementwise): any strides, as they are. An undefined
// gradient is not wanted.
template <Combine M, typename scalar_t>
void backward(const BackwardPlan&, const at::Tensor& grad_output, const at::Tensor& input,
              const at::Tensor& channel_filter, const at::Tensor& spatial_filter, at::Tensor& grad_input,
              at::Tensor& grad_channel_filter, at::Tensor& grad_spatial_filter, const Geometry& g) {
  Operands<scalar_t> ops;
  ops.go = grad_output.const_data_ptr<scalar_t>(), ops.gos = strides_of(grad_output);
  ops.x = input.const_data_ptr<scalar_t>(), ops.xs = strides_of(input);
  ops.cf = channel_filter.const_data_ptr<scalar_t>(), ops.cs = strides_of(channel_filter);
  ops.sf = spatial_filter.const_data_ptr<scalar_t>(), ops.ss = strides_of(spatial_filter);
  auto ptr = [](at::Tensor& t) { return t.defined() ? t.mutable_data_ptr<scalar_t>() : nullptr; };
  auto strides = [](const at::Tensor& t) { return t.defined() ? strides_of(t) : Strides4{}; };
  if (grad_channel_filter.defined() || grad_spatial_filter.defined()) {
    filter_grads_all<M>(ops, ptr(grad_channel_filter), strides(grad_channel_filter), ptr(grad_spatial_filter),
                        strides(grad_spatial_filter), g);
  }
  if (grad_input.defined()) grad_input_all<M>(ops, ptr(grad_input), strides(grad_input), g);
}

}  // namespace elementwise
}  // namespace cpu
}  // namespace ddf
