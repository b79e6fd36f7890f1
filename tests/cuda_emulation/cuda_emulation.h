// A host emulator of the CUDA features that csrc/cuda/ddf_cuda_kernels.cuh uses, so the real
// kernel source runs on machines with no GPU (test-only; never shipped).
//
// What it models:
//   - threadIdx, blockIdx, blockDim, gridDim, warpSize; dim3/uint3.
//   - Every thread of a block is a fiber (fibers.h): the block's warps take turns in a
//     shuffled order, lanes shuffled within each warp, and each warp runs as far as its
//     barriers and collectives let it before the next warp starts, so that a missing
//     __syncthreads shows on every run. Under ThreadSanitizer (or DDF_EMU_THREADS=os) every
//     thread is an OS thread instead, so that TSan sees their races. Blocks run one at a time,
//     in a shuffled order (a kernel may not depend on block order). A block whose threads all
//     wait at barriers or collectives that cannot complete faults as a deadlock (fibers only:
//     OS threads hang, as a GPU does).
//   - Static shared memory (DDF_STATIC_SHARED: one copy shared by the threads of the running
//     block; its bytes count against the launch's limit, below) and dynamic shared memory
//     (DDF_DYNAMIC_SHARED: exactly the requested bytes, filled with 0xff at block start so an
//     unwritten read shows up as NaN, and a heap block ASan bounds-checks). A bare __shared__
//     does not compile: the emulator could not learn its size.
//   - __syncthreads() and __syncwarp() are barriers that check that every thread of the
//     block (warp) reached the same call site, and that no thread exited the kernel first.
//     DDF_EMU_SKIP_BARRIER=FILE:LINE makes the __syncthreads() at that call site a no-op, as
//     if deleted: for proving that some test needs each barrier, without a rebuild.
//   - Warp shuffles and votes exchange values between the lanes' threads; they require
//     the full mask of the warp's lanes and a power-of-two width.
//   - __ldg checks the alignment the hardware would fault on; the vector types carry their
//     CUDA alignment, so UBSan (-fsanitize=alignment) checks every vector access.
//   - __half / __nv_bfloat16 with the conversion intrinsics, rounding to nearest even.
//   - Launch limits: at most 1024 threads per block (x, y <= 1024, z <= 64), grid x below
//     2^31, y and z at most 65535, no empty grid or block, and at most 48 KiB of shared memory
//     per block, static plus dynamic: the limit without cudaFuncSetAttribute's opt-in, which
//     the kernels do not use and the emulator does not model. A launch's static bytes are
//     learned as its threads pass the DDF_STATIC_SHARED declarations (declare them before
//     any branch: a GPU allocates them for every block, used or not).
// What it does not model: the compiled SASS, the memory model (a thread sees every write
// made before it in host program order), warp lockstep (lanes run independently between
// collectives), timing.
//
// Anything not defined here fails to compile under emulation; inline assembly (PTX) is
// rejected outright. Add a feature here, with its real semantics and a test in
// test_emulator.cpp, before a kernel uses it.
#pragma once

// Standard headers come before the macros below redefine keywords: include this header
// after every other header except the kernels'.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <cstring>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

#define DDF_CUDA_EMULATION 1

// ---- Built-in types and variables -------------------------------------------------------
struct uint3 {
  unsigned int x, y, z;
};
struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
};

// Per OS thread, set by the emulator before a thread runs (or a fiber resumes) the kernel.
inline thread_local uint3 threadIdx{0, 0, 0};
inline thread_local uint3 blockIdx{0, 0, 0};
inline thread_local dim3 blockDim{0, 0, 0};
inline thread_local dim3 gridDim{0, 0, 0};
constexpr int warpSize = 32;

// ---- Qualifiers -------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __maxnreg__(...)
#define __restrict__ __restrict
#define __align__(n) __attribute__((aligned(n)))
// Static shared memory is declared with DDF_STATIC_SHARED (below), which tells the emulator
// its size: a bare __shared__ is a compile error, like any feature the emulator lacks.
#define __shared__ DDF_CUDA_EMULATION_bare_shared_is_not_emulated_use_DDF_STATIC_SHARED
// Inline PTX has no host meaning: any use is a compile error under emulation.
#define asm DDF_CUDA_EMULATION_inline_assembly_is_not_emulated
#define __asm__ DDF_CUDA_EMULATION_inline_assembly_is_not_emulated

