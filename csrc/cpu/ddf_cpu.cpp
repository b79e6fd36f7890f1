// CPU kernels of ddf and ddf_backward.
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
// dropped; zero where they feed a sum), so the loops of ddf_cpu_taps.h run over flat
// ranges with no edge cases, for any stride, dilation, strides and dtype; and nothing the
// size of the input is ever allocated.
//
// Determinism: every output element is computed by the same sequence of operations
// whatever the bands and threads; the one sum that spans bands (a channel-filter gradient
// sums per-band partials, in band order) uses bands that depend on the shape only. So
// results are bitwise reproducible, across thread counts too.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "../ddf_checks.h"
#include "../ddf_dtype_dispatch.h"
#include "ddf_cpu_copy.h"
#include "ddf_cpu_direct.h"
#include "ddf_cpu_head.h"
#include "ddf_cpu_pixels.h"
#include "ddf_cpu_pixels_backward.h"
#include "ddf_cpu_taps.h"

namespace ddf {
namespace cpu {
namespace {

// Tasks per call to aim for in the filter-gradient pass. A constant, not the thread
// count: its channel-filter gradient sums per-band partials, so its bands must not depend
// on the machine (see the determinism note above).
constexpr int64_t kFilterGradTasks = 16;
// The forward and input-gradient passes compute every element in the same order whatever
// the bands, so they aim for this many tasks per thread instead.
constexpr int64_t kTasksPerThread = 4;
// Bands shorter than this spend too much on the rows they share with their neighbours.
constexpr int64_t kMinBandRows = 8;
// Largest band (elements of one flat buffer) that keeps a task's buffers in L2.
constexpr int64_t kMaxBandElements = 16384;

int64_t band_rows(int64_t rows, int64_t row_len, int64_t planes, int64_t tasks_wanted) {
  const int64_t bands_wanted = ceil_div(tasks_wanted, std::max<int64_t>(planes, 1));
  int64_t r = std::max(ceil_div(rows, bands_wanted), kMinBandRows);
  r = std::min(r, std::max<int64_t>(1, kMaxBandElements / std::max<int64_t>(row_len, 1)));
  return std::max<int64_t>(1, std::min(r, rows));
}

// Per-channel elements of the flat buffers of a one-row band: s*s phase planes of
// (a_max + 2) rows of length L, and k*k spatial-filter rows (see Layout). A double, since a
// hostile stride or kernel size would overflow an int64 here.
double flat_elements_per_row(const Geometry& g) {
  const double s = static_cast<double>(g.stride), reach = static_cast<double>((g.k - 1) * g.dilation / g.stride);
  const double L = std::max(static_cast<double>(g.Wo) + reach, static_cast<double>((g.W - 1 + g.pad()) / g.stride + 1));
  return s * s * (reach + 2) * L + static_cast<double>(g.taps()) * L;
}

// The flat layout (fast) where its buffers stay small: within a fixed budget, or twice what
// one channel of the image and its spatial filter hold. Beyond that (a stride or dilation
// large next to the image) the direct kernels run, with no buffers at all, so memory is
// always proportional to the tensors.
bool use_flat_layout(const Geometry& g) {
  constexpr double kBudget = 1 << 20;
  const double channel = static_cast<double>(g.H) * g.W + static_cast<double>(g.taps()) * g.Ho * g.Wo;
  return flat_elements_per_row(g) <= std::max(kBudget, 2 * channel);
}

int64_t tasks_for_threads() {
  return kTasksPerThread * at::get_num_threads();
}

int64_t round_up(int64_t n, int64_t multiple) {
  return ceil_div(n, multiple) * multiple;
}

// The flat band layout of one call (see the top of this file).
//
// The dense variant (forward, stride 1, "mul"): rows are not padded (L = W), so a band of
// a contiguous image is one contiguous copy and no per-row work is left; the columns a tap
// reads past the row's ends land in the neighbouring row, and the spatial-filter value of
// such a tap is zeroed instead (zero_outside_columns), which "mul" turns into a zero term.
// (With "add" the term would be a * cf; that combine keeps the padded rows.) A non-finite
// neighbour would make 0 * inf there: such results are recomputed (ddf_cpu_direct.h).
struct Layout {
  int64_t s, kk, L, a_max, b_max;
  bool dense = false;
  int64_t margin = 0;                            // dense: zeros before and after a plane
  std::vector<int64_t> plane, shift;            // per tap: its phase plane and flat shift
  std::vector<std::vector<int64_t>> plane_taps;  // per phase plane: the taps that lie in it

