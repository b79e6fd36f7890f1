// The host side of the CUDA ops: argument checks, allocation, device guard, dtype dispatch,
// then the launches of ddf_cuda_kernels.cuh.
//
// ddf_forward<Backend> and ddf_backward<Backend> are the op kernels; the Backend says where
// the CUDA kernels run:
//   ddf_cuda.cu                         CudaBackend: CUDAGuard, the current stream, <<<>>>
//   tests/cuda_emulation/ddf_emu_op.cpp the host emulator (a test-only op namespace)
// so the emulated tests exercise this glue (layouts, masks, empty results) as well.
// A Backend is default-constructible and has:
//   grid_limits()  -> cuda::GridLimits
//   guard(tensor)  -> an object that holds the tensor's device current while it lives
//   launcher()     -> a callable launch(kernel, grid, block, shared_bytes, args...)
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/string_view.h>

#include <array>
#include <tuple>
#include <vector>

#include "../ddf_checks.h"
#include "../ddf_dtype_dispatch.h"
#include "ddf_cuda_launch.cuh"

namespace ddf {
namespace cuda {

// The type the kernels store for each ATen dtype: the CUDA half types for c10's.
template <typename T>
struct DeviceScalar {
  using type = T;
};
template <>
struct DeviceScalar<c10::Half> {
  using type = __half;
};
template <>
struct DeviceScalar<c10::BFloat16> {
  using type = __nv_bfloat16;
};

template <typename device_t>
const device_t* data_of(const at::Tensor& t) {
  return static_cast<const device_t*>(t.const_data_ptr());
}

// Null for a gradient that was not asked for.
template <typename device_t>
device_t* mutable_data_of(const at::Tensor& t) {
  return t.defined() ? static_cast<device_t*>(t.mutable_data_ptr()) : nullptr;
}

inline Strides4 strides_or_zero(const at::Tensor& t) {
  return t.defined() ? strides_of(t) : Strides4{0, 0, 0, 0};
}

template <typename Backend>
at::Tensor ddf_forward(
    const at::Tensor& input,
    const at::Tensor& channel_filter,
    const at::Tensor& spatial_filter,
    int64_t stride,
    int64_t dilation,
    c10::string_view combine) {
  const Backend backend{};
  const SymSizes sizes = check_ddf_args(input, channel_filter, spatial_filter, stride, dilation, combine);
  const Geometry g = concrete_geometry(sizes, stride, dilation);
  const auto device_guard = backend.guard(input);
  at::Tensor out = ddf_empty_output(sizes, input);
  dispatch_dtype_and_combine(input.scalar_type(), parse_combine(combine), [&](auto tag, auto m) {
    using scalar_t = typename DeviceScalar<decltype(tag)>::type;
    static_assert(sizeof(scalar_t) == sizeof(decltype(tag)));
    launch_forward<scalar_t, decltype(m)::value>(
        backend.launcher(), backend.grid_limits(), data_of<scalar_t>(input), strides_of(input),
        data_of<scalar_t>(channel_filter), strides_of(channel_filter), data_of<scalar_t>(spatial_filter),
        strides_of(spatial_filter), mutable_data_of<scalar_t>(out), strides_of(out), g);
  });
  return out;
}

template <typename Backend>
std::tuple<at::Tensor, at::Tensor, at::Tensor> ddf_backward(
    const at::Tensor& grad_output,
    const at::Tensor& input,
    const at::Tensor& channel_filter,
    const at::Tensor& spatial_filter,
    int64_t stride,
    int64_t dilation,
    c10::string_view combine,
    std::array<bool, 3> output_mask) {
  const Backend backend{};
  const SymSizes sizes =
      check_ddf_backward_args(grad_output, input, channel_filter, spatial_filter, stride, dilation, combine);
  const Geometry g = concrete_geometry(sizes, stride, dilation);
  const auto device_guard = backend.guard(input);
  auto [grad_in, grad_cf, grad_sf] = ddf_empty_grads(sizes, input, channel_filter, spatial_filter, output_mask);
  const bool tiled_dtype = input.scalar_type() == at::kFloat || input.scalar_type() == at::kHalf ||
                           input.scalar_type() == at::kBFloat16;
  // grad_output in the input's layout (ddf_cuda_paths.h says when and why).
  at::Tensor go = grad_output;
  switch (grad_output_copy(g, strides_of(grad_output), strides_of(input), tiled_dtype)) {
    case GradOutputCopy::Nchw: go = grad_output.contiguous(); break;
    case GradOutputCopy::ChannelsLast: go = grad_output.contiguous(at::MemoryFormat::ChannelsLast); break;
    case GradOutputCopy::None: break;
  }
  // Float scratch for the tiled filter-gradient kernels' partial sums. Freed when this
  // returns: the caching allocator keeps a block from reuse until the stream's work on it
  // is ordered before the next user (same stream), and the emulator runs synchronously.
  std::vector<at::Tensor> scratch;
  auto workspace = [&](int64_t floats) {
    scratch.push_back(at::empty({floats}, input.options().dtype(at::kFloat)));
    return scratch.back().mutable_data_ptr<float>();
  };
  dispatch_dtype_and_combine(input.scalar_type(), parse_combine(combine), [&](auto tag, auto m) {
    using scalar_t = typename DeviceScalar<decltype(tag)>::type;
    static_assert(sizeof(scalar_t) == sizeof(decltype(tag)));
    launch_backward<scalar_t, decltype(m)::value>(
        backend.launcher(), workspace, backend.grid_limits(), data_of<scalar_t>(go), strides_of(go),
        data_of<scalar_t>(input), strides_of(input), data_of<scalar_t>(channel_filter), strides_of(channel_filter),
        data_of<scalar_t>(spatial_filter), strides_of(spatial_filter), mutable_data_of<scalar_t>(grad_in),
        strides_or_zero(grad_in), mutable_data_of<scalar_t>(grad_cf), strides_or_zero(grad_cf),
        mutable_data_of<scalar_t>(grad_sf), strides_or_zero(grad_sf), g);
  });
  return {grad_in, grad_cf, grad_sf};
}

}  // namespace cuda
}  // namespace ddf
