"""ddf_ops.models: parameter counts (exact for the plain ResNets, the model zoo's for the DDF
ones), torchvision's structure, the DDF swap, forward shapes and gradients."""

import pytest
import torch

from ddf_ops.models import (
    ResNet,
    count_parameters,
    ddf_resnet,
    ddf_resnet50,
    ddf_resnet101,
    resnet50,
    resnet101,
)
from ddf_ops.nn import DDFPack

pytestmark = pytest.mark.integration  # the models, not the kernels (test-fast leaves it out)

STAGES = {"layer1": (64, 3, 1), "layer2": (128, 4, 2), "layer3": (256, 6, 2), "layer4": (512, 3, 2)}


def on_meta(build, *args, **kwargs):
    with torch.device("meta"):  # shapes only: fast, no memory
        return build(*args, **kwargs)


# Exact counts: the plain ones are torchvision's; the DDF ones are what this code builds,
# which the official model zoo rounds to 16.8M and 28.1M.
PARAMETER_COUNTS = [
    (resnet50, {}, 25_557_032, None),
    (resnet101, {}, 44_549_160, None),
    (ddf_resnet50, {"combine": "mul"}, 16_843_748, 16.8),
    (ddf_resnet50, {"combine": "add"}, 16_843_748, 16.8),
    (ddf_resnet101, {"combine": "mul"}, 28_146_912, 28.1),
]


@pytest.mark.parametrize("build, kwargs, exact, zoo_millions", PARAMETER_COUNTS)
def test_parameter_counts(build, kwargs, exact, zoo_millions):
    count = count_parameters(on_meta(build, **kwargs))
    print(f"{build.__name__}({kwargs}): {count:,} parameters")
    assert count == exact
    if zoo_millions is not None:
        assert round(count / 1e6, 1) == zoo_millions


def test_parameter_count_on_a_real_model():
    assert count_parameters(resnet50()) == 25_557_032
    assert count_parameters(resnet50(num_classes=10)) == 25_557_032 - 2049 * 990


