"""The Fréchet distance (FID) from feature batches, differentiable at any batch size.

For centred features ``X₁`` (N₁, d) and a reference ``R`` with ``Σ₂ = R Rᵀ`` (``R`` the
scaled centred reference features ``X₂ᵀ / √(N₂ - 1)``, or ``Σ₂^{1/2}`` from statistics),
``Σ₁ = X₁ᵀX₁ / (N₁ - 1)`` and

    tr √(Σ₂^{1/2} Σ₁ Σ₂^{1/2}) = ‖X₁ R‖_* / √(N₁ - 1),

the nuclear norm (sum of singular values) of an (N₁, N₂) or (N₁, d) matrix. Its gradient is
the polar factor ``U Vᵀ`` of the singular vectors with non-zero singular values: finite and
exact where the covariance-level derivative is infinite (fewer samples than dimensions:
``Σ₁`` and the inner matrix have zero eigenvalues, whose square roots have no derivative),
and cheaper there (an N₁ × N₂ SVD instead of two d × d decompositions).
"""

from __future__ import annotations

from typing import Optional

import torch

from . import _validation as checks
from ._precision import autocast_off, working_dtype
from .exceptions import ArgumentError, ShapeError
from .spectral import SQRT, apply_spectral, require_semidefinite
from .svd import nuclear_norm

__all__ = ["frechet_distance_from_features"]


