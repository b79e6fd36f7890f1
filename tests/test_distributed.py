"""Multi-process training (examples/train_ddp.py): DDP and FSDP2 on 2 CPU processes over gloo
(loopback only) give the parameters and gradients of one process on the same global batch.

float64, so the only differences are the order of the sums (measured: <= 6e-15 relative).
BatchNorm is frozen (eval mode): torch runs SyncBatchNorm on GPUs only (on CPU, DDP rejects it
and its forward raises), and per-process train-mode BN would see half the batch. That
``convert_sync_batchnorm`` handles DDF models is checked on its own below.
"""

import importlib.util
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
from torch import nn

import ddf_ops
from conftest import ROOT, require_test_capability

SCRIPT = os.path.join(ROOT, "examples", "train_ddp.py")
# A DDF-ResNet with one bottleneck per stage, 3 SGD steps (momentum) on 4 images of 32x32.
ARGS = ["--dtype", "float64", "--image-size", "32", "--global-batch", "4", "--steps", "3", "--bn", "frozen"]
WORLD_SIZE = 2

pytestmark = [
    pytest.mark.integration,  # training in subprocesses, not the kernels (test-fast leaves it out)
    require_test_capability(dist.is_available() and dist.is_gloo_available(), reason="torch.distributed with gloo not available"),
]


def load_example():
    spec = importlib.util.spec_from_file_location("train_ddp", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def single_process():
    env = {k: os.environ.pop(k) for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK") if k in os.environ}
    try:
        return load_example().main(ARGS)
    finally:
        os.environ.update(env)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(mode: str, tmp_path) -> list[dict]:
    """What torchrun --nproc_per_node=2 does, minus its agent: one process per rank, loopback rendezvous."""
    port = free_port()
    procs = []
    for rank in range(WORLD_SIZE):
        env = dict(
            os.environ,
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            WORLD_SIZE=str(WORLD_SIZE),
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            OMP_NUM_THREADS="1",
        )
        save = str(tmp_path / f"{mode}{{rank}}.pt")
        cmd = [sys.executable, SCRIPT, "--backend", "gloo", "--mode", mode, "--save", save, *ARGS]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=240)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for rank, (proc, out) in enumerate(zip(procs, outputs)):
        assert proc.returncode == 0, f"rank {rank} exited with {proc.returncode}:\n{out[-4000:]}"
    return [torch.load(tmp_path / f"{mode}{rank}.pt") for rank in range(WORLD_SIZE)]


def assert_same_training(result: dict, reference: dict):
    assert result["world_size"] == WORLD_SIZE and reference["world_size"] == 1
    torch.testing.assert_close(result["losses"], reference["losses"], rtol=1e-12, atol=0)
    for key in ("grads", "params"):
        assert result[key].keys() == reference[key].keys()
        for name, want in reference[key].items():
            torch.testing.assert_close(
                result[key][name], want, rtol=1e-10, atol=1e-12 * want.abs().max().item(), msg=lambda m: f"{key} {name}: {m}"
            )


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_match_one(mode, single_process, tmp_path):
    ranks = launch(mode, tmp_path)
    assert single_process["bn"] == "frozen" and len(single_process["losses"]) == 3
    # The model trained (the loss moved), so equal parameters are not just the initial ones.
    assert abs(single_process["losses"][-1] - single_process["losses"][0]) > 1e-3
    for result in ranks:
        assert_same_training(result, single_process)
    for name, p in ranks[0]["params"].items():  # the replicas are bitwise equal
        assert torch.equal(p, ranks[1]["params"][name]), name


def test_convert_sync_batchnorm_on_ddf_model():
    torch.manual_seed(0)
    model = ddf_ops.models.ddf_resnet((1, 1, 1, 1), num_classes=10)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = model.eval()(x)
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert sum(isinstance(m, nn.SyncBatchNorm) for m in converted.modules()) == n_bn > 0
    assert not any(type(m) is nn.BatchNorm2d for m in converted.modules())
    assert sum(isinstance(m, ddf_ops.nn.DDFPack) for m in converted.modules()) == 4
    assert converted.state_dict().keys() == state.keys()
    for k, v in converted.state_dict().items():
        assert torch.equal(v, state[k]), k
    # Without a process group SyncBatchNorm is BatchNorm: the same eval output.
    with torch.no_grad():
        torch.testing.assert_close(converted.eval()(x), want, rtol=0, atol=0)
