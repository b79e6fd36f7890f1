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
//                into registers and reuses them for every channel. Per step the lane stages
//                its channels' input tile and halo (zero outside the image) and their k*k
//                channel-filter values in shared memory, as float, interleaved in groups of
//                four channels (one 16-byte load per tap and group, ddf_cuda_tiled_plan.h).
//   grad_input   tile of inputs, a gather: each thread reads the k*k spatial-filter values
//                its input element gathers with once into registers (0 where no tap reads
//                it) and reuses them for every channel; grad_output is staged per channel.
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

#include <type_traits>

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
  t.c_begin = t.h * g.cph + int(blockIdx.y) * g.split_channels;  // < (h + 1) * cph <= C
  // Not c_begin + split_channels, which passes C in a head's last split (and int, near 2^31
  // channels).
  t.c_end = t.c_begin + std::min(g.split_channels, (t.h + 1) * g.cph - t.c_begin);
  return t;
}

__device__ __forceinline__ int plane_floats(const TiledGeometry& g) { return (g.halo_h * g.halo_w + 3) / 4 * 4; }

// Index of this thread within its channel lane; warps never straddle lanes.
__device__ __forceinline__ int lane_thread() { return threadIdx.y * blockDim.x + threadIdx.x; }

// A lane's channels of one step: c0 .. c0 + ch - 1, of which the first `active` exist.
//
// Index math rule of these kernels (32-bit, for speed): an index or pointer is formed only
// where it addresses an element that exists, i.e. behind its guard (u < active, a pixel
// inside the map, a tap inside the image), or in 64 bits. Every such index is then below 2^31
// (the plan's limits), while one formed for a lane with no channel (c0 past the split) could
// pass it: signed overflow, undefined even if never dereferenced.
struct LaneStep {
  int c0, active;
};

__device__ __forceinline__ LaneStep lane_step(const TiledGeometry& g, const BlockTile& t, int step) {
  LaneStep ls;
  ls.c0 = t.c_begin + (step * int(blockDim.z) + int(threadIdx.z)) * g.lane_channels;
  ls.active = std::max(0, std::min(g.lane_channels, t.c_end - ls.c0));
  return ls;
}

// Channels of a step whose channel-filter loads stage_channel_filters issues together: all 8
// for k = 3 and 5 (one round trip per step instead of one per channel); one at a time for
// k = 7, whose 49 taps take two loads per channel and whose forward kernel spilled on sm_80
// with more in flight.
template <int K>
constexpr int kFilterBatch = K == 7 ? 1 : kLaneChannels;

// Stages the step's k*k channel-filter values per channel as float, channel-major
// (filters[u * KP + tap]) or, kTapMajor (the forward), tap-major (filters[tap * kLaneChannels
// + u], 0 for channels past `active`), and a bit mask of the channels with a value that is
// not finite. Run by the lane's first warp (32 threads cover k*k <= 49 taps in one or two
// rounds), kFilterBatch channels' loads before their stores.
template <typename scalar_t, int K, bool kTapMajor = false>
__device__ __forceinline__ void stage_channel_filters(const scalar_t* cf, Strides4 cs, int b, LaneStep ls,
                                                      float* filters, int* nonfinite_mask) {
  constexpr int KK = K * K, KP = padded_taps(K), kRounds = (KK + 31) / 32, kBatch = kFilterBatch<K>;
  const int t = lane_thread();
  if (t >= 32) return;
  int mask = 0;
#pragma unroll
  for (int u0 = 0; u0 < kLaneChannels; u0 += kBatch) {
    scalar_t raw[kBatch][kRounds];  // two phases: see zero_value()
#pragma unroll
    for (int round = 0; round < kRounds; ++round) {
      const int tap = t + 32 * round;
      // The tap of channel c0 + u0 (64-bit: it may be past the split), then a channel stride
      // per channel.
      const int64_t at = cs.offset(b, ls.c0 + u0, tap / K, tap % K);
#pragma unroll
      for (int du = 0; du < kBatch; ++du)
        raw[du][round] = u0 + du < ls.active && tap < KK ? cf[at + du * cs.c] : zero_value<scalar_t>();
    }
    float v[kBatch][kRounds];
#pragma unroll
    for (int du = 0; du < kBatch; ++du)
#pragma unroll
      for (int round = 0; round < kRounds; ++round) v[du][round] = widen(raw[du][round]);
    // (No `break` here: the loops unroll fully, so v stays in registers; u < active is the
    // same for the whole warp, so the vote stays converged.)
#pragma unroll
    for (int du = 0; du < kBatch; ++du) {
      const int u = u0 + du;
      if (kTapMajor) {
        // Every channel of the group is read: the ones past `active` get their 0.
#pragma unroll
        for (int round = 0; round < kRounds; ++round) {
          const int tap = t + 32 * round;
          if (tap < KK) filters[tap * kLaneChannels + u] = v[du][round];
        }
      }
      if (u < ls.active) {
        bool bad = false;
#pragma unroll
        for (int round = 0; round < kRounds; ++round) {
          const int tap = t + 32 * round;
          if (tap < KK) {
            if (!kTapMajor) filters[u * KP + tap] = v[du][round];
            bad = bad || !is_finite(v[du][round]);
          }
        }
        if (__any_sync(0xffffffffu, bad)) mask |= 1 << u;
      }
    }
  }
  if (t == 0) *nonfinite_mask = mask;
}

