"""Guided (joint) upsampling of a depth map with DDF-Up, against nearest, bilinear and a
learned transposed convolution; synthetic scenes.

    python examples/guided_upsampling.py --out build/examples/guided_upsampling.png
    python examples/guided_upsampling.py --device cuda --steps 2000

Each scene is piecewise smooth: a sloped background plane and two to four shapes (boxes,
disks, triangles) in front of it, each a sloped plane of its own depth. The guide is an RGB
image of the same scene at full resolution: each surface has its own colour and texture, the
background also has stripes (image edges that are not depth edges). The input is the depth
map at 1/``scale`` resolution (area averaging, as a low-resolution sensor would see it); the
target is the full-resolution depth map.

Methods (the learned ones share one network, only the upsampling layer differs)::

    nearest, bilinear          F.interpolate, nothing learned
    transposed conv            bilinear(d) + dec(ConvTranspose2d(enc(d)))        (no image)
    DDF-Up                     bilinear(d) + dec(DDFUpPack(enc(d)))              (no image)
    DDF-Up guided              bilinear(d) + dec(DDFUpPack(enc(d), guide(img)))  (the image)

``enc``: two 3x3 convs on the low-resolution depth; ``dec``: a 3x3 conv at full resolution;
``guide``: two 3x3 convs on the image, ``pixel_unshuffle`` to the low resolution (each
low-resolution pixel gets its cell's full-resolution features), then two 3x3 convs there, so
the spatial filters of DDF-Up's branch ``(i, j)`` are predicted from the full-resolution
pixels of the cell and of its neighbours (those the filter weights). Each learned model
trains for ``--steps`` Adam steps (MSE) on fresh scenes (the same scenes for every model), and
all are scored by PSNR (depth in [0, 1], peak 1) on held-out scenes. A PNG shows a few held-out scenes: image, input, each result, ground truth.
"""

import argparse
import math
import os
import time

import torch
import torch.nn.functional as F
from torch import nn

from ddf_ops.nn import DDFUpPack


def _planes(size: int, generator: torch.Generator, low: float, high: float) -> torch.Tensor:
    """A sloped plane over (size, size) with values in about [low, high]."""
    y, x = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    base, sx, sy = torch.rand(3, generator=generator).tolist()
    slope = 0.25 * (high - low)
    return low + (high - low - 2 * slope) * base + slope * (1 + (sx - 0.5) * x + (sy - 0.5) * y)


def _smooth_noise(size: int, cells: int, generator: torch.Generator) -> torch.Tensor:
    coarse = torch.rand(1, 1, cells, cells, generator=generator)
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)[0, 0]


