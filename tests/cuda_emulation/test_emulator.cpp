// Tests of the CUDA emulator itself: each feature with its CUDA semantics, and each check
// (barrier divergence, early exit, launch limits, alignment, masks) catching what it is for.
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "cuda_emulation.h"

namespace {

int failures = 0, checks = 0;

void expect(bool ok, const std::string& what) {
  ++checks;
  if (!ok) {
    ++failures;
    std::fprintf(stderr, "FAILED: %s\n", what.c_str());
  }
}

// Runs f, which must throw a cuda_emu::Fault whose message contains `needle`.
template <typename F>
void expect_fault(F f, const std::string& needle, const std::string& what) {
  try {
    f();
    expect(false, what + ": no fault");
  } catch (const cuda_emu::Fault& e) {
    const std::string msg = e.what();
    expect(msg.find(needle) != std::string::npos, what + ": fault message '" + msg + "' lacks '" + needle + "'");
  }
}

unsigned linear_tid() { return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z); }

// ---- Kernels ----------------------------------------------------------------------------

// Every (block, thread) records itself once.
__global__ void coverage_kernel(int* hits) {
  const unsigned block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  const unsigned threads = blockDim.x * blockDim.y * blockDim.z;
  hits[block * threads + linear_tid()] += 1;
}

// A tree sum in static shared memory; correct only if __syncthreads is a real barrier.
__global__ void block_sum_kernel(const int* in, int* out) {
  DDF_STATIC_SHARED(int, partial, 256);
  partial[threadIdx.x] = in[blockIdx.x * 256 + threadIdx.x];
  __syncthreads();
  for (int s = 128; s > 0; s /= 2) {
    if (threadIdx.x < unsigned(s)) partial[threadIdx.x] += partial[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[blockIdx.x] = partial[0];
}

__global__ void divergent_sync_kernel() {
  if (threadIdx.x % 2 == 0) {
    __syncthreads();
  } else {
    __syncthreads();
  }
}

__global__ void early_exit_kernel() {
  if (threadIdx.x == 3) return;
  __syncthreads();
}

// Lane 0 waits at a warp barrier that its warp's other lanes never reach (they wait at the
// block's): a deadlock on a GPU too.
__global__ void deadlock_kernel() {
  if (threadIdx.x == 0) {
    __syncwarp();
  } else {
    __syncthreads();
  }
}

// Thread 0 publishes a value with no barrier: other threads see it or not, depending on which
// ran first. A shuffled thread order shows both.
__global__ void unordered_kernel(int* seen) {
  DDF_STATIC_SHARED(int, flag, 1);
  if (threadIdx.x == 0) flag[0] = 1 + int(blockIdx.x);
  seen[blockIdx.x * blockDim.x + threadIdx.x] = flag[0] == 1 + int(blockIdx.x);
  __syncthreads();
  if (threadIdx.x == 0) flag[0] = 0;
}

__global__ void faulting_kernel(const float4* p) {
  if (threadIdx.x == 5) (void)__ldg(p);
  __syncthreads();  // the other threads must be released, not hang
}

__global__ void dynamic_shared_kernel(float* out, int n) {
  DDF_DYNAMIC_SHARED(float, smem);
  if (threadIdx.x == 0) out[n] = smem[0];  // unwritten: NaN from the 0xff fill
  __syncthreads();
  smem[threadIdx.x] = float(threadIdx.x);
  __syncthreads();
  out[threadIdx.x] = smem[n - 1 - threadIdx.x];
}

// 1 KiB + 16 bytes of static shared memory (two declarations), and the dynamic bytes of the
// launch: their sum must fit in 48 KiB.
__global__ void static_and_dynamic_shared_kernel(float* out) {
  DDF_STATIC_SHARED(float, big, 256);
  DDF_STATIC_SHARED(int, flags, 4);
  DDF_DYNAMIC_SHARED(float, smem);
  smem[threadIdx.x] = 1.0f;
  big[threadIdx.x] = 2.0f;
  if (threadIdx.x < 4) flags[threadIdx.x] = 3;
  __syncthreads();
  out[threadIdx.x] = smem[threadIdx.x] + big[255 - threadIdx.x] + float(flags[threadIdx.x % 4]);
}

__global__ void shuffle_kernel(int* out, int width) {
  const int lane = int(linear_tid() % 32);
  const int v = 100 + lane;
  const int t = int(linear_tid());
  out[t * 5 + 0] = __shfl_sync(0xffffffffu, v, 3, width);
  out[t * 5 + 1] = __shfl_up_sync(0xffffffffu, v, 2, width);
  out[t * 5 + 2] = __shfl_down_sync(0xffffffffu, v, 2, width);
  out[t * 5 + 3] = __shfl_xor_sync(0xffffffffu, v, 5, width);
  int sum = v;  // butterfly reduction over the segment
  for (int m = width / 2; m > 0; m /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, m, width);
  out[t * 5 + 4] = sum;
}

__global__ void double_shuffle_kernel(double* out) {
  const double v = 0.5 + threadIdx.x;
  out[threadIdx.x] = __shfl_down_sync(0xffffffffu, v, 1);
}

__global__ void vote_kernel(unsigned* out, unsigned mask) {
  const unsigned t = threadIdx.x;
  out[t * 3 + 0] = __ballot_sync(mask, t % 3 == 0);
  out[t * 3 + 1] = __any_sync(mask, t == 7);
  out[t * 3 + 2] = __all_sync(mask, t < 100);
  __syncwarp(mask);
}

__global__ void ldg_kernel(const float4* p, float* out) {
  const float4 v = __ldg(p + threadIdx.x);
  out[threadIdx.x] = v.x + v.y + v.z + v.w;
}

__global__ void half_kernel(const __half* h, const __nv_bfloat16* b, float* out) {
  out[threadIdx.x] = __half2float(h[threadIdx.x]) + __bfloat162float(b[threadIdx.x]);
}

// ---- Tests --------------------------------------------------------------------------------

void test_coverage() {
  const dim3 grid(3, 2, 2), block(5, 4, 3);
  std::vector<int> hits(3 * 2 * 2 * 5 * 4 * 3, 0);
  cuda_emu::launch(coverage_kernel, grid, block, 0, hits.data());
  bool once = true;
  for (int h : hits) once = once && h == 1;
  expect(once, "every (block, thread) of a 3-D grid of 3-D blocks runs exactly once");
}

void test_block_barrier() {
  std::vector<int> in(4 * 256), out(4, 0);
  for (size_t i = 0; i < in.size(); ++i) in[i] = int(i % 97) - 40;
  cuda_emu::launch(block_sum_kernel, dim3(4), dim3(256), 0, in.data(), out.data());
  for (int b = 0; b < 4; ++b) {
    int expected = 0;
    for (int t = 0; t < 256; ++t) expected += in[b * 256 + t];
    expect(out[b] == expected, "block " + std::to_string(b) + " tree sum through __syncthreads");
  }
}

void test_barrier_checks() {
  expect_fault([] { cuda_emu::launch(divergent_sync_kernel, dim3(1), dim3(64), 0); }, "two call sites",
               "__syncthreads at two call sites");
  expect_fault([] { cuda_emu::launch(early_exit_kernel, dim3(2), dim3(32), 0); }, "exited",
               "a thread returns before the others' __syncthreads");
#if !defined(__SANITIZE_THREAD__)
  // Fibers (every build but ThreadSanitizer's) see that no thread can move on; OS threads
  // would hang there, as a GPU does.
  expect_fault([] { cuda_emu::launch(deadlock_kernel, dim3(1), dim3(64), 0); }, "deadlock",
               "a warp barrier that one lane waits at while the others wait at __syncthreads");
  {
    // The threads of each block take turns in a shuffled order: over 64 blocks, thread 5 runs
    // both before and after thread 0 (a fixed order would hide a missing barrier's race one way).
    std::vector<int> seen(64 * 32, -1);
    cuda_emu::launch(unordered_kernel, dim3(64), dim3(32), 0, seen.data());
    int after = 0;
    for (int b = 0; b < 64; ++b) after += seen[b * 32 + 5];
    expect(after > 0 && after < 64, "thread 5 ran after thread 0 in " + std::to_string(after) +
                                        " of 64 blocks: the thread order is not shuffled");
  }
#endif
  alignas(16) float buf[8] = {};
  const float4* misaligned = reinterpret_cast<const float4*>(buf + 1);
  expect_fault([&] { cuda_emu::launch(faulting_kernel, dim3(1), dim3(64), 0, misaligned); }, "thread (5,0,0)",
               "a fault in one thread while the others wait at a barrier (no hang, names the thread)");
}

void test_launch_limits() {
  int dummy[1] = {0};
  expect_fault([&] { cuda_emu::launch(coverage_kernel, dim3(1), dim3(1025), 0, dummy); }, "block x",
               "1025 threads in x");
  expect_fault([&] { cuda_emu::launch(coverage_kernel, dim3(1), dim3(64, 32), 0, dummy); }, "1024 threads",
               "2048 threads per block");
  expect_fault([&] { cuda_emu::launch(coverage_kernel, dim3(1), dim3(1, 1, 65), 0, dummy); }, "z above 64",
               "block z of 65");
  expect_fault([&] { cuda_emu::launch(coverage_kernel, dim3(1, 65536), dim3(1), 0, dummy); }, "grid y or z",
               "grid y of 65536");
  expect_fault([&] { cuda_emu::launch(coverage_kernel, dim3(1, 1, 65536), dim3(1), 0, dummy); }, "grid y or z",
               "grid z of 65536");
  expect_fault([&] { cuda_emu::launch(coverage_kernel, dim3(0), dim3(32), 0, dummy); }, "grid dimension is 0",
               "an empty grid");
  expect_fault([&] { cuda_emu::launch(coverage_kernel, dim3(1), dim3(32), 48 * 1024 + 1, dummy); }, "48 KiB",
               "dynamic shared memory over 48 KiB");
}

void test_dynamic_shared() {
  std::vector<float> out(65, 0.0f);
  cuda_emu::launch(dynamic_shared_kernel, dim3(1), dim3(64), 64 * sizeof(float), out.data(), 64);
  bool ok = true;
  for (int t = 0; t < 64; ++t) ok = ok && out[t] == float(63 - t);
  expect(ok, "dynamic shared memory is shared by the block");
  expect(std::isnan(out[64]), "dynamic shared memory starts as NaN (0xff), not zero");
  expect_fault([&] { cuda_emu::launch(dynamic_shared_kernel, dim3(1), dim3(64), 0, out.data(), 64); },
               "requested 0 bytes", "dynamic shared memory with none requested");
}

void test_static_shared_budget() {
  std::vector<float> out(256, 0.0f);
  const std::size_t static_bytes = 256 * sizeof(float) + 4 * sizeof(int);
  // Exactly 48 KiB in all: a GPU launches it.
  cuda_emu::launch(static_and_dynamic_shared_kernel, dim3(2), dim3(256), 48 * 1024 - static_bytes, out.data());
  bool ok = true;
  for (float v : out) ok = ok && v == 6.0f;
  expect(ok, "static and dynamic shared memory side by side");
  expect(cuda_emu::last_launch_static_shared_bytes() == static_bytes,
         "the launch learned its static shared bytes (both declarations, counted once per launch)");
  // 4 bytes more dynamic memory: 49156 bytes in all, which a GPU refuses without the opt-in,
  // though the dynamic part alone is below 48 KiB.
  expect_fault([&] {
    cuda_emu::launch(static_and_dynamic_shared_kernel, dim3(2), dim3(256), 48 * 1024 - static_bytes + 4, out.data());
  }, "1040 bytes of static shared memory", "static plus dynamic shared memory over 48 KiB");
  cuda_emu::launch(dynamic_shared_kernel, dim3(1), dim3(64), 64 * sizeof(float), out.data(), 64);
  expect(cuda_emu::last_launch_static_shared_bytes() == 0, "a kernel without static shared memory declares none");
}

void test_shuffles() {
  for (int width : {32, 16, 8, 4, 2, 1}) {
    std::vector<int> out(64 * 5, -1);
    cuda_emu::launch(shuffle_kernel, dim3(1), dim3(64), 0, out.data(), width);
    bool ok = true;
    for (int t = 0; t < 64; ++t) {
      const int lane = t % 32, base = lane & ~(width - 1), v = 100 + lane;
      const int idx = lane - base;
      const int bcast = 100 + base + (3 & (width - 1));
      const int up = idx >= 2 ? v - 2 : v;
      const int down = idx + 2 < width ? v + 2 : v;
      const int xsrc = lane ^ 5, x = xsrc < base + width ? 100 + xsrc : v;
      int sum = 0;
      for (int l = base; l < base + width; ++l) sum += 100 + l;
      ok = ok && out[t * 5] == bcast && out[t * 5 + 1] == up && out[t * 5 + 2] == down && out[t * 5 + 3] == x &&
           out[t * 5 + 4] == sum;
    }
    expect(ok, "shuffles (idx, up, down, xor, butterfly sum) with width " + std::to_string(width));
  }
  std::vector<double> d(32, 0.0);
  cuda_emu::launch(double_shuffle_kernel, dim3(1), dim3(32), 0, d.data());
  bool ok = true;
  for (int t = 0; t < 32; ++t) ok = ok && d[t] == 0.5 + (t < 31 ? t + 1 : t);
  expect(ok, "64-bit (double) shuffle");
  std::vector<int> out(64 * 5);
  expect_fault([&] { cuda_emu::launch(shuffle_kernel, dim3(1), dim3(64), 0, out.data(), 6); }, "power of two",
               "shuffle width 6");
  // A partial warp (48 threads: the second warp has 16 lanes) needs the 16-lane mask, and a
  // shuffle from a lane that does not exist is undefined.
  expect_fault([&] { cuda_emu::launch(shuffle_kernel, dim3(1), dim3(48), 0, out.data(), 32); }, "0x0000ffff",
               "full mask on a partial warp");
}

void test_votes() {
  std::vector<unsigned> out(32 * 3);
  cuda_emu::launch(vote_kernel, dim3(1), dim3(32), 0, out.data(), 0xffffffffu);
  unsigned ballot = 0;
  for (int t = 0; t < 32; t += 3) ballot |= 1u << t;
  bool ok = true;
  for (int t = 0; t < 32; ++t) ok = ok && out[t * 3] == ballot && out[t * 3 + 1] == 1 && out[t * 3 + 2] == 1;
  expect(ok, "__ballot_sync / __any_sync / __all_sync over a full warp");
  std::vector<unsigned> partial(20 * 3);
  cuda_emu::launch(vote_kernel, dim3(1), dim3(20), 0, partial.data(), 0xfffffu);
  ok = true;
  for (int t = 0; t < 20; ++t) ok = ok && partial[t * 3] == (ballot & 0xfffffu) && partial[t * 3 + 2] == 1;
  expect(ok, "votes over a partial warp with its 20-lane mask");
}

void test_ldg_alignment() {
  alignas(16) float data[4 * 33];
  for (int i = 0; i < 4 * 33; ++i) data[i] = float(i);
  std::vector<float> out(32);
  cuda_emu::launch(ldg_kernel, dim3(1), dim3(32), 0, reinterpret_cast<const float4*>(data), out.data());
  expect(out[5] == 20 + 21 + 22 + 23, "aligned float4 __ldg");
  expect_fault(
      [&] { cuda_emu::launch(ldg_kernel, dim3(1), dim3(32), 0, reinterpret_cast<const float4*>(data + 2), out.data()); },
      "misaligned", "float4 __ldg 8 bytes off");
}

// float -> bfloat16, rounding to nearest even, computed independently: the two candidates
// around f, and the nearer one (the even one on a tie), compared in double.
uint16_t bfloat16_reference(float f) {
  if (std::isnan(f)) return 0x7fff;
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  const uint16_t lo = uint16_t(bits >> 16), hi = uint16_t(lo + 1);
  if ((bits & 0xffffu) == 0) return lo;
  const double dlo = cuda_emu::bfloat16_bits_to_float(lo), dhi = cuda_emu::bfloat16_bits_to_float(hi);
  const double dl = std::abs(double(f) - dlo), dh = std::abs(dhi - double(f));
  if (std::isinf(dhi) && (lo & 0x7fffu) == 0x7f7fu) {
    // Rounding up from the largest finite value overflows to infinity at the halfway point.
    return (bits & 0xffffu) >= 0x8000u ? hi : lo;
  }
  if (dl != dh) return dl < dh ? lo : hi;
  return (lo & 1) ? hi : lo;
}

void test_half_conversions() {
  bool ok = true;
  for (uint32_t h = 0; h < 65536; ++h) {
    _Float16 ref;
    const uint16_t bits = uint16_t(h);
    std::memcpy(&ref, &bits, 2);
    const float got = cuda_emu::half_bits_to_float(bits), want = float(ref);
    ok = ok && (std::isnan(want) ? std::isnan(got) : std::memcmp(&got, &want, 4) == 0);
  }
  expect(ok, "every half -> float conversion matches _Float16");
  std::mt19937 rng(1);
  std::vector<float> samples = {0.0f, -0.0f, 1.0f, 65504.0f, 65519.99f, 65520.0f, 1e-8f, 5.96e-8f, 2.98e-8f,
                                2.99e-8f, 6.1e-5f, 6.09e-5f, INFINITY, -INFINITY, 1e30f, -1e-40f, 3.4e38f};
  for (int i = 0; i < 2000000; ++i) {
    uint32_t bits = rng();
    float f;
    std::memcpy(&f, &bits, 4);
    if (!std::isnan(f)) samples.push_back(f);
  }
  for (int i = 0; i < 200000; ++i) samples.push_back(std::ldexp(float(rng() % 4096) + 0.5f, int(rng() % 40) - 35));
  ok = true;
  bool bf_ok = true;
  for (float f : samples) {
    const _Float16 ref = static_cast<_Float16>(f);
    uint16_t want;
    std::memcpy(&want, &ref, 2);
    ok = ok && cuda_emu::float_to_half_bits(f) == want;
    bf_ok = bf_ok && cuda_emu::float_to_bfloat16_bits(f) == bfloat16_reference(f);
  }
  expect(ok, "float -> half rounds to nearest even (matches _Float16 on 2.2M values, ties and subnormals too)");
  expect(bf_ok, "float -> bfloat16 rounds to nearest even (2.2M values, ties included)");
  expect(cuda_emu::float_to_half_bits(NAN) == 0x7fff && cuda_emu::float_to_bfloat16_bits(NAN) == 0x7fff,
         "NaN converts to the canonical NaN");
  for (uint32_t h = 0; h < 65536; h += 7) {
    const float f = cuda_emu::bfloat16_bits_to_float(uint16_t(h));
    ok = ok && (std::isnan(f) || cuda_emu::float_to_bfloat16_bits(f) == h);
  }
  expect(ok, "bfloat16 -> float -> bfloat16 round-trips");

  std::vector<__half> hs(32);
  std::vector<__nv_bfloat16> bs(32);
  for (int i = 0; i < 32; ++i) {
    hs[i] = __float2half_rn(0.25f * i);
    bs[i] = __float2bfloat16_rn(-2.0f * i);
  }
  std::vector<float> out(32);
  cuda_emu::launch(half_kernel, dim3(1), dim3(32), 0, hs.data(), bs.data(), out.data());
  ok = true;
  for (int i = 0; i < 32; ++i) ok = ok && out[i] == 0.25f * i - 2.0f * i;
  expect(ok, "half and bfloat16 intrinsics in a kernel");
}

}  // namespace

int main() {
  test_coverage();
  test_block_barrier();
  test_barrier_checks();
  test_launch_limits();
  test_dynamic_shared();
  test_static_shared_budget();
  test_shuffles();
  test_votes();
  test_ldg_alignment();
  test_half_conversions();
  if (failures == 0) {
    std::printf("test_emulator: %d checks passed\n", checks);
    return 0;
  }
  std::printf("test_emulator: %d of %d checks failed\n", failures, checks);
  return 1;
}
