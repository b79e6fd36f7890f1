// C++ test of the ddf library, built by CMake and run by `make test` (ctest).
//
// 1. libtorch users: the ops work through the dispatcher (forward, backward op, autograd)
//    from a program that only links libddf_ops.so.
// 2. The CUDA kernels' per-element math (ddf_elementwise.h) runs here on the host and
//    must agree with the CPU kernels, so it is tested on machines without a GPU.
// 3. Bad input throws a c10::Error naming the argument.
#include <torch/torch.h>

#include <cstdio>
#include <string>

#include "ddf_op_calls.h"
#include "ddf_elementwise.h"

namespace {

int failures = 0;

void expect(bool ok, const std::string& what) {
  if (!ok) {
    ++failures;
    std::fprintf(stderr, "FAILED: %s\n", what.c_str());
  }
}

void expect_close(const at::Tensor& got, const at::Tensor& expected, const std::string& what) {
  const bool ok = got.sizes() == expected.sizes() && at::allclose(got, expected, 1e-10, 1e-10);
  expect(ok, what + (ok ? "" : " (max abs diff " + std::to_string((got - expected).abs().max().item<double>()) + ")"));
}

struct Case {
  int64_t B, C, H, W, k, G, stride, dilation;
  const char* combine;
  bool channels_last;
};

std::string name(const Case& c) {
  char buf[160];
  std::snprintf(
      buf, sizeof(buf), "B=%ld C=%ld H=%ld W=%ld k=%ld G=%ld s=%ld d=%ld %s%s", (long)c.B, (long)c.C, (long)c.H,
      (long)c.W, (long)c.k, (long)c.G, (long)c.stride, (long)c.dilation, c.combine,
      c.channels_last ? " channels_last" : "");
  return buf;
}

// Every element of the three results, computed with the functions the CUDA kernels run.
template <ddf::Combine M>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> elementwise(
    const at::Tensor& go, const at::Tensor& x, const at::Tensor& cf, const at::Tensor& sf, const ddf::Geometry& g) {
  auto strides = [](const at::Tensor& t) { return ddf::Strides4{t.stride(0), t.stride(1), t.stride(2), t.stride(3)}; };
  const auto gos = strides(go), xs = strides(x), cs = strides(cf), ss = strides(sf);
  const double *gop = go.const_data_ptr<double>(), *xp = x.const_data_ptr<double>(),
               *cfp = cf.const_data_ptr<double>(), *sfp = sf.const_data_ptr<double>();
  auto out = at::zeros({g.B, g.C, g.Ho, g.Wo}, x.options());
  auto gi = at::zeros_like(x, at::MemoryFormat::Contiguous);
  auto gcf = at::zeros({g.B, g.C, g.k, g.k}, x.options());
  auto gsf = at::zeros({g.B, g.G * g.k * g.k, g.Ho, g.Wo}, x.options());
  auto o = out.accessor<double, 4>();
  auto a_gi = gi.accessor<double, 4>();
  auto a_gcf = gcf.accessor<double, 4>();
  auto a_gsf = gsf.accessor<double, 4>();
  for (int64_t b = 0; b < g.B; ++b) {
    for (int64_t c = 0; c < g.C; ++c) {
      for (int64_t y = 0; y < g.Ho; ++y) {
        for (int64_t xo = 0; xo < g.Wo; ++xo) {
          o[b][c][y][xo] = ddf::forward_element<M>(xp, xs, cfp, cs, sfp, ss, g, b, c, y, xo);
          for (int64_t i = 0; i < g.k; ++i) {
            for (int64_t j = 0; j < g.k; ++j) {
              a_gcf[b][c][i][j] += ddf::grad_channel_term<M>(gop, gos, xp, xs, sfp, ss, g, b, c, i, j, y, xo);
            }
          }
        }
      }
      for (int64_t iy = 0; iy < g.H; ++iy) {
        for (int64_t ix = 0; ix < g.W; ++ix) {
          a_gi[b][c][iy][ix] = ddf::grad_input_element<M>(gop, gos, cfp, cs, sfp, ss, g, b, c, iy, ix);
        }
      }
    }
    for (int64_t h = 0; h < g.G; ++h) {
      for (int64_t i = 0; i < g.k; ++i) {
        for (int64_t j = 0; j < g.k; ++j) {
          for (int64_t y = 0; y < g.Ho; ++y) {
            for (int64_t xo = 0; xo < g.Wo; ++xo) {
              a_gsf[b][h * g.k * g.k + i * g.k + j][y][xo] =
                  ddf::grad_spatial_element<M>(gop, gos, xp, xs, cfp, cs, g, b, h, i, j, y, xo);
            }
          }
        }
      }
    }
  }
  return {out, gi, gcf, gsf};
}

void test_case(const Case& c) {
  const auto opts = at::TensorOptions().dtype(at::kDouble);
  const int64_t Ho = (c.H + c.stride - 1) / c.stride, Wo = (c.W + c.stride - 1) / c.stride;
  auto layout = [&](at::Tensor t) { return c.channels_last ? t.contiguous(at::MemoryFormat::ChannelsLast) : t; };
  const auto x = layout(at::randn({c.B, c.C, c.H, c.W}, opts));
  const auto cf = layout(at::randn({c.B, c.C, c.k, c.k}, opts));
  const auto sf = layout(at::randn({c.B, c.G * c.k * c.k, Ho, Wo}, opts));
  const auto go = layout(at::randn({c.B, c.C, Ho, Wo}, opts));
  const ddf::Geometry g{c.B, c.C, c.H, c.W, c.k, c.G, Ho, Wo, c.stride, c.dilation};

  const auto out = ddf::call_ddf(x, cf, sf, c.stride, c.dilation, c.combine);
  const auto [gi, gcf, gsf] = ddf::call_ddf_backward(go, x, cf, sf, c.stride, c.dilation, c.combine, {true, true, true});
  const auto expected = std::string(c.combine) == "mul" ? elementwise<ddf::Combine::Mul>(go, x, cf, sf, g)
                                                        : elementwise<ddf::Combine::Add>(go, x, cf, sf, g);
  expect_close(out, std::get<0>(expected), "forward " + name(c));
  expect_close(gi, std::get<1>(expected), "grad_input " + name(c));
  expect_close(gcf, std::get<2>(expected), "grad_channel_filter " + name(c));
  expect_close(gsf, std::get<3>(expected), "grad_spatial_filter " + name(c));

  // Autograd from C++: the library registered it; backward() reaches every input.
  const auto xa = x.detach().requires_grad_(), cfa = cf.detach().requires_grad_(), sfa = sf.detach().requires_grad_();
  (ddf::call_ddf(xa, cfa, sfa, c.stride, c.dilation, c.combine) * go).sum().backward();
  expect_close(xa.grad(), gi, "autograd input " + name(c));
  expect_close(cfa.grad(), gcf, "autograd channel_filter " + name(c));
  expect_close(sfa.grad(), gsf, "autograd spatial_filter " + name(c));
}

void test_bad_input() {
  const auto x = at::randn({2, 4, 7, 6});
  const auto cf = at::randn({2, 4, 4, 4});
  const auto sf = at::randn({2, 16, 7, 6});
  try {
    ddf::call_ddf(x, cf, sf, 1, 1, "mul");
    expect(false, "an even kernel size must throw");
  } catch (const c10::Error& e) {
    const std::string msg = e.what_without_backtrace();
    expect(msg.find("odd kernel size k = channel_filter.size(2) >= 1, but got k = 4") != std::string::npos,
           "even kernel message: " + msg);
  }
}

}  // namespace

int main() {
  at::manual_seed(0);
  auto& dispatcher = c10::Dispatcher::singleton();
  expect(dispatcher.findSchema({"ddf::ddf", ""}).has_value(), "ddf::ddf is registered");
  expect(dispatcher.findSchema({"ddf::ddf_backward", ""}).has_value(), "ddf::ddf_backward is registered");

  const Case cases[] = {
      {2, 4, 7, 9, 3, 1, 1, 1, "mul", false}, {2, 4, 8, 5, 3, 2, 2, 1, "add", false},
      {1, 6, 9, 7, 5, 3, 3, 2, "mul", true},  {2, 4, 2, 3, 7, 4, 1, 3, "mul", false},
      {1, 2, 6, 6, 1, 1, 2, 1, "add", true},  {2, 6, 11, 10, 3, 6, 2, 2, "add", false},
  };
  int n = 0;
  for (const Case& c : cases) {
    test_case(c);
    ++n;
  }
  test_bad_input();
  if (failures == 0) std::printf("ddf_cpp_test: %d cases passed\n", n);
  return failures == 0 ? 0 : 1;
}
