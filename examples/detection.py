"""FCOS on (DDF-)ResNet-50 + FPN (nearest or DDF-Up), trained on a synthetic shape set.

    python examples/detection.py                      # the four backbone x upsampler variants
    python examples/detection.py --device cuda --steps 1000 --image-size 128

The data set is generated here: shapes (square, disk, triangle; the three classes) of
random colours and sizes on textured backgrounds (smooth colour noise plus stripes), one to
three per image, with their boxes and labels. Every variant trains from scratch (no
pretrained weights) on the same images in the same order from the same seed, then is
evaluated on held-out images with pycocotools' COCO mAP. Needs torchvision and pycocotools
(test dependencies: ``make detection-example`` installs them).
"""

import argparse
import contextlib
import io
import math
import sys
import time

import torch

from ddf_ops.models.detection import BACKBONES, UPSAMPLERS, fcos_resnet50_fpn

CLASSES = ("square", "disk", "triangle")  # labels 1, 2, 3 (0 is torchvision's background)


def _texture(size: int, generator: torch.Generator) -> torch.Tensor:
    """A (3, size, size) background in [0, 1]: smooth colour noise plus faint random stripes."""
    coarse = torch.rand(3, 1, 6, 6, generator=generator)
    noise = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)[:, 0]
    y, x = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    angle, period = torch.rand(2, generator=generator)
    phase = (x * torch.cos(angle * math.pi) + y * torch.sin(angle * math.pi)) / (3 + 6 * period)
    stripes = 0.15 * torch.sin(2 * math.pi * phase)
    return (0.3 + 0.5 * noise + stripes).clamp(0, 1)


def _shape_mask(label: int, box: torch.Tensor, size: int) -> torch.Tensor:
    x0, y0, x1, y1 = box.tolist()
    y, x = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    inside = (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)
    if label == 2:  # disk inscribed in the box
        cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
        return (x - cx) ** 2 + (y - cy) ** 2 <= r * r
    if label == 3:  # triangle, apex at the top middle, base along the bottom
        t = (y - y0) / (y1 - y0)
        cx, half = (x0 + x1) / 2, (x1 - x0) / 2
        return inside & ((x - cx).abs() <= half * t)
    return inside