  Layout(const Geometry& g, bool allow_dense) : s(g.stride), kk(g.taps()), plane_taps(g.stride * g.stride) {
    const int64_t d = g.dilation;
    a_max = b_max = (g.k - 1) * d / s;
    if (allow_dense && g.stride == 1) {
      dense = true;
      L = g.W;
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
    L = std::max(g.Wo + b_max, (g.W - 1 + g.pad()) / s + 1);
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

// ---------------------------------------------------------------------------------------
// Forward. Tasks: (b, head, band of output rows).

// The forward of the channels [c_begin, c_end) of task's head, band y0 .. y0 + ny, in place
// (see ddf_cpu_head.h): the channels whose reads stay inside the input's storage run there
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
      if (bad[k - c]) direct_forward<Combine::Mul>(ops, out_ptr, os, g, b, k, k + 1, y0, y0 + ny);  // see ddf_cpu_direct.h
    }
    c = e;
  }
}

// The in-place forward's input offsets, [tap][k < kHeadMaxChannels]: k input channels and
// tap t's shift from an output pixel (see HeadOperands in ddf_cpu_head.h).
std::vector<int64_t> head_input_offsets(const Geometry& g, const Strides4& xs) {
  constexpr int64_t K = kHeadMaxChannels;
  const int64_t d = g.dilation, pad = g.pad(), W = g.W;
  std::vector<int64_t> x_off(g.taps() * K);
  for (int64_t i = 0, tap = 0; i < g.k; ++i)
    for (int64_t j = 0; j < g.k; ++j, ++tap)
      for (int64_t k = 0; k < K; ++k) x_off[tap * K + k] = k * xs.c + (i * d - pad) * W + j * d - pad;
  return x_off;
}

// Whether the forward reads the input in place: the dense layout ("mul", stride 1), float32
// or float64 (no conversion), contiguous rows. (And an output with contiguous rows, which
// every output the op allocates for such an input has.)
template <typename scalar_t>
bool forward_reads_in_place(Combine m, const Geometry& g, const Strides4& xs) {
  return m == Combine::Mul && g.stride == 1 && std::is_same_v<scalar_t, typename AccType<scalar_t>::type> &&
      xs.w == 1 && xs.h == g.W;
}

template <typename scalar_t, Combine M>
void forward_kernel(const at::Tensor& input, const at::Tensor& cf, const at::Tensor& sf, at::Tensor& out, const Geometry& g) {
  using acc_t = typename AccType<scalar_t>::type;
  constexpr int64_t block = kBlock<acc_t>, CB = kChannelBlock;
  const Strides4 xs = strides_of(input), cs = strides_of(cf), ss = strides_of(sf), os = strides_of(out);
  const scalar_t* x_ptr = input.const_data_ptr<scalar_t>();
  const scalar_t* cf_ptr = cf.const_data_ptr<scalar_t>();
  const scalar_t* sf_ptr = sf.const_data_ptr<scalar_t>();
  scalar_t* out_ptr = out.mutable_data_ptr<scalar_t>();
  Operands<scalar_t> ops;
  ops.x = x_ptr, ops.xs = xs, ops.cf = cf_ptr, ops.cs = cs, ops.sf = sf_ptr, ops.ss = ss;
  if (!use_flat_layout(g)) return direct_forward_all<M>(ops, out_ptr, os, g);

  const Layout lay(g, M == Combine::Mul);
  const int64_t kk = lay.kk, s = g.stride, L = lay.L, cph = g.channels_per_head();
  const int64_t R = band_rows(g.Ho, L, g.B * g.G, tasks_for_threads()), bands = ceil_div(g.Ho, R);
  const int64_t w_size = R * L + block;
  const int64_t x_plane = lay.dense ? (R + lay.a_max) * L + block + 2 * lay.margin : (R + lay.a_max + 1) * L + block;
  const int64_t x_size = s * s * x_plane;

  // The channels whose reads stay inside the input's storage run in place, with no copies
  // (forward_head_in_place).
  const bool in_place = forward_reads_in_place<scalar_t>(M, g, xs) && os.w == 1 && os.h == g.Wo;
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
            direct_forward<M>(ops, out_ptr, os, g, task.b, c0 + k, c0 + k + 1, y0, y0 + ny);  // see ddf_cpu_direct.h
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

// ---------------------------------------------------------------------------------------
// Backward, filter gradients. Tasks: (b, head, band of output rows), as in the forward.
// grad_sf of the band sums over the channels of the head inside the task; grad_cf sums
// per (b, c, band) partials that are reduced in band order at the end.

template <typename scalar_t, Combine M>
void filter_grads_kernel(
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
  if (!use_flat_layout(g)) return direct_filter_grads_all<M>(ops, gc_ptr, gcs, gs_ptr, gss, g);

  const Layout lay(g, false);
  const int64_t kk = lay.kk, s = g.stride, L = lay.L, cph = g.channels_per_head();
  const int64_t R = band_rows(g.Ho, L, g.B * g.G, kFilterGradTasks), bands = ceil_div(g.Ho, R);
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
        if (!finite) direct_grad_spatial<M>(ops, gs_ptr, gss, g, task.b, task.h, y0, y0 + ny);
      }
    }
  });

