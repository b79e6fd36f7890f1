"""Demo part (c): one model, three ways to run it (eager, torch.compile, torch.export ->
``.pt2`` -> a fresh process that never imports ddf_ops), and the same logits from each."""

import os
import subprocess
import sys
import tempfile

import torch
from torch import Tensor, nn

from .._library import library_path
from .progress import step

# What the fresh process runs: only the compiled library and torch.export.load, no ddf_ops.
_FRESH_PROCESS = """
import sys, torch
library, program, inputs, outputs, device = sys.argv[1:]
torch.ops.load_library(library)
module = torch.export.load(program).module()
with torch.no_grad():
    logits = module(torch.load(inputs).to(device))
torch.save(logits.cpu(), outputs)
print("fresh process: ddf_ops imported:", "ddf_ops" in sys.modules)
"""
# Float32 logits from differently fused/ordered kernels agree to a few ulps of the largest.
RELATIVE_TOLERANCE = 1e-4


def relative_error(actual: Tensor, expected: Tensor) -> float:
    return ((actual.cpu() - expected.cpu()).abs().max() / expected.abs().max().clamp_min(1e-30)).item()


def _report(what: str, actual: Tensor, expected: Tensor) -> bool:
    error = relative_error(actual, expected)
    ok = error < RELATIVE_TOLERANCE
    print(f"   {what}: max |diff| / max |eager| = {error:.1e} ({'same logits' if ok else 'MISMATCH'})")
    return ok


def run_in_fresh_process(program: str, images: Tensor, workdir: str) -> tuple[Tensor, str]:
    """Logits of the saved program on ``images`` from a new python, and what it printed."""
    inputs, outputs = os.path.join(workdir, "images.pt"), os.path.join(workdir, "logits.pt")
    torch.save(images.cpu(), inputs)
    command = [sys.executable, "-c", _FRESH_PROCESS, library_path(), program, inputs, outputs, str(images.device)]
    result = subprocess.run(command, cwd=workdir, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"the fresh process failed:\n{result.stderr}")
    return torch.load(outputs), result.stdout.strip()


def eager_compiled_exported(model: nn.Module, name: str, images: Tensor) -> tuple[nn.Module, bool]:
    """Runs ``model`` (eval mode) three ways; returns the compiled module (for timing) and
    whether every way gave the eager logits."""
    with torch.no_grad():
        eager = model(images)
        print(f"   eager: logits {tuple(eager.shape)}")
        compiled = torch.compile(model, fullgraph=True)
        with step(f"torch.compile(fullgraph=True) of {name}, first call (cached after the first run)"):
            compiled_logits = compiled(images)
        ok = _report("compiled", compiled_logits, eager)

        batch = torch.export.Dim("batch")
        with step("torch.export with a dynamic batch dimension"):
            program = torch.export.export(model, (images,), dynamic_shapes=({0: batch},))
        with tempfile.TemporaryDirectory() as workdir:
            path = os.path.join(workdir, "ddf_resnet.pt2")
            torch.export.save(program, path)
            print(f"   saved {os.path.getsize(path) / 2**20:.1f} MiB to {path}")
            # A batch size other than the exported example's shows the batch is dynamic.
            more_images = torch.cat([images, images[:1].flip(-1)])
            with step(f"loading it in a fresh python (batch {more_images.shape[0]})"):
                loaded_logits, message = run_in_fresh_process(path, more_images, workdir)
            print(f"   {message}")
        ok &= _report("exported, run in the fresh process", loaded_logits, model(more_images))
    return compiled, ok
