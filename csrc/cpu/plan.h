// The CPU planner: which kernel runs a call, and with what parameters.
//
// One function per op takes what decides (the geometry, the operands' strides, the dtype, the
// combine, the ISA and the thread count) and returns the path and its parameters; the front
// door (ddf_cpu.cpp) switches on the path, and the kernel families (rows/, channels/,
// elementwise/) do what the plan says and never re-decide. Every threshold lives in this
// header, with the measurement behind it. torch.ops.ddf._cpu_plan(...) names the plan of a
// call (describe() below), so tests assert the path instead of restating thresholds.
//
// The families:
//   elementwise  one result element at a time; no buffers (a huge stride or dilation).
//   channels     vectorized over a head's channels, which share each tap's spatial-filter
//                value: channels_last operands in place, small NCHW maps through transposes.
//   rows         vectorized along image rows, over flat bands of rows: NCHW; the stride-1
//                "mul" forward reads the input in place.
#pragma once

#include <cstdint>
#include <string>

#include "../ddf_geometry.h"
#include "vec/isa.h"

namespace ddf {
namespace cpu {

// ---- Thresholds ------------------------------------------------------------------------
// Measured on a 2-core Intel Xeon VM (AVX-512, and AVX2 forced), B=8 unless said; no value
// here differed between the two ISAs, so none depends on the ISA.

// Row bands: tasks per thread to aim for in the forward and input-gradient passes (each
// element is computed the same way whatever the bands, so the bands may follow the threads).
constexpr int64_t kTasksPerThread = 4;
// Tasks per call of the filter-gradient passes. A constant, not the thread count: their
// channel-filter gradient sums per-band partials in band order, so their bands must not
// depend on the machine (results are bitwise the same across thread counts).
constexpr int64_t kFilterGradTasks = 16;
// Bands shorter than this spend too much on the rows they share with their neighbours.
constexpr int64_t kMinBandRows = 8;
// Largest band (elements of one flat buffer) that keeps a task's buffers in L2.
constexpr int64_t kMaxBandElements = 16384;
// The row kernels' buffers per call stay below this many elements, or twice what one
// channel of the image and its spatial filter hold; beyond that (a stride or dilation large
// next to the image) the elementwise kernels run, so memory is always proportional to the
// tensors.
constexpr double kMaxBandBufferElements = 1 << 20;

// The channel-vectorized kernels need heads of at least this many channels (narrower ones
// would be all remainder, one channel at a time).
constexpr int64_t kMinChannelsPerHead = 8;
// NCHW forward maps of at most this many output pixels take the channel-vectorized kernel
// through transposed bands: faster than the row kernels' band copies at 7 x 7; slower at
// 14 x 14 on AVX2, where the transposes cost more than the row kernels lose ...
constexpr int64_t kChannelsMaxNchwMap = 100;
// ... but only up to this many where the row kernel reads the input in place: that was
// faster from 5 x 5 up on AVX-512 and AVX2, and level at 4 x 4 (B=8, 512 channels, 2 threads).
constexpr int64_t kChannelsMaxNchwMapRowsInPlace = 16;
// Output rows of a transposed band, at least: each band transposes its input rows plus the
// (k-1)*d halo rows, and bands of one row (B=1, 7 x 7) transposed each row three times
// (3x3), which made B=1 slower than the row kernels on AVX2.
constexpr int64_t kMinTransposedBandRows = 4;
// Bytes of a task's transposed input (or output) band.
constexpr int64_t kMaxTransposedBandBytes = 1 << 20;
// NCHW backward maps of at most this many output pixels run the channel-vectorized
// backward on channels_last copies (faster than the row kernels, copies included, up to
// 14 x 14: 512@7² 1.41 -> 0.61 ms, 256@14² 1.79 -> 0.97 ms, 1 thread, AVX-512).
constexpr int64_t kChannelsMaxNchwBackwardMap = 256;

// ---- Plans -----------------------------------------------------------------------------

enum class ForwardPath {
  Empty,               // no output element: nothing runs
  Elementwise,         // elementwise/forward.h
  ChannelsInPlace,     // channels/forward.h, input channels contiguous (read in place)
  ChannelsTransposed,  // channels/forward.h, NCHW bands transposed in registers
  RowsInPlace,         // rows/forward.h, stride-1 "mul" float32/float64, input read in place
  RowsDense,           // rows/forward.h, stride-1 "mul", unpadded band copies
  RowsPhasePlanes,     // rows/forward.h, band copies split into stride phase planes
};

enum class BackwardPath {
  Empty,            // no output pixel: the gradients are zeros
  Elementwise,      // elementwise/backward.h
  ChannelsInPlace,  // channels/backward.h, input, grad_output and grad_input channels contiguous
  ChannelsCopied,   // channels/backward.h, on channels_last copies of NCHW operands
  RowsPhasePlanes,  // rows/backward.h
};

// Bands of rows: `rows` per task (the last may be shorter), `count` of them per (b, head).
struct Bands {
  int64_t rows = 0, count = 0;
};

struct ForwardPlan {
  ForwardPath path = ForwardPath::Empty;
  Isa isa = Isa::Baseline;
  Bands bands;  // output rows
  // Row paths: operands whose rows are strided (channels_last, C > 1) are copied to NCHW
  // first (ATen's blocked transpose) and such an output computed in NCHW and copied back:
  // two passes over the tensor, about 3x faster than gathering in every band copy.
  bool input_to_nchw = false, spatial_filter_to_nchw = false, output_via_nchw = false;
  // Channel paths: elements per pixel of the task buffers (one 64-byte line more than the
  // head's channels: a power-of-two stride such as 512 floats put the taps' pixels in the
  // same few cache sets, 1.7x slower); whether the output is written in place.
  int64_t pixel_stride = 0;
  bool output_in_place = false;
};

struct BackwardPlan {
  BackwardPath path = BackwardPath::Empty;
  Isa isa = Isa::Baseline;
  Bands filter_grad_bands;  // output rows
  Bands input_grad_bands;   // input rows
  // RowsPhasePlanes: as ForwardPlan's.
  bool grad_output_to_nchw = false, input_to_nchw = false, spatial_filter_to_nchw = false;
  bool grad_input_via_nchw = false, grad_spatial_filter_via_nchw = false;
  // ChannelsCopied: which operands get channels_last copies.
  bool input_to_channels_last = false, grad_output_to_channels_last = false, grad_input_via_channels_last = false;
};

// What the planner sees of a call. `exact`: float32 or float64, which the kernels compute in
// their own type (the half types convert through the row kernels' band copies).
struct CallInfo {
  Geometry g;
  Combine combine;
  bool exact;
  int64_t element_size;
  int64_t threads;
};

// Strides of the operands and results (those not wanted: any value, ignored).
struct ForwardStrides {
  Strides4 input, spatial_filter, output;
};
struct BackwardStrides {
  Strides4 grad_output, input, spatial_filter, grad_input, grad_spatial_filter;
  bool want_grad_input, want_grad_spatial_filter;
};

ForwardPlan plan_forward(const CallInfo& call, const ForwardStrides& st);
BackwardPlan plan_backward(const CallInfo& call, const BackwardStrides& st);

// "rows_in_place band_rows=8 bands=7 ..." : the path, then its parameters.
std::string describe(const ForwardPlan& plan);
std::string describe(const BackwardPlan& plan);

// The flat row length of a row band (rows/bands.h): the image width for the dense
// stride-1 "mul" layout, else long enough for every tap of every output column and for
// every input column of a phase plane.
int64_t band_row_length(const Geometry& g, bool dense);

}  // namespace cpu
}  // namespace ddf
