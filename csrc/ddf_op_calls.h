// Calls of the ddf ops through the dispatcher, for kernels that re-enter the op (autograd's
// double backward, autocast) and for C++ users. Going through the dispatcher means every
// dispatch key (autograd, autocast, the device) applies to the nested call.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/string_view.h>

#include <array>
#include <optional>
#include <tuple>

namespace ddf {

inline at::Tensor call_ddf(
    const at::Tensor& input,
    const at::Tensor& channel_filter,
    const at::Tensor& spatial_filter,
    int64_t stride,
    int64_t dilation,
    c10::string_view combine) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("ddf::ddf", "")
                       .typed<at::Tensor(
                           const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, int64_t,
                           c10::string_view)>();
  return op.call(input, channel_filter, spatial_filter, stride, dilation, combine);
}

inline std::tuple<at::Tensor, at::Tensor, at::Tensor> call_ddf_backward(
    const at::Tensor& grad_output,
    const at::Tensor& input,
    const at::Tensor& channel_filter,
    const at::Tensor& spatial_filter,
    int64_t stride,
    int64_t dilation,
    c10::string_view combine,
    std::array<bool, 3> output_mask) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("ddf::ddf_backward", "")
                       .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                           const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t,
                           int64_t, c10::string_view, std::array<bool, 3>)>();
  return op.call(grad_output, input, channel_filter, spatial_filter, stride, dilation, combine, output_mask);
}

// The double backward (csrc/autograd/ddf_derivatives.cpp), for the C++ autograd.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> call_ddf_backward_backward(
    const at::Tensor& grad_output,
    const at::Tensor& input,
    const at::Tensor& channel_filter,
    const at::Tensor& spatial_filter,
    const std::optional<at::Tensor>& grad_grad_input,
    const std::optional<at::Tensor>& grad_grad_channel_filter,
    const std::optional<at::Tensor>& grad_grad_spatial_filter,
    int64_t stride,
    int64_t dilation,
    c10::string_view combine,
    std::array<bool, 4> output_mask) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("ddf::_ddf_backward_backward", "")
                       .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
                           const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                           const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
                           const std::optional<at::Tensor>&, int64_t, int64_t, c10::string_view,
                           std::array<bool, 4>)>();
  return op.call(grad_output, input, channel_filter, spatial_filter, grad_grad_input, grad_grad_channel_filter,
                 grad_grad_spatial_filter, stride, dilation, combine, output_mask);
}

}  // namespace ddf
