"""The package's metadata and entry points: one version source, the torch-version check that
guards the compiled library, and torch.hub (hubconf.py). The wheel itself is built, installed
into a fresh venv and used from outside the checkout by `make wheel-check` (CI)."""

import os
import re
import sys

import pytest
import torch

import ddf_ops
from ddf_ops import _library

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read(name):
    with open(os.path.join(ROOT, name)) as f:
        return f.read()


def test_version_has_one_source():
    from ddf_ops._version import __version__

    assert ddf_ops.__version__ == __version__
    assert re.fullmatch(r"\d+\.\d+\.\d+", __version__)
    pyproject = read("pyproject.toml")
    assert re.search(r'^dynamic = \[.*"version".*\]', pyproject, re.M)
    assert 'version = { attr = "ddf_ops._version.__version__" }' in pyproject
    # CMake parses the same file; no other file spells the version out.
    cmake = read("CMakeLists.txt")
    assert "ddf_ops/_version.py" in cmake and "project(ddf_ops VERSION ${DDF_VERSION}" in cmake
    for name in ("pyproject.toml", "CMakeLists.txt", "setup.py", "ddf_ops/__init__.py"):
        assert __version__ not in read(name), f"{name} repeats the version {__version__}"


def test_build_info_names_this_torch():
    info = ddf_ops.build_info()
    assert info["version"] == ddf_ops.__version__
    if info["torch"] is None:
        pytest.skip("the library was not built by setup.py (no ddf_ops/_build_info.py)")
    assert info["torch"].split("+")[0] == torch.__version__.split("+")[0]
    if not os.environ.get("DDF_OPS_LIBRARY"):  # setup.py's own library: its record is about it
        assert (info["cuda"] is not None) == ddf_ops.has_cuda_kernels()


def test_another_torch_release_is_a_clear_error():
    with pytest.raises(ImportError, match=r"built against torch 2\.13\.0, but this process imported torch 2\.14\.1\b.*"
                       r"Install torch==2\.13\.0, or rebuild"):
        _library.check_torch_version(built="2.13.0", running="2.14.1+cu130")


def test_local_build_tags_may_differ():
    _library.check_torch_version(built="2.14.1+cu130", running="2.14.1+cpu")
    _library.check_torch_version(built="2.14.1", running="2.14.1")


def test_the_check_runs_before_the_library_loads(tmp_path):
    # A fresh process whose build info names another release: import fails with the message,
    # not with the loader's undefined-symbol error.
    import subprocess

    code = (
        "import sys, types; info = types.ModuleType('ddf_ops._build_info'); "
        "info.TORCH_VERSION = '1.0.0'; info.CUDA_VERSION = None; info.CUDA_ARCHS = None; "
        "sys.modules['ddf_ops._build_info'] = info\n"
        "try:\n    import ddf_ops\nexcept ImportError as e:\n    print('ERROR', e)\n"
        "import torch; print('LOADED', hasattr(torch.ops.ddf, 'ddf'))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "ERROR ddf_ops" in out and "built against torch 1.0.0" in out, out
    assert "LOADED False" in out, out


@pytest.mark.integration
def test_torch_hub_loads_the_models(tmp_path):
    model = torch.hub.load(ROOT, "ddf_resnet50", source="local", num_classes=7)
    assert isinstance(model, ddf_ops.models.ResNet) and model.fc.out_features == 7
    # The checkpoint argument goes through load_official_checkpoint: a timm-style file with
    # DistributedDataParallel prefixes and an EMA copy loads its EMA weights.
    source = ddf_ops.models.ddf_resnet50(combine="add", num_classes=7)
    ema = {f"module.{k}": v + 1 if v.is_floating_point() else v for k, v in source.state_dict().items()}
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": source.state_dict(), "state_dict_ema": ema}, path)
    loaded = torch.hub.load(ROOT, "ddf_resnet50", source="local", combine="add", checkpoint=str(path), num_classes=7)
    for name, value in loaded.state_dict().items():
        torch.testing.assert_close(value, ema[f"module.{name}"], rtol=0, atol=0)
