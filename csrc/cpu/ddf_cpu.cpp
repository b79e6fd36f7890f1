// CPU kernels of ddf and ddf_backward.
//
// Work is split into tasks (batch b, head h, band of rows); a task loops over the channels
// of its head, so the spatial-filter rows of the band (shared by those channels) are read
// once per task. Each channel's band of input rows is copied, zero padded and converted to
// the accumulation type (float, or double for float64), into a small buffer that the row
// loops of ddf_cpu_rows.h read with unit stride. So inputs of any strides and dtypes take
// the same vectorized path, and nothing the size of the input is ever allocated.
//
// Determinism: bands depend on the shape only, never on the thread count, and every sum
// runs in a fixed order inside one task (a channel-filter gradient sums per-band partials
// afterwards, in band order), so results are bitwise reproducible.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../ddf_checks.h"
#include "ddf_cpu_rows.h"

namespace ddf {
namespace cpu {
namespace {

template <typename scalar_t>
struct AccType {
  using type = float;  // float32, float16 and bfloat16 accumulate in float32
};
template <>
struct AccType<double> {
  using type = double;
};

// Aim for bands of about this many elements per row buffer (fits in L1/L2 with the filters).
constexpr int64_t kBandElements = 16384;
// Split each plane into at least this many bands, for parallelism at small batch sizes.
constexpr int64_t kMinBands = 4;

// Rows per band: a function of the shape alone (see the determinism note above).
int64_t band_rows(int64_t rows, int64_t width) {
  const int64_t by_cache = std::max<int64_t>(1, kBandElements / std::max<int64_t>(width, 1));
  return std::max<int64_t>(1, std::min(ceil_div(rows, kMinBands), by_cache));
}

// Length of one phase row of a padded buffer: long enough for every tap of every output
// column (forward and filter gradients) and for every input column (input gradient).
int64_t phase_len(const Geometry& g) {
  const int64_t s = g.stride;
  return std::max(g.Wo + (g.k - 1) * g.dilation / s, (g.W - 1 + g.pad()) / s + 1);
}

template <typename scalar_t, typename acc_t>
void load_row(const scalar_t* src, int64_t stride, int64_t n, acc_t* dst) {
  if (stride == 1) {
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<acc_t>(src[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<acc_t>(src[i * stride]);
  }
}

template <typename scalar_t, typename acc_t>
void store_row(const acc_t* src, int64_t n, scalar_t* dst, int64_t stride) {
  if (stride == 1) {
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<scalar_t>(src[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i * stride] = static_cast<scalar_t>(src[i]);
  }
}

// n contiguous acc_t values of a strided row: the row itself when it already is one,
// otherwise `buf`, filled.
template <typename scalar_t, typename acc_t>
const acc_t* row_as_acc(const scalar_t* src, int64_t stride, int64_t n, acc_t* buf) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    if (stride == 1) return src;
  }
  load_row(src, stride, n, buf);
  return buf;
}

// Fills `rows` from one input plane: buffer row r holds input row row0 + r, and
//   rows.at(ph, r)[q] = X[row0 + r, q*s + ph - pad]   (zero outside the image).
template <typename scalar_t, typename acc_t>
void fill_padded_rows(
    PaddedRows<acc_t>& rows,
    const scalar_t* plane,
    const Strides4& st,
    const Geometry& g,
    int64_t row0) {
  const int64_t s = g.stride, pad = g.pad(), len = rows.len;
  for (int64_t r = 0; r < rows.rows; ++r) {
    const int64_t iy = row0 + r;
    for (int64_t ph = 0; ph < s; ++ph) {
      acc_t* dst = rows.at(ph, r);
      if (iy < 0 || iy >= g.H) {
        std::fill(dst, dst + len, acc_t(0));
        continue;
      }
      // Columns q whose input column q*s + ph - pad lies inside [0, W).
      const int64_t q_lo = std::min(len, std::max<int64_t>(0, ceil_div(pad - ph, s)));
      const int64_t q_hi = std::min(len, std::max(q_lo, ceil_div(g.W + pad - ph, s)));
      std::fill(dst, dst + q_lo, acc_t(0));
      load_row(plane + iy * st.h + (q_lo * s + ph - pad) * st.w, s * st.w, q_hi - q_lo, dst + q_lo);
      std::fill(dst + q_hi, dst + len, acc_t(0));
    }
  }
}

// The spatial-filter rows y in [y0, y0 + ny) of head h of batch b, as acc_t pointers:
// w[(y - y0) * kk + ij]. Converted into `buf` only where the tensor is not already acc_t
// rows of unit stride.
template <typename scalar_t, typename acc_t>
void spatial_filter_rows(
    const scalar_t* sf,
    const Strides4& st,
    const Geometry& g,
    int64_t b,
    int64_t h,
    int64_t y0,
    int64_t ny,
    std::vector<acc_t>& buf,
    std::vector<const acc_t*>& w) {
  const int64_t kk = g.taps();
  buf.resize(static_cast<size_t>(ny * kk * g.Wo));
  w.resize(static_cast<size_t>(ny * kk));
  for (int64_t yy = 0; yy < ny; ++yy) {
    for (int64_t ij = 0; ij < kk; ++ij) {
      const scalar_t* src = sf + st.offset(b, h * kk + ij, y0 + yy, 0);
      w[yy * kk + ij] = row_as_acc(src, st.w, g.Wo, buf.data() + (yy * kk + ij) * g.Wo);
    }
  }
}

template <typename scalar_t, typename acc_t>
void channel_filter_values(const scalar_t* cf, const Strides4& st, const Geometry& g, int64_t b, int64_t c, acc_t* out) {
  for (int64_t i = 0; i < g.k; ++i) {
    for (int64_t j = 0; j < g.k; ++j) out[i * g.k + j] = static_cast<acc_t>(cf[st.offset(b, c, i, j)]);
  }
}

// ---------------------------------------------------------------------------------------
// Forward. Tasks: (b, head, band of output rows).

template <typename scalar_t, Combine M>
void forward_kernel(const at::Tensor& input, const at::Tensor& cf, const at::Tensor& sf, at::Tensor& out, const Geometry& g) {
  using acc_t = typename AccType<scalar_t>::type;
  const Strides4 xs = strides_of(input), cs = strides_of(cf), ss = strides_of(sf), os = strides_of(out);
  const scalar_t* x_ptr = input.const_data_ptr<scalar_t>();
  const scalar_t* cf_ptr = cf.const_data_ptr<scalar_t>();
  const scalar_t* sf_ptr = sf.const_data_ptr<scalar_t>();
  scalar_t* out_ptr = out.mutable_data_ptr<scalar_t>();

  const int64_t kk = g.taps(), s = g.stride, d = g.dilation, cph = g.channels_per_head();
  const int64_t R = band_rows(g.Ho, g.Wo), bands = ceil_div(g.Ho, R), len = phase_len(g);

  at::parallel_for(0, g.B * g.G * bands, 1, [&](int64_t begin, int64_t end) {
    PaddedRows<acc_t> rows;
    std::vector<acc_t> sf_buf, acc(static_cast<size_t>(g.Wo)), cfv(static_cast<size_t>(kk));
    std::vector<const acc_t*> w;
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / (g.G * bands), h = t / bands % g.G, band = t % bands;
      const int64_t y0 = band * R, ny = std::min(R, g.Ho - y0);
      rows.resize((ny - 1) * s + (g.k - 1) * d + 1, s, len);
      spatial_filter_rows(sf_ptr, ss, g, b, h, y0, ny, sf_buf, w);
      for (int64_t c = h * cph; c < (h + 1) * cph; ++c) {
        fill_padded_rows(rows, x_ptr + b * xs.n + c * xs.c, xs, g, y0 * s - g.pad());
        channel_filter_values(cf_ptr, cs, g, b, c, cfv.data());
        for (int64_t yy = 0; yy < ny; ++yy) {
          forward_row<M>(acc.data(), g.Wo, rows, yy * s, w.data() + yy * kk, cfv.data(), g.k, s, d);
          store_row(acc.data(), g.Wo, out_ptr + os.offset(b, c, y0 + yy, 0), os.w);
        }
      }
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
  constexpr int64_t lanes = kLanes<acc_t>;
  const bool want_cf = grad_cf.defined(), want_sf = grad_sf.defined();
  const Strides4 gos = strides_of(grad_out), xs = strides_of(input), cs = strides_of(cf), ss = strides_of(sf);
  const scalar_t* go_ptr = grad_out.const_data_ptr<scalar_t>();
  const scalar_t* x_ptr = input.const_data_ptr<scalar_t>();
  const scalar_t* cf_ptr = cf.const_data_ptr<scalar_t>();
  const scalar_t* sf_ptr = sf.const_data_ptr<scalar_t>();

  const int64_t kk = g.taps(), s = g.stride, d = g.dilation, cph = g.channels_per_head();
  const int64_t R = band_rows(g.Ho, g.Wo), bands = ceil_div(g.Ho, R), len = phase_len(g);
  // grad_cf partial sums: [b][c][band][ij].
  std::vector<acc_t> cf_partial(want_cf ? static_cast<size_t>(g.B * g.C * bands * kk) : 0, acc_t(0));

  at::parallel_for(0, g.B * g.G * bands, 1, [&](int64_t begin, int64_t end) {
    PaddedRows<acc_t> rows;
    std::vector<acc_t> sf_buf, go_buf(static_cast<size_t>(g.Wo)), cfv(static_cast<size_t>(kk));
    std::vector<acc_t> lanes_buf(static_cast<size_t>(kk * lanes)), gsf_buf;
    std::vector<const acc_t*> w;
    std::vector<acc_t*> gsf_rows(static_cast<size_t>(kk));
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / (g.G * bands), h = t / bands % g.G, band = t % bands;
      const int64_t y0 = band * R, ny = std::min(R, g.Ho - y0);
      rows.resize((ny - 1) * s + (g.k - 1) * d + 1, s, len);
      spatial_filter_rows(sf_ptr, ss, g, b, h, y0, ny, sf_buf, w);
      if (want_sf) gsf_buf.assign(static_cast<size_t>(ny * kk * g.Wo), acc_t(0));
      for (int64_t c = h * cph; c < (h + 1) * cph; ++c) {
        fill_padded_rows(rows, x_ptr + b * xs.n + c * xs.c, xs, g, y0 * s - g.pad());
        channel_filter_values(cf_ptr, cs, g, b, c, cfv.data());
        std::fill(lanes_buf.begin(), lanes_buf.end(), acc_t(0));
        for (int64_t yy = 0; yy < ny; ++yy) {
          const acc_t* go = row_as_acc(go_ptr + gos.offset(b, c, y0 + yy, 0), gos.w, g.Wo, go_buf.data());
          for (int64_t ij = 0; ij < kk; ++ij) gsf_rows[ij] = gsf_buf.data() + (yy * kk + ij) * g.Wo;
          filter_grads_row<M>(
              go, g.Wo, rows, yy * s, w.data() + yy * kk, cfv.data(), want_cf ? lanes_buf.data() : nullptr,
              want_sf ? gsf_rows.data() : nullptr, g.k, s, d);
        }
        if (want_cf) {
          acc_t* part = cf_partial.data() + ((b * g.C + c) * bands + band) * kk;
          for (int64_t ij = 0; ij < kk; ++ij) {
            acc_t sum = 0;
            for (int64_t l = 0; l < lanes; ++l) sum += lanes_buf[ij * lanes + l];
            part[ij] = sum;
          }
        }
      }
      if (want_sf) {
        const Strides4 gs = strides_of(grad_sf);
        scalar_t* gs_ptr = grad_sf.mutable_data_ptr<scalar_t>();
        for (int64_t yy = 0; yy < ny; ++yy) {
          for (int64_t ij = 0; ij < kk; ++ij) {
            store_row(gsf_buf.data() + (yy * kk + ij) * g.Wo, g.Wo, gs_ptr + gs.offset(b, h * kk + ij, y0 + yy, 0), gs.w);
          }
        }
      }
    }
  });

  if (want_cf) {
    const Strides4 gcs = strides_of(grad_cf);
    scalar_t* gc_ptr = grad_cf.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, g.B * g.C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t bc = begin; bc < end; ++bc) {
        for (int64_t ij = 0; ij < kk; ++ij) {
          acc_t sum = 0;
          for (int64_t band = 0; band < bands; ++band) sum += cf_partial[(bc * bands + band) * kk + ij];
          gc_ptr[gcs.offset(bc / g.C, bc % g.C, ij / g.k, ij % g.k)] = static_cast<scalar_t>(sum);
        }
      }
    });
  }
}

// ---------------------------------------------------------------------------------------
// Backward, input gradient (a transposed DDF). Tasks: (b, head, band of input rows). Each
// task scatters every output row that reaches its band, but only the taps that land in its
// own rows, into a padded buffer; so no two tasks write the same element.

template <typename scalar_t, Combine M>
void input_grad_kernel(
    const at::Tensor& grad_out,
    const at::Tensor& cf,
    const at::Tensor& sf,
    at::Tensor& grad_in,
    const Geometry& g) {
  using acc_t = typename AccType<scalar_t>::type;
  const Strides4 gos = strides_of(grad_out), cs = strides_of(cf), ss = strides_of(sf), gis = strides_of(grad_in);
  const scalar_t* go_ptr = grad_out.const_data_ptr<scalar_t>();
  const scalar_t* cf_ptr = cf.const_data_ptr<scalar_t>();
  const scalar_t* sf_ptr = sf.const_data_ptr<scalar_t>();
  scalar_t* gi_ptr = grad_in.mutable_data_ptr<scalar_t>();

  const int64_t kk = g.taps(), s = g.stride, d = g.dilation, pad = g.pad(), cph = g.channels_per_head();
  const int64_t R = band_rows(g.H, g.W), bands = ceil_div(g.H, R), len = phase_len(g);

  at::parallel_for(0, g.B * g.G * bands, 1, [&](int64_t begin, int64_t end) {
    PaddedRows<acc_t> rows;
    std::vector<acc_t> sf_buf, go_buf(static_cast<size_t>(g.Wo)), cfv(static_cast<size_t>(kk));
    std::vector<const acc_t*> w;
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / (g.G * bands), h = t / bands % g.G, band = t % bands;
      const int64_t iy0 = band * R, iy1 = std::min(g.H, iy0 + R);
      // Output rows with a tap in [iy0, iy1): iy = y*s + i*d - pad for some i < k.
      const int64_t y_lo = std::max<int64_t>(0, ceil_div(iy0 + pad - (g.k - 1) * d, s));
      const int64_t y_hi = std::min(g.Ho, floor_div(iy1 - 1 + pad, s) + 1);
      rows.resize(iy1 - iy0, s, len);
      if (y_hi > y_lo) spatial_filter_rows(sf_ptr, ss, g, b, h, y_lo, y_hi - y_lo, sf_buf, w);
      for (int64_t c = h * cph; c < (h + 1) * cph; ++c) {
        rows.zero();
        channel_filter_values(cf_ptr, cs, g, b, c, cfv.data());
        for (int64_t y = y_lo; y < y_hi; ++y) {
          const int64_t row = y * s - pad - iy0;  // buffer row of tap i = 0 (may be negative)
          const int64_t i_lo = std::max<int64_t>(0, ceil_div(-row, d));
          const int64_t i_hi = std::min(g.k, ceil_div(rows.rows - row, d));
          const acc_t* go = row_as_acc(go_ptr + gos.offset(b, c, y, 0), gos.w, g.Wo, go_buf.data());
          input_grad_row<M>(go, g.Wo, rows, row, i_lo, i_hi, w.data() + (y - y_lo) * kk, cfv.data(), g.k, s, d);
        }
        // Input column ix sits at phase (ix + pad) % s, column (ix + pad) / s.
        for (int64_t r = 0; r < rows.rows; ++r) {
          scalar_t* dst = gi_ptr + gis.offset(b, c, iy0 + r, 0);
          for (int64_t ph = 0; ph < s; ++ph) {
            const int64_t ix0 = ((ph - pad) % s + s) % s;
            if (ix0 >= g.W) continue;
            store_row(rows.at(ph, r) + (ix0 + pad) / s, ceil_div(g.W - ix0, s), dst + ix0 * gis.w, s * gis.w);
          }
        }
      }
    }
  });
}

// ---------------------------------------------------------------------------------------
// Dispatch on dtype and combine.

template <typename F>
void dispatch(at::ScalarType dtype, Combine combine, F&& f) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "ddf_cpu", [&] {
    if (combine == Combine::Mul) {
      f(scalar_t(), std::integral_constant<Combine, Combine::Mul>());
    } else {
      f(scalar_t(), std::integral_constant<Combine, Combine::Add>());
    }
  });
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
  dispatch(input.scalar_type(), parse_combine(combine), [&](auto tag, auto m) {
    forward_kernel<decltype(tag), decltype(m)::value>(input, channel_filter, spatial_filter, out, g);
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
  dispatch(input.scalar_type(), parse_combine(combine), [&](auto tag, auto m) {
    using scalar_t = decltype(tag);
    constexpr Combine M = decltype(m)::value;
    if (grad_cf.defined() || grad_sf.defined()) {
      filter_grads_kernel<scalar_t, M>(grad_output, input, channel_filter, spatial_filter, grad_cf, grad_sf, g);
    }
    if (grad_in.defined()) {
      input_grad_kernel<scalar_t, M>(grad_output, channel_filter, spatial_filter, grad_in, g);
    }
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
