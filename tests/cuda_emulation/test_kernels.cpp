// The CUDA kernels of csrc/cuda/ddf_cuda_kernels.cuh, run under the host emulator, against a
// float64 reference written straight from the formula (docs/design.md, section 1).
//
// Every result (output, grad_input, grad_channel_filter, grad_spatial_filter) is checked:
//   - in every dtype (float64, float32, float16, bfloat16) with its tolerance;
//   - for k in {1,3,5,7,9}, stride and dilation 1-3, heads {1, 2, C}, both combines;
//   - for odd, even and tiny sizes, and B, C, H or W equal to 0;
//   - for NCHW, channels_last, sliced (results written into views: the rest of their
//     buffers must stay untouched) and stride-0 (expanded filters and grad_output) tensors;
//   - with the normal grid and a shrunk grid (at most 2 blocks per dimension), so that every
//     grid-stride loop takes several steps.
// Results start as NaN, so an element no thread writes fails the comparison.
//
//   test_kernels [--subset | --filter TEXT] [--plans] [--fail-fast]
//        --subset: a small set, for ThreadSanitizer; --filter: the cases whose name contains
//        TEXT; --plans: print each case's tiled plans (lanes, channel steps, tiles);
//        --fail-fast: stop after the first failing case (barriers_needed.cmake)
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "cuda_emulation.h"
// The kernels come after the emulator.
#include "cuda/ddf_cuda_launch.cuh"

namespace {

using ddf::Combine;
using ddf::Geometry;
using ddf::Strides4;

enum class DType { F64, F32, F16, BF16 };
enum class Layout { NCHW, ChannelsLast, Sliced, Expanded, ChannelsLastCropped, ChannelsLastSliced };

const char* dtype_name(DType t) {
  switch (t) {
    case DType::F64: return "float64";
    case DType::F32: return "float32";
    case DType::F16: return "float16";
    default: return "bfloat16";
  }
}
const char* layout_name(Layout l) {
  switch (l) {
    case Layout::NCHW: return "nchw";
    case Layout::ChannelsLast: return "channels_last";
    case Layout::Sliced: return "sliced";
    case Layout::Expanded: return "expanded";
    case Layout::ChannelsLastCropped: return "channels_last-cropped";
    default: return "channels_last-sliced";
  }
}

// Relative tolerance of each dtype against the float64 reference, scaled by the largest
// reference value: float16/bfloat16 round the result once (accumulation is float32).
double tolerance(DType t) {
  switch (t) {
    case DType::F64: return 1e-12;
    case DType::F32: return 2e-5;
    case DType::F16: return 2e-3;
    default: return 1.6e-2;
  }
}

struct Case {
  int64_t B, C, H, W, k, G, stride, dilation;
  Combine combine;
  DType dtype = DType::F64;
  Layout layout = Layout::NCHW;
  bool shrunk_grid = false;
  // grad_channel_filter is one block of 256 threads per (b, c, tap), each with 9 barriers:
  // the slowest kernel to emulate (about 4 ms per tap and channel). Cases that skip it
  // (output_mask false: a null pointer) still check the other three results.
  bool grad_channel = true;
  // grad_input and grad_spatial_filter asked for (output_mask): a pass that is not asked for
  // launches nothing and leaves its result untouched.
  bool grad_input = true, grad_spatial = true;
  // The kernels this case must take (ddf_cuda_tiled_plan.h): Any, or every launch tiled.
  bool expect_tiled = false;
  // Every launch must take the channels_last kernels (ddf_cuda_nhwc_plan.h).
  bool expect_nhwc = false;
  // The spatial filter NCHW whatever the layout (a 1x1 convolution that is not channels_last
  // feeding a channels_last input).
  bool sf_nchw = false;
  // The channel filter contiguous (B, C, k, k) whatever the layout: what pooling and a linear
  // layer give a channels_last network.
  bool cf_nchw = false;
  // The output NCHW whatever the layout: what the op allocates for a view of channels_last
  // input that torch does not call channels_last (a slice along the channels).
  bool out_nchw = false;
  // Plant inf/NaN at taps that fall outside the image (and inside): a non-finite value must
  // reach exactly the results that depend on it, never through a padding zero (0 * inf).
  bool nonfinite = false;
  // The tiled plan aims for one block per (batch, head, tile) instead of its own targets
  // (GridLimits::target_blocks = 1): no head's channels are split, so each block walks all of
  // them in several channel steps, on maps small enough to emulate (under TSan too). The
  // channels_last plan takes it as a wave of one block: each thread gets the most pixels.
  bool whole_heads = false;
  // grad_input stages all k*k spatial-filter planes of its tile: for k = 7 with dilation >= 2
  // they may not fit in 48 KiB, and the generic kernel runs (ddf_cuda_tiled_plan.h).
  bool tiled_grad_input_optional() const { return k == 7 && dilation >= 2; }

  // The results not asked for, as the name shows them: " (no grad_input)" and the like.
  std::string unasked() const {
    return std::string(grad_input ? "" : " (no grad_input)") + (grad_channel ? "" : " (no grad_channel)") +
           (grad_spatial ? "" : " (no grad_spatial)");
  }