// The staged halo of a block: rows [r0, r0 + h) x columns [c0, c0 + w) of a rows x cols map
// (0 outside it), the same for every step of the block.
struct Halo {
  int rows, cols, r0, c0, h, w;
};

// Its element e (row-major, so also the element's offset in a tile) as an offset in a plane,
// or -1 where it falls outside the map or past the halo.
__device__ __forceinline__ int halo_source(const Halo& hl, int e) {
  if (e >= hl.h * hl.w) return -1;
  const int r = e / hl.w, y = hl.r0 + r, x = hl.c0 + (e - r * hl.w);
  return y >= 0 && y < hl.rows && x >= 0 && x < hl.cols ? y * hl.cols + x : -1;
}

// A thread stages the halo elements e = lane_thread() + q * (threads per lane). The first
// N (its slots) are found once per block (a division each), not once per step, and their
// loads go out together: N x kLaneChannels loads in flight, one round trip to memory per
// step wherever the halo has at most N elements per thread. N is the kernel's
// halo_slots() (ddf_cuda_tiled_plan.h).
template <int N>
struct HaloSlots {
  int src[N];  // halo_source() of the slot's element
};

template <int N>
__device__ __forceinline__ HaloSlots<N> find_halo_slots(const Halo& hl) {
  HaloSlots<N> m;
  const int lt = lane_thread(), n = int(blockDim.x * blockDim.y);
#pragma unroll
  for (int q = 0; q < N; ++q) m.src[q] = halo_source(hl, lt + q * n);
  return m;
}

// One halo element of the step's channels: load (`src`: its offset in a plane, -1 for 0
// outside the map) and store (to `dst`, tiles tile_floats apart); the loads of a batch go
// out before any store waits for them.
template <typename scalar_t>
__device__ __forceinline__ void load_channels(const scalar_t* first, int plane_elems, int active, int src,
                                              float (&v)[kLaneChannels]) {
  scalar_t raw[kLaneChannels];  // two phases: see zero_value()
#pragma unroll
  for (int u = 0; u < kLaneChannels; ++u) raw[u] = src >= 0 && u < active ? first[u * plane_elems + src] : zero_value<scalar_t>();
#pragma unroll
  for (int u = 0; u < kLaneChannels; ++u) v[u] = widen(raw[u]);
}

__device__ __forceinline__ void store_channels(const float (&v)[kLaneChannels], int active, float* dst, int tile_floats) {
#pragma unroll
  for (int u = 0; u < kLaneChannels; ++u)
    if (u < active) dst[u * tile_floats] = v[u];
}

// Interleaved (the forward): element e of channel u at tiles[(u / 4) * group_floats + e * 4 +
// u % 4], one 16-byte store per group of four channels; the groups that hold a channel of
// the step's `active` are written whole (0 past `active`: load_channels' value there).
__device__ __forceinline__ void store_channel_groups(const float (&v)[kLaneChannels], int active, float* tiles, int e,
                                                     int group_floats) {
  static_assert(kLaneChannels == 2 * kGroupChannels, "two groups of four channels per step");
  *reinterpret_cast<float4*>(tiles + e * kGroupChannels) = make_float4(v[0], v[1], v[2], v[3]);
  if (active > kGroupChannels)
    *reinterpret_cast<float4*>(tiles + group_floats + e * kGroupChannels) = make_float4(v[4], v[5], v[6], v[7]);
}

