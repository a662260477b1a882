"""A W-MSE-style whitening loss on a (512, 256) embedding batch with 16 dead dimensions.

    python examples/whitening_loss.py      # STABLEEIG_EXAMPLE_SMALL=1 for CI's small size

Prints the gradient of ours (one line of ``zca_whitening``) beside the Cholesky and
``torch.linalg.eigh`` whitening people copy, against a float64 reference, and the time.
"""

from __future__ import annotations

import os
import time

import torch

import stableeig as se

SMALL = bool(os.environ.get("STABLEEIG_EXAMPLE_SMALL"))
N, C, DEAD = (128, 64, 4) if SMALL else (512, 256, 16)
EPS = 1e-4


def eigh_whitening(z: torch.Tensor) -> torch.Tensor:
    zc = z - z.mean(0)
    w, V = torch.linalg.eigh(zc.T @ zc / len(z) + EPS * torch.eye(z.shape[1], dtype=z.dtype))
    return zc @ (V * w.rsqrt()) @ V.T


def cholesky_whitening(z: torch.Tensor) -> torch.Tensor:
    zc = z - z.mean(0)
    L = torch.linalg.cholesky(zc.T @ zc / len(z) + EPS * torch.eye(z.shape[1], dtype=z.dtype))
    return torch.linalg.solve_triangular(L, zc.T, upper=False).T


def ours(z: torch.Tensor) -> torch.Tensor:
    return se.nn.functional.zca_whitening(z, eps=EPS)


def loss_of(whiten, z: torch.Tensor) -> torch.Tensor:  # type: ignore[no-untyped-def]
    white = whiten(z)
    half = len(z) // 2
    return (white[:half] - white[half:]).square().sum(1).mean()


def gradient(whiten, z: torch.Tensor) -> tuple[torch.Tensor, float]:  # type: ignore[no-untyped-def]
    leaf = z.clone().requires_grad_()
    start = time.perf_counter()
    loss_of(whiten, leaf).backward()
    assert leaf.grad is not None
    return leaf.grad, time.perf_counter() - start


def main() -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(N, C, generator=g)
    z[:, :DEAD] = 0  # dead dimensions after a ReLU: tied eigenvalues at eps
    exact, _ = gradient(lambda t: se.nn.functional.zca_whitening(t, eps=EPS), z.double())
    print(f"whitening loss on ({N}, {C}) embeddings with {DEAD} dead dimensions (float32):")
    for name, whiten in (("stableeig zca_whitening", ours), ("torch.linalg.eigh", eigh_whitening),
                         ("Cholesky (a rotation)", cholesky_whitening)):  # fmt: skip
        grad, seconds = gradient(whiten, z)
        finite = bool(torch.isfinite(grad).all())
        error = float((grad.double() - exact).norm() / exact.norm()) if finite else float("nan")
        print(f"  {name:24s} finite {finite!s:5s}  error vs float64 {error:.1e}  {seconds:.3f} s")
    grad, _ = gradient(ours, z)
    assert bool(torch.isfinite(grad).all())


if __name__ == "__main__":
    main()
