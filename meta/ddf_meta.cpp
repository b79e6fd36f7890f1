// Meta kernels: the output shapes and strides of the ddf ops, written with SymInts so that
// fake tensors with dynamic shapes (torch.compile(dynamic=True), torch.export) trace
// without specializing any size. They run the same argument checks as the device kernels.
#include <torch/library.h>

#include "../csrc/ddf_checks.h"

namespace ddf {
namespace {

at::Tensor ddf_meta(
    const at::Tensor& input,
    const at::Tensor& channel_filter,
    const at::Tensor& spatial_filter,
    int64_t stride,
    int64_t dilation,
    c10::string_view combine) {
  const SymSizes s = check_ddf_args(input, channel_filter, spatial_filter, stride, dilation, combine);
  return ddf_empty_output(s, input);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ddf_backward_meta(
    const at::Tensor& grad_output,
    const at::Tensor& input,
    const at::Tensor& channel_filter,
    const at::Tensor& spatial_filter,
    int64_t stride,
    int64_t dilation,
    c10::string_view combine,
    std::array<bool, 3> output_mask) {
  const SymSizes s =
      check_ddf_backward_args(grad_output, input, channel_filter, spatial_filter, stride, dilation, combine);
  return ddf_empty_grads(s, input, channel_filter, spatial_filter, output_mask);
}

}  // namespace

TORCH_LIBRARY_IMPL(ddf, Meta, m) {
  m.impl("ddf", &ddf_meta);
  m.impl("ddf_backward", &ddf_backward_meta);
}

}  // namespace ddf
