// The schemas of the ddf ops. csrc/ddf_registration.cpp defines the ops with them; the
// test-only emulated CUDA ops (tests/cuda_emulation) define theirs with the same text.
#pragma once

namespace ddf {

// Output (B, C, ceil(H/stride), ceil(W/stride)); see docs/design.md for the formula.
inline constexpr const char* kDdfSchema =
    "ddf(Tensor input, Tensor channel_filter, Tensor spatial_filter, int stride=1, int dilation=1, "
    "str combine=\"mul\") -> Tensor";

// Gradients with respect to (input, channel_filter, spatial_filter). An entry whose
// output_mask is false is not computed and comes back undefined (None in Python).
inline constexpr const char* kDdfBackwardSchema =
    "ddf_backward(Tensor grad_output, Tensor input, Tensor channel_filter, Tensor spatial_filter, "
    "int stride, int dilation, str combine, bool[3] output_mask) -> (Tensor, Tensor, Tensor)";

// The private derivative ops: the higher derivatives of the two ops above, written once in
// C++ (csrc/autograd/ddf_derivatives.cpp) for both autograds. An
// absent (None) tangent or incoming gradient contributes nothing.

// The backward of ddf_backward: gradients with respect to (grad_output, input,
// channel_filter, spatial_filter), given the gradients of its three outputs. Undefined where
// output_mask is false or nothing contributes.
inline constexpr const char* kDdfBackwardBackwardSchema =
    "_ddf_backward_backward(Tensor grad_output, Tensor input, Tensor channel_filter, Tensor spatial_filter, "
    "Tensor? grad_grad_input, Tensor? grad_grad_channel_filter, Tensor? grad_grad_spatial_filter, "
    "int stride, int dilation, str combine, bool[4] output_mask) -> (Tensor, Tensor, Tensor, Tensor)";

// The tangent of ddf's output; undefined when no tangent is given.
inline constexpr const char* kDdfJvpSchema =
    "_ddf_jvp(Tensor input, Tensor channel_filter, Tensor spatial_filter, Tensor? input_tangent, "
    "Tensor? channel_filter_tangent, Tensor? spatial_filter_tangent, int stride, int dilation, "
    "str combine) -> Tensor";

// The tangents of ddf_backward's outputs: defined (zeros if nothing contributes) exactly
// where output_mask is true.
inline constexpr const char* kDdfBackwardJvpSchema =
    "_ddf_backward_jvp(Tensor grad_output, Tensor input, Tensor channel_filter, Tensor spatial_filter, "
    "Tensor? grad_output_tangent, Tensor? input_tangent, Tensor? channel_filter_tangent, "
    "Tensor? spatial_filter_tangent, int stride, int dilation, str combine, bool[3] output_mask) "
    "-> (Tensor, Tensor, Tensor)";

}  // namespace ddf
