"""Fixed cost of one small call (issue 29): a 3×3 ``logm`` forward + backward against
``torch.linalg.eigh`` autograd, interleaved, medians of 300 pairs, 1 thread; then a cProfile
of ours (where the time goes).

    python benchmarks/call_overhead.py
"""

from __future__ import annotations

import cProfile
import pstats
import statistics
import time

import torch

import stableeig as se


def main() -> None:
    torch.set_num_threads(1)
    A0 = torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    A0 = A0 @ A0.T + torch.eye(3, dtype=torch.float64)

    def ours() -> None:
        A = A0.clone().requires_grad_()
        se.logm(A).sum().backward()

    def plain() -> None:
        A = A0.clone().requires_grad_()
        w, V = torch.linalg.eigh(A)
        ((V * w.log().unsqueeze(-2)) @ V.mT).sum().backward()

    for f in (ours, plain):
        for _ in range(50):
            f()
    times: dict[str, list[float]] = {"ours": [], "plain": []}
    for _ in range(300):
        for name, f in (("ours", ours), ("plain", plain)):
            start = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - start)
    a, b = statistics.median(times["ours"]), statistics.median(times["plain"])
    print(f"3x3 logm fwd+bwd: stableeig {a * 1e6:.0f} us, torch.linalg.eigh autograd "
          f"{b * 1e6:.0f} us, ratio {a / b:.2f}")  # fmt: skip
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(300):
        ours()
    profile.disable()
    pstats.Stats(profile).sort_stats("tottime").print_stats(12)


if __name__ == "__main__":
    main()