  if (want_cf) {
    at::parallel_for(0, g.B * g.C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t bc = begin; bc < end; ++bc) {
        const uint8_t* redo = cf_redo.data() + bc * bands;
        if (std::any_of(redo, redo + bands, [](uint8_t r) { return r != 0; })) {
          direct_grad_channel<M>(ops, gc_ptr, gcs, g, bc / g.C, bc % g.C);
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

// ---------------------------------------------------------------------------------------
// Backward, input gradient (a transposed DDF), gathered: input pixel (iy, ix) lies at
// padded (iy + pad, ix + pad) = (ry*s + pr, rx*s + pc), and the taps (i, j) that read it
// are those of phase plane (pr, pc), from output pixel (ry - i*d/s, rx - j*d/s). So each
// phase plane of the gradient is again one flat loop of apply_taps, over grad_output and
// the spatial filter at the taps' shifts. Tasks: (b, head, band of input rows); every
// element is written by exactly one task.

template <typename scalar_t, Combine M>
void input_grad_kernel(
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
  if (!use_flat_layout(g)) return direct_grad_input_all<M>(ops, gi_ptr, gis, g);

  const Layout lay(g, false);
  const int64_t kk = lay.kk, s = g.stride, L = lay.L, pad = g.pad(), cph = g.channels_per_head();
  const int64_t R = band_rows(g.H, L, g.B * g.G, tasks_for_threads()), bands = ceil_div(g.H, R);

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
          if (redo[k]) direct_grad_input<M>(ops, gi_ptr, gis, g, task.b, c0 + k, c0 + k + 1, iy0, iy1);
        }
      });
    }
  });
}

// ---------------------------------------------------------------------------------------
// NCHW <-> channels_last copies for the channel-vectorized backward on NCHW operands, by the
// in-register transposes of ddf_cpu_copy.h, in parallel over (batch, block of channels):
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

// ---------------------------------------------------------------------------------------
// The op entry points: checks, allocation, dispatch on dtype and combine.

// The kernels read and write rows: along a row of a channels_last tensor (C > 1) every
// element is C apart, and each band copy would gather. Such operands are transposed to
// NCHW first (ATen's blocked transpose), and such results computed in NCHW and copied back:
// two passes over the tensor, about 3x faster than gathering in the band copies.
at::Tensor with_unit_row_stride(const at::Tensor& t) {
  return t.stride(3) == 1 || t.size(3) <= 1 ? t : t.contiguous();
}

at::Tensor nchw_result_for(const at::Tensor& result) {
  return result.stride(3) == 1 || result.size(3) <= 1 ? result : at::empty(result.sizes(), result.options());
}

void copy_back(at::Tensor& result, const at::Tensor& computed) {
  if (!computed.is_same(result)) result.copy_(computed);
}

