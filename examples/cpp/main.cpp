// DDF-ResNet-50, exported and compiled by AOTInductor in Python (export_model.py), run from
// C++ on the CPU and checked against the eager logits Python saved.
//
//   ddf_aoti_example MODEL.pt2 REFERENCE.pt
//
// REFERENCE.pt is torch.save({"input": x, "logits": eager_logits}). Exit status 0 when the
// logits match (max |diff| <= 1e-3 * max |eager logit|), 1 when they do not, 2 on an error
// (ddf ops not registered, unreadable files, the model failing).
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/torch.h>

#include <link.h>

#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>
#include <string_view>
#include <vector>

namespace {

constexpr double kRelativeTolerance = 1e-3;

// The ops come from libddf_ops.so, loaded at start-up because the program links
// ddf_ops::ddf_ops; without it the model would fail on its first ddf call.
bool ddf_ops_registered() {
  bool ok = true;
  for (const char* name : {"ddf::ddf", "ddf::ddf_backward"}) {
    auto op = c10::Dispatcher::singleton().findSchema({name, ""});
    if (!op) {
      std::fprintf(stderr, "error: operator %s is not registered: libddf_ops.so is not loaded (link ddf_ops::ddf_ops)\n", name);
      ok = false;
      continue;
    }
    std::printf("registered: %s (CPU kernel: %s)\n", c10::toString(op->schema()).c_str(),
                op->hasKernelForDispatchKey(c10::DispatchKey::CPU) ? "yes" : "no");
  }
  dl_iterate_phdr(
      [](dl_phdr_info* info, size_t, void*) {
        if (std::string_view(info->dlpi_name).find("libddf_ops") != std::string_view::npos) {
          std::printf("loaded: %s\n", info->dlpi_name);
        }
        return 0;
      },
      nullptr);
  return ok;
}

std::vector<char> read_file(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  TORCH_CHECK(file, "cannot open ", path);
  return {std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>()};
}

void print_top5(const at::Tensor& logits, const char* what) {
  const auto [values, indices] = logits.topk(5, /*dim=*/1);
  for (int64_t b = 0; b < logits.size(0); ++b) {
    std::printf("%s top-5, sample %ld:", what, static_cast<long>(b));
    for (int64_t i = 0; i < 5; ++i) {
      std::printf(" %ld (%.4f)", static_cast<long>(indices[b][i].item<int64_t>()), values[b][i].item<double>());
    }
    std::printf("\n");
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s MODEL.pt2 REFERENCE.pt\n", argv[0]);
    return 2;
  }
  if (!ddf_ops_registered()) {
    return 2;
  }
  try {
    const auto reference = torch::pickle_load(read_file(argv[2])).toGenericDict();
    const at::Tensor input = reference.at("input").toTensor();
    const at::Tensor expected = reference.at("logits").toTensor();
    std::printf("input %s, eager logits %s\n", c10::str(input.sizes()).c_str(), c10::str(expected.sizes()).c_str());

    c10::InferenceMode inference_mode;
    torch::inductor::AOTIModelPackageLoader loader(argv[1]);
    const at::Tensor logits = loader.run({input}).at(0);

    print_top5(logits, "AOTInductor (C++)");
    print_top5(expected, "eager (Python)   ");
    if (logits.sizes() != expected.sizes()) {
      std::fprintf(stderr, "FAIL: logits of shape %s, expected %s\n", c10::str(logits.sizes()).c_str(),
                   c10::str(expected.sizes()).c_str());
      return 1;
    }
    const double max_abs_diff = (logits - expected).abs().max().item<double>();
    const double scale = expected.abs().max().item<double>();
    const double tolerance = kRelativeTolerance * scale;
    std::printf("max abs diff %.3g (max |eager logit| %.4g, tolerance %.3g)\n", max_abs_diff, scale, tolerance);
    if (!(max_abs_diff <= tolerance)) {  // NaN fails too
      std::fprintf(stderr, "FAIL: the C++ logits differ from Python's eager logits\n");
      return 1;
    }
    std::printf("OK: the AOTInductor package's logits match Python's eager logits\n");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  }
  return 0;
}
