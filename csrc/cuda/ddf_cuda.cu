// The CUDA kernels of ddf and ddf_backward, registered for the CUDA dispatch key.
//
// The kernels and their launch geometry are in ddf_cuda_kernels.cuh (device code, no torch),
// the checks, allocation and dtype dispatch in ddf_cuda_ops.h (shared with the host
// emulator of tests/cuda_emulation). This file adds what only a real GPU has: the device
// guard, the current stream, and the one place where kernels are launched.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <utility>

#include "ddf_cuda_ops.h"

namespace ddf {
namespace cuda {
namespace {

// Launches a kernel on a stream and checks the launch.
struct CudaLauncher {
  cudaStream_t stream;
  template <typename... Params, typename... Args>
  void operator()(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes, Args&&... args) const {
    kernel<<<grid, block, shared_bytes, stream>>>(std::forward<Args>(args)...);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

struct CudaBackend {
  GridLimits grid_limits() const { return {}; }
  c10::cuda::CUDAGuard guard(const at::Tensor& t) const { return c10::cuda::CUDAGuard(t.device()); }
  // Called after guard(): the current stream of the tensors' device.
  CudaLauncher launcher() const { return CudaLauncher{c10::cuda::getCurrentCUDAStream()}; }
};

}  // namespace

TORCH_LIBRARY_IMPL(ddf, CUDA, m) {
  m.impl("ddf", &ddf_forward<CudaBackend>);
  m.impl("ddf_backward", &ddf_backward<CudaBackend>);
}

}  // namespace cuda
}  // namespace ddf
