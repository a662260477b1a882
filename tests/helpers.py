"""Test helpers: matrices with chosen spectra, adversarial families, error measures."""

from __future__ import annotations

from typing import Callable

import torch

from stableeig.bench import matrices


def with_spectrum(eigenvalues: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """A float64 symmetric matrix with the given eigenvalues and random eigenvectors."""
    return matrices.with_spectrum(eigenvalues, seed)


def _rank_deficient(n: int, rank: int, eps: float = 1e-4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, rank, generator=g, dtype=torch.float64)
    return X @ X.T / rank + eps * torch.eye(n, dtype=torch.float64)


ADVERSARIAL: dict[str, Callable[[int], torch.Tensor]] = {
    "identity": lambda n: torch.eye(n, dtype=torch.float64),
    "zero_plus_eps": lambda n: 1e-4 * torch.eye(n, dtype=torch.float64),
    "all_equal": lambda n: with_spectrum(torch.full((n,), 3.0)),
    "clustered": lambda n: with_spectrum(1.0 + torch.arange(n, dtype=torch.float64) * 2.0**-52),
    "geometric_1e2": lambda n: with_spectrum(torch.logspace(0, -2, n, dtype=torch.float64)),
    "geometric_1e4": lambda n: with_spectrum(torch.logspace(0, -4, n, dtype=torch.float64)),
    "geometric_1e8": lambda n: with_spectrum(torch.logspace(0, -8, n, dtype=torch.float64)),
    "arithmetic_1e4": lambda n: with_spectrum(torch.linspace(1, 1e-4, n, dtype=torch.float64)),
    "arithmetic_1e8": lambda n: with_spectrum(torch.linspace(1, 1e-8, n, dtype=torch.float64)),
    "rank_1": lambda n: _rank_deficient(n, 1),
    "rank_3": lambda n: _rank_deficient(n, 3),
    "rank_n_minus_1": lambda n: _rank_deficient(n, n - 1),
    "tiny_norm": lambda n: 1e-20 * _rank_deficient(n, 3, eps=1.0),
    "huge_norm": lambda n: 1e20 * _rank_deficient(n, 3, eps=1.0),
}


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def stem_activations(
    in_channels: int,
    out_channels: int = 64,
    batch: int = 16,
    size: int = 8,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Outputs of a bias-free 3×3 stem convolution: rank <= 9·in_channels per pixel."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, in_channels, size, size, generator=g, dtype=dtype)
    weight = torch.randn(out_channels, in_channels, 3, 3, generator=g, dtype=dtype) / 3
    return torch.nn.functional.conv2d(images, weight, padding=1)


def channel_covariance(y: torch.Tensor) -> torch.Tensor:
    """Biased covariance of (N, C, ...) activations over all but the channel dimension."""
    flat = y.transpose(0, 1).reshape(y.shape[1], -1).double()
    flat = flat - flat.mean(1, keepdim=True)
    return flat @ flat.T / flat.shape[1]


def gaussian(
    shape: tuple[int, ...], seed: int = 0, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    C = shape[1]
    mixing = torch.randn(C, C, generator=g, dtype=torch.float64)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    return (torch.einsum("dc,nc...->nd...", mixing, x) + 3.0).to(dtype)


def run_processes(worker: Callable[..., None], args: tuple, nprocs: int = 2) -> None:
    """Spawn ``nprocs`` processes running ``worker(rank, *args)`` (spawned, not forked: torch
    refuses fork after autograd ran, with CUDA) and wait, never hanging: a process blocked
    in a collective fails the test after 120 s."""
    import time

    import pytest
    import torch.multiprocessing as mp

    context = mp.start_processes(worker, args=args, nprocs=nprocs, start_method="spawn",
                                 join=False)  # fmt: skip
    deadline = time.monotonic() + 120
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("a process blocked in a collective")
