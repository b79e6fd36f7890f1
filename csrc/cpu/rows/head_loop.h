// The NCHW forward of a run of channels of one head, in place ("mul", stride 1, dense rows).
//
// forward_bands (forward.h) sends a task's channels here when their planes can be read
// where they lie: every tap t reads the input at one flat shift off[t] from the output
// pixel, across row ends (the spatial-filter rows w[t], shared by the head's channels, are
// zero wherever the tap falls outside the image, which "mul" turns into a zero term):
//   out[c*out_cs + p] = sum_t x[c*x_cs + off[t] + p] * (cf[t*cf_ts + c] * w[t][p])
// for c < C and p < n. One call per task keeps the channel loop, the tap pointers and the
// finiteness check of the outputs inside the ISA's code: done per 2-channel block outside
// it, they cost half as much as the taps at 14 x 14 (perf, AVX-512).
//
// Blocks: CB channels x kBlockVecs vectors while whole blocks last; the remainder of the
// row range (less than a block, all of a 7 x 7 map) runs across more channels at once
// (remainder_pass), since a block of one vector and two channels is bound by the latency
// of its two sums (it took as long as a full block).
//
// Reads x[c*x_cs + off[t] + p] and w[t][p] for p < round_up(n, vector) (the caller checks
// that they stay inside the storage); writes out[c*out_cs + p] for p < n only.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "tap_loops.h"

