// Fibers for the emulator: a block's threads run in turn on the calling OS thread, each on
// its own stack, and switch only where a thread must wait (a barrier, a warp collective).
// With one OS thread per CUDA thread, every barrier woke up to 1024 OS threads through the
// kernel's scheduler; on 2 cores most of the emulator's time was system time (measured:
// 2.2 s user, 5.9 s system, 2.8 million context switches for the 12-case TSan subset). A fiber
// switch is a user-space register swap: on x86-64 six callee-saved registers and the stack
// pointer (cuda_emu_fiber_switch below; glibc's swapcontext also makes a signal-mask system
// call per switch, which kept a third of the time in the kernel), elsewhere swapcontext.
//
// ThreadSanitizer does not follow these switches, so its build keeps OS threads
// (cuda_emulation.cpp). AddressSanitizer is told of every switch (its fiber annotations), so
// that it knows which stack is live.
#pragma once

#include <sys/mman.h>
#include <ucontext.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define CUDA_EMU_FIBERS_ASAN 1
#else
#define CUDA_EMU_FIBERS_ASAN 0
#endif

#if defined(__x86_64__)
#define CUDA_EMU_FIBERS_SWITCH 1
// Saves the callee-saved registers (System V: rbx, rbp, r12-r15) on the current stack,
// stores the stack pointer in *save_sp, loads load_sp and pops the same registers from the
// stack found there, then returns on it. A fresh stack holds six zeros and the entry address.
extern "C" void cuda_emu_fiber_switch(void** save_sp, void* load_sp);
__asm__(
    ".text\n"
    ".globl cuda_emu_fiber_switch\n"
    ".hidden cuda_emu_fiber_switch\n"
    ".type cuda_emu_fiber_switch, @function\n"
    "cuda_emu_fiber_switch:\n"
    "  pushq %rbp\n  pushq %rbx\n  pushq %r12\n  pushq %r13\n  pushq %r14\n  pushq %r15\n"
    "  movq %rsp, (%rdi)\n"
    "  movq %rsi, %rsp\n"
    "  popq %r15\n  popq %r14\n  popq %r13\n  popq %r12\n  popq %rbx\n  popq %rbp\n"
    "  ret\n"
    ".size cuda_emu_fiber_switch, .-cuda_emu_fiber_switch\n");
#else
#define CUDA_EMU_FIBERS_SWITCH 0
#endif

namespace cuda_emu {

// Where a switched-out fiber (or the host) resumes.
struct FiberContext {
#if CUDA_EMU_FIBERS_SWITCH
  void* sp = nullptr;
#else
  ucontext_t uc;
#endif
};

// Points `c` at a fresh call of entry() on [stack, stack + bytes).
inline void make_fiber_context(FiberContext& c, void* stack, std::size_t bytes, void (*entry)()) {
#if CUDA_EMU_FIBERS_SWITCH
  // Six zeroed registers, entry's address for `ret`, then a null return address for entry
  // (it never returns), at a 16-byte-aligned top: entry starts with rsp = 8 mod 16, as after
  // a call.
  auto top = (reinterpret_cast<std::uintptr_t>(stack) + bytes) & ~std::uintptr_t(15);
  auto* frame = reinterpret_cast<void**>(top) - 8;
  for (int i = 0; i < 6; ++i) frame[i] = nullptr;
  frame[6] = reinterpret_cast<void*>(entry);
  frame[7] = nullptr;
  c.sp = frame;
#else
  if (getcontext(&c.uc) != 0) {
    std::perror("cuda_emu::Fibers: getcontext");
    std::abort();
  }
  c.uc.uc_stack.ss_sp = stack;
  c.uc.uc_stack.ss_size = bytes;
  c.uc.uc_link = nullptr;
  makecontext(&c.uc, entry, 0);
#endif
}

inline void switch_fiber_context(FiberContext& from, FiberContext& to) {
#if CUDA_EMU_FIBERS_SWITCH
  cuda_emu_fiber_switch(&from.sp, to.sp);
#else
  swapcontext(&from.uc, &to.uc);
#endif
}

class Fibers {
 public:
  // Each fiber's stack, mapped once and reused by later runs, with a guard page below it (an
  // overflow faults instead of corrupting a neighbour). The kernels' frames are a few KiB;
  // ASan's redzones make them larger.
  static constexpr std::size_t kStackBytes = 512 * 1024;

  Fibers() = default;
  Fibers(const Fibers&) = delete;
  Fibers& operator=(const Fibers&) = delete;
  ~Fibers() {
    for (const auto& f : fibers_) munmap(f->mapping, kStackBytes + kGuardBytes);
  }

