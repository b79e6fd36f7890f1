// Which kernels a CUDA call takes: the one home of that choice. Host code, torch-free: the
// launches (ddf_cuda_launch.cuh) act on it, and torch.ops.ddf._cuda_plan
// (csrc/ddf_cuda_plan_op.cpp, every build) reports it, so tests and benchmarks assert the path
// a call takes instead of restating the plans' rules.
//
// Each kernel (forward, grad_input, filter gradients): the NCHW tiled kernels when its tensors
// are contiguous NCHW (ddf_cuda_tiled_plan.h), else the channels_last kernels when the tensors
// they read in vectors have channel stride 1 (ddf_cuda_nhwc_plan.h), else the generic kernels.
// Before the backward, grad_output takes the input's layout when it has another
// (grad_output_copy): the copy costs a fraction of one backward kernel, the generic kernels
// about ten times the tiled ones.
#pragma once

#include <cstdint>

#include "../ddf_geometry.h"
#include "ddf_cuda_grid_limits.h"
#include "ddf_cuda_nhwc_plan.h"
#include "ddf_cuda_tiled_plan.h"

namespace ddf {
namespace cuda {

// Which kernels ran: Tiled, the NCHW tiled kernels; TiledNhwc, the channels_last ones.
enum class Path { None, Generic, Tiled, TiledNhwc };

inline const char* path_name(Path p) {
  switch (p) {
    case Path::None: return "none";
    case Path::Generic: return "generic";
    case Path::Tiled: return "tiled";
    default: return "tiled_nhwc";
  }
}

// Contiguous in NCHW order (dimensions of size 1 may have any stride, as in torch).
inline bool nchw_contiguous(const Strides4& st, int64_t N, int64_t C, int64_t H, int64_t W) {
  int64_t expected = 1;
  const int64_t sizes[4] = {N, C, H, W}, strides[4] = {st.n, st.c, st.h, st.w};
  for (int dim = 3; dim >= 0; --dim) {
    if (sizes[dim] != 1 && strides[dim] != expected) return false;
    expected *= sizes[dim];
  }
  return true;
}

// What the choice needs to know of the dtype and the data pointers.
struct CallFacts {
  bool tiled_dtype;    // float32, float16 or bfloat16
  int element_bytes;
  // The data pointers the NHWC kernels access in 16-byte vectors are 16-byte aligned: input
  // and output (forward); grad_output, input and grad_input (backward).
  bool vector_aligned;
};

struct ForwardChoice {
  Path path = Path::None;
  tiled::TiledPlan tiled;
  nhwc::NhwcPlan nhwc;
};

inline ForwardChoice choose_forward(const Geometry& g, const Strides4& xs, const Strides4& ss, const Strides4& os,
                                   const CallFacts& facts, const GridLimits& limits) {
  ForwardChoice c;
  if (g.B * g.C * g.Ho * g.Wo == 0) return c;
  const bool contiguous = nchw_contiguous(xs, g.B, g.C, g.H, g.W) &&
      nchw_contiguous(ss, g.B, g.G * g.taps(), g.Ho, g.Wo) && nchw_contiguous(os, g.B, g.C, g.Ho, g.Wo);
  c.tiled = tiled::plan_tiled(tiled::Kernel::Forward, g, contiguous, facts.tiled_dtype, limits.x, limits.y,
                              limits.target_blocks);
  if (c.tiled.use) return c.path = Path::Tiled, c;
  c.nhwc = nhwc::plan_nhwc(nhwc::NhwcKernel::Forward, g, xs, ss, os, facts.tiled_dtype, facts.element_bytes,
                           facts.vector_aligned, limits.x, limits.y, limits.target_blocks);
  c.path = c.nhwc.use ? Path::TiledNhwc : Path::Generic;
  return c;
}

struct BackwardChoice {
  Path grad_input = Path::None, filter_grads = Path::None;
  tiled::TiledPlan grad_input_plan, filter_grads_plan;
  nhwc::NhwcPlan grad_input_nhwc, filter_grads_nhwc;
};

// What the backward does to grad_output first. A grad_output whose layout is not the input's
// (the expanded grad_output of out.sum(), a user's NCHW gradient for a channels_last output)
// would send both backward kernels to the generic path; in a tiled dtype it is copied into the
// input's layout: contiguous NCHW for a contiguous NCHW input, channels_last for an input with
// channel stride 1. The copy moves grad_output's bytes twice, a fraction of one tiled kernel's
// traffic; the generic kernels take about ten times the tiled ones (the GPU model).
enum class GradOutputCopy { None, Nchw, ChannelsLast };

inline GradOutputCopy grad_output_copy(const Geometry& g, const Strides4& gos, const Strides4& xs, bool tiled_dtype) {
  if (!tiled_dtype) return GradOutputCopy::None;
  if (nchw_contiguous(xs, g.B, g.C, g.H, g.W))
    return nchw_contiguous(gos, g.B, g.C, g.Ho, g.Wo) ? GradOutputCopy::None : GradOutputCopy::Nchw;
  return xs.c == 1 && gos.c != 1 ? GradOutputCopy::ChannelsLast : GradOutputCopy::None;
}

// want_*: the gradients asked for (output_mask) with a non-empty result. gos: grad_output's
// strides after grad_output_copy.
inline BackwardChoice choose_backward(const Geometry& g, const Strides4& gos, const Strides4& xs, const Strides4& ss,
                                      const Strides4& gis, bool want_input, bool want_filters, const CallFacts& facts,
                                      const GridLimits& limits) {
  using nhwc::NhwcKernel;
  BackwardChoice c;
  const bool inputs_contiguous = nchw_contiguous(gos, g.B, g.C, g.Ho, g.Wo) &&
      nchw_contiguous(xs, g.B, g.C, g.H, g.W) && nchw_contiguous(ss, g.B, g.G * g.taps(), g.Ho, g.Wo);
  if (want_input) {
    c.grad_input_plan = tiled::plan_tiled(tiled::Kernel::GradInput, g,
                                          inputs_contiguous && nchw_contiguous(gis, g.B, g.C, g.H, g.W),
                                          facts.tiled_dtype, limits.x, limits.y, limits.target_blocks);
    if (c.grad_input_plan.use) {
      c.grad_input = Path::Tiled;
    } else {
      c.grad_input_nhwc = nhwc::plan_nhwc(NhwcKernel::GradInput, g, gos, ss, gis, facts.tiled_dtype,
                                          facts.element_bytes, facts.vector_aligned, limits.x, limits.y,
                                          limits.target_blocks);
      c.grad_input = c.grad_input_nhwc.use ? Path::TiledNhwc : Path::Generic;
    }
  }
  if (want_filters) {
    c.filter_grads_plan = tiled::plan_tiled(tiled::Kernel::FilterGrads, g, inputs_contiguous, facts.tiled_dtype,
                                            limits.x, limits.y, limits.target_blocks);
    if (c.filter_grads_plan.use) {
      c.filter_grads = Path::Tiled;
    } else {
      c.filter_grads_nhwc = nhwc::plan_nhwc(NhwcKernel::FilterGrads, g, xs, ss, gos, facts.tiled_dtype,
                                            facts.element_bytes, facts.vector_aligned, limits.x, limits.y,
                                            limits.target_blocks);
      c.filter_grads = c.filter_grads_nhwc.use ? Path::TiledNhwc : Path::Generic;
    }
  }
  return c;
}

}  // namespace cuda
}  // namespace ddf
