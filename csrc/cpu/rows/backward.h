// The backward of the row kernels (BackwardPath::RowsPhasePlanes): the filter gradients and
// the input gradient over NCHW bands in the phase-plane layout of bands.h.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "../../ddf_checks.h"
#include "../elementwise/backward.h"
#include "../operands.h"
#include "../plan.h"
#include "../vec/finite.h"
#include "bands.h"

namespace ddf {
namespace cpu {
namespace rows {
namespace {  // internal linkage: see bands.h

// Backward, filter gradients. Tasks: (b, head, band of output rows), as in the forward.
// grad_sf of the band sums over the channels of the head inside the task; grad_cf sums
// per (b, c, band) partials that are reduced in band order at the end.

template <Combine M, typename scalar_t>
void filter_grads_bands(
    const BackwardPlan& plan,
    const at::Tensor& grad_out,
    const at::Tensor& input,
    const at::Tensor& cf,
    const at::Tensor& sf,
    at::Tensor& grad_cf,
    at::Tensor& grad_sf,
    const Geometry& g) {
  using acc_t = typename AccType<scalar_t>::type;
  constexpr int64_t block = kBlock<acc_t>, lanes = kLanes<acc_t>, CB = kChannelBlock;
  const bool want_cf = grad_cf.defined(), want_sf = grad_sf.defined();
  const Strides4 gos = strides_of(grad_out), xs = strides_of(input), cs = strides_of(cf), ss = strides_of(sf);
  const scalar_t* go_ptr = grad_out.const_data_ptr<scalar_t>();
  const scalar_t* x_ptr = input.const_data_ptr<scalar_t>();
  const scalar_t* cf_ptr = cf.const_data_ptr<scalar_t>();
  const scalar_t* sf_ptr = sf.const_data_ptr<scalar_t>();
  Operands<scalar_t> ops;
  ops.go = go_ptr, ops.gos = gos, ops.x = x_ptr, ops.xs = xs, ops.cf = cf_ptr, ops.cs = cs, ops.sf = sf_ptr, ops.ss = ss;
  scalar_t* gc_ptr = want_cf ? grad_cf.mutable_data_ptr<scalar_t>() : nullptr;
  scalar_t* gs_ptr = want_sf ? grad_sf.mutable_data_ptr<scalar_t>() : nullptr;
  const Strides4 gcs = want_cf ? strides_of(grad_cf) : Strides4{}, gss = want_sf ? strides_of(grad_sf) : Strides4{};
  const Layout lay(g, false);
  const int64_t kk = lay.kk, s = g.stride, L = lay.L, cph = g.channels_per_head();
  const int64_t R = plan.filter_grad_bands.rows, bands = plan.filter_grad_bands.count;
  // Per (b, c, band): whether the band's partial grad_cf came out non-finite (then the
  // channel is recomputed by the direct kernel).
  std::vector<uint8_t> cf_redo(want_cf ? static_cast<size_t>(g.B * g.C * bands) : 0, 0);
  const int64_t w_size = R * L + block, x_plane = (R + lay.a_max + 1) * L + block, x_size = s * s * x_plane;
  // grad_cf partial sums: [b][c][band][tap].
  std::vector<acc_t> cf_partial(want_cf ? static_cast<size_t>(g.B * g.C * bands * kk) : 0, acc_t(0));

  at::parallel_for(0, g.B * g.G * bands, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> x_buf(CB * x_size), w_buf(kk * w_size), go_buf(CB * w_size), cfv(CB * kk);
    std::vector<acc_t> lane_sums(CB * kk * lanes), gsf_buf(want_sf ? kk * w_size : 0);
    std::vector<const acc_t*> a(CB * kk), w(kk), go(CB);
    std::vector<acc_t*> gsf(kk);
    for (int64_t k = 0; k < CB; ++k) {
      go[k] = go_buf.data() + k * w_size;
      for (int64_t tap = 0; tap < kk; ++tap) {
        a[k * kk + tap] = x_buf.data() + k * x_size + lay.plane[tap] * x_plane + lay.shift[tap];
      }
    }
    for (int64_t t = begin; t < end; ++t) {
      const Task task(t, g.G, bands);
      const int64_t y0 = task.band * R, ny = std::min(R, g.Ho - y0), n = round_up(ny * L, block);
      zero(x_buf);
      zero(w_buf);
      zero(go_buf);
      zero(gsf_buf);
      for (int64_t tap = 0; tap < kk; ++tap) {
        w[tap] = w_buf.data() + tap * w_size;
        load_output_rows(w_buf.data() + tap * w_size, sf_ptr + ss.offset(task.b, task.h * kk + tap, 0, 0), ss.h, ss.w, g, y0, ny, L);
        gsf[tap] = want_sf ? gsf_buf.data() + tap * w_size : nullptr;
      }
      for_each_channel_block(task.h, cph, [&](int64_t c0, int64_t cb) {
        for (int64_t k = 0; k < cb; ++k) {
          const int64_t c = c0 + k;
          load_phase_planes(x_buf.data() + k * x_size, x_plane, x_ptr + task.b * xs.n + c * xs.c, xs, g, y0, ny + lay.a_max + 1, L);
          load_channel_filter(cf_ptr, cs, g, task.b, c, cfv.data() + k * kk);
          load_output_rows(go_buf.data() + k * w_size, go_ptr + task.b * gos.n + c * gos.c, gos.h, gos.w, g, y0, ny, L);
        }
        zero(lane_sums);
        tap_grads_block<M, acc_t>(
            cb, go.data(), n, a.data(), w.data(), cfv.data(), kk, want_cf ? lane_sums.data() : nullptr,
            want_sf ? gsf.data() : nullptr);
        for (int64_t k = 0; want_cf && k < cb; ++k) {
          acc_t* part = cf_partial.data() + ((task.b * g.C + c0 + k) * bands + task.band) * kk;
          for (int64_t tap = 0; tap < kk; ++tap) {
            acc_t sum = 0;
            for (int64_t l = 0; l < lanes; ++l) sum += lane_sums[(k * kk + tap) * lanes + l];
            part[tap] = sum;
          }
          cf_redo[(task.b * g.C + c0 + k) * bands + task.band] = !all_finite(part, kk, 1, kk);
        }
      });
      if (want_sf) {
        bool finite = true;
        for (int64_t tap = 0; tap < kk; ++tap) {
          copy_block(gsf[tap], L, int64_t(1), gs_ptr + gss.offset(task.b, task.h * kk + tap, y0, 0), gss.h, gss.w, ny, g.Wo);
          finite = finite && all_finite(gsf[tap], L, ny, g.Wo);
        }
        if (!finite) elementwise::grad_spatial_rows<M>(ops, gs_ptr, gss, g, task.b, task.h, y0, y0 + ny);
      }
    }
  });

