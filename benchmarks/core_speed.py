"""Issue-2 speed ratios on a batch of 16 float32 64×64 SPD matrices (CPU, medians).

1. ``inv_sqrtm(backward="loewner")`` forward+backward vs the same computation written with
   ``torch.linalg.eigh`` autograd at the same internal precision (float64).
2. ``eigh(backward="power")`` backward vs ``eigh(backward="analytic")`` backward.

Run: ``python benchmarks/core_speed.py [--repeats 50]``. Ratios are measured in one
process, interleaved, so machine noise affects both sides alike.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch

import stableeig as se


def spd_batch(batch: int = 16, n: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(batch, n, 3 * n, generator=g)
    return X @ X.mT / (3 * n) + 1e-4 * torch.eye(n)


def torch_inv_sqrtm(A: torch.Tensor) -> torch.Tensor:
    w, V = torch.linalg.eigh(A.double())
    return ((V * w.rsqrt().unsqueeze(-2)) @ V.mT).to(A.dtype)


def time_pair(
    first: Callable[[], None], second: Callable[[], None], repeats: int
) -> tuple[float, float]:
    for _ in range(3):
        first(), second()
    a, b = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        first()
        a.append(time.perf_counter() - start)
        start = time.perf_counter()
        second()
        b.append(time.perf_counter() - start)
    return statistics.median(a), statistics.median(b)


def forward_backward(
    fn: Callable[[torch.Tensor], torch.Tensor], A: torch.Tensor, G: torch.Tensor
) -> Callable[[], None]:
    def run() -> None:
        X = A.detach().requires_grad_(True)
        (fn(X) * G).sum().backward()

    return run


def eigh_backward_only(rule: str, A: torch.Tensor, G: torch.Tensor) -> Callable[[], None]:
    X = A.detach().requires_grad_(True)

    def run() -> None:
        w, V = se.eigh(X, rule)
        loss = (V * G).sum() + w.sum()
        start = time.perf_counter()
        loss.backward()
        run.backward_seconds.append(time.perf_counter() - start)  # type: ignore[attr-defined]

    run.backward_seconds = []  # type: ignore[attr-defined]
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(2)
    A = spd_batch()
    G = torch.randn(A.shape, generator=torch.Generator().manual_seed(1))
    ours, reference = time_pair(
        forward_backward(se.inv_sqrtm, A, G), forward_backward(torch_inv_sqrtm, A, G), args.repeats
    )
    print(
        f"inv_sqrtm loewner fwd+bwd {ours * 1e3:.2f} ms vs torch.linalg.eigh autograd (float64) "
        f"{reference * 1e3:.2f} ms: ratio {ours / reference:.2f}x (target <= 1.2x)"
    )
    power, analytic = eigh_backward_only("power", A, G), eigh_backward_only("analytic", A, G)
    time_pair(power, analytic, args.repeats)
    p = statistics.median(power.backward_seconds)  # type: ignore[attr-defined]
    a = statistics.median(analytic.backward_seconds)  # type: ignore[attr-defined]
    print(
        f"eigh backward: power {p * 1e3:.2f} ms vs analytic {a * 1e3:.2f} ms: ratio {p / a:.2f}x "
        f"(target <= 3x)"
    )
    print(
        f"(16 x 64x64 float32, CPU, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"median of {args.repeats})"
    )


if __name__ == "__main__":
    main()
