// The launches of ddf and ddf_backward: the tiled kernels when the call qualifies
// (ddf_cuda_tiled_plan.h), the generic kernels otherwise. Device-side code only (no torch, no
// CUDA runtime), shared by ddf_cuda.cu and the host emulator's tests.
//
// `launch(kernel, grid, block, shared_bytes, args...)` runs a kernel (on the current stream,
// or on the emulator); `workspace(floats)` returns device scratch memory for float partial
// sums that stays valid until the launched kernels have finished (the stream-ordered caching
// allocator, or a host vector). Nothing is launched for an empty result.
#pragma once

#include <type_traits>

#include "ddf_cuda_kernels.cuh"
#include "ddf_cuda_tiled_kernels.cuh"

namespace ddf {
namespace cuda {

// Which kernels ran: the tests assert that the tiled path is taken where it should be.
enum class Path { None, Generic, Tiled };
struct BackwardPaths {
  Path grad_input = Path::None, filter_grads = Path::None;
};

// Contiguous in NCHW order (dimensions of size 1 may have any stride, as in torch).
inline bool nchw_contiguous(const Strides4& st, int64_t N, int64_t C, int64_t H, int64_t W) {
  int64_t expected = 1;
  const int64_t sizes[4] = {N, C, H, W}, strides[4] = {st.n, st.c, st.h, st.w};
  for (int dim = 3; dim >= 0; --dim) {
    if (sizes[dim] != 1 && strides[dim] != expected) return false;
    expected *= sizes[dim];
  }
  return true;
}

template <typename scalar_t>
inline constexpr bool kTiledDtype = !std::is_same_v<scalar_t, double>;

// Calls f(std::integral_constant<int, K>, std::integral_constant<int, S>) for the plan's k and
// stride (the plan only takes k in {3, 5, 7} and stride in {1, 2}).
template <typename F>
void dispatch_tap_geometry(int64_t k, int64_t stride, F&& f) {
  using std::integral_constant;
  const bool s1 = stride == 1;
  switch (k) {
    case 3: return s1 ? f(integral_constant<int, 3>(), integral_constant<int, 1>())
                      : f(integral_constant<int, 3>(), integral_constant<int, 2>());
    case 5: return s1 ? f(integral_constant<int, 5>(), integral_constant<int, 1>())
                      : f(integral_constant<int, 5>(), integral_constant<int, 2>());
    default: return s1 ? f(integral_constant<int, 7>(), integral_constant<int, 1>())
                       : f(integral_constant<int, 7>(), integral_constant<int, 2>());
  }
}

inline dim3 grid_of(const tiled::TiledPlan& p) { return dim3(p.grid_x, p.grid_y, p.grid_z); }
inline dim3 block_of(const tiled::TiledPlan& p) { return dim3(p.block_x, p.block_y, p.block_z); }

// A 1-D grid-stride launch over n elements.
inline dim3 flat_grid(int64_t n, const GridLimits& limits) {
  return dim3(static_cast<unsigned>(std::min(ceil_div(n, int64_t(kThreads)), limits.x)));
}

template <typename scalar_t, Combine M, typename Launch>
Path launch_forward(
    Launch&& launch, const GridLimits& limits,
    const scalar_t* x, Strides4 xs,
    const scalar_t* cf, Strides4 cs,
    const scalar_t* sf, Strides4 ss,
    scalar_t* out, Strides4 os,
    const Geometry& g) {
  if (g.B * g.C * g.Ho * g.Wo == 0) return Path::None;
  const bool contiguous = nchw_contiguous(xs, g.B, g.C, g.H, g.W) &&
      nchw_contiguous(ss, g.B, g.G * g.taps(), g.Ho, g.Wo) && nchw_contiguous(os, g.B, g.C, g.Ho, g.Wo);
  const tiled::TiledPlan p =
      tiled::plan_tiled(tiled::Kernel::Forward, g, contiguous, kTiledDtype<scalar_t>, limits.x, limits.y, limits.target_blocks);
  if constexpr (kTiledDtype<scalar_t>) {
    if (p.use) {
      dispatch_tap_geometry(g.k, g.stride, [&](auto K, auto S) {
        launch(tiled::tiled_forward_kernel<scalar_t, M, K.value, S.value>, grid_of(p), block_of(p), p.shared_bytes,
               x, cf, cs, sf, out, p.g);
      });
      return Path::Tiled;
    }
  }
  launch_generic_forward<scalar_t, M>(launch, limits, x, xs, cf, cs, sf, ss, out, os, g);
  return Path::Generic;
}

// Each gradient whose pointer is null is not computed (output_mask).
template <typename scalar_t, Combine M, typename Launch, typename Workspace>
BackwardPaths launch_backward(
    Launch&& launch, Workspace&& workspace, const GridLimits& limits,
    const scalar_t* go, Strides4 gos,
    const scalar_t* x, Strides4 xs,
    const scalar_t* cf, Strides4 cs,
    const scalar_t* sf, Strides4 ss,
    scalar_t* gi, Strides4 gis,
    scalar_t* gcf, Strides4 gcs,
    scalar_t* gsf, Strides4 gss,
    const Geometry& g) {
  BackwardPaths paths;
  const int64_t kk = g.taps();
  const bool inputs_contiguous = nchw_contiguous(gos, g.B, g.C, g.Ho, g.Wo) &&
      nchw_contiguous(xs, g.B, g.C, g.H, g.W) && nchw_contiguous(ss, g.B, g.G * kk, g.Ho, g.Wo);
  const Strides4 none{0, 0, 0, 0};

  if (gi != nullptr && g.B * g.C * g.H * g.W > 0) {
    const tiled::TiledPlan p = tiled::plan_tiled(tiled::Kernel::GradInput, g,
                                                 inputs_contiguous && nchw_contiguous(gis, g.B, g.C, g.H, g.W),
                                                 kTiledDtype<scalar_t>, limits.x, limits.y, limits.target_blocks);
    paths.grad_input = Path::Generic;
    if constexpr (kTiledDtype<scalar_t>) {
      if (p.use) {
        dispatch_tap_geometry(g.k, g.stride, [&](auto K, auto S) {
          launch(tiled::tiled_grad_input_kernel<scalar_t, M, K.value, S.value>, grid_of(p), block_of(p),
                 p.shared_bytes, go, cf, cs, sf, gi, p.g);
        });
        paths.grad_input = Path::Tiled;
      }
    }
    if (paths.grad_input == Path::Generic) {
      launch_generic_backward<scalar_t, M>(launch, limits, go, gos, x, xs, cf, cs, sf, ss, gi, gis, nullptr, none,
                                           nullptr, none, g);
    }
  }

  const bool want_channel = gcf != nullptr && g.B * g.C * kk > 0;
  const bool want_spatial = gsf != nullptr && g.B * g.G * kk * g.Ho * g.Wo > 0;
  if (!want_channel && !want_spatial) return paths;
  const tiled::TiledPlan p = tiled::plan_tiled(tiled::Kernel::FilterGrads, g, inputs_contiguous,
                                               kTiledDtype<scalar_t>, limits.x, limits.y, limits.target_blocks);
  paths.filter_grads = Path::Generic;
  if constexpr (kTiledDtype<scalar_t>) {
    if (p.use) {
      // A map of one tile needs no partial sums: the kernel writes grad_channel_filter.
      const bool one_tile = p.grid_x == 1;
      float* channel_partial = want_channel && !one_tile ? workspace(p.channel_partials) : nullptr;
      scalar_t* channel_direct = want_channel && one_tile ? gcf : nullptr;
      const int64_t spatial_count = g.B * g.G * kk * g.Ho * g.Wo;
      // One split per head and a contiguous result: the kernel writes grad_spatial_filter itself.
      const bool direct = p.g.splits == 1 && nchw_contiguous(gss, g.B, g.G * kk, g.Ho, g.Wo);
      float* spatial_partial = want_spatial && !direct ? workspace(p.g.splits * spatial_count) : nullptr;
      scalar_t* spatial_direct = want_spatial && direct ? gsf : nullptr;
      dispatch_tap_geometry(g.k, g.stride, [&](auto K, auto S) {
        launch(tiled::tiled_filter_grads_kernel<scalar_t, M, K.value, S.value, tiled::filter_grad_rows(K.value)>,
               grid_of(p), block_of(p), p.shared_bytes, go, x, cf, cs, sf, channel_partial, channel_direct, gcs, spatial_direct,
               spatial_partial, p.g);
      });
      if (channel_partial != nullptr) {
        const int64_t count = g.B * g.C * kk;
        launch(tiled::sum_channel_partials_kernel<scalar_t>, flat_grid(count, limits), dim3(kThreads), 0,
               static_cast<const float*>(channel_partial), int64_t(p.grid_x), g.C, g.k, gcf, gcs, count);
      }
      if (spatial_partial != nullptr) {
        launch(tiled::sum_spatial_partials_kernel<scalar_t>, flat_grid(spatial_count, limits), dim3(kThreads), 0,
               static_cast<const float*>(spatial_partial), int64_t(p.g.splits), g.G * kk, g.Ho, g.Wo, gsf, gss,
               spatial_count);
      }
      paths.filter_grads = Path::Tiled;
    }
  }
  if (paths.filter_grads == Path::Generic) {
    launch_generic_backward<scalar_t, M>(launch, limits, go, gos, x, xs, cf, cs, sf, ss, nullptr, none,
                                         want_channel ? gcf : nullptr, gcs, want_spatial ? gsf : nullptr, gss, g);
  }
  return paths;
}

}  // namespace cuda
}  // namespace ddf