namespace ddf {
namespace cpu {

// Channels of a main block: 4 x 4 accumulators fit AVX-512's 32 registers with the filter
// vectors; AVX2, SSE2 and this code's NEON build keep 2 x 4.
template <Isa I>
constexpr int64_t kHeadChannels = I == Isa::Avx512 ? 4 : 2;

// v with the lanes from m on set to 0 (a bit mask: the dropped lanes may hold NaN).
template <typename V>
DDF_INLINE V first_lanes(const V& v, int64_t m) {
  using acc_t = std::remove_reference_t<decltype(v[0])>;
  using bits_t = std::conditional_t<sizeof(acc_t) == 4, int32_t, int64_t>;
  typedef bits_t B __attribute__((vector_size(sizeof(V))));
  constexpr int64_t lanes = sizeof(V) / sizeof(acc_t);
  B lane;
  for (int64_t l = 0; l < lanes; ++l) lane[l] = bits_t(l);
  B bits;
  __builtin_memcpy(&bits, &v, sizeof(v));
  bits &= lane < bits_t(m);  // (a vector comparison: all ones where true)
  V kept;
  __builtin_memcpy(&kept, &bits, sizeof(v));
  return kept;
}

// The first m < lanes elements of v to dst, in power-of-two pieces of fixed size (a copy of
// variable size became `rep movs`, a quarter of the time at 5 x 5).
template <typename V>
DDF_INLINE void store_first(void* dst, const V& v, int64_t m) {
  using acc_t = std::remove_reference_t<decltype(v[0])>;
  alignas(sizeof(V)) unsigned char part[sizeof(V)];
  __builtin_memcpy(part, &v, sizeof(V));
  unsigned char* out = static_cast<unsigned char*>(dst);
  int64_t done = 0;
  DDF_UNROLL for (int64_t piece = sizeof(V) / 2; piece >= int64_t(sizeof(acc_t)); piece /= 2) {
    if (m * int64_t(sizeof(acc_t)) - done >= piece) {
      __builtin_memcpy(out + done, part + done, piece);  // a constant size, once unrolled
      done += piece;
    }
  }
}

// Channels of a remainder block at most, and the row length of the tables below.
constexpr int64_t kHeadMaxChannels = 8;

// The operands of one call (see the top of this file), laid out for the inner loop's
// addressing: per tap, the channels' values sit at constant displacements. (With x_cs and
// taps as runtime strides inside the loop, GCC kept 16 offsets of the 4 x 4 block in spilled
// registers and reloaded them for every FMA.)
template <typename acc_t>
struct HeadOperands {
  acc_t* out;
  int64_t out_cs;        // output channel stride
  const acc_t* x;        // channel 0's plane, at output pixel 0
  int64_t x_cs;          // input channel stride
  const int64_t* x_off;  // [taps][kHeadMaxChannels]: x_off[t*8 + k] = k*x_cs + (tap t's shift)
  const acc_t* const* w; // [taps] spatial-filter rows
  const acc_t* cf;       // [taps][cf_ts]: channel c's filter at cf[t*cf_ts + c]
  int64_t cf_ts;
  int64_t taps;
};

// CB channels k from c, NV vectors from p0, of which `valid` elements are outputs (the
// lanes after them are computed and dropped). Returns the sum of acc * 0 over the outputs:
// 0 if they are all finite, NaN if not.
template <int64_t CB, int64_t NV, typename acc_t, int64_t Bytes>
DDF_INLINE VecN<acc_t, Bytes> head_block(const HeadOperands<acc_t>& o, int64_t c, int64_t p0, int64_t valid) {
  static_assert(CB <= kHeadMaxChannels, "x_off rows");
  using V = VecN<acc_t, Bytes>;
  constexpr int64_t lanes = Bytes / int64_t(sizeof(acc_t));
  // (Locals: the stores, memcpy underneath, may alias anything, so o's fields would be
  // reloaded after each one.)
  acc_t* const out = o.out + c * o.out_cs + p0;
  const int64_t out_cs = o.out_cs;
  const acc_t* xc = o.x + c * o.x_cs + p0;
  const int64_t* x_off = o.x_off;
  const acc_t* cf = o.cf + c;
  V acc[CB][NV] = {};
  for (int64_t t = 0; t < o.taps; ++t, x_off += kHeadMaxChannels, cf += o.cf_ts) {
    V wv[NV];
    const acc_t* wt = o.w[t] + p0;
    DDF_UNROLL for (int64_t v = 0; v < NV; ++v) wv[v] = load<V>(wt + v * lanes);
    DDF_UNROLL for (int64_t k = 0; k < CB; ++k) {
      const acc_t ct = cf[k];
      const acc_t* xk = xc + x_off[k];
      DDF_UNROLL for (int64_t v = 0; v < NV; ++v) acc[k][v] += load<V>(xk + v * lanes) * (wv[v] * ct);
    }
  }
  V zero[CB * NV];  // acc * 0 of each output vector, summed below as a tree (a chain of 16
                    // dependent additions took a third as long as the taps)
  DDF_UNROLL for (int64_t k = 0; k < CB; ++k) {
    DDF_UNROLL for (int64_t v = 0; v < NV; ++v) {
      acc_t* dst = out + k * out_cs + v * lanes;
      const int64_t m = valid - v * lanes;
      zero[k * NV + v] = V{};
      if (m >= lanes) {
        store(dst, acc[k][v]);
        zero[k * NV + v] = acc[k][v] * acc_t(0);
      } else if (m > 0) {  // the last, partial vector of the range: its first m lanes
        store_first(dst, acc[k][v], m);
        zero[k * NV + v] = first_lanes(acc[k][v] * acc_t(0), m);
      }
    }
  }
  DDF_UNROLL for (int64_t step = 1; step < CB * NV; step *= 2) {
    DDF_UNROLL for (int64_t i = 0; i + step < CB * NV; i += 2 * step) zero[i] += zero[i + step];
  }
  return zero[0];
}

// Marks the CB channels from c in bad[] if check holds a NaN.
template <int64_t CB, typename V>
DDF_INLINE void mark_non_finite(const V& check, int64_t lanes, uint8_t* bad) {
  bool any = false;
  for (int64_t l = 0; l < lanes; ++l) any |= check[l] != check[l];
  if (any) {
    for (int64_t k = 0; k < CB; ++k) bad[k] = 1;
  }
}

// The remainder [p0, p0 + valid) of NV vectors, for channels [0, C): CB channels at a time
// (CB * NV independent sums), then one.
template <int64_t CB, int64_t NV, typename acc_t, int64_t Bytes>
DDF_INLINE void remainder_pass(const HeadOperands<acc_t>& o, int64_t C, int64_t p0, int64_t valid, uint8_t* bad) {
  constexpr int64_t lanes = Bytes / int64_t(sizeof(acc_t));
  int64_t c = 0;
  for (; c + CB <= C; c += CB) mark_non_finite<CB>(head_block<CB, NV, acc_t, Bytes>(o, c, p0, valid), lanes, bad + c);
  for (; c < C; ++c) mark_non_finite<1>(head_block<1, NV, acc_t, Bytes>(o, c, p0, valid), lanes, bad + c);
}

// See the top of this file: channels [0, C), outputs [0, n). bad[c] is set to 1 for each
// channel with a non-finite output (bad[] must come in zeroed): the caller recomputes those
// (see ../elementwise/).
template <int64_t CB, typename acc_t, int64_t Bytes>
DDF_INLINE void forward_head_body(const HeadOperands<acc_t>& o, int64_t C, int64_t n, uint8_t* bad) {
  using V = VecN<acc_t, Bytes>;
  constexpr int64_t lanes = Bytes / int64_t(sizeof(acc_t)), BV = kBlockVecs, block = BV * lanes;
  const int64_t full = n / block * block;
  auto channels = [&](auto cb, int64_t c) {
    constexpr int64_t K = decltype(cb)::value;
    V check = {};
    for (int64_t p0 = 0; p0 < full; p0 += block) check += head_block<K, BV, acc_t, Bytes>(o, c, p0, block);
    mark_non_finite<K>(check, lanes, bad + c);
  };
  if (full > 0) {
    int64_t c = 0;
    for (; c + CB <= C; c += CB) channels(std::integral_constant<int64_t, CB>(), c);
    for (; c < C; ++c) channels(std::integral_constant<int64_t, 1>(), c);
  }
  const int64_t rem = n - full;
  if (rem == 0) return;
  // About 8 independent sums per block, whatever the remainder's length.
  static_assert(kBlockVecs == 4 && kHeadMaxChannels == 8, "one case per remainder length");
  switch ((rem + lanes - 1) / lanes) {
    case 1:
      return remainder_pass<8, 1, acc_t, Bytes>(o, C, full, rem, bad);
    case 2:
      return remainder_pass<4, 2, acc_t, Bytes>(o, C, full, rem, bad);
    case 3:
      return remainder_pass<CB, 3, acc_t, Bytes>(o, C, full, rem, bad);
    default:
      return remainder_pass<CB, 4, acc_t, Bytes>(o, C, full, rem, bad);
  }
}

#define DDF_HEAD_LOOPS(ISA, TARGET)                                                                    \
  template <typename acc_t>                                                                            \
  TARGET void forward_head(IsaTag<ISA>, const HeadOperands<acc_t>& o, int64_t C, int64_t n, uint8_t* bad) { \
    forward_head_body<kHeadChannels<ISA>, acc_t, kIsaBytes<ISA>>(o, C, n, bad);                        \
  }
DDF_FOR_EACH_ISA(DDF_HEAD_LOOPS)
#undef DDF_HEAD_LOOPS

}  // namespace cpu
}  // namespace ddf
