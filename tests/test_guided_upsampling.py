"""examples/guided_upsampling.py at tiny sizes: the scenes, the models' shapes, a short
training run, and the whole example (PSNR table and PNG)."""

import importlib.util
import os

import pytest
import torch

from conftest import ROOT, import_test_dependency


def load_example():
    path = os.path.join(ROOT, "examples", "guided_upsampling.py")
    spec = importlib.util.spec_from_file_location("example_guided_upsampling", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


example = load_example()


def test_scenes_are_in_range_and_reproducible():
    images, depths = example.make_scenes(3, 32, torch.Generator().manual_seed(0))
    assert images.shape == (3, 3, 32, 32) and depths.shape == (3, 1, 32, 32)
    assert 0 <= images.min() and images.max() <= 1 and 0 <= depths.min() and depths.max() <= 1
    again = example.make_scenes(3, 32, torch.Generator().manual_seed(0))
    assert torch.equal(images, again[0]) and torch.equal(depths, again[1])


@pytest.mark.parametrize("kind", ["transposed", "ddf", "ddf_guided"])
def test_learned_upsamplers_shapes_and_a_few_steps(kind):
    """x4 from 8x8 to 32x32; four Adam steps on one batch lower the L1 loss (the example trains on MSE; either falls)."""
    torch.manual_seed(0)
    model = example.LearnedUpsampler(kind, scale=4, channels=8, guide_channels=4)
    images, depths = example.make_scenes(4, 32, torch.Generator().manual_seed(1))
    low = example.downsample(depths, 4)
    assert low.shape == (4, 1, 8, 8) and model(low, images).shape == (4, 1, 32, 32)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(5):
        loss = torch.nn.functional.l1_loss(model(low, images), depths)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses


def test_psnr():
    target = torch.zeros(2, 1, 4, 4)
    assert example.psnr(target + 0.1, target) == pytest.approx(torch.tensor([20.0, 20.0]))


@pytest.mark.integration
def test_example_runs_and_saves_the_figure(tmp_path, capsys):
    import_test_dependency("matplotlib")
    out = tmp_path / "figure.png"
    scores = example.main(f"--steps 2 --batch-size 2 --size 16 --held-out 4 --rows 2 --out {out}".split())
    assert list(scores) == list(example.METHODS)
    assert all(torch.isfinite(torch.tensor(v)) for v in scores.values())
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| DDF-Up guided |" in capsys.readouterr().out
