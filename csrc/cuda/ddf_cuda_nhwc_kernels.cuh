// The channels_last (NHWC) CUDA forward: input with channel stride 1, k in {3,5,7}
// and stride 1 or 2 at compile time, any dilation, float32/float16/bfloat16, 32-bit indexing.
// ddf_cuda_nhwc_plan.h says which calls qualify and sizes the launch. Device code only, so the
// host emulator (tests/cuda_emulation) runs this same source.
//
// The layout suits the op: a pixel's channels are contiguous, and a head's k*k spatial-filter
// taps of a pixel are shared by all of the head's channels. A block covers (batch b, a run of
// block_channels channels, a tile of output pixels). Its threads are channel_lanes x pixel
// lanes; each thread holds `V` channels of one head (a 16-byte vector: 4 floats or 8 halves;
// 1 when alignment, the head size or the output's strides forbid) and computes them for up to
// kMaxStepsPerThread steps of the tile, one after another (a step: one pixel, or two
// neighbours along a row that share their input columns, pixels_per_step):
//   - the block stages the channel filters of its channels once, as float, each channel
//     lane's [k*k][V] together, so a tap of a thread's V channels is one or two 16-byte shared
//     loads at a compile-time offset (a broadcast across the pixel lanes);
//   - per pixel, the thread reads its head's k*k spatial-filter taps (the same address across
//     the pixel's channel lanes: one transaction per warp) and, per tap inside the image, one
//     16-byte vector of input straight from global memory: the k*k re-reads of an input vector
//     by neighbouring pixels hit L1 (a block's tile is near-square), no staging or barrier;
//   - accumulates in float32, taps in order from +0 (as the reference), and stores V outputs
//     as one 16-byte vector (one output, with the output's strides, when V is 1).
// Taps outside the image are skipped, not multiplied by a zero: a non-finite filter value
// reaches only the outputs whose taps read the image (conv2d's rule), with no separate path.
#pragma once

#include "ddf_cuda_kernels.cuh"
#include "ddf_cuda_nhwc_plan.h"

#include <type_traits>

namespace ddf {
namespace cuda {
namespace nhwc {

// V consecutive channels of one pixel: loaded as one 16-byte vector (V > 1: the plan checked
// the alignment) or one element (V == 1), widened to float; stored back likewise. A caller
// that loads several before widening any (two phases: zero_value()) keeps them as Raw.
template <typename scalar_t, int V>
struct ChannelVector {
  static_assert(V == 1 || V * sizeof(scalar_t) == kVectorBytes, "a vector is 16 bytes or one element");
  // As loaded: one element, 4 floats, or 8 halves in a uint4.
  using Raw = std::conditional_t<V == 1, scalar_t, std::conditional_t<std::is_same_v<scalar_t, float>, float4, uint4>>;
  float v[V];

  static __device__ __forceinline__ Raw load_raw(const scalar_t* p) {
    if constexpr (V == 1) {
      return *p;
    } else {
      return __ldg(reinterpret_cast<const Raw*>(p));
    }
  }
  static __device__ __forceinline__ Raw zero_raw() {
    if constexpr (V == 1) {
      return zero_value<scalar_t>();
    } else {
      return Raw{};
    }
  }

  __device__ __forceinline__ void widen_raw(const Raw& q) {
    if constexpr (V == 1) {
      v[0] = widen(q);
    } else if constexpr (std::is_same_v<scalar_t, float>) {
      v[0] = q.x, v[1] = q.y, v[2] = q.z, v[3] = q.w;
    } else {
      const unsigned words[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        v[2 * i] = widen(from_bits(static_cast<unsigned short>(words[i] & 0xffffu)));
        v[2 * i + 1] = widen(from_bits(static_cast<unsigned short>(words[i] >> 16)));
      }
    }
  }

  __device__ __forceinline__ void load(const scalar_t* p) { widen_raw(load_raw(p)); }

