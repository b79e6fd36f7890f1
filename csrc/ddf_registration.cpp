// The schemas of the ddf ops: the one place where the library's operators are defined.
// Kernels register themselves per dispatch key in their own files:
//   meta/ddf_meta.cpp               Meta (fake tensors, torch.compile, torch.export)
//   csrc/cpu/ddf_cpu.cpp            CPU
//   csrc/cuda/ddf_cuda.cu           CUDA
//   csrc/autograd/ddf_autograd.cpp  Autograd
//   csrc/autocast/ddf_autocast.cpp  AutocastCPU / AutocastCUDA
#include <ATen/core/enum_tag.h>
#include <torch/library.h>

TORCH_LIBRARY(ddf, m) {
  // Output (B, C, ceil(H/stride), ceil(W/stride)); see ../shared/DESIGN.md for the formula.
  m.def(
      "ddf(Tensor input, Tensor channel_filter, Tensor spatial_filter, int stride=1, int dilation=1, "
      "str combine=\"mul\") -> Tensor",
      {at::Tag::pt2_compliant_tag, at::Tag::flexible_layout});
  // Gradients with respect to (input, channel_filter, spatial_filter). An entry whose
  // output_mask is false is not computed and comes back undefined (None in Python).
  m.def(
      "ddf_backward(Tensor grad_output, Tensor input, Tensor channel_filter, Tensor spatial_filter, "
      "int stride, int dilation, str combine, bool[3] output_mask) -> (Tensor, Tensor, Tensor)",
      {at::Tag::pt2_compliant_tag, at::Tag::flexible_layout});
}