def make_scenes(count: int, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` scenes: images (count, 3, size, size) and depth maps (count, 1, size, size), in [0, 1]."""
    images, depths = [], []
    y, x = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    for _ in range(count):
        depth = _planes(size, generator, 0.6, 1.0)
        colour = torch.rand(3, 1, 1, generator=generator)
        angle = float(torch.rand(1, generator=generator)) * math.pi
        stripes = 0.5 + 0.5 * torch.sin((x * math.cos(angle) + y * math.sin(angle)) * 0.6)
        image = colour * (0.6 + 0.4 * _smooth_noise(size, 5, generator)) * (0.75 + 0.25 * stripes)
        for _ in range(int(torch.randint(2, 5, (1,), generator=generator))):
            side = float(torch.randint(size // 6, size // 2, (1,), generator=generator))
            x0, y0 = (torch.rand(2, generator=generator) * (size - side)).tolist()
            kind = int(torch.randint(3, (1,), generator=generator))
            if kind == 0:
                mask = (x >= x0) & (x <= x0 + side) & (y >= y0) & (y <= y0 + side * 0.6)
            elif kind == 1:
                mask = (x - x0 - side / 2) ** 2 + (y - y0 - side / 2) ** 2 <= (side / 2) ** 2
            else:
                mask = (y >= y0) & (y <= y0 + side) & ((x - x0 - side / 2).abs() <= (y - y0) / 2)
            surface = _planes(size, generator, 0.05, 0.55)
            tint = torch.rand(3, 1, 1, generator=generator)
            shade = tint * (0.7 + 0.3 * _smooth_noise(size, 4, generator))
            depth = torch.where(mask, surface, depth)
            image = torch.where(mask, shade, image)
        image = image + 0.02 * torch.randn(image.shape, generator=generator)
        images.append(image.clamp(0, 1))
        depths.append(depth[None].clamp(0, 1))
    return torch.stack(images), torch.stack(depths)


class LearnedUpsampler(nn.Module):
    """bilinear(d) + dec(up(enc(d)[, guide(image)])); ``kind``: "transposed", "ddf" or "ddf_guided"."""

    def __init__(self, kind: str, scale: int = 4, channels: int = 16, guide_channels: int = 8, combine: str = "mul"):
        super().__init__()
        self.kind, self.scale = kind, scale
        self.enc = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1)
        )
        if kind == "transposed":
            self.up = nn.ConvTranspose2d(channels, channels, 2 * scale, stride=scale, padding=scale // 2)
        elif kind == "ddf":
            self.up = DDFUpPack(channels, kernel_size=3, scale_factor=scale, combine=combine)
        elif kind == "ddf_guided":
            joint = 4 * channels
            self.guide = nn.Sequential(
                nn.Conv2d(3, guide_channels, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(guide_channels, guide_channels, 3, padding=1),
                nn.ReLU(),
                nn.PixelUnshuffle(scale),  # each low-resolution pixel: its cell's full-resolution features
                # 3x3 at the low resolution: the filter of a cell sees its neighbours' pixels,
                # those it weights (a colour edge between them is what it should follow)
                nn.Conv2d(guide_channels * scale * scale, joint, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(joint, joint, 3, padding=1),
            )
            self.up = DDFUpPack(channels, kernel_size=3, scale_factor=scale, joint_channels=joint, combine=combine)
        else:
            raise ValueError(f"kind must be 'transposed', 'ddf' or 'ddf_guided', got {kind!r}")
        self.dec = nn.Conv2d(channels, 1, 3, padding=1)

    def forward(self, low: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        features = self.enc(low)
        if self.kind == "ddf_guided":
            up = self.up(features, self.guide(image))
        else:
            up = self.up(features)
        bilinear = F.interpolate(low, scale_factor=self.scale, mode="bilinear", align_corners=False)
        return bilinear + self.dec(up)


def fixed_upsampler(mode: str, scale: int):
    def upsample(low, image):
        if mode == "nearest":
            return F.interpolate(low, scale_factor=scale, mode="nearest")
        return F.interpolate(low, scale_factor=scale, mode=mode, align_corners=False)

    return upsample


def psnr(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample PSNR in dB, peak 1 (the depth maps are in [0, 1])."""
    mse = (prediction.clamp(0, 1) - target).pow(2).flatten(1).mean(1)
    return -10 * torch.log10(mse.clamp_min(1e-12))


def downsample(depth: torch.Tensor, scale: int) -> torch.Tensor:
    return F.avg_pool2d(depth, scale)


def train(model, steps: int, batch_size: int, size: int, scale: int, lr: float, device: str, seed: int, desc: str):
    """Adam, cosine decay, MSE loss (PSNR is an MSE), fresh scenes every step (the same sequence
    for every model)."""
    model.to(device).train()
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    history = []
    for step in range(steps):
        images, depths = make_scenes(batch_size, size, generator)
        images, depths = images.to(device), depths.to(device)
        loss = F.mse_loss(model(downsample(depths, scale), images), depths)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        history.append(loss.item())
        if (step + 1) % max(1, steps // 5) == 0 or step + 1 == steps:
            recent = history[-max(1, steps // 5) :]
            print(f"  {desc}: step {step + 1}/{steps}, MSE {sum(recent) / len(recent):.5f}", flush=True)
    return history


METHODS = ("nearest", "bilinear", "transposed conv", "DDF-Up", "DDF-Up guided")


def build_methods(scale: int, combine: str) -> dict:
    return {
        "nearest": fixed_upsampler("nearest", scale),
        "bilinear": fixed_upsampler("bilinear", scale),
        "transposed conv": LearnedUpsampler("transposed", scale, combine=combine),
        "DDF-Up": LearnedUpsampler("ddf", scale, combine=combine),
        "DDF-Up guided": LearnedUpsampler("ddf_guided", scale, combine=combine),
    }


def save_figure(path: str, images, lows, depths, results: dict, scores: dict, rows: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = ["image (guide)", "input (low-res)", *results, "ground truth"]
    figure, axes = plt.subplots(rows, len(columns), figsize=(1.9 * len(columns), 2.0 * rows), squeeze=False)
    for row in range(rows):
        panels = [images[row].permute(1, 2, 0), lows[row, 0], *(r[row, 0].clamp(0, 1) for r in results.values()), depths[row, 0]]
        for column, (title, panel) in enumerate(zip(columns, panels)):
            axis = axes[row, column]
            if title == "image (guide)":
                axis.imshow(panel.numpy())
            else:
                axis.imshow(panel.numpy(), cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
            if title in results:
                title = f"{title}\n{scores[title][row]:.1f} dB"
            axis.set_title(title, fontsize=8)
            axis.axis("off")
    figure.suptitle("Joint upsampling x4 of synthetic depth maps (PSNR per sample)", fontsize=9)
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--size", type=int, default=64, help="full-resolution side")
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--combine", default="mul", choices=("mul", "add"))
    parser.add_argument("--held-out", type=int, default=200)
    parser.add_argument("--rows", type=int, default=3, help="held-out scenes in the figure")
    parser.add_argument("--out", default="build/examples/guided_upsampling.png")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.size % args.scale:
        parser.error("--size must be a multiple of --scale")

    print(
        f"synthetic scenes {args.size}x{args.size}, depth input x1/{args.scale}; {args.steps} steps of "
        f"{args.batch_size} on {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    images, depths = make_scenes(args.held_out, args.size, torch.Generator().manual_seed(args.seed + 12345))
    lows = downsample(depths, args.scale)
    scores, results = {}, {}
    for name, method in build_methods(args.scale, args.combine).items():
        if name not in args.methods:
            continue
        if isinstance(method, nn.Module):
            torch.manual_seed(args.seed)
            start = time.perf_counter()
            train(method, args.steps, args.batch_size, args.size, args.scale, args.lr, args.device, args.seed, name)
            print(f"  {name}: trained in {time.perf_counter() - start:.0f} s", flush=True)
            method.eval()
        with torch.no_grad():
            result = torch.cat(
                [method(lows[i : i + 50].to(args.device), images[i : i + 50].to(args.device)).cpu() for i in range(0, len(lows), 50)]
            )
        scores[name] = psnr(result, depths)
        results[name] = result[: args.rows]
    print(f"\nPSNR on {args.held_out} held-out scenes (dB, mean over scenes; higher is better):")
    print("| method | PSNR |\n|---|---|")
    for name, score in scores.items():
        print(f"| {name} | {score.mean():.2f} |")
    if args.out:
        save_figure(args.out, images[: args.rows], lows[: args.rows], depths[: args.rows], results, scores, args.rows)
        print(f"figure: {args.out}")
    return {name: float(score.mean()) for name, score in scores.items()}


if __name__ == "__main__":
    main()
