// The emulator's runtime: a block's threads as fibers (fibers.h) or, under ThreadSanitizer,
// a pool of OS threads, one block at a time; checked barriers, warp collectives, launch
// checks and the half-type conversions.
#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <condition_variable>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

// Before cuda_emulation.h, which makes inline assembly a compile error (fibers.h has some).
#include "fibers.h"
#include "cuda_emulation.h"

namespace cuda_emu {
namespace {

// Fibers, except under ThreadSanitizer (which must see each thread as an OS thread to find
// races) or with DDF_EMU_THREADS=os (the OS-thread pool in any build, e.g. to compare).
bool use_fibers() {
#if defined(__SANITIZE_THREAD__)
  return false;
#else
  static const bool fibers = [] {
    const char* v = std::getenv("DDF_EMU_THREADS");
    return v == nullptr || std::strcmp(v, "os") != 0;
  }();
  return fibers;
#endif
}

constexpr unsigned kMaxThreadsPerBlock = 1024;

std::string site_name(Site s) { return std::string(s.file) + ":" + std::to_string(s.line); }

bool same_site(Site a, Site b) { return a.line == b.line && std::strcmp(a.file, b.file) == 0; }

std::string dim_name(uint3 v) {
  return "(" + std::to_string(v.x) + "," + std::to_string(v.y) + "," + std::to_string(v.z) + ")";
}

// Thrown in threads released from a barrier because another thread of the block faulted.
struct Aborted {};

// A barrier for a fixed set of threads that also checks that they all arrive at one call
// site and that none of them exited the kernel instead. Lock-free: one atomic counts
// arrivals (low half) and exits (high half); whoever completes the count checks the call
// sites and releases the waiters, who sleep on an atomic phase (one futex wake for all), or
// as fibers yield until the phase moves.
class Barrier {
 public:
  void reset(int participants, const char* what) {
    participants_ = participants;
    what_ = what;
    sites_.assign(participants, Site{"", 0});
    count_.store(0);
    phase_.store(0);
  }

  // `index`: the caller's place among the participants.
  void arrive_and_wait(Site site, unsigned index) {
    const uint64_t phase = phase_.load();
    if (phase & kAborted) throw Aborted();
    sites_[index] = site;
    if (use_fibers()) Fibers::note_progress();
    const uint64_t count = count_.fetch_add(1) + 1;
    const uint64_t arrived = count & kHalf, left = count >> 32;
    if (arrived + left == uint64_t(participants_)) {
      // The last one in: everyone else is waiting here, or gone.
      if (left > 0) {
        fault(std::string(what_) + " at " + site_name(site) + ": " + std::to_string(left) + " of " +
              std::to_string(participants_) + " threads exited the kernel instead of arriving");
      }
      for (const Site& s : sites_) {
        if (!same_site(s, site)) {
          fault(std::string(what_) + " reached at two call sites: " + site_name(site) + " and " + site_name(s));
        }
      }
      count_.store(0);
      phase_.fetch_add(kNextPhase);
      phase_.notify_all();
      return;
    }
    if (use_fibers()) {
      while (phase_.load() == phase) Fibers::yield();
    } else {
      for (uint64_t now = phase_.load(); now == phase; now = phase_.load()) phase_.wait(phase);
    }
    if ((phase_.load() & ~kAborted) == phase) throw Aborted();  // released by abort(), not by the last arrival
  }

  // A participant returned from the kernel.
  void leave() {
    const uint64_t count = count_.fetch_add(uint64_t(1) << 32) + (uint64_t(1) << 32);
    const uint64_t arrived = count & kHalf, left = count >> 32;
    if (arrived > 0 && arrived + left == uint64_t(participants_)) {
      fault("thread exited the kernel while " + std::to_string(arrived) + " threads wait at " + what_ + " at " +
            site_name(sites_[0]));
    }
  }

  void abort() {
    phase_.fetch_or(kAborted);
    phase_.notify_all();
  }

