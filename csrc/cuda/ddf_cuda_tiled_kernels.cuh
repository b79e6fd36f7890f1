// The tiled CUDA kernels: the fast path for contiguous NCHW, k in {3,5,7} (compile time),
// stride 1 or 2 (compile time), any dilation, float32/float16/bfloat16, 32-bit indexing.
// ddf_cuda_tiled_plan.h says which calls qualify and sizes every launch; everything else
// runs the generic kernels of ddf_cuda_kernels.cuh. Device code only, like that header, so
// the host emulator (tests/cuda_emulation) runs this same source.
//
// A block covers (batch b, head h, a split of the head's channels, a spatial tile). Its
// threads are (tx, ty) pixels x tz channel lanes; each lane walks its channels of the split.
//
//   forward      tile of outputs. Each thread reads its pixel's k*k spatial-filter taps once
//                into registers and reuses them for every channel. Per channel the lane
//                stages the input tile and halo (zero outside the image) and the k*k
//                channel-filter values in shared memory, as float.
//   grad_input   tile of inputs, a gather: the head's k*k spatial-filter planes over the
//                grad_output tile and halo are staged once per block, grad_output per channel.
//   filter grads tile of outputs, one pass over grad_output and the staged input for both
//                filter gradients. grad_spatial_filter sums over channels in registers (the
//                lanes combine in shared memory at the end, in lane order); grad_channel_filter
//                sums over pixels: per thread, then a fixed warp-shuffle tree, then the warps
//                in order into a per-tile partial; a second kernel adds the tiles in order.
//                When a head's channels are split over blocks, each split writes a partial
//                grad_spatial_filter and a second kernel adds the splits in order.
// No atomics, fixed orders everywhere: the backward is bitwise deterministic.
//
// Non-finite values. Staged tiles hold 0 outside the image, so a tap that falls outside
// computes 0 * F. That is 0 unless F is not finite, which must not leak into results that do
// not depend on the value (conv2d's rule): the spatial-filter registers are 0 at such taps,
// a block checks its channel-filter values once per channel and, if one is not finite, takes
// a loop that skips the outside taps, and the filter-gradient kernel does the same per
// grad_output value. Finite inputs never pay for the checks in the inner loops.
#pragma once

#include "ddf_cuda_kernels.cuh"
#include "ddf_cuda_tiled_plan.h"

