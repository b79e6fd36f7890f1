// The elementwise CPU kernels: every result element computed on its own by the element
// functions of ../../ddf_elementwise.h (the ones the generic CUDA kernels run), which visit
// only the taps inside the image. They need no buffer at all.
//
// They serve two cases the band layouts of the row kernels (../rows/) cannot:
//  - geometries whose band buffers would be large next to the tensors (a huge stride or
//    dilation; the plan picks this family for them): memory stays that of the tensors;
//  - a task of the row kernels whose results came out non-finite. The row loops also
//    multiply the zeros that stand for pixels outside the image (0 * inf = NaN), so a
//    non-finite result may be an artefact; the task is recomputed here, where a non-finite
//    value reaches exactly the results that depend on it, as in conv2d. (A finite row
//    result had only finite terms, so the extra zero terms changed nothing.)
//
// Each element is a fixed-order sum, so results do not depend on the threads or on the
// operands' layout.
#pragma once

#include <ATen/Parallel.h>

#include <cstdint>

#include <ATen/core/Tensor.h>

#include "../../ddf_checks.h"
#include "../../ddf_elementwise.h"
#include "../operands.h"
#include "../plan.h"

namespace ddf {
namespace cpu {
namespace elementwise {

// out[b, c, y, :] for c in [c0, c1), y in [y0, y1).
template <Combine M, typename scalar_t>
void forward_rows(const Operands<scalar_t>& o, scalar_t* out, const Strides4& os, const Geometry& g, int64_t b,
                    int64_t c0, int64_t c1, int64_t y0, int64_t y1) {
  for (int64_t c = c0; c < c1; ++c)
    for (int64_t y = y0; y < y1; ++y)
      for (int64_t x = 0; x < g.Wo; ++x)
        out[os.offset(b, c, y, x)] =
            narrow<scalar_t>(forward_element<M>(o.x, o.xs, o.cf, o.cs, o.sf, o.ss, g, b, c, y, x));
}

// The whole forward, for the geometries the plan gives this family (parallel over rows).
template <Combine M, typename scalar_t>
void forward_all(const Operands<scalar_t>& o, scalar_t* out, const Strides4& os, const Geometry& g) {
  at::parallel_for(0, g.B * g.C * g.Ho, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t y = r % g.Ho, c = r / g.Ho % g.C, b = r / (g.Ho * g.C);
      elementwise::forward_rows<M>(o, out, os, g, b, c, c + 1, y, y + 1);
    }
  });
}

// The family's face (ForwardPath::Elementwise): any strides, as they are.
template <Combine M, typename scalar_t>
void forward(const ForwardPlan&, const at::Tensor& input, const at::Tensor& cf, const at::Tensor& sf, at::Tensor& out,
             const Geometry& g) {
  Operands<scalar_t> ops;
  ops.x = input.const_data_ptr<scalar_t>(), ops.xs = strides_of(input);
  ops.cf = cf.const_data_ptr<scalar_t>(), ops.cs = strides_of(cf);
  ops.sf = sf.const_data_ptr<scalar_t>(), ops.ss = strides_of(sf);
  forward_all<M>(ops, out.mutable_data_ptr<scalar_t>(), strides_of(out), g);
}

}  // namespace elementwise
}  // namespace cpu
}  // namespace ddf