  __device__ __forceinline__ void store(scalar_t* p) const {
    if constexpr (V == 1) {
      *p = narrow<scalar_t>(v[0]);
    } else if constexpr (std::is_same_v<scalar_t, float>) {
      *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
    } else {
      unsigned words[4];
#pragma unroll
      for (int i = 0; i < 4; ++i)
        words[i] = unsigned(to_bits(narrow<scalar_t>(v[2 * i]))) | (unsigned(to_bits(narrow<scalar_t>(v[2 * i + 1]))) << 16);
      uint4 q;
      q.x = words[0], q.y = words[1], q.z = words[2], q.w = words[3];
      *reinterpret_cast<uint4*>(p) = q;
    }
  }

 private:
  static __device__ __forceinline__ scalar_t from_bits(unsigned short b) {
    if constexpr (std::is_same_v<scalar_t, __half>) {
      return __ushort_as_half(b);
    } else {
      return __ushort_as_bfloat16(b);
    }
  }
  static __device__ __forceinline__ unsigned short to_bits(scalar_t h) {
    if constexpr (std::is_same_v<scalar_t, __half>) {
      return __half_as_ushort(h);
    } else {
      return __bfloat16_as_ushort(h);
    }
  }
};

// K spatial-filter taps of a pixel's head (s: the first; stride: between taps).
template <typename scalar_t, int K>
__device__ __forceinline__ void load_taps(const scalar_t* s, int stride, float (&taps)[K]) {
  if (stride == 1) {  // channels_last spatial filter: contiguous taps, immediate offsets
#pragma unroll
    for (int t = 0; t < K; ++t) taps[t] = widen(s[t]);
  } else {
#pragma unroll
    for (int t = 0; t < K; ++t) taps[t] = widen(s[t * stride]);
  }
}

// A tap's channel filters of the thread's V channels from shared memory: 16-byte loads at an
// offset fixed at compile time (the staged filters start 16-byte aligned, and so does every
// lane's and tap's run: lane_filter_floats and V are multiples of 4 when V > 1).
template <int V>
__device__ __forceinline__ void load_filters(const float* ft, float (&fv)[V]) {
  if constexpr (V % 4 == 0) {
#pragma unroll
    for (int q = 0; q < V / 4; ++q) {
      const float4 w = reinterpret_cast<const float4*>(ft)[q];
      fv[4 * q] = w.x, fv[4 * q + 1] = w.y, fv[4 * q + 2] = w.z, fv[4 * q + 3] = w.w;
    }
  } else {
#pragma unroll
    for (int u = 0; u < V; ++u) fv[u] = ft[u];
  }
}

// One tap of a pixel: the thread's V channels of input (in, or loaded from p) times their
// combined filters (ft: the tap's staged channel filters, s: its spatial-filter value), added
// to acc.
template <typename scalar_t, Combine M, int V>
__device__ __forceinline__ void add_tap(const ChannelVector<scalar_t, V>& in, const float* ft, float s, float (&acc)[V]) {
  float fv[V];
  load_filters<V>(ft, fv);
#pragma unroll
  for (int u = 0; u < V; ++u) acc[u] += in.v[u] * combine_filters<M>(fv[u], s);
}
template <typename scalar_t, Combine M, int V>
__device__ __forceinline__ void add_tap(const scalar_t* p, const float* ft, float s, float (&acc)[V]) {
  ChannelVector<scalar_t, V> in;
  in.load(p);
  add_tap<scalar_t, M, V>(in, ft, s, acc);
}

// Stages the channel filters of channels [c_first, c_first + count) of batch b into shared
// memory as float, each channel lane's [k*k][V] together (lane_filter_floats); consecutive
// threads take consecutive taps of a channel. A contiguous channel filter (what pooling and a
// linear layer give) is one run of count x k*k values; other strides (an expanded filter) take
// the general index. Channels past the count: no thread of theirs reads them. The caller
// places the barrier.
template <typename scalar_t, int K, int V>
__device__ __forceinline__ void stage_channel_filters(float* filters, const scalar_t* __restrict__ cf, const Strides4& cs,
                                                      int b, int c_first, int count) {
  constexpr int KK = K * K, kLaneFloats = lane_filter_floats(K, V);
  const bool contiguous = cs.w == 1 && cs.h == K && cs.c == KK;
  const scalar_t* run = cf + (contiguous ? b * cs.n + int64_t(c_first) * KK : 0);
  for (int i = threadIdx.x; i < KK * count; i += kBlockThreads) {
    const int channel = i / KK, tap = i - channel * KK;
    filters[channel / V * kLaneFloats + tap * V + channel % V] =
        widen(contiguous ? run[i] : cf[cs.offset(b, c_first + channel, tap / K, tap % K)]);
  }
}

// Tap rows a pixel's loop unrolls: all three for k = 3 (every tap's loads in flight at once),
// one at a time for k = 5, 7 (all 25 or 49 in flight took 128+ registers and spilled).
template <int K>
constexpr int kUnrolledRows = K == 3 ? K : 1;
// Blocks per SM asked of the compiler: the plan's blocks_per_sm (its waves assume them), but 3
// for k = 3 with one- and 4-channel vectors on sm_86/sm_89, where 4-channel vectors spilled 8
// bytes at 64 registers. No spill, no stack on sm_80-sm_90 (make cuda-resources).
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ == 860 || __CUDA_ARCH__ == 890)
template <int K, int V>
constexpr int kMinBlocks = K == 3 && V != 8 ? 3 : blocks_per_sm(K, V);
#else
template <int K, int V>
constexpr int kMinBlocks = blocks_per_sm(K, V);
#endif

// What a thread keeps for all its pixels: its channels' place and the taps' column offsets.
template <int K>
struct ThreadTaps {
  int b, head, c0;
  int out_c;       // output offset of channel c0
  int row_step;    // input offset between tap rows: dilation * input row stride
  int col[K];      // input offset of tap column j from column 0: j * dilation * column stride
  int span;        // (K - 1) * dilation: a pixel's taps cover span + 1 rows and columns
};

// One output pixel whose taps all lie inside the image (most of them): no bounds checks; a
// tap's input is one address computation (64-bit pointer + 32-bit offset) and one 16-byte
// load. kTapsContiguous: the head's taps are contiguous in the spatial filter (channels_last),
// so their loads take immediate offsets.
template <typename scalar_t, Combine M, int K, int V, bool kTapsContiguous>
__device__ __forceinline__ void interior_pixel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ sf,
                                               const float* f, const NhwcGeometry& g, const ThreadTaps<K>& tt,
                                               int iy0, int ix0, int sf_pixel, float (&acc)[V]) {
  const scalar_t* first = x + (tt.b * g.xn + iy0 * g.xh + ix0 * g.xw + tt.c0);
#pragma unroll(kUnrolledRows<K>)
  for (int i = 0; i < K; ++i) {
    const scalar_t* row = first + i * tt.row_step;
    float taps[K];
    load_taps<scalar_t, K>(sf + (sf_pixel + i * K * (kTapsContiguous ? 1 : g.sc)), kTapsContiguous ? 1 : g.sc, taps);
#pragma unroll
    for (int j = 0; j < K; ++j) {
      add_tap<scalar_t, M, V>(row + tt.col[j], f + (i * K + j) * V, taps[j], acc);
    }
  }
}

// One output pixel near the border: taps outside the image are skipped (their rows' and
// columns' offsets are formed only inside it).
template <typename scalar_t, Combine M, int K, int S, int V>
__device__ __forceinline__ void border_pixel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ sf,
                                             const float* f, const NhwcGeometry& g, const ThreadTaps<K>& tt,
                                             int iy0, int ix0, int sf_pixel, float (&acc)[V]) {
#pragma unroll(kUnrolledRows<K>)
  for (int i = 0; i < K; ++i) {
    const int iy = iy0 + i * g.dilation;
    if (unsigned(iy) >= unsigned(g.H)) continue;
    const int row = tt.b * g.xn + iy * g.xh + tt.c0;
    float taps[K];
    load_taps<scalar_t, K>(sf + (sf_pixel + i * K * g.sc), g.sc, taps);
#pragma unroll
    for (int j = 0; j < K; ++j) {
      const int ix = ix0 + j * g.dilation;
      if (unsigned(ix) >= unsigned(g.W)) continue;
      add_tap<scalar_t, M, V>(x + (row + ix * g.xw), f + (i * K + j) * V, taps[j], acc);
    }
  }
}

