"""ddf_ops.models.detection: the FPN with DDF-Up against torchvision's, FCOS training, compile
and export of the backbone + FPN, and the detection example (examples/detection.py).

Small sizes throughout: ResNets with one bottleneck per stage (the code paths of ResNet-50's
3, 4, 6, 3), FPNs of 16-32 channels, 64-72 pixel images."""

import importlib.util
import os

import pytest
import torch
import torch.nn.functional as F

from conftest import ROOT, import_test_dependency

import_test_dependency("torchvision")
detection = pytest.importorskip("ddf_ops.models.detection")  # torchvision is there: a plain import

TINY = (1, 1, 1, 1)


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", os.path.join(ROOT, "examples", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def nearest_and_ddf_fpns(channels=32):
    """The same (DDF-)ResNet + FPN weights with both upsamplers, eval mode."""
    torch.manual_seed(0)
    nearest = detection.resnet_fpn("ddf_resnet50", "nearest", layers=TINY, out_channels=channels).eval()
    ddf = detection.resnet_fpn("ddf_resnet50", "ddf", layers=TINY, out_channels=channels).eval()
    result = ddf.load_state_dict(nearest.state_dict(), strict=False)
    assert not result.unexpected_keys
    assert all(key.startswith("fpn.upsamplers.") for key in result.missing_keys)
    return nearest, ddf


def test_both_upsamplers_start_from_the_same_weights_and_loss():
    """From one seed, FCOS with either upsampler has the same weights (but DDF-Up's) and loss."""
    example = load_example("detection")
    images, targets = map(list, zip(*example.make_dataset(2, 64, seed=0)))
    models, losses = [], []
    for upsampler in ("nearest", "ddf"):
        torch.manual_seed(0)
        models.append(detection.fcos_resnet50_fpn(4, "ddf_resnet50", upsampler, image_size=64, layers=TINY, out_channels=32))
        losses.append(models[-1].train()(images, targets))
    nearest, ddf = (dict(m.state_dict()) for m in models)
    assert set(ddf) - set(nearest) == {k for k in ddf if k.startswith("backbone.fpn.upsamplers.")}
    for key, value in nearest.items():
        assert torch.equal(ddf[key], value), key
    for name in losses[0]:
        assert torch.equal(losses[0][name], losses[1][name]), name


def test_nearest_fpn_is_torchvisions():
    from torchvision.ops import FeaturePyramidNetwork

    nearest, ddf = nearest_and_ddf_fpns()
    assert type(nearest.fpn) is FeaturePyramidNetwork
    assert isinstance(ddf.fpn, FeaturePyramidNetwork) and len(ddf.fpn.upsamplers) == 2


def test_ddf_up_fpn_equals_nearest_at_init_and_differs_where_it_upsamples():
    """At init every gate is zero, so P3-P7 equal torchvision's FPN's bit for bit (odd sizes:
    72 px gives C3-C5 of 9, 5, 3, so DDF-Up's 2x output is cropped). With the gates open, P3
    and P4 (the upsampled levels) change; P5, P6, P7 (no upsampling above them) do not."""
    nearest, ddf = nearest_and_ddf_fpns()
    x = torch.randn(2, 3, 72, 72)
    with torch.no_grad():
        expected = nearest(x)
        at_init = ddf(x)
        assert list(at_init) == ["0", "1", "2", "p6", "p7"]
        assert [tuple(v.shape) for v in at_init.values()] == [(2, 32, s, s) for s in (9, 5, 3, 2, 1)]
        for name in expected:
            assert torch.equal(at_init[name], expected[name]), name
        for upsampler in ddf.fpn.upsamplers:
            upsampler.gate.fill_(0.5)
        opened = ddf(x)
    for name in ("0", "1"):
        assert not torch.allclose(opened[name], expected[name]), name
    for name in ("2", "p6", "p7"):
        assert torch.equal(opened[name], expected[name]), name


