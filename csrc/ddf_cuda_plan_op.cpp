// torch.ops.ddf._cuda_tiled_plan and _cuda_nhwc_plan: the launch plans of the tiled CUDA
// kernels for one call, as the library computes them (cuda/ddf_cuda_tiled_plan.h,
// cuda/ddf_cuda_nhwc_plan.h). Compiled into every build,
// CPU-only too: the plan is torch-free host code, and the static GPU model
// (tools/cuda_static/gpu_model.py) reads it from here instead of keeping a Python copy
// that could drift from the C++.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_strided.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "cuda/ddf_cuda_grid_limits.h"
#include "cuda/ddf_cuda_nhwc_plan.h"
#include "cuda/ddf_cuda_paths.h"
#include "cuda/ddf_cuda_tiled_plan.h"
#include "ddf_checks.h"
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

// [use, vector, channel_lanes, block_channels, tile_w, tile_h, tiles, channel_blocks,
// shared_bytes, head_blocks, head_lanes]; just [0] when the call does not take the
// channels_last kernel (forward, grad_input or filter_grads). The plan of a call whose tensors
// are contiguous channels_last and 16-byte aligned (what torch allocates), in a dtype of
// element_bytes (4 or 2), with the launcher's default grid limits.
std::vector<int64_t> cuda_nhwc_plan(int64_t B, int64_t C, int64_t H, int64_t W, int64_t k, int64_t G, int64_t stride,
                                    int64_t dilation, int64_t element_bytes, c10::string_view kernel) {
  using ddf::cuda::nhwc::NhwcKernel;
  TORCH_CHECK(kernel == "forward" || kernel == "grad_input" || kernel == "filter_grads",
              "_cuda_nhwc_plan: kernel must be forward, grad_input or filter_grads, got ", kernel);
  TORCH_CHECK(B >= 0 && C >= 0 && H >= 0 && W >= 0, "_cuda_nhwc_plan: negative size");
  TORCH_CHECK(k >= 1 && k % 2 == 1, "_cuda_nhwc_plan: k must be odd and positive, got ", k);
  TORCH_CHECK(G >= 1 && C % G == 0, "_cuda_nhwc_plan: G must be positive and divide C, got C=", C, " G=", G);
  TORCH_CHECK(stride >= 1 && dilation >= 1, "_cuda_nhwc_plan: stride and dilation must be positive");
  TORCH_CHECK(element_bytes == 4 || element_bytes == 2, "_cuda_nhwc_plan: element_bytes must be 4 or 2, got ",
              element_bytes);
  const int64_t Ho = ddf::output_size(H, stride), Wo = ddf::output_size(W, stride), kk = k * k;
  const ddf::Geometry g{B, C, H, W, k, G, Ho, Wo, stride, dilation};
  const ddf::Strides4 xs{H * W * C, 1, W * C, C}, os{Ho * Wo * C, 1, Wo * C, C},
      ss{Ho * Wo * G * kk, 1, Wo * G * kk, G * kk};
  const NhwcKernel which = kernel == "forward" ? NhwcKernel::Forward
      : kernel == "grad_input"                 ? NhwcKernel::GradInput
                                               : NhwcKernel::FilterGrads;
  // (The taps' tensor and the pixels' one: see ddf_cuda_nhwc_plan.h.)
  const bool transposed = which == NhwcKernel::GradInput;
  const ddf::cuda::GridLimits limits;
  const auto p = ddf::cuda::nhwc::plan_nhwc(which, g, transposed ? os : xs, ss, transposed ? xs : os,
                                            /*supported_dtype=*/true, int(element_bytes), /*vector_aligned=*/true,
                                            limits.x, limits.y);
  if (!p.use) return {0};
  return {1, p.vector, p.g.channel_lanes, p.g.block_channels, p.g.tile_w, p.g.tile_h, p.grid_x, p.grid_y,
          static_cast<int64_t>(p.shared_bytes), p.g.head_blocks, p.g.head_lanes, p.g.steps_w};
}

