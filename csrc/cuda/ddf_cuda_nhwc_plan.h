// Which calls the channels_last CUDA forward (ddf_cuda_nhwc_kernels.cuh) takes, and the block,
// grid and shared memory of its launch. Host code, torch-free, like ddf_cuda_tiled_plan.h: the
// CUDA glue and the emulator's tests plan with this same function.
//
// The NHWC path covers what channels_last networks produce (docs/design.md, section 6): input
// with channel stride 1 (channels_last, or a slice of it; the output too for 16-byte vectors,
// any strides for one channel per thread), any spatial filter and
// channel filter strides (a 1x1 convolution gives a channels_last spatial filter, pooling a
// contiguous channel filter); k in {3, 5, 7}, stride 1 or 2, any dilation; float32, float16
// and bfloat16; offsets below 2^31 (32-bit indexing). A call that is contiguous NCHW takes the
// NCHW tiled kernels first (ddf_cuda_launch.cuh).
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
// Output pixels each thread computes (one after another, for all its channels) at most: more
// amortize the block's channel-filter staging and the thread's setup; the plan takes fewer
// where that fills the GPU's waves of blocks better (plan_nhwc_forward).
constexpr int kMaxPixelsPerThread = 6;
// A wave of blocks: the SMs of an H100 / H200 SXM times the blocks each holds (the fewest any
// dtype holds: kMinBlocks in ddf_cuda_nhwc_kernels.cuh).
constexpr int64_t kWaveSms = 132;
constexpr int blocks_per_sm(int k) { return k == 3 ? 3 : 2; }
// Widest tile row, in pixels: a block's pixels form a near-square tile, so the input rows its
// taps read (the halo) are few per pixel and mostly hit L1/L2.
constexpr int kMaxTileWidth = 8;
constexpr int64_t kMaxIndex = (int64_t(1) << 31) - 1;
// Shared memory per block: the channel filters of its channels, as float (lane_filter_floats
// per channel lane), within the 48 KiB a launch may use without an opt-in (k = 7 with 8-channel
// vectors: 16 lanes, 25 KiB, instead of 32). No static shared memory.
constexpr std::size_t kMaxSharedBytes = 48 * 1024;

