// CUDA kernels of ddf and ddf_backward.
//
// One thread per element of the tensor being written, computing it with ddf_elementwise.h
// (which the C++ test also runs on the host against the CPU kernels):
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
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "../ddf_checks.h"
#include "../ddf_kernel_dispatch.h"
#include "../ddf_elementwise.h"

namespace ddf {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kReduceThreads = 256;
constexpr int64_t kMaxGridY = 65535;

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
  PixelLaunch(int64_t planes, int64_t rows, int64_t cols) {
    int tile_cols = 1;
    while (tile_cols < 32 && tile_cols < cols) tile_cols *= 2;
    const int tile_rows = kThreads / tile_cols;
    block = dim3(tile_cols, tile_rows);
    grid = dim3(
        static_cast<unsigned>(std::min<int64_t>(ceil_div(cols, tile_cols), int64_t(1) << 30)),
        static_cast<unsigned>(std::min(ceil_div(planes * rows, tile_rows), kMaxGridY)));
  }
};

template <typename scalar_t, Combine M>
__global__ void forward_kernel(
    const scalar_t* __restrict__ x, Strides4 xs,
    const scalar_t* __restrict__ cf, Strides4 cs,
    const scalar_t* __restrict__ sf, Strides4 ss,
    scalar_t* __restrict__ out, Strides4 os,
    Geometry g) {
  using acc_t = typename AccType<scalar_t>::type;
  for_each_pixel(g.B * g.C, g.Ho, g.Wo, [&](int64_t plane, int64_t y, int64_t xo) {
    const int64_t b = plane / g.C, c = plane % g.C;
    out[os.offset(b, c, y, xo)] =
        static_cast<scalar_t>(forward_element<M, acc_t>(x, xs, cf, cs, sf, ss, g, b, c, y, xo));
  });
}

template <typename scalar_t, Combine M>
__global__ void grad_input_kernel(
    const scalar_t* __restrict__ go, Strides4 gos,
    const scalar_t* __restrict__ cf, Strides4 cs,
    const scalar_t* __restrict__ sf, Strides4 ss,
    scalar_t* __restrict__ gi, Strides4 gis,
    Geometry g) {
  using acc_t = typename AccType<scalar_t>::type;
  for_each_pixel(g.B * g.C, g.H, g.W, [&](int64_t plane, int64_t iy, int64_t ix) {
    const int64_t b = plane / g.C, c = plane % g.C;
    gi[gis.offset(b, c, iy, ix)] =
        static_cast<scalar_t>(grad_input_element<M, acc_t>(go, gos, cf, cs, sf, ss, g, b, c, iy, ix));
  });
}

