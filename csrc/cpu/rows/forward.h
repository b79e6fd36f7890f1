// The forward of the row kernels: NCHW bands of output rows per (batch, head) task, in
// the band layouts of bands.h, the stride-1 "mul" float32/float64 forward reading the input
// in place (head_loop.h) where the plan says so (ForwardPath::RowsInPlace, RowsDense,
// RowsPhasePlanes).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/Parallel.h>

#include <cstdint>
#include <type_traits>
#include <vector>

#include "../../ddf_checks.h"
#include "../elementwise/forward.h"
#include "../operands.h"
#include "../plan.h"
#include "../vec/finite.h"
#include "bands.h"
#include "head_loop.h"

namespace ddf {
namespace cpu {
namespace rows {
namespace {  // internal linkage: see bands.h

// The forward of the channels [c_begin, c_end) of task's head, band y0 .. y0 + ny, in place
// (see head_loop.h): the channels whose reads stay inside the input's storage run there
// in one call per run of them, the others through `copies(c, 1)`. w: the band's
// spatial-filter rows, zeroed outside the image (zero_outside_taps); x_off: the call's
// input offsets (head_input_offsets).
template <typename acc_t, typename scalar_t, typename Copies>
void forward_head_in_place(const scalar_t* x_ptr, const Strides4& xs, const char* storage_begin, const char* storage_end,
                           scalar_t* out_ptr, const Strides4& os, const acc_t* const* w, const scalar_t* cf_ptr,
                           const Strides4& cs, const Geometry& g, int64_t b, int64_t c_begin, int64_t c_end, int64_t y0,
                           int64_t ny, const int64_t* x_off, std::vector<acc_t>& cf, std::vector<uint8_t>& bad,
                           const Operands<scalar_t>& ops, Copies&& copies) {
  static_assert(std::is_same_v<scalar_t, acc_t>, "read in place");
  const int64_t kk = g.taps(), pad = g.pad(), W = g.W, n = ny * W, C = c_end - c_begin;
  const int64_t reach = pad * W + pad, n_read = round_up(n, kBlock<acc_t>);
  auto plane = [&](int64_t c) { return x_ptr + b * xs.n + c * xs.c + y0 * W; };
  auto inside = [&](int64_t c) {
    const char* lo = reinterpret_cast<const char*>(plane(c) - reach);
    const char* hi = reinterpret_cast<const char*>(plane(c) + reach + n_read);
    return lo >= storage_begin && hi <= storage_end;
  };
  // The head's channel filters, [tap][channel].
  cf.resize(kk * C);
  for (int64_t c = 0; c < C; ++c)
    for (int64_t i = 0, tap = 0; i < g.k; ++i)
      for (int64_t j = 0; j < g.k; ++j, ++tap) cf[tap * C + c] = cf_ptr[cs.offset(b, c_begin + c, i, j)];
  bad.resize(C);
  for (int64_t c = c_begin; c < c_end;) {
    if (!inside(c)) {
      copies(c, int64_t(1));
      ++c;
      continue;
    }
    int64_t e = c + 1;
    while (e < c_end && inside(e)) ++e;
    std::fill(bad.begin(), bad.end(), uint8_t(0));
    HeadOperands<acc_t> o;
    o.out = out_ptr + os.offset(b, c, y0, 0), o.out_cs = os.c;
    o.x = plane(c), o.x_cs = xs.c, o.x_off = x_off;
    o.w = w, o.cf = cf.data() + (c - c_begin), o.cf_ts = C, o.taps = kk;
    with_isa([&](auto isa) { forward_head(isa, o, e - c, n, bad.data()); });
    for (int64_t k = c; k < e; ++k) {
      if (bad[k - c]) elementwise::forward_rows<Combine::Mul>(ops, out_ptr, os, g, b, k, k + 1, y0, y0 + ny);  // see ../elementwise/
    }
    c = e;
  }
}

// The in-place forward's input offsets, [tap][k < kHeadMaxChannels]: k input channels and
// tap t's shift from an output pixel (see HeadOperands in head_loop.h).
inline std::vector<int64_t> head_input_offsets(const Geometry& g, const Strides4& xs) {
  constexpr int64_t K = kHeadMaxChannels;
  const int64_t d = g.dilation, pad = g.pad(), W = g.W;
  std::vector<int64_t> x_off(g.taps() * K);
  for (int64_t i = 0, tap = 0; i < g.k; ++i)
    for (int64_t j = 0; j < g.k; ++j, ++tap)
      for (int64_t k = 0; k < K; ++k) x_off[tap * K + k] = k * xs.c + (i * d - pad) * W + j * d - pad;
  return x_off;
}

// The forward of the whole call on NCHW-row operands (see forward below), in bands of
// plan.bands output rows per (b, head) task.
template <Combine M, typename scalar_t>
void forward_bands(const ForwardPlan& plan, const at::Tensor& input, const at::Tensor& cf, const at::Tensor& sf,
                   at::Tensor& out, const Geometry& g) {
  using acc_t = typename AccType<scalar_t>::type;
  constexpr int64_t block = kBlock<acc_t>, CB = kChannelBlock;
  const Strides4 xs = strides_of(input), cs = strides_of(cf), ss = strides_of(sf), os = strides_of(out);
  const scalar_t* x_ptr = input.const_data_ptr<scalar_t>();
  const scalar_t* cf_ptr = cf.const_data_ptr<scalar_t>();
  const scalar_t* sf_ptr = sf.const_data_ptr<scalar_t>();
  scalar_t* out_ptr = out.mutable_data_ptr<scalar_t>();
  Operands<scalar_t> ops;
  ops.x = x_ptr, ops.xs = xs, ops.cf = cf_ptr, ops.cs = cs, ops.sf = sf_ptr, ops.ss = ss;
  const Layout lay(g, plan.path != ForwardPath::RowsPhasePlanes);
  const int64_t kk = lay.kk, s = g.stride, L = lay.L, cph = g.channels_per_head();
  const int64_t R = plan.bands.rows, bands = plan.bands.count;
  const int64_t w_size = R * L + block;
  const int64_t x_plane = lay.dense ? (R + lay.a_max) * L + block + 2 * lay.margin : (R + lay.a_max + 1) * L + block;
  const int64_t x_size = s * s * x_plane;

  // The channels whose reads stay inside the input's storage run in place, with no copies
  // (forward_head_in_place).
  const bool in_place = plan.path == ForwardPath::RowsInPlace;
  const std::vector<int64_t> x_off = in_place ? head_input_offsets(g, xs) : std::vector<int64_t>();
  const char* storage_begin = static_cast<const char*>(input.storage().data());
  const char* storage_end = storage_begin + input.storage().nbytes();

  at::parallel_for(0, g.B * g.G * bands, 1, [&](int64_t begin, int64_t end) {
    // One input buffer, output buffer and channel filter per channel of a block.
    std::vector<acc_t> x_buf(CB * x_size), w_buf(kk * w_size), acc(CB * w_size), cfv(CB * kk);
    std::vector<const acc_t*> a(CB * kk), w(kk);
    std::vector<acc_t*> outs(CB);
    std::vector<acc_t> cf_head;  // the in-place path's channel filters, [tap][c]
    std::vector<uint8_t> bad;    // and its non-finite channels
    for (int64_t k = 0; k < CB; ++k) {
      outs[k] = acc.data() + k * w_size;
      for (int64_t tap = 0; tap < kk; ++tap) {
        a[k * kk + tap] = x_buf.data() + k * x_size + lay.plane[tap] * x_plane + lay.shift[tap];
      }
    }
    for (int64_t t = begin; t < end; ++t) {
      const Task task(t, g.G, bands);
      const int64_t y0 = task.band * R, ny = std::min(R, g.Ho - y0), n = round_up(ny * L, block);
      const int64_t x_rows = ny + lay.a_max + 1, in_row0 = y0 * s - g.pad(), in_rows = x_rows * s;
      bool x_buf_zeroed = false;  // (zeroed on first use: the in-place path has no use for it)
      zero(w_buf);
      for (int64_t tap = 0; tap < kk; ++tap) {
        w[tap] = w_buf.data() + tap * w_size;
        load_output_rows(w_buf.data() + tap * w_size, sf_ptr + ss.offset(task.b, task.h * kk + tap, 0, 0), ss.h, ss.w, g, y0, ny, L);
        if (lay.dense) zero_outside_taps(w_buf.data() + tap * w_size, g, tap / g.k, tap % g.k, y0, ny);
      }
      auto copies = [&](int64_t c0, int64_t cb) {
        if (!x_buf_zeroed) zero(x_buf), x_buf_zeroed = true;
        for (int64_t k = 0; k < cb; ++k) {
          const scalar_t* x_plane_ptr = x_ptr + task.b * xs.n + (c0 + k) * xs.c;
          if (lay.dense) {
            load_dense_rows(x_buf.data() + k * x_size, x_plane_ptr, xs, g, lay.margin, y0, ny + lay.a_max);
          } else {
            load_phase_planes(x_buf.data() + k * x_size, x_plane, x_plane_ptr, xs, g, y0, x_rows, L);
          }
          load_channel_filter(cf_ptr, cs, g, task.b, c0 + k, cfv.data() + k * kk);
          prefetch_rows(out_ptr + os.offset(task.b, c0 + k, 0, 0), os.h, os.w, y0, ny, g.Ho, g.Wo, true);
        }
        for (int64_t c = c0 + cb; c < std::min(c0 + 2 * cb, (task.h + 1) * cph); ++c) {
          prefetch_rows(x_ptr + task.b * xs.n + c * xs.c, xs.h, xs.w, in_row0, in_rows, g.H, g.W, false);
        }
        apply_taps_block<M, acc_t>(cb, outs.data(), n, a.data(), w.data(), cfv.data(), kk);
        for (int64_t k = 0; k < cb; ++k) {
          copy_block(outs[k], L, int64_t(1), out_ptr + os.offset(task.b, c0 + k, y0, 0), os.h, os.w, ny, g.Wo);
          if (!all_finite(outs[k], L, ny, g.Wo)) {
            elementwise::forward_rows<M>(ops, out_ptr, os, g, task.b, c0 + k, c0 + k + 1, y0, y0 + ny);  // see ../elementwise/
          }
        }
      };
      if constexpr (M == Combine::Mul && std::is_same_v<scalar_t, acc_t>) {
        if (in_place) {
          forward_head_in_place<acc_t>(x_ptr, xs, storage_begin, storage_end, out_ptr, os, w.data(), cf_ptr, cs, g,
                                       task.b, task.h * cph, (task.h + 1) * cph, y0, ny, x_off.data(), cf_head, bad, ops, copies);
          continue;
        }
      }
      for_each_channel_block(task.h, cph, copies);
    }
  });
}

// The family's face: operands whose rows are strided go through NCHW copies, as the plan
// says (ForwardPlan::input_to_nchw and the others).
template <Combine M, typename scalar_t>
void forward(const ForwardPlan& plan, const at::Tensor& input, const at::Tensor& cf, const at::Tensor& sf,
             at::Tensor& out, const Geometry& g) {
  const at::Tensor x = plan.input_to_nchw ? input.contiguous() : input;
  const at::Tensor sf_rows = plan.spatial_filter_to_nchw ? sf.contiguous() : sf;
  at::Tensor result = plan.output_via_nchw ? at::empty(out.sizes(), out.options()) : out;
  forward_bands<M, scalar_t>(plan, x, cf, sf_rows, result, g);
  if (plan.output_via_nchw) out.copy_(result);
}

}  // namespace
}  // namespace rows
}  // namespace cpu
}  // namespace ddf
