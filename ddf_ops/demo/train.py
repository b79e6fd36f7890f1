"""Demo part (e): a short training run of a DDF-ResNet under torch.compile, on synthetic data.

The data is learnable, not memorizable: each class has a fixed random image (its template)
and every sample is a fresh draw of ``template + noise``, so the loss can only fall if the
network learns to tell the templates apart.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .progress import step

NUM_CLASSES = 4
NOISE = 1.0
LEARNING_RATE = 1e-3  # AdamW; falls within a few steps and stays stable over tens of steps


class SyntheticImages:
    def __init__(self, image_size: int, device: torch.device, seed: int = 0):
        self.generator = torch.Generator().manual_seed(seed)
        self.templates = torch.randn(NUM_CLASSES, 3, image_size, image_size, generator=self.generator)
        self.device = device

    def batch(self, batch_size: int) -> tuple[Tensor, Tensor]:
        labels = torch.randint(NUM_CLASSES, (batch_size,), generator=self.generator)
        noise = torch.randn((batch_size, *self.templates.shape[1:]), generator=self.generator)
        return (self.templates[labels] + NOISE * noise).to(self.device), labels.to(self.device)


def train(model: nn.Module, name: str, steps: int, batch_size: int, image_size: int, device: torch.device) -> bool:
    """Trains ``model`` (with ``NUM_CLASSES`` outputs) compiled; True if the loss fell."""
    data = SyntheticImages(image_size, device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE)
    compiled = torch.compile(model, fullgraph=True)
    losses = []
    print_every = max(1, steps // 10)
    for index in range(steps):
        images, labels = data.batch(batch_size)
        if index == 0:
            with step(f"compiling {name}'s forward and backward (first step; cached after the first run)"):
                loss = F.cross_entropy(compiled(images), labels)
                loss.backward()
        else:
            loss = F.cross_entropy(compiled(images), labels)
            loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if index % print_every == 0 or index == steps - 1:
            print(f"   step {index + 1:3d}/{steps}  loss {losses[-1]:.3f}", flush=True)
    window = max(1, steps // 5)
    first, last = sum(losses[:window]) / window, sum(losses[-window:]) / window
    fell = last < first
    verdict = "falling" if fell else "NOT falling"
    print(
        f"   mean loss of the first {window} steps {first:.3f} -> last {window} steps {last:.3f} "
        f"({verdict}; chance level ln {NUM_CLASSES} = {math.log(NUM_CLASSES):.3f})"
    )
    return fell
