"""Finding and loading the compiled library, which registers the ddf ops with PyTorch."""

from __future__ import annotations

import glob
import os

import torch

from ._version import __version__

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def library_path() -> str:
    """The path of the compiled library (``ddf_ops/_C*.so``, or ``$DDF_OPS_LIBRARY`` if set).

    ``torch.ops.load_library(ddf_ops.library_path())`` alone gives the full op (eager,
    autograd, fake tensors, torch.compile, torch.export) in a process that never imports
    ``ddf_ops``, and C++ programs can link or dlopen the same file.

    >>> import ddf_ops, os
    >>> os.path.isfile(ddf_ops.library_path())
    True
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


def build_info() -> dict:
    """What the package's library was compiled against: ``{"version", "torch", "cuda",
    "cuda_archs"}`` (``cuda`` and ``cuda_archs`` are None for a CPU-only build; ``torch`` is
    None when the library was not built by setup.py, e.g. a CMake build given in
    ``$DDF_OPS_LIBRARY``).

    >>> import ddf_ops
    >>> info = ddf_ops.build_info()
    >>> info["version"] == ddf_ops.__version__
    True
    """
    try:
        from . import _build_info
    except ImportError:  # not built by setup.py (yet): nothing recorded
        return {"version": __version__, "torch": None, "cuda": None, "cuda_archs": None}
    return {
        "version": __version__,
        "torch": _build_info.TORCH_VERSION,
        "cuda": _build_info.CUDA_VERSION,
        "cuda_archs": _build_info.CUDA_ARCHS,
    }


def _release(version: str) -> str:
    return version.split("+")[0]


def check_torch_version(built: str | None = None, running: str | None = None) -> None:
    """Raises ImportError when the library was compiled against another torch release than
    the one imported: libtorch's C++ API changes between releases, so such a library fails to
    load with an undefined symbol, or loads and misbehaves. The local tag (+cu130, +cpu) may
    differ: it names the wheel's CUDA build, not another C++ API."""
    built = build_info()["torch"] if built is None else built
    running = torch.__version__ if running is None else running
    if built is not None and _release(built) != _release(running):
        raise ImportError(
            f"ddf_ops {__version__}: its compiled library was built against torch {built}, but this "
            f"process imported torch {running}. Install torch=={_release(built)}, or rebuild "
            "ddf_ops against this torch (pip install --no-build-isolation ., or make build)."
        )


def load_library() -> None:
    """Loads the library once (``import ddf_ops`` does); the ops then live in ``torch.ops.ddf``.

    >>> import torch, ddf_ops
    >>> ddf_ops.load_library()  # a second call does nothing
    >>> torch.ops.ddf.ddf.default.name()
    'ddf::ddf'
    """
    if not hasattr(torch.ops.ddf, "ddf"):
        check_torch_version()
        torch.ops.load_library(library_path())


def has_cuda_kernels() -> bool:
    """Whether the loaded library was built with CUDA kernels for every ddf op.

    >>> import ddf_ops
    >>> ddf_ops.has_cuda_kernels() in (True, False)
    True
    """
    return all(
        torch._C._dispatch_has_kernel_for_dispatch_key(f"ddf::{op}", "CUDA") for op in ("ddf", "ddf_backward")
    )
