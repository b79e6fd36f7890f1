#include "ddf_checks.h"

#include <ATen/ops/empty.h>
#include <c10/core/SymBool.h>

#include <algorithm>
#include <utility>

// A shape condition that may be symbolic: a guard or runtime assert under dynamic shapes,
// a plain check on real tensors. Raises ValueError in Python.
#define DDF_CHECK_SHAPE(cond, ...) \
  TORCH_CHECK_VALUE((cond).expect_true(__FILE__, __LINE__), "ddf: ", __VA_ARGS__)

namespace ddf {
namespace {

bool is_supported_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

void check_tensor(const at::Tensor& t, const char* name, const at::Tensor& input, const char* layout) {
  check_defined({{&t, name}});
  TORCH_CHECK_VALUE(
      t.dim() == 4, "ddf: expected ", name, " to be a 4-D tensor ", layout, ", but got a ", t.dim(),
      "-D tensor of shape ", t.sym_sizes());
  TORCH_CHECK_TYPE(
      is_supported_dtype(t.scalar_type()), "ddf: expected ", name,
      " to have a floating-point dtype (float32, float64, float16 or bfloat16), but got ", t.scalar_type());
  TORCH_CHECK_TYPE(
      t.scalar_type() == input.scalar_type(), "ddf: expected ", name, " to have the same dtype as input (",
      input.scalar_type(), "), but got ", t.scalar_type());
  TORCH_CHECK_VALUE(
      t.device() == input.device(), "ddf: expected ", name, " to be on the same device as input (",
      input.device(), "), but got ", t.device());
}

}  // namespace

void check_defined(std::initializer_list<std::pair<const at::Tensor*, const char*>> tensors) {
  for (const auto& [t, name] : tensors) {
    TORCH_CHECK_TYPE(t->defined(), "ddf: expected ", name, " to be a Tensor, but got None (an undefined tensor)");
  }
}

SymSizes check_ddf_args(
    const at::Tensor& input,
    const at::Tensor& channel_filter,
    const at::Tensor& spatial_filter,
    int64_t stride,
    int64_t dilation,
    c10::string_view combine) {
  check_tensor(input, "input", input, "(B, C, H, W)");
  check_tensor(channel_filter, "channel_filter", input, "(B, C, k, k)");
  check_tensor(spatial_filter, "spatial_filter", input, "(B, G*k*k, Ho, Wo)");
  TORCH_CHECK_VALUE(stride >= 1, "ddf: expected stride >= 1, but got ", stride);
  TORCH_CHECK_VALUE(dilation >= 1, "ddf: expected dilation >= 1, but got ", dilation);
  TORCH_CHECK_VALUE(
      combine == "mul" || combine == "add", "ddf: expected combine to be \"mul\" or \"add\", but got \"",
      std::string(combine), "\"");

  const auto& x = input.sym_sizes();
  const auto& cf = channel_filter.sym_sizes();
  const auto& sf = spatial_filter.sym_sizes();
  SymSizes s;
  s.B = x[0];
  s.C = x[1];
  s.H = x[2];
  s.W = x[3];
  s.k = cf[2];

  DDF_CHECK_SHAPE(
      cf[0].sym_eq(s.B), "expected channel_filter.size(0) to equal the batch size input.size(0) = ", s.B,
      ", but got channel_filter of shape ", cf);
  DDF_CHECK_SHAPE(
      cf[1].sym_eq(s.C), "expected channel_filter.size(1) to equal the channels input.size(1) = ", s.C,
      ", but got channel_filter of shape ", cf);
  DDF_CHECK_SHAPE(
      cf[3].sym_eq(s.k), "expected channel_filter to hold square k x k filters (size(2) == size(3)), but got ",
      "channel_filter of shape ", cf);
  DDF_CHECK_SHAPE(
      s.k.sym_ge(1) & (s.k % 2).sym_eq(1),
      "expected an odd kernel size k = channel_filter.size(2) >= 1, but got k = ", s.k);

  // k comes from a shape that an expanded view can make huge: bound it before k*k, so that
  // k*k and every tap offset below fit in int64 (and agree on every device).
  if (auto k = s.k.maybe_as_int()) {
    TORCH_CHECK_VALUE(
        *k <= kMaxKernelSize, "ddf: expected the kernel size k = channel_filter.size(2) to be at most ",
        kMaxKernelSize, ", but got k = ", *k);
  }
  const c10::SymInt kk = s.k * s.k;
  DDF_CHECK_SHAPE(
      sf[0].sym_eq(s.B), "expected spatial_filter.size(0) to equal the batch size input.size(0) = ", s.B,
      ", but got spatial_filter of shape ", sf);
  DDF_CHECK_SHAPE(
      sf[1].sym_ge(kk) & (sf[1] % kk).sym_eq(0),
      "expected spatial_filter.size(1) to be a positive multiple G*k*k of k*k = ", kk,
      " (G heads), but got spatial_filter of shape ", sf);
  s.G = sf[1] / kk;
  DDF_CHECK_SHAPE(
      (s.C % s.G).sym_eq(0), "expected the heads G = spatial_filter.size(1) / (k*k) = ", s.G,
      " to divide the channels C = input.size(1) = ", s.C);

  // Image sizes and the receptive field bounded so that every index below fits in int64
  // (only expanded views can reach these bounds: no real tensor is that large).
  for (const auto& [size, name] : {std::pair{s.H, "input.size(2)"}, std::pair{s.W, "input.size(3)"}}) {
    if (auto n = size.maybe_as_int()) {
      TORCH_CHECK_VALUE(*n <= kMaxImageSize, "ddf: expected ", name, " to be at most ", kMaxImageSize, ", but got ", *n);
    }
  }
  if (auto k = s.k.maybe_as_int(); k && s.H.maybe_as_int() && s.W.maybe_as_int()) {
    const int64_t reach = (*k - 1) / 2, d = canonical_step(dilation, *s.H.maybe_as_int(), *s.W.maybe_as_int());
    int64_t pad = 0;
    TORCH_CHECK_VALUE(
        !__builtin_mul_overflow(reach, d, &pad) && pad <= kMaxImageSize, "ddf: expected the padding (k-1)/2 * dilation = ",
        reach, " * ", d, " to be at most ", kMaxImageSize, " for k = ", *k, " and an image of size (", *s.H.maybe_as_int(),
        ", ", *s.W.maybe_as_int(), ")");
  }

  // ceil(H / s), the size nn.Conv2d(padding=d*(k-1)//2, stride=s) gives. A stride past
  // kMaxImageSize gives the same sizes as kMaxImageSize (one output row or column), and keeps
  // H + s - 1 from overflowing.
  const int64_t shape_stride = std::min(stride, kMaxImageSize);
  s.Ho = (s.H + (shape_stride - 1)) / shape_stride;
  s.Wo = (s.W + (shape_stride - 1)) / shape_stride;
  DDF_CHECK_SHAPE(
      sf[2].sym_eq(s.Ho) & sf[3].sym_eq(s.Wo), "expected spatial_filter to have spatial size (Ho, Wo) = (",
      s.Ho, ", ", s.Wo, ") for input (H, W) = (", s.H, ", ", s.W, ") and stride ", stride,
      ", but got spatial_filter of shape ", sf);
  return s;
}

SymSizes check_ddf_backward_args(
    const at::Tensor& grad_output,
    const at::Tensor& input,
    const at::Tensor& channel_filter,
    const at::Tensor& spatial_filter,
    int64_t stride,
    int64_t dilation,
    c10::string_view combine) {
  SymSizes s = check_ddf_args(input, channel_filter, spatial_filter, stride, dilation, combine);
  check_tensor(grad_output, "grad_output", input, "(B, C, Ho, Wo)");
  const auto& g = grad_output.sym_sizes();
  DDF_CHECK_SHAPE(
      g[0].sym_eq(s.B) & g[1].sym_eq(s.C) & g[2].sym_eq(s.Ho) & g[3].sym_eq(s.Wo),
      "expected grad_output to have the output shape (B, C, Ho, Wo) = (", s.B, ", ", s.C, ", ", s.Ho, ", ",
      s.Wo, "), but got ", g);
  return s;
}

int64_t canonical_step(int64_t step, int64_t H, int64_t W) {
  // A dilation d >= max(H, W) puts every tap but the centre outside the image, whatever d;
  // a stride s >= max(H, W) leaves one output pixel (0, 0), whatever s. So any step past
  // max(H, W) computes exactly what max(H, W) does, and the index math stays small.
  return std::min(step, std::max<int64_t>({H, W, 1}));
}

Combine parse_combine(c10::string_view combine) {
  return combine == "add" ? Combine::Add : Combine::Mul;
}

Geometry concrete_geometry(const SymSizes& s, int64_t stride, int64_t dilation) {
  Geometry g;
  g.B = s.B.expect_int();
  g.C = s.C.expect_int();
  g.H = s.H.expect_int();
  g.W = s.W.expect_int();
  g.k = s.k.expect_int();
  g.G = s.G.expect_int();
  g.Ho = s.Ho.expect_int();
  g.Wo = s.Wo.expect_int();
  g.stride = canonical_step(stride, g.H, g.W);
  g.dilation = canonical_step(dilation, g.H, g.W);
  return g;
}

Strides4 strides_of(const at::Tensor& t) {
  return Strides4{t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

bool is_channels_last(const at::Tensor& t) {
  // Channels innermost (stride 1), then columns (stride C): the strides torch gives a
  // channels_last tensor. Read from the strides alone with guard_or_false, not through
  // suggest_memory_format, which guards on the sizes (Eq(W, 0)) and so fails on unbacked
  // (data-dependent) sizes. Real and fake tensors take the same decision wherever it is
  // decidable, which it is for the strides torch computes (torch writes max(C, 1) there).
  const auto& st = t.sym_strides();
  const c10::SymInt one(1);
  return c10::guard_or_false(st[1].sym_eq(1), __FILE__, __LINE__) &&
      c10::guard_or_false(st[3].sym_eq(t.sym_size(1).max(one)), __FILE__, __LINE__);
}

at::Tensor empty_like_layout(c10::SymIntArrayRef sizes, const at::Tensor& like) {
  const auto format = is_channels_last(like) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  return at::empty_symint(sizes, like.options(), format);
}

at::Tensor ddf_empty_output(const SymSizes& s, const at::Tensor& input) {
  return empty_like_layout({s.B, s.C, s.Ho, s.Wo}, input);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ddf_empty_grads(
    const SymSizes& s,
    const at::Tensor& input,
    const at::Tensor& channel_filter,
    const at::Tensor& spatial_filter,
    std::array<bool, 3> output_mask) {
  at::Tensor gi, gc, gs;
  if (output_mask[0]) gi = empty_like_layout(input.sym_sizes(), input);
  // An expanded channel filter (stride 0) still gets a gradient of its full shape.
  if (output_mask[1]) gc = at::empty_symint(channel_filter.sym_sizes(), channel_filter.options());
  if (output_mask[2]) gs = empty_like_layout(spatial_filter.sym_sizes(), spatial_filter);
  return {gi, gc, gs};
}

}  // namespace ddf
