// Autograd for ddf and ddf_backward, registered at the Autograd key so that the compiled
// library alone gives a differentiable op (eager, torch.compile, torch.export, libtorch).
//
// ddf is linear in the input and, for "mul", in each filter; ddf_backward is linear in
// grad_output. So the gradients of ddf_backward (double backward) are again sums of ddf
// and ddf_backward calls, and every order of derivative works:
//
// Write T(X, a, b) = ddf(X, a, b, combine) and A_X, A_cf, A_sf for the three outputs of
// ddf_backward. Given the incoming gradients (gX, gcf, gsf) of those three outputs:
//   mul: <gX, A_X(go,cf,sf)> + <gcf, A_cf(go,X,sf)> + <gsf, A_sf(go,X,cf)>
//          = <go, T(gX,cf,sf) + T(X,gcf,sf) + T(X,cf,gsf)>
//        d/dgo = T(gX,cf,sf) + T(X,gcf,sf) + T(X,cf,gsf)
//        d/dX  = A_X(go,gcf,sf) + A_X(go,cf,gsf)
//        d/dcf = A_cf(go,gX,sf) + A_cf(go,X,gsf)
//        d/dsf = A_sf(go,gX,cf) + A_sf(go,X,gcf)
//   add: T(X,a,b) = P(X,a) + Q(X,b) with P, Q bilinear, and
//        d/dgo = T(gX,cf,sf) + T(X,gcf,gsf)
//        d/dX  = A_X(go,gcf,gsf)
//        d/dcf = A_cf(go,gX,.)   d/dsf = A_sf(go,gX,.)   (they do not depend on the filters)
#include <ATen/ops/add.h>
#include <ATen/ops/zeros_like.h>
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

// a + b where either may be undefined (no contribution).
at::Tensor add_defined(const at::Tensor& a, const at::Tensor& b) {
  if (!a.defined()) return b;
  if (!b.defined()) return a;
  return at::add(a, b);
}

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
    const at::Tensor &go = saved[0], &x = saved[1], &cf = saved[2], &sf = saved[3];
    const Attributes a = load_attributes(ctx);
    const int64_t s = a.stride, d = a.dilation;
    const bool need_go = ctx->needs_input_grad(0), need_x = ctx->needs_input_grad(1),
               need_cf = ctx->needs_input_grad(2), need_sf = ctx->needs_input_grad(3);
    // The incoming gradients, back in the places of (grad_input, grad_cf, grad_sf).
    const int64_t mask = ctx->saved_data["mask"].toInt();
    at::Tensor placed[3];
    for (size_t i = 0, next = 0; i < 3; ++i) {
      if (mask >> i & 1) placed[i] = grads[next++];
    }
    const at::Tensor &gX = placed[0], &gcf = placed[1], &gsf = placed[2];
    at::Tensor d_go, d_x, d_cf, d_sf;

    if (a.combine == "mul") {
      if (need_go) {
        if (gX.defined()) d_go = add_defined(d_go, call_ddf(gX, cf, sf, s, d, a.combine));
        if (gcf.defined()) d_go = add_defined(d_go, call_ddf(x, gcf, sf, s, d, a.combine));
        if (gsf.defined()) d_go = add_defined(d_go, call_ddf(x, cf, gsf, s, d, a.combine));
      }
      if (gX.defined() && (need_cf || need_sf)) {
        auto [unused, c1, s1] = call_ddf_backward(go, gX, cf, sf, s, d, a.combine, {false, need_cf, need_sf});
        d_cf = add_defined(d_cf, c1);
        d_sf = add_defined(d_sf, s1);
      }
      if (gcf.defined() && (need_x || need_sf)) {
        auto [x1, unused, s1] = call_ddf_backward(go, x, gcf, sf, s, d, a.combine, {need_x, false, need_sf});
        d_x = add_defined(d_x, x1);
        d_sf = add_defined(d_sf, s1);
      }
      if (gsf.defined() && (need_x || need_cf)) {
        auto [x1, c1, unused] = call_ddf_backward(go, x, cf, gsf, s, d, a.combine, {need_x, need_cf, false});
        d_x = add_defined(d_x, x1);
        d_cf = add_defined(d_cf, c1);
      }
    } else {
      // A missing filter gradient contributes nothing: stand in zeros of its shape.
      const bool any_filter_grad = gcf.defined() || gsf.defined();
      const at::Tensor gcf_ = gcf.defined() ? gcf : at::zeros_like(cf);
      const at::Tensor gsf_ = gsf.defined() ? gsf : at::zeros_like(sf);
      if (need_go) {
        if (gX.defined()) d_go = add_defined(d_go, call_ddf(gX, cf, sf, s, d, a.combine));
        if (any_filter_grad) d_go = add_defined(d_go, call_ddf(x, gcf_, gsf_, s, d, a.combine));
      }
      if (need_x && any_filter_grad) {
        d_x = std::get<0>(call_ddf_backward(go, x, gcf_, gsf_, s, d, a.combine, {true, false, false}));
      }
      if (gX.defined() && (need_cf || need_sf)) {
        auto [unused, c1, s1] = call_ddf_backward(go, gX, cf, sf, s, d, a.combine, {false, need_cf, need_sf});
        d_cf = c1;
        d_sf = s1;
      }
    }
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
