// Autograd for ddf and ddf_backward, registered at the Autograd key so that the compiled
// library alone gives a differentiable op (eager, torch.compile, torch.export, libtorch).
//
// The derivative algebra (double backward, tangents) lives in ddf_derivatives.cpp, as the
// private ops that the Python autograd Functions call too; the functions here only save what
// the double backward needs and hand the incoming gradients to _ddf_backward_backward.
#include <torch/autograd.h>
#include <torch/library.h>

#include "../ddf_checks.h"
#include "../ddf_op_calls.h"

namespace ddf {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using Mask = std::array<bool, 3>;
using Grads = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

void save_attributes(AutogradContext* ctx, int64_t stride, int64_t dilation, c10::string_view combine) {
  ctx->saved_data["stride"] = stride;
  ctx->saved_data["dilation"] = dilation;
  ctx->saved_data["combine"] = std::string(combine);
}

struct Attributes {
  int64_t stride, dilation;
  std::string combine;
};

Attributes load_attributes(AutogradContext* ctx) {
  return {ctx->saved_data["stride"].toInt(), ctx->saved_data["dilation"].toInt(),
          ctx->saved_data["combine"].toStringRef()};
}

class DDFFunction : public torch::autograd::Function<DDFFunction> {
 public:
  static at::Tensor forward(
      AutogradContext* ctx,
      const at::Tensor& input,
      const at::Tensor& channel_filter,
      const at::Tensor& spatial_filter,
      int64_t stride,
      int64_t dilation,
      c10::string_view combine) {
    at::AutoDispatchBelowADInplaceOrView guard;
    at::Tensor out = call_ddf(input, channel_filter, spatial_filter, stride, dilation, combine);
    ctx->save_for_backward({input, channel_filter, spatial_filter});
    save_attributes(ctx, stride, dilation, combine);
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const Attributes a = load_attributes(ctx);
    const Mask mask = {ctx->needs_input_grad(0), ctx->needs_input_grad(1), ctx->needs_input_grad(2)};
    if (!grad_outputs[0].defined() || !(mask[0] || mask[1] || mask[2])) {
      return {at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
    }
    auto [gi, gc, gs] =
        call_ddf_backward(grad_outputs[0], saved[0], saved[1], saved[2], a.stride, a.dilation, a.combine, mask);
    return {gi, gc, gs, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

class DDFBackwardFunction : public torch::autograd::Function<DDFBackwardFunction> {
 public:
  // Returns only the gradients that output_mask asks for (autograd's Function cannot
  // return undefined tensors); ddf_backward_autograd puts them back in their places.
  static variable_list forward(
      AutogradContext* ctx,
      const at::Tensor& grad_output,
      const at::Tensor& input,
      const at::Tensor& channel_filter,
      const at::Tensor& spatial_filter,
      int64_t stride,
      int64_t dilation,
      c10::string_view combine,
      Mask mask) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [gi, gc, gs] =
        call_ddf_backward(grad_output, input, channel_filter, spatial_filter, stride, dilation, combine, mask);
    ctx->save_for_backward({grad_output, input, channel_filter, spatial_filter});
    save_attributes(ctx, stride, dilation, combine);
    ctx->saved_data["mask"] = int64_t(mask[0]) | int64_t(mask[1]) << 1 | int64_t(mask[2]) << 2;
    variable_list out;
    for (const at::Tensor& t : {gi, gc, gs}) {
      if (t.defined()) out.push_back(t);
    }
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const Attributes a = load_attributes(ctx);
    // The incoming gradients, back in the places of (grad_input, grad_cf, grad_sf).
    const int64_t mask = ctx->saved_data["mask"].toInt();
    std::optional<at::Tensor> placed[3];
    for (size_t i = 0, next = 0; i < 3; ++i) {
      if (mask >> i & 1) {
        const at::Tensor& g = grads[next++];
        if (g.defined()) placed[i] = g;
      }
    }
    const std::array<bool, 4> needed = {ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                        ctx->needs_input_grad(2), ctx->needs_input_grad(3)};
    auto [d_go, d_x, d_cf, d_sf] = call_ddf_backward_backward(
        saved[0], saved[1], saved[2], saved[3], placed[0], placed[1], placed[2], a.stride, a.dilation, a.combine,
        needed);
    return {d_go, d_x, d_cf, d_sf, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor ddf_autograd(
    const at::Tensor& input,
    const at::Tensor& channel_filter,
    const at::Tensor& spatial_filter,
    int64_t stride,
    int64_t dilation,
    c10::string_view combine) {
  check_defined({{&input, "input"}, {&channel_filter, "channel_filter"}, {&spatial_filter, "spatial_filter"}});
  return DDFFunction::apply(input, channel_filter, spatial_filter, stride, dilation, combine);
}

Grads ddf_backward_autograd(
    const at::Tensor& grad_output,
    const at::Tensor& input,
    const at::Tensor& channel_filter,
    const at::Tensor& spatial_filter,
    int64_t stride,
    int64_t dilation,
    c10::string_view combine,
    Mask mask) {
  check_defined({{&grad_output, "grad_output"}, {&input, "input"}, {&channel_filter, "channel_filter"},
                 {&spatial_filter, "spatial_filter"}});
  const variable_list out =
      DDFBackwardFunction::apply(grad_output, input, channel_filter, spatial_filter, stride, dilation, combine, mask);
  at::Tensor placed[3];
  for (size_t i = 0, next = 0; i < 3; ++i) {
    if (mask[i]) placed[i] = out[next++];
  }
  return {placed[0], placed[1], placed[2]};
}

}  // namespace

TORCH_LIBRARY_IMPL(ddf, Autograd, m) {
  m.impl("ddf", &ddf_autograd);
  m.impl("ddf_backward", &ddf_backward_autograd);
}

}  // namespace ddf
