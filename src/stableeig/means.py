"""Means and geodesics of symmetric positive definite matrices, built on the spectral
functions (gradients exact and finite at tied eigenvalues): the log-Euclidean mean, the
affine-invariant (Karcher / Fréchet) mean and the affine-invariant geodesic.

``X`` holds the matrices to average along ``dim`` (default 0): (..., N, ..., n, n) →
(..., ..., n, n). The computation runs in the working precision (float64 unless
``compute_dtype`` says otherwise) and returns ``X``'s dtype.
"""

from __future__ import annotations

from typing import Optional, Union

import torch

from . import _validation as checks
from ._precision import working_dtype
from .exceptions import ArgumentError, ShapeError, StableEigError
from .matrix_functions import expm, logm, powm
from .rules import Rule
from .spectral import inv_sqrtm, sqrtm

__all__ = ["airm_geodesic", "airm_mean", "log_euclidean_mean"]

Backward = Union[str, Rule]


def _samples(name: str, X: object, dim: int) -> tuple[torch.Tensor, int]:
    """``X`` checked (square, finite, symmetric: once here, so the steps below skip the
    symmetry test of matrices they symmetrize themselves), and ``dim`` as a non-negative
    axis that is not a matrix axis."""
    X = checks.check_square_matrix(f"{name}: X", X)
    checks.check_finite_symmetric(f"{name}: X", X)
    batch = X.dim() - 2
    if batch == 0:
        raise ShapeError(
            f"{name}: X: expected matrices to average, (N, n, n) or (..., N, ..., n, n) (got "
            f"one matrix of shape {tuple(X.shape)})"
        )
    total = X.dim()  # a negative dim counts every axis, as in torch
    axis = dim + total if isinstance(dim, int) and not isinstance(dim, bool) and dim < 0 else dim
    if isinstance(dim, bool) or not isinstance(dim, int) or not 0 <= axis < batch:
        matrix = " (a matrix axis)" if isinstance(axis, int) and batch <= axis < total else ""
        raise ArgumentError(
            f"{name}: dim: expected an axis of the batch dimensions of X, in "
            f"[0, {batch - 1}] or [{-total}, {-3}] for shape {tuple(X.shape)} (got "
            f"{dim!r}{matrix})"
        )
    dim = axis
    if X.shape[dim] == 0:
        raise ShapeError(f"{name}: X: expected at least one matrix along dim {dim} (got 0)")
    return X, dim


def _weights(name: str, weights: Optional[torch.Tensor], count: int) -> Optional[torch.Tensor]:
    """``weights`` checked (``count`` finite values >= 0, not all 0) and normalized to sum 1,
    as a (count, 1, 1) tensor; None stays None (equal weights)."""
    if weights is None:
        return None
    if not isinstance(weights, torch.Tensor) or weights.shape != (count,):
        shape = tuple(weights.shape) if isinstance(weights, torch.Tensor) else weights
        raise ShapeError(
            f"{name}: weights: expected shape ({count},), one per matrix (got {shape!r})"
        )
    valid = (torch.isfinite(weights) & (weights >= 0)).all() & (weights.sum() > 0)
    if checks.in_graph():
        message = f"{name}: weights: expected finite values >= 0 with a positive sum"
        checks.assert_in_graph(valid, message)
    elif checks.host_checks_enabled(valid) and not bool(valid):
        raise ArgumentError(
            f"{name}: weights: expected finite values >= 0 with a positive sum (got "
            f"{weights.tolist() if count <= 8 else 'other values'})"
        )
    return (weights / weights.sum()).view(count, 1, 1)


def _average(T: torch.Tensor, weights: Optional[torch.Tensor]) -> torch.Tensor:
    """The (weighted) mean of (..., N, n, n) over N, symmetrized exactly."""
    mean = T.mean(-3) if weights is None else (T * weights.to(T.device, T.dtype)).sum(-3)
    return (mean + mean.mT) / 2


