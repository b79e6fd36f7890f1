"""Console output of the demo: section headers, and a ticking timer on long steps."""

import contextlib
import threading
import time
from collections.abc import Iterator


def section(title: str) -> None:
    print(f"\n== {title}", flush=True)


@contextlib.contextmanager
def step(label: str, tick_seconds: float = 10.0) -> Iterator[None]:
    """Prints ``label ...``, a running time every ``tick_seconds``, then the total."""
    print(f"   {label} ...", end="", flush=True)
    done = threading.Event()
    start = time.perf_counter()

    def tick() -> None:
        while not done.wait(tick_seconds):
            print(f" {time.perf_counter() - start:.0f}s", end="", flush=True)

    ticker = threading.Thread(target=tick, daemon=True)
    ticker.start()
    try:
        yield
    finally:
        done.set()
        ticker.join()
        print(f" done ({time.perf_counter() - start:.1f} s)", flush=True)