  if (want_cf) {
    at::parallel_for(0, g.B * g.C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t bc = begin; bc < end; ++bc) {
        const uint8_t* redo = cf_redo.data() + bc * bands;
        if (std::any_of(redo, redo + bands, [](uint8_t r) { return r != 0; })) {
          elementwise::grad_channel<M>(ops, gc_ptr, gcs, g, bc / g.C, bc % g.C);
          continue;
        }
        for (int64_t tap = 0; tap < kk; ++tap) {
          acc_t sum = 0;
          for (int64_t band = 0; band < bands; ++band) sum += cf_partial[(bc * bands + band) * kk + tap];
          gc_ptr[gcs.offset(bc / g.C, bc % g.C, tap / g.k, tap % g.k)] = static_cast<scalar_t>(sum);
        }
      }
    });
  }
}

// Backward, input gradient (a transposed DDF), gathered: input pixel (iy, ix) lies at
// padded (iy + pad, ix + pad) = (ry*s + pr, rx*s + pc), and the taps (i, j) that read it
// are those of phase plane (pr, pc), from output pixel (ry - i*d/s, rx - j*d/s). So each
// phase plane of the gradient is again one flat loop of apply_taps, over grad_output and
// the spatial filter at the taps' shifts. Tasks: (b, head, band of input rows); every
// element is written by exactly one task.

template <Combine M, typename scalar_t>
void input_grad_bands(
    const BackwardPlan& plan,
    const at::Tensor& grad_out,
    const at::Tensor& cf,
    const at::Tensor& sf,
    at::Tensor& grad_in,
    const Geometry& g) {
  using acc_t = typename AccType<scalar_t>::type;
  constexpr int64_t block = kBlock<acc_t>, CB = kChannelBlock;
  const Strides4 gos = strides_of(grad_out), cs = strides_of(cf), ss = strides_of(sf), gis = strides_of(grad_in);
  const scalar_t* go_ptr = grad_out.const_data_ptr<scalar_t>();
  const scalar_t* cf_ptr = cf.const_data_ptr<scalar_t>();
  const scalar_t* sf_ptr = sf.const_data_ptr<scalar_t>();
  scalar_t* gi_ptr = grad_in.mutable_data_ptr<scalar_t>();
  Operands<scalar_t> ops;
  ops.go = go_ptr, ops.gos = gos, ops.cf = cf_ptr, ops.cs = cs, ops.sf = sf_ptr, ops.ss = ss;
  const Layout lay(g, false);
  const int64_t kk = lay.kk, s = g.stride, L = lay.L, pad = g.pad(), cph = g.channels_per_head();
  const int64_t R = plan.input_grad_bands.rows, bands = plan.input_grad_bands.count;

  at::parallel_for(0, g.B * g.G * bands, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> w_buf, go_buf, g_buf, cfv(CB * kk), cm(CB * kk);
    std::vector<int64_t> ry_lo(s), ry_hi(s);
    std::vector<const acc_t*> a(CB * kk), w(kk);
    std::vector<acc_t*> dst(CB);
    for (int64_t t = begin; t < end; ++t) {
      const Task task(t, g.G, bands);
      const int64_t iy0 = task.band * R, iy1 = std::min(g.H, iy0 + R);
      // Rows ry of each row phase pr that fall in the band, and the output rows they read
      // (with one more zero row above, for the shift of column taps wrapping a row back).
      int64_t Y0 = INT64_MAX, Y1 = INT64_MIN, g_plane = 0;
      for (int64_t pr = 0; pr < s; ++pr) {
        ry_lo[pr] = ceil_div(iy0 + pad - pr, s);
        ry_hi[pr] = std::max(ry_lo[pr], ceil_div(iy1 + pad - pr, s));
        Y0 = std::min(Y0, ry_lo[pr] - lay.a_max - 1);
        Y1 = std::max(Y1, ry_hi[pr]);
        g_plane = std::max(g_plane, round_up((ry_hi[pr] - ry_lo[pr]) * L, block));
      }
      const int64_t rows = Y1 - Y0, w_size = rows * L + block, g_size = s * s * g_plane;
      w_buf.assign(kk * w_size, acc_t(0));
      go_buf.assign(CB * w_size, acc_t(0));
      g_buf.resize(CB * g_size);
      for (int64_t tap = 0; tap < kk; ++tap) {
        load_output_rows(w_buf.data() + tap * w_size, sf_ptr + ss.offset(task.b, task.h * kk + tap, 0, 0), ss.h, ss.w, g, Y0, rows, L);
      }
      for_each_channel_block(task.h, cph, [&](int64_t c0, int64_t cb) {
        bool redo[CB] = {};
        for (int64_t k = 0; k < cb; ++k) {
          load_output_rows(go_buf.data() + k * w_size, go_ptr + task.b * gos.n + (c0 + k) * gos.c, gos.h, gos.w, g, Y0, rows, L);
          load_channel_filter(cf_ptr, cs, g, task.b, c0 + k, cfv.data() + k * kk);
        }
        for (int64_t pl = 0; pl < s * s; ++pl) {
          const int64_t pr = pl / s;
          const int64_t start = (ry_lo[pr] - Y0) * L, n = round_up((ry_hi[pr] - ry_lo[pr]) * L, block);
          const auto& taps = lay.plane_taps[pl];
          const int64_t m_taps = static_cast<int64_t>(taps.size());
          for (int64_t k = 0; k < cb; ++k) {
            dst[k] = g_buf.data() + k * g_size + pl * g_plane;
            if (m_taps == 0) std::fill(dst[k], dst[k] + n, acc_t(0));  // no tap reads this phase
          }
          if (m_taps == 0) continue;
          for (int64_t m = 0; m < m_taps; ++m) {
            const int64_t tap = taps[m];
            w[m] = w_buf.data() + tap * w_size + start - lay.shift[tap];
            for (int64_t k = 0; k < cb; ++k) {
              a[k * m_taps + m] = go_buf.data() + k * w_size + start - lay.shift[tap];
              cm[k * m_taps + m] = cfv[k * kk + tap];
            }
          }
          apply_taps_block<M, acc_t>(cb, dst.data(), n, a.data(), w.data(), cm.data(), m_taps);
          for (int64_t k = 0; k < cb; ++k) redo[k] = redo[k] || !all_finite(dst[k], n, 1, n);
        }
        // Input column ix sits in phase plane column (ix + pad) % s at (ix + pad) / s.
        // Input pixel (iy, ix) sits in phase plane ((iy + pad) % s, (ix + pad) % s) at row
        // (iy + pad) / s, column (ix + pad) / s: each plane goes out as one strided block.
        for (int64_t k = 0; k < cb; ++k) {
          for (int64_t pr = 0; pr < s; ++pr) {
            const int64_t iy_first = iy0 + ((pr - (iy0 + pad)) % s + s) % s;
            if (iy_first >= iy1) continue;
            const int64_t rows_out = ceil_div(iy1 - iy_first, s), ry_first = (iy_first + pad) / s;
            for (int64_t pc = 0; pc < s; ++pc) {
              const int64_t ix0 = ((pc - pad) % s + s) % s;
              if (ix0 >= g.W) continue;
              const acc_t* src =
                  g_buf.data() + k * g_size + (pr * s + pc) * g_plane + (ry_first - ry_lo[pr]) * L + (ix0 + pad) / s;
              copy_block(
                  src, L, int64_t(1), gi_ptr + gis.offset(task.b, c0 + k, iy_first, ix0), s * gis.h, s * gis.w, rows_out,
                  ceil_div(g.W - ix0, s));
            }
          }
          if (redo[k]) elementwise::grad_input_rows<M>(ops, gi_ptr, gis, g, task.b, c0 + k, c0 + k + 1, iy0, iy1);
        }
      });
    }
  });
}

