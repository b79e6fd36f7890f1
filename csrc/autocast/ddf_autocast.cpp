// Autocast: under torch.autocast, ddf runs in the autocast dtype (float16/bfloat16), the
// policy convolutions follow on both CUDA and CPU. Mixed-dtype inputs are cast to that
// dtype; outside autocast, mixed dtypes are an error (see ddf_checks.cpp).
#include <ATen/autocast_mode.h>
#include <torch/library.h>

#include "../ddf_op_calls.h"

namespace ddf {
namespace {

template <c10::DispatchKey autocast_key, c10::DeviceType device_type>
at::Tensor ddf_autocast(
    const at::Tensor& input,
    const at::Tensor& channel_filter,
    const at::Tensor& spatial_filter,
    int64_t stride,
    int64_t dilation,
    c10::string_view combine) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(autocast_key);
  const at::ScalarType dtype = at::autocast::get_lower_precision_fp_from_device_type(device_type);
  return call_ddf(
      at::autocast::cached_cast(dtype, input, device_type),
      at::autocast::cached_cast(dtype, channel_filter, device_type),
      at::autocast::cached_cast(dtype, spatial_filter, device_type), stride, dilation, combine);
}

}  // namespace

TORCH_LIBRARY_IMPL(ddf, Autocast, m) {
  m.impl("ddf", &ddf_autocast<c10::DispatchKey::Autocast, c10::DeviceType::CUDA>);
}

TORCH_LIBRARY_IMPL(ddf, AutocastCPU, m) {
  m.impl("ddf", &ddf_autocast<c10::DispatchKey::AutocastCPU, c10::DeviceType::CPU>);
}

}  // namespace ddf