template <bool kInterleaved>
__device__ __forceinline__ void store_element(const float (&v)[kLaneChannels], int active, float* tiles, int e,
                                              int tile_floats) {
  if (kInterleaved) {
    store_channel_groups(v, active, tiles, e, tile_floats);
  } else {
    store_channels(v, active, tiles + e, tile_floats);
  }
}

// Stages the halo of the step's `active` planes (`first` is the first one; planes are
// `plane_elems` apart) as float: tile u starts at tiles + u * tile_floats, or kInterleaved,
// group u / 4 at tiles + (u / 4) * tile_floats (store_channel_groups). Tiles of channels
// past `active` are not written (nothing reads them).
template <typename scalar_t, int N, bool kInterleaved = false>
__device__ __forceinline__ void stage_planes(const scalar_t* first, int plane_elems, int active, const Halo& hl,
                                             const HaloSlots<N>& m, float* tiles, int tile_floats) {
  const int lt = lane_thread(), n = int(blockDim.x * blockDim.y), elems = hl.h * hl.w;
  // The slots: all their loads first, then the stores (a load-store loop would wait for each
  // load in turn).
  float v[N][kLaneChannels];
#pragma unroll
  for (int q = 0; q < N; ++q) load_channels(first, plane_elems, active, m.src[q], v[q]);
#pragma unroll
  for (int q = 0; q < N; ++q)
    if (lt + q * n < elems) store_element<kInterleaved>(v[q], active, tiles, lt + q * n, tile_floats);
  // Halos of more than N elements per thread (k = 5 and 7, stride 2, large dilations, the
  // filter gradients' two rows per thread): the rest, one element at a time.
#pragma unroll 1
  for (int e = lt + N * n; e < elems; e += n) {
    float w[kLaneChannels];
    load_channels(first, plane_elems, active, halo_source(hl, e), w);
    store_element<kInterleaved>(w, active, tiles, e, tile_floats);
  }
}

// ---- forward: the grouped steps ------------------------------------------------------------

constexpr int kStepGroups = kLaneChannels / kGroupChannels;

// Stores group q's four results (channels 4q .. 4q + 3 of the step; those below `active`)
// through o, which walks one plane (plane_elems) per channel: 64-bit address steps, no index
// math per channel; its steps past the step's last channel are never dereferenced.
template <typename scalar_t>
__device__ __forceinline__ void store_group(float4 acc, int q, int active, scalar_t*& o, int plane_elems) {
  const float v[kGroupChannels] = {acc.x, acc.y, acc.z, acc.w};
#pragma unroll
  for (int u = 0; u < kGroupChannels; ++u, o += plane_elems)
    if (q * kGroupChannels + u < active) *o = narrow<scalar_t>(v[u]);
}

// One tap of a group's four channels: acc += value * combined filter, per channel (zero: the
// tap adds nothing, its combined filter taken as 0).
template <Combine M>
__device__ __forceinline__ void accumulate_tap(float4& acc, float4 value, float4 f, float s, bool zero = false) {
  acc.x += value.x * (zero ? 0.f : combine_filters<M>(f.x, s));
  acc.y += value.y * (zero ? 0.f : combine_filters<M>(f.y, s));
  acc.z += value.z * (zero ? 0.f : combine_filters<M>(f.z, s));
  acc.w += value.w * (zero ? 0.f : combine_filters<M>(f.w, s));
}

// ---- forward -------------------------------------------------------------------------------

// One output pixel for a group of four of the step's channels (acc[u]: channel 4q + u):
// taps of the group's interleaved input tile (xt: the pixel's first tap in it) times the
// combined filters (tap-major; f: the group's first channel's value of tap 0). Each tap is one
// 16-byte load of input and one of filter, both at offsets known at compile time past the
// pixel's first tap. kChecked: skip taps outside the image (for a non-finite channel-filter
// value; the finite channels lose nothing: those taps' inputs are staged 0, and acc, a sum
// from +0, is never -0, so adding a 0 product never changes it).
template <Combine M, int K, int S, bool kChecked>
__device__ __forceinline__ float4 forward_group(const float* xt, const float* f, const float (&s)[K * K],
                                                const TiledGeometry& g, int oy, int ox) {
  const int d = g.dilation, hw = g.halo_w;
  float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
  for (int i = 0; i < K; ++i) {
    const int iy = oy * S + i * d - g.pad;
#pragma unroll
    for (int j = 0; j < K; ++j) {
      const int ix = ox * S + j * d - g.pad;
      if (!kChecked || (iy >= 0 && iy < g.H && ix >= 0 && ix < g.W)) {
        const float4 xv = *reinterpret_cast<const float4*>(xt + (i * d * hw + j * d) * kGroupChannels);
        const float4 fv = *reinterpret_cast<const float4*>(f + (i * K + j) * kLaneChannels);
        accumulate_tap<M>(acc, xv, fv, s[i * K + j]);
      }
    }
  }
  return acc;
}

