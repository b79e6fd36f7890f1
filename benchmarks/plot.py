"""Plot of the benchmark's ratio tables: ours / each alternative, per shape, forward and
forward+backward (bars below 1: ddf is faster than that alternative).

    python -m benchmarks.plot --from-results benchmarks/RESULTS.md [--run 1] [-o benchmarks/cpu_ratios.png]

``python -m benchmarks.bench_cpu`` calls :func:`plot_ratios` after its tables. matplotlib is
optional (``pip install matplotlib``); without it the plot is skipped with a message.
"""

import argparse
import os
import re
from typing import Dict, List, Sequence

OURS = "ddf (ours)"
DEFAULT_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cpu_ratios.png")

Times = List[Dict[str, float]]  # per shape: name -> ms, OURS among the names


class MatplotlibMissing(RuntimeError):
    pass


def _pyplot():
    try:
        import matplotlib
    except ImportError as e:
        raise MatplotlibMissing(
            "the benchmark plot needs matplotlib (pip install matplotlib, or ddf_ops[bench]); tables only"
        ) from e
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def plot_ratios(shapes: Sequence[str], forward: Times, forward_backward: Times, path: str, title: str = "") -> str:
    """Writes a PNG with one panel per table (forward, forward+backward): per shape a bar per
    alternative, height ``ours ms / alternative ms`` on a log axis, a line at 1. Returns ``path``."""
    plt = _pyplot()
    panels = [("forward", forward), ("forward + backward", forward_backward)]
    for name, times in panels:
        if len(times) != len(shapes) or any(OURS not in t for t in times):
            raise ValueError(f"{name}: need one {{name: ms}} per shape, each with {OURS!r}")
    alternatives = [n for n in forward[0] if n != OURS]
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.8), sharey=True)
    width = 0.8 / len(alternatives)
    for ax, (name, times) in zip(axes, panels):
        for a, alt in enumerate(alternatives):
            ratios = [t[OURS] / t[alt] for t in times]
            xs = [i + (a - (len(alternatives) - 1) / 2) * width for i in range(len(shapes))]
            bars = ax.bar(xs, ratios, width, label=f"ours / {alt}")
            ax.bar_label(bars, labels=[f"{r:.2f}" for r in ratios], fontsize=6, rotation=90, padding=2)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")
        # "64@56² channels_last" on two lines: one line per label overlapped its neighbours.
        ax.set_xticks(range(len(shapes)), [s.replace(" ", "\n") for s in shapes], fontsize=7)
        ax.set_xlabel("channels @ size (ResNet-50 stages)")
        ax.set_title(name)
        ax.grid(axis="y", which="both", alpha=0.3)
    low, high = axes[0].get_ylim()
    axes[0].set_ylim(low, high * 1.8)  # room for the labels above the bars
    axes[0].set_ylabel("time ratio, ours / alternative (< 1: ddf faster)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(alternatives), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)
    return path


def plot_or_explain(shapes, forward: Times, forward_backward: Times, path: str, title: str = "") -> bool:
    """:func:`plot_ratios`, or a message on stderr when matplotlib is missing (the benchmark goes on)."""
    import sys

    try:
        plot_ratios(shapes, forward, forward_backward, path, title)
    except MatplotlibMissing as e:
        print(f"plot skipped: {e}", file=sys.stderr)
        return False
    print(f"plot: {path}", file=sys.stderr)
    return True


def tables_from_markdown(text: str) -> Dict[str, tuple]:
    """The ``**forward**`` / ``**forward + backward**`` tables that follow each other in ``text``
    (bench_cpu's output, or a run of RESULTS.md), as ``{title: (shapes, times)}`` (the ms columns)."""
    tables: Dict[str, tuple] = {}
    for match in re.finditer(r"\*\*(forward(?: \+ backward)?)\*\*\n\n?((?:\|.*\n?)+)", text):
        title, lines = match.group(1), [ln for ln in match.group(2).strip().splitlines()]
        header = [c.strip() for c in lines[0].strip("|").split("|")]
        columns = {i: h[: -len(" ms")] for i, h in enumerate(header) if h.endswith(" ms")}
        shapes, times = [], []
        for line in lines[2:]:
            cells = [c.strip() for c in line.strip("|").split("|")]
            shapes.append(cells[0])
            times.append({name: float(cells[i]) for i, name in columns.items()})
        if title in tables:
            break  # the next run
        tables[title] = (shapes, times)
    return tables


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from-results", required=True, help="a markdown file with bench_cpu's tables")
    parser.add_argument("--run", type=int, default=1, help="which '### Run N' section (RESULTS.md); 0: the first tables")
    parser.add_argument("-o", "--output", default=DEFAULT_PATH)
    args = parser.parse_args()
    text = open(args.from_results, encoding="utf-8").read()
    title = os.path.basename(args.from_results)
    if args.run:
        start = text.index(f"### Run {args.run}")
        section = text.rfind("\n## ", 0, start)  # the machine's heading above the run
        if section >= 0:
            title += ": " + text[section:].split("\n")[1].lstrip("# ")
        text = text[start:]
        title += ", " + text.split("\n")[0].lstrip("# ").replace("`", "")
    tables = tables_from_markdown(text)
    (shapes, fwd), (_, fwd_bwd) = tables["forward"], tables["forward + backward"]
    plot_ratios(shapes, fwd, fwd_bwd, args.output, title)
    print(args.output)


if __name__ == "__main__":
    main()