// The family's face: operands whose rows are strided go through NCHW copies, as the plan
// says. An undefined gradient is not wanted.
template <Combine M, typename scalar_t>
void backward(const BackwardPlan& plan, const at::Tensor& grad_output, const at::Tensor& input,
              const at::Tensor& channel_filter, const at::Tensor& spatial_filter, at::Tensor& grad_input,
              at::Tensor& grad_channel_filter, at::Tensor& grad_spatial_filter, const Geometry& g) {
  const at::Tensor go = plan.grad_output_to_nchw ? grad_output.contiguous() : grad_output;
  const at::Tensor x = plan.input_to_nchw ? input.contiguous() : input;
  const at::Tensor sf = plan.spatial_filter_to_nchw ? spatial_filter.contiguous() : spatial_filter;
  at::Tensor gi = plan.grad_input_via_nchw ? at::empty(grad_input.sizes(), grad_input.options()) : grad_input;
  at::Tensor gs = plan.grad_spatial_filter_via_nchw
      ? at::empty(grad_spatial_filter.sizes(), grad_spatial_filter.options())
      : grad_spatial_filter;
  if (grad_channel_filter.defined() || gs.defined()) {
    filter_grads_bands<M, scalar_t>(plan, go, x, channel_filter, sf, grad_channel_filter, gs, g);
  }
  if (gi.defined()) input_grad_bands<M, scalar_t>(plan, go, channel_filter, sf, gi, g);
  if (plan.grad_input_via_nchw) grad_input.copy_(gi);
  if (plan.grad_spatial_filter_via_nchw) grad_spatial_filter.copy_(gs);
}

}  // namespace
}  // namespace rows
}  // namespace cpu
}  // namespace ddf