// Blocks per SM asked of the compiler (registers): 3 for k = 3 (80 registers; it takes 96
// unasked: two blocks, whose staging round trips overlap less with other blocks' work), 2 for
// k = 5 (128; 160-162 unasked: one). None spills there (make cuda-resources). grad_input
// asks 3 for k = 3 (__maxnreg__(80) instead left it 8-16 bytes of stack on sm_90) and nothing
// for k = 5, whose float stride-2 kernel spilled at 128 registers on sm_86/89.
template <typename scalar_t, Combine M, int K, int S>
__global__ void __launch_bounds__(kBlockThreads, K == 3 ? 3 : (K == 5 ? 2 : 1)) tiled_forward_kernel(
    const scalar_t* __restrict__ x,
    const scalar_t* __restrict__ cf, Strides4 cs,
    const scalar_t* __restrict__ sf,
    scalar_t* __restrict__ out,
    TiledGeometry g) {
  constexpr int KK = K * K;
  DDF_DYNAMIC_SHARED(float, smem);
  DDF_STATIC_SHARED(int, nonfinite_mask, kFlagWords);
  static_assert(sizeof(nonfinite_mask) <= kStaticSharedBytes, "the plan budgets kStaticSharedBytes of static shared memory");
  const BlockTile t = block_tile(g);
  const int tz = threadIdx.z, d = g.dilation, hw = g.halo_w, plane = plane_floats(g);
  // The lane's channel filters [KK][kLaneChannels], then its interleaved input tiles
  // (grouped_lane_floats in ddf_cuda_tiled_plan.h).
  float* filters = smem + tz * grouped_lane_floats(K, g.lane_channels, plane);
  float* x_tiles = filters + KK * kLaneChannels;
  const int group_floats = plane * kGroupChannels;
  const int oy = t.y0 + threadIdx.y, ox = t.x0 + threadIdx.x;
  const bool pixel = oy < g.Ho && ox < g.Wo;
  const int HW = g.H * g.W, HoWo = g.Ho * g.Wo;

  // This pixel's spatial-filter taps, 0 at taps outside the image.
  scalar_t raw[KK];  // two phases: see zero_value()
#pragma unroll
  for (int i = 0; i < K; ++i) {
    const int iy = oy * S + i * d - g.pad;
#pragma unroll
    for (int j = 0; j < K; ++j) {
      const int ix = ox * S + j * d - g.pad;
      const bool inside = pixel && iy >= 0 && iy < g.H && ix >= 0 && ix < g.W;
      raw[i * K + j] = inside ? sf[((t.b * g.G + t.h) * KK + i * K + j) * HoWo + oy * g.Wo + ox] : zero_value<scalar_t>();
    }
  }
  float s[KK];
#pragma unroll
  for (int tap = 0; tap < KK; ++tap) s[tap] = widen(raw[tap]);
  // The pixel's first tap in group 0's tile.
  const float* xt = x_tiles + (threadIdx.y * S * hw + threadIdx.x * S) * kGroupChannels;

  const Halo halo{g.H, g.W, t.y0 * S - g.pad, t.x0 * S - g.pad, g.halo_h, hw};
  const auto slots = find_halo_slots<halo_slots(Kernel::Forward)>(halo);
  const int steps = g.split_channels / (int(blockDim.z) * g.lane_channels);
  for (int step = 0; step < steps; ++step) {
    const LaneStep ls = lane_step(g, t, step);
    __syncthreads();  // the previous step's readers are done with the tiles
    stage_channel_filters<scalar_t, K, true>(cf, cs, t.b, ls, filters, &nonfinite_mask[tz]);
    stage_planes<scalar_t, halo_slots(Kernel::Forward), true>(ls.active > 0 ? x + (t.b * g.C + ls.c0) * HW : x, HW,
                                                              ls.active, halo, slots, x_tiles, group_floats);
    __syncthreads();
    if (!pixel || ls.active == 0) continue;  // below: c0 is a real channel
    // A group of four channels at a time, its outputs stored before the next group's start
    // (fewer live registers: 80 hold it with no stack on sm_80-sm_90); the taps unchecked
    // unless a channel of this step has a non-finite filter.
    const bool checked = nonfinite_mask[tz] != 0;
    scalar_t* o = out + (t.b * g.C + ls.c0) * HoWo + oy * g.Wo + ox;
#pragma unroll
    for (int q = 0; q < kStepGroups; ++q) {
      if (q * kGroupChannels >= ls.active) break;
      const float* xg = xt + q * group_floats;
      const float* fg = filters + q * kGroupChannels;
      store_group(checked ? forward_group<M, K, S, true>(xg, fg, s, g, oy, ox)
                          : forward_group<M, K, S, false>(xg, fg, s, g, oy, ox),
                  q, ls.active, o, HoWo);
    }
  }
}

