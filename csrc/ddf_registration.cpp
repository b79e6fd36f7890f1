// The ddf ops, defined with their schemas (ddf_schema.h): the one place where the library's
// operators are defined.
// Kernels register themselves per dispatch key in their own files:
//   meta/ddf_meta.cpp               Meta (fake tensors, torch.compile, torch.export)
//   csrc/cpu/ddf_cpu.cpp            CPU
//   csrc/cuda/ddf_cuda.cu           CUDA
//   csrc/autograd/ddf_autograd.cpp  Autograd
//   csrc/autograd/ddf_derivatives.cpp  CompositeImplicitAutograd (the private derivative ops)
//   csrc/autocast/ddf_autocast.cpp  AutocastCPU / AutocastCUDA
#include <ATen/core/enum_tag.h>
#include <torch/library.h>

#include "ddf_schema.h"

TORCH_LIBRARY(ddf, m) {
  m.def(ddf::kDdfSchema, {at::Tag::pt2_compliant_tag, at::Tag::flexible_layout});
  m.def(ddf::kDdfBackwardSchema, {at::Tag::pt2_compliant_tag, at::Tag::flexible_layout});
  m.def(ddf::kDdfBackwardBackwardSchema, {at::Tag::pt2_compliant_tag});
  m.def(ddf::kDdfJvpSchema, {at::Tag::pt2_compliant_tag});
  m.def(ddf::kDdfBackwardJvpSchema, {at::Tag::pt2_compliant_tag});
}
