// What the CPU and CUDA kernels share around their loops: the accumulation type of each
// dtype, and the dispatch from (dtype, combine) at run time to a kernel template.
#pragma once

#include <ATen/Dispatch.h>

#include <type_traits>

#include "ddf_geometry.h"

namespace ddf {

// float32, float16 and bfloat16 accumulate in float32; float64 in float64.
template <typename scalar_t>
struct AccType {
  using type = float;
};
template <>
struct AccType<double> {
  using type = double;
};

// Calls f(scalar_t{}, std::integral_constant<Combine, M>{}) for the dtype and combine.
template <typename F>
void dispatch_dtype_and_combine(at::ScalarType dtype, Combine combine, F&& f) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "ddf", [&] {
    if (combine == Combine::Mul) {
      f(scalar_t(), std::integral_constant<Combine, Combine::Mul>());
    } else {
      f(scalar_t(), std::integral_constant<Combine, Combine::Add>());
    }
  });
}

}  // namespace ddf
