// Which calls the channels_last CUDA kernels (ddf_cuda_nhwc_kernels.cuh, the forward;
// ddf_cuda_nhwc_backward_kernels.cuh, grad_input and the filter gradients) take, and the block,
// grid and shared memory of each launch. Host code, torch-free, like ddf_cuda_tiled_plan.h: the
// CUDA glue and the emulator's tests plan with this same function.
//
// The NHWC kernels cover what channels_last networks produce (docs/design.md, section 6). Each
// kernel reads one tensor at its taps and one at its tile's own pixels:
//   forward      taps: input (H x W)         pixels: output, written (Ho x Wo)
//   grad_input   taps: grad_output (Ho x Wo) pixels: grad_input, written (H x W)
//   filter_grads taps: input (H x W)         pixels: grad_output, read (Ho x Wo)
// The taps' tensor has channel stride 1 (channels_last, or a slice of it); the pixels' tensor
// too for 16-byte vectors, any strides for one channel per thread; any spatial filter and
// channel filter strides (a 1x1 convolution gives a channels_last spatial filter, pooling a
// contiguous channel filter); k in {3, 5, 7}, stride 1 or 2, any dilation; float32, float16
// and bfloat16; offsets below 2^31 (32-bit indexing). A call that is contiguous NCHW takes the
// NCHW tiled kernels first (ddf_cuda_paths.h).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "../ddf_geometry.h"