at::Tensor ddf_cpu(
    const at::Tensor& input,
    const at::Tensor& channel_filter,
    const at::Tensor& spatial_filter,
    int64_t stride,
    int64_t dilation,
    c10::string_view combine) {
  const SymSizes sizes = check_ddf_args(input, channel_filter, spatial_filter, stride, dilation, combine);
  const Geometry g = concrete_geometry(sizes, stride, dilation);
  at::Tensor out = ddf_empty_output(sizes, input);
  if (out.numel() == 0) return out;
  dispatch_dtype_and_combine(input.scalar_type(), parse_combine(combine), [&](auto tag, auto m) {
    using scalar_t = decltype(tag);
    constexpr Combine M = decltype(m)::value;
    if constexpr (std::is_same_v<scalar_t, typename AccType<scalar_t>::type>) {  // float32, float64
      if (use_flat_layout(g) && use_pixel_forward(g, strides_of(input), forward_reads_in_place<scalar_t>(M, g, strides_of(input)))) {
        // Channel-vectorized (ddf_cpu_pixels.h): any layout, read and written in place.
        return pixel_forward<M>(
            input.const_data_ptr<scalar_t>(), strides_of(input), channel_filter.const_data_ptr<scalar_t>(),
            strides_of(channel_filter), spatial_filter.const_data_ptr<scalar_t>(), strides_of(spatial_filter),
            out.mutable_data_ptr<scalar_t>(), strides_of(out), g, tasks_for_threads());
      }
    }
    const at::Tensor x = with_unit_row_stride(input), sf = with_unit_row_stride(spatial_filter);
    at::Tensor result = nchw_result_for(out);
    forward_kernel<scalar_t, M>(x, channel_filter, sf, result, g);
    copy_back(out, result);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ddf_backward_cpu(
    const at::Tensor& grad_output,
    const at::Tensor& input,
    const at::Tensor& channel_filter,
    const at::Tensor& spatial_filter,
    int64_t stride,
    int64_t dilation,
    c10::string_view combine,
    std::array<bool, 3> output_mask) {
  const SymSizes sizes =
      check_ddf_backward_args(grad_output, input, channel_filter, spatial_filter, stride, dilation, combine);
  const Geometry g = concrete_geometry(sizes, stride, dilation);
  auto [grad_in, grad_cf, grad_sf] = ddf_empty_grads(sizes, input, channel_filter, spatial_filter, output_mask);
  if (g.B * g.C * g.Ho * g.Wo == 0) {
    // No output pixel: nothing reaches any input, and a channel filter sums over nothing.
    for (at::Tensor* t : {&grad_in, &grad_cf, &grad_sf}) {
      if (t->defined()) t->zero_();
    }
    return {grad_in, grad_cf, grad_sf};
  }
  dispatch_dtype_and_combine(input.scalar_type(), parse_combine(combine), [&](auto tag, auto m) {
    using scalar_t = decltype(tag);
    constexpr Combine M = decltype(m)::value;
    if constexpr (std::is_same_v<scalar_t, typename AccType<scalar_t>::type>) {  // float32, float64
      const bool in_place = strides_of(input).c == 1 && strides_of(grad_output).c == 1 &&
          (!grad_in.defined() || strides_of(grad_in).c == 1);
      if (use_flat_layout(g) && use_pixel_backward(g, in_place)) {
        // Channel-vectorized (ddf_cpu_pixels_backward.h), on channels_last copies where the
        // operands are NCHW (small maps only, see use_pixel_backward).
        const at::Tensor x = channels_contiguous<scalar_t>(input), go = channels_contiguous<scalar_t>(grad_output);
        at::Tensor gi = !grad_in.defined() || strides_of(grad_in).c == 1
            ? grad_in
            : at::empty(grad_in.sizes(), grad_in.options().memory_format(at::MemoryFormat::ChannelsLast));
        const std::vector<scalar_t> cfT = transposed_channel_filter(channel_filter.const_data_ptr<scalar_t>(),
                                                                    strides_of(channel_filter), g);
        const scalar_t* sf_ptr = spatial_filter.const_data_ptr<scalar_t>();
        if (grad_cf.defined() || grad_sf.defined()) {
          pixel_filter_grads<M>(
              go.const_data_ptr<scalar_t>(), strides_of(go), x.const_data_ptr<scalar_t>(), strides_of(x), cfT, sf_ptr,
              strides_of(spatial_filter), grad_cf.defined() ? grad_cf.mutable_data_ptr<scalar_t>() : nullptr,
              grad_cf.defined() ? strides_of(grad_cf) : Strides4{},
              grad_sf.defined() ? grad_sf.mutable_data_ptr<scalar_t>() : nullptr,
              grad_sf.defined() ? strides_of(grad_sf) : Strides4{}, g, kFilterGradTasks);
        }
        if (grad_in.defined()) {
          pixel_input_grad<M>(
              go.const_data_ptr<scalar_t>(), strides_of(go), cfT, sf_ptr, strides_of(spatial_filter),
              gi.mutable_data_ptr<scalar_t>(), strides_of(gi), g, tasks_for_threads());
          copy_from_channels_contiguous<scalar_t>(grad_in, gi);
        }
        return;
      }
    }
    const at::Tensor go = with_unit_row_stride(grad_output), x = with_unit_row_stride(input),
                     sf = with_unit_row_stride(spatial_filter);
    at::Tensor gi = grad_in.defined() ? nchw_result_for(grad_in) : grad_in;
    at::Tensor gs = grad_sf.defined() ? nchw_result_for(grad_sf) : grad_sf;
    if (grad_cf.defined() || gs.defined()) {
      filter_grads_kernel<scalar_t, M>(go, x, channel_filter, sf, grad_cf, gs, g);
    }
    if (gi.defined()) {
      input_grad_kernel<scalar_t, M>(go, channel_filter, sf, gi, g);
    }
    if (gi.defined()) copy_back(grad_in, gi);
    if (gs.defined()) copy_back(grad_sf, gs);
  });
  return {grad_in, grad_cf, grad_sf};
}

}  // namespace

TORCH_LIBRARY_IMPL(ddf, CPU, m) {
  m.impl("ddf", &ddf_cpu);
  m.impl("ddf_backward", &ddf_backward_cpu);
}

}  // namespace cpu
}  // namespace ddf
