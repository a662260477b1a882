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
from ._autograd import SpectralFunction
from ._precision import working_dtype
from .exceptions import DTypeError, ShapeError
from .matrix_functions import LOG
from .spectral import (
    INV_SQRT,
    SQRT,
    EigenvalueCheck,
    apply_spectral,
    require_positive,
    require_semidefinite,
)

__all__ = [
    "airm_distance",
    "bures_wasserstein",
    "bures_wasserstein_distance",
    "frechet_distance",
    "log_euclidean_distance",
    "trace_sqrt_product",
]


def _pair(
    where: str,
    A: torch.Tensor,
    B: torch.Tensor,
    compute_dtype: Optional[torch.dtype],
    names: tuple[str, str] = ("A", "B"),
) -> tuple[torch.Tensor, torch.Tensor, torch.dtype]:
    """``A``, ``B`` checked in the dtype the user passed (finite, symmetric to that dtype's
    round-off, matching sizes, broadcastable batches), then cast to the working precision;
    and the result's dtype. Errors name the argument (``where: B: ...``)."""
    for name, matrix in zip(names, (A, B)):
        checks.check_square_matrix(f"{where}: {name}", matrix)
        checks.check_finite_symmetric(f"{where}: {name}", matrix)
    if A.shape[-1] != B.shape[-1]:
        raise ShapeError(
            f"{where}: {names[1]}: expected matrices of {names[0]}'s size {A.shape[-1]} "
            f"(got shape {tuple(B.shape)})"
        )
    try:
        torch.broadcast_shapes(A.shape[:-2], B.shape[:-2])
    except RuntimeError:
        raise ShapeError(
            f"{where}: expected batch shapes of {names[0]} and {names[1]} that broadcast (got "
            f"{tuple(A.shape)} and {tuple(B.shape)})"
        ) from None
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