def _congruence(C: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """``C X Cᵀ`` for symmetric ``C``, symmetrized exactly."""
    Y = C @ X @ C
    return (Y + Y.mT) / 2


def log_euclidean_mean(
    X: torch.Tensor,
    dim: int = 0,
    backward: Backward = "loewner",
    *,
    weights: Optional[torch.Tensor] = None,
    compute_dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    """``exp(mean log X)`` along ``dim``: the mean in the log-Euclidean metric.

    ``weights`` (one per matrix along ``dim``, >= 0) give ``exp(Σ wᵢ log Xᵢ / Σ wᵢ)``.

    Examples:
        >>> import torch, stableeig as se
        >>> X = torch.stack([torch.eye(2), torch.e ** 2 * torch.eye(2)])
        >>> [round(v, 4) for v in se.log_euclidean_mean(X).diagonal().tolist()]
        [2.7183, 2.7183]
    """
    X, dim = _samples("log_euclidean_mean", X, dim)
    w = _weights("log_euclidean_mean", weights, X.shape[dim])
    work = X.to(working_dtype(X.dtype, compute_dtype)).movedim(dim, -3)
    logs = _average(logm(work, backward, check_symmetric=False), w)
    mean = expm(logs, backward, check_symmetric=False)
    return checks.rounded_checked("log_euclidean_mean", "the mean", mean, X.dtype)


def _centered_logs(
    G: torch.Tensor, X: torch.Tensor, backward: Backward
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(G^{1/2}, log(G^{-1/2} X G^{-1/2}))`` for ``G`` (…, n, n) and ``X`` (…, N, n, n)."""
    # every matrix below is symmetric up to round-off (X was checked): no symmetry tests,
    # and no symmetrization before a spectral function, which symmetrizes its input itself
    root = sqrtm(G, backward, check_symmetric=False)
    inverse_root = inv_sqrtm(G, backward, check_symmetric=False).unsqueeze(-3)
    return root, logm(inverse_root @ X @ inverse_root, backward, check_symmetric=False)


def _karcher_step(
    G: torch.Tensor,
    X: torch.Tensor,
    weights: Optional[torch.Tensor],
    backward: Backward,
    step_size: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One Karcher-flow step from ``G`` (…, n, n) over ``X`` (…, N, n, n): the new iterate
    ``G^{1/2} exp(ν T) G^{1/2}`` and ``T = mean log(G^{-1/2} X G^{-1/2})`` (weighted), the
    Riemannian gradient at ``G`` seen from the identity (0 at the mean); ``ν`` (…) the
    step size, 1 when None."""
    root, logs = _centered_logs(G, X, backward)
    tangent = _average(logs, weights)
    scaled = tangent if step_size is None else tangent * step_size[..., None, None]
    return _congruence(root, expm(scaled, backward, check_symmetric=False)), tangent


def airm_mean(
    X: torch.Tensor,
    dim: int = 0,
    backward: Backward = "loewner",
    *,
    steps: Optional[int] = None,
    tolerance: Optional[float] = None,
    max_steps: int = 100,
    weights: Optional[torch.Tensor] = None,
    compute_dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    """The affine-invariant Riemannian (Karcher, Fréchet) mean along ``dim``: the SPD ``G``
    with ``Σᵢ log(G^{-1/2} Xᵢ G^{-1/2}) = 0``, by the Karcher flow
    ``G ← G^{1/2} exp(ν · mean log(G^{-1/2} X G^{-1/2})) G^{1/2}`` from the arithmetic mean,
    with pyRiemann's step-size control per matrix (``ν = 1`` first; then ``ν ← 0.95 ν`` while
    the step ``ν ‖T‖`` keeps shrinking, else ``ν ← ν / 2``), so dispersed data (condition
    numbers 1e3…1e8) converge where the unit-step flow diverges. The control is tensor
    arithmetic: ``steps=`` still needs no host synchronization.

    Every iterate is affine-equivariant (``mean(M X Mᵀ) = M mean(X) Mᵀ`` for invertible
    ``M``), also after a fixed number of steps; for commuting matrices one step is exact.
    Gradients are those of the computed iterations (unrolled, exact per step).

    Args:
        steps: run exactly this many steps (no host synchronization: the form for layers,
            ``torch.compile`` and ``torch.func``; Brooks et al.'s SPD batch norm uses 1).
            What it guarantees: the first step is the unit step (exact for commuting
            matrices); every iterate is affine-equivariant and SPD; the gradient norm is
            not guaranteed to be small (check it, or use ``steps=None``).
            Default: None — iterate until the gradient norm ``‖mean log(…)‖_F`` is at most
            ``tolerance`` (one synchronization per step).
        tolerance: > 0. Default: ``sqrt(eps)`` of the working precision (1.5e-8 in float64).
        max_steps: with ``steps=None``, raise if not converged within this many. Default: 100.
        weights: (N,) values >= 0, one per matrix along ``dim``: the weighted mean, the zero
            of ``Σ wᵢ log(G^{-1/2} Xᵢ G^{-1/2})`` (from the weighted arithmetic mean).
            Default: None (equal weights).
        backward, compute_dtype: as :func:`stableeig.logm`.

    Raises:
        StableEigError: the flow did not reach ``tolerance`` within ``max_steps`` (data too
            spread for the unit step of the Karcher flow).

    Examples:
        >>> import torch, stableeig as se
        >>> X = torch.diag_embed(torch.tensor([[1.0, 4.0], [4.0, 1.0]]))
        >>> se.airm_mean(X).diagonal().tolist()
        [2.0, 2.0]
    """
    X, dim = _samples("airm_mean", X, dim)
    if steps is not None:
        steps = checks.check_int_at_least("airm_mean: steps", steps, 0)
    max_steps = checks.check_int_at_least("airm_mean: max_steps", max_steps, 1)
    w = _weights("airm_mean", weights, X.shape[dim])
    work = X.to(working_dtype(X.dtype, compute_dtype)).movedim(dim, -3)
    limit = (
        torch.finfo(work.dtype).eps ** 0.5
        if tolerance is None
        else checks.check_positive("airm_mean: tolerance", tolerance)
    )
    G = _average(work, w)
    if steps is not None:
        mean = _fixed_steps(G, work, w, backward, steps)
    else:
        mean = _converged(G, work, w, backward, limit, max_steps)
    return checks.rounded_checked("airm_mean", "the mean", mean, X.dtype)


def _fixed_steps(
    G: torch.Tensor, X: torch.Tensor, weights: Optional[torch.Tensor], backward: Backward,
    steps: int,
) -> torch.Tensor:  # fmt: skip
    """``steps`` Karcher steps with pyRiemann's step-size control, as tensor arithmetic per
    matrix (no host synchronization): ``ν = 1`` first, then ``0.95 ν`` while the step
    ``ν ‖T‖`` shrinks, else ``ν / 2``."""
    step_size = torch.ones(G.shape[:-2], dtype=G.dtype, device=G.device)
    previous = torch.full_like(step_size, torch.finfo(G.dtype).max)
    for _ in range(steps):
        G, tangent = _karcher_step(G, X, weights, backward, step_size)
        moved = step_size * torch.linalg.matrix_norm(tangent.detach())
        shrinking = moved < previous
        step_size = torch.where(shrinking, 0.95 * step_size, 0.5 * step_size)
        previous = torch.where(shrinking, moved, previous)
    return G


def _tangent(
    G: torch.Tensor, X: torch.Tensor, weights: Optional[torch.Tensor], backward: Backward
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(G^{1/2}, T, f)``: ``T = mean log(G^{-1/2} X G^{-1/2})`` the Riemannian gradient at
    ``G`` seen from the identity, ``f = mean ‖log(G^{-1/2} Xᵢ G^{-1/2})‖²_F`` the Karcher
    objective (detached; weighted means where ``weights`` are given)."""
    root, logs = _centered_logs(G, X, backward)
    squares = logs.detach().square().sum((-2, -1))
    objective = squares.mean(-1) if weights is None else (squares * weights[:, 0, 0]).sum(-1)
    return root, _average(logs, weights), objective


def _converged(
    G: torch.Tensor, X: torch.Tensor, weights: Optional[torch.Tensor], backward: Backward,
    limit: float, max_steps: int,
) -> torch.Tensor:  # fmt: skip
    """Riemannian gradient descent with backtracking per matrix until ``max ‖T‖_F <= limit``:
    a step ``G^{1/2} exp(ν T) G^{1/2}`` is kept only where it lowers the Karcher objective or
    the gradient norm (then ``ν`` grows by 10 % toward 1, the Karcher flow's unit step), else
    ``ν`` halves and the step is retried from ``G``."""
    root, tangent, objective = _tangent(G, X, weights, backward)
    norm = torch.linalg.matrix_norm(tangent.detach())
    step_size = torch.ones_like(objective)
    if not checks.readable(norm):  # the meta device: the shape is all there is to find
        return G
    for _ in range(max_steps):
        if float(norm.amax()) <= limit:
            return G
        scaled = tangent * step_size[..., None, None]
        candidate = _congruence(root, expm(scaled, backward, check_symmetric=False))
        root_c, tangent_c, objective_c = _tangent(candidate, X, weights, backward)
        norm_c = torch.linalg.matrix_norm(tangent_c.detach())
        # lower objective, or (near the mean, where the objective's changes ~‖T‖² sink
        # below its round-off) a smaller gradient
        better = (objective_c < objective) | (norm_c < norm)
        keep = better[..., None, None]
        G = torch.where(keep, candidate, G)
        root = torch.where(keep, root_c, root)
        tangent = torch.where(keep, tangent_c, tangent)
        objective = torch.where(better, objective_c, objective)
        norm = torch.where(better, norm_c, norm)
        step_size = torch.where(better, (1.1 * step_size).clamp_max(1), step_size / 2)
    residual = float(norm.amax())
    if residual <= limit:
        return G
    w = torch.linalg.eigvalsh(X.detach())
    condition = float((w[..., -1] / w[..., 0].clamp_min(torch.finfo(w.dtype).tiny)).amax())
    floor = torch.finfo(X.dtype).eps * condition  # the tangent's round-off at that condition
    why = (
        f"; at X's condition number {condition:.3g} the gradient norm is resolved only to "
        f"about eps · condition = {floor:.2g}: pass tolerance >= {floor:.2g}"
        if floor > limit
        else ""
    )
    raise StableEigError(
        f"airm_mean: X: the Karcher flow did not converge in max_steps={max_steps} "
        f"steps (gradient norm {residual:.3g} > tolerance {limit:.3g}){why}; raise "
        f"max_steps or tolerance, or pass steps= for a fixed number of steps"
    )


def airm_geodesic(
    A: torch.Tensor,
    B: torch.Tensor,
    t: Union[float, torch.Tensor],
    backward: Backward = "loewner",
    *,
    compute_dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    """The point at ``t`` of the affine-invariant geodesic from ``A`` (``t = 0``) to ``B``
    (``t = 1``): ``A^{1/2} (A^{-1/2} B A^{-1/2})^t A^{1/2}`` (any real ``t``; a 0-dim tensor
    ``t`` may require grad): (..., n, n). ``t = 1/2`` is the mean of two matrices.

    Examples:
        >>> import torch, stableeig as se
        >>> se.airm_geodesic(torch.eye(2), 4 * torch.eye(2), 0.5).diagonal().tolist()
        [2.0, 2.0]
    """
    for name, M in (("A", A), ("B", B)):
        checks.check_square_matrix(f"airm_geodesic: {name}", M)
        checks.check_finite_symmetric(f"airm_geodesic: {name}", M)
    if A.shape[-1] != B.shape[-1]:
        raise ShapeError(
            f"airm_geodesic: B: expected matrices of A's size {A.shape[-1]} (got shape "
            f"{tuple(B.shape)})"
        )
    result = torch.promote_types(A.dtype, B.dtype)
    work = working_dtype(result, compute_dtype)
    A, B = A.to(work), B.to(work)  # checked; the spectral functions symmetrize their inputs
    inverse_root = inv_sqrtm(A, backward, check_symmetric=False)
    inner = powm(inverse_root @ B @ inverse_root, t, backward, check_symmetric=False)
    point = _congruence(sqrtm(A, backward, check_symmetric=False), inner)
    return checks.rounded_checked("airm_geodesic", "the point", point, result)