// One output pixel (oy, ox) of the thread's V channels (f: their tap-0 filters in the block's
// staged channel filters).
template <typename scalar_t, Combine M, int K, int S, int V>
__device__ __forceinline__ void forward_pixel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ sf,
                                              scalar_t* __restrict__ out, const float* f, const NhwcGeometry& g,
                                              const ThreadTaps<K>& tt, int oy, int ox) {
  const int iy0 = oy * S - g.pad, ix0 = ox * S - g.pad;
  const int sf_pixel = tt.b * g.sn + tt.head * K * K * g.sc + oy * g.sh + ox * g.sw;
  float acc[V];
#pragma unroll
  for (int u = 0; u < V; ++u) acc[u] = 0.f;
  if (iy0 >= 0 && ix0 >= 0 && iy0 + tt.span < g.H && ix0 + tt.span < g.W) {
    if (g.sc == 1) {
      interior_pixel<scalar_t, M, K, V, true>(x, sf, f, g, tt, iy0, ix0, sf_pixel, acc);
    } else {
      interior_pixel<scalar_t, M, K, V, false>(x, sf, f, g, tt, iy0, ix0, sf_pixel, acc);
    }
  } else {
    border_pixel<scalar_t, M, K, S, V>(x, sf, f, g, tt, iy0, ix0, sf_pixel, acc);
  }
  ChannelVector<scalar_t, V> result;
#pragma unroll
  for (int u = 0; u < V; ++u) result.v[u] = acc[u];
  result.store(out + (tt.b * g.on + oy * g.oh + ox * g.ow + tt.out_c));
}