def _identical(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """Per matrix pair (broadcast batch), whether the two are bit-identical: (...)."""
    return (A == B).all(-1).all(-1)


def _fidelity(
    where: str, A: torch.Tensor, B: torch.Tensor, judged: torch.dtype, names: tuple[str, str]
) -> torch.Tensor:
    """``tr √(A^{1/2} B A^{1/2})`` of working-precision ``A``, ``B``, kept in that precision.
    With ``A`` positive semidefinite, the inner matrix is indefinite exactly where ``B`` is
    (on the range of ``A``): its check names ``B``."""
    if not (torch.is_grad_enabled() and (A.requires_grad or B.requires_grad)):
        # no gradient wanted (an FID metric): the eigenvalues of the inner matrix suffice
        inner = _fidelity_inner(where, A, B, judged, names)
        w = torch.linalg.eigvalsh((inner + inner.mT) / 2)
        checks.check_eigenvalues_finite(f"{where}: {names[1]}", w)
        require_semidefinite()(w, f"{where}: {names[1]}", judged)
        return w.clamp_min(0).sqrt().sum(-1)
    inner = _root_inner(where, A, B, judged, names)
    inner = (inner + inner.mT) / 2
    value = _checked(_FIDELITY_SQRT, require_semidefinite(), where, names[1], inner, judged)
    return value.diagonal(dim1=-2, dim2=-1).sum(-1)


def _root_inner(
    where: str, A: torch.Tensor, B: torch.Tensor, judged: torch.dtype, names: tuple[str, str]
) -> torch.Tensor:
    """``A^{1/2} B A^{1/2}``, with ``A`` checked positive semidefinite (errors name it)."""
    root = _checked(_FIDELITY_SQRT, require_semidefinite(), where, names[0], A, judged)
    return root @ B @ root


def _fidelity_inner(
    where: str, A: torch.Tensor, B: torch.Tensor, judged: torch.dtype, names: tuple[str, str]
) -> torch.Tensor:
    """A matrix with the eigenvalues of ``A^{1/2} B A^{1/2}`` (those of ``AB``), for the
    forward without gradient: ``Lᵀ B L`` with the Cholesky factor ``A = L Lᵀ`` where every
    matrix of the batch has one (positive definite ``A``: a Cholesky costs a few percent of
    an eigendecomposition), else ``A^{1/2} B A^{1/2}`` (semidefinite ``A``, checked)."""
    if not torch.compiler.is_compiling() and checks.readable(A):  # success read on the host
        L, info = torch.linalg.cholesky_ex((A + A.mT) / 2)  # as the spectral path reads A
        if bool((info == 0).all()):
            return L.mT @ B @ L
    return _root_inner(where, A, B, judged, names)


_FIDELITY_SQRT = SpectralFunction(  # sqrtm, whose undefined gradient points to the features
    "sqrtm",
    SQRT.values,
    SQRT.loewner,
    lambda w: (
        "the derivative of √λ is infinite at eigenvalues equal to 0 (rank-deficient "
        "covariances, e.g. fewer samples than dimensions); the gradient with respect to the "
        "features exists: use stableeig.frechet_distance_from_features"
    ),
)


def _checked(
    function: SpectralFunction, check: EigenvalueCheck, where: str, name: str,
    matrix: torch.Tensor, judged: torch.dtype,
) -> torch.Tensor:  # fmt: skip
    """``function`` of a working-precision matrix derived from the user's argument ``name``
    (already checked symmetric): errors name it, round-off is judged at the user's dtype."""
    return apply_spectral(
        matrix, function, check_symmetric=False, eigenvalue_check=check, name=name,
        where=where, judged_dtype=judged,
    )  # fmt: skip


def _bures_squared(
    where: str, A: torch.Tensor, B: torch.Tensor, compute_dtype: Optional[torch.dtype],
    names: tuple[str, str] = ("A", "B"),
) -> tuple[torch.Tensor, torch.Tensor, torch.dtype]:  # fmt: skip
    """``(d², floor, result dtype)``: ``d² = tr A + tr B - 2 tr √(A^{1/2} B A^{1/2})`` formed
    in the working precision, clamped at 0, exactly 0 for bit-identical inputs; ``floor``
    the round-off of its trace terms, ``n · eps · (tr A + tr B)``."""
    A_in, B_in = A, B
    A, B, result = _pair(where, A, B, compute_dtype, names)
    fidelity = _fidelity(where, A, B, result, names)
    traces = A.diagonal(dim1=-2, dim2=-1).sum(-1) + B.diagonal(dim1=-2, dim2=-1).sum(-1)
    d2 = (traces - 2 * fidelity).clamp_min(0)
    d2 = torch.where(_identical(A_in, B_in), torch.zeros_like(d2), d2)
    floor = A.shape[-1] * torch.finfo(A.dtype).eps * traces.detach().abs()
    return d2, floor, result


def trace_sqrt_product(
    A: torch.Tensor, B: torch.Tensor, *, compute_dtype: Optional[torch.dtype] = None
) -> torch.Tensor:
    """``tr √(A^{1/2} B A^{1/2})`` of positive semidefinite ``A``, ``B`` (the fidelity term of
    the Bures and Fréchet distances): (...).

    Both are checked in the dtype given (symmetric and positive semidefinite to its
    round-off: a float32 covariance of fewer samples than dimensions passes).
    Its gradient needs the square roots' derivatives: where ``A`` or ``A^{1/2} B A^{1/2}``
    has two zero eigenvalues (rank-deficient covariances) it is infinite, and the backward
    raises :class:`NotDifferentiableError` (add ``eps·I``) rather than return NaN.

    Examples:
        >>> import torch, stableeig as se
        >>> round(float(se.trace_sqrt_product(torch.eye(3), 4 * torch.eye(3))), 4)
        6.0
    """
    where = "trace_sqrt_product"
    A, B, result = _pair(where, A, B, compute_dtype)
    fidelity = _fidelity(where, A, B, result, ("A", "B"))
    return checks.rounded_checked(where, "the trace", fidelity, result)


def bures_wasserstein(
    A: torch.Tensor,
    B: torch.Tensor,
    *,
    squared: bool = False,
    compute_dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    """Bures–Wasserstein distance ``√(tr A + tr B - 2 tr √(A^{1/2} B A^{1/2}))`` between
    positive semidefinite matrices (the 2-Wasserstein distance of zero-mean Gaussians): (...).

    ``A`` and ``B`` are checked in the dtype given (symmetric and positive semidefinite to
    its round-off), the whole sum is formed in the working precision and rounded once: 0
    exactly for bit-identical inputs in every dtype, never negative. The unsquared distance
    reads ``d² <= n · eps · (tr A + tr B)`` (``eps`` of the working precision: the round-off
    of the trace terms alone) as 0, with gradient 0 there (the subgradient at the minimum).

    Args:
        A, B: (..., n, n), broadcastable batches.
        squared: return the square (smooth at ``A == B``). Default: False.
        compute_dtype: least working precision. Default: None (float64).

    Examples:
        >>> import torch, stableeig as se
        >>> round(float(se.bures_wasserstein(torch.eye(2), 4 * torch.eye(2))), 4)
        1.4142
    """
    d2, floor, result = _bures_squared("bures_wasserstein", A, B, compute_dtype)
    distance = d2 if squared else _root(d2, floor)
    return checks.rounded_checked("bures_wasserstein", "the distance", distance, result)


bures_wasserstein_distance = bures_wasserstein
"""The same function under the ``_distance`` name of its siblings (``bures_wasserstein``
stays, for code written against 0.5)."""


def frechet_distance(
    mu1: torch.Tensor,
    sigma1: torch.Tensor,
    mu2: torch.Tensor,
    sigma2: torch.Tensor,
    *,
    compute_dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    """Fréchet distance between Gaussians, ``‖μ₁ - μ₂‖² + BW²(Σ₁, Σ₂)`` — the FID formula:
    (...). Means (..., n), covariances (..., n, n), checked as in :func:`bures_wasserstein`;
    the sum is formed in the working precision and rounded once to the promoted dtype of
    all four arguments: 0 exactly for bit-identical statistics, never negative.

    Its gradient is covariance-level: where both covariances are rank-deficient (fewer
    samples than dimensions) it is infinite and the backward raises; the gradient with
    respect to the features exists there: :func:`stableeig.frechet_distance_from_features`.

    Examples:
        >>> import torch, stableeig as se
        >>> float(se.frechet_distance(torch.zeros(3), torch.eye(3), torch.zeros(3), torch.eye(3)))
        0.0
    """
    where = "frechet_distance"
    for name, mean, sigma in (("mu1", mu1, sigma1), ("mu2", mu2, sigma2)):
        if not isinstance(sigma, torch.Tensor):
            continue  # _pair names it
        if not isinstance(mean, torch.Tensor) or mean.shape[-1:] != sigma.shape[-1:]:
            shape = tuple(mean.shape) if isinstance(mean, torch.Tensor) else type(mean).__name__
            raise ShapeError(
                f"{where}: {name}: expected a mean of size {sigma.shape[-1]} (got {shape})"
            )
        if mean.dtype not in checks.FLOATING_DTYPES:
            raise DTypeError(f"{where}: {name}: expected a real floating dtype (got {mean.dtype})")
        checks.check_finite(f"{where}: {name}", mean)
    d2, _, result = _bures_squared(where, sigma1, sigma2, compute_dtype, ("sigma1", "sigma2"))
    result = torch.promote_types(result, torch.promote_types(mu1.dtype, mu2.dtype))
    means = (mu1.to(d2.dtype) - mu2.to(d2.dtype)).square().sum(-1)
    return checks.rounded_checked(where, "the distance", means + d2, result)


def log_euclidean_distance(
    A: torch.Tensor, B: torch.Tensor, *, compute_dtype: Optional[torch.dtype] = None
) -> torch.Tensor:
    """``‖log A - log B‖_F`` of symmetric positive definite matrices: (...).

    Examples:
        >>> import torch, stableeig as se
        >>> round(float(se.log_euclidean_distance(torch.eye(2), torch.e * torch.eye(2))), 4)
        1.4142
    """
    where = "log_euclidean_distance"
    A_in, B_in = A, B
    A, B, result = _pair(where, A, B, compute_dtype)
    logs = (
        _checked(LOG, require_positive(), where, "A", A, result),
        _checked(LOG, require_positive(), where, "B", B, result),
    )
    scale = torch.maximum(logs[0].abs().amax((-2, -1)), logs[1].abs().amax((-2, -1))) + 1
    d2 = (logs[0] - logs[1]).square().sum((-2, -1))
    d2 = torch.where(_identical(A_in, B_in), torch.zeros_like(d2), d2)
    return _root(d2, _resolution(A.shape[-1], A.dtype, scale)).to(result)


def airm_distance(
    A: torch.Tensor, B: torch.Tensor, *, compute_dtype: Optional[torch.dtype] = None
) -> torch.Tensor:
    """Affine-invariant Riemannian distance ``‖log(A^{-1/2} B A^{-1/2})‖_F`` of symmetric
    positive definite matrices: (...).

    Examples:
        >>> import torch, stableeig as se
        >>> round(float(se.airm_distance(2 * torch.eye(2), 2 * torch.e * torch.eye(2))), 4)
        1.4142
    """
    where = "airm_distance"
    A_in, B_in = A, B
    A, B, result = _pair(where, A, B, compute_dtype)
    root = _checked(INV_SQRT, require_positive(), where, "A", A, result)
    inner = root @ B @ root
    log = _checked(LOG, require_positive(), where, "B", (inner + inner.mT) / 2, result)
    d2 = log.square().sum((-2, -1))
    d2 = torch.where(_identical(A_in, B_in), torch.zeros_like(d2), d2)
    condition = (
        torch.linalg.matrix_norm(A.detach(), 2) * torch.linalg.matrix_norm(root.detach(), 2) ** 2
    )
    return _root(d2, _resolution(A.shape[-1], A.dtype, condition)).to(result)
