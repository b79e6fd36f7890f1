"""``python -m ddf_ops`` (``make demo``): the op, the paper's table, and a DDF-ResNet end to end.

Parts: (a) the op against the reference; (b) parameters and GFLOPs next to the paper's;
(c) a DDF-ResNet eager, compiled and exported, the export run in a fresh process;
(d) its inference time against the plain ResNet; (e) a short compiled training run.
Exits with status 1 if any check fails.
"""

import argparse
import logging
import time

import torch
from torch import nn

from .._library import has_cuda_kernels
from ..models import ResNet, ddf_resnet
from .deploy import eager_compiled_exported
from .op_check import check_op
from .progress import section
from .table import print_table
from .timing import compare_inference_time
from .train import NUM_CLASSES, train


def resnet_name(layers: tuple[int, ...]) -> str:
    return f"ResNet-{3 * sum(layers) + 2}"  # 3 convs per bottleneck, plus the stem conv and fc


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m ddf_ops",
        description="The ddf_ops demo: (a) the op against its reference, (b) parameters and FLOPs "
        "next to the paper's, (c) a DDF-ResNet eager, compiled and exported to a fresh process, "
        "(d) its inference time against the plain ResNet, (e) a short compiled training run. "
        "A few minutes on 2 CPU cores the first time (mostly torch.compile, whose cache makes "
        "later runs faster). Exits with status 1 if a check fails.",
    )
    parser.add_argument("--device", default="cpu", help="device to run on, e.g. cpu or cuda (default: cpu)")
    parser.add_argument("--batch-size", type=int, default=4, help="images per inference batch (default: 4)")
    parser.add_argument("--image-size", type=int, default=224, help="inference image side (default: 224)")
    parser.add_argument(
        "--layers", type=int, nargs=4, default=(3, 4, 6, 3), metavar="N",
        help="bottlenecks per stage of the inference ResNets (default: 3 4 6 3, ResNet-50)",
    )  # fmt: skip
    parser.add_argument("--repeats", type=int, default=5, help="timed batches per measurement (default: 5)")
    parser.add_argument("--skip-timing", action="store_true", help="skip part (d), the inference timing")
    parser.add_argument("--skip-train", action="store_true", help="skip part (e), the training run")
    parser.add_argument("--train-steps", type=int, default=30, help="training steps (default: 30)")
    parser.add_argument("--train-batch-size", type=int, default=16, help="training batch (default: 16)")
    parser.add_argument("--train-image-size", type=int, default=64, help="training image side (default: 64)")
    parser.add_argument(
        "--train-layers", type=int, nargs=4, default=(1, 1, 1, 1), metavar="N",
        help="bottlenecks per stage of the trained DDF-ResNet (default: 1 1 1 1; compiling the "
        "backward of a deeper one takes minutes on 2 cores)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    args = parser.parse_args(argv)
    args.layers, args.train_layers = tuple(args.layers), tuple(args.train_layers)
    for option in ("batch_size", "image_size", "repeats", "train_steps", "train_batch_size", "train_image_size"):
        if getattr(args, option) < 1:
            parser.error(f"--{option.replace('_', '-')} must be >= 1")
    if min(args.layers + args.train_layers) < 1:
        parser.error("--layers and --train-layers need 4 numbers >= 1")
    if args.train_batch_size < 2:
        parser.error("--train-batch-size must be >= 2 (batch norm in training mode)")
    return args


def time_against_plain(
    args: argparse.Namespace, name: str, ddf_model: nn.Module, ddf_compiled: nn.Module, images: torch.Tensor
) -> None:
    plain = resnet_name(args.layers)
    size = f"{args.image_size}x{args.image_size}"
    section(f"(d) inference time on this machine, {name} against {plain}, batch {args.batch_size} at {size}")
    plain_model = ResNet(args.layers).to(images.device).eval()
    models = {plain: (plain_model, torch.compile(plain_model, fullgraph=True)), name: (ddf_model, ddf_compiled)}
    times = compare_inference_time(models, images, args.repeats)
    for column, label in enumerate(("eager", "compiled")):
        print(f"   {name} / {plain} time, {label}: {times[name][column] / times[plain][column]:.2f}x")


def train_small_ddf_resnet(args: argparse.Namespace, device: torch.device) -> bool:
    name = f"DDF-{resnet_name(args.train_layers)}"
    size = f"{args.train_image_size}x{args.train_image_size}"
    section(
        f"(e) training {name} ({NUM_CLASSES} classes) under torch.compile(fullgraph=True): "
        f"{args.train_steps} AdamW steps, batch {args.train_batch_size} of {size} synthetic images"
    )
    model = ddf_resnet(args.train_layers, num_classes=NUM_CLASSES).to(device)  # the paper's init (zero_init_last)
    return train(model, name, args.train_steps, args.train_batch_size, args.train_image_size, device)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not has_cuda_kernels():
        raise SystemExit("this ddf_ops build has no CUDA kernels; rebuild it with CUDA or use --device cpu")
    # Inductor imports cpp_extension, which warns about a missing CUDA runtime on CPU-only machines.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    threads = f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""
    print(f"ddf_ops demo: torch {torch.__version__}, device {device}{threads}")
    checks = {}

    section("(a) the ddf op against the pure-PyTorch reference (float64, output and gradients)")
    checks["op matches the reference"] = check_op(device)

    section("(b) parameters and FLOPs at 224x224: ours and the paper's (Zhou et al., CVPR 2021)")
    checks["counts match the paper"] = print_table()

    name = f"DDF-{resnet_name(args.layers)}"
    section(
        f"(c) {name} (combine='mul', 1000 classes) eager, compiled, exported; "
        f"batch {args.batch_size} of {args.image_size}x{args.image_size} float32 images"
    )
    # zero_init_last=False: with the training default (bn3.weight = 0) every residual branch,
    # and so every DDF layer, would contribute nothing to the logits compared below.
    ddf_model = ddf_resnet(args.layers, zero_init_last=False).to(device).eval()
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    ddf_compiled, checks["compiled and exported logits match eager"] = eager_compiled_exported(ddf_model, name, images)

    if not args.skip_timing:
        time_against_plain(args, name, ddf_model, ddf_compiled, images)

    if not args.skip_train:
        checks["training loss falls"] = train_small_ddf_resnet(args, device)

    section(f"summary ({time.perf_counter() - start:.0f} s)")
    for check, ok in checks.items():
        print(f"   {'ok  ' if ok else 'FAIL'} {check}")
    return 0 if all(checks.values()) else 1
