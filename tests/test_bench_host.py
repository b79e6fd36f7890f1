"""benchmarks/bench_host.py runs and prints its table (a smoke test: times are not asserted)."""

import sys

import torch

from benchmarks import bench_host


def test_bench_host_prints_both_ops(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["bench_host", "--min-run-time", "0.01"])
    threads = torch.get_num_threads()
    try:
        bench_host.main()  # sets one thread
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "| ddf (ours) |" in out and "| depthwise conv |" in out, out
