"""FID from features: the metric, and the loss at batch < feature dimension.

    python examples/fid.py            # STABLEEIG_EXAMPLE_SMALL=1 for CI's small size

Prints ours beside the formula people copy (pytorch-fid / torchmetrics: eigenvalues of
Σ₁Σ₂, here in torch) and a float64 reference; then moves a batch of 64 features (dimension
256) toward a reference set with the FID as the loss, where covariance-level autograd
(``torch.linalg.eigh`` or ``se.frechet_distance``) has no finite gradient.
"""

from __future__ import annotations

import os
import time

import torch

import stableeig as se

SMALL = bool(os.environ.get("STABLEEIG_EXAMPLE_SMALL"))
DIM, REFERENCE, BATCH = (64, 200, 16) if SMALL else (256, 2000, 64)


def features(n: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(DIM, DIM, generator=g) / DIM**0.5
    return torch.relu(torch.randn(n, DIM, generator=g) @ mixing + shift)


def copied_formula(x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """What torchmetrics computes: tr √(Σ₁Σ₂) from the eigenvalues of the product."""
    mu1, mu2, s1, s2 = x1.mean(0), x2.mean(0), torch.cov(x1.T), torch.cov(x2.T)
    root = torch.linalg.eigvals(s1 @ s2).sqrt().real.sum()
    return (mu1 - mu2).square().sum() + s1.trace() + s2.trace() - 2 * root


def main() -> None:
    torch.manual_seed(0)
    reference = features(REFERENCE, 0, shift=0.5)
    generated = features(BATCH * 4, 1)
    truth = float(se.frechet_distance_from_features(generated.double(), reference.double()))
    start = time.perf_counter()
    ours = float(se.frechet_distance_from_features(generated, reference))
    ours_seconds = time.perf_counter() - start
    start = time.perf_counter()
    copied = float(copied_formula(generated, reference))
    copied_seconds = time.perf_counter() - start
    print(f"FID metric, {len(generated)} × {DIM} features against {REFERENCE} (float32 input):")
    for name, value, seconds in (
        ("stableeig", ours, ours_seconds),
        ("copied code", copied, copied_seconds),
    ):
        error = abs(value - truth) / truth
        print(f"  {name:12s} {value:.6f}  relative error {error:.1e}  {seconds:.3f} s")

    x = generated[:BATCH].clone().requires_grad_()
    mu2, sigma2 = reference.mean(0), torch.cov(reference.T)
    naive = x.detach().double().requires_grad_()
    try:
        se.frechet_distance(
            naive.mean(0), torch.cov(naive.T), mu2.double(), sigma2.double()
        ).backward()
        naive_result = "finite" if bool(torch.isfinite(naive.grad).all()) else "NaN"
    except se.NotDifferentiableError as error:
        naive_result = f"refused ({str(error)[:60]}...)"
    print(
        f"FID as a loss, batch {BATCH} < dimension {DIM}: covariance-level gradient: {naive_result}"
    )
    optimizer = torch.optim.Adam([x], lr=0.05)
    values = []
    for _ in range(10 if SMALL else 60):
        loss = se.frechet_distance_from_features(x, mu2=mu2, sigma2=sigma2)
        optimizer.zero_grad()
        loss.backward()
        assert x.grad is not None and bool(torch.isfinite(x.grad).all())
        optimizer.step()
        values.append(float(loss.detach()))
    print(f"  features-level loss: {values[0]:.3f} -> {values[-1]:.3f}, every gradient finite")
    assert values[-1] < values[0]


if __name__ == "__main__":
    main()