// Halves h .. h + 3 of 8 loaded as one 16-byte vector q (ChannelVector::Raw), widened.
template <typename scalar_t>
__device__ __forceinline__ void widen_four(const uint4& q, int h, float (&v)[4]) {
  ChannelVector<scalar_t, 8> all;
  all.widen_raw(q);  // (the other four are not computed: dead code)
#pragma unroll
  for (int u = 0; u < 4; ++u) v[u] = all.v[h + u];
}

// Two horizontally adjacent output pixels (oy, ox), (oy, ox + 1), stride 1 and dilation 1, whose
// taps all lie inside the image (8-channel half vectors): per tap row the K + 1 input vectors
// they read are loaded (all before any is widened) and each element widened once, column after
// column (tap j of the first pixel reads column j, of the second j + 1), and each tap's staged
// channel filters are read once for both. Each pixel's sum adds its taps in the order
// forward_pixel adds them, with the same float32 operations.
template <typename scalar_t, Combine M, int K, int V, bool kTapsContiguous>
__device__ __forceinline__ void interior_pair(const scalar_t* __restrict__ x, const scalar_t* __restrict__ sf,
                                              const float* f, const NhwcGeometry& g, const ThreadTaps<K>& tt,
                                              int iy0, int ix0, int sf_pixel, float (&acc0)[V], float (&acc1)[V]) {
  static_assert(V == 8 && sizeof(scalar_t) == 2, "pairs are for 8-channel half vectors (pixels_per_step)");
  const scalar_t* first = x + (tt.b * g.xn + iy0 * g.xh + ix0 * g.xw + tt.c0);
  const int tap_step = kTapsContiguous ? 1 : g.sc;
  // (One row at a time: its K + 1 input vectors and 2K taps in flight. All rows unrolled took
  // more than the 80 registers of 3 blocks per SM and spilled.)
#pragma unroll 1
  for (int i = 0; i < K; ++i) {
    const scalar_t* row = first + i * tt.row_step;
    const scalar_t* taps0 = sf + (sf_pixel + i * K * tap_step);  // the row's spatial-filter taps of each pixel
    const scalar_t* taps1 = taps0 + g.sw;
    uint4 raw[K + 1];
#pragma unroll
    for (int j = 0; j <= K; ++j) raw[j] = __ldg(reinterpret_cast<const uint4*>(row + j * g.xw));
    // Channels 0-3 of the vectors, then 4-7: half the widened columns and filters live at once.
#pragma unroll
    for (int h = 0; h < V; h += 4) {
      float left[4], right[4];  // channels h .. h + 3 of columns j and j + 1
      widen_four<scalar_t>(raw[0], h, left);
#pragma unroll
      for (int j = 0; j < K; ++j) {
        widen_four<scalar_t>(raw[j + 1], h, right);
        const float4 w = reinterpret_cast<const float4*>(f + (i * K + j) * V + h)[0];
        const float fv[4] = {w.x, w.y, w.z, w.w};
        const float s0 = widen(taps0[j * tap_step]), s1 = widen(taps1[j * tap_step]);
#pragma unroll
        for (int u = 0; u < 4; ++u) {
          acc0[h + u] += left[u] * combine_filters<M>(fv[u], s0);
          acc1[h + u] += right[u] * combine_filters<M>(fv[u], s1);
          left[u] = right[u];
        }
      }
    }
  }
}

