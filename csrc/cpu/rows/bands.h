// The band layout of the row kernels (forward.h, backward.h), and the helpers that fill it.
//
// Flat band layout. Work is split into tasks (batch b, head h, band of rows), and a task
// loops over the channels of its head, so the spatial-filter rows of the band (shared by
// those channels) are loaded once per task. A band of an image is loaded, converted to the
// accumulation type (float, or double for float64), zero padded and split by stride phase
// in both dimensions into s*s "phase planes" of rows of one length L:
//   plane (pr, pc), row t, column u  <-  padded pixel ((y0 + t)*s + pr, u*s + pc)
// (padded = input + pad). Tap (i, j) of output pixel (y0 + t, x) then lies in plane
// ((i*d)%s, (j*d)%s) at flat index (t*L + x) + (i*d/s)*L + (j*d/s): one constant shift per
// tap for the whole band. Columns x in [Wo, L) of a band are padding (computed and
// dropped; zero where they feed a sum), so the loops of tap_loops.h run over flat
// ranges with no edge cases, for any stride, dilation, strides and dtype; and nothing the
// size of the input is ever allocated.
//
// Determinism: every output element is computed by the same sequence of operations
// whatever the bands and threads; the one sum that spans bands (a channel-filter gradient
// sums per-band partials, in band order) uses bands that depend on the shape only. So
// results are bitwise reproducible, across thread counts too.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "../../ddf_geometry.h"
#include "../plan.h"
#include "../vec/copy.h"
#include "tap_loops.h"

namespace ddf {
namespace cpu {
namespace rows {
// Internal linkage: this family's headers are included by ddf_cpu.cpp alone, and GCC inlines
// functions of an unnamed namespace more readily (the baseline-ISA NCHW forward measured 3-8%
// slower with these functions at external linkage).
namespace {

inline int64_t round_up(int64_t n, int64_t multiple) {
  return ceil_div(n, multiple) * multiple;
}

// The band layout of one call (see the top of this file).
//
// The dense variant (forward, stride 1, "mul"): rows are not padded (L = W), so a band of
// a contiguous image is one contiguous copy and no per-row work is left; the columns a tap
// reads past the row's ends land in the neighbouring row, and the spatial-filter value of
// such a tap is zeroed instead (zero_outside_columns), which "mul" turns into a zero term.
// (With "add" the term would be a * cf; that combine keeps the padded rows.) A non-finite
// neighbour would make 0 * inf there: such results are recomputed (../elementwise/).
struct Layout {
  int64_t s, kk, L, a_max, b_max;
  bool dense = false;
  int64_t margin = 0;                            // dense: zeros before and after a plane
  std::vector<int64_t> plane, shift;            // per tap: its phase plane and flat shift
  std::vector<std::vector<int64_t>> plane_taps;  // per phase plane: the taps that lie in it

