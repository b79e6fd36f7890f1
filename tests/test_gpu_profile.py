"""tools/gpu_profile.py --summarize: Nsight Compute's --csv rows (captured on an H200,
2026-12-04, cut down) to a table of launches, with the calls the script made."""

from tools.gpu_profile import summarize

KERNEL = "void tiled::tiled_forward_kernel<float, 0, 3, 1>(const T1 *, const T1 *, Strides4, const T1 *, T1 *, tiled::TiledGeometry)"
HEADER = '"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size","Grid Size","Device","CC","Section Name","Metric Name","Metric Unit","Metric Value"'


def row(launch, metric, unit, value):
    return f'"{launch}","2301","python3.12","127.0.0.1","{KERNEL}","1","7","(32, 8, 1)","(14, 2, 64)","0","9.0","Command line profiler metrics","{metric}","{unit}","{value}"'


LOG = [
    "==PROF== Connected to process 2301 (/usr/bin/python3.12)",
    "call: forward nchw torch.float32 64@56² B=64: tiled",
    "==PROF== Disconnected from process 2301",
    HEADER,
    row(0, "dram__bytes_read.sum", "byte", "58,711,296"),
    row(0, "gpu__time_duration.sum", "ns", "70,016"),
    row(0, "smsp__inst_executed.sum", "inst", "28,262,400"),
    row(0, "sm__warps_active.avg.pct_of_peak_sustained_active", "%", "34.93"),
    row(0, "launch__registers_per_thread", "register/thread", "80"),
    row(1, "gpu__time_duration.sum", "ns", "43,776"),
]


def test_summarize_captured_rows():
    lines = summarize(LOG).splitlines()
    assert lines[0] == "1. forward nchw torch.float32 64@56² B=64: tiled"
    assert lines[4] == "| 0 | tiled::tiled_forward_kernel<float, 0, 3, 1> | 70.0 | 58.7 | 28.26 | 35% | 80 |"
    # A launch missing metrics still gets its row (zeros), in launch order.
    assert lines[5].startswith("| 1 | tiled::tiled_forward_kernel<float, 0, 3, 1> | 43.8 | 0.0 |")
    assert len(lines) == 6