// One step of a forward thread: n <= pixels_per_step(K, S, V) output pixels from (oy, ox)
// along the row. Two interior pixels at dilation 1 take interior_pair; others one at a time.
template <typename scalar_t, Combine M, int K, int S, int V>
__device__ __forceinline__ void forward_step(const scalar_t* __restrict__ x, const scalar_t* __restrict__ sf,
                                             scalar_t* __restrict__ out, const float* f, const NhwcGeometry& g,
                                             const ThreadTaps<K>& tt, int oy, int ox, int n) {
  constexpr int kStep = pixels_per_step(K, S, V);
  if constexpr (kStep == 2) {
    const int iy0 = oy - g.pad, ix0 = ox - g.pad;
    if (n == 2 && g.dilation == 1 && iy0 >= 0 && ix0 >= 0 && iy0 + tt.span < g.H && ix0 + 1 + tt.span < g.W) {
      const int sf_pixel = tt.b * g.sn + tt.head * K * K * g.sc + oy * g.sh + ox * g.sw;
      float acc0[V], acc1[V];
#pragma unroll
      for (int u = 0; u < V; ++u) acc0[u] = 0.f, acc1[u] = 0.f;
      if (g.sc == 1) {
        interior_pair<scalar_t, M, K, V, true>(x, sf, f, g, tt, iy0, ix0, sf_pixel, acc0, acc1);
      } else {
        interior_pair<scalar_t, M, K, V, false>(x, sf, f, g, tt, iy0, ix0, sf_pixel, acc0, acc1);
      }
      ChannelVector<scalar_t, V> r0, r1;
#pragma unroll
      for (int u = 0; u < V; ++u) r0.v[u] = acc0[u], r1.v[u] = acc1[u];
      scalar_t* o = out + (tt.b * g.on + oy * g.oh + ox * g.ow + tt.out_c);
      r0.store(o);
      r1.store(o + g.ow);
      return;
    }
  }
  forward_pixel<scalar_t, M, K, S, V>(x, sf, out, f, g, tt, oy, ox);
  if (kStep == 2 && n == 2) forward_pixel<scalar_t, M, K, S, V>(x, sf, out, f, g, tt, oy, ox + 1);
}

