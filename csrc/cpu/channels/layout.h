// Layout copies of the channel kernels: the channel filter transposed to [b][tap][c], and
// NCHW <-> channels_last copies of whole tensors for the backward on NCHW operands
// (BackwardPath::ChannelsCopied).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "../../ddf_geometry.h"
#include "../vec/copy.h"

namespace ddf {
namespace cpu {
namespace channels {

// The channel filter as cfT[b][tap][c]: each tap's values for the channels of a head are
// one vector load.
template <typename scalar_t>
std::vector<scalar_t> transposed_channel_filter(const scalar_t* cf_ptr, const Strides4& cs, const Geometry& g) {
  const int64_t kk = g.taps();
  std::vector<scalar_t> cfT(static_cast<size_t>(g.B * kk * g.C));
  at::parallel_for(0, g.B * kk, ceil_div(4096, g.C), [&](int64_t begin, int64_t end) {
    for (int64_t bt = begin; bt < end; ++bt) {
      const int64_t b = bt / kk, t = bt % kk;
      const scalar_t* src = cf_ptr + cs.offset(b, 0, t / g.k, t % g.k);
      scalar_t* dst = cfT.data() + bt * g.C;
      for (int64_t c = 0; c < g.C; ++c) dst[c] = src[c * cs.c];
    }
  });
  return cfT;
}

// NCHW <-> channels_last copies for the channel-vectorized backward on NCHW operands, by the
// in-register transposes of ../vec/copy.h, in parallel over (batch, block of channels):
// ATen's copy between the two layouts took 4x the time of the kernel it fed (256@14²).

constexpr int64_t kTransposeChannels = 64;

// Every (batch, block of kTransposeChannels channels) of a B x C x HW tensor, in parallel:
// NCHW src to channels_last dst, or (to_channels_last false) back.
template <typename scalar_t>
void transpose_layout(const scalar_t* src, scalar_t* dst, int64_t B, int64_t C, int64_t HW, bool to_channels_last) {
  const int64_t blocks = ceil_div(C, kTransposeChannels);
  at::parallel_for(0, B * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / blocks, c0 = task % blocks * kTransposeChannels, cb = std::min(kTransposeChannels, C - c0);
      const int64_t nchw = (b * C + c0) * HW, cl = b * HW * C + c0;
      if (to_channels_last) {
        transpose_block(src + nchw, HW, dst + cl, C, cb, HW);
      } else {
        transpose_block(src + cl, C, dst + nchw, HW, HW, cb);
      }
    }
  });
}

// t with contiguous channels: t itself, or a channels_last copy.
template <typename scalar_t>
at::Tensor channels_contiguous(const at::Tensor& t) {
  if (t.stride(1) == 1) return t;
  if (!t.is_contiguous()) return t.contiguous(at::MemoryFormat::ChannelsLast);
  at::Tensor out = at::empty(t.sizes(), t.options().memory_format(at::MemoryFormat::ChannelsLast));
  transpose_layout(t.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), t.size(0), t.size(1),
                   t.size(2) * t.size(3), true);
  return out;
}

// dst = src, where src has contiguous channels (channels_last) and dst is any tensor.
template <typename scalar_t>
void copy_from_channels_contiguous(at::Tensor& dst, const at::Tensor& src) {
  if (dst.is_same(src)) return;
  if (!dst.is_contiguous() || !src.is_contiguous(at::MemoryFormat::ChannelsLast)) {
    dst.copy_(src);
    return;
  }
  transpose_layout(src.const_data_ptr<scalar_t>(), dst.mutable_data_ptr<scalar_t>(), dst.size(0), dst.size(1),
                   dst.size(2) * dst.size(3), false);
}

}  // namespace channels
}  // namespace cpu
}  // namespace ddf
