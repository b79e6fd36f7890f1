// Which vector instruction set the CPU kernels' inner loops run with, picked once at load
// time the way ATen picks its CPU_CAPABILITY kernels: the best the CPU has, capped by
// ATEN_CPU_CAPABILITY (default / avx2 / avx512), which forces a lower one for testing and
// benchmarking.
//
// Why not at::vec::Vectorized compiled once per CPU_CAPABILITY, as ATen does: that needs
// each ISA's translation unit compiled with its own -m flags, which torch's BuildExtension
// (setup.py) cannot express for one extension; and an inline function compiled with AVX-512
// in one TU can be merged by the linker into callers of the baseline build. Instead the
// innermost loops (vector.h) are written once with GCC/Clang vector extensions and
// instantiated per ISA with a `target` attribute, so only those functions carry wide
// instructions, and the register blocking is chosen per ISA (16 ymm registers on AVX2
// hold half the accumulators that 32 zmm registers hold on AVX-512). On aarch64 the same
// vector code is lowered to NEON; there is one ISA there.
#pragma once

#include <cstdint>

namespace ddf {
namespace cpu {

enum class Isa { Baseline, Avx2, Avx512 };

template <Isa I>
struct IsaTag {
  static constexpr Isa value = I;
};

#if defined(__x86_64__) && defined(__GNUC__) && !defined(DDF_NO_ISA_DISPATCH)
#define DDF_X86_ISA_DISPATCH 1
#define DDF_TARGET_AVX2 __attribute__((target("arch=x86-64-v3")))
#define DDF_TARGET_AVX512 __attribute__((target("arch=x86-64-v4")))
#else
#define DDF_X86_ISA_DISPATCH 0
#endif

// X(ISA, TARGET) for every ISA this build dispatches to: how each file instantiates its
// per-ISA overloads of a loop (X defines one, with the TARGET attribute in front).
#if DDF_X86_ISA_DISPATCH
#define DDF_FOR_EACH_ISA(X) \
  X(Isa::Baseline, )        \
  X(Isa::Avx2, DDF_TARGET_AVX2) X(Isa::Avx512, DDF_TARGET_AVX512)
#else
#define DDF_FOR_EACH_ISA(X) X(Isa::Baseline, )
#endif

// The ISA of this process (computed once).
Isa cpu_isa();
const char* isa_name(Isa isa);

// Calls f(IsaTag<I>{}) for the process's ISA: f's body picks the per-ISA overloads.
template <typename F>
decltype(auto) with_isa(F&& f) {
#if DDF_X86_ISA_DISPATCH
  switch (cpu_isa()) {
    case Isa::Avx512:
      return f(IsaTag<Isa::Avx512>());
    case Isa::Avx2:
      return f(IsaTag<Isa::Avx2>());
    default:
      break;
  }
#endif
  return f(IsaTag<Isa::Baseline>());
}

}  // namespace cpu
}  // namespace ddf
