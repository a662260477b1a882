"""Matrix completion by learned singular value thresholding, with cold-start items.

    python examples/completion.py      # STABLEEIG_EXAMPLE_SMALL=1 for CI's small size

Unrolled soft-impute (a "learned SVT" network): ``Z ← SVT_τₖ(Z + P_Ω(M - Z))`` for a few
layers, each threshold ``τₖ`` learned by backpropagating a reconstruction loss through the
singular value thresholding. A ratings matrix with items nobody has rated yet (all-zero
columns) has several zero singular values, which tie: the SVT people copy (three lines of
``torch.linalg.svd`` autograd) returns a NaN gradient there (pytorch #49886) — at step 0,
for every layer before the last; ``se.singular_value_threshold`` differentiates the same
layers exactly.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

import stableeig as se

SMALL = bool(os.environ.get("STABLEEIG_EXAMPLE_SMALL"))
USERS, ITEMS, RANK, LAYERS = 40, 24, 3, 5
STEPS = 40 if SMALL else 300
COLD = 3  # items with no rating yet


def copied_svt(Z: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """Singular value thresholding as people write it."""
    U, S, Vh = torch.linalg.svd(Z, full_matrices=False)
    return U @ torch.diag_embed(torch.relu(S - tau)) @ Vh


def ratings(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A rank-3 matrix and its observation mask (35% observed, the cold items never)."""
    M = torch.randn(USERS, RANK, generator=generator) @ torch.randn(
        RANK, ITEMS, generator=generator
    )
    observed = (torch.rand(USERS, ITEMS, generator=generator) < 0.35).float()
    observed[:, -COLD:] = 0
    return M, observed


def complete(
    svt, thresholds: torch.Tensor, M: torch.Tensor, observed: torch.Tensor
) -> torch.Tensor:  # type: ignore[no-untyped-def]
    Z = torch.zeros_like(M)
    for tau in F.softplus(thresholds):
        Z = svt(Z + observed * (M - Z), tau)
    return Z


def train(svt, label: str) -> None:  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(0)
    thresholds = torch.zeros(LAYERS, requires_grad=True)  # τ = softplus(0) = 0.69
    optimizer = torch.optim.Adam([thresholds], lr=0.05)
    first = last = None
    for step in range(STEPS):
        M, observed = ratings(g)
        warm = 1 - observed
        warm[:, -COLD:] = 0  # score the unobserved ratings of items that have some
        loss = ((complete(svt, thresholds, M, observed) - M) * warm).square().sum() / warm.sum()
        optimizer.zero_grad()
        loss.backward()
        assert thresholds.grad is not None
        if not bool(torch.isfinite(thresholds.grad).all()):
            bad = int((~torch.isfinite(thresholds.grad)).sum())
            print(f"  {label:28s} step {step}: non-finite gradient for {bad} of {LAYERS} "
                  f"thresholds (loss {float(loss.detach()):.3f}) — training stops")  # fmt: skip
            return
        optimizer.step()
        first = float(loss.detach()) if first is None else first
        last = float(loss.detach())
    with torch.no_grad():
        M, observed = ratings(torch.Generator().manual_seed(1))
        warm = 1 - observed
        warm[:, -COLD:] = 0
        error = ((complete(svt, thresholds, M, observed) - M) * warm).square().sum() / warm.sum()
    taus = ", ".join(f"{t:.2f}" for t in F.softplus(thresholds).tolist())
    print(f"  {label:28s} loss {first:.3f} -> {last:.3f} in {STEPS} steps, every gradient finite;")
    print(f"  {'':28s} held-out MSE {float(error):.3f}, thresholds {taus}")


def main() -> None:
    torch.manual_seed(0)
    print(
        f"Learned SVT, {LAYERS} unrolled layers, {USERS}x{ITEMS} rank-{RANK} ratings, 35% observed,"
    )
    print(f"{COLD} cold-start items (zero columns: tied zero singular values):")
    train(copied_svt, "torch.linalg.svd (copied)")
    train(se.singular_value_threshold, "se.singular_value_threshold")


if __name__ == "__main__":
    main()
