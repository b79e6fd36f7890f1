// The accumulation type of each stored dtype, and how a kernel converts between the two.
// Torch-free, so that the CUDA kernels (csrc/cuda/ddf_cuda_kernels.cuh) can include it both
// under nvcc and under the host emulator (tests/cuda_emulation).
#pragma once

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

// widen: a stored value to its accumulation type; narrow: back, rounding to nearest even.
// Plain casts serve float, double and c10's Half/BFloat16 (the CPU kernels). The CUDA
// kernels store __half / __nv_bfloat16, whose implicit conversions torch's nvcc flags turn
// off (__CUDA_NO_HALF_CONVERSIONS__), so ddf_cuda_kernels.cuh specializes this with the
// conversion intrinsics.
template <typename scalar_t>
struct ScalarConvert {
  using acc_t = typename AccType<scalar_t>::type;
  static DDF_HOST_DEVICE acc_t widen(scalar_t v) { return static_cast<acc_t>(v); }
  static DDF_HOST_DEVICE scalar_t narrow(acc_t v) { return static_cast<scalar_t>(v); }
};

template <typename scalar_t>
DDF_HOST_DEVICE typename AccType<scalar_t>::type widen(scalar_t v) {
  return ScalarConvert<scalar_t>::widen(v);
}

template <typename scalar_t>
DDF_HOST_DEVICE scalar_t narrow(typename AccType<scalar_t>::type v) {
  return ScalarConvert<scalar_t>::narrow(v);
}

}  // namespace ddf
