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

}  // namespace ddf
