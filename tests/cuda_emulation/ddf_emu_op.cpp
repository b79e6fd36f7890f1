// Test-only: the CUDA kernels, run by the host emulator, as the ops ddf_emu::ddf and
// ddf_emu::ddf_backward on CPU tensors. Built by CMake (libddf_cuda_emulation_op.so), never
// shipped. tests/conftest.py routes ddf::ddf's CPU kernel here for the "cuda_emulated"
// device of the pytest suite, so the reference comparisons, gradcheck, fuzzing and
// determinism tests run on the CUDA kernel source and its host glue (ddf_cuda_ops.h).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>  // ddf_cuda_ops.h's, before the emulator poisons inline assembly
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

}  // namespace

TORCH_LIBRARY(ddf_emu, m) {
  m.def(ddf::kDdfSchema);
  m.def(ddf::kDdfBackwardSchema);
}

TORCH_LIBRARY_IMPL(ddf_emu, CPU, m) {
  m.impl("ddf", &ddf::cuda::ddf_forward<EmulatorBackend>);
  m.impl("ddf_backward", &ddf::cuda::ddf_backward<EmulatorBackend>);
}