 private:
  static constexpr uint64_t kAborted = 1, kNextPhase = 2, kHalf = 0xffffffffu;
  int participants_ = 0;
  const char* what_ = "";
  std::vector<Site> sites_;
  std::atomic<uint64_t> count_{0};
  std::atomic<uint64_t> phase_{0};
};

struct Warp {
  Barrier barrier;
  int lanes = 0;
  unsigned lane_mask = 0;
  uint64_t slots[32] = {};
};

// The state of the block being run.
struct Block {
  dim3 dim;
  unsigned threads = 0;
  Barrier barrier;
  std::vector<std::unique_ptr<Warp>> warps;
  std::unique_ptr<unsigned char[]> dynamic_shared;
  std::size_t dynamic_shared_bytes = 0;
  // The launch's static shared declarations seen so far (a Block lives for one launch).
  std::mutex static_shared_mutex;
  std::vector<std::pair<Site, std::size_t>> static_shared;
  std::size_t static_shared_bytes = 0;
  std::mutex error_mutex;
  std::string error;  // the first fault of the block

  void fail(const std::string& message) {
    {
      std::lock_guard<std::mutex> lock(error_mutex);
      if (error.empty()) error = message;
    }
    barrier.abort();
    for (auto& w : warps) w->barrier.abort();
  }
};

thread_local Block* current_block = nullptr;
thread_local unsigned current_linear_tid = 0;

Warp& current_warp() { return *current_block->warps[current_linear_tid / warpSize]; }

// Under ThreadSanitizer: worker threads, reused across blocks and launches; worker i runs
// thread i of each block.
// Each worker waits on its own atomic "go" counter; the last one to finish wakes the host.
class Pool {
 public:
  ~Pool() {
    stop_.store(true);
    for (auto& w : workers_) {
      w->go.fetch_add(1);
      w->go.notify_one();
    }
    for (auto& w : workers_) w->thread.join();
  }

  // Runs task(i) on workers 0..n-1 and waits for all of them.
  template <typename Task>
  void run(unsigned n, const Task& task) {
    while (workers_.size() < n) workers_.push_back(std::make_unique<Worker>(this, unsigned(workers_.size())));
    task_ = [&task](unsigned i) { task(i); };
    remaining_.store(n);
    done_.store(0);
    for (unsigned i = 0; i < n; ++i) {
      workers_[i]->go.fetch_add(1);
      workers_[i]->go.notify_one();
    }
    done_.wait(0);
  }

 private:
  struct Worker {
    Worker(Pool* pool, unsigned i) : index(i), thread([this, pool] { pool->work(this); }) {}
    std::atomic<uint64_t> go{0};
    unsigned index;
    std::thread thread;  // last: starts after the members above exist
  };

  void work(Worker* w) {
    for (uint64_t seen = 0;; ++seen) {
      w->go.wait(seen);
      if (stop_.load()) return;
      task_(w->index);
      if (remaining_.fetch_sub(1) == 1) {
        done_.store(1);
        done_.notify_one();
      }
    }
  }

  std::vector<std::unique_ptr<Worker>> workers_;
  std::function<void(unsigned)> task_;
  std::atomic<bool> stop_{false};
  std::atomic<unsigned> remaining_{0};
  std::atomic<int> done_{0};
};

void check_launch(dim3 grid, dim3 block, std::size_t shared_bytes) {
  auto invalid = [&](const std::string& why) {
    throw Fault("invalid launch configuration (grid " + dim_name({grid.x, grid.y, grid.z}) + ", block " +
                dim_name({block.x, block.y, block.z}) + ", " + std::to_string(shared_bytes) +
                " bytes of dynamic shared memory): " + why);
  };
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) invalid("a grid dimension is 0");
  if (block.x == 0 || block.y == 0 || block.z == 0) invalid("a block dimension is 0");
  if (grid.x > 2147483647u) invalid("grid x above 2^31 - 1");
  if (grid.y > 65535 || grid.z > 65535) invalid("grid y or z above 65535");
  if (block.x > 1024 || block.y > 1024 || block.z > 64) invalid("block x or y above 1024, or z above 64");
  if (uint64_t(block.x) * block.y * block.z > kMaxThreadsPerBlock) invalid("more than 1024 threads per block");
  if (shared_bytes > kMaxSharedBytesPerBlock) invalid("more than 48 KiB of dynamic shared memory");
}

}  // namespace

