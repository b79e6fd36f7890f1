// Dispatch on dtype: from (dtype, combine) at run time to a kernel template, for the CPU
// kernels and the CUDA host glue. (Calls of the ops through the dispatcher are in
// ddf_op_calls.h.)
#pragma once

#include <ATen/Dispatch.h>

#include <type_traits>

#include "ddf_geometry.h"
#include "ddf_scalar.h"

namespace ddf {

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