// ---- Vector types (with CUDA's alignment) -------------------------------------------------
struct alignas(8) float2 {
  float x, y;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(16) double2 {
  double x, y;
};
struct alignas(8) int2 {
  int x, y;
};
struct alignas(16) int4 {
  int x, y, z, w;
};
struct alignas(8) uint2 {
  unsigned int x, y;
};
struct alignas(16) uint4 {
  unsigned int x, y, z, w;
};
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline double2 make_double2(double x, double y) { return {x, y}; }

// ---- Half types ---------------------------------------------------------------------------
// Storage only, as in CUDA with torch's flags (__CUDA_NO_HALF_CONVERSIONS__): no implicit
// conversions or arithmetic; the intrinsics below convert.
struct alignas(2) __half {
  unsigned short __x;
};
struct alignas(4) __half2 {
  __half x, y;
};
struct alignas(2) __nv_bfloat16 {
  unsigned short __x;
};
struct alignas(4) __nv_bfloat162 {
  __nv_bfloat16 x, y;
};

namespace cuda_emu {
uint16_t float_to_half_bits(float f);  // round to nearest even; NaN -> 0x7fff
float half_bits_to_float(uint16_t h);
uint16_t float_to_bfloat16_bits(float f);  // round to nearest even; NaN -> 0x7fff
float bfloat16_bits_to_float(uint16_t h);
}  // namespace cuda_emu

inline __half __float2half_rn(float f) { return __half{cuda_emu::float_to_half_bits(f)}; }
inline __half __float2half(float f) { return __float2half_rn(f); }
inline float __half2float(__half h) { return cuda_emu::half_bits_to_float(h.__x); }
inline unsigned short __half_as_ushort(__half h) { return h.__x; }
inline __half __ushort_as_half(unsigned short x) { return __half{x}; }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16{cuda_emu::float_to_bfloat16_bits(f)}; }
inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }
inline float __bfloat162float(__nv_bfloat16 h) { return cuda_emu::bfloat16_bits_to_float(h.__x); }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.__x; }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short x) { return __nv_bfloat16{x}; }

// ---- Faults, barriers and warp collectives --------------------------------------------------
namespace cuda_emu {

// A kernel did something a GPU would not allow (or whose result is undefined there).
struct Fault : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Site {
  const char* file;
  int line;
};

// Throws a Fault naming the current block and thread.
[[noreturn]] void fault(const std::string& what);

void sync_block(Site site);
void sync_warp(Site site, unsigned mask = 0xffffffffu);
// The 64-bit slots of the lanes of this thread's warp after every lane stored `bits`; the
// caller picks its source lane. Checks mask and call site.
const uint64_t* warp_exchange(Site site, unsigned mask, uint64_t bits, const char* what);
void warp_exchange_done(Site site);
int lane_id();
int warp_lanes();  // lanes that exist in this thread's warp (the last warp may be partial)
void* dynamic_shared_memory(std::size_t alignment);
// A thread passed the static shared declaration at `site` (`bytes` long): the first time in a
// launch, its bytes join the launch's static total, and a launch whose static plus dynamic
// bytes exceed the limit faults as an invalid launch configuration.
void static_shared(Site site, std::size_t bytes);
// The static shared bytes the last launch declared (for tests).
std::size_t last_launch_static_shared_bytes();
// At most this much shared memory per block, static plus dynamic, without the opt-in.
constexpr std::size_t kMaxSharedBytesPerBlock = 48 * 1024;

template <typename T>
uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= sizeof(uint64_t) && std::is_trivially_copyable_v<T>, "shuffle of an unsupported type");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  return bits;
}

template <typename T>
T from_bits(uint64_t bits) {
  T v;
  std::memcpy(&v, &bits, sizeof(T));
  return v;
}

inline void check_width(int width, const char* what) {
  if (width <= 0 || width > warpSize || (width & (width - 1)) != 0) {
    fault(std::string(what) + ": width must be a power of two <= 32, got " + std::to_string(width));
  }
}

// Value of `var` in lane src_of(lane) of a segment of `width` lanes (CUDA's shuffle rules).
template <typename T, typename SrcOf>
T shuffle(Site site, unsigned mask, T var, int width, const char* what, SrcOf src_of) {
  check_width(width, what);
  const uint64_t* slots = warp_exchange(site, mask, to_bits(var), what);
  const int lane = lane_id(), base = lane & ~(width - 1);
  const int src = src_of(lane, base);
  if (src >= warp_lanes()) {
    fault(std::string(what) + ": lane " + std::to_string(lane) + " reads lane " + std::to_string(src) +
          ", which does not exist (partial warp): undefined on a GPU");
  }
  const T result = from_bits<T>(slots[src]);
  warp_exchange_done(site);
  return result;
}

template <typename T>
T shfl_sync(Site site, unsigned mask, T var, int src_lane, int width = warpSize) {
  return shuffle(site, mask, var, width, "__shfl_sync",
                 [&](int, int base) { return base + (src_lane & (width - 1)); });
}
template <typename T>
T shfl_up_sync(Site site, unsigned mask, T var, unsigned delta, int width = warpSize) {
  return shuffle(site, mask, var, width, "__shfl_up_sync", [&](int lane, int base) {
    return lane - base >= static_cast<int>(delta) ? lane - static_cast<int>(delta) : lane;
  });
}
template <typename T>
T shfl_down_sync(Site site, unsigned mask, T var, unsigned delta, int width = warpSize) {
  return shuffle(site, mask, var, width, "__shfl_down_sync", [&](int lane, int base) {
    return lane - base + static_cast<int>(delta) < width ? lane + static_cast<int>(delta) : lane;
  });
}
template <typename T>
T shfl_xor_sync(Site site, unsigned mask, T var, int lane_mask, int width = warpSize) {
  return shuffle(site, mask, var, width, "__shfl_xor_sync", [&](int lane, int base) {
    const int src = lane ^ lane_mask;
    return src >= base + width ? lane : src;  // outside the segment: the lane's own value
  });
}

