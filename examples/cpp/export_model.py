"""Exports DDF-ResNet-50 for the C++ example (examples/cpp/main.cpp).

Writes to OUT_DIR:
  ddf_resnet50.pt2  an AOTInductor package (torch.export.export + aoti_compile_and_package,
                    CPU, default inductor options: no max-autotune)
  reference.pt      {"input": x, "logits": eager logits}, by torch.save; main.cpp reads it
                    with torch::pickle_load

The model: ddf_resnet50() with torch.manual_seed(0), BatchNorm statistics from two
training-mode passes over random batches (so they are not the trivial 0/1), then eval mode.
The input is a (2, 3, 64, 64) float32 batch: 64x64 instead of 224x224 keeps the example fast
(the graph, and so AOTInductor's compile, is the same; only the run is smaller).

    python examples/cpp/export_model.py OUT_DIR [--size 64] [--batch 2]
"""

import argparse
import os
import time

import torch

import ddf_ops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir")
    parser.add_argument("--size", type=int, default=64, help="input height and width (default 64)")
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)

    torch.manual_seed(0)
    model = ddf_ops.models.ddf_resnet50()
    with torch.no_grad():
        model.train()
        for _ in range(2):
            model(torch.randn(4, 3, args.size, args.size))
    model.eval()
    x = torch.randn(args.batch, 3, args.size, args.size)
    with torch.no_grad():
        logits = model(x)

    start = time.perf_counter()
    with torch.no_grad():
        ep = torch.export.export(model, (x,))
    ddf_calls = sum(n.op == "call_function" and n.target == torch.ops.ddf.ddf.default for n in ep.graph.nodes)
    assert ddf_calls == 16, f"expected the 16 DDF calls of DDF-ResNet-50 in the exported graph, got {ddf_calls}"
    package = torch._inductor.aoti_compile_and_package(ep, package_path=os.path.join(args.out_dir, "ddf_resnet50.pt2"))
    print(f"export_model: {package} ({ddf_calls} ddf::ddf calls, exported and compiled in {time.perf_counter() - start:.0f} s)")

    torch.save({"input": x, "logits": logits}, os.path.join(args.out_dir, "reference.pt"))
    top5 = logits[0].topk(5)
    print("export_model: eager top-5 of sample 0:", [(int(i), round(float(v), 4)) for v, i in zip(*top5)])


if __name__ == "__main__":
    main()