def make_dataset(count: int, size: int, seed: int) -> list[tuple[torch.Tensor, dict]]:
    """``count`` (image (3, size, size) in [0, 1], {"boxes": (n, 4) xyxy, "labels": (n,)}) pairs."""
    generator = torch.Generator().manual_seed(seed)
    samples = []
    for _ in range(count):
        image = _texture(size, generator)
        boxes, labels = [], []
        for _ in range(int(torch.randint(1, 4, (1,), generator=generator))):
            side = float(torch.randint(size // 6, size // 2, (1,), generator=generator))
            x0, y0 = (torch.rand(2, generator=generator) * (size - side)).tolist()
            box = torch.tensor([x0, y0, x0 + side, y0 + side])
            label = int(torch.randint(1, len(CLASSES) + 1, (1,), generator=generator))
            colour = torch.rand(3, generator=generator)
            image[:, _shape_mask(label, box, size)] = colour[:, None]
            boxes.append(box)
            labels.append(label)
        # Later shapes may cover earlier ones; boxes stay as drawn (occlusion is part of the task).
        samples.append((image, {"boxes": torch.stack(boxes), "labels": torch.tensor(labels)}))
    return samples


def coco_map(predictions: list[dict], targets: list[dict]) -> tuple[float, float]:
    """COCO mAP@[.5:.95] and mAP@.5 of torchvision-style predictions, by pycocotools."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def xywh(box):
        x0, y0, x1, y1 = box.tolist()
        return [x0, y0, x1 - x0, y1 - y0]

    images, annotations, detections = [], [], []
    for image_id, (prediction, target) in enumerate(zip(predictions, targets)):
        images.append({"id": image_id})
        for box, label in zip(target["boxes"], target["labels"]):
            w, h = xywh(box)[2:]
            annotations.append(
                dict(id=len(annotations) + 1, image_id=image_id, category_id=int(label), bbox=xywh(box), area=w * h, iscrowd=0)
            )
        for box, label, score in zip(prediction["boxes"], prediction["labels"], prediction["scores"]):
            detections.append(dict(image_id=image_id, category_id=int(label), bbox=xywh(box), score=float(score)))
    if not detections:
        return 0.0, 0.0
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        truth = COCO()
        truth.dataset = dict(images=images, annotations=annotations, categories=[{"id": i + 1} for i in range(len(CLASSES))])
        truth.createIndex()
        evaluation = COCOeval(truth, truth.loadRes(detections), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return float(evaluation.stats[0]), float(evaluation.stats[1])


class _Bar:
    """tqdm when it is installed, else a plain bar printed every tenth of the way."""

    def __init__(self, total: int, desc: str):
        try:
            from tqdm import tqdm

            self._tqdm = tqdm(total=total, desc=desc, file=sys.stdout, mininterval=1.0)
        except ImportError:
            self._tqdm = None
        self.total, self.desc, self.count = total, desc, 0

    def update(self, postfix: str) -> None:
        self.count += 1
        if self._tqdm is not None:
            self._tqdm.set_postfix_str(postfix, refresh=False)
            self._tqdm.update(1)
        elif self.count % max(1, self.total // 10) == 0 or self.count == self.total:
            filled = 30 * self.count // self.total
            print(f"{self.desc} [{'#' * filled}{'.' * (30 - filled)}] {self.count}/{self.total} {postfix}", flush=True)

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()


def build_model(backbone: str, upsampler: str, args) -> torch.nn.Module:
    return fcos_resnet50_fpn(
        len(CLASSES) + 1,
        backbone=backbone,
        upsampler=upsampler,
        image_size=args.image_size,
        layers=tuple(args.layers),
        out_channels=args.fpn_channels,
        score_thresh=0.05,  # low, for the precision-recall curve of mAP
    )


_SHORT = {"classification": "cls", "bbox_regression": "box", "bbox_ctrness": "ctr"}  # FCOS's losses


def train(model, data, steps: int, batch_size: int, lr: float, device: str, desc: str = "train", seed: int = 0):
    """AdamW with a linear warm-up and cosine decay; returns the summed loss of every step."""
    generator = torch.Generator().manual_seed(seed)
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, 0.5 * (1 + math.cos(math.pi * s / steps)))
    )
    history = []
    bar = _Bar(steps, desc)
    for _ in range(steps):
        batch = torch.randint(len(data), (batch_size,), generator=generator).tolist()
        images = [data[i][0].to(device) for i in batch]
        targets = [{k: v.to(device) for k, v in data[i][1].items()} for i in batch]
        losses = model(images, targets)
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        schedule.step()
        history.append(loss.item())
        bar.update(" ".join(f"{_SHORT.get(k, k)}={v.item():.3f}" for k, v in losses.items()) + f" sum={loss.item():.3f}")
    bar.close()
    return history


@torch.no_grad()
def evaluate(model, data, device: str, batch_size: int = 8) -> tuple[float, float]:
    model.to(device).eval()
    predictions = []
    for start in range(0, len(data), batch_size):
        images = [image.to(device) for image, _ in data[start : start + batch_size]]
        predictions += [{k: v.cpu() for k, v in p.items()} for p in model(images)]
    return coco_map(predictions, [target for _, target in data])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--train-images", type=int, default=800)
    parser.add_argument("--val-images", type=int, default=100)
    parser.add_argument("--fpn-channels", type=int, default=64, help="FPN and FCOS head width, a multiple of 32 (GroupNorm in the head; torchvision: 256)")
    parser.add_argument("--layers", type=int, nargs=4, default=[3, 4, 6, 3], help="bottlenecks per stage (ResNet-50)")
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=BACKBONES)
    parser.add_argument("--upsamplers", nargs="+", default=list(UPSAMPLERS), choices=UPSAMPLERS)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    train_data = make_dataset(args.train_images, args.image_size, seed=args.seed)
    val_data = make_dataset(args.val_images, args.image_size, seed=args.seed + 1)
    print(
        f"synthetic shapes: {len(train_data)} training / {len(val_data)} held-out images of "
        f"{args.image_size}x{args.image_size}, classes {CLASSES}; {args.steps} steps of {args.batch_size} "
        f"on {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    results = []
    for backbone in args.backbones:
        for upsampler in args.upsamplers:
            torch.manual_seed(args.seed)
            model = build_model(backbone, upsampler, args)
            name = f"{backbone} + FPN({upsampler})"
            start = time.perf_counter()
            history = train(model, train_data, args.steps, args.batch_size, args.lr, args.device, name, args.seed)
            seconds = time.perf_counter() - start
            ap, ap50 = evaluate(model, val_data, args.device)
            tail = max(1, len(history) // 10)
            first, last = sum(history[:tail]) / tail, sum(history[-tail:]) / tail
            print(f"{name}: loss {first:.3f} -> {last:.3f} (mean of first/last {tail} steps), mAP {ap:.3f}, AP50 {ap50:.3f}, {seconds:.0f} s")
            results.append((name, first, last, ap, ap50, seconds))
    print("\n| variant | loss first -> last | mAP@[.5:.95] | AP50 | train s |\n|---|---|---|---|---|")
    for name, first, last, ap, ap50, seconds in results:
        print(f"| {name} | {first:.3f} -> {last:.3f} | {ap:.3f} | {ap50:.3f} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
