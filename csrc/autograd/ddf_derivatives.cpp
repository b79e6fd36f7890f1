// The derivative algebra of the ddf ops, in one place: the private ops
// _ddf_backward_backward, _ddf_jvp and _ddf_backward_jvp (schemas in ../ddf_schema.h), which
// both autograds call: the C++ one (ddf_autograd.cpp) and the Python Functions
// (ddf_ops/_transforms.py). An absent optional tangent or incoming gradient contributes
// nothing; an output whose output_mask entry is false is undefined (None in Python).
//
// ddf is linear in the input and, for "mul", in each filter; ddf_backward is linear in
// grad_output. So every derivative of either op is again a sum of ddf and ddf_backward
// calls, and, as those calls go through the dispatcher, every order of derivative works.
//
// Write T(X, a, b) = ddf(X, a, b, combine) and A_X, A_cf, A_sf for the three outputs of
// ddf_backward (the adjoints of T in X, a and b).
//
// Double backward. Given the incoming gradients (gX, gcf, gsf) of ddf_backward's outputs:
//   mul: <gX, A_X(go,cf,sf)> + <gcf, A_cf(go,X,sf)> + <gsf, A_sf(go,X,cf)>
//          = <go, T(gX,cf,sf) + T(X,gcf,sf) + T(X,cf,gsf)>
//        d/dgo = T(gX,cf,sf) + T(X,gcf,sf) + T(X,cf,gsf)
//        d/dX  = A_X(go,gcf,sf) + A_X(go,cf,gsf)
//        d/dcf = A_cf(go,gX,sf) + A_cf(go,X,gsf)
//        d/dsf = A_sf(go,gX,cf) + A_sf(go,X,gcf)
//   add: T(X,a,b) = P(X,a) + Q(X,b) with P, Q bilinear, so T is linear in (a, b) jointly, and
//        d/dgo = T(gX,cf,sf) + T(X,gcf,gsf)
//        d/dX  = A_X(go,gcf,gsf)
//        d/dcf = A_cf(go,gX,.)   d/dsf = A_sf(go,gX,.)   (they do not depend on the filters)
//
// Tangent of ddf, given tangents (dX, dcf, dsf):
//   mul: T(dX,cf,sf) + T(X,dcf,sf) + T(X,cf,dsf)
//   add: T(dX,cf,sf) + T(X,dcf,dsf)
//
// Tangent of ddf_backward, given tangents (dgo, dX, dcf, dsf): A is linear in go and has T's
// structure in the rest, so
//   mul: A(dgo,X,cf,sf) + A(go,dX,cf,sf) + A(go,X,dcf,sf) + A(go,X,cf,dsf)
//   add: A(dgo,X,cf,sf) + A(go,dX,cf,sf) + A_X(go,dcf,dsf)
// where a term is left out of the outputs it does not reach (A_X does not depend on X, A_cf
// not on cf, A_sf not on sf; for "add", A_cf and A_sf on neither filter).
//
// Where "add" needs one filter's term and only the other filter's tangent or gradient is
// given, the missing one is zeros of its shape: T(X, a, 0) = P(X, a) + 0.
#include <ATen/core/Tensor.h>
#include <ATen/ops/add.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <tuple>

#include "../ddf_op_calls.h"

