"""Builds ddf_ops/_C (the compiled library that *is* the ddf op) with torch.utils.cpp_extension.

    pip install --no-build-isolation .          # against the torch already installed
    python setup.py build_ext --inplace          # for development (what `make build` runs)

CUDA kernels are built when torch is a CUDA build and a CUDA toolkit is found, or when
DDF_CUDA=1 forces them; DDF_CUDA=0 builds a CPU-only library. TORCH_CUDA_ARCH_LIST picks
the GPU architectures (default below). The library holds no Python module: it registers the
ops when loaded with torch.ops.load_library, which `import ddf_ops` does.
"""

import glob
import os

import torch
from setuptools import find_packages, setup

# torch guesses CUDA_HOME from the nvcc on PATH, which may be a wrapper script outside the
# toolkit; the conventional toolkit location wins when nothing says otherwise.
if "CUDA_HOME" not in os.environ and "CUDA_PATH" not in os.environ and os.path.isfile("/usr/local/cuda/bin/nvcc"):
    os.environ["CUDA_HOME"] = "/usr/local/cuda"

from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CUDA_ARCHS = "8.0;8.6;8.9;9.0+PTX"


def build_with_cuda() -> bool:
    flag = os.environ.get("DDF_CUDA", "auto")
    if flag not in ("auto", "0", "1"):
        raise ValueError(f"DDF_CUDA must be auto, 0 or 1, got {flag!r}")
    if flag != "auto":
        return flag == "1"
    return torch.version.cuda is not None and CUDA_HOME is not None


def nvcc_threads() -> int:
    """MAX_JOBS (the build's parallelism, as ninja takes it) or the CPUs there are."""
    return int(os.environ.get("MAX_JOBS") or os.cpu_count() or 1)


def sources(pattern: str) -> list:
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern), recursive=True))


def torch_release() -> str:
    """This torch's release, without the local build tag: "2.14.1" for "2.14.1+cu130"."""
    return torch.__version__.split("+")[0]


def write_build_info(with_cuda: bool) -> None:
    """ddf_ops/_build_info.py (not in git): what the library is compiled against, which
    ddf_ops/_library.py checks before loading it (a library built against another torch
    release fails to load with an undefined C++ symbol, or worse, loads)."""
    path = os.path.join(ROOT, "ddf_ops", "_build_info.py")
    text = (
        '"""Written by setup.py when it builds the library: what the library was compiled against."""\n\n'
        f"TORCH_VERSION = {torch.__version__!r}\n"
        f"CUDA_VERSION = {(torch.version.cuda if with_cuda else None)!r}\n"
        f"CUDA_ARCHS = {(os.environ.get('TORCH_CUDA_ARCH_LIST') if with_cuda else None)!r}\n"
    )
    old = open(path).read() if os.path.isfile(path) else None
    if old != text:  # rewritten only when it changes: no spurious rebuilds of what depends on it
        with open(path, "w") as f:
            f.write(text)


def extension():
    cpp = sources("csrc/**/*.cpp") + sources("meta/*.cpp")
    # -fopenmp: at::parallel_for is an inline OpenMP region in torch's OpenMP builds (the
    # pip wheels); without the flag it silently runs on one thread. libgomp resolves to
    # the copy torch already loaded.
    # -g0: Python's own compile flags (sysconfig's CFLAGS) carry -g, and debug information
    # made the template-heavy files compile 1.3-2.2x slower (ddf_cpu.cpp 50 -> 38 s,
    # ddf_autograd.cpp 45 -> 20 s); GCC's code is the same with or without it.
    cxx_flags = ["-O3", "-g0", "-fvisibility=hidden", "-fopenmp"]
    link_flags = ["-fopenmp"]
    if not build_with_cuda():
        write_build_info(with_cuda=False)
        return CppExtension(
            "ddf_ops._C", cpp, extra_compile_args={"cxx": cxx_flags}, extra_link_args=link_flags, py_limited_api=True
        )
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)
    write_build_info(with_cuda=True)
    return CUDAExtension(
        "ddf_ops._C",
        cpp + sources("csrc/cuda/*.cu"),
        # --threads: nvcc compiles the architectures of its one translation unit in parallel;
        # without it the .cu file, one arch after another, was the build's long pole (6.3 of
        # its 6.6 minutes on 2 cores, the C++ files finishing beside it in 2.5).
        extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-lineinfo", f"--threads={nvcc_threads()}"]},
        extra_link_args=link_flags,
        py_limited_api=True,
    )


setup(
    packages=find_packages(include=["ddf_ops", "ddf_ops.*"]),
    # The library links against libtorch's C++ API, which changes between releases: the
    # wheel requires the release it was compiled against.
    install_requires=[f"torch=={torch_release()}"],
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    options={"bdist_wheel": {"py_limited_api": "cp39"}},
)