namespace ddf {
namespace cuda {
namespace tiled {

__device__ __forceinline__ bool is_finite(float v) { return v - v == 0.f; }  // false for inf and NaN

// Where a block works: batch, head, the first map row/column of its tile, its channels.
struct BlockTile {
  int b, h, y0, x0, c_begin, c_end;
};

__device__ __forceinline__ BlockTile block_tile(const TiledGeometry& g) {
  BlockTile t;
  t.b = blockIdx.z / g.G;
  t.h = blockIdx.z % g.G;
  t.y0 = int(blockIdx.x) / g.tiles_x * int(blockDim.y) * g.rows_per_thread;
  t.x0 = int(blockIdx.x) % g.tiles_x * int(blockDim.x);
  t.c_begin = t.h * g.cph + int(blockIdx.y) * g.split_channels;
  t.c_end = std::min(t.c_begin + g.split_channels, (t.h + 1) * g.cph);
  return t;
}

__device__ __forceinline__ int plane_floats(const TiledGeometry& g) { return (g.halo_h * g.halo_w + 3) / 4 * 4; }

// Index of this thread within its channel lane; warps never straddle lanes.
__device__ __forceinline__ int lane_thread() { return threadIdx.y * blockDim.x + threadIdx.x; }

// Stages channel c's k*k filter values (float) and whether any is not finite. Run by the
// lane's first warp; `active` is false for lanes past the split's last channel.
template <typename scalar_t, int K>
__device__ __forceinline__ void stage_channel_filter(const scalar_t* cf, Strides4 cs, int b, int c, bool active,
                                                     float* filter, int* nonfinite) {
  constexpr int KK = K * K;
  const int t = lane_thread();
  if (t >= 32) return;
  float v[2] = {0.f, 0.f};
  bool bad = false;
#pragma unroll
  for (int u = 0; u < 2; ++u) {
    const int tap = t + 32 * u;
    if (active && tap < KK) {
      v[u] = widen(cf[cs.offset(b, c, tap / K, tap % K)]);
      filter[tap] = v[u];
      bad = bad || !is_finite(v[u]);
    }
  }
  const int any_bad = __any_sync(0xffffffffu, bad);
  if (t == 0) *nonfinite = any_bad;
}

// Stages rows [r0, r0 + halo_h) x columns [c0, c0 + halo_w) of one plane, as float, with 0
// outside the plane (or everywhere, for an inactive lane).
template <typename scalar_t>
__device__ __forceinline__ void stage_plane(const scalar_t* plane, bool active, int rows, int cols, int r0, int c0,
                                            float* tile, int halo_h, int halo_w) {
  for (int r = threadIdx.y; r < halo_h; r += blockDim.y) {
    const int y = r0 + r;
    const bool row_in = active && y >= 0 && y < rows;
    for (int col = threadIdx.x; col < halo_w; col += blockDim.x) {
      const int x = c0 + col;
      tile[r * halo_w + col] = row_in && x >= 0 && x < cols ? widen(plane[y * cols + x]) : 0.f;
    }
  }
}

// ---- forward -------------------------------------------------------------------------------

template <typename scalar_t, Combine M, int K, int S>
__global__ void __launch_bounds__(kBlockThreads) tiled_forward_kernel(
    const scalar_t* __restrict__ x,
    const scalar_t* __restrict__ cf, Strides4 cs,
    const scalar_t* __restrict__ sf,
    scalar_t* __restrict__ out,
    TiledGeometry g) {
  constexpr int KK = K * K, KP = padded_taps(K);
  DDF_DYNAMIC_SHARED(float, smem);
  __shared__ int nonfinite_filter[kBlockThreads / 32];
  const BlockTile t = block_tile(g);
  const int tz = threadIdx.z, d = g.dilation, hw = g.halo_w;
  float* filter = smem + tz * (KP + plane_floats(g));
  float* x_tile = filter + KP;
  const int oy = t.y0 + threadIdx.y, ox = t.x0 + threadIdx.x;
  const bool pixel = oy < g.Ho && ox < g.Wo;

  // This pixel's spatial-filter taps, 0 at taps outside the image.
  float s[KK];
#pragma unroll
  for (int i = 0; i < K; ++i) {
    const int iy = oy * S + i * d - g.pad;
#pragma unroll
    for (int j = 0; j < K; ++j) {
      const int ix = ox * S + j * d - g.pad;
      const bool inside = pixel && iy >= 0 && iy < g.H && ix >= 0 && ix < g.W;
      s[i * K + j] = inside ? widen(sf[((t.b * g.G + t.h) * KK + i * K + j) * (g.Ho * g.Wo) + oy * g.Wo + ox]) : 0.f;
    }
  }

  const int steps = g.split_channels / int(blockDim.z);
  for (int step = 0; step < steps; ++step) {
    const int c = t.c_begin + step * int(blockDim.z) + tz;
    const bool lane_active = c < t.c_end;
    __syncthreads();  // the previous channel's readers are done with the tiles
    stage_channel_filter<scalar_t, K>(cf, cs, t.b, c, lane_active, filter, &nonfinite_filter[tz]);
    stage_plane(lane_active ? x + (t.b * g.C + c) * (g.H * g.W) : x, lane_active, g.H, g.W, t.y0 * S - g.pad,
                t.x0 * S - g.pad, x_tile, g.halo_h, hw);
    __syncthreads();
    if (!lane_active || !pixel) continue;
    const float* xt = x_tile + threadIdx.y * S * hw + threadIdx.x * S;
    float acc = 0.f;
    if (!nonfinite_filter[tz]) {
#pragma unroll
      for (int i = 0; i < K; ++i)
#pragma unroll
        for (int j = 0; j < K; ++j) acc += xt[i * d * hw + j * d] * combine_filters<M>(filter[i * K + j], s[i * K + j]);
    } else {
      // Only taps inside the image, so an infinite filter value meets no padding zero.
#pragma unroll
      for (int i = 0; i < K; ++i) {
        const int iy = oy * S + i * d - g.pad;
#pragma unroll
        for (int j = 0; j < K; ++j) {
          const int ix = ox * S + j * d - g.pad;
          if (iy >= 0 && iy < g.H && ix >= 0 && ix < g.W)
            acc += xt[i * d * hw + j * d] * combine_filters<M>(filter[i * K + j], s[i * K + j]);
        }
      }
    }
    out[(t.b * g.C + c) * (g.Ho * g.Wo) + oy * g.Wo + ox] = narrow<scalar_t>(acc);
  }
}

// ---- grad_input ----------------------------------------------------------------------------

template <typename scalar_t, Combine M, int K, int S>
__global__ void __launch_bounds__(kBlockThreads) tiled_grad_input_kernel(
    const scalar_t* __restrict__ go,
    const scalar_t* __restrict__ cf, Strides4 cs,
    const scalar_t* __restrict__ sf,
    scalar_t* __restrict__ gi,
    TiledGeometry g) {
  constexpr int KK = K * K, KP = padded_taps(K);
  DDF_DYNAMIC_SHARED(float, smem);
  __shared__ int nonfinite_filter[kBlockThreads / 32];
  const BlockTile t = block_tile(g);
  const int tz = threadIdx.z, d = g.dilation, hw = g.halo_w, plane = plane_floats(g);
  float* sf_tile = smem;  // [KK][plane]
  float* filter = smem + KK * plane + tz * (KP + plane);
  float* go_tile = filter + KP;
  // The grad_output rows/columns whose taps reach this tile start here (may be negative).
  const int oy_lo = int(floor_div(t.y0 + g.pad - (K - 1) * d, S));
  const int ox_lo = int(floor_div(t.x0 + g.pad - (K - 1) * d, S));
  {
    const scalar_t* head = sf + (t.b * g.G + t.h) * KK * (g.Ho * g.Wo);
    const int flat = threadIdx.z * blockDim.y + threadIdx.y, flat_n = blockDim.z * blockDim.y;
    for (int tr = flat; tr < KK * g.halo_h; tr += flat_n) {
      const int tap = tr / g.halo_h, r = tr % g.halo_h, y = oy_lo + r;
      const bool row_in = y >= 0 && y < g.Ho;
      for (int col = threadIdx.x; col < hw; col += blockDim.x) {
        const int xo = ox_lo + col;
        sf_tile[tap * plane + r * hw + col] =
            row_in && xo >= 0 && xo < g.Wo ? widen(head[tap * (g.Ho * g.Wo) + y * g.Wo + xo]) : 0.f;
      }
    }
  }
  const int iy = t.y0 + threadIdx.y, ix = t.x0 + threadIdx.x;
  const bool pixel = iy < g.H && ix < g.W;
  const int steps = g.split_channels / int(blockDim.z);
  for (int step = 0; step < steps; ++step) {
    const int c = t.c_begin + step * int(blockDim.z) + tz;
    const bool lane_active = c < t.c_end;
    __syncthreads();
    stage_channel_filter<scalar_t, K>(cf, cs, t.b, c, lane_active, filter, &nonfinite_filter[tz]);
    stage_plane(lane_active ? go + (t.b * g.C + c) * (g.Ho * g.Wo) : go, lane_active, g.Ho, g.Wo, oy_lo, ox_lo,
                go_tile, g.halo_h, hw);
    __syncthreads();
    if (!lane_active || !pixel) continue;
    const bool finite_filter = !nonfinite_filter[tz];
    float acc = 0.f;
#pragma unroll
    for (int i = 0; i < K; ++i) {
      const int py = iy + g.pad - i * d;  // = y * S for the output row y this tap comes from
      if (S == 2 && (py & 1)) continue;
      const int y = py >> (S - 1);  // floor division by 1 or 2
#pragma unroll
      for (int j = 0; j < K; ++j) {
        const int px = ix + g.pad - j * d;
        if (S == 2 && (px & 1)) continue;
        const int xo = px >> (S - 1);
        // Outside grad_output the staged tiles hold 0; only a non-finite filter needs the check.
        if (!finite_filter && !(y >= 0 && y < g.Ho && xo >= 0 && xo < g.Wo)) continue;
        const int at = (y - oy_lo) * hw + (xo - ox_lo);
        acc += go_tile[at] * combine_filters<M>(filter[i * K + j], sf_tile[(i * K + j) * plane + at]);
      }
    }
    gi[(t.b * g.C + c) * (g.H * g.W) + iy * g.W + ix] = narrow<scalar_t>(acc);
  }
}

// ---- grad_channel_filter and grad_spatial_filter, fused ------------------------------------

// Sums v[0..N) (N a power of two) over the 32 lanes of a warp by halving: at each level a
// lane keeps half its values and adds its partner's matching half, so the work shrinks with
// every level. Afterwards lane l holds, in v[m] for m < kept, the total of index
// (l >> (5 - halvings)) * kept + m; lanes of one group hold equal totals. A fixed tree: the
// result is bitwise reproducible.
template <int N>
struct WarpTapSum {
  static constexpr int halvings = N >= 32 ? 5 : (N >= 16 ? 4 : (N >= 8 ? 3 : (N >= 4 ? 2 : (N >= 2 ? 1 : 0))));
  static constexpr int kept = N >> halvings;
  static constexpr int group = 1 << (5 - halvings);