// What the kernel needs besides its pointers; 32-bit because the plan only takes offsets below
// 2^31. Strides in elements; input and output have channel stride 1.
struct NhwcGeometry {
  int C, H, W, Ho, Wo, cph, dilation, pad;
  int xn, xh, xw;      // input strides
  int on, oc, oh, ow;  // output strides (oc is 1 but for one-channel threads: see the plan)
  int sn, sc, sh, sw;  // spatial-filter strides
  int channel_lanes;   // threads sharing a pixel, each with `vector` channels (a power of two)
  int block_channels;  // channel_lanes * vector: the channels of a block, from blockIdx.y
  int tile_w, tile_h, tiles_x;  // the block's output tile; blockIdx.x = tile_y * tiles_x + tile_x
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

// g: the call's geometry after the argument checks; xs, ss, os: input, spatial filter and output
// strides; element_bytes: of the dtype; vector_aligned: the input and output data pointers are
// kVectorBytes-aligned (a slice along the channels breaks it); max_grid_x/y: launcher limits;
// wave_blocks: 0, or (tests only: GridLimits::target_blocks) the blocks of a wave, 1 to give
// each thread the most pixels on a small map.
inline NhwcPlan plan_nhwc_forward(const Geometry& geo, const Strides4& xs, const Strides4& ss, const Strides4& os,
                                  bool supported_dtype, int element_bytes, bool vector_aligned, int64_t max_grid_x,
                                  int64_t max_grid_y, int64_t wave_blocks = 0) {
  NhwcPlan p;
  const int64_t k = geo.k, s = geo.stride, kk = k * k, span = (k - 1) * geo.dilation;
  if (!supported_dtype) return p.reason = "dtype is not float32/float16/bfloat16", p;
  if (k != 3 && k != 5 && k != 7) return p.reason = "kernel size is not 3, 5 or 7", p;
  if (s != 1 && s != 2) return p.reason = "stride is not 1 or 2", p;
  if (geo.B * geo.C * geo.Ho * geo.Wo == 0 || geo.H * geo.W == 0) return p.reason = "empty", p;
  if (xs.c != 1) return p.reason = "input has a channel stride other than 1", p;
  const Strides4 strides[3] = {xs, ss, os};
  for (const Strides4& st : strides)
    if (st.n < 0 || st.h < 0 || st.w < 0 || st.c < 0) return p.reason = "a negative stride", p;
  // (Tap coordinates, o * s - pad + i * d, stay in int: H, W and the span below 2^29; so do a
  // thread's tap offsets, i * d * row stride and j * d * column stride.)
  if (reach(xs, geo.B, geo.C, geo.H, geo.W) > kMaxIndex || reach(os, geo.B, geo.C, geo.Ho, geo.Wo) > kMaxIndex ||
      reach(ss, geo.B, geo.G * kk, geo.Ho, geo.Wo) > kMaxIndex ||
      std::max({xs.n, xs.h, xs.w, os.n, os.c, os.h, os.w, ss.n, ss.c, ss.h, ss.w}) > kMaxIndex || geo.H > kMaxIndex / 4 ||
      geo.W > kMaxIndex / 4 || span > kMaxIndex / 4 || span * xs.h > kMaxIndex || span * xs.w > kMaxIndex)
    return p.reason = "an offset reaches 2^31", p;
  if (geo.B > 65535) return p.reason = "batch > 65535 (grid z)", p;

  // Channels per thread: a 16-byte vector when every vector starts aligned and lies in one head,
  // and the output has channel stride 1 too; else one (an output with another channel stride
  // is what a view of channels_last input that torch does not call channels_last gets).
  const int64_t cph = geo.C / geo.G, v = kVectorBytes / element_bytes;
  const bool vectors = vector_aligned && cph % v == 0 && os.c == 1 && xs.n % v == 0 && xs.h % v == 0 &&
                       xs.w % v == 0 && os.n % v == 0 && os.h % v == 0 && os.w % v == 0;
  p.vector = vectors ? int(v) : 1;
  int lanes = 1;
  while (lanes < 32 && int64_t(lanes) * p.vector < geo.C) lanes *= 2;
  auto bytes = [&] { return std::size_t(lanes) * lane_filter_floats(int(k), p.vector) * sizeof(float); };
  while (bytes() > kMaxSharedBytes) lanes /= 2;  // (at most 49 x 8 + 4 floats a lane: 16 lanes fit)
  const int block_channels = lanes * p.vector;
  p.shared_bytes = bytes();

  // The tile: rows of up to kMaxTileWidth pixels, balanced over the map (28 columns: 4 tiles of
  // 7, not 3 of 8 and one of 4), as many rows as the block's pixels make, balanced too. Of 1 to
  // kMaxPixelsPerThread pixels per thread, the one whose waves x (pixels per thread + 1) is
  // least (a block's time is about a pixel's per pixel, plus about one for its channel-filter
  // staging and setup; a partial last wave costs a whole one), the most pixels on a tie.
  const int64_t tile_w = ceil_div(geo.Wo, ceil_div(geo.Wo, int64_t(kMaxTileWidth)));
  const int64_t channel_blocks = ceil_div(geo.C, int64_t(block_channels));
  const int64_t wave = wave_blocks > 0 ? wave_blocks : kWaveSms * blocks_per_sm(int(k));
  int64_t tile_h = 0, tiles_x = ceil_div(geo.Wo, tile_w), tiles = 0, best = -1;
  for (int64_t per_thread = kMaxPixelsPerThread; per_thread >= 1; --per_thread) {
    const int64_t rows = std::max<int64_t>(1, std::min(kBlockThreads / lanes * per_thread / tile_w, geo.Ho));
    const int64_t h = ceil_div(geo.Ho, ceil_div(geo.Ho, rows));
    const int64_t n = tiles_x * ceil_div(geo.Ho, h);
    const int64_t per_block = ceil_div(tile_w * h, int64_t(kBlockThreads / lanes)) + 1;
    const int64_t cost = ceil_div(n * channel_blocks * geo.B, wave) * per_block;
    if (best < 0 || cost < best) best = cost, tile_h = h, tiles = n;
  }
  if (tiles > max_grid_x || channel_blocks > max_grid_y) return p.reason = "grid larger than the launcher's limits", p;

  p.use = true;
  p.g = NhwcGeometry{int(geo.C), int(geo.H), int(geo.W), int(geo.Ho), int(geo.Wo), int(cph), int(geo.dilation),
                     int(geo.pad()), int(xs.n), int(xs.h), int(xs.w), int(os.n), int(os.c), int(os.h), int(os.w), int(ss.n),
                     int(ss.c), int(ss.h), int(ss.w), lanes, block_channels, int(tile_w), int(tile_h), int(tiles_x)};
  p.grid_x = unsigned(tiles);
  p.grid_y = unsigned(channel_blocks);
  p.grid_z = unsigned(geo.B);
  p.block_x = kBlockThreads;
  return p;
}

}  // namespace nhwc
}  // namespace cuda
}  // namespace ddf
