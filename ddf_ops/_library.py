"""Finding and loading the compiled library, which registers the ddf ops with PyTorch."""

import glob
import os

import torch

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def library_path() -> str:
    """The path of the compiled library (``ddf_ops/_C*.so``, or ``$DDF_OPS_LIBRARY`` if set).

    ``torch.ops.load_library(ddf_ops.library_path())`` alone gives the full op (eager,
    autograd, fake tensors, torch.compile, torch.export) in a process that never imports
    ``ddf_ops``, and C++ programs can link or dlopen the same file.
    """
    override = os.environ.get("DDF_OPS_LIBRARY")
    if override:  # another build of the same library, e.g. the sanitized one of `make sanitize`
        if not os.path.isfile(override):
            raise ImportError(f"ddf_ops: DDF_OPS_LIBRARY={override!r} is not a file")
        return override
    found = sorted(glob.glob(os.path.join(_PACKAGE_DIR, "_C*.so")) + glob.glob(os.path.join(_PACKAGE_DIR, "_C*.pyd")))
    if not found:
        raise ImportError(
            f"ddf_ops: the compiled library _C*.so is missing from {_PACKAGE_DIR}; build it with "
            "`make build` (or `pip install --no-build-isolation .`)"
        )
    return found[0]


def load_library() -> None:
    """Loads the library once; the ops then live in ``torch.ops.ddf``."""
    if not hasattr(torch.ops.ddf, "ddf"):
        torch.ops.load_library(library_path())


def has_cuda_kernels() -> bool:
    """Whether the loaded library was built with CUDA kernels for every ddf op."""
    return all(
        torch._C._dispatch_has_kernel_for_dispatch_key(f"ddf::{op}", "CUDA") for op in ("ddf", "ddf_backward")
    )
