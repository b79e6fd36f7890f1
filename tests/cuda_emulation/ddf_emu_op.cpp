// Test-only: the CUDA kernels, run by the host emulator, as the ops ddf_emu::ddf and
// ddf_emu::ddf_backward on CPU tensors. Built by CMake (libddf_cuda_emulation_op.so), never
// shipped. tests/conftest.py routes ddf::ddf's CPU kernel here for the "cuda_emulated"
// device of the pytest suite, so the reference comparisons, gradcheck, fuzzing and
// determinism tests run on the CUDA kernel source and its host glue (ddf_cuda_ops.h).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>  // ddf_cuda_ops.h's, before the emulator poisons inline assembly
#include <torch/library.h>

#include <vector>

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

// The tiled launch plan of one call (ddf_cuda_tiled_plan.h), for tests/test_gpu_model.py,
// which checks the Python mirror in benchmarks/gpu_model.py against it:
// [use, tx, ty, tz, lane_channels, rows, halo_h, halo_w, tiles, splits, split_channels, shared_bytes].
std::vector<int64_t> tiled_plan(c10::string_view kernel, int64_t B, int64_t C, int64_t H, int64_t W, int64_t k,
                                int64_t G, int64_t stride, int64_t dilation) {
  using ddf::cuda::tiled::Kernel;
  const Kernel which = kernel == "forward" ? Kernel::Forward : kernel == "grad_input" ? Kernel::GradInput
                                                                                      : Kernel::FilterGrads;
  const ddf::Geometry g{B, C, H, W, k, G, ddf::output_size(H, stride), ddf::output_size(W, stride), stride, dilation};
  const ddf::cuda::GridLimits limits;
  const auto p = ddf::cuda::tiled::plan_tiled(which, g, true, true, limits.x, limits.y);
  if (!p.use) return {0};
  return {1, p.block_x, p.block_y, p.block_z, p.g.lane_channels, p.g.rows_per_thread, p.g.halo_h, p.g.halo_w,
          p.grid_x, p.g.splits, p.g.split_channels, static_cast<int64_t>(p.shared_bytes)};
}

TORCH_LIBRARY(ddf_emu, m) {
  m.def(ddf::kDdfSchema);
  m.def(ddf::kDdfBackwardSchema);
  m.def("tiled_plan(str kernel, int B, int C, int H, int W, int k, int G, int stride, int dilation) -> int[]",
        &tiled_plan);
}

TORCH_LIBRARY_IMPL(ddf_emu, CPU, m) {
  m.impl("ddf", &ddf::cuda::ddf_forward<EmulatorBackend>);
  m.impl("ddf_backward", &ddf::cuda::ddf_backward<EmulatorBackend>);
}
