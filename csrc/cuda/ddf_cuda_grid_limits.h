// The largest grid a launch may use: host code, torch-free, so that the launches (device
// headers) and the host-only plan op (csrc/ddf_cuda_plan_op.cpp) share one definition.
#pragma once

#include <cstdint>

namespace ddf {
namespace cuda {

// The largest grid a launch may use in each dimension. The defaults are what the hardware
// allows (x is capped lower: grid-stride loops make more blocks pointless). The emulator's
// "shrunk grid" mode passes 2, so that every grid-stride loop takes more than one step.
struct GridLimits {
  int64_t x = int64_t(1) << 30;
  int64_t y = 65535;
  // Test-only: when > 0, the blocks the tiled plan aims for instead of its own targets
  // (kTargetBlocks, kTargetBlocksFilterGrads). The emulator's tests set 1: no head's
  // channels are split, so on maps small enough to emulate each block walks its channels in
  // several steps, as blocks of a large batch do on a GPU. Launches on a GPU leave it 0.
  int64_t target_blocks = 0;
};

}  // namespace cuda
}  // namespace ddf
