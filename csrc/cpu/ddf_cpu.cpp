// The CPU front door of ddf and ddf_backward: argument checks, allocation of the results,
// the plan (plan.h), and a switch over the plan's path into the kernel families:
//   elementwise/  one result element at a time (huge strides and dilations)
//   channels/     vectorized over a head's channels (channels_last; small NCHW maps)
//   rows/         vectorized along image rows (NCHW bands)
// Each family has the same face, forward.h and backward.h:
//   forward<M, scalar_t>(plan, input, channel_filter, spatial_filter, out, geometry)
//   backward<M, scalar_t>(plan, grad_output, input, channel_filter, spatial_filter,
//                         grad_input, grad_channel_filter, grad_spatial_filter, geometry)
// torch.ops.ddf._cpu_plan(...) returns describe(plan) for a call, through the same checks,
// allocation and planner as the op itself.
//
// Determinism: every family computes each result element by a sequence of operations that
// depends on the shape only, never on the threads (plan.h: kFilterGradTasks), so results are
// bitwise reproducible across thread counts.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <string>
#include <type_traits>

#include "../ddf_checks.h"
#include "../ddf_dtype_dispatch.h"
#include "channels/backward.h"
#include "channels/forward.h"
#include "elementwise/backward.h"
#include "elementwise/forward.h"
#include "plan.h"
#include "rows/backward.h"
#include "rows/forward.h"