namespace ddf {
namespace {

// a + b where either may be undefined (no contribution).
at::Tensor add_defined(const at::Tensor& a, const at::Tensor& b) {
  if (!a.defined()) return b;
  if (!b.defined()) return a;
  return at::add(a, b);
}

// An absent optional as an undefined tensor: the algebra below tests .defined() only.
at::Tensor or_undefined(const std::optional<at::Tensor>& t) {
  return t.has_value() ? *t : at::Tensor();
}

// "add" needs both filters' terms together: an absent one is zeros shaped like its filter.
at::Tensor or_zeros_like(const at::Tensor& t, const at::Tensor& like) {
  return t.defined() ? t : at::zeros_like(like);
}

// The vector-Jacobian product of ddf_backward (its backward, i.e. ddf's double backward):
// given the gradients flowing into ddf_backward's three outputs, the gradients with respect
// to (grad_output, input, channel_filter, spatial_filter). A requested gradient that nothing
// contributes to (every incoming gradient it depends on absent) is undefined, which autograd
// reads as zero.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> ddf_backward_backward(
    const at::Tensor& go,
    const at::Tensor& x,
    const at::Tensor& cf,
    const at::Tensor& sf,
    const std::optional<at::Tensor>& grad_grad_input,
    const std::optional<at::Tensor>& grad_grad_channel_filter,
    const std::optional<at::Tensor>& grad_grad_spatial_filter,
    int64_t s,
    int64_t d,
    c10::string_view combine,
    std::array<bool, 4> output_mask) {
  const at::Tensor gX = or_undefined(grad_grad_input), gcf = or_undefined(grad_grad_channel_filter),
                   gsf = or_undefined(grad_grad_spatial_filter);
  const auto [need_go, need_x, need_cf, need_sf] = output_mask;
  at::Tensor d_go, d_x, d_cf, d_sf;

  if (combine == "mul") {
    if (need_go) {
      if (gX.defined()) d_go = add_defined(d_go, call_ddf(gX, cf, sf, s, d, combine));
      if (gcf.defined()) d_go = add_defined(d_go, call_ddf(x, gcf, sf, s, d, combine));
      if (gsf.defined()) d_go = add_defined(d_go, call_ddf(x, cf, gsf, s, d, combine));
    }
    if (gX.defined() && (need_cf || need_sf)) {
      auto [unused, c1, s1] = call_ddf_backward(go, gX, cf, sf, s, d, combine, {false, need_cf, need_sf});
      d_cf = add_defined(d_cf, c1);
      d_sf = add_defined(d_sf, s1);
    }
    if (gcf.defined() && (need_x || need_sf)) {
      auto [x1, unused, s1] = call_ddf_backward(go, x, gcf, sf, s, d, combine, {need_x, false, need_sf});
      d_x = add_defined(d_x, x1);
      d_sf = add_defined(d_sf, s1);
    }
    if (gsf.defined() && (need_x || need_cf)) {
      auto [x1, c1, unused] = call_ddf_backward(go, x, cf, gsf, s, d, combine, {need_x, need_cf, false});
      d_x = add_defined(d_x, x1);
      d_cf = add_defined(d_cf, c1);
    }
  } else {
    const bool any_filter_grad = gcf.defined() || gsf.defined();
    at::Tensor gcf_, gsf_;
    if (any_filter_grad && (need_go || need_x)) {
      gcf_ = or_zeros_like(gcf, cf);
      gsf_ = or_zeros_like(gsf, sf);
    }
    if (need_go) {
      if (gX.defined()) d_go = add_defined(d_go, call_ddf(gX, cf, sf, s, d, combine));
      if (any_filter_grad) d_go = add_defined(d_go, call_ddf(x, gcf_, gsf_, s, d, combine));
    }
    if (need_x && any_filter_grad) {
      d_x = std::get<0>(call_ddf_backward(go, x, gcf_, gsf_, s, d, combine, {true, false, false}));
    }
    if (gX.defined() && (need_cf || need_sf)) {
      auto [unused, c1, s1] = call_ddf_backward(go, gX, cf, sf, s, d, combine, {false, need_cf, need_sf});
      d_cf = c1;
      d_sf = s1;
    }
  }
  return {d_go, d_x, d_cf, d_sf};
}

// The tangent of ddf's output given tangents of its three tensor inputs; undefined when all
// three are absent.
at::Tensor ddf_jvp(
    const at::Tensor& x,
    const at::Tensor& cf,
    const at::Tensor& sf,
    const std::optional<at::Tensor>& input_tangent,
    const std::optional<at::Tensor>& channel_filter_tangent,
    const std::optional<at::Tensor>& spatial_filter_tangent,
    int64_t s,
    int64_t d,
    c10::string_view combine) {
  const at::Tensor dX = or_undefined(input_tangent), dcf = or_undefined(channel_filter_tangent),
                   dsf = or_undefined(spatial_filter_tangent);
  at::Tensor tangent;
  if (dX.defined()) tangent = call_ddf(dX, cf, sf, s, d, combine);
  if (combine == "mul") {
    if (dcf.defined()) tangent = add_defined(tangent, call_ddf(x, dcf, sf, s, d, combine));
    if (dsf.defined()) tangent = add_defined(tangent, call_ddf(x, cf, dsf, s, d, combine));
  } else if (dcf.defined() || dsf.defined()) {
    tangent = add_defined(tangent, call_ddf(x, or_zeros_like(dcf, cf), or_zeros_like(dsf, sf), s, d, combine));
  }
  return tangent;
}

// The tangents of ddf_backward's outputs (grad_input, grad_channel_filter,
// grad_spatial_filter) given tangents of its four tensor inputs. Every output that
// output_mask asks for is defined (zeros where no tangent contributes): forward-mode AD needs
// a tangent for every output that exists.
std::tuple<at::Tensor, at::Tensor, at::Tensor> ddf_backward_jvp(
    const at::Tensor& go,
    const at::Tensor& x,
    const at::Tensor& cf,
    const at::Tensor& sf,
    const std::optional<at::Tensor>& grad_output_tangent,
    const std::optional<at::Tensor>& input_tangent,
    const std::optional<at::Tensor>& channel_filter_tangent,
    const std::optional<at::Tensor>& spatial_filter_tangent,
    int64_t s,
    int64_t d,
    c10::string_view combine,
    std::array<bool, 3> output_mask) {
  const at::Tensor dgo = or_undefined(grad_output_tangent), dX = or_undefined(input_tangent),
                   dcf = or_undefined(channel_filter_tangent), dsf = or_undefined(spatial_filter_tangent);
  const auto [want_x, want_cf, want_sf] = output_mask;
  at::Tensor tangents[3];
  auto accumulate = [&](const std::tuple<at::Tensor, at::Tensor, at::Tensor>& terms) {
    tangents[0] = add_defined(tangents[0], std::get<0>(terms));
    tangents[1] = add_defined(tangents[1], std::get<1>(terms));
    tangents[2] = add_defined(tangents[2], std::get<2>(terms));
  };

  if (dgo.defined()) accumulate(call_ddf_backward(dgo, x, cf, sf, s, d, combine, output_mask));
  if (dX.defined() && (want_cf || want_sf)) {
    accumulate(call_ddf_backward(go, dX, cf, sf, s, d, combine, {false, want_cf, want_sf}));
  }
  if (combine == "mul") {
    if (dcf.defined() && (want_x || want_sf)) {
      accumulate(call_ddf_backward(go, x, dcf, sf, s, d, combine, {want_x, false, want_sf}));
    }
    if (dsf.defined() && (want_x || want_cf)) {
      accumulate(call_ddf_backward(go, x, cf, dsf, s, d, combine, {want_x, want_cf, false}));
    }
  } else if ((dcf.defined() || dsf.defined()) && want_x) {
    accumulate(call_ddf_backward(
        go, x, or_zeros_like(dcf, cf), or_zeros_like(dsf, sf), s, d, combine, {true, false, false}));
  }
  // The gradients' shapes are those of (input, channel_filter, spatial_filter).
  const at::Tensor* shapes[3] = {&x, &cf, &sf};
  for (size_t i = 0; i < 3; ++i) {
    if (output_mask[i]) tangents[i] = or_zeros_like(tangents[i], *shapes[i]);
  }
  return {tangents[0], tangents[1], tangents[2]};
}

}  // namespace

// CompositeImplicitAutograd: the kernels only call ddf and ddf_backward, so autograd,
// fake tensors, torch.compile and torch.export see (and differentiate) those calls.
TORCH_LIBRARY_IMPL(ddf, CompositeImplicitAutograd, m) {
  m.impl("_ddf_backward_backward", &ddf_backward_backward);
  m.impl("_ddf_jvp", &ddf_jvp);
  m.impl("_ddf_backward_jvp", &ddf_backward_jvp);
}

}  // namespace ddf
