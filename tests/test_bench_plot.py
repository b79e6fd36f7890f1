"""benchmarks/plot.py: the PNG of the ratio tables that `make bench` writes (no timing here)."""

import struct
import sys

import pytest

from benchmarks import plot
from conftest import import_test_dependency

pytestmark = pytest.mark.integration  # the benchmark plot, not the kernels (test-fast leaves it out)

SHAPES = ["64@56²", "128@28²", "256@14²"]
FWD = [
    {plot.OURS: 1.0, "depthwise conv": 2.0, "reference (eager)": 10.0},
    {plot.OURS: 0.5, "depthwise conv": 0.25, "reference (eager)": 5.0},
    {plot.OURS: 0.3, "depthwise conv": 0.3, "reference (eager)": 3.0},
]
FWD_BWD = [{name: 3 * ms for name, ms in row.items()} for row in FWD]


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_writes_a_png(tmp_path):
    mpimg = import_test_dependency("matplotlib.image")
    path = tmp_path / "ratios.png"
    assert plot.plot_ratios(SHAPES, FWD, FWD_BWD, str(path), title="synthetic") == str(path)
    width, height = png_size(path)
    assert width > height > 200
    pixels = mpimg.imread(str(path))  # decodes
    assert pixels.shape[:2] == (height, width)
    assert pixels[..., :3].std() > 0.05  # something is drawn


def test_markdown_tables_round_trip():
    from benchmarks.bench_cpu import table
    from benchmarks.common import Case

    cases = [Case(8, 64, 56), Case(8, 128, 28), Case(8, 256, 14)]
    text = table(cases, FWD, "forward") + "\n\n" + table(cases, FWD_BWD, "forward + backward")
    tables = plot.tables_from_markdown(text)
    for title, want in (("forward", FWD), ("forward + backward", FWD_BWD)):
        shapes, times = tables[title]
        assert shapes == SHAPES
        assert times == [{name: pytest.approx(ms, abs=5e-4) for name, ms in row.items()} for row in want]


def test_table_without_ours_is_rejected(tmp_path):
    import_test_dependency("matplotlib")
    bad = [{k: v for k, v in row.items() if k != plot.OURS} for row in FWD]
    with pytest.raises(ValueError, match="ours"):
        plot.plot_ratios(SHAPES, bad, FWD_BWD, str(tmp_path / "x.png"))


def test_without_matplotlib_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    path = tmp_path / "ratios.png"
    assert plot.plot_or_explain(SHAPES, FWD, FWD_BWD, str(path)) is False
    assert "needs matplotlib" in capsys.readouterr().err
    assert not path.exists()