  std::string name() const {
    char buf[240];
    std::snprintf(buf, sizeof(buf), "B=%ld C=%ld H=%ld W=%ld k=%ld G=%ld s=%ld d=%ld %s %s %s%s%s%s%s%s%s%s%s", long(B), long(C),
                  long(H), long(W), long(k), long(G), long(stride), long(dilation),
                  combine == Combine::Mul ? "mul" : "add", dtype_name(dtype), layout_name(layout),
                  shrunk_grid ? " shrunk-grid" : "", unasked().c_str(), expect_tiled ? " tiled" : expect_nhwc ? " nhwc" : "",
                  nonfinite ? " non-finite" : "",
                  whole_heads ? " whole-heads" : "", sf_nchw ? " sf-nchw" : "", cf_nchw ? " cf-nchw" : "",
                  out_nchw ? " out-nchw" : "");
    return buf;
  }
};

// A 4-D tensor on the "device": typed storage, a view (offset + strides) into it, and the
// float64 values of the view's elements after rounding to the storage type.
template <typename T>
struct Tensor4 {
  int64_t size[4];
  Strides4 strides;
  int64_t offset = 0;
  std::vector<T> storage;

  T* data() { return storage.data() + offset; }
  const T* data() const { return storage.data() + offset; }
  int64_t numel() const { return size[0] * size[1] * size[2] * size[3]; }
  int64_t index(int64_t a, int64_t b, int64_t c, int64_t d) const { return offset + strides.offset(a, b, c, d); }
};

template <typename T>
T from_double(double v) {
  return ddf::narrow<T>(static_cast<typename ddf::AccType<T>::type>(v));
}
template <typename T>
double to_double(T v) {
  return static_cast<double>(ddf::widen(v));
}

// A tensor of the given shape in a layout; `fill` gives each element's value (the sliced
// layout's unused storage gets a sentinel instead, which must survive every kernel).
// `expand_batch`: the Expanded layout repeats batch 0 with a stride of 0.
template <typename T>
Tensor4<T> make_tensor(const int64_t (&shape)[4], Layout layout, bool expand_batch, std::mt19937_64& rng, bool nan) {
  Tensor4<T> t;
  std::memcpy(t.size, shape, sizeof(shape));
  const int64_t N = shape[0], C = shape[1], H = shape[2], W = shape[3];
  int64_t storage_size = 0;
  switch (layout) {
    case Layout::NCHW:
      t.strides = {C * H * W, H * W, W, 1};
      storage_size = N * C * H * W;
      break;
    case Layout::ChannelsLast:
      t.strides = {H * W * C, 1, W * C, C};
      storage_size = N * C * H * W;
      break;
    case Layout::Sliced: {
      // The view [1:, ::2, 2:2+H, 1::2] of a (N+1, 2C, H+3, 2W+1) buffer.
      const int64_t C2 = 2 * C, H2 = H + 3, W2 = 2 * W + 1;
      t.strides = {C2 * H2 * W2, 2 * H2 * W2, W2, 2};
      t.offset = C2 * H2 * W2 + 2 * W2 + 1;
      storage_size = (N + 1) * C2 * H2 * W2;
      break;
    }
    case Layout::Expanded:
      t.strides = {expand_batch ? 0 : C * H * W, H * W, W, 1};
      storage_size = (expand_batch ? 1 : N) * C * H * W;
      break;
    case Layout::ChannelsLastCropped: {
      // The view [:, :, 1:1+H, 2:2+W] of a channels_last (N, C, H+2, W+3) buffer: channel
      // stride 1, pixel vectors as aligned as C makes them.
      const int64_t H2 = H + 2, W2 = W + 3;
      t.strides = {H2 * W2 * C, 1, W2 * C, C};
      t.offset = (W2 + 2) * C;
      storage_size = N * C * H2 * W2;
      break;
    }
    case Layout::ChannelsLastSliced: {
      // The view [1:, 1:1+C, 2:2+H, 1::2] of a channels_last (N+1, C+3, H+3, 2W+1) buffer:
      // channel stride 1, starting one element into a pixel (misaligned for vectors).
      const int64_t C2 = C + 3, H2 = H + 3, W2 = 2 * W + 1;
      t.strides = {H2 * W2 * C2, 1, W2 * C2, 2 * C2};
      t.offset = H2 * W2 * C2 + 2 * W2 * C2 + C2 + 1;
      storage_size = (N + 1) * C2 * H2 * W2;
      break;
    }
  }
  std::normal_distribution<double> normal;
  const T sentinel = from_double<T>(-1024.0);
  t.storage.assign(static_cast<size_t>(storage_size), sentinel);
  for (int64_t a = 0; a < N; ++a)
    for (int64_t b = 0; b < C; ++b)
      for (int64_t c = 0; c < H; ++c)
        for (int64_t d = 0; d < W; ++d) {
          // Random, never zero (a zero would hide a missing term).
          double v = normal(rng);
          if (std::abs(v) < 0.05) v += v < 0 ? -0.1 : 0.1;
          t.storage[t.index(a, b, c, d)] = from_double<T>(nan ? NAN : v);
        }
  return t;
}

// A result tensor: every element NaN; for the sliced layout, the rest of the buffer holds
// the sentinel -1024.
template <typename T>
Tensor4<T> make_result(const int64_t (&shape)[4], Layout layout, std::mt19937_64& rng) {
  return make_tensor<T>(shape, layout == Layout::Expanded ? Layout::NCHW : layout, false, rng, true);
}

template <typename T>
double value(const Tensor4<T>& t, int64_t a, int64_t b, int64_t c, int64_t d) {
  return to_double(t.storage[t.index(a, b, c, d)]);
}

// The float64 reference, from the formula.
struct Reference {
  std::vector<double> out, gi, gcf, gsf;
};

template <typename T>
Reference reference(const Case& c, const Geometry& g, const Tensor4<T>& x, const Tensor4<T>& cf, const Tensor4<T>& sf,
                    const Tensor4<T>& go) {
  Reference r;
  r.out.assign(g.B * g.C * g.Ho * g.Wo, 0.0);
  r.gi.assign(g.B * g.C * g.H * g.W, 0.0);
  r.gcf.assign(g.B * g.C * g.k * g.k, 0.0);
  r.gsf.assign(g.B * g.G * g.k * g.k * g.Ho * g.Wo, 0.0);
  const int64_t r0 = (g.k - 1) / 2, cph = g.C / g.G;
  for (int64_t b = 0; b < g.B; ++b)
    for (int64_t ch = 0; ch < g.C; ++ch)
      for (int64_t y = 0; y < g.Ho; ++y)
        for (int64_t xo = 0; xo < g.Wo; ++xo)
          for (int64_t i = 0; i < g.k; ++i)
            for (int64_t j = 0; j < g.k; ++j) {
              const int64_t iy = y * c.stride + (i - r0) * c.dilation, ix = xo * c.stride + (j - r0) * c.dilation;
              if (iy < 0 || iy >= g.H || ix < 0 || ix >= g.W) continue;
              const int64_t sfc = ch / cph * g.k * g.k + i * g.k + j;
              const double xv = value(x, b, ch, iy, ix), a = value(cf, b, ch, i, j), s = value(sf, b, sfc, y, xo);
              const double gov = value(go, b, ch, y, xo);
              const bool mul = c.combine == Combine::Mul;
              r.out[((b * g.C + ch) * g.Ho + y) * g.Wo + xo] += xv * (mul ? a * s : a + s);
              r.gi[((b * g.C + ch) * g.H + iy) * g.W + ix] += gov * (mul ? a * s : a + s);
              r.gcf[((b * g.C + ch) * g.k + i) * g.k + j] += gov * xv * (mul ? s : 1.0);
              r.gsf[((b * g.G * g.k * g.k + sfc) * g.Ho + y) * g.Wo + xo] += gov * xv * (mul ? a : 1.0);
            }
  return r;
}

int failures = 0;
bool print_plans = false;  // --plans: print each tiled launch's plan

// The tiled plans of a case, one line per kernel: blocks, lanes, channel steps per block.
void show_plans(const Case& c, const Geometry& g, const ddf::cuda::GridLimits& limits) {
  using namespace ddf::cuda::tiled;
  const char* names[3] = {"forward", "grad_input", "filter_grads"};
  const Kernel kernels[3] = {Kernel::Forward, Kernel::GradInput, Kernel::FilterGrads};
  for (int i = 0; i < 3; ++i) {
    const TiledPlan p = plan_tiled(kernels[i], g, true, true, limits.x, limits.y, limits.target_blocks);
    if (!p.use) continue;
    const int step = int(p.block_z) * p.g.lane_channels;
    std::printf("  %-12s block %ux%ux%u, %u tiles x %u splits x %u, %d channels per step, %d steps (last %d channels), "
                "%zu shared bytes  [%s]\n",
                names[i], p.block_x, p.block_y, p.block_z, p.grid_x, p.grid_y, p.grid_z, step,
                p.g.split_channels / step, p.g.cph - (p.g.splits - 1) * p.g.split_channels - (p.g.split_channels / step - 1) * step,
                p.shared_bytes, c.name().c_str());
  }
}

// Compares a result with the reference (in NCHW order), and checks that the rest of its
// buffer (sliced layout) still holds the sentinel.
template <typename T>
void compare(const Case& c, const char* what, const Tensor4<T>& got, const std::vector<double>& expected) {
  double scale = 1.0;
  for (double v : expected)
    if (std::isfinite(v)) scale = std::max(scale, std::abs(v));
  const double tol = tolerance(c.dtype);
  std::vector<bool> in_view(got.storage.size(), false);
  int64_t n = 0;
  for (int64_t a = 0; a < got.size[0]; ++a)
    for (int64_t b = 0; b < got.size[1]; ++b)
      for (int64_t y = 0; y < got.size[2]; ++y)
        for (int64_t x = 0; x < got.size[3]; ++x, ++n) {
          in_view[got.index(a, b, y, x)] = true;
          const double v = value(got, a, b, y, x), e = expected[n];
          const bool ok = std::isnan(e) ? std::isnan(v) : std::isinf(e) ? v == e : std::abs(v - e) <= tol * scale;
          if (!ok) {
            std::fprintf(stderr, "FAILED %s [%s]: at (%ld,%ld,%ld,%ld) got %.17g expected %.17g\n", what,
                         c.name().c_str(), long(a), long(b), long(y), long(x), v, e);
            ++failures;
            return;
          }
        }
  for (size_t i = 0; i < got.storage.size(); ++i) {
    if (!in_view[i] && to_double(got.storage[i]) != -1024.0) {
      std::fprintf(stderr, "FAILED %s [%s]: wrote storage element %zu outside its view\n", what, c.name().c_str(), i);
      ++failures;
      return;
    }
  }
}

// A case that expects the tiled kernels fails if any of its launches fell back to the generic
// ones (so the tiled tests cannot silently test the generic kernels).
void check_paths(const Case& c, ddf::cuda::Path forward, const ddf::cuda::BackwardPaths& backward) {
  using ddf::cuda::Path;
  if (c.expect_nhwc) {
    const Path paths[3] = {forward, backward.grad_input, backward.filter_grads};
    const char* names[3] = {"forward", "grad_input", "filter gradients"};
    const bool asked[3] = {true, c.grad_input, c.grad_channel || c.grad_spatial};
    for (int i = 0; i < 3; ++i) {
      if (paths[i] != (asked[i] ? Path::TiledNhwc : Path::None)) {
        std::fprintf(stderr, "FAILED [%s]: %s did not run the %s kernels (%s)\n", c.name().c_str(), names[i],
                     asked[i] ? "channels_last" : "no", ddf::cuda::path_name(paths[i]));
        ++failures;
      }
    }
  }
  if (!c.expect_tiled) return;
  const Path paths[3] = {forward, backward.grad_input, backward.filter_grads};
  const char* names[3] = {"forward", "grad_input", "filter gradients"};
  for (int i = 0; i < 3; ++i) {
    if (i == 1 && c.tiled_grad_input_optional()) continue;
    if (paths[i] != Path::Tiled) {
      std::fprintf(stderr, "FAILED [%s]: %s did not run the tiled kernels\n", c.name().c_str(), names[i]);
      ++failures;
    }
  }
}

template <typename T, Combine M>
void run_case(const Case& c) {
  const int64_t Ho = ddf::output_size(c.H, c.stride), Wo = ddf::output_size(c.W, c.stride), kk = c.k * c.k;
  const Geometry g{c.B, c.C, c.H, c.W, c.k, c.G, Ho, Wo, c.stride, c.dilation};
  std::mt19937_64 rng(std::hash<std::string>()(c.name()));
  const bool expanded = c.layout == Layout::Expanded;
  auto x = make_tensor<T>({c.B, c.C, c.H, c.W}, c.layout, false, rng, false);
  auto cf = make_tensor<T>({c.B, c.C, c.k, c.k}, c.cf_nchw ? Layout::NCHW : c.layout, expanded, rng, false);
  auto sf = make_tensor<T>({c.B, c.G * kk, Ho, Wo}, c.sf_nchw ? Layout::NCHW : c.layout, expanded, rng, false);
  // grad_output of out.sum() is an expansion with every stride 0; here the batch is.
  auto go = make_tensor<T>({c.B, c.C, Ho, Wo}, c.layout, expanded, rng, false);
  if (c.nonfinite) {
    // Tap (0, 0) lies outside the image for output pixel (0, 0) (pad > 0).
    const T inf = from_double<T>(INFINITY), nan = from_double<T>(NAN);
    cf.storage[cf.index(0, 0, 0, 0)] = inf;                            // a channel filter value
    sf.storage[sf.index(0, 0, 0, 0)] = nan;                            // spatial filter, outside tap
    // Taps (0, j) of output row 0 fall outside the image too (row -pad); in memory row 0 of
    // tap 1 follows row Ho of tap 0, so a kernel that reads one row past a plane picks it up.
    for (int64_t x0 = 0; x0 < Wo; ++x0) sf.storage[sf.index(0, 1, 0, x0)] = nan;
    sf.storage[sf.index(0, kk - 1, Ho - 1, Wo - 1)] = inf;             // and an inside one
    go.storage[go.index(0, c.C - 1, 0, 0)] = from_double<T>(-INFINITY);  // a border grad_output
    x.storage[x.index(0, 0, c.H - 1, c.W - 1)] = inf;                  // a corner input
  }
  auto out = make_result<T>({c.B, c.C, Ho, Wo}, c.out_nchw ? Layout::NCHW : c.layout, rng);
  auto gi = make_result<T>({c.B, c.C, c.H, c.W}, c.layout, rng);
  auto gcf = make_result<T>({c.B, c.C, c.k, c.k}, c.cf_nchw ? Layout::NCHW : c.layout, rng);
  auto gsf = make_result<T>({c.B, c.G * kk, Ho, Wo}, c.sf_nchw ? Layout::NCHW : c.layout, rng);

  ddf::cuda::GridLimits limits;
  if (c.shrunk_grid) limits = {2, 2};
  if (c.whole_heads) limits.target_blocks = 1;
  if (print_plans) show_plans(c, g, limits);
  std::vector<std::vector<float>> scratch;
  auto workspace = [&](int64_t floats) {
    // NaN-filled: a partial sum the kernels forget to write poisons the result.
    scratch.emplace_back(static_cast<size_t>(floats), NAN);
    return scratch.back().data();
  };
  try {
    const ddf::cuda::Path forward = ddf::cuda::launch_forward<T, M>(
        cuda_emu::Launcher(), limits, x.data(), x.strides, cf.data(), cf.strides, sf.data(), sf.strides, out.data(),
        out.strides, g);
    // The tiled forward is one launch: the emulator saw the static shared bytes the plan
    // budgets for (and checked them, with the dynamic bytes, against 48 KiB).
    if (forward == ddf::cuda::Path::Tiled &&
        cuda_emu::last_launch_static_shared_bytes() != ddf::cuda::tiled::kStaticSharedBytes) {
      std::fprintf(stderr, "FAILED [%s]: the tiled forward declared %zu bytes of static shared memory, the plan budgets %zu\n",
                   c.name().c_str(), cuda_emu::last_launch_static_shared_bytes(), ddf::cuda::tiled::kStaticSharedBytes);
      ++failures;
    }
    const ddf::cuda::BackwardPaths backward = ddf::cuda::launch_backward<T, M>(
        cuda_emu::Launcher(), workspace, limits, go.data(), go.strides, x.data(), x.strides, cf.data(), cf.strides,
        sf.data(), sf.strides, c.grad_input ? gi.data() : nullptr, gi.strides, c.grad_channel ? gcf.data() : nullptr,
        gcf.strides, c.grad_spatial ? gsf.data() : nullptr, gsf.strides, g);
    check_paths(c, forward, backward);
  } catch (const cuda_emu::Fault& e) {
    std::fprintf(stderr, "FAILED [%s]: emulator fault: %s\n", c.name().c_str(), e.what());
    ++failures;
    return;
  }
  const Reference r = reference(c, g, x, cf, sf, go);
  compare(c, "output", out, r.out);
  // A result not asked for stays untouched (NaN).
  auto untouched = [](const std::vector<double>& v) { return std::vector<double>(v.size(), NAN); };
  compare(c, c.grad_input ? "grad_input" : "grad_input (not requested: untouched)", gi, c.grad_input ? r.gi : untouched(r.gi));
  compare(c, c.grad_channel ? "grad_channel_filter" : "grad_channel_filter (not requested: untouched)", gcf,
          c.grad_channel ? r.gcf : untouched(r.gcf));
  compare(c, c.grad_spatial ? "grad_spatial_filter" : "grad_spatial_filter (not requested: untouched)", gsf,
          c.grad_spatial ? r.gsf : untouched(r.gsf));
}

template <typename T>
void run_case_t(const Case& c) {
  if (c.combine == Combine::Mul) {
    run_case<T, Combine::Mul>(c);
  } else {
    run_case<T, Combine::Add>(c);
  }
}

void run(const Case& c) {
  switch (c.dtype) {
    case DType::F64: return run_case_t<double>(c);
    case DType::F32: return run_case_t<float>(c);
    case DType::F16: return run_case_t<__half>(c);
    case DType::BF16: return run_case_t<__nv_bfloat16>(c);
  }
}

// Tiled cases whose blocks take several channel steps (each step's barriers then order one
// step's readers before the next step's staging), with a partial last step (lanes with fewer
// channels, or none), over several tiles, for every lane count (blocks of 1, 2, 4 and 8
// channel lanes) and both strides. ThreadSanitizer runs them all: a race between two steps
// may pass the plain run's thread schedule. Float32 under TSan, every dtype otherwise.
std::vector<Case> channel_step_cases() {
  std::vector<Case> cases = {
      // 1 lane: 16x40 outputs in 4 tiles (2 for the filter gradients: 2 rows per thread),
      // 20 channels in steps of 8, 8, 4.
      {1, 20, 16, 40, 3, 1, 1, 1, Combine::Mul},
      // 2 lanes: 24 channels in steps of 16 and 8 (lane 1 idle in the last step).
      {1, 24, 8, 16, 5, 1, 1, 2, Combine::Add},
      // 4 lanes (8 for the filter gradients: 2 rows per thread): 40 channels, steps of 32, 8.
      {1, 40, 8, 8, 3, 1, 1, 1, Combine::Mul},
      // 8 lanes: 80 channels, steps of 64 and 16 (6 lanes idle in the last step).
      {1, 80, 4, 8, 5, 1, 1, 1, Combine::Add},
      // Stride 2: grad_input over 20x36 inputs in 6 tiles, 12 channels in steps of 8 and 4;
      // two heads and two batches.
      {2, 24, 20, 36, 3, 2, 2, 1, Combine::Mul},
      // k = 7, stride 2, dilation 2: the largest taps; 2 lanes, steps of 16 and 2.
      {1, 18, 9, 14, 7, 1, 2, 2, Combine::Add},
  };
  // Without grad_channel_filter (output_mask) the filter-gradient kernel has no cross-warp
  // barrier at the end of a step: only the barrier at the top of the next step keeps its
  // staging from overwriting tiles that are still being read.
  for (int i : {0, 1}) {
    Case c = cases[i];
    c.grad_channel = false;
    cases.push_back(c);
  }
  for (Case& c : cases) {
    c.dtype = DType::F32;
    c.expect_tiled = true;
    c.whole_heads = true;
  }
  return cases;
}

// The channels_last kernels (ddf_cuda_nhwc_kernels.cuh, ddf_cuda_nhwc_backward_kernels.cuh),
// forward and backward: every k x stride x dilation x heads x combine in float32 (heads of 4
// channels take 16-byte vectors, heads of 1 one channel per thread), then every dtype over
// geometries that reach each part of the plans: several pixels per thread, partial tiles in
// both directions, several channel blocks (heads over several blocks: partial sums of
// grad_spatial_filter; several heads in a block), idle channel lanes, C not a multiple of the
// vector, heads of one channel, views that break the alignment (scalar path) or keep it
// (vector path), an NCHW spatial filter, and the channel filter contiguous (as networks make
// it) or channels_last.
std::vector<Case> nhwc_cases() {
  std::vector<Case> cases;
  for (int64_t k : {3, 5, 7})
    for (int64_t s : {1, 2})
      for (int64_t d : {1, 2})
        for (int64_t G : {1, 2, 8})
          for (Combine m : {Combine::Mul, Combine::Add}) {
            const bool odd = (k + s + d + G) % 2 == 1;
            Case c{2, 8, odd ? 9 : 8, odd ? 11 : 10, k, G, s, d, m, DType::F32, Layout::ChannelsLast};
            c.cf_nchw = true;  // as channels_last networks make it
            cases.push_back(c);
          }
  const Case geometries[] = {
      // 14x14, 16 channels: 4 pixels per thread, 2 tiles of 7 columns (half precision: one
      // tile of 7 pairs of pixels; odd widths below, e.g. 9 and 35, end a tile row in a single).
      {1, 16, 14, 14, 3, 1, 1, 1, Combine::Mul, DType::F32, Layout::ChannelsLast},
      // k = 3, stride 1, dilation 2 in 16 channels: half precision takes its pixels one at a
      // time (the pairs' shared columns need dilation 1).
      {1, 16, 9, 11, 3, 2, 1, 2, Combine::Mul, DType::F32, Layout::ChannelsLast},
      // 136 channels: two channel blocks, the second of one vector (float) or less.
      {1, 136, 5, 6, 3, 2, 1, 1, Combine::Add, DType::F32, Layout::ChannelsLast},
      // 264 channels in one head: three blocks of it (two in 8-channel vectors), the last
      // of 8 channels; grad_spatial_filter as partial sums.
      {1, 264, 5, 6, 3, 1, 1, 1, Combine::Mul, DType::F32, Layout::ChannelsLast},
      // Heads of 24 channels (6 or 3 lanes, not a power of two): 5 heads (float) or 10 in a
      // block, the shuffle tree's segments start mid-power-of-two.
      {1, 240, 5, 4, 3, 10, 2, 1, Combine::Add, DType::F32, Layout::ChannelsLast},
      // 24 channels: idle channel lanes; odd map, several tiles each way, stride 2.
      {2, 24, 21, 19, 5, 3, 2, 1, Combine::Mul, DType::F32, Layout::ChannelsLast},
      // C = 6, 12: not a multiple of the vector (one channel per thread); heads of one channel.
      {1, 6, 9, 7, 3, 1, 1, 2, Combine::Add, DType::F32, Layout::ChannelsLast},
      {1, 12, 7, 9, 3, 12, 2, 1, Combine::Mul, DType::F32, Layout::ChannelsLast},
      // Views: cropped (aligned: vectors) and sliced one channel in (misaligned: scalars).
      {2, 16, 9, 10, 3, 2, 1, 1, Combine::Mul, DType::F32, Layout::ChannelsLastCropped},
      {2, 8, 9, 10, 5, 1, 2, 2, Combine::Add, DType::F32, Layout::ChannelsLastSliced},
      // A 1x35 and a 40x1 map (tiles of one row or column).
      {1, 8, 1, 35, 3, 1, 1, 1, Combine::Mul, DType::F32, Layout::ChannelsLast},
      {1, 8, 40, 1, 7, 2, 1, 1, Combine::Add, DType::F32, Layout::ChannelsLast},
  };
  for (DType t : {DType::F32, DType::F16, DType::BF16})
    for (Case c : geometries) {
      c.dtype = t;
      cases.push_back(c);
    }
  // The spatial filter NCHW, the rest channels_last; a sliced input whose output is NCHW
  // (one channel per thread, stored with the output's strides).
  for (DType t : {DType::F32, DType::BF16}) {
    Case c{2, 16, 7, 9, 3, 2, 1, 1, Combine::Mul, t, Layout::ChannelsLast};
    c.sf_nchw = true;
    cases.push_back(c);
    Case d{2, 8, 9, 10, 3, 2, 1, 1, Combine::Add, t, Layout::ChannelsLastSliced};
    d.out_nchw = true;
    cases.push_back(d);
  }
  // The backward without grad_input, and with grad_input alone (output_mask): each pass runs
  // alone, the other's results stay untouched.
  for (DType t : {DType::F32, DType::F16}) {
    for (bool input : {false, true}) {
      Case c{2, 16, 9, 11, 3, 2, 1, 1, Combine::Mul, t, Layout::ChannelsLast};
      c.grad_input = input;
      c.grad_channel = c.grad_spatial = !input;
      cases.push_back(c);
    }
  }
  // Each again with a wave of one block: the plan then gives each thread the most steps
  // (kMaxStepsPerThread) instead of the fewest a small map needs; and with the other
  // channel-filter layout (the block stages a contiguous one as one run).
  const size_t n = cases.size();
  for (size_t i = 0; i < n; ++i) {
    Case c = cases[i];
    c.whole_heads = true;
    c.cf_nchw = !c.cf_nchw;
    cases.push_back(c);
  }
  for (Case& c : cases) c.expect_nhwc = true;
  return cases;
}

std::vector<Case> all_cases(bool subset) {
  std::vector<Case> cases;
  const std::vector<Case> step_cases = channel_step_cases();
  const Combine combines[] = {Combine::Mul, Combine::Add};
  const DType dtypes[] = {DType::F64, DType::F32, DType::F16, DType::BF16};
  const Layout layouts[] = {Layout::NCHW, Layout::ChannelsLast, Layout::Sliced, Layout::Expanded};
  if (subset) {
    // A few launches of every kernel, shrunk grids included: enough for TSan to see every
    // barrier and every shared-memory access pattern.
    cases.push_back({2, 4, 9, 10, 3, 2, 1, 1, Combine::Mul});
    cases.push_back({1, 3, 7, 6, 5, 3, 2, 2, Combine::Add, DType::F32, Layout::ChannelsLast});
    cases.push_back({2, 2, 11, 40, 3, 1, 1, 2, Combine::Mul, DType::F16, Layout::Sliced, true});
    cases.push_back({1, 2, 5, 70, 1, 2, 2, 1, Combine::Add, DType::BF16, Layout::Expanded, true});
    // The tiled kernels with several channel steps per block, and lanes: TSan sees the
    // barriers between steps, lanes and warps.
    cases.insert(cases.end(), step_cases.begin(), step_cases.end());
    // The channels_last kernels: vectors (two channel blocks, idle lanes) and scalars (the
    // 240- and 264-channel cases add no barrier or shared-memory pattern: left to the plain
    // and ASan runs).
    for (const Case& c : nhwc_cases())
      if ((c.C >= 24 && c.C <= 136) || c.layout == Layout::ChannelsLastSliced) cases.push_back(c);
    return cases;
  }
  // Every (k, stride, dilation, heads, combine) in float64 NCHW, at an odd and an even size;
  // grad_channel_filter for every k up to 5, and for 7 and 9 with 2 heads.
  const int64_t C = 4;
  for (int64_t k : {1, 3, 5, 7, 9})
    for (int64_t s : {1, 2, 3})
      for (int64_t d : {1, 2, 3})
        for (int64_t G : {int64_t(1), int64_t(2), C})
          for (Combine m : combines) {
            const bool odd = (k + s + d + G) % 2 == 1;
            Case c{1, C, odd ? 7 : 8, odd ? 9 : 6, k, G, s, d, m};
            c.grad_channel = k <= 5 || G == 2;
            cases.push_back(c);
          }
  // The tiled fast path: every k in {3,5,7} x stride {1,2} x dilation 1-3 x heads x combine,
  // float32 NCHW, with two batches; each case must run only tiled kernels.
  for (int64_t k : {3, 5, 7})
    for (int64_t s : {1, 2})
      for (int64_t d : {1, 2, 3})
        for (int64_t G : {int64_t(1), int64_t(2), C})
          for (Combine m : combines) {
            const bool odd = (k + s + d + G) % 2 == 1;
            Case c{2, C, odd ? 9 : 8, odd ? 11 : 10, k, G, s, d, m, DType::F32};
            c.expect_tiled = true;
            cases.push_back(c);
          }
  // Tiled, in every half dtype, and over maps that need several tiles (both directions),
  // channel splits with a last partial step (C/G not a multiple of the lanes), 7x7 and 14x14
  // maps, and halos large enough to shrink the block.
  const Case tiled_geometries[] = {
      {1, 40, 14, 14, 3, 1, 1, 1, Combine::Mul}, {2, 24, 7, 7, 3, 2, 1, 1, Combine::Add},
      {1, 6, 37, 70, 3, 1, 2, 1, Combine::Mul},  {1, 3, 20, 33, 7, 1, 2, 3, Combine::Add},
      {1, 5, 9, 45, 5, 1, 1, 2, Combine::Mul},   {1, 2, 12, 12, 7, 2, 1, 5, Combine::Mul},
      {3, 10, 5, 6, 3, 5, 2, 1, Combine::Add},   {1, 12, 70, 3, 3, 3, 1, 1, Combine::Mul},
      // The forward's 39x39 halo of 8 channels once took exactly 49,152 bytes of dynamic
      // shared memory: with the kernel's 32 static bytes, a launch a GPU refuses.
      {1, 8, 28, 28, 3, 1, 2, 4, Combine::Mul},
  };
  for (DType t : {DType::F32, DType::F16, DType::BF16})
    for (Case c : tiled_geometries) {
      c.dtype = t;
      c.expect_tiled = true;
      cases.push_back(c);
    }
  // Several channel steps per block, in every tiled dtype.
  for (DType t : {DType::F32, DType::F16, DType::BF16})
    for (Case c : step_cases) {
      c.dtype = t;
      cases.push_back(c);
    }
  const std::vector<Case> nhwc = nhwc_cases();
  cases.insert(cases.end(), nhwc.begin(), nhwc.end());
  // Non-finite values, on the tiled and the generic kernels.
  for (int64_t k : {3, 5})
    for (int64_t s : {1, 2})
      for (Combine m : combines)
        for (DType t : {DType::F32, DType::F64}) {
          Case c{2, 4, 9, 11, k, 2, s, 1 + k % 2, m, t};
          c.nonfinite = true;
          c.expect_tiled = t == DType::F32;
          cases.push_back(c);
        }
  // And on the channels_last forward (vectors; heads of 4 channels).
  for (int64_t s : {1, 2})
    for (Combine m : combines) {
      Case c{2, 8, 9, 11, 3, 2, s, 1, m, DType::F32, Layout::ChannelsLast};
      c.nonfinite = true;
      c.expect_nhwc = true;
      cases.push_back(c);
    }
  // Tiny sizes (smaller than the kernel), every k.
  for (int64_t k : {1, 3, 5, 7, 9})
    for (auto [H, W] : {std::pair<int64_t, int64_t>{1, 1}, {2, 3}, {3, 2}})
      cases.push_back({1, 2, H, W, k, 2, 1 + k % 3, 1 + k % 2, k % 4 == 1 ? Combine::Mul : Combine::Add});
  // Every dtype x layout, over a few geometries.
  const Case geometries[] = {
      {2, 4, 7, 9, 3, 1, 1, 1, Combine::Mul}, {1, 6, 8, 5, 5, 3, 2, 2, Combine::Add},
      {1, 2, 9, 8, 7, 2, 3, 1, Combine::Mul}, {1, 2, 6, 11, 9, 2, 2, 3, Combine::Add},
      {1, 3, 5, 4, 1, 3, 1, 1, Combine::Add},
  };
  for (DType t : dtypes)
    for (Layout l : layouts)
      for (Case c : geometries) {
        c.dtype = t;
        c.layout = l;
        cases.push_back(c);
      }
  // Empty dimensions.
  for (auto [B, Cz, H, W] : {std::tuple<int64_t, int64_t, int64_t, int64_t>{0, 4, 5, 5}, {2, 0, 5, 5}, {2, 4, 0, 5},
                             {2, 4, 5, 0}})
    for (Layout l : {Layout::NCHW, Layout::ChannelsLast})
      cases.push_back({B, Cz, H, W, 3, Cz == 0 ? 1 : 2, 2, 1, Combine::Mul, DType::F32, l});
  // Shrunk grids on maps large enough for several grid-stride steps in x and y.
  for (DType t : {DType::F64, DType::F32, DType::BF16})
    for (Layout l : layouts)
      for (Case c : {Case{2, 3, 13, 75, 3, 1, 1, 1, Combine::Mul}, Case{1, 4, 21, 140, 5, 2, 2, 2, Combine::Add}}) {
        c.dtype = t;
        c.layout = l;
        c.shrunk_grid = true;
        cases.push_back(c);
      }
  return cases;
}

// The plan never asks for more dynamic shared memory than 48 KiB less the tiled kernels'
// static bytes, over k, stride, dilation, map sizes and channel counts (the largest requests
// sit at the budget's edge: large dilations shrink the block step by step).
void check_shared_budget() {
  using namespace ddf::cuda::tiled;
  static_assert(kMaxDynamicSharedBytes + kStaticSharedBytes == 48 * 1024, "the budget is 48 KiB in all");
  std::size_t largest = 0;
  int planned = 0;
  for (Kernel kernel : {Kernel::Forward, Kernel::GradInput, Kernel::FilterGrads})
    for (int64_t k : {3, 5, 7})
      for (int64_t s : {1, 2})
        for (int64_t d = 1; d <= 16; ++d)
          for (int64_t size : {7, 14, 28, 56, 57, 112})
            for (int64_t C : {1, 8, 64}) {
              const Geometry g{2, C, size, size, k, 1, ddf::output_size(size, s), ddf::output_size(size, s), s, d};
              const TiledPlan p = plan_tiled(kernel, g, true, true, int64_t(1) << 30, 65535);
              if (!p.use) continue;
              ++planned;
              largest = std::max(largest, p.shared_bytes);
              if (p.shared_bytes > kMaxDynamicSharedBytes) {
                std::fprintf(stderr, "FAILED shared memory budget: k=%ld s=%ld d=%ld %ldx%ld C=%ld: %zu dynamic bytes > %zu\n",
                             long(k), long(s), long(d), long(size), long(size), long(C), p.shared_bytes,
                             kMaxDynamicSharedBytes);
                ++failures;
              }
            }
  // The call of issue 18: 8 channels of a 39x39 halo used to ask for exactly 49,152 bytes.
  const Geometry g{1, 8, 28, 28, 3, 1, 14, 14, 2, 4};
  const TiledPlan p = plan_tiled(Kernel::Forward, g, true, true, int64_t(1) << 30, 65535);
  if (!p.use || p.g.halo_h != 39 || p.g.halo_w != 39 || p.shared_bytes + kStaticSharedBytes > 48 * 1024) {
    std::fprintf(stderr, "FAILED shared memory budget: forward k=3 s=2 d=4 28x28: use=%d halo %dx%d, %zu dynamic bytes\n",
                 int(p.use), p.g.halo_h, p.g.halo_w, p.shared_bytes);
    ++failures;
  }
  std::printf("shared memory budget: %d plans, largest dynamic request %zu of %zu bytes\n", planned, largest,
              kMaxDynamicSharedBytes);
}

}  // namespace

