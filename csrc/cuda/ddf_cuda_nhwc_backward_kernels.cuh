// The channels_last (NHWC) CUDA backward: grad_input, and the two filter gradients in one kernel.
// Same face as the forward (ddf_cuda_nhwc_kernels.cuh, whose pieces they share): k in {3,5,7}
// and stride 1 or 2 at compile time, any dilation, float32/float16/bfloat16, 32-bit indexing;
// ddf_cuda_nhwc_plan.h says which calls qualify and sizes each launch. Device code only, so the
// host emulator (tests/cuda_emulation) runs this same source.
//
// grad_input is the forward's gather, transposed: a thread holds V channels of an input pixel
// and visits the output pixels whose taps read it (with stride 2, only the taps of the pixel's
// parity), reading grad_output vectors and the block's staged channel filters.
//
// The filter gradients: a block covers (batch b, channels of whole heads or of one head, a
// tile of output pixels); a thread holds up to 16 channels (several 16-byte vectors) and walks
// its pixels of the tile, tap by tap. Per (pixel, tap) it forms grad_output * input for its
// channels, and
//   - adds it, times the tap's spatial-filter value, to its grad_channel_filter sums (float32);
//   - sums it, times the channel filters, over its channels, then over the head's lanes with
//     a fixed shuffle tree: grad_spatial_filter of (pixel, tap), written by the head's first
//     lane (a partial sum per block when a head spans several blocks);
//   after each tap, the block sums grad_channel_filter over its pixels: every thread's sums go
//   to shared memory, one thread per channel adds the pixel lanes' in order (one barrier per
//   tap, two buffers), written directly when the map is one tile, as a partial per tile
//   otherwise.
// Partial sums are added in a fixed order by ddf_cuda_tiled_kernels.cuh's sum kernels. No
// atomics: the backward is bitwise deterministic.
#pragma once

#include "ddf_cuda_nhwc_kernels.cuh"

