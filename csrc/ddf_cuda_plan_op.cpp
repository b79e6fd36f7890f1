// torch.ops.ddf._cuda_tiled_plan: the launch plan of the tiled CUDA kernels for one call,
// as the library computes it (cuda/ddf_cuda_tiled_plan.h). Compiled into every build,
// CPU-only too: the plan is torch-free host code, and the static GPU model
// (tools/cuda_static/gpu_model.py) reads it from here instead of keeping a Python copy
// that could drift from the C++.
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <cstdint>
#include <vector>

#include "cuda/ddf_cuda_grid_limits.h"
#include "cuda/ddf_cuda_tiled_plan.h"
#include "ddf_geometry.h"

namespace {

// [use, tx, ty, tz, lane_channels, rows, halo_h, halo_w, tiles, splits, split_channels,
//  shared_bytes]; just [0] when the call takes the generic kernels. The plan of a contiguous
// NCHW call in a supported dtype with the launcher's default grid limits, i.e. what a GPU
// runs for such a call.
std::vector<int64_t> cuda_tiled_plan(c10::string_view kernel, int64_t B, int64_t C, int64_t H, int64_t W, int64_t k,
                                     int64_t G, int64_t stride, int64_t dilation) {
  using ddf::cuda::tiled::Kernel;
  TORCH_CHECK(kernel == "forward" || kernel == "grad_input" || kernel == "filter_grads",
              "_cuda_tiled_plan: kernel must be forward, grad_input or filter_grads, got ", kernel);
  // The plan assumes the op's argument checks passed (ddf_checks.cpp); these are the ones it
  // divides or indexes by.
  TORCH_CHECK(B >= 0 && C >= 0 && H >= 0 && W >= 0, "_cuda_tiled_plan: negative size");
  TORCH_CHECK(k >= 1 && k % 2 == 1, "_cuda_tiled_plan: k must be odd and positive, got ", k);
  TORCH_CHECK(G >= 1 && C % G == 0, "_cuda_tiled_plan: G must be positive and divide C, got C=", C, " G=", G);
  TORCH_CHECK(stride >= 1 && dilation >= 1, "_cuda_tiled_plan: stride and dilation must be positive");
  const Kernel which = kernel == "forward" ? Kernel::Forward : kernel == "grad_input" ? Kernel::GradInput
                                                                                      : Kernel::FilterGrads;
  const ddf::Geometry g{B, C, H, W, k, G, ddf::output_size(H, stride), ddf::output_size(W, stride), stride, dilation};
  const ddf::cuda::GridLimits limits;
  const auto p = ddf::cuda::tiled::plan_tiled(which, g, /*contiguous=*/true, /*supported_dtype=*/true, limits.x,
                                              limits.y);
  if (!p.use) return {0};
  return {1, p.block_x, p.block_y, p.block_z, p.g.lane_channels, p.g.rows_per_thread, p.g.halo_h, p.g.halo_w,
          p.grid_x, p.g.splits, p.g.split_channels, static_cast<int64_t>(p.shared_bytes)};
}

// [kMaxSharedBytes, kStaticSharedBytes, kMaxDynamicSharedBytes]: the tiled kernels' shared
// memory budget per block (static plus dynamic), the static bytes the plan assumes each tiled
// kernel declares, and the most dynamic memory a plan may request.
// tests/test_cuda_resources.py checks them against the static bytes in the cubins.
std::vector<int64_t> cuda_tiled_shared_budget() {
  using namespace ddf::cuda::tiled;
  return {int64_t(kMaxSharedBytes), int64_t(kStaticSharedBytes), int64_t(kMaxDynamicSharedBytes)};
}

// [kWaveSms, filter_grads_blocks_per_sm(k)]: the wave the filter-gradient plan splits for.
// tests/test_cuda_resources.py checks the blocks per SM against the cubins' registers.
std::vector<int64_t> cuda_tiled_filter_grads_wave(int64_t k) {
  using namespace ddf::cuda::tiled;
  TORCH_CHECK(k == 3 || k == 5 || k == 7, "_cuda_tiled_filter_grads_wave: k must be 3, 5 or 7, got ", k);
  return {kWaveSms, filter_grads_blocks_per_sm(int(k))};
}

// [forward, grad_input, filter_grads]: each tiled kernel's halo slots (halo_slots()), for
// the GPU model.
std::vector<int64_t> cuda_tiled_halo_slots() {
  using namespace ddf::cuda::tiled;
  return {halo_slots(Kernel::Forward), halo_slots(Kernel::GradInput), halo_slots(Kernel::FilterGrads)};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(ddf, m) {
  m.def("_cuda_tiled_halo_slots() -> int[]", &cuda_tiled_halo_slots);
  m.def("_cuda_tiled_filter_grads_wave(int k) -> int[]", &cuda_tiled_filter_grads_wave);
  m.def("_cuda_tiled_shared_budget() -> int[]", &cuda_tiled_shared_budget);
  m.def("_cuda_tiled_plan(str kernel, int B, int C, int H, int W, int k, int G, int stride, int dilation) -> int[]",
        &cuda_tiled_plan);
}
