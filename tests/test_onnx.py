"""ONNX export (ddf_ops.onnx): standard ONNX ops only, checked with onnxruntime against eager.

Each export costs seconds, so the DDFPack configurations share one exported graph (one module
running them all) and DDF-ResNet-50 is exported once.
"""

import itertools
import subprocess
import sys

import pytest
import torch
from torch import nn

import ddf_ops
from conftest import ROOT, import_test_dependency

onnx = import_test_dependency("onnx")
import_test_dependency("onnxscript")
ort = import_test_dependency("onnxruntime")
import ddf_ops.onnx  # noqa: E402

pytestmark = pytest.mark.integration  # the ONNX exporter and onnxruntime, not the kernels (test-fast leaves it out)

# (k, stride, dilation, head, combine): an orthogonal array of 8 of the 32 combinations (the
# columns a, b, c, a^b, a^c of the 2^3 design), so every pair of values of any two arguments
# occurs twice. (All 32 in one graph take the exporter's optimizer about 90 s.)
CONFIGS = [
    ((3, 5)[a], (1, 2)[b], (1, 2)[c], (1, 2)[a ^ b], ("mul", "add")[a ^ c])
    for a, b, c in itertools.product((0, 1), repeat=3)
]
C = 8
RTOL, ATOL = 1e-4, 1e-5


class AllConfigs(nn.Module):
    def __init__(self):
        super().__init__()
        self.packs = nn.ModuleList(
            ddf_ops.nn.DDFPack(C, kernel_size=k, stride=s, dilation=d, head=g, combine=c) for k, s, d, g, c in CONFIGS
        )

    def forward(self, x):
        return tuple(pack(x) for pack in self.packs)


def run_onnx(path, *inputs):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return session.run(None, {n: t.numpy() for n, t in zip(names, inputs)})


def standard_ops_only(path):
    model = onnx.load(str(path), load_external_data=False)
    domains = {node.domain for node in model.graph.node} | {f.domain for f in model.functions}
    assert domains <= {"", "ai.onnx"}, domains
    return {node.op_type for node in model.graph.node}


def test_ddf_pack_configs(tmp_path):
    torch.manual_seed(0)
    model = AllConfigs().eval()
    # Odd sizes, so the strided outputs round up (Ho = ceil(H / s)).
    x = torch.randn(2, C, 13, 11)
    path = tmp_path / "ddf_pack.onnx"
    torch.onnx.export(
        model,
        (x,),
        path,
        dynamo=True,
        custom_translation_table=ddf_ops.onnx.translation_table(),
        dynamic_shapes=({0: "batch"},),
        verbose=False,
    )
    op_types = standard_ops_only(path)
    assert {"Pad", "Slice"} <= op_types
    for batch in (2, 3):  # the traced batch and another one
        xb = torch.randn(batch, C, 13, 11)
        got = run_onnx(path, xb)
        with torch.no_grad():
            want = model(xb)
        assert len(got) == len(CONFIGS)
        for config, g, w in zip(CONFIGS, got, want):
            torch.testing.assert_close(torch.from_numpy(g), w, rtol=RTOL, atol=ATOL, msg=lambda m: f"{config}: {m}")


def test_dynamic_spatial_size(tmp_path):
    torch.manual_seed(0)
    model = ddf_ops.nn.DDFPack(C, kernel_size=3, stride=2, dilation=2, head=2).eval()
    path = tmp_path / "ddf_hw.onnx"
    ddf_ops.onnx.export(model, (torch.randn(2, C, 16, 16),), path, dynamic_shapes=({0: "b", 2: "h", 3: "w"},), verbose=False)
    for shape in [(1, C, 9, 7), (3, C, 20, 17)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            want = model(x)
        torch.testing.assert_close(torch.from_numpy(run_onnx(path, x)[0]), want, rtol=RTOL, atol=ATOL)


def test_ddf_resnet50(tmp_path):
    torch.manual_seed(0)
    model = ddf_ops.models.ddf_resnet50().eval()
    # Non-trivial BN statistics, so the exported BN is checked too.
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "ddf_resnet50.onnx"
    ddf_ops.onnx.export(model, (torch.randn(1, 3, 64, 64),), path, dynamic_shapes=({0: "batch"},), verbose=False)
    op_types = standard_ops_only(path)
    assert {"Pad", "Slice", "Conv"} <= op_types
    session_inputs = [torch.randn(1, 3, 64, 64), torch.randn(2, 3, 64, 64)]
    for x in session_inputs:
        with torch.no_grad():
            want = model(x)
        got = torch.from_numpy(run_onnx(path, x)[0])
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=RTOL, atol=RTOL * want.abs().max().item())


def test_translation_rejects_bad_combine():
    with pytest.raises(ValueError, match="combine"):
        ddf_ops.onnx._translate_ddf(None, None, None, 1, 1, "max")


def test_import_ddf_ops_does_not_import_onnx():
    code = "import sys, ddf_ops; print(sorted(m for m in ('onnx', 'onnxscript', 'onnxruntime') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