[[noreturn]] void fault(const std::string& what) {
  if (current_block == nullptr) throw Fault(what);
  throw Fault("block " + dim_name(blockIdx) + " thread " + dim_name(threadIdx) + ": " + what);
}

namespace {
// DDF_EMU_SKIP_BARRIER=FILE:LINE (FILE: the end of the path): the __syncthreads() there does
// nothing, as if deleted. For proving that the kernel tests need each barrier (a test must
// fail without it) without a rebuild per barrier.
const std::string& skipped_barrier() {
  static const std::string skip = [] {
    const char* v = std::getenv("DDF_EMU_SKIP_BARRIER");
    return std::string(v != nullptr ? v : "");
  }();
  return skip;
}

bool is_skipped(Site site) {
  const std::string& skip = skipped_barrier();
  if (skip.empty()) return false;
  const std::string name = site_name(site);
  return name.size() >= skip.size() && name.compare(name.size() - skip.size(), skip.size(), skip) == 0 &&
         (name.size() == skip.size() || name[name.size() - skip.size() - 1] == '/');
}
}  // namespace

void sync_block(Site site) {
  if (is_skipped(site)) return;
  current_block->barrier.arrive_and_wait(site, current_linear_tid);
}

int lane_id() { return static_cast<int>(current_linear_tid % warpSize); }

int warp_lanes() { return current_warp().lanes; }

static void check_warp_mask(unsigned mask, const char* what) {
  const Warp& w = current_warp();
  if (mask != w.lane_mask && !(mask == 0xffffffffu && w.lanes == warpSize)) {
    char buf[160];
    std::snprintf(buf, sizeof(buf), "%s: mask 0x%08x; the emulator needs the mask of every lane of the warp (0x%08x)",
                  what, mask, w.lane_mask);
    fault(buf);
  }
}

void sync_warp(Site site, unsigned mask) {
  check_warp_mask(mask, "__syncwarp");
  current_warp().barrier.arrive_and_wait(site, lane_id());
}

const uint64_t* warp_exchange(Site site, unsigned mask, uint64_t bits, const char* what) {
  check_warp_mask(mask, what);
  Warp& w = current_warp();
  w.slots[lane_id()] = bits;
  w.barrier.arrive_and_wait(site, lane_id());  // every lane has stored its value
  return w.slots;
}

void warp_exchange_done(Site site) { current_warp().barrier.arrive_and_wait(site, lane_id()); }  // all read

unsigned ballot_sync(Site site, unsigned mask, int predicate) {
  const uint64_t* slots = warp_exchange(site, mask, predicate != 0, "__ballot_sync");
  unsigned ballot = 0;
  for (int lane = 0; lane < warp_lanes(); ++lane) ballot |= unsigned(slots[lane] != 0) << lane;
  warp_exchange_done(site);
  return ballot;
}

int all_sync(Site site, unsigned mask, int predicate) {
  const int lanes = warp_lanes();
  const unsigned all = lanes == warpSize ? 0xffffffffu : (1u << lanes) - 1;
  return ballot_sync(site, mask, predicate) == all;
}

void* dynamic_shared_memory(std::size_t alignment) {
  Block& b = *current_block;
  if (b.dynamic_shared_bytes == 0) fault("uses dynamic shared memory, but the launch requested 0 bytes");
  if (alignment > 16) fault("dynamic shared memory is only 16-byte aligned");
  return b.dynamic_shared.get();
}

namespace {
std::atomic<std::size_t> last_static_shared{0};
}  // namespace

