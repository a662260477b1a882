"""Named test matrices shared by the demo, the benchmarks and the tests' expectations."""

from __future__ import annotations

import torch

__all__ = ["clustered", "stem_covariance"]


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
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    eigenvalues = 1.0 + spacing * torch.arange(n, dtype=torch.float64)
    A = (Q * eigenvalues) @ Q.T
    return (A + A.T) / 2
