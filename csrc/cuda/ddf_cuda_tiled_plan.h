// Which calls the tiled CUDA kernels (ddf_cuda_tiled_kernels.cuh) take, and the block, grid
// and shared memory of each launch. Host code, torch-free: the CUDA glue and the emulator's
// tests (tests/cuda_emulation) plan with the same function, so the emulated tests run the
// very launches a GPU gets.
//
// The tiled path covers what DDF networks use: contiguous NCHW input, spatial filter and
// grad_output; k in {3, 5, 7}, stride 1 or 2, any dilation (while the staged halo fits in
// the dynamic shared memory budget, kMaxDynamicSharedBytes); float32, float16 and bfloat16;
// every tensor below 2^31 elements (32-bit indexing). Everything else runs the generic
// kernels of ddf_cuda_kernels.cuh.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "../ddf_geometry.h"

namespace ddf {
namespace cuda {
namespace tiled {

constexpr int kBlockThreads = 256;
// Blocks a launch aims for before it stops splitting the channels of a head over more
// blocks: an H100 holds 132 SMs x 8 blocks of 256 threads. Each extra split re-reads the
// spatial filter of its tile once more, so the split stops at about one full wave.
constexpr int64_t kTargetBlocks = 1024;
// The filter-gradient kernel splits for whole waves instead (plan_split_channels): each split adds
// a float partial grad_spatial_filter, written and read back once more, and the kernel holds
// few blocks per SM (registers), so a partial last wave costs a whole block's time. Its wave
// is sized for the SMs of an H100 / H200 SXM and the blocks per SM its registers allow on
// sm_90 (tests/test_cuda_resources.py checks that against the cubins).
constexpr int64_t kWaveSms = 132;
// (The fewest any dtype and combine of k holds: k = 5 "add" holds 2, "mul" 1.)
constexpr int filter_grads_blocks_per_sm(int k) { return k == 3 ? 2 : 1; }
// Shared memory per block, static plus dynamic. 48 KiB is what a launch may use without
// opting in (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize)),
// and the limit covers the kernel's static __shared__ too. The plan budgets within it rather
// than opting in: the opt-in limit differs by device (99 KiB on sm_86/89, 163 on sm_80, 227
// on sm_90), so the plan would depend on the device and the emulated plan would no longer
// be the one every GPU runs; each of the 108 tiled kernel instances would need the attribute
// set per device before its first launch; and larger blocks would lower occupancy, which
// these memory-bound kernels need. The price is a few edge calls staging fewer channels per
// step.
constexpr std::size_t kMaxSharedBytes = 48 * 1024;
// Every tiled kernel's static __shared__: one int per warp (the non-finite flags), declared
// with kFlagWords so that this stays the kernels' size; the kernels static_assert it, and
// tests/test_cuda_resources.py reads the static bytes off the cubins and checks them against
// this budget for every kernel and architecture.
constexpr int kFlagWords = kBlockThreads / 32;
constexpr std::size_t kStaticSharedBytes = kFlagWords * sizeof(int);
// What the plan may request as dynamic shared memory.
constexpr std::size_t kMaxDynamicSharedBytes = kMaxSharedBytes - kStaticSharedBytes;
constexpr int kLaneChannels = 8;
constexpr int64_t kMaxIndex = (int64_t(1) << 31) - 1;

enum class Kernel { Forward, GradInput, FilterGrads };

// Halo elements per thread whose loads a kernel's staging issues together, for all the
// step's channels (its "slots", ddf_cuda_tiled_kernels.cuh): what each kernel's registers
// hold without spilling on sm_80-sm_90 (make cuda-resources). 2 made the forward (76-80
// registers with 1) and grad_input (80, its __maxnreg__) spill; the filter gradients' 128
// hold 2, for their two rows per thread. tools/cuda_static/gpu_model.py reads these through
// torch.ops.ddf._cuda_tiled_halo_slots.
constexpr int halo_slots(Kernel kernel) { return kernel == Kernel::FilterGrads ? 2 : 1; }

// Everything a tiled kernel needs besides its pointers; 32-bit because the plan only takes
// tensors below 2^31 elements.
struct TiledGeometry {
  int B, C, H, W, Ho, Wo, G;
  int cph;       // channels per head
  int dilation, pad;
  int tiles_x;   // tiles along the map's width; blockIdx.x = tile_y * tiles_x + tile_x
  int split_channels;  // channels of a head per block; blockIdx.y = split
  int splits;          // blocks per head along the channels
  int lane_channels;   // channels a lane stages and computes per step (between two barriers)
  int halo_h, halo_w;  // the staged tile (input for Forward/FilterGrads, grad_output for GradInput)
  int rows_per_thread; // map rows each thread covers (FilterGrads: 2 for k = 3, else 1)
};

// Output rows each thread of the filter-gradient kernel covers: two for k = 3 (halves the
// cost of the per-channel warp reduction), one for larger k (registers).
constexpr int filter_grad_rows(int k) { return k == 3 ? 2 : 1; }

// Floats a lane's shared channel filter takes: k*k rounded up to 4 (16-byte vector loads).
constexpr int padded_taps(int k) { return (k * k + 3) / 4 * 4; }

// The forward and grad_input stage channel-interleaved ("by groups"): a lane's channels in
// groups of four, each group's tile holding an element's four channels together, and the
// channel filters tap-major (a tap's kLaneChannels values together). A thread then reads a
// tap of four channels with one 16-byte shared load at an offset known at compile time, for
// all of a step's channels in one pass, instead of one load and one address per channel and
// tap.
constexpr int kGroupChannels = 4;
constexpr int channel_groups(int ch) { return (ch + kGroupChannels - 1) / kGroupChannels; }
// A forward or grad_input lane's shared floats: its channel filters [k*k][kLaneChannels], then
// channel_groups(ch) tiles of plane x kGroupChannels floats (plane: the halo, rounded up to 4).
constexpr std::size_t grouped_lane_floats(int k, int ch, std::size_t plane) {
  return std::size_t(k) * k * kLaneChannels + std::size_t(channel_groups(ch)) * kGroupChannels * plane;
}

struct TiledPlan {
  bool use = false;
  const char* reason = "";  // why not, for tests and debugging
  TiledGeometry g{};
  unsigned grid_x = 0, grid_y = 0, grid_z = 0;
  unsigned block_x = 0, block_y = 0, block_z = 0;
  std::size_t shared_bytes = 0;
  // Filter-gradient kernel only: floats of the two partial-sum buffers it writes.
  int64_t channel_partials = 0;  // tiles * B * C * k*k
  int64_t spatial_partials = 0;  // splits * B * G*k*k * Ho * Wo, or 0 when splits == 1
};

inline int pow2_at_least(int64_t n, int cap) {
  int p = 1;
  while (p < cap && p < n) p *= 2;
  return p;
}

inline std::size_t round4(std::size_t n) { return (n + 3) / 4 * 4; }

// Shared floats of one launch, given its block: per lane, `ch` channels of (filter, tile).
inline std::size_t shared_floats(Kernel kernel, int k, int s, int d, int tx, int ty, int tz, int ch, int rows,
                                 int* halo_h, int* halo_w) {
  const int span = (k - 1) * d;
  const std::size_t lane_filter = padded_taps(k);
  if (kernel == Kernel::GradInput) {
    // grad_output rows/columns that input rows [r0, r0 + ty) reach: at most (ty-1+span)/s + 2.
    *halo_h = (ty - 1 + span) / s + 2;
    *halo_w = (tx - 1 + span) / s + 2;
    const std::size_t plane = round4(std::size_t(*halo_h) * *halo_w);
    return std::size_t(tz) * grouped_lane_floats(k, ch, plane);
  }
  *halo_h = (ty * rows - 1) * s + span + 1;
  *halo_w = (tx - 1) * s + span + 1;
  const std::size_t plane = round4(std::size_t(*halo_h) * *halo_w);
  if (kernel == Kernel::Forward) return std::size_t(tz) * grouped_lane_floats(k, ch, plane);
  std::size_t floats = std::size_t(tz) * ch * (lane_filter + plane);
  if (kernel == Kernel::FilterGrads) {
    floats += std::size_t(tx * ty * tz / 32) * ch * k * k;  // per-warp partial channel-filter sums
    floats += std::size_t(tx) * ty * tz * ch * rows;          // each thread's grad_output values
    // At the end the lanes hand their spatial-filter sums to lane 0 through the same memory.
    if (tz > 1) floats = std::max(floats, std::size_t(tx) * ty * rows * k * k);
  }
  return floats;
}

// The channel splits of a launch with base_blocks blocks per split, whose lanes take
// step_channels channels of a head at a time (returns the channels per split).
//
// Aim (Forward, GradInput): split until about target blocks. Whole waves (FilterGrads,
// wave_blocks > 0): a block's time grows with its channels, and a launch takes as long as its
// waves, the last one too however few blocks it holds; so pick the split count whose
// (waves x channel steps per block) is least, the fewest splits on a tie (less partial-sum
// traffic). E.g. filter grads at 128@28², B=64: 128 blocks per split, a wave of 264: 3 splits
// (384 blocks, 2 waves of 6 steps) cost 12, 2 splits (256 blocks, 1 wave of 8 steps) cost 8.
inline int64_t plan_split_channels(int64_t cph, int64_t step_channels, int64_t base_blocks, int64_t target,
                                   int64_t wave_blocks) {
  const int64_t max_splits = ceil_div(cph, step_channels);
  auto channels_for = [&](int64_t want) { return ceil_div(ceil_div(cph, want), step_channels) * step_channels; };
  if (wave_blocks <= 0) return channels_for(std::min(std::max<int64_t>(ceil_div(target, base_blocks), 1), max_splits));
  // Beyond two waves of blocks, more splits shorten each block about in proportion to their
  // count: no better cost. The search stops there.
  const int64_t last = std::min(max_splits, std::max<int64_t>(ceil_div(2 * wave_blocks, base_blocks), 1));
  int64_t best_channels = channels_for(1), best_cost = -1;
  for (int64_t want = 1; want <= last; ++want) {
    const int64_t channels = channels_for(want);
    const int64_t cost = ceil_div(base_blocks * ceil_div(cph, channels), wave_blocks) * (channels / step_channels);
    if (best_cost < 0 || cost < best_cost) best_cost = cost, best_channels = channels;
  }
  return best_channels;
}

// g: the call's geometry after the argument checks. contiguous: input, spatial filter (and
// grad_output) are contiguous NCHW. max_grid_x/y: the launcher's grid limits.
// target_blocks: 0, or (tests only: GridLimits::target_blocks) the blocks to aim for.
inline TiledPlan plan_tiled(Kernel kernel, const Geometry& geo, bool contiguous, bool supported_dtype,
                            int64_t max_grid_x, int64_t max_grid_y, int64_t target_blocks = 0) {
  TiledPlan p;
  const int64_t k = geo.k, s = geo.stride, kk = k * k;
  if (!supported_dtype) return p.reason = "dtype is not float32/float16/bfloat16", p;
  if (k != 3 && k != 5 && k != 7) return p.reason = "kernel size is not 3, 5 or 7", p;
  if (s != 1 && s != 2) return p.reason = "stride is not 1 or 2", p;
  if (!contiguous) return p.reason = "a tensor is not contiguous NCHW", p;
  if (geo.B * geo.C * geo.H * geo.W == 0 || geo.Ho * geo.Wo == 0) return p.reason = "empty", p;
  if (geo.B * geo.C * geo.H * geo.W > kMaxIndex || geo.B * geo.C * geo.Ho * geo.Wo > kMaxIndex ||
      geo.B * geo.G * kk * geo.Ho * geo.Wo > kMaxIndex || geo.dilation * (k - 1) > kMaxIndex / 4 ||
      geo.H > kMaxIndex / 4 || geo.W > kMaxIndex / 4)
    return p.reason = "a tensor has 2^31 elements or more", p;
  if (geo.B * geo.G > 65535) return p.reason = "batch * heads > 65535 (grid z)", p;

  // The map a block tiles: the output for Forward/FilterGrads, the input for GradInput.
  const bool over_input = kernel == Kernel::GradInput;
  const int64_t map_h = over_input ? geo.H : geo.Ho, map_w = over_input ? geo.W : geo.Wo;
  const int rows = kernel == Kernel::FilterGrads ? filter_grad_rows(int(k)) : 1;
  const int64_t cph = geo.C / geo.G;

  // Threads: a row of up to 32 columns, as many rows as the map has (up to the block), and
  // the rest as channel lanes; warps never straddle lanes (tx * ty is a multiple of 32).
  const int tx = pow2_at_least(map_w, 32);
  int ty = pow2_at_least((map_h + rows - 1) / rows, kBlockThreads / tx);
  while (tx * ty < 32) ty *= 2;
  // Each lane stages up to kLaneChannels channels per step (fewer barriers and less index
  // math per channel).
  int ch = int(std::min<int64_t>(kLaneChannels, cph));
  int tz = std::min(kBlockThreads / (tx * ty), pow2_at_least(ceil_div(cph, ch), 8));
  int halo_h = 0, halo_w = 0;
  auto floats_now = [&] {
    return shared_floats(kernel, int(k), int(s), int(geo.dilation), tx, ty, tz, ch, rows, &halo_h, &halo_w);
  };
  std::size_t floats = floats_now();
  // Too much shared memory (large dilation, k = 7): fewer channels per step, fewer lanes,
  // then fewer rows.
  while (floats * 4 > kMaxDynamicSharedBytes && (ch > 1 || tz > 1 || tx * ty > 32)) {
    if (ch > 1) {
      ch /= 2;
    } else if (tz > 1) {
      tz /= 2;
    } else {
      ty /= 2;
    }
    floats = floats_now();
  }
  if (floats * 4 > kMaxDynamicSharedBytes)
    return p.reason = "the staged halo needs more shared memory than 48 KiB less the kernels' static bytes", p;

  const int64_t tiles_x = ceil_div(map_w, tx), tiles = tiles_x * ceil_div(map_h, int64_t(ty) * rows);
  const int64_t base_blocks = tiles * geo.B * geo.G;
  const int64_t step_channels = int64_t(tz) * ch;
  const int64_t wave_blocks =
      target_blocks == 0 && kernel == Kernel::FilterGrads ? kWaveSms * filter_grads_blocks_per_sm(int(k)) : 0;
  const int64_t split_channels = plan_split_channels(cph, step_channels, base_blocks,
                                                     target_blocks > 0 ? target_blocks : kTargetBlocks, wave_blocks);
  const int64_t splits = ceil_div(cph, split_channels);
  if (tiles > max_grid_x || splits > max_grid_y) return p.reason = "grid larger than the launcher's limits", p;

  p.use = true;
  p.g = TiledGeometry{int(geo.B), int(geo.C), int(geo.H), int(geo.W), int(geo.Ho), int(geo.Wo), int(geo.G),
                      int(cph), int(geo.dilation), int(geo.pad()), int(tiles_x), int(split_channels), int(splits),
                      ch, halo_h, halo_w, rows};
  p.grid_x = unsigned(tiles);
  p.grid_y = unsigned(splits);
  p.grid_z = unsigned(geo.B * geo.G);
  p.block_x = unsigned(tx);
  p.block_y = unsigned(ty);
  p.block_z = unsigned(tz);
  p.shared_bytes = floats * sizeof(float);
  if (kernel == Kernel::FilterGrads) {
    p.channel_partials = tiles * geo.B * geo.C * kk;
    p.spatial_partials = splits > 1 ? splits * geo.B * geo.G * kk * geo.Ho * geo.Wo : 0;
  }
  return p;
}

}  // namespace tiled
}  // namespace cuda
}  // namespace ddf