def torchvision_resnet50_state_shapes():
    """torchvision's resnet50().state_dict() names and shapes, spelled out from its definition."""
    shapes = {"conv1.weight": (64, 3, 7, 7)}

    def bn(prefix, n):
        shapes.update({f"{prefix}.weight": (n,), f"{prefix}.bias": (n,), f"{prefix}.running_mean": (n,)})
        shapes.update({f"{prefix}.running_var": (n,), f"{prefix}.num_batches_tracked": ()})

    bn("bn1", 64)
    in_channels = 64
    for stage, (planes, blocks, _) in STAGES.items():
        for b in range(blocks):
            p = f"{stage}.{b}"
            shapes[f"{p}.conv1.weight"] = (planes, in_channels, 1, 1)
            shapes[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            shapes[f"{p}.conv3.weight"] = (4 * planes, planes, 1, 1)
            for i, n in ((1, planes), (2, planes), (3, 4 * planes)):
                bn(f"{p}.bn{i}", n)
            if b == 0:
                shapes[f"{p}.downsample.0.weight"] = (4 * planes, in_channels, 1, 1)
                bn(f"{p}.downsample.1", 4 * planes)
            in_channels = 4 * planes
    shapes.update({"fc.weight": (1000, 2048), "fc.bias": (1000,)})
    return shapes


def test_resnet50_has_torchvisions_state_dict():
    assert {k: tuple(v.shape) for k, v in on_meta(resnet50).state_dict().items()} == torchvision_resnet50_state_shapes()


def test_resnet50_strides_are_torchvisions_v1_5():
    m = on_meta(resnet50)
    for stage, (_, _, stride) in STAGES.items():
        block = getattr(m, stage)[0]
        assert block.conv2.stride == (stride, stride) and block.conv1.stride == (1, 1)
        assert block.downsample[0].stride == (stride, stride)


@pytest.mark.parametrize("build", [ddf_resnet50, ddf_resnet101])
def test_ddf_resnet_swaps_every_3x3_conv_for_a_ddf_pack_with_its_stride(build):
    plain, ddf = on_meta({ddf_resnet50: resnet50, ddf_resnet101: resnet101}[build]), on_meta(build, combine="add")
    plain_blocks = {n: m for n, m in plain.named_modules() if n.endswith("conv2")}
    ddf_blocks = {n: m for n, m in ddf.named_modules() if n.endswith("conv2")}
    assert plain_blocks.keys() == ddf_blocks.keys() and len(ddf_blocks) == (16 if build is ddf_resnet50 else 33)
    for name, conv in plain_blocks.items():
        pack = ddf_blocks[name]
        assert isinstance(pack, DDFPack) and pack.combine == "add" and pack.kernel_size == 3
        assert (pack.in_channels, pack.stride) == (conv.in_channels, conv.stride[0])
    # Everything else is the plain ResNet.
    plain_rest = {k: v.shape for k, v in plain.state_dict().items() if ".conv2." not in k}
    ddf_rest = {k: v.shape for k, v in ddf.state_dict().items() if ".conv2." not in k}
    assert plain_rest == ddf_rest


@pytest.mark.parametrize("image_size", [64, 45])  # 45: odd sizes at every stride-2 layer
def test_ddf_resnet50_forward_shape_and_plain_agreement_of_shapes(image_size):
    x = torch.randn(2, 3, image_size, image_size)
    with torch.no_grad():
        ddf_features = ddf_resnet50(num_classes=10).eval().features(x)
        plain_features = resnet50(num_classes=10).eval().features(x)
    assert ddf_features.shape == plain_features.shape
    assert ddf_resnet50(num_classes=10).eval()(x).shape == (2, 10)


def test_ddf_resnet_gradients_reach_every_parameter():
    torch.manual_seed(0)
    # zero_init_last=False: with bn3.weight = 0 the first backward reaches no residual branch.
    m = ddf_resnet((1, 2, 1, 1), combine="mul", num_classes=5, zero_init_last=False).train()
    loss = torch.nn.functional.cross_entropy(m(torch.randn(4, 3, 33, 33)), torch.tensor([0, 1, 2, 4]))
    loss.backward()
    for name, parameter in m.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def bn_weights(model, name):
    return torch.cat([m.weight.detach() for n, m in model.named_modules() if n.endswith(name)])


@pytest.mark.parametrize("build", [ResNet, ddf_resnet])
def test_zero_init_last_is_the_default(build):
    """timm's (and the official DDF models') init: the last BN of every bottleneck at zero, so
    each block starts as ReLU(shortcut); the other BNs at one."""
    m = build((1, 2, 1, 1))
    assert m.zero_init_last and bn_weights(m, "bn3").numel() == 4 * (64 + 2 * 128 + 256 + 512)
    assert torch.count_nonzero(bn_weights(m, "bn3")) == 0
    assert torch.all(bn_weights(m, "bn2") == 1) and torch.all(bn_weights(m, "downsample.1") == 1)
    block, x = m.layer2[1].eval(), torch.randn(1, 512, 5, 5)
    torch.testing.assert_close(block(x), torch.relu(x))
    off = build((1, 2, 1, 1), zero_init_last=False)
    assert not off.zero_init_last and torch.all(bn_weights(off, "bn3") == 1)


@pytest.mark.parametrize("build", [ddf_resnet50, ddf_resnet101, resnet50, resnet101])
def test_builders_pass_zero_init_last(build):
    assert on_meta(build).zero_init_last and not on_meta(build, zero_init_last=False).zero_init_last


@pytest.mark.parametrize("value", [True, False])
def test_zero_init_residual_is_a_deprecated_alias(value):
    with pytest.warns(DeprecationWarning, match="zero_init_residual=.*is deprecated; use zero_init_last") as record:
        m = ddf_resnet((1, 1, 1, 1), zero_init_residual=value)
    assert record[0].filename == __file__  # names the caller, not ddf_ops' builders
    assert m.zero_init_last is value
    assert bool(torch.count_nonzero(bn_weights(m, "bn3")) == 0) is value


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: ddf_resnet50(combine="sub"), r"combine must be one of \('mul', 'add'\), got 'sub'"),
        (lambda: ResNet((3, 4, 6)), r"layers must be 4 positive block counts, got \(3, 4, 6\)"),
        (lambda: ResNet((3, 0, 6, 3)), r"layers must be 4 positive block counts"),
        (lambda: resnet50(num_classes=0), "num_classes must be an integer >= 1, got 0"),
    ],
)
def test_bad_model_arguments(build, message):
    with pytest.raises(ValueError, match=message):
        build()