template <typename scalar_t, Combine M>
__global__ void grad_spatial_kernel(
    const scalar_t* __restrict__ go, Strides4 gos,
    const scalar_t* __restrict__ x, Strides4 xs,
    const scalar_t* __restrict__ cf, Strides4 cs,
    scalar_t* __restrict__ gsf, Strides4 gss,
    Geometry g) {
  using acc_t = typename AccType<scalar_t>::type;
  const int64_t kk = g.taps();
  for_each_pixel(g.B * g.G * kk, g.Ho, g.Wo, [&](int64_t plane, int64_t y, int64_t xo) {
    const int64_t b = plane / (g.G * kk), hij = plane % (g.G * kk), h = hij / kk, ij = hij % kk;
    gsf[gss.offset(b, hij, y, xo)] = static_cast<scalar_t>(
        grad_spatial_element<M, acc_t>(go, gos, x, xs, cf, cs, g, b, h, ij / g.k, ij % g.k, y, xo));
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
  __shared__ acc_t partial[kReduceThreads];
  const int64_t kk = g.taps();
  for (int64_t task = blockIdx.x; task < g.B * g.C * kk; task += gridDim.x) {
    const int64_t b = task / (g.C * kk), c = task / kk % g.C, i = task % kk / g.k, j = task % g.k;
    acc_t acc = 0;
    for (int64_t p = threadIdx.x; p < g.Ho * g.Wo; p += blockDim.x) {
      acc += grad_channel_term<M, acc_t>(go, gos, x, xs, sf, ss, g, b, c, i, j, p / g.Wo, p % g.Wo);
    }
    partial[threadIdx.x] = acc;
    __syncthreads();
    for (int stride = kReduceThreads / 2; stride > 0; stride /= 2) {
      if (threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
      __syncthreads();
    }
    if (threadIdx.x == 0) gcf[gcs.offset(b, c, i, j)] = static_cast<scalar_t>(partial[0]);
    __syncthreads();  // partial[] is reused by the next task of this block
  }
}

template <typename scalar_t>
const scalar_t* in(const at::Tensor& t) {
  return t.const_data_ptr<scalar_t>();
}

at::Tensor ddf_cuda(
    const at::Tensor& input,
    const at::Tensor& channel_filter,
    const at::Tensor& spatial_filter,
    int64_t stride,
    int64_t dilation,
    c10::string_view combine) {
  const SymSizes sizes = check_ddf_args(input, channel_filter, spatial_filter, stride, dilation, combine);
  const Geometry g = concrete_geometry(sizes, stride, dilation);
  const c10::cuda::CUDAGuard device_guard(input.device());
  at::Tensor out = ddf_empty_output(sizes, input);
  if (out.numel() == 0) return out;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  dispatch_dtype_and_combine(input.scalar_type(), parse_combine(combine), [&](auto tag, auto m) {
    using scalar_t = decltype(tag);
    const PixelLaunch launch(g.B * g.C, g.Ho, g.Wo);
    forward_kernel<scalar_t, decltype(m)::value><<<launch.grid, launch.block, 0, stream>>>(
            in<scalar_t>(input), strides_of(input), in<scalar_t>(channel_filter), strides_of(channel_filter),
            in<scalar_t>(spatial_filter), strides_of(spatial_filter), out.mutable_data_ptr<scalar_t>(),
            strides_of(out), g);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ddf_backward_cuda(
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
  const c10::cuda::CUDAGuard device_guard(input.device());
  auto [grad_in, grad_cf, grad_sf] = ddf_empty_grads(sizes, input, channel_filter, spatial_filter, output_mask);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  dispatch_dtype_and_combine(input.scalar_type(), parse_combine(combine), [&](auto tag, auto m) {
    using scalar_t = decltype(tag);
    constexpr Combine M = decltype(m)::value;
    const Strides4 gos = strides_of(grad_output), xs = strides_of(input), cs = strides_of(channel_filter),
                   ss = strides_of(spatial_filter);
    if (grad_in.defined() && grad_in.numel() > 0) {
      const PixelLaunch launch(g.B * g.C, g.H, g.W);
      grad_input_kernel<scalar_t, M><<<launch.grid, launch.block, 0, stream>>>(
          in<scalar_t>(grad_output), gos, in<scalar_t>(channel_filter), cs, in<scalar_t>(spatial_filter), ss,
          grad_in.mutable_data_ptr<scalar_t>(), strides_of(grad_in), g);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    if (grad_sf.defined() && grad_sf.numel() > 0) {
      const PixelLaunch launch(g.B * g.G * g.taps(), g.Ho, g.Wo);
      grad_spatial_kernel<scalar_t, M><<<launch.grid, launch.block, 0, stream>>>(
          in<scalar_t>(grad_output), gos, in<scalar_t>(input), xs, in<scalar_t>(channel_filter), cs,
          grad_sf.mutable_data_ptr<scalar_t>(), strides_of(grad_sf), g);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    if (grad_cf.defined() && grad_cf.numel() > 0) {
      const int64_t blocks = std::min<int64_t>(g.B * g.C * g.taps(), int64_t(1) << 30);
      grad_channel_kernel<scalar_t, M><<<static_cast<unsigned>(blocks), kReduceThreads, 0, stream>>>(
          in<scalar_t>(grad_output), gos, in<scalar_t>(input), xs, in<scalar_t>(spatial_filter), ss,
          grad_cf.mutable_data_ptr<scalar_t>(), strides_of(grad_cf), g);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {grad_in, grad_cf, grad_sf};
}

}  // namespace

TORCH_LIBRARY_IMPL(ddf, CUDA, m) {
  m.impl("ddf", &ddf_cuda);
  m.impl("ddf_backward", &ddf_backward_cuda);
}

}  // namespace cuda
}  // namespace ddf
