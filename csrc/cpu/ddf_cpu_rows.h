// The innermost loops of the CPU kernels: one output row against all k*k taps.
//
// Every loop here runs over contiguous acc_t rows (the driver in ddf_cpu.cpp converts and
// pads its inputs into such rows), so the compiler vectorizes them. Each function is built
// for several instruction sets (target_clones) and the loader picks the best one for the
// machine, so one library runs everywhere and uses AVX-512/AVX2 where they exist.
//
// Padded row buffers: the driver stores a band of input rows zero padded and split by
// column phase (padded column % stride), so that tap (i, j) of output column x lies at
//   rows.at(j*d % s, row + i*d)[x + j*d / s]
// which is unit stride in x for every stride s (see PaddedRows).
#pragma once

#include <cstdint>
#include <vector>

#include "../ddf_geometry.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(DDF_NO_TARGET_CLONES)
#define DDF_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define DDF_CPU_CLONES
#endif

namespace ddf {
namespace cpu {

// A band of rows, zero padded and split by column phase, in the accumulation type.
template <typename acc_t>
struct PaddedRows {
  std::vector<acc_t> data;
  int64_t rows = 0, phases = 1, len = 0;

  void resize(int64_t rows_, int64_t phases_, int64_t len_) {
    rows = rows_;
    phases = phases_;
    len = len_;
    data.resize(static_cast<size_t>(rows * phases * len));
  }
  void zero() { std::fill(data.begin(), data.end(), acc_t(0)); }
  acc_t* at(int64_t phase, int64_t row) { return data.data() + (phase * rows + row) * len; }
  const acc_t* at(int64_t phase, int64_t row) const { return data.data() + (phase * rows + row) * len; }
};

// Output columns handled together in registers by forward_row.
template <typename acc_t>
constexpr int64_t kRegisterBlock = 256 / sizeof(acc_t);

// Independent partial sums of a row reduction: a fixed lane count (not the vector width of
// the machine) keeps the summation order, and so the result, the same on every run.
template <typename acc_t>
constexpr int64_t kLanes = 64 / sizeof(acc_t);

// out[x] = sum_{i,j} rows(tap i,j)[x] * F(cf[ij], w[ij][x]) for x < n.
//   rows: padded input rows of this band, `row` = buffer row of tap i = 0 for this output row.
//   w[ij]: the spatial-filter row of tap ij; cf[ij]: the channel-filter value of tap ij.
template <Combine M, typename acc_t>
DDF_CPU_CLONES void forward_row(
    acc_t* __restrict out,
    int64_t n,
    const PaddedRows<acc_t>& rows,
    int64_t row,
    const acc_t* const* w,
    const acc_t* cf,
    int64_t k,
    int64_t s,
    int64_t d) {
  constexpr int64_t block = kRegisterBlock<acc_t>;
  for (int64_t x0 = 0; x0 < n; x0 += block) {
    const int64_t nx = n - x0 < block ? n - x0 : block;
    acc_t a[block] = {};
    for (int64_t i = 0; i < k; ++i) {
      for (int64_t j = 0; j < k; ++j) {
        const acc_t* __restrict src = rows.at(j * d % s, row + i * d) + j * d / s + x0;
        const acc_t* __restrict wp = w[i * k + j] + x0;
        const acc_t cv = cf[i * k + j];
        if (nx == block) {
          // A fixed trip count: the accumulators stay in registers across the taps.
          for (int64_t x = 0; x < block; ++x) a[x] += src[x] * combine_filters<M>(cv, wp[x]);
        } else {
          for (int64_t x = 0; x < nx; ++x) a[x] += src[x] * combine_filters<M>(cv, wp[x]);
        }
      }
    }
    for (int64_t x = 0; x < nx; ++x) out[x0 + x] = a[x];
  }
}

// Filter gradients of one output row of one channel:
//   gcf_lanes[ij][lane] += sum_x go[x] * rows(ij)[x] * dF/da(w[ij][x])   (if gcf_lanes)
//   gsf[ij][x]          += go[x] * rows(ij)[x] * dF/db(cf[ij])           (if gsf)
template <Combine M, typename acc_t>
DDF_CPU_CLONES void filter_grads_row(
    const acc_t* __restrict go,
    int64_t n,
    const PaddedRows<acc_t>& rows,
    int64_t row,
    const acc_t* const* w,
    const acc_t* cf,
    acc_t* __restrict gcf_lanes,
    acc_t* const* gsf,
    int64_t k,
    int64_t s,
    int64_t d) {
  constexpr int64_t lanes = kLanes<acc_t>;
  for (int64_t i = 0; i < k; ++i) {
    for (int64_t j = 0; j < k; ++j) {
      const int64_t ij = i * k + j;
      const acc_t* __restrict src = rows.at(j * d % s, row + i * d) + j * d / s;
      if (gcf_lanes != nullptr) {
        const acc_t* __restrict wp = w[ij];
        acc_t* __restrict part = gcf_lanes + ij * lanes;
        int64_t x = 0;
        for (; x + lanes <= n; x += lanes) {
          for (int64_t l = 0; l < lanes; ++l) part[l] += go[x + l] * src[x + l] * dcombine_da<M>(wp[x + l]);
        }
        for (int64_t l = 0; x + l < n; ++l) part[l] += go[x + l] * src[x + l] * dcombine_da<M>(wp[x + l]);
      }
      if (gsf != nullptr) {
        acc_t* __restrict dst = gsf[ij];
        const acc_t f = dcombine_db<M>(cf[ij]);
        for (int64_t x = 0; x < n; ++x) dst[x] += go[x] * src[x] * f;
      }
    }
  }
}

// Input gradient of one output row of one channel, scattered into padded rows:
//   rows(tap i,j)[x] += go[x] * F(cf[ij], w[ij][x]) for taps i in [i_lo, i_hi).
// `row` is the buffer row of tap i = 0 (it may lie outside the buffer; taps outside
// [i_lo, i_hi) are rows another band owns).
template <Combine M, typename acc_t>
DDF_CPU_CLONES void input_grad_row(
    const acc_t* __restrict go,
    int64_t n,
    PaddedRows<acc_t>& rows,
    int64_t row,
    int64_t i_lo,
    int64_t i_hi,
    const acc_t* const* w,
    const acc_t* cf,
    int64_t k,
    int64_t s,
    int64_t d) {
  for (int64_t i = i_lo; i < i_hi; ++i) {
    for (int64_t j = 0; j < k; ++j) {
      acc_t* __restrict dst = rows.at(j * d % s, row + i * d) + j * d / s;
      const acc_t* __restrict wp = w[i * k + j];
      const acc_t cv = cf[i * k + j];
      for (int64_t x = 0; x < n; ++x) dst[x] += go[x] * combine_filters<M>(cv, wp[x]);
    }
  }
}

}  // namespace cpu
}  // namespace ddf
