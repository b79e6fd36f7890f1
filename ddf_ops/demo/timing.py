"""Demo part (d): per-image inference time of a DDF-ResNet against the plain ResNet."""

import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from .progress import step


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def per_image_ms(run: Callable[[Tensor], Tensor], images: Tensor, repeats: int) -> float:
    """Median over ``repeats`` timed batches (after two warm-up batches), per image."""
    times = []
    with torch.no_grad():
        for index in range(repeats + 2):
            synchronize(images.device)
            start = time.perf_counter()
            run(images)
            synchronize(images.device)
            if index >= 2:  # oneDNN builds its kernels during the first calls of a shape
                times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times) / images.shape[0]


def compare_inference_time(
    models: dict[str, tuple[nn.Module, nn.Module]], images: Tensor, repeats: int
) -> dict[str, tuple[float, float]]:
    """``models``: name -> (eager module, compiled module). Prints and returns ms per image."""
    results = {}
    for name, (eager, compiled) in models.items():
        with step(f"first compiled call of {name} (compiles it unless done above)"), torch.no_grad():
            compiled(images)
        with step(f"timing {name}, {repeats} batches of {images.shape[0]} each way"):
            results[name] = (per_image_ms(eager, images, repeats), per_image_ms(compiled, images, repeats))
    print(f"   {'ms per image':22s} {'eager':>8s} {'compiled':>9s}")
    for name, (eager_ms, compiled_ms) in results.items():
        print(f"   {name:22s} {eager_ms:8.1f} {compiled_ms:9.1f}")
    return results
