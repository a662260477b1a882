"""Measure the working precision's effect on inv_sqrtm gradients, and its cost.

The covariance after a one-channel 3×3 stem convolution: 64 channels of rank <= 9, plus
eps·I. Prints the relative error of the float32-input gradient (decomposed in float32 and
in float64) against float64 truth, and the time of a float32 vs float64 ``eigh`` on a batch
of 16 such 64×64 matrices. Run: ``python benchmarks/precision.py``.
"""

from __future__ import annotations

import statistics
import time

import torch

import stableeig as se
from stableeig.bench.matrices import stem_covariance


def gradient(A: torch.Tensor, upstream: torch.Tensor, compute_dtype: torch.dtype) -> torch.Tensor:
    A = A.detach().clone().requires_grad_(True)
    (se.inv_sqrtm(A, compute_dtype=compute_dtype) * upstream.to(A.dtype)).sum().backward()
    assert A.grad is not None
    return A.grad.double()


def relative_errors(seeds: int = 5) -> dict[str, float]:
    worst = {"float32": 0.0, "float64": 0.0}
    for seed in range(seeds):
        A64 = stem_covariance(seed=seed)
        A32 = A64.float()
        upstream = torch.randn(64, 64, generator=torch.Generator().manual_seed(100 + seed))
        truth = gradient(A32.double(), upstream.double(), torch.float64)  # same input, float64
        for name, dtype in (("float32", torch.float32), ("float64", torch.float64)):
            err = float((gradient(A32, upstream, dtype) - truth).norm() / truth.norm())
            worst[name] = max(worst[name], err)
    return worst


def eigh_seconds(dtype: torch.dtype, repeats: int = 30) -> float:
    A = torch.stack([stem_covariance(seed=s) for s in range(16)]).to(dtype)
    torch.linalg.eigh(A)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.linalg.eigh(A)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    torch.set_num_threads(2)
    errors = relative_errors()
    print("inv_sqrtm gradient, float32 input, worst relative error vs float64 truth (5 seeds):")
    for name, err in errors.items():
        print(f"  decomposition in {name}: {err:.2e}")
    t32, t64 = eigh_seconds(torch.float32), eigh_seconds(torch.float64)
    print(
        f"eigh of 16 x 64x64: float32 {t32 * 1e3:.2f} ms, float64 {t64 * 1e3:.2f} ms, "
        f"ratio {t64 / t32:.2f}x (median of 30, {torch.get_num_threads()} threads)"
    )


if __name__ == "__main__":
    main()
