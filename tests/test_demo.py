"""``python -m ddf_ops`` (``make demo``) with tiny settings, in a subprocess, and its options."""

import os
import subprocess
import sys

import pytest

from ddf_ops.demo import parse_args

pytestmark = pytest.mark.integration  # the demo, in subprocesses, not the kernels (test-fast leaves it out)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A one-bottleneck-per-stage ResNet at an odd image size: every part runs, in well under a
# minute once torch.compile's cache is warm (about one minute cold on 2 cores).
TINY = ["--batch-size", "2", "--image-size", "33", "--layers", "1", "1", "1", "1", "--repeats", "1"]


def run_demo(*options: str) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(
        [sys.executable, "-m", "ddf_ops", *options], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, f"demo failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_demo_smoke():
    out = run_demo(*TINY, "--skip-train")
    assert "all within 1e-10 of the reference" in out
    for model in ("ResNet-50", "DDF-ResNet-50", "ResNet-101", "DDF-ResNet-101"):
        assert f"\n   {model} " in out
    assert "compiled: max |diff| / max |eager|" in out and out.count("(same logits)") == 2
    assert "fresh process: ddf_ops imported: False" in out
    assert "DDF-ResNet-14 / ResNet-14 time, compiled:" in out
    assert "(e) training" not in out
    assert "FAIL" not in out and out.count("   ok   ") == 3


@pytest.mark.slow  # compiling a training step takes one to two minutes cold on 2 cores
def test_demo_training():
    # The default training batch and image size (the same compiled graph as `make demo`'s),
    # fewer steps.
    out = run_demo(*TINY, "--skip-timing", "--train-steps", "12")
    assert "(d) inference time" not in out
    assert "step  12/12" in out and "(falling;" in out
    assert "FAIL" not in out and out.count("   ok   ") == 4


def test_demo_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    for option in ("--device", "--batch-size", "--image-size", "--skip-train", "--skip-timing", "--train-steps"):
        assert option in help_text


@pytest.mark.parametrize(
    "options", [["--batch-size", "0"], ["--layers", "1", "1", "0", "1"], ["--train-batch-size", "1"]]
)
def test_demo_rejects_bad_options(options, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(options)
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_demo_defaults():
    args = parse_args([])
    assert (args.device, args.batch_size, args.image_size, args.layers) == ("cpu", 4, 224, (3, 4, 6, 3))
    assert not args.skip_train and not args.skip_timing