def _centred(X: torch.Tensor, work: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean (d,), centred features (N, d))`` in the working precision."""
    X = X.to(work)
    mean = X.mean(0)
    return mean, X - mean


def _check_features(name: str, X: object) -> torch.Tensor:
    if not isinstance(X, torch.Tensor):
        raise ShapeError(f"{name}: expected a (N, d) tensor of features (got {type(X).__name__})")
    if X.dtype not in checks.FLOATING_DTYPES:
        raise checks.DTypeError(f"{name}: expected a real floating dtype (got {X.dtype})")
    if X.ndim != 2 or X.shape[0] < 2:
        raise ShapeError(
            f"{name}: expected (N, d) features with N >= 2 samples (got shape {tuple(X.shape)})"
        )
    checks.check_finite(name, X)
    return X


def frechet_distance_from_features(
    features1: torch.Tensor,
    features2: Optional[torch.Tensor] = None,
    *,
    mu2: Optional[torch.Tensor] = None,
    sigma2: Optional[torch.Tensor] = None,
    compute_dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    """Fréchet distance (FID) between the Gaussians fitted to two feature batches, or to one
    batch and reference statistics: ``‖μ₁ - μ₂‖² + tr Σ₁ + tr Σ₂ - 2 tr √(Σ₂^{1/2} Σ₁ Σ₂^{1/2})``
    with unbiased covariances (as pytorch-fid and torchmetrics), a 0-dim tensor.

    Differentiable with respect to the features at any batch size, including fewer samples
    than dimensions on both sides: the fidelity term is the nuclear norm of the product of
    the centred features (module docstring), whose gradient is finite wherever the rank of
    that product is locally constant — generically, for any batch sizes. With reference
    statistics, ``sigma2``'s square root is computed once and not differentiated through
    (precomputed statistics are constants); pass ``features2`` to differentiate both sides.

    Args:
        features1: (N₁, d) features, N₁ >= 2.
        features2: (N₂, d) reference features, N₂ >= 2. Default: None (give ``mu2`` and
            ``sigma2`` instead).
        mu2, sigma2: reference mean (d,) and covariance (d, d), positive semidefinite.
        compute_dtype: least working precision. Default: None (float64).

    Returns:
        The distance in the promoted dtype of the inputs.

    Examples:
        >>> import torch, stableeig as se
        >>> x = torch.randn(16, 64, requires_grad=True)      # 16 samples < 64 dimensions
        >>> d = se.frechet_distance_from_features(x, torch.randn(32, 64))
        >>> d.backward(); bool(torch.isfinite(x.grad).all())
        True
    """
    where = "frechet_distance_from_features"
    X1 = _check_features(f"{where}: features1", features1)
    by_features = features2 is not None
    if by_features == (mu2 is not None or sigma2 is not None) or (
        not by_features and (mu2 is None or sigma2 is None)
    ):
        arguments = {"features2": features2, "mu2": mu2, "sigma2": sigma2}
        given = [name for name, value in arguments.items() if value is not None]
        raise ArgumentError(
            f"{where}: expected features2, or both mu2 and sigma2 (got "
            f"{', '.join(given) if given else 'none of them'})"
        )
    d = X1.shape[1]
    result = X1.dtype
    if by_features:
        X2 = _check_features(f"{where}: features2", features2)
        if X2.shape[1] != d:
            raise ShapeError(
                f"{where}: features2: expected {d} features per sample, as features1 "
                f"(got shape {tuple(X2.shape)})"
            )
        result = torch.promote_types(result, X2.dtype)
    else:
        assert mu2 is not None and sigma2 is not None
        checks.check_square_matrix(f"{where}: sigma2", sigma2)
        if sigma2.shape != (d, d) or not isinstance(mu2, torch.Tensor) or mu2.shape != (d,):
            shape = tuple(mu2.shape) if isinstance(mu2, torch.Tensor) else type(mu2).__name__
            raise ShapeError(
                f"{where}: expected mu2 of shape ({d},) and sigma2 of shape ({d}, {d}) "
                f"(got {shape} and {tuple(sigma2.shape)})"
            )
        checks.check_finite(f"{where}: mu2", mu2)
        if sigma2.requires_grad:
            raise ArgumentError(
                f"{where}: sigma2 requires grad; pass features2 to differentiate the "
                "reference side, or frechet_distance for covariance-level gradients"
            )
        result = torch.promote_types(torch.promote_types(result, sigma2.dtype), mu2.dtype)
    work = working_dtype(result, compute_dtype)
    with autocast_off(X1.device):
        mean1, centred1 = _centred(X1, work)
        scale1 = (X1.shape[0] - 1) ** -0.5
        trace1 = centred1.square().sum() * scale1**2
        if by_features:
            assert features2 is not None
            mean2, centred2 = _centred(features2, work)
            scale2 = (features2.shape[0] - 1) ** -0.5
            trace2 = centred2.square().sum() * scale2**2
            reference = centred2.mT * scale2  # (d, N₂): Σ₂ = R Rᵀ
        else:
            assert mu2 is not None and sigma2 is not None
            mean2 = mu2.to(work)
            S2 = sigma2.to(work)
            trace2 = S2.diagonal().sum()
            with torch.no_grad():  # reference statistics are constants
                reference = apply_spectral(
                    sigma2, SQRT, compute_dtype=work, eigenvalue_check=require_semidefinite(),
                    name="sigma2", where=where,
                ).to(work)  # fmt: skip
        product = centred1 @ reference  # (N₁, N₂) or (N₁, d)
        fidelity = nuclear_norm(product, compute_dtype=product.dtype) * scale1
        distance = (mean1 - mean2).square().sum() + trace1 + trace2 - 2 * fidelity
    if by_features and _same_features(X1, features2):  # 0, not the round-off (1e-14)
        distance = distance - distance.detach()  # the gradient stays the computed one
    return checks.rounded_checked(where, "the distance", distance.clamp_min(0), result)


def _same_features(X1: torch.Tensor, X2: Optional[torch.Tensor]) -> bool:
    """Whether two feature batches hold the same values (eager, readable tensors only)."""
    if X2 is None or X1.shape != X2.shape or torch.compiler.is_compiling():
        return False
    if not (checks.host_checks_enabled(X1, X2)):
        return False
    return X1 is X2 or torch.equal(X1.detach(), X2.detach().to(X1.dtype))