void static_shared(Site site, std::size_t bytes) {
  Block& b = *current_block;
  std::lock_guard<std::mutex> lock(b.static_shared_mutex);
  for (const auto& [s, n] : b.static_shared)
    if (same_site(s, site)) return;
  b.static_shared.emplace_back(site, bytes);
  b.static_shared_bytes += bytes;
  last_static_shared.store(b.static_shared_bytes);
  if (b.static_shared_bytes + b.dynamic_shared_bytes > kMaxSharedBytesPerBlock) {
    std::string sites;
    for (const auto& [s, n] : b.static_shared) sites += " " + std::to_string(n) + " B at " + site_name(s) + ";";
    fault("invalid launch configuration: " + std::to_string(b.static_shared_bytes) +
          " bytes of static shared memory (" + sites.substr(1) + ") plus " + std::to_string(b.dynamic_shared_bytes) +
          " bytes of dynamic shared memory = " + std::to_string(b.static_shared_bytes + b.dynamic_shared_bytes) +
          " > 48 KiB (49152), the limit per block without the cudaFuncSetAttribute opt-in: a GPU refuses this launch");
  }
}

std::size_t last_launch_static_shared_bytes() { return last_static_shared.load(); }

void run_grid(dim3 grid, dim3 block_dim, std::size_t shared_bytes, void (*body)(const void*), const void* context) {
  check_launch(grid, block_dim, shared_bytes);
  // One launch at a time: blocks share the kernels' static __shared__ arrays.
  static std::mutex launch_mutex;
  static Pool pool;
  static Fibers fibers;
  static uint64_t launches = 0;
  std::lock_guard<std::mutex> lock(launch_mutex);

  Block block;
  block.dim = block_dim;
  block.threads = block_dim.x * block_dim.y * block_dim.z;
  const unsigned warps = (block.threads + warpSize - 1) / warpSize;
  for (unsigned w = 0; w < warps; ++w) {
    auto warp = std::make_unique<Warp>();
    warp->lanes = static_cast<int>(std::min<unsigned>(warpSize, block.threads - w * warpSize));
    warp->lane_mask = warp->lanes == warpSize ? 0xffffffffu : (1u << warp->lanes) - 1;
    block.warps.push_back(std::move(warp));
  }
  block.dynamic_shared_bytes = shared_bytes;
  last_static_shared.store(0);

  // Blocks run in a shuffled (but reproducible) order: a GPU promises no order either.
  const uint64_t blocks = uint64_t(grid.x) * grid.y * grid.z;
  std::vector<uint64_t> order(blocks);
  for (uint64_t i = 0; i < blocks; ++i) order[i] = i;
  std::mt19937_64 random(++launches);
  std::shuffle(order.begin(), order.end(), random);
  // Fibers: the warps of each block take turns in a shuffled order, lanes shuffled within
  // each warp, and each warp runs as far as it can before the next one starts (Fibers::run):
  // a missing __syncthreads lets a whole warp run through a phase before another warp has
  // begun it (a thread order shuffled across warps would leave only a few threads behind, and
  // a warp collective would act as a barrier). Shuffled, so that each warp (and lane) runs
  // both before and after the others across blocks.
  std::vector<std::vector<unsigned>> thread_order(warps);
  std::vector<unsigned> warp_order(warps);
  for (unsigned w = 0; w < warps; ++w) warp_order[w] = w;
  const auto shuffle_threads = [&] {
    std::shuffle(warp_order.begin(), warp_order.end(), random);
    for (unsigned k = 0; k < warps; ++k) {
      const unsigned w = warp_order[k], first = w * warpSize;
      thread_order[k].resize(std::min<unsigned>(warpSize, block.threads - first));
      for (unsigned l = 0; l < thread_order[k].size(); ++l) thread_order[k][l] = first + l;
      std::shuffle(thread_order[k].begin(), thread_order[k].end(), random);
    }
  };
  for (const uint64_t linear : order) {
    const uint3 block_idx{unsigned(linear % grid.x), unsigned(linear / grid.x % grid.y),
                          unsigned(linear / (uint64_t(grid.x) * grid.y))};
    block.barrier.reset(static_cast<int>(block.threads), "__syncthreads()");
    for (auto& w : block.warps) w->barrier.reset(w->lanes, "warp collective");
    if (shared_bytes > 0) {
      // Fresh for each block, filled with 0xff (NaN as floats): unwritten reads show up.
      block.dynamic_shared = std::make_unique<unsigned char[]>(shared_bytes);
      std::memset(block.dynamic_shared.get(), 0xff, shared_bytes);
    }
    // The thread-local state of thread `tid` (on its OS thread, or before its fiber runs).
    const auto enter = [&](unsigned tid) {
      threadIdx = {tid % block_dim.x, tid / block_dim.x % block_dim.y, tid / (block_dim.x * block_dim.y)};
      blockIdx = block_idx;
      blockDim = block_dim;
      gridDim = grid;
      current_block = &block;
      current_linear_tid = tid;
    };
    const std::function<void(unsigned)> thread = [&](unsigned tid) {
      if (!use_fibers()) enter(tid);
      try {
        body(context);
        block.barrier.leave();
        current_warp().barrier.leave();
      } catch (const Fault& e) {
        block.fail(e.what());
      } catch (const Aborted&) {
        // another thread of the block faulted; its message is the one reported
      } catch (const std::exception& e) {
        block.fail("block " + dim_name(blockIdx) + " thread " + dim_name(threadIdx) + ": " + e.what());
      } catch (...) {
        block.fail("block " + dim_name(blockIdx) + " thread " + dim_name(threadIdx) + ": a non-standard exception");
      }
      current_block = nullptr;
    };
    if (use_fibers()) {
      shuffle_threads();
      fibers.run(thread_order, thread, enter, [&] {
        block.fail("block " + dim_name(block_idx) + ": deadlock: every thread that has not exited waits at a "
                   "barrier or warp collective that cannot complete");
      });
    } else {
      pool.run(block.threads, thread);
    }
    if (!block.error.empty()) throw Fault(block.error);
  }
}

