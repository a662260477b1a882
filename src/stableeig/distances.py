"""Distances between Gaussians and SPD matrices, built on the spectral functions (so their
gradients are exact and tie-safe): Bures–Wasserstein, Fréchet (FID), log-Euclidean, AIRM.

All take batches (..., n, n) (means (..., n)) and return (...). A distance that is 0 (equal
inputs) has no derivative (like ``|x|`` at 0): its gradient there is taken as 0, the
subgradient at the minimum; the squared forms are smooth there.
"""

from __future__ import annotations

from typing import Optional

import torch

from . import _validation as checks
from ._precision import working_dtype
from .exceptions import ShapeError
from .matrix_functions import logm
from .spectral import inv_sqrtm, sqrtm

__all__ = [
    "airm_distance",
    "bures_wasserstein",
    "frechet_distance",
    "log_euclidean_distance",
    "trace_sqrt_product",
]


def _pair(
    A: torch.Tensor, B: torch.Tensor, compute_dtype: Optional[torch.dtype]
) -> tuple[torch.Tensor, torch.Tensor, torch.dtype]:
    """``A``, ``B`` checked and cast to the working precision, and the result's dtype (the
    intermediate products are formed in the working precision too)."""
    checks.check_square_matrix("A", A)
    checks.check_square_matrix("B", B)
    if A.shape[-1] != B.shape[-1]:
        raise ShapeError(
            f"B: expected matrices of A's size {A.shape[-1]} (got shape {tuple(B.shape)})"
        )
    result = torch.promote_types(A.dtype, B.dtype)
    work = working_dtype(result, compute_dtype)
    return A.to(work), B.to(work), result


def _root(squared: torch.Tensor, resolution: torch.Tensor) -> torch.Tensor:
    """``√d²``, read as 0 (value and gradient) where ``d² <= resolution``: equal inputs,
    whose computed ``d²`` is round-off of either sign and whose gradient would otherwise be
    an arbitrary unit direction."""
    positive = squared > resolution
    return torch.where(positive, squared, torch.ones_like(squared)).sqrt() * positive


def _resolution(n: int, dtype: torch.dtype, scale: torch.Tensor) -> torch.Tensor:
    """Round-off of a computed squared distance: ``(100 · n · eps)² · scale²``."""
    return (100 * max(n, 1) * torch.finfo(dtype).eps) ** 2 * scale.square()


def trace_sqrt_product(
    A: torch.Tensor, B: torch.Tensor, *, compute_dtype: Optional[torch.dtype] = None
) -> torch.Tensor:
    """``tr √(A^{1/2} B A^{1/2})`` of positive semidefinite ``A``, ``B`` (the fidelity term of
    the Bures and Fréchet distances): (...).

    Its gradient needs the square roots' derivatives: where ``A`` or ``A^{1/2} B A^{1/2}``
    has two zero eigenvalues (rank-deficient covariances) it is infinite, and the backward
    raises :class:`NotDifferentiableError` (add ``eps·I``) rather than return NaN.

    Example:
        >>> import torch, stableeig as se
        >>> round(float(se.trace_sqrt_product(torch.eye(3), 4 * torch.eye(3))), 4)
        6.0
    """
    A, B, result = _pair(A, B, compute_dtype)
    root = sqrtm(A)
    inner = root @ B @ root
    return sqrtm((inner + inner.mT) / 2).diagonal(dim1=-2, dim2=-1).sum(-1).to(result)


