// The derivatives of ddf and ddf_backward beyond the first-order gradient (which is the
// ddf_backward op itself): the double backward and the forward-mode tangents. Written once,
// here, as sums of ddf/ddf_backward calls; ddf_derivatives.cpp registers them as the private
// ops ddf::_ddf_backward_backward, _ddf_jvp and _ddf_backward_jvp (schemas in
// ../ddf_schema.h), which the Python autograd Functions (ddf_ops/_transforms.py) call, and the
// C++ autograd (ddf_autograd.cpp) calls these functions directly.
//
// Arguments named like the schemas'. An optional tangent or incoming gradient that is absent
// contributes nothing. An output is undefined (None in Python) where its output_mask entry is
// false; see each function for when a requested one is undefined too.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <array>
#include <optional>
#include <tuple>

namespace ddf {

// The vector-Jacobian product of ddf_backward (its backward, i.e. ddf's double backward):
// given the gradients flowing into ddf_backward's three outputs, the gradients with respect
// to (grad_output, input, channel_filter, spatial_filter). A requested gradient that nothing
// contributes to (every incoming gradient it depends on absent) is undefined, which autograd
// reads as zero.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> ddf_backward_backward(
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
    std::array<bool, 4> output_mask);

// The tangent of ddf's output given tangents of its three tensor inputs; undefined when all
// three are absent.
at::Tensor ddf_jvp(
    const at::Tensor& input,
    const at::Tensor& channel_filter,
    const at::Tensor& spatial_filter,
    const std::optional<at::Tensor>& input_tangent,
    const std::optional<at::Tensor>& channel_filter_tangent,
    const std::optional<at::Tensor>& spatial_filter_tangent,
    int64_t stride,
    int64_t dilation,
    c10::string_view combine);

// The tangents of ddf_backward's outputs (grad_input, grad_channel_filter,
// grad_spatial_filter) given tangents of its four tensor inputs. Every output that
// output_mask asks for is defined (zeros where no tangent contributes): forward-mode AD needs
// a tangent for every output that exists.
std::tuple<at::Tensor, at::Tensor, at::Tensor> ddf_backward_jvp(
    const at::Tensor& grad_output,
    const at::Tensor& input,
    const at::Tensor& channel_filter,
    const at::Tensor& spatial_filter,
    const std::optional<at::Tensor>& grad_output_tangent,
    const std::optional<at::Tensor>& input_tangent,
    const std::optional<at::Tensor>& channel_filter_tangent,
    const std::optional<at::Tensor>& spatial_filter_tangent,
    int64_t stride,
    int64_t dilation,
    c10::string_view combine,
    std::array<bool, 3> output_mask);

}  // namespace ddf
