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
};

}  // namespace cuda
}  // namespace ddf