// ---- grad_input ----------------------------------------------------------------------------

// One grad_input element for a group of four of the step's channels: the gather over the
// output pixels whose taps read (iy, ix), from the group's interleaved grad_output tile
// (0 outside grad_output; as the forward's input tiles) and the element's spatial-filter
// values per tap, s (0 where no output pixel's tap reads it), with the tap-major channel
// filters f (the group's first channel's value of tap 0). Stride 1: go is the element's own
// position in the tile, and tap (i, j) reads (i * d * hw + j * d) elements before it, an
// offset fixed at compile time but for d and hw, as the forward's taps; stride 2: go is the
// tile, addressed by the output pixel's row and column. kChecked: taps from outside
// grad_output add nothing (for a non-finite channel-filter value; as in forward_group, the
// finite channels lose nothing). Stride 1 zeroes their combined filter instead of branching
// around them: the same addresses as unchecked, so no tap address is kept in a register.
template <Combine M, int K, int S, bool kChecked>
__device__ __forceinline__ float4 grad_input_group(const float* go, const float* f, const float (&s)[K * K],
                                                   int oy_lo, int ox_lo, const TiledGeometry& g, int iy, int ix) {
  const int d = g.dilation, hw = g.halo_w;
  float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
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
      const bool inside = y >= 0 && y < g.Ho && xo >= 0 && xo < g.Wo;
      if (S == 2 && kChecked && !inside) continue;
      const float* at = S == 1 ? go - (i * d * hw + j * d) * kGroupChannels
                               : go + ((y - oy_lo) * hw + (xo - ox_lo)) * kGroupChannels;
      const float4 gv = *reinterpret_cast<const float4*>(at);
      const float4 fv = *reinterpret_cast<const float4*>(f + (i * K + j) * kLaneChannels);
      accumulate_tap<M>(acc, gv, fv, s[i * K + j], S == 1 && kChecked && !inside);
    }
  }
  return acc;
}