// The block of the forward and of grad_input: stage the block's channel filters, set up the
// thread's channels and its taps' column offsets in the taps' tensor (g.x*), then call
// pixel(tt, f, y, x, n) for each of the thread's steps of kStep pixels of the tile inside the
// map_h x map_w map: pixels x .. x + n - 1 of row y, n <= kStep of them in the tile and the map
// (f: the thread's staged channel filters). The steps are lane_p, lane_p + pixel_lanes, ... of the
// tile (row-major, rows of ceil(tile_w / kStep) steps), walked as (row, column) without a
// division per step.
template <typename scalar_t, int K, int V, int kStep, typename Pixel>
__device__ __forceinline__ void for_each_tile_pixel(const scalar_t* __restrict__ cf, const Strides4& cs,
                                                    const NhwcGeometry& g, float* filters, int map_h, int map_w,
                                                    Pixel&& pixel) {
  const int b = blockIdx.z, c_block = int(blockIdx.y) * g.block_channels;
  const int block_channels = std::min(g.block_channels, g.C - c_block);
  stage_channel_filters<scalar_t, K, V>(filters, cf, cs, b, c_block, block_channels);
  __syncthreads();

  const int lane_c = threadIdx.x & (g.channel_lanes - 1), lane_p = threadIdx.x / g.channel_lanes;
  if (lane_c * V >= block_channels) return;  // no barrier follows
  ThreadTaps<K> tt;
  tt.b = b;
  tt.c0 = c_block + lane_c * V;
  tt.head = tt.c0 / g.cph;
  tt.out_c = tt.c0 * g.oc;
  tt.row_step = g.dilation * g.xh;
  tt.span = (K - 1) * g.dilation;
#pragma unroll
  for (int j = 0; j < K; ++j) tt.col[j] = j * g.dilation * g.xw;  // < 2^31: a pixel's taps lie inside when used
  const float* f = filters + lane_c * lane_filter_floats(K, V);
  const int y0 = int(blockIdx.x) / g.tiles_x * g.tile_h, x0 = int(blockIdx.x) % g.tiles_x * g.tile_w;
  // (The tile's rows past the map hold no pixel: the walk ends at the first.)
  const int y_end = std::min(y0 + g.tile_h, map_h);
  int y = y0 + lane_p / g.steps_w, px = lane_p % g.steps_w;
#pragma unroll 1
  while (y < y_end) {
    const int x = x0 + px * kStep;
    if (x < map_w) pixel(tt, f, y, x, kStep == 1 ? 1 : std::min(std::min(kStep, g.tile_w - px * kStep), map_w - x));
    y += g.walk_y, px += g.walk_x;
    if (px >= g.steps_w) px -= g.steps_w, ++y;
  }
}

template <typename scalar_t, Combine M, int K, int S, int V>
__global__ void __launch_bounds__(kBlockThreads, kMinBlocks<K, V>) nhwc_forward_kernel(
    const scalar_t* __restrict__ x,
    const scalar_t* __restrict__ cf, Strides4 cs,
    const scalar_t* __restrict__ sf,
    scalar_t* __restrict__ out,
    NhwcGeometry g) {
  // Per channel lane, its channels' filters [K*K][V] (lane_filter_floats).
  DDF_DYNAMIC_SHARED(float, filters);
  for_each_tile_pixel<scalar_t, K, V, pixels_per_step(K, S, V)>(
      cf, cs, g, filters, g.Ho, g.Wo, [&](const ThreadTaps<K>& tt, const float* f, int oy, int ox, int n) {
        forward_step<scalar_t, M, K, S, V>(x, sf, out, f, g, tt, oy, ox, n);
      });
}

}  // namespace nhwc
}  // namespace cuda
}  // namespace ddf
