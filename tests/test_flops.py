"""FLOP counting of the ddf ops and of DDF models with torch.utils.flop_counter."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import ddf_ops
from ddf_ops.models import count_flops, ddf_resnet50, ddf_resnet101, resnet50, resnet101
from ddf_ops.nn import DDFPack

pytestmark = pytest.mark.integration  # FLOP counting of the op and the models, not the kernels (test-fast leaves it out)

DDF = torch.ops.ddf.ddf
DDF_BACKWARD = torch.ops.ddf.ddf_backward


def counted(fn):
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_flop_counts()["Global"]


@pytest.mark.parametrize("combine", ["mul", "add"])
@pytest.mark.parametrize("stride, Ho, Wo", [(1, 7, 9), (2, 4, 5), (3, 3, 3)])
def test_forward_formula(combine, stride, Ho, Wo):
    B, C, k, G = 2, 4, 3, 2
    x, cf, sf = torch.randn(B, C, 7, 9), torch.randn(B, C, k, k), torch.randn(B, G * k * k, Ho, Wo)
    counts = counted(lambda: ddf_ops.ddf(x, cf, sf, stride, 1, combine))
    # 3 FLOPs (combine, multiply, accumulate) per tap per output element.
    assert counts == {DDF: 3 * k * k * B * C * Ho * Wo}


@pytest.mark.parametrize(
    "needs_grad, gradients", [((True, False, False), 1), ((True, False, True), 2), ((True,) * 3, 3)]
)
def test_backward_formula_counts_each_requested_gradient(needs_grad, gradients):
    B, C, k, Ho, Wo = 2, 6, 5, 4, 5
    x, cf, sf = (
        torch.randn(shape, requires_grad=grad)
        for shape, grad in zip([(B, C, 8, 9), (B, C, k, k), (B, 3 * k * k, Ho, Wo)], needs_grad)
    )
    forward = 3 * k * k * B * C * Ho * Wo
    counts = counted(lambda: ddf_ops.ddf(x, cf, sf, 2, 2).sum().backward())
    assert counts[DDF] == forward
    assert counts[DDF_BACKWARD] == gradients * forward


def test_ddf_pack_count_is_its_convs_plus_the_op():
    B, C, H, W, k, G, s = 2, 16, 9, 11, 3, 2, 2
    Ho, Wo, hidden = 5, 6, int(C * 0.2)
    counts = counted(lambda: DDFPack(C, k, s, head=G)(torch.randn(B, C, H, W)))
    spatial_conv = 2 * B * C * G * k * k * Ho * Wo
    channel_convs = 2 * B * (C * hidden + hidden * C * k * k)
    assert counts[torch.ops.aten.convolution] == spatial_conv + channel_convs
    assert counts[DDF] == 3 * k * k * B * C * Ho * Wo


def test_ddf_resnet50_op_count_over_its_16_bottlenecks():
    with torch.device("meta"):
        model, images = ddf_resnet50().eval(), torch.empty(1, 3, 224, 224)
    counts = counted(lambda: model(images))
    # (blocks, channels, output side) per stage at 224x224; 27 = 3 FLOPs x 9 taps.
    stages = [(3, 64, 56), (4, 128, 28), (6, 256, 14), (3, 512, 7)]
    assert counts[DDF] == 27 * sum(n * c * h * h for n, c, h in stages)


# Paper (thop, multiply-accumulates): the counts must round to them within 0.1G, the
# paper's rounding plus the batch norm thop counts and FlopCounterMode does not.
@pytest.mark.parametrize(
    "build, paper_gmacs", [(resnet50, 4.1), (ddf_resnet50, 2.3), (resnet101, 7.8), (ddf_resnet101, 4.1)]
)
def test_model_flops_at_224_against_the_paper(build, paper_gmacs):
    gflops = count_flops(build, 224) / 1e9
    print(f"{build.__name__}: {gflops:.3f} GFLOPs = {gflops / 2:.3f} GMACs (paper {paper_gmacs})")
    assert abs(gflops / 2 - paper_gmacs) <= 0.1


def test_ddf_halves_the_resnets_cost():
    for plain, ddf in [(resnet50, ddf_resnet50), (resnet101, ddf_resnet101)]:
        assert 0.5 < count_flops(ddf) / count_flops(plain) < 0.6


def test_count_flops_on_meta_equals_a_real_run():
    # count_flops builds and runs on the meta device; a real run must count the same.
    build = lambda: DDFPack(3, stride=2, se_ratio=0.5)  # noqa: E731  (count_flops feeds 3-channel images)
    real = sum(counted(lambda: build()(torch.randn(1, 3, 33, 33))).values())
    assert count_flops(build, 33) == real > 0