template <typename scalar_t, Combine M, int K, int S>
__global__ void __launch_bounds__(kBlockThreads, K == 3 ? 3 : 1) tiled_grad_input_kernel(
    const scalar_t* __restrict__ go,
    const scalar_t* __restrict__ cf, Strides4 cs,
    const scalar_t* __restrict__ sf,
    scalar_t* __restrict__ gi,
    TiledGeometry g) {
  constexpr int KK = K * K;
  DDF_DYNAMIC_SHARED(float, smem);
  DDF_STATIC_SHARED(int, nonfinite_mask, kFlagWords);
  static_assert(sizeof(nonfinite_mask) <= kStaticSharedBytes, "the plan budgets kStaticSharedBytes of static shared memory");
  const BlockTile t = block_tile(g);
  const int tz = threadIdx.z, d = g.dilation, hw = g.halo_w, plane = plane_floats(g);
  const int HW = g.H * g.W, HoWo = g.Ho * g.Wo;
  // The lane's channel filters [KK][kLaneChannels], then its interleaved grad_output tiles
  // (grouped_lane_floats in ddf_cuda_tiled_plan.h).
  float* filters = smem + tz * grouped_lane_floats(K, g.lane_channels, plane);
  float* go_tiles = filters + KK * kLaneChannels;
  const int group_floats = plane * kGroupChannels;
  // The grad_output rows/columns whose taps reach this tile start here (may be negative).
  const int oy_lo = int(floor_div(t.y0 + g.pad - (K - 1) * d, S));
  const int ox_lo = int(floor_div(t.x0 + g.pad - (K - 1) * d, S));
  const int iy = t.y0 + threadIdx.y, ix = t.x0 + threadIdx.x;
  const bool pixel = iy < g.H && ix < g.W;
  // This element's spatial-filter value per tap, read once for all the block's channels: tap
  // (i, j) of output pixel (y, x) reads it when y * S = iy + pad - i * d and likewise for x,
  // inside grad_output; 0 otherwise (all loads in flight together).
  scalar_t raw[KK];  // two phases: see zero_value()
#pragma unroll
  for (int i = 0; i < K; ++i) {
    const int py = iy + g.pad - i * d, y = py >> (S - 1);
    const bool row = pixel && !(S == 2 && (py & 1)) && y >= 0 && y < g.Ho;
#pragma unroll
    for (int j = 0; j < K; ++j) {
      const int px = ix + g.pad - j * d, xo = px >> (S - 1);
      const bool inside = row && !(S == 2 && (px & 1)) && xo >= 0 && xo < g.Wo;
      raw[i * K + j] = inside ? sf[((t.b * g.G + t.h) * KK + i * K + j) * HoWo + y * g.Wo + xo] : zero_value<scalar_t>();
    }
  }
  float s[KK];
#pragma unroll
  for (int tap = 0; tap < KK; ++tap) s[tap] = widen(raw[tap]);
  const Halo halo{g.Ho, g.Wo, oy_lo, ox_lo, g.halo_h, hw};
  const auto slots = find_halo_slots<halo_slots(Kernel::GradInput)>(halo);
  const int steps = g.split_channels / (int(blockDim.z) * g.lane_channels);
  for (int step = 0; step < steps; ++step) {
    const LaneStep ls = lane_step(g, t, step);
    __syncthreads();
    stage_channel_filters<scalar_t, K, true>(cf, cs, t.b, ls, filters, &nonfinite_mask[tz]);
    stage_planes<scalar_t, halo_slots(Kernel::GradInput), true>(ls.active > 0 ? go + (t.b * g.C + ls.c0) * HoWo : go,
                                                                HoWo, ls.active, halo, slots, go_tiles, group_floats);
    __syncthreads();
    if (!pixel || ls.active == 0) continue;  // below: c0 is a real channel
    // As the forward: a group of four channels at a time, stored before the next group.
    const bool checked = nonfinite_mask[tz] != 0;
    // Stride 1: the element's own position in group 0's tile (its tap (0, 0) comes from the
    // output pixel (iy + pad, ix + pad), tap (i, j) from i * d rows and j * d columns before).
    const float* go_pixel = go_tiles + ((iy + g.pad - oy_lo) * hw + (ix + g.pad - ox_lo)) * kGroupChannels;
    // (One 32-bit index, below 2^31 by the plan: summed onto the pointer piece by piece, the
    // compiler kept iy * W + ix as a 64-bit value across the steps, a register pair too many.)
    scalar_t* o = gi + ((t.b * g.C + ls.c0) * HW + iy * g.W + ix);
#pragma unroll
    for (int q = 0; q < kStepGroups; ++q) {
      if (q * kGroupChannels >= ls.active) break;
      const float* gt = (S == 1 ? go_pixel : go_tiles) + q * group_floats;
      const float* fg = filters + q * kGroupChannels;
      store_group(checked ? grad_input_group<M, K, S, true>(gt, fg, s, oy_lo, ox_lo, g, iy, ix)
                          : grad_input_group<M, K, S, false>(gt, fg, s, oy_lo, ox_lo, g, iy, ix),
                  q, ls.active, o, HW);
    }
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

// One channel's terms for a thread's R output pixels (rows oy0..oy0+R-1 of column ox):
// gs[r][tap] += go * x_tap * dF/dsf, q[tap] += go * x_tap * dF/dcf. xt is the first tap of
// row oy0 in the staged input tile (0 outside the image); rows past the map are skipped. kChecked: only taps inside the
// image reach q (for a non-finite grad_output value; gs is masked when it is written).
template <Combine M, int K, int S, int R, bool kChecked>
__device__ __forceinline__ void filter_grads_pixels(const float (&gv)[R], const bool (&row_pixel)[R], const float* xt, const float* f,
                                                    const float (&s)[M == Combine::Mul ? R * K * K : 1],
                                                    float (&gs)[R * K * K], float (&q)[pow2_ceil(K * K)],
                                                    const TiledGeometry& g, int oy0, int ox) {
  constexpr int KK = K * K;
  const int d = g.dilation, hw = g.halo_w;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    if (!row_pixel[r]) continue;  // no such pixel: its tile values must not meet a 0 * inf
#pragma unroll
    for (int i = 0; i < K; ++i) {
      const int iy = (oy0 + r) * S + i * d - g.pad;
#pragma unroll
      for (int j = 0; j < K; ++j) {
        const int ix = ox * S + j * d - g.pad;
        const float p = gv[r] * xt[(r * S + i * d) * hw + j * d];
        gs[r * KK + i * K + j] += p * dcombine_db<M>(f[i * K + j]);
        if (!kChecked || (iy >= 0 && iy < g.H && ix >= 0 && ix < g.W))
          q[i * K + j] += M == Combine::Mul ? p * s[r * KK + i * K + j] : p;
      }
    }
  }
}

// Each thread covers R consecutive output rows of one column. channel_partial gets
// [tile][b][c][tap] sums over the tile's pixels, or, when the map is one tile, grad_channel
// gets the result itself (both null: not asked for); grad_spatial is written
// directly (one split per head, contiguous result) or spatial_partial gets [split][...].
template <typename scalar_t, Combine M, int K, int S, int R>
__global__ void __maxnreg__(K == 3 ? 128 : (K == 5 ? 200 : 255)) tiled_filter_grads_kernel(
    const scalar_t* __restrict__ go,
    const scalar_t* __restrict__ x,
    const scalar_t* __restrict__ cf, Strides4 cs,
    const scalar_t* __restrict__ sf,
    float* __restrict__ channel_partial,
    scalar_t* __restrict__ grad_channel, Strides4 gcs,
    scalar_t* __restrict__ grad_spatial,
    float* __restrict__ spatial_partial,
    TiledGeometry g) {
  constexpr int KK = K * K, KP = padded_taps(K), NP = pow2_ceil(KK);
  using TapSum = WarpTapSum<NP>;
  DDF_DYNAMIC_SHARED(float, smem);
  DDF_STATIC_SHARED(int, nonfinite_go, kFlagWords);
  static_assert(sizeof(nonfinite_go) <= kStaticSharedBytes, "the plan budgets kStaticSharedBytes of static shared memory");
  const BlockTile t = block_tile(g);
  const int tz = threadIdx.z, d = g.dilation, hw = g.halo_w, lt = lane_thread(), ch = g.lane_channels;
  const int plane = plane_floats(g), HW = g.H * g.W, HoWo = g.Ho * g.Wo;
  const int lane_threads = int(blockDim.x * blockDim.y), warps_per_lane = lane_threads / 32;
  const int lane = lt % 32, warp = lt / 32;
  float* filters = smem + tz * ch * (KP + plane);  // [ch][KP], then the input tiles [ch][plane]
  float* x_tiles = filters + ch * KP;
  // [lane][warp][u][tap]: each warp's sums of the step's channels, after the lanes' tiles.
  float* warp_sums = smem + blockDim.z * ch * (KP + plane) + (tz * warps_per_lane + warp) * ch * KK;
  float* lane_warp_sums = smem + blockDim.z * ch * (KP + plane) + tz * warps_per_lane * ch * KK;
  // [lane][u][r][lane thread]: each thread's own grad_output values of a step, after the sums.
  float* go_own = smem + blockDim.z * ch * (KP + plane + warps_per_lane * KK) + tz * ch * R * lane_threads + lt;
  const bool want_channel = channel_partial != nullptr || grad_channel != nullptr;
  const bool want_spatial = grad_spatial != nullptr || spatial_partial != nullptr;
  const int ox = t.x0 + threadIdx.x, oy0 = t.y0 + threadIdx.y * R;

  // dF/dcf at each tap of each pixel ("mul": the spatial filter, 0 outside the image).
  constexpr int kTaps = M == Combine::Mul ? R * KK : 1;
  scalar_t raw_s[kTaps];  // two phases: see zero_value()
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
          raw_s[r * KK + i * K + j] =
              inside ? sf[((t.b * g.G + t.h) * KK + i * K + j) * HoWo + oy * g.Wo + ox] : zero_value<scalar_t>();
        }
    }
  }
  float s[kTaps];
  if constexpr (M == Combine::Mul) {
#pragma unroll
    for (int tap = 0; tap < kTaps; ++tap) s[tap] = widen(raw_s[tap]);
  }
  float gs[R * KK];
