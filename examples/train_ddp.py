"""Data-parallel training of a DDF-ResNet with torch.distributed: DDP or FSDP2, NCCL or gloo.

    # 2 processes on this machine, CPU (gloo):
    torchrun --nproc_per_node=2 examples/train_ddp.py --backend gloo
    # one process per GPU, 8 GPUs per node, 2 nodes (NCCL, the default when CUDA is there):
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=$HOST:29500 \\
        examples/train_ddp.py --layers 3 4 6 3 --image-size 224 --global-batch 256 --steps 100
    # without torchrun: one process, no process group (the single-process run to compare with)
    python examples/train_ddp.py

Synthetic data (seeded: every run sees the same global batches); each process takes its own
1/world_size of each global batch. ``--mode fsdp`` shards the parameters with FSDP2
(``torch.distributed.fsdp.fully_shard`` on every bottleneck and the root) instead of
replicating them (DDP).

BatchNorm: ``--bn sync`` turns the BN layers into ``nn.SyncBatchNorm``
(``convert_sync_batchnorm``), so with several processes the statistics are those of the global
batch, as in one process. torch supports SyncBatchNorm on GPUs only: on CPU, DDP refuses it
(``ValueError: SyncBatchNorm layers only work with GPU modules``) and its forward raises
(``ValueError: SyncBatchNorm expected input tensor to be on GPU or XPU or privateuseone``).
``--bn frozen`` keeps plain BN in eval mode (fixed running statistics, as when fine-tuning),
which is exact on any device. ``--bn auto`` (the default): sync on CUDA, frozen on CPU.
"""

import argparse
import os
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # an in-place build

import ddf_ops  # noqa: E402
from ddf_ops.models import Bottleneck, ddf_resnet  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=("nccl", "gloo"), default="nccl" if torch.cuda.is_available() else "gloo")
    parser.add_argument("--mode", choices=("ddp", "fsdp"), default="ddp")
    parser.add_argument("--layers", type=int, nargs=4, default=(1, 1, 1, 1), help="bottlenecks per stage; 3 4 6 3: DDF-ResNet-50")
    parser.add_argument("--combine", choices=("mul", "add"), default="mul")
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--global-batch", type=int, default=8, help="images per step over all processes")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--bn", choices=("auto", "sync", "frozen"), default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", help="torch.save the losses, final parameters and last gradients here ({rank} is replaced)")
    return parser.parse_args(argv)


def global_batch(args, step: int, dtype: torch.dtype):
    g = torch.Generator().manual_seed(args.seed * 1000 + step)
    images = torch.randn(args.global_batch, 3, args.image_size, args.image_size, generator=g, dtype=torch.float64)
    labels = torch.randint(args.num_classes, (args.global_batch,), generator=g)
    return images.to(dtype), labels


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor on the CPU, also for a sharded FSDP2 (DTensor) parameter or gradient."""
    return (t.full_tensor() if hasattr(t, "full_tensor") else t).detach().cpu().clone()


def main(argv=None) -> dict:
    args = parse_args(argv)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    distributed = world_size > 1
    if args.backend == "nccl":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if distributed:
        dist.init_process_group(args.backend)
    if args.global_batch % world_size:
        raise ValueError(f"--global-batch {args.global_batch} is not divisible by {world_size} processes")
    bn = args.bn if args.bn != "auto" else ("sync" if device.type == "cuda" else "frozen")
    if bn == "sync" and device.type != "cuda":
        raise ValueError("--bn sync needs CUDA: torch's SyncBatchNorm does not run on CPU; use --bn frozen")
    dtype = getattr(torch, args.dtype)

    torch.manual_seed(args.seed)  # the same initial model in every process
    model = ddf_resnet(tuple(args.layers), args.combine, args.num_classes)
    if bn == "sync":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(device, dtype).train()
    if bn == "frozen":
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
    if distributed and args.mode == "ddp":
        wrapped = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    elif distributed:
        from torch.distributed.fsdp import fully_shard

        for module in model.modules():
            if isinstance(module, Bottleneck):
                fully_shard(module)
        wrapped = fully_shard(model)
    else:
        wrapped = model
    optimizer = torch.optim.SGD(wrapped.parameters(), lr=args.lr, momentum=args.momentum)

    local = args.global_batch // world_size
    losses = []
    for step in range(args.steps):
        images, labels = global_batch(args, step, dtype)
        images, labels = images[rank * local : (rank + 1) * local].to(device), labels[rank * local : (rank + 1) * local].to(device)
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(wrapped(images), labels)
        loss.backward()
        optimizer.step()
        mean_loss = loss.detach().clone()
        if distributed:
            dist.all_reduce(mean_loss)
            mean_loss /= world_size
        losses.append(mean_loss.item())
        if rank == 0:
            print(f"step {step}: loss {losses[-1]:.6f}", flush=True)

    result = {
        "losses": losses,
        "params": {name: full(p) for name, p in model.named_parameters()},
        "grads": {name: full(p.grad) for name, p in model.named_parameters()},  # of the last step
        "sync_bn_layers": sum(isinstance(m, nn.SyncBatchNorm) for m in model.modules()),
        "bn": bn,
        "world_size": world_size,
    }
    if args.save:
        torch.save(result, args.save.format(rank=rank))
    if distributed:
        dist.destroy_process_group()
    if rank == 0:
        print(f"{args.mode if distributed else 'single process'}, {world_size} x {args.backend} on {device.type}, "
              f"BN {bn}, ddf_ops {ddf_ops.__version__}: done", flush=True)  # fmt: skip
    return result


if __name__ == "__main__":
    main()
