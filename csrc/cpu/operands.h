// The operands of one call of the CPU kernels, as pointers and element strides (null where
// not given or not wanted): what the kernel families' faces take besides the plan.
#pragma once

#include "../ddf_geometry.h"

namespace ddf {
namespace cpu {

// The inputs: input, channel and spatial filter, and grad_output (backward).
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

}  // namespace cpu
}  // namespace ddf
