// The launches of ddf and ddf_backward: the kernels that ddf_cuda_paths.h chooses (NCHW tiled,
// channels_last tiled, or generic). Device-side code only (no torch, no CUDA runtime), shared
// by ddf_cuda.cu and the host emulator's tests.
//
// `launch(kernel, grid, block, shared_bytes, args...)` runs a kernel (on the current stream,
// or on the emulator); `workspace(floats)` returns device scratch memory for float partial
// sums that stays valid until the launched kernels have finished (the stream-ordered caching
// allocator, or a host vector). Nothing is launched for an empty result.
#pragma once

#include <cstdint>
#include <type_traits>

#include "ddf_cuda_kernels.cuh"
#include "ddf_cuda_nhwc_backward_kernels.cuh"
#include "ddf_cuda_nhwc_kernels.cuh"
#include "ddf_cuda_paths.h"
#include "ddf_cuda_tiled_kernels.cuh"

namespace ddf {
namespace cuda {

struct BackwardPaths {
  Path grad_input = Path::None, filter_grads = Path::None;
};

// A data pointer the NHWC kernels may read or write in 16-byte vectors (a view that starts
// part-way into a pixel's channels is not).
template <typename T>
inline bool vector_aligned(const T* p) {
  return reinterpret_cast<std::uintptr_t>(p) % nhwc::kVectorBytes == 0;
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
inline dim3 grid_of(const nhwc::NhwcPlan& p) { return dim3(p.grid_x, p.grid_y, p.grid_z); }
inline dim3 block_of(const nhwc::NhwcPlan& p) { return dim3(p.block_x); }

// Calls f(std::integral_constant<int, K>, std::integral_constant<int, S>,
// std::integral_constant<int, V>) for an NHWC plan's k, stride and channels per thread.
template <typename scalar_t, typename F>
void dispatch_nhwc(const Geometry& g, const nhwc::NhwcPlan& p, F&& f) {
  constexpr int kVector = nhwc::kVectorBytes / int(sizeof(scalar_t));
  dispatch_tap_geometry(g.k, g.stride, [&](auto K, auto S) {
    if (p.vector == 1) {
      f(K, S, std::integral_constant<int, 1>());
    } else {
      f(K, S, std::integral_constant<int, kVector>());
    }
  });
}

// A 1-D grid-stride launch over n elements.
inline dim3 flat_grid(int64_t n, const GridLimits& limits) {
  return dim3(static_cast<unsigned>(std::min(ceil_div(n, int64_t(kThreads)), limits.x)));
}

// The fixed-order sums of the filter-gradient kernels' float partials (NCHW tiled and
// channels_last alike), each launched only where its partials exist: grad_channel_filter over
// `tiles` per-tile partials, grad_spatial_filter over `splits` per-block partials.
template <typename scalar_t, typename Launch>
void launch_partial_sums(Launch&& launch, const GridLimits& limits, const float* channel_partial, int64_t tiles,
                         scalar_t* gcf, Strides4 gcs, const float* spatial_partial, int64_t splits, scalar_t* gsf,
                         Strides4 gss, const Geometry& g) {
  const int64_t kk = g.taps();
  if (channel_partial != nullptr) {
    const int64_t count = g.B * g.C * kk;
    launch(tiled::sum_channel_partials_kernel<scalar_t>, flat_grid(count, limits), dim3(kThreads), 0, channel_partial,
           tiles, g.C, g.k, gcf, gcs, count);
  }
  if (spatial_partial != nullptr) {
    const int64_t count = g.B * g.G * kk * g.Ho * g.Wo;
    launch(tiled::sum_spatial_partials_kernel<scalar_t>, flat_grid(count, limits), dim3(kThreads), 0, spatial_partial,
           splits, g.G * kk, g.Ho, g.Wo, gsf, gss, count);
  }
}

template <typename scalar_t, Combine M, typename Launch>
Path launch_forward(
    Launch&& launch, const GridLimits& limits,
    const scalar_t* x, Strides4 xs,
    const scalar_t* cf, Strides4 cs,
    const scalar_t* sf, Strides4 ss,
    scalar_t* out, Strides4 os,
    const Geometry& g) {
  const ForwardChoice c = choose_forward(
      g, xs, ss, os, CallFacts{kTiledDtype<scalar_t>, int(sizeof(scalar_t)), vector_aligned(x) && vector_aligned(out)},
      limits);
  if (c.path == Path::None) return Path::None;
  if constexpr (kTiledDtype<scalar_t>) {
    if (c.path == Path::Tiled) {
      const tiled::TiledPlan& p = c.tiled;
      dispatch_tap_geometry(g.k, g.stride, [&](auto K, auto S) {
        launch(tiled::tiled_forward_kernel<scalar_t, M, K.value, S.value>, grid_of(p), block_of(p), p.shared_bytes,
               x, cf, cs, sf, out, p.g);
      });
      return Path::Tiled;
    }
    if (c.path == Path::TiledNhwc) {
      const nhwc::NhwcPlan& q = c.nhwc;
      dispatch_nhwc<scalar_t>(g, q, [&](auto K, auto S, auto V) {
        launch(nhwc::nhwc_forward_kernel<scalar_t, M, K.value, S.value, V.value>, grid_of(q), block_of(q),
               q.shared_bytes, x, cf, cs, sf, out, q.g);
      });
      return Path::TiledNhwc;
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
  const int64_t kk = g.taps();
  const bool want_channel = gcf != nullptr && g.B * g.C * kk > 0;
  const bool want_spatial = gsf != nullptr && g.B * g.G * kk * g.Ho * g.Wo > 0;
  const bool aligned = vector_aligned(go) && vector_aligned(x) && (gi == nullptr || vector_aligned(gi));
  const BackwardChoice c = choose_backward(g, gos, xs, ss, gis, gi != nullptr && g.B * g.C * g.H * g.W > 0,
                                           want_channel || want_spatial,
                                           CallFacts{kTiledDtype<scalar_t>, int(sizeof(scalar_t)), aligned}, limits);
  const BackwardPaths paths{c.grad_input, c.filter_grads};
  const Strides4 none{0, 0, 0, 0};

  if constexpr (kTiledDtype<scalar_t>) {
    if (paths.grad_input == Path::Tiled) {
      const tiled::TiledPlan& p = c.grad_input_plan;
      dispatch_tap_geometry(g.k, g.stride, [&](auto K, auto S) {
        launch(tiled::tiled_grad_input_kernel<scalar_t, M, K.value, S.value>, grid_of(p), block_of(p),
               p.shared_bytes, go, cf, cs, sf, gi, p.g);
      });
    }
  }
  if constexpr (kTiledDtype<scalar_t>) {
    if (paths.grad_input == Path::TiledNhwc) {
      const nhwc::NhwcPlan& q = c.grad_input_nhwc;
      dispatch_nhwc<scalar_t>(g, q, [&](auto K, auto S, auto V) {
        launch(nhwc::nhwc_grad_input_kernel<scalar_t, M, K.value, S.value, V.value>, grid_of(q), block_of(q),
               q.shared_bytes, go, cf, cs, sf, gi, q.g);
      });
    }
  }
  if (paths.grad_input == Path::Generic) {
    launch_generic_backward<scalar_t, M>(launch, limits, go, gos, x, xs, cf, cs, sf, ss, gi, gis, nullptr, none,
                                         nullptr, none, g);
  }

  if constexpr (kTiledDtype<scalar_t>) {
    if (paths.filter_grads == Path::Tiled) {
      const tiled::TiledPlan& p = c.filter_grads_plan;
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
      launch_partial_sums(launch, limits, channel_partial, int64_t(p.grid_x), gcf, gcs, spatial_partial,
                          int64_t(p.g.splits), gsf, gss, g);
    }
  }
  if constexpr (kTiledDtype<scalar_t>) {
    if (paths.filter_grads == Path::TiledNhwc) {
      const nhwc::NhwcPlan& q = c.filter_grads_nhwc;
      // Partial sums: grad_channel_filter per tile unless the map is one tile;
      // grad_spatial_filter per block of a head unless each head is in one block (and the
      // result's planes take 32-bit offsets).
      const bool one_tile = q.grid_x == 1;
      const bool one_block = q.g.head_blocks == 1 && nhwc::spatial_plane_fits(gss, g.Ho, g.Wo);
      const int64_t channel_count = g.B * g.C * kk, spatial_count = g.B * g.G * kk * g.Ho * g.Wo;
      float* channel_partial = want_channel && !one_tile ? workspace(q.grid_x * channel_count) : nullptr;
      float* spatial_partial = want_spatial && !one_block ? workspace(q.g.head_blocks * spatial_count) : nullptr;
      scalar_t* channel_direct = want_channel && one_tile ? gcf : nullptr;
      scalar_t* spatial_direct = want_spatial && one_block ? gsf : nullptr;
      dispatch_nhwc<scalar_t>(g, q, [&](auto K, auto S, auto V) {
        launch(nhwc::nhwc_filter_grads_kernel<scalar_t, M, K.value, S.value, V.value>, grid_of(q), block_of(q),
               q.shared_bytes, go, x, cf, cs, sf, channel_partial, channel_direct, gcs, spatial_partial,
               spatial_direct, gss, q.g);
      });
      launch_partial_sums(launch, limits, channel_partial, int64_t(q.grid_x), gcf, gcs, spatial_partial,
                          int64_t(q.g.head_blocks), gsf, gss, g);
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
