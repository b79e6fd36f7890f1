"""ddf_ops.models.load_official_checkpoint on synthetic checkpoints in each format."""

import argparse
import warnings

import pytest
import torch

from ddf_ops.models import ddf_resnet, load_official_checkpoint

pytestmark = pytest.mark.integration  # checkpoint loading of the models, not the kernels (test-fast leaves it out)

LAYERS = (1, 1, 1, 1)  # the smallest DDF-ResNet: the same module names, fast to build


def model(combine="mul", seed=0, **kwargs):
    torch.manual_seed(seed)
    m = ddf_resnet(LAYERS, combine, num_classes=10, zero_init_last=False, **kwargs)
    with torch.no_grad():  # running stats too, so that buffers differ between seeds
        for name, buffer in m.named_buffers():
            if buffer.is_floating_point():
                buffer.uniform_(0.5, 1.5)
    return m


def assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def timm_checkpoint(state_dict, model_name="ddf_mul_resnet50", args_as="namespace", **extra):
    """What timm's train.py (CheckpointSaver) saves."""
    args = {"model": model_name, "lr": 0.4, "epochs": 120}
    return {
        "epoch": 119,
        "arch": "resnet",
        "state_dict": state_dict,
        "optimizer": {"state": {}, "param_groups": []},
        "version": 2,
        "args": argparse.Namespace(**args) if args_as == "namespace" else args,
        "metric": 77.1,
        **extra,
    }


@pytest.fixture
def no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


@pytest.mark.parametrize("as_path", [True, False], ids=["path", "dict"])
@pytest.mark.parametrize("fmt", ["state_dict", "timm-namespace-args", "timm-dict-args", "module-prefix"])
def test_formats_load_exactly(fmt, as_path, tmp_path, no_warnings):
    source = model(seed=1)
    state = source.state_dict()
    checkpoint = {
        "state_dict": state,
        "timm-namespace-args": timm_checkpoint(state),
        "timm-dict-args": timm_checkpoint(state, args_as="dict"),
        "module-prefix": timm_checkpoint({f"module.{k}": v for k, v in state.items()}),
    }[fmt]
    if as_path:
        torch.save(checkpoint, tmp_path / "checkpoint.pth.tar")
        checkpoint = tmp_path / "checkpoint.pth.tar"
    target = model(seed=2)
    assert load_official_checkpoint(target, checkpoint) is target
    assert_same_state(target, source)


def test_ema_is_preferred_unless_use_ema_false(tmp_path):
    weights, ema = model(seed=1), model(seed=3)
    path = tmp_path / "checkpoint.pth.tar"
    torch.save(timm_checkpoint(weights.state_dict(), state_dict_ema=ema.state_dict()), path)
    assert_same_state(load_official_checkpoint(model(seed=2), path), ema)
    assert_same_state(load_official_checkpoint(model(seed=2), path, use_ema=False), weights)
    # Only an EMA, and use_ema=False: nothing to load, and the message says so.
    with pytest.raises(ValueError, match="no 'state_dict' entry.*pass use_ema=True"):
        load_official_checkpoint(model(), {"state_dict_ema": ema.state_dict()}, use_ema=False)


@pytest.mark.parametrize("args_as", ["namespace", "dict"])
def test_combine_mismatch_warns(args_as):
    add_checkpoint = timm_checkpoint(model("add", seed=1).state_dict(), "ddf_add_resnet50", args_as)
    target = model("mul")
    expected = r"trained as 'ddf_add_resnet50' \(combine='add'\) but the model uses combine='mul'"
    with pytest.warns(UserWarning, match=expected):
        load_official_checkpoint(target, add_checkpoint)
    assert_same_state(target, model("add", seed=1))  # it still loads: the keys are the same


def test_matching_combine_and_unnamed_checkpoints_do_not_warn(no_warnings):
    load_official_checkpoint(model("add"), timm_checkpoint(model("add", seed=1).state_dict(), "ddf_add_resnet101"))
    load_official_checkpoint(model("mul"), model("add", seed=1).state_dict())  # a raw state_dict names no model


def test_mismatched_keys_raise_a_clear_error():
    state = model(seed=1).state_dict()
    missing = {k: v for k, v in state.items() if k != "layer2.0.conv2.spatial_branch.0.weight"}
    with pytest.raises(RuntimeError, match=r"1 key missing from the checkpoint: layer2\.0\.conv2\.spatial"):
        load_official_checkpoint(model(), missing)
    with pytest.raises(RuntimeError, match=r"1 key unexpected in the checkpoint's 'state_dict': head\.weight"):
        load_official_checkpoint(model(), timm_checkpoint({**state, "head.weight": torch.zeros(1)}))
    with pytest.raises(RuntimeError, match=r"fc\.weight: checkpoint \(10, 2048\), model \(5, 2048\)"):
        load_official_checkpoint(ddf_resnet(LAYERS, num_classes=5), state)
    deeper = ddf_resnet((1, 2, 1, 1), num_classes=10)
    with pytest.raises(RuntimeError, match=r"keys missing from the checkpoint: layer2\.1\."):
        load_official_checkpoint(deeper, state)


def test_not_a_checkpoint():
    with pytest.raises(TypeError, match="must be a path, a state_dict or a timm checkpoint"):
        load_official_checkpoint(model(), [1, 2])
    with pytest.raises(TypeError, match=r"the checkpoint is not a state_dict: \['model'\] are not tensors"):
        load_official_checkpoint(model(), {"model": model().state_dict()})
