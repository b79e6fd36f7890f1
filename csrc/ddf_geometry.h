// Index math of the DDF op, shared by the CPU and CUDA kernels (host and device).
//
// Semantics (docs/design.md, section 1):
//   out[b,c,y,x] = sum_{i,j<k} X[b, c, y*s + (i-r)*d, x*s + (j-r)*d]
//                              * F(cf[b,c,i,j], sf[b, g(c)*k*k + i*k + j, y, x])
// with X zero outside the image, r = (k-1)/2, g(c) = c / (C/G), F = mul or add.
//
// Everything here is plain integer arithmetic on int64_t, so tensors with more than
// 2^31 elements index correctly on both devices.
#pragma once

#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define DDF_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define DDF_HOST_DEVICE inline
#endif

namespace ddf {

// How a channel-filter value a and a spatial-filter value b make one filter tap.
enum class Combine : int { Mul = 0, Add = 1 };

template <Combine M, typename T>
DDF_HOST_DEVICE T combine_filters(T a, T b) {
  return M == Combine::Mul ? a * b : a + b;
}

// d F(a, b) / d a, given b: the factor a channel-filter gradient picks up.
template <Combine M, typename T>
DDF_HOST_DEVICE T dcombine_da(T b) {
  return M == Combine::Mul ? b : T(1);
}

// d F(a, b) / d b, given a: the factor a spatial-filter gradient picks up.
template <Combine M, typename T>
DDF_HOST_DEVICE T dcombine_db(T a) {
  return M == Combine::Mul ? a : T(1);
}

// floor(a / b) for b > 0 and any sign of a (C++ division truncates toward zero).
DDF_HOST_DEVICE int64_t floor_div(int64_t a, int64_t b) {
  const int64_t q = a / b;
  return (a % b != 0 && a < 0) ? q - 1 : q;
}

DDF_HOST_DEVICE int64_t ceil_div(int64_t a, int64_t b) {
  return -floor_div(-a, b);
}

// Output size of one spatial dimension: ceil(n / s) == (n - 1) // s + 1 for n >= 1, and 0
// for n == 0. This is what nn.Conv2d(padding=d*(k-1)//2, stride=s) gives for odd k.
DDF_HOST_DEVICE int64_t output_size(int64_t n, int64_t stride) {
  return (n + stride - 1) / stride;
}

// Sizes and hyper-parameters of one call. Filled in on the host after the argument checks.
struct Geometry {
  int64_t B, C, H, W;  // input (B, C, H, W)
  int64_t k;           // kernel size (odd)
  int64_t G;           // heads; the spatial filter has G*k*k channels
  int64_t Ho, Wo;      // output spatial size
  int64_t stride, dilation;

  DDF_HOST_DEVICE int64_t taps() const { return k * k; }
  DDF_HOST_DEVICE int64_t pad() const { return (k - 1) / 2 * dilation; }
  DDF_HOST_DEVICE int64_t channels_per_head() const { return C / G; }
  DDF_HOST_DEVICE int64_t head_of(int64_t c) const { return c / (C / G); }
  // Spatial-filter channel of tap (i, j) for channel c.
  DDF_HOST_DEVICE int64_t sf_channel(int64_t c, int64_t i, int64_t j) const {
    return head_of(c) * k * k + i * k + j;
  }
  // Input coordinate that tap t of output coordinate o reads (may lie outside the image).
  DDF_HOST_DEVICE int64_t input_coord(int64_t o, int64_t t) const {
    return o * stride + t * dilation - pad();
  }
  // The taps t in [lo, hi) are those whose input coordinate input_coord(o, t) lies in
  // [0, n): an interval, so loops visit only taps inside the image, and a kernel far larger
  // than the image costs nothing.
  DDF_HOST_DEVICE void inside_taps(int64_t o, int64_t n, int64_t& lo, int64_t& hi) const {
    const int64_t base = o * stride - pad();  // input coordinate of tap 0
    lo = base >= 0 ? 0 : ceil_div(-base, dilation);
    const int64_t last = base >= n ? -1 : floor_div(n - 1 - base, dilation);
    hi = last + 1 < k ? last + 1 : k;
  }
  // The taps t in [lo, hi) may read input coordinate n from some output coordinate in
  // [0, out_size) (output_coord still checks the stride's parity): again an interval.
  DDF_HOST_DEVICE void reaching_taps(int64_t n, int64_t out_size, int64_t& lo, int64_t& hi) const {
    const int64_t top = n + pad();                        // t*d <= top (output coordinate >= 0)
    const int64_t low = top - (out_size - 1) * stride;    // t*d >= low (output coordinate < out_size)
    lo = low <= 0 ? 0 : ceil_div(low, dilation);
    const int64_t last = top < 0 ? -1 : top / dilation;
    hi = last + 1 < k ? last + 1 : k;
  }
  // The output coordinate whose tap t reads input coordinate n, or -1 if there is none
  // (the transpose of input_coord, used by the gradient with respect to the input).
  DDF_HOST_DEVICE int64_t output_coord(int64_t n, int64_t t, int64_t out_size) const {
    const int64_t p = n + pad() - t * dilation;
    if (p < 0 || p % stride != 0) return -1;
    const int64_t o = p / stride;
    return o < out_size ? o : -1;
  }
};

// Element strides of a 4-D tensor. Any strides are allowed: channels_last, slices and
// expanded (stride 0) dimensions all index correctly.
struct Strides4 {
  int64_t n, c, h, w;
  DDF_HOST_DEVICE int64_t offset(int64_t i0, int64_t i1, int64_t i2, int64_t i3) const {
    return i0 * n + i1 * c + i2 * h + i3 * w;
  }
};

}  // namespace ddf