// torch.ops.ddf._cuda_plan: which CUDA kernels a call takes (ddf_cuda_paths.h), through the
// op's own checks, for tensors on any device (no GPU needed): the forward's path ("tiled",
// "tiled_nhwc vector=4 lanes=16 tile=8x8 step=1", "generic", "none"), or the backward's when
// grad_output is given ("grad_input=tiled filter_grads=generic"). Results are laid out as the
// CUDA op lays them out (ddf_checks.h); their data pointers as torch allocates them (aligned).
std::string cuda_plan(const at::Tensor& input, const at::Tensor& channel_filter, const at::Tensor& spatial_filter,
                      int64_t stride, int64_t dilation, c10::string_view combine,
                      const std::optional<at::Tensor>& grad_output, std::array<bool, 3> output_mask) {
  using namespace ddf::cuda;
  const ddf::SymSizes sizes =
      grad_output.has_value()
          ? ddf::check_ddf_backward_args(*grad_output, input, channel_filter, spatial_filter, stride, dilation, combine)
          : ddf::check_ddf_args(input, channel_filter, spatial_filter, stride, dilation, combine);
  const ddf::Geometry g = ddf::concrete_geometry(sizes, stride, dilation);
  const auto dtype = input.scalar_type();
  const bool tiled_dtype = dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16;
  auto aligned = [](const at::Tensor& t) {
    return reinterpret_cast<std::uintptr_t>(t.const_data_ptr()) % nhwc::kVectorBytes == 0;
  };
  CallFacts facts{tiled_dtype, int(input.element_size()), aligned(input)};
  const GridLimits limits;
  // The results' strides, from a data-less copy of the input.
  const at::Tensor like = at::empty_strided(input.sizes(), input.strides(), input.options().device(at::kMeta));
  if (!grad_output.has_value()) {
    const ForwardChoice c = choose_forward(g, ddf::strides_of(input), ddf::strides_of(spatial_filter),
                                           ddf::strides_of(ddf::ddf_empty_output(sizes, like)), facts, limits);
    std::string out = path_name(c.path);
    if (c.path == Path::TiledNhwc) {
      out += " vector=" + std::to_string(c.nhwc.vector) + " lanes=" + std::to_string(c.nhwc.g.channel_lanes) +
             " tile=" + std::to_string(c.nhwc.g.tile_w) + "x" + std::to_string(c.nhwc.g.tile_h) +
             " step=" + std::to_string(nhwc::pixels_per_step(int(g.k), int(g.stride), c.nhwc.vector));
    }
    return out;
  }
  // grad_output as the backward takes it (grad_output_copy); grad_input laid out like the input.
  const GradOutputCopy copy = grad_output_copy(g, ddf::strides_of(*grad_output), ddf::strides_of(input), tiled_dtype);
  const at::Tensor go = copy == GradOutputCopy::None ? *grad_output
      : at::empty(grad_output->sizes(), grad_output->options().device(at::kMeta).memory_format(
            copy == GradOutputCopy::Nchw ? at::MemoryFormat::Contiguous : at::MemoryFormat::ChannelsLast));
  const ddf::Strides4 gis = ddf::strides_of(ddf::empty_like_layout(input.sym_sizes(), like));
  facts.vector_aligned = aligned(input) && (copy != GradOutputCopy::None || aligned(*grad_output));
  const int64_t kk = g.taps();
  const BackwardChoice c = choose_backward(
      g, ddf::strides_of(go), ddf::strides_of(input), ddf::strides_of(spatial_filter), gis,
      output_mask[0] && g.B * g.C * g.H * g.W > 0,
      (output_mask[1] && g.B * g.C * kk > 0) || (output_mask[2] && g.B * g.G * kk * g.Ho * g.Wo > 0), facts, limits);
  return std::string("grad_input=") + path_name(c.grad_input) + " filter_grads=" + path_name(c.filter_grads) +
         (copy == GradOutputCopy::Nchw ? " grad_output_to_nchw"
                                       : copy == GradOutputCopy::ChannelsLast ? " grad_output_to_channels_last" : "");
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

// [kWaveSms, blocks_per_sm(k, vector), kGradBlocksPerSm]: the blocks per SM the channels_last
// kernels' launch bounds ask for (the forward's and grad_input's with `vector` channels per
// thread: the waves their plans fill; the filter gradients'). tests/test_cuda_resources.py
// checks the blocks per SM against the cubins.
std::vector<int64_t> cuda_nhwc_wave(int64_t k, int64_t vector) {
  using namespace ddf::cuda::nhwc;
  TORCH_CHECK(k == 3 || k == 5 || k == 7, "_cuda_nhwc_wave: k must be 3, 5 or 7, got ", k);
  TORCH_CHECK(vector == 1 || vector == 4 || vector == 8, "_cuda_nhwc_wave: vector must be 1, 4 or 8, got ", vector);
  return {kWaveSms, blocks_per_sm(int(k), int(vector)), kGradBlocksPerSm};
}

// [forward, grad_input, filter_grads]: each tiled kernel's halo slots (halo_slots()), for
// the GPU model.
std::vector<int64_t> cuda_tiled_halo_slots() {
  using namespace ddf::cuda::tiled;
  return {halo_slots(Kernel::Forward), halo_slots(Kernel::GradInput), halo_slots(Kernel::FilterGrads)};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(ddf, m) {
  m.def(
      "_cuda_plan(Tensor input, Tensor channel_filter, Tensor spatial_filter, int stride=1, int dilation=1, "
      "str combine=\"mul\", Tensor? grad_output=None, bool[3] output_mask=[True, True, True]) -> str",
      &cuda_plan);
  m.def(
      "_cuda_nhwc_plan(int B, int C, int H, int W, int k, int G, int stride, int dilation, int element_bytes, "
      "str kernel=\"forward\") -> int[]",
      &cuda_nhwc_plan);
  m.def("_cuda_nhwc_wave(int k, int vector) -> int[]", &cuda_nhwc_wave);
  m.def("_cuda_tiled_halo_slots() -> int[]", &cuda_tiled_halo_slots);
  m.def("_cuda_tiled_filter_grads_wave(int k) -> int[]", &cuda_tiled_filter_grads_wave);
  m.def("_cuda_tiled_shared_budget() -> int[]", &cuda_tiled_shared_budget);
  m.def("_cuda_tiled_plan(str kernel, int B, int C, int H, int W, int k, int G, int stride, int dilation) -> int[]",
        &cuda_tiled_plan);
}