  template <int n, int offset>
  static __device__ __forceinline__ void level(float* v, int lane) {
    if constexpr (offset >= 1) {
      if constexpr (n > kept) {
        const bool upper = (lane & offset) != 0;
#pragma unroll
        for (int k = 0; k < n / 2; ++k) {
          const float send = upper ? v[k] : v[k + n / 2];
          const float keep = upper ? v[k + n / 2] : v[k];
          v[k] = keep + __shfl_xor_sync(0xffffffffu, send, offset);
        }
        level<n / 2, offset / 2>(v, lane);
      } else {
#pragma unroll
        for (int k = 0; k < n; ++k) v[k] += __shfl_xor_sync(0xffffffffu, v[k], offset);
        level<n, offset / 2>(v, lane);
      }
    }
  }
  static __device__ __forceinline__ void run(float (&v)[N], int lane) { level<N, 16>(v, lane); }
  static __device__ __forceinline__ int index(int lane, int m) { return (lane / group) * kept + m; }
};

constexpr int pow2_ceil(int n) { return n <= 1 ? 1 : 2 * pow2_ceil((n + 1) / 2); }

// Each thread covers R consecutive output rows of one column. channel_partial (null: not
// asked for) gets [tile][b][c][tap] sums over the tile's pixels; grad_spatial is written
// directly (one split per head, contiguous result) or spatial_partial gets [split][...].
template <typename scalar_t, Combine M, int K, int S, int R>
__global__ void __launch_bounds__(kBlockThreads) tiled_filter_grads_kernel(
    const scalar_t* __restrict__ go,
    const scalar_t* __restrict__ x,
    const scalar_t* __restrict__ cf, Strides4 cs,
    const scalar_t* __restrict__ sf,
    float* __restrict__ channel_partial,
    scalar_t* __restrict__ grad_spatial,
    float* __restrict__ spatial_partial,
    TiledGeometry g) {
  constexpr int KK = K * K, KP = padded_taps(K), NP = pow2_ceil(KK);
  using TapSum = WarpTapSum<NP>;
  DDF_DYNAMIC_SHARED(float, smem);
  const BlockTile t = block_tile(g);
  const int tz = threadIdx.z, d = g.dilation, hw = g.halo_w, lt = lane_thread();
  const int warps_per_lane = int(blockDim.x * blockDim.y) / 32, lane = lt % 32, warp = lt / 32;
  float* filter = smem + tz * (KP + plane_floats(g));
  float* x_tile = filter + KP;
  float* warp_sums = smem + blockDim.z * (KP + plane_floats(g));  // [lanes * warps_per_lane][KK]
  const bool want_channel = channel_partial != nullptr;
  const bool want_spatial = grad_spatial != nullptr || spatial_partial != nullptr;
  const int ox = t.x0 + threadIdx.x, oy0 = t.y0 + threadIdx.y * R;

  // dF/dcf at each tap of each pixel ("mul": the spatial filter, 0 outside the image).
  float s[M == Combine::Mul ? R * KK : 1];
  bool row_pixel[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int oy = oy0 + r;
    row_pixel[r] = oy < g.Ho && ox < g.Wo;
    if constexpr (M == Combine::Mul) {
#pragma unroll
      for (int i = 0; i < K; ++i)
#pragma unroll
        for (int j = 0; j < K; ++j) {
          const int iy = oy * S + i * d - g.pad, ix = ox * S + j * d - g.pad;
          const bool inside = row_pixel[r] && want_channel && iy >= 0 && iy < g.H && ix >= 0 && ix < g.W;
          s[r * KK + i * K + j] =
              inside ? widen(sf[((t.b * g.G + t.h) * KK + i * K + j) * (g.Ho * g.Wo) + oy * g.Wo + ox]) : 0.f;
        }
    }
  }
  float gs[R * KK];
#pragma unroll
  for (int u = 0; u < R * KK; ++u) gs[u] = 0.f;

  const int steps = g.split_channels / int(blockDim.z);
  for (int step = 0; step < steps; ++step) {
    const int c = t.c_begin + step * int(blockDim.z) + tz;
    const bool lane_active = c < t.c_end;
    __syncthreads();
    for (int tap = lt; tap < KK && lane_active; tap += int(blockDim.x * blockDim.y))
      filter[tap] = widen(cf[cs.offset(t.b, c, tap / K, tap % K)]);
    stage_plane(lane_active ? x + (t.b * g.C + c) * (g.H * g.W) : x, lane_active, g.H, g.W, t.y0 * S - g.pad,
                t.x0 * S - g.pad, x_tile, g.halo_h, hw);
    __syncthreads();
    float q[NP];
#pragma unroll
    for (int u = 0; u < NP; ++u) q[u] = 0.f;
    if (lane_active) {
#pragma unroll
      for (int r = 0; r < R; ++r) {
        if (!row_pixel[r]) continue;
        const float gv = widen(go[(t.b * g.C + c) * (g.Ho * g.Wo) + (oy0 + r) * g.Wo + ox]);
        const float* xt = x_tile + (threadIdx.y * R + r) * S * hw + threadIdx.x * S;
        // A non-finite grad_output value times a padding zero must not reach
        // grad_channel_filter: then only taps inside the image count (rare, per thread).
        const bool finite = is_finite(gv);
#pragma unroll
        for (int i = 0; i < K; ++i) {
          const int iy = (oy0 + r) * S + i * d - g.pad;
#pragma unroll
          for (int j = 0; j < K; ++j) {
            const float p = gv * xt[i * d * hw + j * d];
            gs[r * KK + i * K + j] += p * dcombine_db<M>(filter[i * K + j]);
            const float term = M == Combine::Mul ? p * s[r * KK + i * K + j] : p;
            if (finite) {
              q[i * K + j] += term;
            } else {
              const int ix = ox * S + j * d - g.pad;
              if (iy >= 0 && iy < g.H && ix >= 0 && ix < g.W) q[i * K + j] += term;
            }
          }
        }
      }
    }
    if (want_channel) {
      TapSum::run(q, lane);
#pragma unroll
      for (int m = 0; m < TapSum::kept; ++m) {
        const int tap = TapSum::index(lane, m);
        if (lane % TapSum::group == 0 && tap < KK) warp_sums[(tz * warps_per_lane + warp) * KK + tap] = q[m];
      }
      __syncthreads();
      for (int tap = lt; tap < KK && lane_active; tap += warps_per_lane * 32) {
        float total = 0.f;
        for (int w = 0; w < warps_per_lane; ++w) total += warp_sums[(tz * warps_per_lane + w) * KK + tap];
        channel_partial[((int64_t(blockIdx.x) * g.B + t.b) * g.C + c) * KK + tap] = total;
      }
    }
  }
  if (!want_spatial) return;

  // Lanes 1.. hand their sums to lane 0, in lane order, through shared memory.
  float* handoff = smem;  // [tx * ty * R][KK]
  for (int z = 1; z < int(blockDim.z); ++z) {
    __syncthreads();
    if (tz == z) {
#pragma unroll
      for (int u = 0; u < R * KK; ++u) handoff[lt * R * KK + u] = gs[u];
    }
    __syncthreads();
    if (tz == 0) {
#pragma unroll
      for (int u = 0; u < R * KK; ++u) gs[u] += handoff[lt * R * KK + u];
    }
  }
  if (tz != 0) return;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    if (!row_pixel[r]) continue;
    const int oy = oy0 + r;
#pragma unroll
    for (int i = 0; i < K; ++i) {
      const int iy = oy * S + i * d - g.pad;
#pragma unroll
      for (int j = 0; j < K; ++j) {
        const int ix = ox * S + j * d - g.pad;
        // A tap outside the image reads nothing: its gradient is exactly 0.
        const float v = iy >= 0 && iy < g.H && ix >= 0 && ix < g.W ? gs[r * KK + i * K + j] : 0.f;
        const int at = ((t.b * g.G + t.h) * KK + i * K + j) * (g.Ho * g.Wo) + oy * g.Wo + ox;
        if (spatial_partial != nullptr) {
          spatial_partial[int64_t(blockIdx.y) * (int64_t(g.B) * g.G * KK * g.Ho * g.Wo) + at] = v;
        } else {
          grad_spatial[at] = narrow<scalar_t>(v);
        }
      }
    }
  }
}

// grad_channel_filter[b, c, i, j] = the tiles' partial sums, added in tile order.
template <typename scalar_t>
__global__ void sum_channel_partials_kernel(const float* __restrict__ partial, int64_t tiles, int64_t C, int64_t k,
                                            scalar_t* __restrict__ gcf, Strides4 gcs, int64_t count) {
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < count; e += int64_t(gridDim.x) * blockDim.x) {
    float total = 0.f;
    for (int64_t tile = 0; tile < tiles; ++tile) total += partial[tile * count + e];
    const int64_t kk = k * k, tap = e % kk, bc = e / kk;
    gcf[gcs.offset(bc / C, bc % C, tap / k, tap % k)] = narrow<scalar_t>(total);
  }
}

// grad_spatial_filter = the splits' partial sums, added in split order.
template <typename scalar_t>
__global__ void sum_spatial_partials_kernel(const float* __restrict__ partial, int64_t splits, int64_t channels,
                                            int64_t Ho, int64_t Wo, scalar_t* __restrict__ gsf, Strides4 gss,
                                            int64_t count) {
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < count; e += int64_t(gridDim.x) * blockDim.x) {
    float total = 0.f;
    for (int64_t split = 0; split < splits; ++split) total += partial[split * count + e];
    const int64_t xo = e % Wo, y = e / Wo % Ho, ch = e / (Wo * Ho) % channels, b = e / (Wo * Ho * channels);
    gsf[gss.offset(b, ch, y, xo)] = narrow<scalar_t>(total);
  }
}

}  // namespace tiled
}  // namespace cuda
}  // namespace ddf
