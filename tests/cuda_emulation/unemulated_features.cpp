// Must NOT compile under the emulator (ctest checks the compiler's message): a kernel that
// uses a CUDA feature the emulator lacks, or inline PTX, fails loudly instead of running a
// silent stub. One feature per DDF_USE_* macro.
#include "cuda_emulation.h"

__global__ void uses_unemulated_feature(float* p) {
#if defined(DDF_USE_ATOMIC)
  atomicAdd(p, 1.0f);  // not emulated (and the kernels use no floating-point atomics)
#elif defined(DDF_USE_PTX)
  asm volatile("membar.gl;");
#elif defined(DDF_USE_ACTIVEMASK)
  p[0] = float(__activemask());  // not emulated: lanes do not run in lockstep here
#elif defined(DDF_USE_SHARED)
  __shared__ float s[32];  // the emulator could not count its bytes: DDF_STATIC_SHARED
  p[0] = s[0];
#endif
}