  // dense: the plan's RowsInPlace and RowsDense paths (stride 1, "mul").
  Layout(const Geometry& g, bool dense_rows) : s(g.stride), kk(g.taps()), plane_taps(g.stride * g.stride) {
    const int64_t d = g.dilation;
    a_max = b_max = (g.k - 1) * d / s;
    if (dense_rows) {
      dense = true;
      L = band_row_length(g, true);
      margin = g.pad();
      for (int64_t i = 0; i < g.k; ++i) {
        for (int64_t j = 0; j < g.k; ++j) {
          plane.push_back(0);
          shift.push_back(margin + i * d * L + j * d - g.pad());
          plane_taps[0].push_back(i * g.k + j);
        }
      }
      return;
    }
    // Long enough for every tap of every output column (with Wo..L-1 as the padding that
    // row wrap-around lands in) and for every input column.
    L = band_row_length(g, false);
    for (int64_t i = 0; i < g.k; ++i) {
      for (int64_t j = 0; j < g.k; ++j) {
        plane.push_back((i * d % s) * s + j * d % s);
        shift.push_back((i * d / s) * L + j * d / s);
        plane_taps[plane.back()].push_back(i * g.k + j);
      }
    }
  }
};

// An output-sized plane (grad_output, or one spatial-filter channel) as flat rows:
//   dst[t*L + x] = plane[row0 + t, x] for 0 <= row0 + t < Ho and x < Wo,
// for t < rows. Everything else in the buffer (padding columns, rows outside the image,
// the slack after the rows) must already be zero: callers zero a buffer once per task and
// then reload only these elements, which sit at the same places for every channel.
template <typename scalar_t, typename acc_t>
void load_output_rows(
    acc_t* dst,
    const scalar_t* plane,
    int64_t stride_h,
    int64_t stride_w,
    const Geometry& g,
    int64_t row0,
    int64_t rows,
    int64_t L) {
  const int64_t y_lo = std::max<int64_t>(row0, 0), y_hi = std::min(row0 + rows, g.Ho);
  if (y_hi <= y_lo) return;
  copy_block(plane + y_lo * stride_h, stride_h, stride_w, dst + (y_lo - row0) * L, L, int64_t(1), y_hi - y_lo, g.Wo);
}

// The s*s phase planes of input rows for output rows y0.. of one channel:
//   dst[(pr*s + pc)*plane_size + t*L + u] = X[(y0 + t)*s + pr - pad, u*s + pc - pad]
// for t < rows, where that pixel lies inside the image. As with load_output_rows, every
// other element must already be zero (it stays zero from channel to channel).
template <typename scalar_t, typename acc_t>
void load_phase_planes(
    acc_t* dst,
    int64_t plane_size,
    const scalar_t* plane,
    const Strides4& st,
    const Geometry& g,
    int64_t y0,
    int64_t rows,
    int64_t L) {
  const int64_t s = g.stride, pad = g.pad();
  for (int64_t pr = 0; pr < s; ++pr) {
    for (int64_t pc = 0; pc < s; ++pc) {
      acc_t* base = dst + (pr * s + pc) * plane_size;
      // Columns u whose input column u*s + pc - pad lies inside [0, W).
      const int64_t u_lo = std::min(L, std::max<int64_t>(0, ceil_div(pad - pc, s)));
      const int64_t u_hi = std::min(L, std::max(u_lo, ceil_div(g.W + pad - pc, s)));
      // Rows t whose input row (y0 + t)*s + pr - pad lies inside [0, H).
      const int64_t t_lo = std::max<int64_t>(0, ceil_div(pad - pr, s) - y0);
      const int64_t t_hi = std::min(rows, ceil_div(g.H + pad - pr, s) - y0);
      if (t_hi <= t_lo || u_hi <= u_lo) continue;
      const int64_t iy = (y0 + t_lo) * s + pr - pad;
      copy_block(
          plane + iy * st.h + (u_lo * s + pc - pad) * st.w, s * st.h, s * st.w, base + t_lo * L + u_lo, L, int64_t(1),
          t_hi - t_lo, u_hi - u_lo);
    }
  }
}

// Asks the cache for rows [row0, row0 + rows) (clipped to [0, nrows)) of a plane while the
// current channel computes: the bands are small, so without this every channel would wait
// on the latency of its first loads (and its output stores) from L3 or memory.
template <typename scalar_t>
void prefetch_rows(const scalar_t* plane, int64_t stride_h, int64_t stride_w, int64_t row0, int64_t rows, int64_t nrows, int64_t cols, bool for_write) {
  if (stride_w != 1) return;  // strided rows: leave it to the hardware
  constexpr int64_t line = 64 / sizeof(scalar_t);
  for (int64_t r = std::max<int64_t>(row0, 0); r < std::min(row0 + rows, nrows); ++r) {
    const scalar_t* row = plane + r * stride_h;
    for (int64_t x = 0; x < cols; x += line) {
      if (for_write) {
        __builtin_prefetch(row + x, 1, 3);
      } else {
        __builtin_prefetch(row + x, 0, 3);
      }
    }
  }
}

// Dense layout (see Layout): rows y0 - pad .. of one channel, unpadded, after the margin:
//   dst[margin + t*W + u] = X[y0 - pad + t, u]  for t < rows where the row is in the image.
template <typename scalar_t, typename acc_t>
void load_dense_rows(acc_t* dst, const scalar_t* plane, const Strides4& st, const Geometry& g, int64_t margin, int64_t y0, int64_t rows) {
  const int64_t first = y0 - g.pad(), lo = std::max<int64_t>(first, 0), hi = std::min(first + rows, g.H);
  if (hi <= lo) return;
  copy_block(plane + lo * st.h, st.h, st.w, dst + margin + (lo - first) * g.W, g.W, int64_t(1), hi - lo, g.W);
}

// Dense layout: zeroes the spatial-filter values of tap (i, j) at the output pixels of the
// band's rows y0 .. y0 + rows where the tap lies outside the image (row length W): left or
// right of it (those reads land in a neighbouring row), and above or below it (zero rows in
// the copied band; other rows or channels when the band is read in place).
template <typename acc_t>
void zero_outside_taps(acc_t* w, const Geometry& g, int64_t i, int64_t j, int64_t y0, int64_t rows) {
  const int64_t off = j * g.dilation - g.pad();  // input column = x + off
  const int64_t left = std::min(g.W, std::max<int64_t>(0, -off)), right = std::max(left, std::min(g.W, g.W - off));
  const int64_t row_off = i * g.dilation - g.pad();  // input row = y + row_off
  for (int64_t t = 0; t < rows; ++t) {
    acc_t* row = w + t * g.W;
    const int64_t iy = y0 + t + row_off;
    if (iy < 0 || iy >= g.H) {
      std::fill(row, row + g.W, acc_t(0));
      continue;
    }
    std::fill(row, row + left, acc_t(0));
    std::fill(row + right, row + g.W, acc_t(0));
  }
}

template <typename scalar_t, typename acc_t>
void load_channel_filter(const scalar_t* cf, const Strides4& st, const Geometry& g, int64_t b, int64_t c, acc_t* out) {
  for (int64_t i = 0; i < g.k; ++i) {
    for (int64_t j = 0; j < g.k; ++j) out[i * g.k + j] = static_cast<acc_t>(cf[st.offset(b, c, i, j)]);
  }
}

template <typename acc_t>
void zero(std::vector<acc_t>& buf) {
  std::fill(buf.begin(), buf.end(), acc_t(0));
}

// Task t of (b, head, band) tasks.
struct Task {
  int64_t b, h, band;
  Task(int64_t t, int64_t heads, int64_t bands) : b(t / (heads * bands)), h(t / bands % heads), band(t % bands) {}
};

// Runs f(c, cb) over the channels of head h in blocks of cb = kChannelBlock channels (the
// last block may be shorter): the blocks depend on the shape only (determinism).
template <typename F>
void for_each_channel_block(int64_t h, int64_t cph, F&& f) {
  for (int64_t c = h * cph; c < (h + 1) * cph; c += kChannelBlock) f(c, std::min(kChannelBlock, (h + 1) * cph - c));
}

// apply_taps / tap_grads for a block of cb channels (cb <= kChannelBlock).
template <Combine M, typename acc_t, typename... Args>
void apply_taps_block(int64_t cb, Args... args) {
  static_assert(kChannelBlock == 2, "one case per block size");
  with_isa([&](auto isa) {
    if (cb == 2) {
      apply_taps<M, 2, acc_t>(isa, args...);
    } else {
      apply_taps<M, 1, acc_t>(isa, args...);
    }
  });
}

template <Combine M, typename acc_t, typename... Args>
void tap_grads_block(int64_t cb, Args... args) {
  with_isa([&](auto isa) {
    if (cb == 2) {
      tap_grads<M, 2, acc_t>(isa, args...);
    } else {
      tap_grads<M, 1, acc_t>(isa, args...);
    }
  });
}

}  // namespace
}  // namespace rows
}  // namespace cpu
}  // namespace ddf
