#include "isa.h"

#include <ATen/Version.h>
#include <torch/library.h>

#include <string>

namespace ddf {
namespace cpu {
namespace {

Isa detect() {
#if DDF_X86_ISA_DISPATCH
  // ATen's choice honours ATEN_CPU_CAPABILITY; the CPU check keeps a forced ISA the CPU
  // lacks from running (ATen ignores such a request too).
  const std::string aten = at::get_cpu_capability();
  __builtin_cpu_init();
  const bool has_v4 = __builtin_cpu_supports("x86-64-v4"), has_v3 = __builtin_cpu_supports("x86-64-v3");
  if (aten == "AVX512" && has_v4) return Isa::Avx512;
  if ((aten == "AVX512" || aten == "AVX2") && has_v3) return Isa::Avx2;
#endif
  return Isa::Baseline;
}

std::string cpu_isa_op() {
  return isa_name(cpu_isa());
}

}  // namespace

Isa cpu_isa() {
  static const Isa isa = detect();
  return isa;
}

const char* isa_name(Isa isa) {
#if defined(__aarch64__)
  return "NEON";
#else
  switch (isa) {
    case Isa::Avx512:
      return "AVX512";
    case Isa::Avx2:
      return "AVX2";
    default:
      return "DEFAULT";
  }
#endif
}

}  // namespace cpu
}  // namespace ddf

// torch.ops.ddf._cpu_isa(): the ISA the CPU kernels run with in this process, for the
// benchmarks' headers and the tests.
TORCH_LIBRARY_FRAGMENT(ddf, m) {
  m.def("_cpu_isa() -> str", &ddf::cpu::cpu_isa_op);
}
