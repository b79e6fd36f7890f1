"""ddf_ops.nn: FilterNorm, DDFPack and DDFUpPack against straightforward reimplementations
built on ddf_ops.reference.ddf, plus shapes, gradients, argument checks, compile and export."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.nn.init import calculate_gain

import ddf_ops
from ddf_ops.nn import DDFPack, DDFUpPack, FilterNorm

torch.manual_seed(0)


# ---- straightforward reimplementations (float64, one filter / branch at a time) ----------


def normalize_filters(filters, num_filters, k, scale):
    """Each group of k*k channels to zero mean and unit (Bessel) std, times ``scale``."""
    out = torch.empty_like(filters)
    for f in range(num_filters):
        taps = filters[:, f * k * k : (f + 1) * k * k]
        out[:, f * k * k : (f + 1) * k * k] = (taps - taps.mean(1, keepdim=True)) / (taps.std(1, keepdim=True) + 1e-10)
    return out * (scale.view(1, -1, 1, 1) if torch.is_tensor(scale) else scale)


def spatial_filter(convs, x, k, head, nonlinearity, stride=1):
    """``convs``: the 1x1 conv of the spatial branch, optionally preceded by a depth-wise conv."""
    for conv in convs:
        conv_stride = conv.stride if conv.groups > 1 else stride  # only the 1x1 conv carries the DDF's stride
        x = F.conv2d(x, conv.weight, conv.bias, conv_stride, conv.padding, 1, conv.groups)
    return normalize_filters(x, head, k, calculate_gain(nonlinearity) / k)


def channel_filter(branch, x, k):
    hidden = F.relu(F.conv2d(x.mean((2, 3), keepdim=True), branch[1].weight, branch[1].bias))
    filters = F.conv2d(hidden, branch[3].weight, branch[3].bias)
    return normalize_filters(filters, x.shape[1], k, branch[4].std).reshape(x.shape[0], x.shape[1], k, k)


def ddf_pack_expected(m, x):
    sf = spatial_filter([m.spatial_branch[0]], x, m.kernel_size, m.head, m.nonlinearity, m.stride)
    cf = channel_filter(m.channel_branch, x, m.kernel_size)
    return ddf_ops.reference.ddf(x, cf, sf, m.stride, m.dilation, m.combine)


def ddf_up_expected(m, x, joint_x=None):
    s, (B, C, H, W) = m.scale_factor, x.shape
    out = x.new_zeros(B, C, s * H, s * W)
    for i in range(s):
        for j in range(s):
            spatial, channel = m.spatial_branch[i * s + j], m.channel_branch[i * s + j]
            if joint_x is None:
                sf = spatial_filter([spatial[0], spatial[1][0]], x, m.kernel_size, m.head, m.nonlinearity)
            else:
                sf = spatial_filter([spatial[0]], joint_x, m.kernel_size, m.head, m.nonlinearity)
            cf = channel_filter(channel, x, m.kernel_size)
            # Branch i*s + j gives the output pixels at offset (i, j) of every s x s cell.
            out[:, :, i::s, j::s] = ddf_ops.reference.ddf(x, cf, sf, 1, m.dilation, m.combine)
    return out


def conv_output_size(x, k, stride, dilation):
    weight = x.new_zeros(x.shape[1], 1, k, k)
    return F.conv2d(x, weight, None, stride, dilation * (k - 1) // 2, dilation, x.shape[1]).shape


def assert_every_parameter_gets_a_gradient(module):
    for name, parameter in module.named_parameters():
        assert parameter.grad is not None, f"{name} got no gradient"
        assert parameter.grad.abs().sum() > 0, f"{name} got an all-zero gradient"


# ---- FilterNorm --------------------------------------------------------------------------


@pytest.mark.parametrize("num_filters, k, H, W", [(1, 3, 5, 4), (3, 5, 2, 3), (6, 3, 1, 1)])
@pytest.mark.parametrize("running_std", [False, True])
def test_filter_norm_matches_per_filter_normalization(num_filters, k, H, W, running_std):
    norm = FilterNorm(num_filters, k, "relu", running_std=running_std).double()
    filters = torch.randn(2, num_filters * k * k, H, W, dtype=torch.float64)
    scale = norm.std if running_std else math.sqrt(2) / k
    torch.testing.assert_close(norm(filters), normalize_filters(filters, num_filters, k, scale))


def test_filter_norm_gives_each_filter_zero_mean_and_the_gain_as_std():
    k = 5
    out = FilterNorm(2, k, "tanh")(torch.randn(3, 2 * k * k, 4, 4) * 7 + 3).unflatten(1, (2, k * k))
    torch.testing.assert_close(out.mean(2), torch.zeros(3, 2, 4, 4), atol=1e-6, rtol=0)
    torch.testing.assert_close(out.std(2), torch.full((3, 2, 4, 4), calculate_gain("tanh") / k))


def test_filter_norm_of_a_constant_filter_is_zero_not_nan():
    out = FilterNorm(1, 3)(torch.ones(1, 9, 2, 2))
    assert torch.equal(out, torch.zeros_like(out))


def test_filter_norm_learned_std_shape_and_reset():
    norm = FilterNorm(4, 3, running_std=True)
    assert norm.std.shape == (4 * 9,)
    before = norm.std.detach().clone()
    norm.reset_parameters()
    assert not torch.equal(before, norm.std)
    assert FilterNorm(4, 3).std is None and len(list(FilterNorm(4, 3).parameters())) == 0
    assert "running_std=True" in repr(norm)


# ---- DDFPack -----------------------------------------------------------------------------

PACK_CASES = [
    # C, H, W, k, stride, dilation, head, combine
    (8, 9, 11, 3, 1, 1, 1, "mul"),
    (8, 9, 11, 3, 2, 1, 2, "add"),  # odd sizes with stride 2, two heads
    (12, 7, 6, 5, 2, 2, 3, "mul"),
    (16, 5, 5, 3, 3, 1, 16, "add"),  # one head per channel
]


@pytest.mark.parametrize("C, H, W, k, stride, dilation, head, combine", PACK_CASES)
def test_ddf_pack_matches_reimplementation_and_conv_output_size(C, H, W, k, stride, dilation, head, combine):
    m = DDFPack(C, k, stride, dilation, head, combine=combine).double()
    x = torch.randn(2, C, H, W, dtype=torch.float64)
    out = m(x)
    assert out.shape == conv_output_size(x, k, stride, dilation)
    torch.testing.assert_close(out, ddf_pack_expected(m, x))


def test_ddf_pack_heads_matter():
    # With heads, the channels of each head use that head's spatial filter: setting head 1's
    # taps to zero must zero exactly its channels. (A model applying head 0 everywhere fails.)
    m = DDFPack(8, head=2)
    with torch.no_grad():
        m.spatial_branch[0].weight[9:] = 0
        m.spatial_branch[0].bias[9:] = 0
    out = m(torch.randn(2, 8, 6, 6))
    assert torch.equal(out[:, 4:], torch.zeros_like(out[:, 4:])) and out[:, :4].abs().sum() > 0


def test_ddf_pack_gradients_reach_every_parameter():
    torch.manual_seed(0)
    m = DDFPack(8, stride=2, head=2, se_ratio=0.5)
    x = torch.randn(2, 8, 7, 9, requires_grad=True)
    (m(x) * torch.randn(2, 8, 4, 5)).sum().backward()
    assert_every_parameter_gets_a_gradient(m)
    assert x.grad.abs().sum() > 0


def test_ddf_pack_parameters_and_names_follow_the_official_module():
    m = DDFPack(64, head=2)
    hidden = int(64 * 0.2)
    expected = {
        "spatial_branch.0.weight": (2 * 9, 64, 1, 1),
        "spatial_branch.0.bias": (2 * 9,),
        "channel_branch.1.weight": (hidden, 64, 1, 1),
        "channel_branch.1.bias": (hidden,),
        "channel_branch.3.weight": (64 * 9, hidden, 1, 1),
        "channel_branch.3.bias": (64 * 9,),
        "channel_branch.4.std": (64 * 9,),
    }
    assert {name: tuple(p.shape) for name, p in m.named_parameters()} == expected


def test_ddf_pack_reset_parameters_and_repr():
    m = DDFPack(8, kernel_size=5, stride=2, head=4, combine="add")
    before = [p.detach().clone() for p in m.parameters()]
    m.reset_parameters()
    assert all(not torch.equal(a, b) for a, b in zip(before, m.parameters()))
    assert "8, kernel_size=5, stride=2, dilation=1, head=4, se_ratio=0.2, nonlinearity='relu', combine='add'" in repr(m)


BAD_PACK_ARGS = [
    (dict(kernel_size=4), "kernel_size must be an odd integer >= 3, got 4"),
    (dict(kernel_size=1), "kernel_size must be an odd integer >= 3, got 1"),
    (dict(head=3), "head must divide in_channels=8, got head=3"),
    (dict(head=0), "head must be an integer >= 1, got 0"),
    (dict(stride=0), "stride must be an integer >= 1, got 0"),
    (dict(dilation=1.5), "dilation must be an integer >= 1, got 1.5"),
    (dict(se_ratio=0.1), "se_ratio must .* got se_ratio=0.1"),
    (dict(combine="max"), r"combine must be one of \('mul', 'add'\), got 'max'"),
    (dict(nonlinearity="gelu"), "nonlinearity must be one of .* got 'gelu'"),
    (dict(in_channels=0), "in_channels must be an integer >= 1, got 0"),
]


@pytest.mark.parametrize("kwargs, message", BAD_PACK_ARGS)
def test_ddf_pack_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DDFPack(**{"in_channels": 8, **kwargs})


# ---- DDFUpPack ---------------------------------------------------------------------------

UP_CASES = [
    # C, H, W, k, scale, dilation, head, dw_kernel_size, joint_channels, combine
    (8, 5, 7, 3, 2, 1, 1, 3, -1, "mul"),
    (8, 5, 7, 3, 2, 1, 2, 5, -1, "add"),  # dw_kernel_size > kernel_size (official: wrong padding)
    (8, 6, 5, 5, 3, 2, 4, 3, -1, "mul"),  # dw_kernel_size < kernel_size, scale 3
    (8, 5, 7, 3, 2, 1, 2, 3, 6, "add"),  # guidance with joint_channels != in_channels
    (4, 4, 3, 3, 2, 1, 1, 3, 4, "mul"),
]


@pytest.mark.parametrize("C, H, W, k, scale, dilation, head, dw, joint, combine", UP_CASES)
def test_ddf_up_pack_matches_reimplementation(C, H, W, k, scale, dilation, head, dw, joint, combine):
    m = DDFUpPack(C, k, scale, dilation, head, 0.5, "linear", dw, joint, combine).double()
    x = torch.randn(2, C, H, W, dtype=torch.float64)
    joint_x = torch.randn(2, joint, H, W, dtype=torch.float64) if joint > 0 else None
    out = m(x, joint_x)
    assert out.shape == (2, C, scale * H, scale * W)
    torch.testing.assert_close(out, ddf_up_expected(m, x, joint_x))


def test_ddf_up_pack_honours_combine():
    # Official bug (a): `head` was passed where `combine` belongs. Same weights, other combine:
    # the output must change, and each must match the reimplementation.
    mul = DDFUpPack(4, head=2, se_ratio=0.5, combine="mul").double()
    add = DDFUpPack(4, head=2, se_ratio=0.5, combine="add").double()
    add.load_state_dict(mul.state_dict())
    x = torch.randn(1, 4, 5, 5, dtype=torch.float64)
    assert not torch.allclose(mul(x), add(x))
    torch.testing.assert_close(add(x), ddf_up_expected(add, x))


def test_ddf_up_pack_guided_spatial_branches_read_joint_channels():
    # Official bug (b): the guided spatial branch was built on in_channels.
    m = DDFUpPack(8, joint_channels=3)
    assert all(branch[0].in_channels == 3 for branch in m.spatial_branch)
    assert m(torch.randn(2, 8, 4, 5), torch.randn(2, 3, 4, 5)).shape == (2, 8, 8, 10)


@pytest.mark.parametrize("dw_kernel_size, kernel_size", [(5, 3), (3, 5), (7, 3), (1, 3)])
def test_ddf_up_pack_depthwise_conv_pads_by_its_own_size(dw_kernel_size, kernel_size):
    # Official bug (c): the depth-wise conv padded by kernel_size // 2.
    m = DDFUpPack(8, kernel_size=kernel_size, dw_kernel_size=dw_kernel_size)
    assert all(branch[0].padding == (dw_kernel_size // 2,) * 2 for branch in m.spatial_branch)
    assert m(torch.randn(1, 8, 7, 6)).shape == (1, 8, 14, 12)


def test_ddf_up_pack_gradients_reach_every_parameter_and_the_guidance():
    # se_ratio=0.5: 4 hidden channels, so a channel branch's ReLU is not dead by chance.
    torch.manual_seed(0)
    for m, joint_x in [
        (DDFUpPack(8, head=2, se_ratio=0.5, joint_channels=6), torch.randn(2, 6, 5, 7, requires_grad=True)),
        (DDFUpPack(8, head=2, se_ratio=0.5, scale_factor=3), None),
    ]:
        x = torch.randn(2, 8, 5, 7, requires_grad=True)
        out = m(x, joint_x)
        (out * torch.randn_like(out)).sum().backward()
        assert_every_parameter_gets_a_gradient(m)
        assert x.grad.abs().sum() > 0 and (joint_x is None or joint_x.grad.abs().sum() > 0)


def test_ddf_up_pack_joint_input_must_match_the_construction():
    with pytest.raises(ValueError, match="joint_channels=6: forward needs joint_x"):
        DDFUpPack(8, joint_channels=6)(torch.randn(1, 8, 4, 4))
    with pytest.raises(ValueError, match="without guidance .* joint_x must be None"):
        DDFUpPack(8)(torch.randn(1, 8, 4, 4), torch.randn(1, 8, 4, 4))


def test_ddf_up_pack_structure_reset_and_repr():
    m = DDFUpPack(8, scale_factor=3, joint_channels=5, combine="add")
    assert len(m.spatial_branch) == len(m.channel_branch) == 9
    before = [p.detach().clone() for p in m.parameters()]
    m.reset_parameters()
    assert all(not torch.equal(a, b) for a, b in zip(before, m.parameters()))
    assert "scale_factor=3" in repr(m) and "joint_channels=5" in repr(m) and "combine='add'" in repr(m)


BAD_UP_ARGS = [
    (dict(kernel_size=2), "kernel_size must be an odd integer >= 3, got 2"),
    (dict(head=3), "head must divide in_channels=8, got head=3"),
    (dict(scale_factor=0), "scale_factor must be an integer >= 1, got 0"),
    (dict(dw_kernel_size=4), "dw_kernel_size must be an odd integer >= 1, got 4"),
    (dict(joint_channels=2.0), "joint_channels must be an integer, got 2.0"),
    (dict(combine=1), r"combine must be one of \('mul', 'add'\), got 1"),
]


@pytest.mark.parametrize("kwargs, message", BAD_UP_ARGS)
def test_ddf_up_pack_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DDFUpPack(**{"in_channels": 8, **kwargs})


# ---- torch.compile and torch.export ------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("dynamic", [False, True])
def test_ddf_pack_compiles_fullgraph_forward_and_backward(dynamic):
    # (With dynamic=True a new image size may still recompile: torch's fake CPU convolution
    # guards on sizes, the 1x1 strided conv of the spatial branch included.)
    m = DDFPack(8, stride=2, head=2)
    compiled = torch.compile(m, fullgraph=True, dynamic=dynamic)
    x = torch.randn(2, 8, 9, 11, requires_grad=True)
    out = compiled(x)
    torch.testing.assert_close(out, m(x), rtol=1e-4, atol=1e-5)
    grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, [x, *m.parameters()], grad_out)
    expected = torch.autograd.grad(m(x), [x, *m.parameters()], grad_out)
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.integration
def test_ddf_up_pack_compiles_fullgraph():
    m = DDFUpPack(8, head=2, joint_channels=4)
    x, joint_x = torch.randn(2, 8, 5, 7), torch.randn(2, 4, 5, 7)
    torch.testing.assert_close(torch.compile(m, fullgraph=True)(x, joint_x), m(x, joint_x), rtol=1e-4, atol=1e-5)


@pytest.mark.integration
@pytest.mark.parametrize(
    "module, inputs, other_inputs",
    [
        (DDFPack(8, stride=2, head=2), (torch.randn(2, 8, 9, 11),), (torch.randn(3, 8, 13, 6),)),
        (
            DDFUpPack(8, joint_channels=4),
            (torch.randn(2, 8, 5, 7), torch.randn(2, 4, 5, 7)),
            (torch.randn(3, 8, 6, 9), torch.randn(3, 4, 6, 9)),
        ),
    ],
    ids=["DDFPack", "DDFUpPack"],
)
def test_modules_export_with_dynamic_batch_and_size(module, inputs, other_inputs):
    # Sizes from 3: a stride-2 output side of 1 would take other memory-layout branches.
    batch = torch.export.Dim("batch")
    height, width = torch.export.Dim("height", min=3), torch.export.Dim("width", min=3)
    dims = {0: batch, 2: height, 3: width}
    program = torch.export.export(module, inputs, dynamic_shapes=tuple(dims for _ in inputs))
    assert any(node.target == torch.ops.ddf.ddf.default for node in program.graph.nodes)
    torch.testing.assert_close(program.module()(*other_inputs), module(*other_inputs))


@pytest.mark.integration
@pytest.mark.parametrize("stride", [1, 2])
def test_ddf_pack_dynamic_shapes_inference_compiles_once(stride):
    """Inference over three batch and image sizes: one compilation. Two PyTorch behaviours
    would recompile any CPU conv net whose image size changes (plain F.conv2d included), so
    they are kept out: Inductor's conv layout optimization (it turns conv outputs
    channels_last with strides fixed at the first size; switched off here) and, in
    training, Inductor's lowering of convolution_backward (it guards conv sizes to ints)."""
    torch._dynamo.reset()
    m = DDFPack(8, stride=stride, head=2)
    compiled = torch.compile(m, fullgraph=True, dynamic=True)
    with (
        torch._inductor.config.patch(layout_optimization=False),
        torch._dynamo.config.patch(error_on_recompile=True),
        torch.no_grad(),
    ):
        for B, H, W in [(2, 11, 13), (3, 17, 14), (5, 23, 19)]:
            x = torch.randn(B, 8, H, W)
            torch.testing.assert_close(compiled(x), m(x), rtol=1e-4, atol=1e-5)
