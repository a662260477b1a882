"""A layer's fixed cost per call: ``ZCAWhitening2d(64, group_size=16)`` on a (4, 64, 2, 2)
input, where the arithmetic is negligible and the Python path (checks, dispatch, the
transform object) is most of the time. One thread; median of 7 × 300 calls, no autograd.

    python benchmarks/overhead.py
    PYTHONPATH=<an older checkout>/src python benchmarks/overhead.py   # to compare
"""

from __future__ import annotations

import statistics
import time

import torch

import stableeig as se


def microseconds_per_call(mode: str) -> float:
    layer = se.nn.ZCAWhitening2d(64, group_size=16)
    x = torch.randn(4, 64, 2, 2)
    layer(x)
    if mode == "eval":
        layer.eval()
    times = []
    with torch.no_grad():
        for _ in range(7):
            start = time.perf_counter()
            for _ in range(300):
                layer(x)
            times.append((time.perf_counter() - start) / 300 * 1e6)
    return statistics.median(times)


def main() -> None:
    torch.set_num_threads(1)
    print(f"stableeig {se.__version__}, torch {torch.__version__}")
    for mode in ("eval", "train"):
        print(f"{mode}: {microseconds_per_call(mode):.1f} us per call")


if __name__ == "__main__":
    main()