namespace ddf {
namespace cuda {
namespace nhwc {

constexpr int kBlockThreads = 256;
// Bytes a thread loads or stores at once along the channels: one 128-bit access.
constexpr int kVectorBytes = 16;
// Steps (pixels_per_step pixels each) a forward or grad_input thread takes at most, one after
// another for all its channels: more amortize the block's channel-filter staging and the
// thread's setup; the plan takes fewer where that fills the GPU's waves of blocks better
// (plan_nhwc). 8, not 6: a 7 x 7 map (and a 7 x 7 tile of 14 x 14) is then one tile of 8
// pixel lanes x 7 pixels, not 2-3 smaller ones whose staging and setup the block repeats.
constexpr int kMaxStepsPerThread = 8;
// A wave of blocks: the SMs of an H100 / H200 SXM times the blocks of the forward (and
// grad_input) kernel each holds on sm_90 with `vector` channels per thread, as their launch
// bounds ask (kMinBlocks in ddf_cuda_nhwc_kernels.cuh): for k = 3, 4 with one- and 4-channel
// vectors (64 registers) and 3 with 8 (80: at 64 they spilled); for k = 5, 3 with one- and
// 4-channel vectors (80: they take 46-80) and 2 with 8; 2 for k = 7 (up to 128).
constexpr int64_t kWaveSms = 132;
constexpr int blocks_per_sm(int k, int vector) {
  return k == 3 ? (vector == 8 ? 3 : 4) : k == 5 && vector != 8 ? 3 : 2;
}
// Output pixels a forward thread computes side by side in one step: two horizontal neighbours
// for k = 3, stride 1 with 8-channel vectors (half precision, issue-bound: a half tap costs a
// widening besides its two float operations), which share the input columns their taps read
// (per tap row K + 1 vectors loaded and widened, not 2K) and each tap's staged channel
// filters; else one. (The pair's path needs dilation 1; other dilations take it one pixel
// at a time.) The tile walk steps by it, and the plan counts tile rows in steps.
constexpr int pixels_per_step(int k, int s, int vector) { return k == 3 && s == 1 && vector == 8 ? 2 : 1; }
// Widest tile row, in pixels: a block's pixels form a near-square tile, so the input rows its
// taps read (the halo) are few per pixel and mostly hit L1/L2.
constexpr int kMaxTileWidth = 8;
constexpr int64_t kMaxIndex = (int64_t(1) << 31) - 1;
// Shared memory per block: the channel filters of its channels, as float (lane_filter_floats
// per channel lane), within the 48 KiB a launch may use without an opt-in (k = 7 with 8-channel
// vectors: 16 lanes, 25 KiB, instead of 32). No static shared memory.
constexpr std::size_t kMaxSharedBytes = 48 * 1024;
// The filter-gradient kernel: grad_channel_filter summed over the block's pixels through shared
// memory, one float per thread and channel it holds, two buffers; more pixels per thread than
// the forward's (each tap's sums cost about kGradBlockOverhead pixels' work, once per block);
// 2 blocks per SM (its registers). A map of several tiles also costs the launch of the sum of
// the tiles' grad_channel_filter partials, about kGradPartialSumsCost pixels' work of a block
// (a 3 µs launch and its reads, against about 2.5 µs per pixel of a block on an H100).
constexpr int kMaxGradPixelsPerThread = 12;
constexpr int kGradBlockOverhead = 2;
constexpr int kGradBlocksPerSm = 2;
constexpr int kGradPartialSumsCost = 2;
// Channels a filter-gradient thread holds (several 16-byte vectors) where the heads allow: its
// grad_spatial_filter terms are summed over a head's lanes by a shuffle tree per (pixel, tap),
// and fewer, wider lanes make that tree shallower and its cost a smaller share.
constexpr int kGradChannels = 16;

enum class NhwcKernel { Forward, GradInput, FilterGrads };

// The filter-gradient kernel writes grad_spatial_filter itself (a head in one block) only when
// the offsets within one (b, head, tap) plane of it fit in int: its per-pixel offset is 32-bit.
// Else it writes float partials, and the sum kernel (64-bit offsets) writes the result. (A
// dense result always fits where its spatial filter passed the plan's reach check.)
inline bool spatial_plane_fits(const Strides4& gss, int64_t Ho, int64_t Wo) {
  return gss.h >= 0 && gss.w >= 0 && gss.h <= kMaxIndex && gss.w <= kMaxIndex &&
         (Ho - 1) * gss.h + (Wo - 1) * gss.w <= kMaxIndex;
}

// What the kernel needs besides its pointers; 32-bit because the plan only takes offsets below
// 2^31. Strides in elements. "x": the tensor the taps read (channel stride 1); "o": the tensor
// at the tile's pixels (see the table above).
struct NhwcGeometry {
  int C, H, W, Ho, Wo, cph, dilation, pad;
  int xn, xh, xw;      // the taps' tensor's strides
  int on, oc, oh, ow;  // the pixels' tensor's strides (oc is 1 but for one-channel threads)
  int sn, sc, sh, sw;  // spatial-filter strides
  int channel_lanes;   // threads sharing a pixel, each with vectors x `vector` channels (a power of two)
  int vectors;         // 16-byte vectors (or single channels) per thread: 1 but for the filter gradients
  // The channels of a block: channel_lanes * vectors * vector, from blockIdx.y * block_channels. The
  // filter gradients keep a head's channels in its own blocks (a head's spatial-filter gradient
  // is a sum over them): head_blocks > 1, each head spans head_blocks blocks of block_channels
  // (its last one partial); head_blocks == 1, a block holds block_channels / cph whole heads.
  int block_channels;
  int head_blocks;
  int head_lanes;      // a power of two >= the channel lanes of a head in a block (shuffle steps)
  int tile_w, tile_h, tiles_x;  // the block's tile of the pixels' map; blockIdx.x = tile_y * tiles_x + tile_x
  // The walk over a tile: rows of steps_w steps of pixels_per_step pixels (the filter
  // gradients and grad_input: 1), a thread's next step walk_y rows and walk_x steps on (its
  // pixel lanes apart). From the plan, so that they sit in the kernel's parameters, not in
  // registers across its pixel loop.
  int steps_w, walk_y, walk_x;
};

// Shared floats of one channel lane's staged channel filters: [k*k][V], padded so that 16-byte
// loads of the lanes of a warp hit distinct banks (a lane stride of an odd number of 16-byte
// units: k*k is odd, so only V = 8 needs the padding). At a compile-time offset per tap.
constexpr int lane_filter_floats(int k, int vector) { return k * k * vector + (vector == 8 ? 4 : 0); }

struct NhwcPlan {
  bool use = false;
  const char* reason = "";  // why not, for tests and debugging
  int vector = 0;           // channels per thread: kVectorBytes / element bytes, or 1
  NhwcGeometry g{};
  unsigned grid_x = 0, grid_y = 0, grid_z = 0, block_x = 0;
  std::size_t shared_bytes = 0;
};

// Largest offset an access with these strides reaches (the kernel forms offsets only for
// elements that exist, so this bounds every one).
inline int64_t reach(const Strides4& st, int64_t N, int64_t C, int64_t H, int64_t W) {
  return (N - 1) * st.n + (C - 1) * st.c + (H - 1) * st.h + (W - 1) * st.w;
}

// kind: which kernel; geo: the call's geometry after the argument checks; xs: the taps'
// tensor's strides, ss: the spatial filter's, os: the pixels' tensor's (the table above);
// element_bytes: of the dtype; vector_aligned: the data pointers of the taps' and pixels'
// tensors are kVectorBytes-aligned (a slice along the channels breaks it); max_grid_x/y:
// launcher limits; wave_blocks: 0, or (tests only: GridLimits::target_blocks) the blocks of a
// wave, 1 to give each thread the most pixels on a small map.
inline NhwcPlan plan_nhwc(NhwcKernel kind, const Geometry& geo, const Strides4& xs, const Strides4& ss,
                          const Strides4& os, bool supported_dtype, int element_bytes, bool vector_aligned,
                          int64_t max_grid_x, int64_t max_grid_y, int64_t wave_blocks = 0) {
  NhwcPlan p;
  const int64_t k = geo.k, s = geo.stride, kk = k * k, span = (k - 1) * geo.dilation;
  // The taps' map and the pixels' map.
  const bool transposed = kind == NhwcKernel::GradInput;
  const int64_t tap_h = transposed ? geo.Ho : geo.H, tap_w = transposed ? geo.Wo : geo.W;
  const int64_t map_h = transposed ? geo.H : geo.Ho, map_w = transposed ? geo.W : geo.Wo;
  if (!supported_dtype) return p.reason = "dtype is not float32/float16/bfloat16", p;
  if (k != 3 && k != 5 && k != 7) return p.reason = "kernel size is not 3, 5 or 7", p;
  if (s != 1 && s != 2) return p.reason = "stride is not 1 or 2", p;
  if (geo.B * geo.C * geo.Ho * geo.Wo == 0 || geo.H * geo.W == 0) return p.reason = "empty", p;
  if (xs.c != 1) return p.reason = "the taps' tensor has a channel stride other than 1", p;
  const Strides4 strides[3] = {xs, ss, os};
  for (const Strides4& st : strides)
    if (st.n < 0 || st.h < 0 || st.w < 0 || st.c < 0) return p.reason = "a negative stride", p;
  // (Tap coordinates, o * s - pad + i * d, stay in int: H, W and the span below 2^29; so do a
  // thread's tap offsets, i * d * row stride and j * d * column stride.)
  if (reach(xs, geo.B, geo.C, tap_h, tap_w) > kMaxIndex || reach(os, geo.B, geo.C, map_h, map_w) > kMaxIndex ||
      reach(ss, geo.B, geo.G * kk, geo.Ho, geo.Wo) > kMaxIndex ||
      std::max({xs.n, xs.h, xs.w, os.n, os.c, os.h, os.w, ss.n, ss.c, ss.h, ss.w}) > kMaxIndex || geo.H > kMaxIndex / 4 ||
      geo.W > kMaxIndex / 4 || span > kMaxIndex / 4 || span * xs.h > kMaxIndex || span * xs.w > kMaxIndex)
    return p.reason = "an offset reaches 2^31", p;
  if (geo.B > 65535) return p.reason = "batch > 65535 (grid z)", p;

  // Channels per thread: a 16-byte vector when every vector starts aligned and lies in one head,
  // and the pixels' tensor has channel stride 1 too; else one (an output with another channel
  // stride is what a view of channels_last input that torch does not call channels_last gets).
  const int64_t cph = geo.C / geo.G, v = kVectorBytes / element_bytes;
  const bool vectors = vector_aligned && cph % v == 0 && os.c == 1 && xs.n % v == 0 && xs.h % v == 0 &&
                       xs.w % v == 0 && os.n % v == 0 && os.h % v == 0 && os.w % v == 0;
  p.vector = vectors ? int(v) : 1;
  // The filter gradients: as many vectors per thread (up to kGradChannels channels) as divide
  // the heads.
  const bool filter_grads = kind == NhwcKernel::FilterGrads;
  int per_thread = 1;
  if (filter_grads && p.vector > 1) {
    per_thread = kGradChannels / p.vector;
    while (per_thread > 1 && cph % (int64_t(per_thread) * p.vector) != 0) per_thread /= 2;
  }
  const int64_t thread_channels = int64_t(per_thread) * p.vector;
  int lanes = 1;
  while (lanes < 32 && lanes * thread_channels < geo.C) lanes *= 2;
  // Shared memory: the staged channel filters, and for the filter gradients the per-thread sums.
  auto bytes = [&] {
    return (std::size_t(lanes) * per_thread * lane_filter_floats(int(k), p.vector) +
            (filter_grads ? 2 * kBlockThreads * thread_channels : 0)) * sizeof(float);
  };
  while (bytes() > kMaxSharedBytes) lanes /= 2;  // (k = 7: 32 KiB of sums and 3 KiB a lane: 4 lanes fit)
  int64_t block_channels = lanes * thread_channels, head_blocks = 1, channel_blocks = 0;
  if (!filter_grads) {
    channel_blocks = ceil_div(geo.C, block_channels);
  } else if (cph >= block_channels) {  // a head over several blocks: the last one partial
    head_blocks = ceil_div(cph, block_channels);
    channel_blocks = geo.G * head_blocks;
  } else {  // whole heads in a block
    block_channels = block_channels / cph * cph;
    channel_blocks = ceil_div(geo.C, block_channels);
  }
  int head_lanes = 1;
  while (head_lanes < lanes && head_lanes * thread_channels < std::min(cph, block_channels)) head_lanes *= 2;
  p.shared_bytes = bytes();

  // The tile: rows of up to kMaxTileWidth steps (a step: pixels_per_step pixels of the forward,
  // else one), balanced over the map (28 columns: 4 tiles of 7, not 3 of 8 and one of 4; in
  // pairs, 2 of 14), as many rows as the block's steps make, balanced too. Of 1 to
  // kMaxStepsPerThread steps per thread (the filter gradients: kMaxGradPixelsPerThread
  // pixels), the one whose waves x (steps per thread + 1) is least (a block's time is about a
  // step's per step, plus about one for its channel-filter staging and setup; a partial last
  // wave costs a whole one), the most steps on a tie. The filter gradients are issue-bound
  // (the GPU model): an SM's blocks share its issue, so their cost is the busiest SM's blocks
  // (blocks / SMs, not waves of kGradBlocksPerSm) x (pixels per thread + kGradBlockOverhead),
  // but 1.5 blocks' for a block alone on its SM (no other block's work hides its memory
  // phases: the model's issue + memory at 14 x 14 and 7 x 7), plus kGradPartialSumsCost when
  // the map has several tiles. At 7 x 7 (B = 64, C = 512): one tile of 128 blocks, one per SM
  // (1.5 x 6), not two of 256 (2 x 4) and a sum kernel (2).
  const int64_t step = kind == NhwcKernel::Forward ? pixels_per_step(int(k), int(s), p.vector) : 1;
  const int64_t tile_w = ceil_div(map_w, ceil_div(map_w, kMaxTileWidth * step)), steps_w = ceil_div(tile_w, step);
  const int64_t wave =
      wave_blocks > 0 ? wave_blocks : filter_grads ? kWaveSms : kWaveSms * blocks_per_sm(int(k), p.vector);
  const int64_t most = filter_grads ? kMaxGradPixelsPerThread : kMaxStepsPerThread;
  const int64_t overhead = filter_grads ? kGradBlockOverhead : 1;
  int64_t tile_h = 0, tiles_x = ceil_div(map_w, tile_w), tiles = 0, best = -1;
  for (int64_t steps = most; steps >= 1; --steps) {
    const int64_t rows = std::max<int64_t>(1, std::min(kBlockThreads / lanes * steps / steps_w, map_h));
    const int64_t h = ceil_div(map_h, ceil_div(map_h, rows));
    const int64_t n = tiles_x * ceil_div(map_h, h);
    const int64_t per_block = ceil_div(steps_w * h, int64_t(kBlockThreads / lanes)) + overhead;
    const int64_t busiest = ceil_div(n * channel_blocks * geo.B, wave);  // blocks of the busiest SM (or wave)
    // (The filter gradients' in half units: a block alone on its SM costs 1.5.)
    const int64_t cost = filter_grads ? std::max<int64_t>(2 * busiest, 3) * per_block + (n > 1 ? 2 * kGradPartialSumsCost : 0)
                                      : busiest * per_block;
    if (best < 0 || cost < best) best = cost, tile_h = h, tiles = n;
  }
  if (tiles > max_grid_x || channel_blocks > max_grid_y) return p.reason = "grid larger than the launcher's limits", p;

  p.use = true;
  p.g = NhwcGeometry{int(geo.C), int(geo.H), int(geo.W), int(geo.Ho), int(geo.Wo), int(cph), int(geo.dilation),
                     int(geo.pad()), int(xs.n), int(xs.h), int(xs.w), int(os.n), int(os.c), int(os.h), int(os.w), int(ss.n),
                     int(ss.c), int(ss.h), int(ss.w), lanes, per_thread, int(block_channels), int(head_blocks), head_lanes,
                     int(tile_w), int(tile_h), int(tiles_x), int(steps_w),
                     int(kBlockThreads / lanes / steps_w), int(kBlockThreads / lanes % steps_w)};
  p.grid_x = unsigned(tiles);
  p.grid_y = unsigned(channel_blocks);
  p.grid_z = unsigned(geo.B);
  p.block_x = kBlockThreads;
  return p;
}

}  // namespace nhwc
}  // namespace cuda
}  // namespace ddf
