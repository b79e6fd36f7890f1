// CUDA kernels of ddf and ddf_backward, and the launches of each op: device code only.
//
// This header includes no torch and no CUDA runtime, so the same source compiles two ways:
//   - under nvcc, for the library (ddf_cuda.cu launches it on a stream);
//   - under the host emulator of tests/cuda_emulation (cuda_emulation.h, included first),
//     where block threads are OS threads and __syncthreads is a checked barrier; the tests
//     run it against a float64 reference, under ASan/UBSan and TSan, with shrunk grids.
// Anything used here that the emulator lacks fails to compile there: add it to the emulator
// (with its real semantics) before using it.
//
// One thread per element of the tensor being written, computing it with ddf_elementwise.h:
//   forward         out[b,c,y,x]        gathers its k*k taps
//   grad_input      gi[b,c,iy,ix]       gathers the output pixels whose taps read it
//   grad_spatial    gsf[b,h*kk+ij,y,x]  sums over the channels of head h
//   grad_channel    gcf[b,c,i,j]        one block reduces over all pixels (fixed tree)
// Every sum runs in a fixed order and no kernel uses atomics, so the backward is
// deterministic whatever torch.are_deterministic_algorithms_enabled() says.
//
// Consecutive threads take consecutive columns (coalesced for NCHW), blocks tile the rows
// of all planes (see for_each_pixel). Any strides are accepted (channels_last, slices,
// stride-0 expansions); offsets are 64-bit.
#pragma once

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
// Dynamic shared memory (the launch's shared_bytes), spelled so the emulator can provide it.
#define DDF_DYNAMIC_SHARED(type, name)                            \
  extern __shared__ __align__(16) unsigned char name##_bytes_[]; \
  type* name = reinterpret_cast<type*>(name##_bytes_)
// Static shared memory, spelled so that the emulator learns its size: a launch's static plus
// dynamic bytes must fit the per-block limit (48 KiB without an opt-in), and the emulator
// checks the sum. Declare it at the top of a kernel, before any branch.
#define DDF_STATIC_SHARED(type, name, count) __shared__ type name[count]
#elif !defined(DDF_CUDA_EMULATION)
#error "ddf_cuda_kernels.cuh is device code: compile it with nvcc, or include tests/cuda_emulation/cuda_emulation.h first"
#endif

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "../ddf_elementwise.h"
#include "../ddf_geometry.h"
#include "../ddf_scalar.h"
#include "ddf_cuda_grid_limits.h"

namespace ddf {

// The half types widen and narrow through the conversion intrinsics (round to nearest even).
template <>
struct ScalarConvert<__half> {
  static __host__ __device__ __forceinline__ float widen(__half v) { return __half2float(v); }
  static __host__ __device__ __forceinline__ __half narrow(float v) { return __float2half_rn(v); }
};
template <>
struct ScalarConvert<__nv_bfloat16> {
  static __host__ __device__ __forceinline__ float widen(__nv_bfloat16 v) { return __bfloat162float(v); }
  static __host__ __device__ __forceinline__ __nv_bfloat16 narrow(float v) { return __float2bfloat16_rn(v); }
};

namespace cuda {

// A zero of scalar_t; for the half types, all-zero bits.
template <typename scalar_t>
__device__ __forceinline__ scalar_t zero_value() {
  if constexpr (std::is_same_v<scalar_t, __half>) {
    return __ushort_as_half(0);
  } else if constexpr (std::is_same_v<scalar_t, __nv_bfloat16>) {
    return __ushort_as_bfloat16(0);
  } else {
    return scalar_t(0);
  }
}

// Loads that go out together are written in two phases: the guarded loads of raw values
// (`guard ? p[i] : zero_value<scalar_t>()`) into an array, then the widening of the array to
// float. Written as one phase (`guard ? widen(p[i]) : 0.f`), ptxas put each half or bfloat16
// value's conversion under its guard right after its load, reusing the register, so each load
// waited for the one before: one round trip to memory per value instead of one per batch.
// On an H200 that made the half-precision tiled kernels run at half the speed of the float32
// ones (Nsight Compute, 2026-12-04: 12.7 of 24 cycles per instruction waiting on L1TEX).
// float is unchanged (the widening is a copy).

constexpr int kThreads = 256;
constexpr int kReduceThreads = 256;

// Calls f(plane, row, col) for every element of planes x rows x cols. A block is a tile of
// (column, plane-row) pairs, plane-rows being all rows of all planes one after another, so
// narrow images (7 x 7) still fill every block; grid-stride loops cover any size.
template <typename F>
__device__ __forceinline__ void for_each_pixel(int64_t planes, int64_t rows, int64_t cols, F f) {
  const int64_t plane_rows = planes * rows;
  for (int64_t pr = blockIdx.y * int64_t(blockDim.y) + threadIdx.y; pr < plane_rows; pr += int64_t(gridDim.y) * blockDim.y) {
    const int64_t plane = pr / rows, row = pr % rows;
    for (int64_t col = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; col < cols; col += int64_t(gridDim.x) * blockDim.x) {
      f(plane, row, col);
    }
  }
}

// A tile as wide as the image (rounded up to a power of two, at most a warp) and as tall
// as the thread count allows, and the grid of such tiles.
struct PixelLaunch {
  dim3 grid, block;
  PixelLaunch(int64_t planes, int64_t rows, int64_t cols, const GridLimits& limits) {
    int tile_cols = 1;
    while (tile_cols < 32 && tile_cols < cols) tile_cols *= 2;
    const int tile_rows = kThreads / tile_cols;
    block = dim3(tile_cols, tile_rows);
    grid = dim3(
        static_cast<unsigned>(std::min(ceil_div(cols, tile_cols), limits.x)),
        static_cast<unsigned>(std::min(ceil_div(planes * rows, tile_rows), limits.y)));
  }
};

template <typename scalar_t, Combine M>
__global__ void forward_kernel(
    const scalar_t* __restrict__ x, Strides4 xs,
    const scalar_t* __restrict__ cf, Strides4 cs,
    const scalar_t* __restrict__ sf, Strides4 ss,
    scalar_t* __restrict__ out, Strides4 os,
    Geometry g) {
  for_each_pixel(g.B * g.C, g.Ho, g.Wo, [&](int64_t plane, int64_t y, int64_t xo) {
    const int64_t b = plane / g.C, c = plane % g.C;
    out[os.offset(b, c, y, xo)] = narrow<scalar_t>(forward_element<M>(x, xs, cf, cs, sf, ss, g, b, c, y, xo));
  });
}

template <typename scalar_t, Combine M>
__global__ void grad_input_kernel(
    const scalar_t* __restrict__ go, Strides4 gos,
    const scalar_t* __restrict__ cf, Strides4 cs,
    const scalar_t* __restrict__ sf, Strides4 ss,
    scalar_t* __restrict__ gi, Strides4 gis,
    Geometry g) {
  for_each_pixel(g.B * g.C, g.H, g.W, [&](int64_t plane, int64_t iy, int64_t ix) {
    const int64_t b = plane / g.C, c = plane % g.C;
    gi[gis.offset(b, c, iy, ix)] =
        narrow<scalar_t>(grad_input_element<M>(go, gos, cf, cs, sf, ss, g, b, c, iy, ix));
  });
}

template <typename scalar_t, Combine M>
__global__ void grad_spatial_kernel(
    const scalar_t* __restrict__ go, Strides4 gos,
    const scalar_t* __restrict__ x, Strides4 xs,
    const scalar_t* __restrict__ cf, Strides4 cs,
    scalar_t* __restrict__ gsf, Strides4 gss,
    Geometry g) {
  const int64_t kk = g.taps();
  for_each_pixel(g.B * g.G * kk, g.Ho, g.Wo, [&](int64_t plane, int64_t y, int64_t xo) {
    const int64_t b = plane / (g.G * kk), hij = plane % (g.G * kk), h = hij / kk, ij = hij % kk;
    gsf[gss.offset(b, hij, y, xo)] =
        narrow<scalar_t>(grad_spatial_element<M>(go, gos, x, xs, cf, cs, g, b, h, ij / g.k, ij % g.k, y, xo));
  });
}

// One block per (b, c, tap): a deterministic tree reduction over all output pixels.
template <typename scalar_t, Combine M>
__global__ void __launch_bounds__(kReduceThreads) grad_channel_kernel(
    const scalar_t* __restrict__ go, Strides4 gos,
    const scalar_t* __restrict__ x, Strides4 xs,
    const scalar_t* __restrict__ sf, Strides4 ss,
    scalar_t* __restrict__ gcf, Strides4 gcs,
    Geometry g) {
  using acc_t = typename AccType<scalar_t>::type;
  DDF_STATIC_SHARED(acc_t, partial, kReduceThreads);
  const int64_t kk = g.taps();
  for (int64_t task = blockIdx.x; task < g.B * g.C * kk; task += gridDim.x) {
    const int64_t b = task / (g.C * kk), c = task / kk % g.C, i = task % kk / g.k, j = task % g.k;
    acc_t acc = 0;
    for (int64_t p = threadIdx.x; p < g.Ho * g.Wo; p += blockDim.x) {
      acc += grad_channel_term<M>(go, gos, x, xs, sf, ss, g, b, c, i, j, p / g.Wo, p % g.Wo);
    }
    partial[threadIdx.x] = acc;
    __syncthreads();
    for (int stride = kReduceThreads / 2; stride > 0; stride /= 2) {
      if (threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
      __syncthreads();
    }
    // No barrier before the next task: after the reduction's last one, only thread 0 reads
    // partial[], and only partial[0], which no other thread writes (each writes its own slot).
    if (threadIdx.x == 0) gcf[gcs.offset(b, c, i, j)] = narrow<scalar_t>(partial[0]);
  }
}

// The generic launches of each op (ddf_cuda_launch.cuh picks them or the tiled kernels).
// `launch(kernel, grid, block, shared_bytes, args...)` is supplied
// by the caller: ddf_cuda.cu launches on the current CUDA stream, the emulator on host
// threads. Both run this code, so the emulated tests cover the launch geometry too. Nothing
// is launched for an empty result (a grid of 0 blocks is a launch error).

template <typename scalar_t, Combine M, typename Launch>
void launch_generic_forward(
    Launch&& launch, const GridLimits& limits,
    const scalar_t* x, Strides4 xs,
    const scalar_t* cf, Strides4 cs,
    const scalar_t* sf, Strides4 ss,
    scalar_t* out, Strides4 os,
    const Geometry& g) {
  if (g.B * g.C * g.Ho * g.Wo == 0) return;
  const PixelLaunch p(g.B * g.C, g.Ho, g.Wo, limits);
  launch(forward_kernel<scalar_t, M>, p.grid, p.block, 0, x, xs, cf, cs, sf, ss, out, os, g);
}

// Each gradient whose pointer is null is not computed (output_mask).
template <typename scalar_t, Combine M, typename Launch>
void launch_generic_backward(
    Launch&& launch, const GridLimits& limits,
    const scalar_t* go, Strides4 gos,
    const scalar_t* x, Strides4 xs,
    const scalar_t* cf, Strides4 cs,
    const scalar_t* sf, Strides4 ss,
    scalar_t* gi, Strides4 gis,
    scalar_t* gcf, Strides4 gcs,
    scalar_t* gsf, Strides4 gss,
    const Geometry& g) {
  const int64_t kk = g.taps();
  if (gi != nullptr && g.B * g.C * g.H * g.W > 0) {
    const PixelLaunch p(g.B * g.C, g.H, g.W, limits);
    launch(grad_input_kernel<scalar_t, M>, p.grid, p.block, 0, go, gos, cf, cs, sf, ss, gi, gis, g);
  }
  if (gsf != nullptr && g.B * g.G * kk * g.Ho * g.Wo > 0) {
    const PixelLaunch p(g.B * g.G * kk, g.Ho, g.Wo, limits);
    launch(grad_spatial_kernel<scalar_t, M>, p.grid, p.block, 0, go, gos, x, xs, cf, cs, gsf, gss, g);
  }
  if (gcf != nullptr && g.B * g.C * kk > 0) {
    const dim3 grid(static_cast<unsigned>(std::min(g.B * g.C * kk, limits.x)));
    launch(grad_channel_kernel<scalar_t, M>, grid, dim3(kReduceThreads), 0, go, gos, x, xs, sf, ss, gcf, gcs, g);
  }
}

}  // namespace cuda
}  // namespace ddf
