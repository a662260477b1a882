"""FID forward (issue 29): ``se.frechet_distance`` against torchmetrics' ``_compute_fid``
(eigenvalues of Σ₁Σ₂; its own function where importable, else its formula written out) on
the same float64 statistics, 3 interleaved pairs, medians, with both values.

    python benchmarks/fid_speed.py [n]       # n = feature dimension, default 2048

Run it with ``PYTHONPATH=<another checkout>/src`` to time another version of the library
against the same baseline (the before/after of a change).
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

import stableeig as se


def torchmetrics_fid():  # type: ignore[no-untyped-def]
    """torchmetrics' ``_compute_fid`` where importable, else its formula (kept here rather
    than imported from the library, so that older versions can be timed too)."""
    try:
        from torchmetrics.image.fid import _compute_fid

        return "torchmetrics _compute_fid", _compute_fid
    except ImportError:

        def formula(mu1, sigma1, mu2, sigma2):  # type: ignore[no-untyped-def]
            root = torch.linalg.eigvals(sigma1 @ sigma2).sqrt().real.sum(-1)
            return (mu1 - mu2).square().sum(-1) + sigma1.trace() + sigma2.trace() - 2 * root

        return "torchmetrics' formula", formula


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2048
    g = torch.Generator().manual_seed(4)
    x1 = torch.randn(3 * n, n, generator=g, dtype=torch.float64)
    x2 = torch.randn(3 * n, n, generator=g, dtype=torch.float64) * 1.1 + 0.1
    m1, m2, s1, s2 = x1.mean(0), x2.mean(0), torch.cov(x1.T), torch.cov(x2.T)
    name, theirs = torchmetrics_fid()
    calls = {"stableeig": lambda: se.frechet_distance(m1, s1, m2, s2),
             name: lambda: theirs(m1, s1, m2, s2)}  # fmt: skip
    times: dict[str, list[float]] = {key: [] for key in calls}
    values = {}
    for _ in range(3):
        for key, call in calls.items():
            start = time.perf_counter()
            values[key] = float(call())
            times[key].append(time.perf_counter() - start)
    ours, baseline = (statistics.median(times[key]) for key in calls)
    print(f"FID forward, n = {n}, {torch.get_num_threads()} threads, stableeig "
          f"{se.__version__}: {ours:.2f} s ({values['stableeig']:.10g}), {name} "
          f"{baseline:.2f} s ({values[name]:.10g}), ratio {ours / baseline:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