int main(int argc, char** argv) {
  bool subset = false, fail_fast = false;
  const char* filter = nullptr;  // only the cases whose name contains it (for debugging)
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--subset") == 0) {
      subset = true;
    } else if (std::strcmp(argv[i], "--filter") == 0 && i + 1 < argc) {
      filter = argv[++i];
    } else if (std::strcmp(argv[i], "--plans") == 0) {
      print_plans = true;
    } else if (std::strcmp(argv[i], "--fail-fast") == 0) {
      fail_fast = true;
    } else {
      std::fprintf(stderr, "test_kernels: unknown argument %s\n", argv[i]);
      return 2;
    }
  }
  std::vector<Case> cases = all_cases(subset);
  if (filter != nullptr)
    cases.erase(std::remove_if(cases.begin(), cases.end(),
                               [&](const Case& c) { return c.name().find(filter) == std::string::npos; }),
                cases.end());
  // Fail-fast runs (barriers_needed.cmake: one per __syncthreads, 11 today) want their first
  // failure soon, and 9 of the 11 barriers are in the tiled kernels: the tiled cases first
  // (1.7 s of the run's 8.6; in the listed order the faults were found after 6-11 s each).
  if (fail_fast)
    std::stable_partition(cases.begin(), cases.end(), [](const Case& c) { return c.expect_tiled; });
  if (filter == nullptr) check_shared_budget();
  for (const Case& c : cases) {
    run(c);
    if (fail_fast && failures > 0) break;
  }
  if (failures == 0) {
    std::printf("test_kernels: %zu cases (4 results each) passed\n", cases.size());
    return 0;
  }
  std::printf("test_kernels: %d failures in %zu cases\n", failures, cases.size());
  return 1;
}
