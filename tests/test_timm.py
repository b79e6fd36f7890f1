"""The DDF-ResNets through timm's registry (ddf_ops/timm.py); timm stays optional."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import import_test_dependency
from ddf_ops.models import ResNet
from ddf_ops.nn import DDFPack

pytestmark = pytest.mark.integration  # timm's registry, not the kernels (test-fast leaves it out)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = {
    "ddf_mul_resnet50": ("mul", 6),
    "ddf_add_resnet50": ("add", 6),
    "ddf_mul_resnet101": ("mul", 23),
    "ddf_add_resnet101": ("add", 23),
}
CHANNELS, REDUCTIONS = [64, 256, 512, 1024, 2048], [2, 4, 8, 16, 32]


@pytest.fixture(scope="module")
def timm():
    timm = import_test_dependency("timm")
    import ddf_ops.timm  # noqa: F401  (registers the models)

    return timm


@pytest.mark.parametrize("name", list(VARIANTS))
def test_create_model(timm, name):
    combine, layer3_blocks = VARIANTS[name]
    assert name in timm.list_models("ddf_*")
    model = timm.create_model(name, pretrained=False, num_classes=5).eval()
    assert isinstance(model, ResNet) and len(model.layer3) == layer3_blocks
    assert {m.combine for m in model.modules() if isinstance(m, DDFPack)} == {combine}
    assert model.num_classes == 5 and model.pretrained_cfg["interpolation"] == "bicubic"
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 5)
    assert torch.count_nonzero(model.layer1[0].bn3.weight) == 0  # zero_init_last by default


def test_keyword_arguments_pass_through(timm):
    model = timm.create_model("ddf_mul_resnet50", zero_init_last=False, num_classes=3)
    assert torch.all(model.layer1[0].bn3.weight == 1) and model.fc.out_features == 3
    with pytest.raises(ValueError, match="3-channel images, got in_chans=1"):
        timm.create_model("ddf_mul_resnet50", in_chans=1)
    config = timm.data.resolve_data_config({}, model=model)
    assert config["input_size"] == (3, 224, 224) and config["crop_pct"] == 0.875


@pytest.mark.parametrize("name", ["ddf_mul_resnet50", "ddf_add_resnet101"])
def test_features_only(timm, name):
    x = torch.randn(1, 3, 64, 64)
    torch.manual_seed(0)
    # zero_init_last=False: every residual branch, and so every DDF layer, shows in the features.
    backbone = timm.create_model(name, features_only=True, zero_init_last=False).eval()
    torch.manual_seed(0)
    model = timm.create_model(name, zero_init_last=False).eval()  # the same weights
    assert backbone.feature_info.channels() == CHANNELS and backbone.feature_info.reduction() == REDUCTIONS
    with torch.no_grad():
        features = backbone(x)
        stem = model.relu(model.bn1(model.conv1(x)))
        stages = [model.layer1(model.maxpool(stem))]
        for layer in (model.layer2, model.layer3, model.layer4):
            stages.append(layer(stages[-1]))
    assert [f.shape[1] for f in features] == CHANNELS
    assert [64 // f.shape[-1] for f in features] == REDUCTIONS
    for got, expected in zip(features, [stem, *stages]):
        torch.testing.assert_close(got, expected)


def test_features_only_out_indices(timm):
    backbone = timm.create_model("ddf_add_resnet50", features_only=True, out_indices=(2, 4)).eval()
    assert backbone.feature_info.channels() == [512, 2048]
    with torch.no_grad():
        assert [tuple(f.shape) for f in backbone(torch.randn(2, 3, 64, 64))] == [(2, 512, 8, 8), (2, 2048, 2, 2)]


def test_pretrained_from_a_local_file(timm, tmp_path):
    source = timm.create_model("ddf_add_resnet50")
    path = tmp_path / "weights.pth"
    torch.save(source.state_dict(), path)
    model = timm.create_model("ddf_add_resnet50", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    for (name, a), b in zip(source.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name


OPTIONAL = textwrap.dedent(
    """
    import sys
    import ddf_ops
    assert "timm" not in sys.modules and "ddf_ops.timm" not in sys.modules, sorted(sys.modules)
    sys.modules["timm"] = None  # timm absent: importing it raises ImportError
    try:
        import ddf_ops.timm
    except ImportError as error:
        assert "ddf_ops.timm needs timm" in str(error), error
    else:
        raise AssertionError("ddf_ops.timm imported without timm")
    print("OK")
    """
)


def test_import_ddf_ops_does_not_import_timm():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-c", OPTIONAL], capture_output=True, text=True, env=env, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "OK"
