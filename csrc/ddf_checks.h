// Argument checks and output shapes of the ddf ops, shared by the meta, CPU and CUDA kernels
// so that every device gives the same error for the same mistake.
//
// The checks work on SymInts: on real tensors they are plain comparisons; under fake tensors
// with dynamic shapes they become guards or runtime asserts instead of specializing sizes.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/SymInt.h>
#include <c10/util/string_view.h>

#include <array>
#include <initializer_list>
#include <utility>

#include "ddf_geometry.h"

namespace ddf {

// Bounds that keep all index arithmetic in int64 on every device. Only expanded views
// (stride-0 dimensions) can reach them; the checks raise a ValueError naming the argument.
constexpr int64_t kMaxImageSize = int64_t(1) << 61;  // H and W, and the padding (k-1)/2*d
constexpr int64_t kMaxKernelSize = int64_t(1) << 30;  // k, so that k*k and tap offsets fit

// The stride or dilation the kernels use: min(step, max(H, W)), which computes exactly
// what step does (see ddf_checks.cpp), so any int64 step works in bounded memory.
int64_t canonical_step(int64_t step, int64_t H, int64_t W);

// The sizes of one call, read off the (checked) arguments.
struct SymSizes {
  c10::SymInt B, C, H, W, k, G, Ho, Wo;
};

// Raises a TypeError naming the first undefined tensor (None from Python). The autograd and
// autocast kernels call it first: they touch the tensors before the device kernel's checks.
void check_defined(std::initializer_list<std::pair<const at::Tensor*, const char*>> tensors);

// Checks input, channel_filter, spatial_filter, stride, dilation and combine; throws a
// c10::Error (ValueError/TypeError in Python) naming the argument, the expected and the
// actual value. Returns the sizes of the call.
SymSizes check_ddf_args(
    const at::Tensor& input,
    const at::Tensor& channel_filter,
    const at::Tensor& spatial_filter,
    int64_t stride,
    int64_t dilation,
    c10::string_view combine);

// check_ddf_args, plus grad_output of shape (B, C, Ho, Wo) with the same dtype and device.
SymSizes check_ddf_backward_args(
    const at::Tensor& grad_output,
    const at::Tensor& input,
    const at::Tensor& channel_filter,
    const at::Tensor& spatial_filter,
    int64_t stride,
    int64_t dilation,
    c10::string_view combine);

// "mul" or "add" (already checked by check_ddf_args).
Combine parse_combine(c10::string_view combine);

// Concrete sizes for the device kernels (real tensors only).
Geometry concrete_geometry(const SymSizes& sizes, int64_t stride, int64_t dilation);

Strides4 strides_of(const at::Tensor& t);

// Layout of a result that has the shape of `like`: channels_last if `like` is
// channels_last (as convolutions do), contiguous otherwise. Meta and device kernels both
// allocate through these helpers, so fake tensors get the same strides as real ones.
at::Tensor empty_like_layout(c10::SymIntArrayRef sizes, const at::Tensor& like);
at::Tensor ddf_empty_output(const SymSizes& s, const at::Tensor& input);

// The three gradients of ddf_backward; an entry is undefined where output_mask is false.
std::tuple<at::Tensor, at::Tensor, at::Tensor> ddf_empty_grads(
    const SymSizes& s,
    const at::Tensor& input,
    const at::Tensor& channel_filter,
    const at::Tensor& spatial_filter,
    std::array<bool, 3> output_mask);

}  // namespace ddf
