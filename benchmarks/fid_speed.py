"""FID forward on float32 statistics (issue 29): ours against torchmetrics' formula
(eigenvalues of Σ₁Σ₂), medians of 3 interleaved calls, 1 thread, with the value error of
each against the float64 computation.

    python benchmarks/fid_speed.py [n]       # n = feature dimension, default 1024
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

import stableeig as se


def main() -> None:
    torch.set_num_threads(1)
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1024
    g = torch.Generator().manual_seed(0)
    x1, x2 = torch.randn(3 * n, n, generator=g), torch.randn(3 * n, n, generator=g) + 0.1
    m1, m2, s1, s2 = x1.mean(0), x2.mean(0), torch.cov(x1.T), torch.cov(x2.T)

    def torchmetrics_formula() -> torch.Tensor:
        root = torch.linalg.eigvals(s1 @ s2).sqrt().real.sum()
        return (m1 - m2).square().sum() + s1.trace() + s2.trace() - 2 * root

    def ours() -> torch.Tensor:
        return se.frechet_distance(m1, s1, m2, s2)

    truth = float(se.frechet_distance(m1.double(), s1.double(), m2.double(), s2.double()))
    times: dict[str, list[float]] = {"ours": [], "torchmetrics": []}
    values = {}
    for _ in range(3):
        for name, f in (("torchmetrics", torchmetrics_formula), ("ours", ours)):
            start = time.perf_counter()
            values[name] = float(f())
            times[name].append(time.perf_counter() - start)
    a, b = statistics.median(times["ours"]), statistics.median(times["torchmetrics"])
    errors = {name: abs(value - truth) / truth for name, value in values.items()}
    print(f"FID forward, n = {n}: stableeig {a:.2f} s (error {errors['ours']:.1e}), "
          f"torchmetrics' formula {b:.2f} s (error {errors['torchmetrics']:.1e}), "
          f"ratio {a / b:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