namespace ddf {
namespace cpu {
namespace {

CallInfo call_info(const Geometry& g, c10::string_view combine, const at::Tensor& input) {
  const at::ScalarType dtype = input.scalar_type();
  return {g, parse_combine(combine), dtype == at::kFloat || dtype == at::kDouble,
          static_cast<int64_t>(input.element_size()), static_cast<int64_t>(at::get_num_threads())};
}

// A forward call, checked, its output allocated and its plan made.
struct ForwardCall {
  Geometry g;
  at::Tensor out;
  ForwardPlan plan;
};

ForwardCall prepare_forward(
    const at::Tensor& input,
    const at::Tensor& channel_filter,
    const at::Tensor& spatial_filter,
    int64_t stride,
    int64_t dilation,
    c10::string_view combine) {
  const SymSizes sizes = check_ddf_args(input, channel_filter, spatial_filter, stride, dilation, combine);
  const Geometry g = concrete_geometry(sizes, stride, dilation);
  at::Tensor out = ddf_empty_output(sizes, input);
  const ForwardPlan plan =
      plan_forward(call_info(g, combine, input), {strides_of(input), strides_of(spatial_filter), strides_of(out)});
  return {g, out, plan};
}

at::Tensor ddf_cpu(
    const at::Tensor& input,
    const at::Tensor& channel_filter,
    const at::Tensor& spatial_filter,
    int64_t stride,
    int64_t dilation,
    c10::string_view combine) {
  ForwardCall call = prepare_forward(input, channel_filter, spatial_filter, stride, dilation, combine);
  const ForwardPlan& plan = call.plan;
  if (plan.path == ForwardPath::Empty) return call.out;
  dispatch_dtype_and_combine(input.scalar_type(), parse_combine(combine), [&](auto tag, auto m) {
    using scalar_t = decltype(tag);
    constexpr Combine M = decltype(m)::value;
    switch (plan.path) {
      case ForwardPath::Elementwise:
        return elementwise::forward<M, scalar_t>(plan, input, channel_filter, spatial_filter, call.out, call.g);
      case ForwardPath::ChannelsInPlace:
      case ForwardPath::ChannelsTransposed:
        if constexpr (std::is_same_v<scalar_t, typename AccType<scalar_t>::type>) {  // float32, float64
          return channels::forward<M, scalar_t>(plan, input, channel_filter, spatial_filter, call.out, call.g);
        }
        break;
      default:  // the row paths
        return rows::forward<M, scalar_t>(plan, input, channel_filter, spatial_filter, call.out, call.g);
    }
    TORCH_INTERNAL_ASSERT(false, "ddf: CPU plan ", describe(plan), " for dtype ", input.scalar_type());
  });
  return call.out;
}

// A backward call, checked, its gradients allocated and its plan made.
struct BackwardCall {
  Geometry g;
  at::Tensor grad_input, grad_channel_filter, grad_spatial_filter;
  BackwardPlan plan;
};

BackwardCall prepare_backward(
    const at::Tensor& grad_output,
    const at::Tensor& input,
    const at::Tensor& channel_filter,
    const at::Tensor& spatial_filter,
    int64_t stride,
    int64_t dilation,
    c10::string_view combine,
    std::array<bool, 3> output_mask) {
  const SymSizes sizes =
      check_ddf_backward_args(grad_output, input, channel_filter, spatial_filter, stride, dilation, combine);
  const Geometry g = concrete_geometry(sizes, stride, dilation);
  auto [gi, gc, gs] = ddf_empty_grads(sizes, input, channel_filter, spatial_filter, output_mask);
  BackwardStrides st{strides_of(grad_output), strides_of(input), strides_of(spatial_filter),
                     gi.defined() ? strides_of(gi) : Strides4{}, gs.defined() ? strides_of(gs) : Strides4{},
                     gi.defined(), gs.defined()};
  const BackwardPlan plan = plan_backward(call_info(g, combine, input), st);
  return {g, gi, gc, gs, plan};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ddf_backward_cpu(
    const at::Tensor& grad_output,
    const at::Tensor& input,
    const at::Tensor& channel_filter,
    const at::Tensor& spatial_filter,
    int64_t stride,
    int64_t dilation,
    c10::string_view combine,
    std::array<bool, 3> output_mask) {
  BackwardCall call =
      prepare_backward(grad_output, input, channel_filter, spatial_filter, stride, dilation, combine, output_mask);
  const BackwardPlan& plan = call.plan;
  at::Tensor &gi = call.grad_input, &gc = call.grad_channel_filter, &gs = call.grad_spatial_filter;
  if (plan.path == BackwardPath::Empty) {
    // No output pixel: nothing reaches any input, and a channel filter sums over nothing.
    for (at::Tensor* t : {&gi, &gc, &gs}) {
      if (t->defined()) t->zero_();
    }
    return {gi, gc, gs};
  }
  dispatch_dtype_and_combine(input.scalar_type(), parse_combine(combine), [&](auto tag, auto m) {
    using scalar_t = decltype(tag);
    constexpr Combine M = decltype(m)::value;
    switch (plan.path) {
      case BackwardPath::Elementwise:
        return elementwise::backward<M, scalar_t>(plan, grad_output, input, channel_filter, spatial_filter, gi, gc, gs,
                                                  call.g);
      case BackwardPath::ChannelsInPlace:
      case BackwardPath::ChannelsCopied:
        if constexpr (std::is_same_v<scalar_t, typename AccType<scalar_t>::type>) {  // float32, float64
          return channels::backward<M, scalar_t>(plan, grad_output, input, channel_filter, spatial_filter, gi, gc, gs,
                                                 call.g);
        }
        break;
      default:  // BackwardPath::RowsPhasePlanes
        return rows::backward<M, scalar_t>(plan, grad_output, input, channel_filter, spatial_filter, gi, gc, gs,
                                           call.g);
    }
    TORCH_INTERNAL_ASSERT(false, "ddf: CPU plan ", describe(plan), " for dtype ", input.scalar_type());
  });
  return {gi, gc, gs};
}

// torch.ops.ddf._cpu_plan: the plan of the forward (grad_output None) or of the backward.
std::string ddf_cpu_plan(
    const at::Tensor& input,
    const at::Tensor& channel_filter,
    const at::Tensor& spatial_filter,
    int64_t stride,
    int64_t dilation,
    c10::string_view combine,
    const std::optional<at::Tensor>& grad_output,
    std::array<bool, 3> output_mask) {
  if (!grad_output.has_value()) {
    return describe(prepare_forward(input, channel_filter, spatial_filter, stride, dilation, combine).plan);
  }
  return describe(
      prepare_backward(*grad_output, input, channel_filter, spatial_filter, stride, dilation, combine, output_mask)
          .plan);
}

}  // namespace

TORCH_LIBRARY_IMPL(ddf, CPU, m) {
  m.impl("ddf", &ddf_cpu);
  m.impl("ddf_backward", &ddf_backward_cpu);
}

// A debug hook for tests and benchmarks: which path (and parameters) a CPU call takes, e.g.
// "rows_in_place bands=8x7 isa=AVX2".
TORCH_LIBRARY_FRAGMENT(ddf, m) {
  m.def(
      "_cpu_plan(Tensor input, Tensor channel_filter, Tensor spatial_filter, int stride=1, int dilation=1, "
      "str combine=\"mul\", Tensor? grad_output=None, bool[3] output_mask=[True, True, True]) -> str",
      &ddf_cpu_plan);
}

}  // namespace cpu
}  // namespace ddf