#pragma unroll
  for (int u = 0; u < R * KK; ++u) gs[u] = 0.f;
  const int at = threadIdx.y * R * S * hw + threadIdx.x * S;  // the thread's first tap in a tile

  const Halo halo{g.H, g.W, t.y0 * S - g.pad, t.x0 * S - g.pad, g.halo_h, hw};
  const auto slots = find_halo_slots<halo_slots(Kernel::FilterGrads)>(halo);
  const int steps = g.split_channels / (int(blockDim.z) * ch);
  for (int step = 0; step < steps; ++step) {
    const LaneStep ls = lane_step(g, t, step);
    __syncthreads();
    for (int e = lt; e < ch * KK; e += lane_threads) {
      const int u = e / KK, tap = e % KK;
      if (u < ls.active) filters[u * KP + tap] = widen(cf[cs.offset(t.b, ls.c0 + u, tap / K, tap % K)]);
    }
    stage_planes(ls.active > 0 ? x + (t.b * g.C + ls.c0) * HW : x, HW, ls.active, halo, slots, x_tiles, plane);
    // This thread's grad_output values of the step, and whether any is not finite.
    // All the step's loads before the first store: one round trip to memory, not one per value.
    scalar_t raw[kLaneChannels][R];  // two phases: see zero_value()
#pragma unroll
    for (int u = 0; u < kLaneChannels; ++u)
#pragma unroll
      for (int r = 0; r < R; ++r)
        raw[u][r] = u < ls.active && row_pixel[r] ? go[(t.b * g.C + ls.c0 + u) * HoWo + (oy0 + r) * g.Wo + ox] : zero_value<scalar_t>();
    float gv_step[kLaneChannels][R];
#pragma unroll
    for (int u = 0; u < kLaneChannels; ++u)
#pragma unroll
      for (int r = 0; r < R; ++r) gv_step[u][r] = widen(raw[u][r]);
    bool finite = true;
#pragma unroll
    for (int u = 0; u < kLaneChannels; ++u) {
      if (u < ls.active) {
#pragma unroll
        for (int r = 0; r < R; ++r) {
          go_own[(u * R + r) * lane_threads] = gv_step[u][r];
          finite = finite && is_finite(gv_step[u][r]);
        }
      }
    }
    const bool warp_finite = __all_sync(0xffffffffu, finite);
    if (lane == 0) nonfinite_go[tz * warps_per_lane + warp] = !warp_finite;
    __syncthreads();
    // A non-finite grad_output value times a padding zero must not reach
    // grad_channel_filter: a lane step with one takes the loop that checks every tap.
    bool checked = false;
    for (int w = 0; w < warps_per_lane; ++w) checked = checked || nonfinite_go[tz * warps_per_lane + w];
    auto channel = [&](int u, auto checked_taps) {
      float q[NP];
#pragma unroll
      for (int v = 0; v < NP; ++v) q[v] = 0.f;
      if (u < ls.active) {
        float gv[R];
#pragma unroll
        for (int r = 0; r < R; ++r) gv[r] = go_own[(u * R + r) * lane_threads];
        filter_grads_pixels<M, K, S, R, decltype(checked_taps)::value>(gv, row_pixel, x_tiles + u * plane + at,
                                                                        filters + u * KP, s, gs, q, g, oy0, ox);
      }
      if (want_channel) {
        TapSum::run(q, lane);
#pragma unroll
        for (int m = 0; m < TapSum::kept; ++m) {
          const int tap = TapSum::index(lane, m);
          if (lane % TapSum::group == 0 && tap < KK) warp_sums[u * KK + tap] = q[m];
        }
      }
    };
    // Every lane runs all ch channels: the warp sums need whole warps.
    if (!checked) {
#pragma unroll 1
      for (int u = 0; u < ch; ++u) channel(u, std::false_type());
    } else {
#pragma unroll 1
      for (int u = 0; u < ch; ++u) channel(u, std::true_type());
    }
    if (want_channel) {
      __syncthreads();
      for (int e = lt; e < ls.active * KK; e += lane_threads) {
        float total = 0.f;
        for (int w = 0; w < warps_per_lane; ++w) total += lane_warp_sums[w * ch * KK + e];
        if (grad_channel != nullptr) {  // one tile: the block's sums are the result
          grad_channel[gcs.offset(t.b, ls.c0 + e / KK, e % KK / K, e % K)] = narrow<scalar_t>(total);
        } else {
          channel_partial[((int64_t(blockIdx.x) * g.B + t.b) * g.C + ls.c0) * KK + e] = total;
        }
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