@pytest.mark.parametrize("size", [(8, 8), (7, 8)])
def test_nearest_ddf_up_values(size):
    """gate 0: nearest upsampling exactly, to 2H or 2H - 1; gate g: nearest + g * DDFUpPack, cropped."""
    torch.manual_seed(0)
    module = detection.NearestDDFUp(8).eval()
    x = torch.randn(2, 8, 4, 4)
    nearest = F.interpolate(x, size=size, mode="nearest")
    with torch.no_grad():
        assert torch.equal(module(x, list(size)), nearest)
        module.gate.fill_(2.0)
        expected = nearest + 2.0 * module.ddf_up(x)[..., : size[0], : size[1]]
        torch.testing.assert_close(module(x, list(size)), expected)


def test_bad_arguments():
    with pytest.raises(ValueError, match="upsampler"):
        detection.resnet_fpn(upsampler="bilinear", layers=TINY)
    with pytest.raises(ValueError, match="backbone"):
        detection.resnet_fpn(backbone="resnet18", layers=TINY)


@pytest.mark.parametrize("backbone,upsampler", [("ddf_resnet50", "ddf"), ("resnet50", "nearest")])
def test_fcos_training_steps_decrease_the_loss(backbone, upsampler):
    """A few AdamW steps on one batch of synthetic shapes (the example's data) lower FCOS's loss."""
    example = load_example("detection")
    data = example.make_dataset(2, 64, seed=0)
    torch.manual_seed(0)
    model = detection.fcos_resnet50_fpn(4, backbone, upsampler, image_size=64, layers=TINY, out_channels=32).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    images, targets = [image for image, _ in data], [target for _, target in data]
    losses = []
    for _ in range(6):
        loss = sum(model(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses
    model.eval()
    with torch.no_grad():
        predictions = model(images)
    assert len(predictions) == 2 and set(predictions[0]) == {"boxes", "scores", "labels"}


def test_coco_map_of_perfect_and_no_predictions():
    import_test_dependency("pycocotools")
    example = load_example("detection")
    targets = [target for _, target in example.make_dataset(3, 64, seed=1)]
    perfect = [dict(boxes=t["boxes"], labels=t["labels"], scores=torch.ones(len(t["labels"]))) for t in targets]
    assert example.coco_map(perfect, targets) == pytest.approx((1.0, 1.0))
    empty = [dict(boxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.long), scores=torch.zeros(0)) for _ in targets]
    assert example.coco_map(empty, targets) == (0.0, 0.0)


def opened_ddf_fpn():
    """The DDF-Up FPN with its gates open (so DDF-Up's output reaches the result)."""
    _, ddf = nearest_and_ddf_fpns(channels=16)
    with torch.no_grad():
        for upsampler in ddf.fpn.upsamplers:
            upsampler.gate.fill_(0.5)
    return ddf


@pytest.mark.integration
def test_backbone_fpn_compiles_fullgraph():
    """Dynamo captures the whole backbone + FPN (fullgraph=True: no graph break) and AOTAutograd
    traces it through the op's fake kernels. The backend is aot_eager: Inductor's code
    generation for this graph took minutes of CI time, and the op under Inductor, DDFUpPack
    included, is tested in tests/test_compile.py and tests/test_nn.py."""
    model = opened_ddf_fpn()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")(x)
    assert list(compiled) == list(expected)
    for name in expected:
        torch.testing.assert_close(compiled[name], expected[name], rtol=1e-4, atol=1e-4)


@pytest.mark.integration
def test_backbone_fpn_exports():
    model = opened_ddf_fpn()
    x = torch.randn(1, 3, 64, 64)
    program = torch.export.export(model, (x,))
    ddf_nodes = [n for n in program.graph.nodes if n.op == "call_function" and "ddf.ddf" in str(n.target)]
    assert len(ddf_nodes) == 4 + 2 * 4  # one per bottleneck, four (2x2 branches) per DDF-Up
    with torch.no_grad():
        expected, exported = model(x), program.module()(x)
    for name in expected:
        torch.testing.assert_close(exported[name], expected[name], rtol=1e-5, atol=1e-5)


@pytest.mark.integration
def test_detection_example_runs(capsys):
    import_test_dependency("pycocotools")
    example = load_example("detection")
    example.main(
        "--steps 2 --train-images 4 --val-images 2 --fpn-channels 32 --layers 1 1 1 1 "
        "--backbones ddf_resnet50 --upsamplers nearest ddf".split()
    )
    out = capsys.readouterr().out
    assert "| ddf_resnet50 + FPN(nearest) |" in out and "| ddf_resnet50 + FPN(ddf) |" in out