unsigned ballot_sync(Site site, unsigned mask, int predicate);
inline int any_sync(Site site, unsigned mask, int predicate) { return ballot_sync(site, mask, predicate) != 0; }
int all_sync(Site site, unsigned mask, int predicate);

template <typename T>
inline constexpr bool is_ldg_type = std::is_arithmetic_v<T> || std::is_same_v<T, float2> ||
    std::is_same_v<T, float4> || std::is_same_v<T, double2> || std::is_same_v<T, int2> || std::is_same_v<T, int4> ||
    std::is_same_v<T, uint2> || std::is_same_v<T, uint4> || std::is_same_v<T, __half> ||
    std::is_same_v<T, __half2> || std::is_same_v<T, __nv_bfloat16> || std::is_same_v<T, __nv_bfloat162>;

template <typename T>
void check_aligned(const T* p, const char* what) {
  if (reinterpret_cast<std::uintptr_t>(p) % alignof(T) != 0) {
    fault(std::string(what) + ": misaligned address (needs " + std::to_string(alignof(T)) +
          "-byte alignment): a GPU faults on this load");
  }
}

}  // namespace cuda_emu

#define CUDA_EMU_SITE (::cuda_emu::Site{__FILE__, __LINE__})
#define __syncthreads() ::cuda_emu::sync_block(CUDA_EMU_SITE)
#define __syncwarp(...) ::cuda_emu::sync_warp(CUDA_EMU_SITE __VA_OPT__(, ) __VA_ARGS__)
#define __shfl_sync(...) ::cuda_emu::shfl_sync(CUDA_EMU_SITE, __VA_ARGS__)
#define __shfl_up_sync(...) ::cuda_emu::shfl_up_sync(CUDA_EMU_SITE, __VA_ARGS__)
#define __shfl_down_sync(...) ::cuda_emu::shfl_down_sync(CUDA_EMU_SITE, __VA_ARGS__)
#define __shfl_xor_sync(...) ::cuda_emu::shfl_xor_sync(CUDA_EMU_SITE, __VA_ARGS__)
#define __ballot_sync(mask, pred) ::cuda_emu::ballot_sync(CUDA_EMU_SITE, mask, pred)
#define __any_sync(mask, pred) ::cuda_emu::any_sync(CUDA_EMU_SITE, mask, pred)
#define __all_sync(mask, pred) ::cuda_emu::all_sync(CUDA_EMU_SITE, mask, pred)
// Dynamic shared memory: `extern __shared__ T name[]` has no host equivalent, so kernels
// declare it through this macro (ddf_cuda_kernels.cuh defines the nvcc spelling).
#define DDF_DYNAMIC_SHARED(type, name) type* name = static_cast<type*>(::cuda_emu::dynamic_shared_memory(alignof(type)))
// Static shared memory, `__shared__ type name[count]` on a GPU: here a function-local static
// (one copy, which the threads of the running block share: blocks run one at a time) whose
// size the launch learns.
#define DDF_STATIC_SHARED(type, name, count) \
  static type name[count];                   \
  ::cuda_emu::static_shared(CUDA_EMU_SITE, sizeof(name))

template <typename T>
T __ldg(const T* p) {
  static_assert(cuda_emu::is_ldg_type<T>, "__ldg of a type CUDA has no __ldg for");
  cuda_emu::check_aligned(p, "__ldg");
  return *p;
}

// ---- Launch -------------------------------------------------------------------------------
namespace cuda_emu {

// Runs body() once per thread of every block of the grid; throws Fault (the first fault,
// naming block and thread) if the launch configuration is invalid or a thread faulted.
void run_grid(dim3 grid, dim3 block, std::size_t shared_bytes, void (*body)(const void*), const void* context);

// The launch helper: kernel<<<grid, block, shared_bytes>>>(args...). Arguments convert to
// the kernel's parameter types once, as a launch does; each thread gets its own copy.
template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, std::size_t shared_bytes, Args&&... args) {
  static_assert(sizeof...(Params) == sizeof...(Args), "wrong number of kernel arguments");
  using Call = std::pair<void (*)(Params...), std::tuple<std::decay_t<Params>...>>;
  const Call call{kernel, std::tuple<std::decay_t<Params>...>(std::forward<Args>(args)...)};
  run_grid(grid, block, shared_bytes, [](const void* context) {
    const Call& c = *static_cast<const Call*>(context);
    std::apply(c.first, std::tuple<std::decay_t<Params>...>(c.second));
  }, &call);
}

// A launcher object for code that takes one (ddf_cuda_kernels.cuh's launch plans).
struct Launcher {
  template <typename... Params, typename... Args>
  void operator()(void (*kernel)(Params...), dim3 grid, dim3 block, std::size_t shared_bytes, Args&&... args) const {
    launch(kernel, grid, block, shared_bytes, std::forward<Args>(args)...);
  }
};

}  // namespace cuda_emu
