#include "plan.h"

#include <algorithm>
#include <sstream>

namespace ddf {
namespace cpu {
namespace {

int64_t tasks_for_threads(const CallInfo& call) {
  return kTasksPerThread * call.threads;
}

// Rows of a row band: about tasks_wanted tasks over the (b, head) planes, at least
// kMinBandRows, at most what keeps a flat buffer of row_len-long rows within kMaxBandElements.
Bands row_bands(int64_t rows, int64_t row_len, int64_t planes, int64_t tasks_wanted) {
  const int64_t bands_wanted = ceil_div(tasks_wanted, std::max<int64_t>(planes, 1));
  int64_t r = std::max(ceil_div(rows, bands_wanted), kMinBandRows);
  r = std::min(r, std::max<int64_t>(1, kMaxBandElements / std::max<int64_t>(row_len, 1)));
  r = std::max<int64_t>(1, std::min(r, rows));
  return {r, ceil_div(rows, r)};
}

// Bands of the channel kernels: about tasks_wanted tasks over the (b, head) planes.
Bands channel_bands(int64_t rows, const Geometry& g, int64_t tasks_wanted) {
  const int64_t r = std::max<int64_t>(1, ceil_div(rows, ceil_div(tasks_wanted, g.B * g.G)));
  return {r, ceil_div(rows, r)};
}

// Per-channel elements of the row kernels' buffers for a one-row band: s*s phase planes of
// (a_max + 2) rows of length L, and k*k spatial-filter rows. A double, since a hostile
// stride or kernel size would overflow an int64 here.
double band_elements_per_row(const Geometry& g) {
  const double s = static_cast<double>(g.stride), reach = static_cast<double>((g.k - 1) * g.dilation / g.stride);
  const double L = std::max(static_cast<double>(g.Wo) + reach, static_cast<double>((g.W - 1 + g.pad()) / g.stride + 1));
  return s * s * (reach + 2) * L + static_cast<double>(g.taps()) * L;
}

// Whether the band kernels' buffers stay small (see kMaxBandBufferElements); if not, the
// elementwise kernels run.
bool bands_fit(const Geometry& g) {
  const double channel = static_cast<double>(g.H) * g.W + static_cast<double>(g.taps()) * g.Ho * g.Wo;
  return band_elements_per_row(g) <= std::max(kMaxBandBufferElements, 2 * channel);
}

// Whether a tensor's rows are strided (channels_last with C > 1): the row kernels get an
// NCHW copy of it.
bool rows_strided(const Strides4& st, int64_t width) {
  return st.w != 1 && width > 1;
}

// Whether the stride-1 "mul" row forward reads these input strides in place: contiguous
// rows of a float32/float64 tensor (no conversion).
bool rows_read_in_place(const CallInfo& call, const Strides4& xs) {
  const Geometry& g = call.g;
  return call.combine == Combine::Mul && g.stride == 1 && call.exact && xs.w == 1 && xs.h == g.W;
}

// Whether the channel-vectorized forward takes the call: heads wide enough, and an input
// whose channels are contiguous, or a small NCHW map (whose one output row's input band
// fits the transposed-band budget).
bool channels_forward(const CallInfo& call, const Strides4& xs) {
  const Geometry& g = call.g;
  if (!call.exact || !bands_fit(g) || g.channels_per_head() < kMinChannelsPerHead) return false;
  if (xs.c == 1) return true;
  const double in_rows = static_cast<double>(g.k - 1) * g.dilation + g.stride + 1;  // one output row's input
  const int64_t max_map = rows_read_in_place(call, xs) ? kChannelsMaxNchwMapRowsInPlace : kChannelsMaxNchwMap;
  return static_cast<double>(g.Ho) * g.Wo <= max_map && in_rows * g.W * g.channels_per_head() * 8 <= kMaxTransposedBandBytes;
}

// Band rows of the channel-vectorized forward: as many tasks as the threads want, at least
// kMinTransposedBandRows rows for a transposed input, and transposed bands within
// kMaxTransposedBandBytes.
Bands channels_forward_bands(const CallInfo& call, bool input_in_place, bool output_in_place, int64_t pixel_stride) {
  const Geometry& g = call.g;
  const int64_t s = g.stride, d = g.dilation;
  int64_t R = channel_bands(g.Ho, g, tasks_for_threads(call)).rows;
  if (!input_in_place) {
    R = std::max(R, std::min<int64_t>(g.Ho, kMinTransposedBandRows));
    const int64_t row_bytes = g.W * pixel_stride * call.element_size;
    const int64_t max_in_rows = std::max<int64_t>(kMaxTransposedBandBytes / row_bytes, (g.k - 1) * d + 1);
    R = std::max<int64_t>(1, std::min(R, (max_in_rows - (g.k - 1) * d - 1) / s + 1));
  }
  if (!output_in_place) {
    R = std::max<int64_t>(1, std::min(R, kMaxTransposedBandBytes / (g.Wo * pixel_stride * call.element_size)));
  }
  return {R, ceil_div(g.Ho, R)};
}

const char* name(ForwardPath p) {
  switch (p) {
    case ForwardPath::Empty: return "empty";
    case ForwardPath::Elementwise: return "elementwise";
    case ForwardPath::ChannelsInPlace: return "channels_in_place";
    case ForwardPath::ChannelsTransposed: return "channels_transposed";
    case ForwardPath::RowsInPlace: return "rows_in_place";
    case ForwardPath::RowsDense: return "rows_dense";
    case ForwardPath::RowsPhasePlanes: return "rows_phase_planes";
  }
  return "?";
}

const char* name(BackwardPath p) {
  switch (p) {
    case BackwardPath::Empty: return "empty";
    case BackwardPath::Elementwise: return "elementwise";
    case BackwardPath::ChannelsInPlace: return "channels_in_place";
    case BackwardPath::ChannelsCopied: return "channels_copied";
    case BackwardPath::RowsPhasePlanes: return "rows_phase_planes";
  }
  return "?";
}

void put_bands(std::ostringstream& out, const char* what, const Bands& b) {
  out << ' ' << what << "=" << b.rows << "x" << b.count;
}

void put_flag(std::ostringstream& out, const char* what, bool on) {
  if (on) out << ' ' << what;
}

}  // namespace

int64_t band_row_length(const Geometry& g, bool dense) {
  if (dense) return g.W;
  const int64_t reach = (g.k - 1) * g.dilation / g.stride;
  return std::max(g.Wo + reach, (g.W - 1 + g.pad()) / g.stride + 1);
}

ForwardPlan plan_forward(const CallInfo& call, const ForwardStrides& st) {
  const Geometry& g = call.g;
  ForwardPlan p;
  p.isa = cpu_isa();
  if (g.B * g.C * g.Ho * g.Wo == 0) return p;
  if (!bands_fit(g)) {
    p.path = ForwardPath::Elementwise;
    return p;
  }
  if (channels_forward(call, st.input)) {
    const int64_t lanes = 64 / call.element_size;
    p.path = st.input.c == 1 ? ForwardPath::ChannelsInPlace : ForwardPath::ChannelsTransposed;
    p.pixel_stride = ceil_div(g.channels_per_head(), lanes) * lanes + lanes;
    p.output_in_place = st.output.c == 1;
    p.bands = channels_forward_bands(call, st.input.c == 1, p.output_in_place, p.pixel_stride);
    return p;
  }
  p.input_to_nchw = rows_strided(st.input, g.W);
  p.spatial_filter_to_nchw = rows_strided(st.spatial_filter, g.Wo);
  p.output_via_nchw = rows_strided(st.output, g.Wo);
  // The strides the row kernel sees: NCHW copies where the operand was copied.
  const Strides4 xs = p.input_to_nchw ? Strides4{g.C * g.H * g.W, g.H * g.W, g.W, 1} : st.input;
  const Strides4 os = p.output_via_nchw ? Strides4{g.C * g.Ho * g.Wo, g.Ho * g.Wo, g.Wo, 1} : st.output;
  const bool dense = call.combine == Combine::Mul && g.stride == 1;
  if (rows_read_in_place(call, xs) && os.w == 1 && os.h == g.Wo) {
    p.path = ForwardPath::RowsInPlace;
  } else {
    p.path = dense ? ForwardPath::RowsDense : ForwardPath::RowsPhasePlanes;
  }
  p.bands = row_bands(g.Ho, band_row_length(g, dense), g.B * g.G, tasks_for_threads(call));
  return p;
}

BackwardPlan plan_backward(const CallInfo& call, const BackwardStrides& st) {
  const Geometry& g = call.g;
  BackwardPlan p;
  p.isa = cpu_isa();
  if (g.B * g.C * g.Ho * g.Wo == 0) return p;
  if (!bands_fit(g)) {
    p.path = BackwardPath::Elementwise;
    return p;
  }
  const bool in_place =
      st.input.c == 1 && st.grad_output.c == 1 && (!st.want_grad_input || st.grad_input.c == 1);
  if (call.exact && g.channels_per_head() >= kMinChannelsPerHead &&
      (in_place || static_cast<double>(g.Ho) * g.Wo <= kChannelsMaxNchwBackwardMap)) {
    p.path = in_place ? BackwardPath::ChannelsInPlace : BackwardPath::ChannelsCopied;
    p.input_to_channels_last = st.input.c != 1;
    p.grad_output_to_channels_last = st.grad_output.c != 1;
    p.grad_input_via_channels_last = st.want_grad_input && st.grad_input.c != 1;
    p.filter_grad_bands = channel_bands(g.Ho, g, kFilterGradTasks);
    p.input_grad_bands = channel_bands(g.H, g, tasks_for_threads(call));
    return p;
  }
  p.path = BackwardPath::RowsPhasePlanes;
  p.grad_output_to_nchw = rows_strided(st.grad_output, g.Wo);
  p.input_to_nchw = rows_strided(st.input, g.W);
  p.spatial_filter_to_nchw = rows_strided(st.spatial_filter, g.Wo);
  p.grad_input_via_nchw = st.want_grad_input && rows_strided(st.grad_input, g.W);
  p.grad_spatial_filter_via_nchw = st.want_grad_spatial_filter && rows_strided(st.grad_spatial_filter, g.Wo);
  const int64_t L = band_row_length(g, false);
  p.filter_grad_bands = row_bands(g.Ho, L, g.B * g.G, kFilterGradTasks);
  p.input_grad_bands = row_bands(g.H, L, g.B * g.G, tasks_for_threads(call));
  return p;
}

std::string describe(const ForwardPlan& p) {
  std::ostringstream out;
  out << name(p.path);
  if (p.path == ForwardPath::Empty || p.path == ForwardPath::Elementwise) return out.str();
  put_bands(out, "bands", p.bands);
  if (p.pixel_stride > 0) out << " pixel_stride=" << p.pixel_stride;
  put_flag(out, "output_in_place", p.output_in_place);
  put_flag(out, "input_to_nchw", p.input_to_nchw);
  put_flag(out, "spatial_filter_to_nchw", p.spatial_filter_to_nchw);
  put_flag(out, "output_via_nchw", p.output_via_nchw);
  out << " isa=" << isa_name(p.isa);
  return out.str();
}

std::string describe(const BackwardPlan& p) {
  std::ostringstream out;
  out << name(p.path);
  if (p.path == BackwardPath::Empty || p.path == BackwardPath::Elementwise) return out.str();
  put_bands(out, "filter_grad_bands", p.filter_grad_bands);
  put_bands(out, "input_grad_bands", p.input_grad_bands);
  put_flag(out, "grad_output_to_nchw", p.grad_output_to_nchw);
  put_flag(out, "input_to_nchw", p.input_to_nchw);
  put_flag(out, "spatial_filter_to_nchw", p.spatial_filter_to_nchw);
  put_flag(out, "grad_input_via_nchw", p.grad_input_via_nchw);
  put_flag(out, "grad_spatial_filter_via_nchw", p.grad_spatial_filter_via_nchw);
  put_flag(out, "input_to_channels_last", p.input_to_channels_last);
  put_flag(out, "grad_output_to_channels_last", p.grad_output_to_channels_last);
  put_flag(out, "grad_input_via_channels_last", p.grad_input_via_channels_last);
  out << " isa=" << isa_name(p.isa);
  return out.str();
}

}  // namespace cpu
}  // namespace ddf