def bures_wasserstein(
    A: torch.Tensor,
    B: torch.Tensor,
    *,
    squared: bool = False,
    compute_dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    """Bures–Wasserstein distance ``√(tr A + tr B - 2 tr √(A^{1/2} B A^{1/2}))`` between
    positive semidefinite matrices (the 2-Wasserstein distance of zero-mean Gaussians): (...).

    Args:
        A, B: (..., n, n). squared: return the square (smooth at ``A == B``). Default: False.
        compute_dtype: least working precision. Default: None (float64).

    Example:
        >>> import torch, stableeig as se
        >>> round(float(se.bures_wasserstein(torch.eye(2), 4 * torch.eye(2))), 4)
        1.4142
    """
    fidelity = trace_sqrt_product(A, B, compute_dtype=compute_dtype)
    A, B, result = _pair(A, B, compute_dtype)
    traces = A.diagonal(dim1=-2, dim2=-1).sum(-1) + B.diagonal(dim1=-2, dim2=-1).sum(-1)
    d2 = traces - 2 * fidelity.to(A.dtype)
    if squared:
        return d2.to(result)
    # d² = tr A + tr B - 2 tr √(·) cancels to ~ n · eps · (tr A + tr B) at A == B
    floor = 100 * A.shape[-1] * torch.finfo(A.dtype).eps * traces.abs()
    return _root(d2, floor).to(result)


def frechet_distance(
    mu1: torch.Tensor,
    sigma1: torch.Tensor,
    mu2: torch.Tensor,
    sigma2: torch.Tensor,
    *,
    compute_dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    """Fréchet distance between Gaussians, ``‖μ₁ - μ₂‖² + BW²(Σ₁, Σ₂)`` — the FID formula:
    (...). Means (..., n), covariances (..., n, n).

    Example:
        >>> import torch, stableeig as se
        >>> float(se.frechet_distance(torch.zeros(3), torch.eye(3), torch.zeros(3), torch.eye(3)))
        0.0
    """
    for name, mean, sigma in (("mu1", mu1, sigma1), ("mu2", mu2, sigma2)):
        if not isinstance(mean, torch.Tensor) or mean.shape[-1:] != sigma.shape[-1:]:
            shape = tuple(mean.shape) if isinstance(mean, torch.Tensor) else type(mean).__name__
            raise ShapeError(f"{name}: expected a mean of size {sigma.shape[-1]} (got {shape})")
    d2 = bures_wasserstein(sigma1, sigma2, squared=True, compute_dtype=compute_dtype)
    return ((mu1 - mu2).to(torch.float64).square().sum(-1) + d2).to(d2.dtype)


def log_euclidean_distance(
    A: torch.Tensor, B: torch.Tensor, *, compute_dtype: Optional[torch.dtype] = None
) -> torch.Tensor:
    """``‖log A - log B‖_F`` of symmetric positive definite matrices: (...).

    Example:
        >>> import torch, stableeig as se
        >>> round(float(se.log_euclidean_distance(torch.eye(2), torch.e * torch.eye(2))), 4)
        1.4142
    """
    A, B, result = _pair(A, B, compute_dtype)
    logs = logm(A), logm(B)
    scale = torch.maximum(logs[0].abs().amax((-2, -1)), logs[1].abs().amax((-2, -1))) + 1
    d2 = (logs[0] - logs[1]).square().sum((-2, -1))
    return _root(d2, _resolution(A.shape[-1], A.dtype, scale)).to(result)


def airm_distance(
    A: torch.Tensor, B: torch.Tensor, *, compute_dtype: Optional[torch.dtype] = None
) -> torch.Tensor:
    """Affine-invariant Riemannian distance ``‖log(A^{-1/2} B A^{-1/2})‖_F`` of symmetric
    positive definite matrices: (...).

    Example:
        >>> import torch, stableeig as se
        >>> round(float(se.airm_distance(2 * torch.eye(2), 2 * torch.e * torch.eye(2))), 4)
        1.4142
    """
    A, B, result = _pair(A, B, compute_dtype)
    root = inv_sqrtm(A)
    inner = root @ B @ root
    d2 = logm((inner + inner.mT) / 2).square().sum((-2, -1))
    condition = (
        torch.linalg.matrix_norm(A.detach(), 2) * torch.linalg.matrix_norm(root.detach(), 2) ** 2
    )
    return _root(d2, _resolution(A.shape[-1], A.dtype, condition)).to(result)
