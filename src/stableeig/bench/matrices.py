"""Named test matrices shared by the demo, the benchmarks and the tests' expectations."""

from __future__ import annotations

import torch

__all__ = ["clustered", "random_orthogonal", "stem_covariance", "with_spectrum"]


def random_orthogonal(n: int, seed: int = 0) -> torch.Tensor:
    """A random orthogonal float64 (n, n) matrix (QR of a Gaussian one)."""
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return Q


def with_spectrum(eigenvalues: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """A float64 symmetric matrix with the given eigenvalues and random eigenvectors."""
    Q = random_orthogonal(eigenvalues.shape[-1], seed)
    A = (Q * eigenvalues.double()) @ Q.T
    return (A + A.T) / 2


def stem_covariance(
    channels: int = 64,
    in_channels: int = 1,
    eps: float = 1e-4,
    samples: int = 4096,
    seed: int = 0,
) -> torch.Tensor:
    """Covariance of a stem 3×3 convolution's outputs plus ``eps·I``, float64 (channels, channels).

    The convolution has ``9 · in_channels`` inputs and no bias, so the covariance has rank
    at most ``9 · in_channels`` and ``channels - 9 · in_channels`` eigenvalues equal to eps.
    """
    g = torch.Generator().manual_seed(seed)
    rank = 9 * in_channels
    weights = torch.randn(channels, rank, generator=g, dtype=torch.float64) / rank**0.5
    features = weights @ torch.randn(rank, samples, generator=g, dtype=torch.float64)
    features = features - features.mean(dim=1, keepdim=True)
    return features @ features.T / samples + eps * torch.eye(channels, dtype=torch.float64)


def clustered(n: int = 64, spacing: float = 1e-7, seed: int = 0) -> torch.Tensor:
    """Eigenvalues ``1 + k · spacing`` with random eigenvectors, float64 (n, n)."""
    return with_spectrum(1.0 + spacing * torch.arange(n, dtype=torch.float64), seed)