// ---- Half types ---------------------------------------------------------------------------

uint16_t float_to_half_bits(float f) {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  const uint32_t sign = (x >> 16) & 0x8000u, abs = x & 0x7fffffffu;
  if (abs > 0x7f800000u) return 0x7fff;                  // NaN (the hardware's canonical NaN)
  if (abs >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // >= 65520 rounds to infinity
  if (abs < 0x38800000u) {
    // Below 2^-14: a half subnormal m * 2^-24. Scaling by 2^24 is exact; nearbyint rounds
    // to nearest even in the default rounding mode.
    const float m = std::nearbyint(std::bit_cast<float>(abs) * 16777216.0f);
    return uint16_t(sign | static_cast<uint32_t>(m));
  }
  // Normal: drop 13 mantissa bits rounding to nearest even (a carry may bump the exponent),
  // then rebias the exponent from 127 to 15.
  const uint32_t rounded = abs + 0xfffu + ((abs >> 13) & 1u);
  return uint16_t(sign | ((rounded - 0x38000000u) >> 13));
}

float half_bits_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16, exponent = (h >> 10) & 0x1fu, mantissa = h & 0x3ffu;
  if (exponent == 0x1f) return std::bit_cast<float>(sign | 0x7f800000u | (mantissa << 13));  // Inf/NaN
  if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24, exact in float
    const float v = std::ldexp(static_cast<float>(mantissa), -24);
    return sign ? -v : v;
  }
  return std::bit_cast<float>(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

uint16_t float_to_bfloat16_bits(float f) {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return 0x7fff;  // NaN
  return uint16_t((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

float bfloat16_bits_to_float(uint16_t h) { return std::bit_cast<float>(uint32_t(h) << 16); }

}  // namespace cuda_emu