namespace ddf {
namespace cuda {
namespace nhwc {

// grad_input at input pixel (y, x) for the thread's V channels: the output pixels (oy, ox)
// whose tap (i, j) reads it, oy * S - pad + i * d == y (and likewise for x).
template <typename scalar_t, Combine M, int K, int S, int V>
__device__ __forceinline__ void grad_input_pixel(const scalar_t* __restrict__ go, const scalar_t* __restrict__ sf,
                                                 scalar_t* __restrict__ gi, const float* f, const NhwcGeometry& g,
                                                 const ThreadTaps<K>& tt, int y, int x) {
  const int sf_head = tt.b * g.sn + tt.head * K * K * g.sc;
  float acc[V];
#pragma unroll
  for (int u = 0; u < V; ++u) acc[u] = 0.f;
  const int top = y + g.pad, left = x + g.pad;  // oy, ox of tap 0 (times S)
  if (S == 1 && top - tt.span >= 0 && top < g.Ho && left - tt.span >= 0 && left < g.Wo) {
    // Every tap reads an output pixel (most pixels, stride 1): no checks; tap (i, j) reads
    // (top - i * d, left - j * d), offsets from tap 0 in rows and columns as the forward's.
    const scalar_t* first = go + (tt.b * g.xn + top * g.xh + left * g.xw + tt.c0);
    const int sf_first = sf_head + top * g.sh + left * g.sw;
    const int sf_row = K * g.sc - g.dilation * g.sh, sf_col = g.sc - g.dilation * g.sw;
#pragma unroll(kUnrolledRows<K>)
    for (int i = 0; i < K; ++i) {
      const scalar_t* row = first - i * tt.row_step;
      const scalar_t* srow = sf + (sf_first + i * sf_row);
#pragma unroll
      for (int j = 0; j < K; ++j)
        add_tap<scalar_t, M, V>(row - tt.col[j], f + (i * K + j) * V, widen(srow[j * sf_col]), acc);
    }
    ChannelVector<scalar_t, V> result;
#pragma unroll
    for (int u = 0; u < V; ++u) result.v[u] = acc[u];
    result.store(gi + (tt.b * g.on + y * g.oh + x * g.ow + tt.out_c));
    return;
  }
  using Vector = ChannelVector<scalar_t, V>;
#pragma unroll(kUnrolledRows<K>)
  for (int i = 0; i < K; ++i) {
    const int ty = top - i * g.dilation;  // oy * S
    if (ty < 0 || (S == 2 && (ty & 1))) continue;
    const int oy = ty / S;
    if (oy >= g.Ho) continue;
    // The row's taps in two phases (zero_value()): the guarded raw loads, then the widening
    // and the adds of the taps that read an output pixel.
    bool reads[K];
    typename Vector::Raw raw[K];
    scalar_t s_raw[K];
#pragma unroll
    for (int j = 0; j < K; ++j) {
      const int tx = left - j * g.dilation;
      const int ox = tx / S;
      reads[j] = tx >= 0 && (S == 1 || !(tx & 1)) && ox < g.Wo;
      raw[j] = reads[j] ? Vector::load_raw(go + (tt.b * g.xn + oy * g.xh + ox * g.xw + tt.c0)) : Vector::zero_raw();
      s_raw[j] = reads[j] ? sf[sf_head + (i * K + j) * g.sc + oy * g.sh + ox * g.sw] : zero_value<scalar_t>();
    }
#pragma unroll
    for (int j = 0; j < K; ++j) {
      if (!reads[j]) continue;
      Vector in;
      in.widen_raw(raw[j]);
      add_tap<scalar_t, M, V>(in, f + (i * K + j) * V, widen(s_raw[j]), acc);
    }
  }
  ChannelVector<scalar_t, V> result;
#pragma unroll
  for (int u = 0; u < V; ++u) result.v[u] = acc[u];
  result.store(gi + (tt.b * g.on + y * g.oh + x * g.ow + tt.out_c));
}

// Tiles of the input map (H x W); the taps' tensor is grad_output (plan kind GradInput), its
// offsets from tap 0 backwards.
template <typename scalar_t, Combine M, int K, int S, int V>
__global__ void __launch_bounds__(kBlockThreads, kMinBlocks<K, V>) nhwc_grad_input_kernel(
    const scalar_t* __restrict__ go,
    const scalar_t* __restrict__ cf, Strides4 cs,
    const scalar_t* __restrict__ sf,
    scalar_t* __restrict__ gi,
    NhwcGeometry g) {
  DDF_DYNAMIC_SHARED(float, filters);
  for_each_tile_pixel<scalar_t, K, V, 1>(cf, cs, g, filters, g.H, g.W,
                                         [&](const ThreadTaps<K>& tt, const float* f, int y, int x, int) {
                                           grad_input_pixel<scalar_t, M, K, S, V>(go, sf, gi, f, g, tt, y, x);
                                         });
}

// V floats to shared memory: 16-byte stores when V > 1 (p is 16-byte aligned: see its caller).
template <int V>
__device__ __forceinline__ void store_floats(float* p, const float (&v)[V]) {
  if constexpr (V % 4 == 0) {
#pragma unroll
    for (int q = 0; q < V / 4; ++q)
      reinterpret_cast<float4*>(p)[q] = make_float4(v[4 * q], v[4 * q + 1], v[4 * q + 2], v[4 * q + 3]);
  } else {
#pragma unroll
    for (int u = 0; u < V; ++u) p[u] = v[u];
  }
}

// Vectors a filter-gradient thread holds at most (the plan's `vectors`, kGradChannels channels).
template <int V>
constexpr int kMaxVectors = V == 1 ? 1 : kGradChannels / V;

// Tiles of the output map; the taps' tensor is the input, the pixels' one grad_output (plan
// kind FilterGrads). A thread holds g.vectors vectors of V channels (consecutive channels of
// one head). channel_partial: [tiles][B][C][k*k] floats, or channel_direct (a map of one
// tile) with gcs; spatial_partial: [head_blocks][B][G*k*k][Ho][Wo] floats, or spatial_direct
// (head_blocks == 1) with gss, whose offsets within a (b, head, tap) plane fit in int
// (spatial_plane_fits). A null pair: that gradient is not computed.
template <typename scalar_t, Combine M, int K, int S, int V>
__global__ void __launch_bounds__(kBlockThreads, kGradBlocksPerSm) nhwc_filter_grads_kernel(
    const scalar_t* __restrict__ go,
    const scalar_t* __restrict__ x,
    const scalar_t* __restrict__ cf, Strides4 cs,
    const scalar_t* __restrict__ sf,
    float* __restrict__ channel_partial, scalar_t* __restrict__ channel_direct, Strides4 gcs,
    float* __restrict__ spatial_partial, scalar_t* __restrict__ spatial_direct, Strides4 gss,
    NhwcGeometry g) {
  constexpr int KK = K * K, NV = kMaxVectors<V>, kLaneFloats = lane_filter_floats(K, V);
  DDF_DYNAMIC_SHARED(float, filters);
  // After the staged filters: two buffers of per-thread sums, [pixel lane][vector][channel lane][V].
  const int thread_channels = g.vectors * V, lane_channels = g.channel_lanes * thread_channels;
  const int sums_size = kBlockThreads * thread_channels;
  float* sums = filters + g.channel_lanes * g.vectors * kLaneFloats;
  const int b = blockIdx.z, B = gridDim.z, G = g.C / g.cph;
  // The block's channels [c_first, c_end): part of one head, or whole heads.
  const int head_first = g.head_blocks > 1 ? int(blockIdx.y) / g.head_blocks : 0;
  const int split = g.head_blocks > 1 ? int(blockIdx.y) % g.head_blocks : 0;
  const int c_first = g.head_blocks > 1 ? head_first * g.cph + split * g.block_channels
                                        : int(blockIdx.y) * g.block_channels;
  const int c_end = g.head_blocks > 1 ? std::min(c_first + g.block_channels, (head_first + 1) * g.cph)
                                      : std::min(c_first + g.block_channels, g.C);
  const int count = c_end - c_first;
  stage_channel_filters<scalar_t, K, V>(filters, cf, cs, b, c_first, count);
  __syncthreads();

  const int lane_c = threadIdx.x & (g.channel_lanes - 1), lane_p = threadIdx.x / g.channel_lanes;
  const int pixel_lanes = kBlockThreads / g.channel_lanes;
  // Every thread stays to the end: the shuffles take whole warps. An idle lane (past the
  // block's channels) loads nothing, adds zeros and writes nothing.
  const bool active = lane_c * thread_channels < count;
  const int c0 = c_first + lane_c * thread_channels, head = active ? c0 / g.cph : 0;
  // The thread's place among its head's lanes in this block, for the shuffle tree; which of its
  // steps add (lane pos adds lane pos + 2^s while that is in the head).
  const int seg_first = active ? std::max(head * g.cph, c_first) : c0;
  const int seg_lanes = active ? (std::min((head + 1) * g.cph, c_end) - seg_first) / thread_channels : 1;
  const int pos = (c0 - seg_first) / thread_channels;
  bool adds[5];
#pragma unroll
  for (int s = 0; s < 5; ++s) adds[s] = pos + (1 << s) < seg_lanes;
  const float* f = filters + lane_c * g.vectors * kLaneFloats;  // the thread's first vector's
  const int y0 = int(blockIdx.x) / g.tiles_x * g.tile_h, x0 = int(blockIdx.x) % g.tiles_x * g.tile_w;
  const int area = g.tile_w * g.tile_h, rounds = (area + pixel_lanes - 1) / pixel_lanes;
  // The thread's first pixel of the tile and the step between its pixels, as (row, column).
  // (Steps of one pixel: g.steps_w == g.tile_w, the walk g.walk_y rows and g.walk_x columns.)
  const int py0 = lane_p / g.tile_w, px0 = lane_p - py0 * g.tile_w;
  const int64_t channel_count = int64_t(B) * g.C * KK, spatial_count = int64_t(B) * G * KK * g.Ho * g.Wo;

  // Offsets that do not change with the tap or the pixel.
  const int go_thread = b * g.on + c0 * g.oc, x_thread = b * g.xn + c0;
  const int sf_thread = b * g.sn + head * KK * g.sc;
  float* spatial_thread = spatial_partial == nullptr ? nullptr
      : spatial_partial + split * spatial_count + (int64_t(b) * G + head) * KK * g.Ho * g.Wo;
  // A (pixel, tap)'s grad_spatial_filter lies at oy * plane_h + ox * plane_w in its tap's plane.
  const bool spatial = spatial_direct != nullptr || spatial_partial != nullptr;
  const int plane_h = spatial_direct != nullptr ? int(gss.h) : g.Wo, plane_w = spatial_direct != nullptr ? int(gss.w) : 1;

#pragma unroll 1
  for (int t = 0; t < KK; ++t) {
    const int i = t / K, j = t - i * K;
    const int tap_y = i * g.dilation - g.pad, tap_x = j * g.dilation - g.pad;
    const float* ft = f + t * V;  // the tap's channel filters of the thread's first vector
    const int sf_tap = sf_thread + t * g.sc;
    scalar_t* direct_tap = spatial_direct == nullptr ? nullptr : spatial_direct + gss.offset(b, head * KK + t, 0, 0);
    float* partial_tap = spatial_thread == nullptr ? nullptr : spatial_thread + int64_t(t) * g.Ho * g.Wo;
    float gc[NV][V];
#pragma unroll
    for (int q = 0; q < NV; ++q)
#pragma unroll
      for (int u = 0; u < V; ++u) gc[q][u] = 0.f;
    int py = py0, px = px0;
#pragma unroll 1
    for (int r = 0; r < rounds; ++r) {
      const int oy = y0 + py, ox = x0 + px;
      const bool pixel = lane_p + r * pixel_lanes < area && oy < g.Ho && ox < g.Wo;
      const int iy = oy * S + tap_y, ix = ox * S + tap_x;
      float part = 0.f;  // this (pixel, tap)'s grad_spatial_filter over the thread's channels
      if (active && pixel && unsigned(iy) < unsigned(g.H) && unsigned(ix) < unsigned(g.W)) {
        const float s = widen(sf[sf_tap + oy * g.sh + ox * g.sw]);
        const scalar_t* go_px = go + (go_thread + oy * g.oh + ox * g.ow);
        const scalar_t* x_px = x + (x_thread + iy * g.xh + ix * g.xw);
#pragma unroll
        for (int q = 0; q < NV; ++q) {
          if (q >= g.vectors) break;
          ChannelVector<scalar_t, V> gov, xv;
          gov.load(go_px + q * V);  // (V == 1: one vector, q == 0)
          xv.load(x_px + q * V);
          float fv[V];
          load_filters<V>(ft + q * kLaneFloats, fv);
#pragma unroll
          for (int u = 0; u < V; ++u) {
            const float prod = gov.v[u] * xv.v[u];
            gc[q][u] += prod * dcombine_da<M>(s);
            part += prod * dcombine_db<M>(fv[u]);
          }
        }
      }
      // Sum over the head's lanes: after the steps the head's first lane holds its lanes
      // [0, seg_lanes) added in a fixed order.
#pragma unroll
      for (int s = 0; s < 5; ++s) {
        if ((1 << s) >= g.head_lanes) break;
        const float other = __shfl_down_sync(0xffffffffu, part, 1 << s, g.channel_lanes);
        if (adds[s]) part += other;
      }
      if (spatial && active && pixel && pos == 0) {
        const int at = oy * plane_h + ox * plane_w;
        if (direct_tap != nullptr) {
          direct_tap[at] = narrow<scalar_t>(part);
        } else {
          partial_tap[at] = part;
        }
      }
      py += g.walk_y, px += g.walk_x;
      if (px >= g.tile_w) px -= g.tile_w, ++py;
    }
    if (channel_partial == nullptr && channel_direct == nullptr) continue;  // (uniform: no barrier skipped by some)
    // grad_channel_filter of this tap over the block's pixels: each thread's sums to shared
    // memory, then one thread per channel adds the pixel lanes' in order. Two buffers: the
    // barrier of tap t + 1 orders tap t's readers before tap t + 2's writers.
    float* buffer = sums + (t & 1) * sums_size;
    float* mine = buffer + lane_p * lane_channels + lane_c * V;  // vector q at + q * channel_lanes * V
#pragma unroll
    for (int q = 0; q < NV; ++q) {
      if (q >= g.vectors) break;
      store_floats<V>(mine + q * g.channel_lanes * V, gc[q]);
    }
    __syncthreads();
#pragma unroll 1
    for (int e = threadIdx.x; e < count; e += kBlockThreads) {
      // Channel e of the block: lane e / thread_channels, vector q, element u.
      const int lane = e / thread_channels, q = (e - lane * thread_channels) / V, u = e % V;
      const float* column = buffer + q * g.channel_lanes * V + lane * V + u;
      float total = 0.f;
#pragma unroll 4
      for (int lp = 0; lp < pixel_lanes; ++lp) total += column[lp * lane_channels];
      const int c = c_first + e;
      if (channel_direct != nullptr) {
        channel_direct[gcs.offset(b, c, i, j)] = narrow<scalar_t>(total);
      } else {
        channel_partial[int64_t(blockIdx.x) * channel_count + (int64_t(b) * g.C + c) * KK + t] = total;
      }
    }
  }
}

}  // namespace nhwc
}  // namespace cuda
}  // namespace ddf
