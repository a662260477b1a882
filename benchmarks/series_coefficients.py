"""The ``power`` rule's coefficients (issue 29): the binary-splitting series of 0.8.1 against
the logarithm form of 0.8.0 (``expm1(N log q) / (q - 1)``, written out below), interleaved,
medians of 300 rounds, 1 thread; and the error of both series against the exact rational
sum (``fractions.Fraction``), in units of float64 eps.

    python benchmarks/series_coefficients.py > results/series_coefficients.txt
"""

from __future__ import annotations

import statistics
import time
from fractions import Fraction

import torch

from stableeig.bench.timing import environment
from stableeig.rules import Power, geometric_sum


def logarithm_form(q: torch.Tensor, terms: int) -> torch.Tensor:
    """0.8.0's ``Σ_{k<terms} q^k``: ``expm1(terms · log q) / (q - 1)``, ``q`` below 1."""
    below_one = q.clamp(max=1 - torch.finfo(q.dtype).eps / 2)
    return torch.expm1(terms * torch.log(below_one)) / (below_one - 1)


def logarithm_coefficients(w: torch.Tensor, num_iters: int = 19, floor: float = 1e-5):  # type: ignore[no-untyped-def]
    """0.8.0's ``Power.coefficients``, for the timing (same values to a few eps)."""
    w_m, w_j = w.unsqueeze(-1), w.unsqueeze(-2)
    later_is_m = torch.ones(w.shape[-1], w.shape[-1], dtype=torch.bool).tril(-1)
    larger = torch.where(later_is_m, w_m, w_j)
    denominator = larger.clamp_min(floor)
    q = (torch.where(later_is_m, w_j, w_m).clamp_min(0) / denominator).clamp(max=1)
    below_one = q.clamp(max=1 - torch.finfo(q.dtype).eps / 2)
    log_q = torch.log(below_one)
    series = torch.expm1((num_iters + 1) * log_q) / (below_one - 1)
    last_power = torch.exp(num_iters * log_q)
    coefficients = torch.where(later_is_m, last_power - series, series) / denominator
    coefficients.diagonal(dim1=-2, dim2=-1).zero_()
    return coefficients


def worst_error(series, terms: int) -> float:  # type: ignore[no-untyped-def]
    """Largest relative error in float64 eps over random q and q within 1e-16…1e-1 of 1."""
    q = torch.cat([
        torch.rand(200, dtype=torch.float64, generator=torch.Generator().manual_seed(0)),
        1 - torch.logspace(-16, -1, 40, dtype=torch.float64),
    ])  # fmt: skip
    eps = Fraction(torch.finfo(torch.float64).eps)
    worst = Fraction(0)
    for ratio, value in zip(q.tolist(), series(q, terms).tolist()):
        exact = sum(Fraction(ratio) ** k for k in range(terms))
        worst = max(worst, abs(Fraction(value) - exact) / exact / eps)
    return float(worst)


def main() -> None:
    torch.set_num_threads(1)
    print(environment())
    print("Power(num_iters=19).coefficients, float64, 1 thread: median us [ratio quartiles]")
    rule = Power()
    for batch, n in ((1, 3), (64, 22), (16, 64)):
        X = torch.randn(
            batch, n, n + 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1)
        )
        w = torch.linalg.eigvalsh(X @ X.mT / (n + 8))
        torch.testing.assert_close(
            rule.coefficients(w), logarithm_coefficients(w), rtol=1e-13, atol=0
        )
        timed = {
            "splitting (0.8.1)": rule.coefficients,
            "logarithm (0.8.0)": logarithm_coefficients,
        }
        seconds: dict[str, list[float]] = {name: [] for name in timed}
        for round_ in range(330):
            for name, function in timed.items():
                start = time.perf_counter()
                function(w)
                if round_ >= 30:
                    seconds[name].append(time.perf_counter() - start)
        ratios = [a / b for a, b in zip(*seconds.values())]
        q1, median, q3 = statistics.quantiles(ratios, n=4)
        times = "  ".join(
            f"{name} {statistics.median(s) * 1e6:7.0f} us" for name, s in seconds.items()
        )
        print(f"  {batch:3d} x {n:2d}x{n:<2d}  {times}  ratio {median:.2f}x [{q1:.2f}-{q3:.2f}]")
    print("largest error against the exact sum, float64 eps (random q, q near 1):")
    for terms in (10, 20, 32):
        print(f"  {terms:2d} terms: splitting {worst_error(geometric_sum, terms):.2f}, "
              f"logarithm {worst_error(logarithm_form, terms):.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
