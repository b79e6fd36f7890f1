"""The compiled library alone is the op: a process that never imports ddf_ops gets eager,
autograd, fake tensors, torch.compile and torch.export from torch.ops.load_library."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import ddf_ops

pytestmark = pytest.mark.integration  # the library loaded alone in fresh processes, not the kernels (test-fast leaves it out)

LIBRARY_ONLY_SCRIPT = textwrap.dedent(
    """
    import sys
    import torch
    torch.ops.load_library(sys.argv[1])
    assert "ddf_ops" not in sys.modules

    x = torch.randn(2, 4, 9, 8, dtype=torch.float64, requires_grad=True)
    cf = torch.randn(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    sf = torch.randn(2, 9, 5, 4, dtype=torch.float64, requires_grad=True)
    op = torch.ops.ddf.ddf

    # eager + autograd
    assert torch.autograd.gradcheck(lambda *a: op(*a, 2, 1, "mul"), (x, cf, sf))

    # fake tensors (the C++ meta kernel)
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode() as mode:
        fx, fcf, fsf = (mode.from_tensor(t) for t in (x, cf, sf))
        assert op(fx, fcf, fsf, 2).shape == (2, 4, 5, 4)

    # torch.compile, forward and backward
    compiled = torch.compile(lambda *a: op(*a, 2).sum(), fullgraph=True, dynamic=True)
    compiled(x, cf, sf).backward()
    expected = torch.autograd.grad(op(x, cf, sf, 2).sum(), (x,))[0]
    assert torch.allclose(x.grad, expected)

    # torch.export
    class M(torch.nn.Module):
        def forward(self, a, b, c):
            return op(a, b, c, 2)
    ep = torch.export.export(M(), (x.detach(), cf.detach(), sf.detach()))
    assert torch.equal(ep.module()(x, cf, sf), op(x, cf, sf, 2))
    print("OK")
    """
)


def test_library_alone_gives_the_full_op():
    result = subprocess.run(
        [sys.executable, "-c", LIBRARY_ONLY_SCRIPT, ddf_ops.library_path()],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": ""},
        cwd="/",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("OK")


def test_library_path_is_the_loaded_library():
    path = ddf_ops.library_path()
    assert os.path.isfile(path) and os.path.basename(path).startswith("_C")
    assert torch.ops.ddf.ddf.default._schema.name == "ddf::ddf"


def test_registered_kernels():
    for op in ("ddf", "ddf_backward"):
        for key in ("CPU", "Meta", "Autograd"):
            assert torch._C._dispatch_has_kernel_for_dispatch_key(f"ddf::{op}", key), (op, key)
    for key in ("AutocastCPU", "AutocastCUDA"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key("ddf::ddf", key), key


def built_with_cuda() -> bool:
    """Whether this build was meant to have CUDA kernels: DDF_CUDA forces the answer;
    otherwise setup.py builds them whenever torch is a CUDA build and nvcc exists."""
    flag = os.environ.get("DDF_CUDA", "auto")
    if flag != "auto":
        return flag == "1"
    from torch.utils.cpp_extension import CUDA_HOME

    return torch.version.cuda is not None and CUDA_HOME is not None


@pytest.mark.cuda  # runs in CI too: it needs the build, not a GPU
@pytest.mark.skipif(not built_with_cuda(), reason="CPU-only build (no CUDA toolkit or CPU build of torch)")
def test_cuda_build_has_cuda_kernels_for_every_op():
    assert ddf_ops.has_cuda_kernels()
    for op in ("ddf", "ddf_backward"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"ddf::{op}", "CUDA"), op
