// Test-only: the CUDA kernels, run by the host emulator, as the ops ddf_emu::ddf and
// ddf_emu::ddf_backward on CPU tensors. Built by CMake (libddf_cuda_emulation_op.so), never
// shipped. tests/conftest.py routes ddf::ddf's CPU kernel here for the "cuda_emulated"
// device of the pytest suite, so the reference comparisons, gradcheck, fuzzing and
// determinism tests run on the CUDA kernel source and its host glue (ddf_cuda_ops.h).
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "ddf_checks.h"
#include "ddf_dtype_dispatch.h"
#include "ddf_schema.h"
// The emulator after every other header, then the CUDA code.
#include "cuda_emulation.h"
#include "cuda/ddf_cuda_ops.h"

namespace {

struct EmulatorBackend {
  ddf::cuda::GridLimits grid_limits() const { return {}; }
  int guard(const at::Tensor&) const { return 0; }  // one emulated device: nothing to switch
  cuda_emu::Launcher launcher() const { return {}; }
};

at::Tensor ddf_emulated(
    const at::Tensor& input,
    const at::Tensor& channel_filter,
    const at::Tensor& spatial_filter,
    int64_t stride,
    int64_t dilation,
    c10::string_view combine) {
  return ddf::cuda::ddf_forward(EmulatorBackend(), input, channel_filter, spatial_filter, stride, dilation, combine);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ddf_backward_emulated(
    const at::Tensor& grad_output,
    const at::Tensor& input,
    const at::Tensor& channel_filter,
    const at::Tensor& spatial_filter,
    int64_t stride,
    int64_t dilation,
    c10::string_view combine,
    std::array<bool, 3> output_mask) {
  return ddf::cuda::ddf_backward(
      EmulatorBackend(), grad_output, input, channel_filter, spatial_filter, stride, dilation, combine, output_mask);
}

}  // namespace

TORCH_LIBRARY(ddf_emu, m) {
  m.def(ddf::kDdfSchema);
  m.def(ddf::kDdfBackwardSchema);
}

TORCH_LIBRARY_IMPL(ddf_emu, CPU, m) {
  m.impl("ddf", &ddf_emulated);
  m.impl("ddf_backward", &ddf_backward_emulated);
}