  // Runs task(i) on fiber i for every i in `groups` (together a permutation of 0..n-1) until
  // every task has returned. A task waits with yield(). Each round takes the groups in turn
  // and runs each group's fibers, in its order, again and again until none of them can move:
  // a group runs as far ahead of the later groups as its waits allow. resume(i) runs on this
  // thread before fiber i starts or continues (to set its thread-local state). A round in
  // which no fiber made progress (note_progress(), or a task returning) means that every
  // fiber waits for another: stalled() is called, and must make the waiters return (by
  // aborting what they wait on); a second stall in a row aborts the process. The tasks must
  // not throw.
  void run(const std::vector<std::vector<unsigned>>& groups, const std::function<void(unsigned)>& task,
           const std::function<void(unsigned)>& resume, const std::function<void()>& stalled) {
    unsigned n = 0;
    for (const auto& g : groups) n += static_cast<unsigned>(g.size());
    while (fibers_.size() < n) fibers_.push_back(new_fiber());
    task_ = &task;
    for (unsigned i = 0; i < n; ++i) {
      fibers_[i]->done = false;
      make_fiber_context(fibers_[i]->context, fibers_[i]->stack, kStackBytes, &Fibers::entry);
    }
    unsigned left = n;
    bool stalled_before = false;
    while (left > 0) {
      const uint64_t round_start = progress_;
      for (const auto& group : groups) {
        uint64_t pass_start;
        do {  // passes over the group until one makes no progress
          pass_start = progress_;
          for (const unsigned i : group) {
            if (fibers_[i]->done) continue;
            resume(i);
            switch_to(i);
            if (fibers_[i]->done) {
              --left;
              ++progress_;
            }
          }
        } while (progress_ != pass_start);
      }
      if (left == 0 || progress_ != round_start) {
        stalled_before = false;
        continue;
      }
      if (stalled_before) {
        std::fprintf(stderr, "cuda_emu::Fibers: %u threads still wait after stalled() released them\n", left);
        std::abort();
      }
      stalled_before = true;
      stalled();
    }
    task_ = nullptr;
  }

  // From inside a task: let the other fibers run; returns when this one's turn comes again.
  static void yield() {
    Fibers* self = running_;
    Fiber& f = *self->fibers_[self->index_];
#if CUDA_EMU_FIBERS_ASAN
    __sanitizer_start_switch_fiber(&f.fake_stack, self->host_bottom_, self->host_size_);
#endif
    switch_fiber_context(f.context, self->host_);
#if CUDA_EMU_FIBERS_ASAN
    __sanitizer_finish_switch_fiber(f.fake_stack, &self->host_bottom_, &self->host_size_);
#endif
  }

  // From inside a task: the task did something another fiber may be waiting for.
  static void note_progress() { ++running_->progress_; }

 private:
  static constexpr std::size_t kGuardBytes = 64 * 1024;  // a whole page on 4, 16 and 64 KiB pages

  // On the heap, never moved: glibc's ucontext_t points into itself (its FP register area).
  struct Fiber {
    FiberContext context;
    void* mapping = nullptr;
    void* stack = nullptr;
    void* fake_stack = nullptr;  // ASan's fake stack of this fiber while it is switched out
    bool done = true;
  };

  static std::unique_ptr<Fiber> new_fiber() {
    auto f = std::make_unique<Fiber>();
    f->mapping = mmap(nullptr, kStackBytes + kGuardBytes, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (f->mapping == MAP_FAILED || mprotect(f->mapping, kGuardBytes, PROT_NONE) != 0) {
      std::perror("cuda_emu::Fibers: a fiber stack");
      std::abort();
    }
    f->stack = static_cast<char*>(f->mapping) + kGuardBytes;
    return f;
  }

  void switch_to(unsigned i) {
    running_ = this;
    index_ = i;
#if CUDA_EMU_FIBERS_ASAN
    void* host_fake_stack = nullptr;
    __sanitizer_start_switch_fiber(&host_fake_stack, fibers_[i]->stack, kStackBytes);
#endif
    switch_fiber_context(host_, fibers_[i]->context);
#if CUDA_EMU_FIBERS_ASAN
    __sanitizer_finish_switch_fiber(host_fake_stack, nullptr, nullptr);
#endif
  }

  // A fiber's first frame: runs its task once, then returns to the host for good (the next
  // run makes a fresh context on the same stack).
  static void entry() {
    Fibers* self = running_;
#if CUDA_EMU_FIBERS_ASAN
    __sanitizer_finish_switch_fiber(nullptr, &self->host_bottom_, &self->host_size_);
#endif
    const unsigned i = self->index_;
    (*self->task_)(i);
    self->fibers_[i]->done = true;
#if CUDA_EMU_FIBERS_ASAN
    __sanitizer_start_switch_fiber(nullptr, self->host_bottom_, self->host_size_);  // this stack is finished
#endif
    FiberContext finished;
    switch_fiber_context(finished, self->host_);
  }

  // The fiber being run (one run at a time: the emulator runs one launch at a time).
  static inline Fibers* running_ = nullptr;
  std::vector<std::unique_ptr<Fiber>> fibers_;
  FiberContext host_;
  unsigned index_ = 0;
  uint64_t progress_ = 0;
  const std::function<void(unsigned)>* task_ = nullptr;
  const void* host_bottom_ = nullptr;
  std::size_t host_size_ = 0;
};

}  // namespace cuda_emu
