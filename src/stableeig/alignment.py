"""Rigid alignment of point sets — orthogonal Procrustes, Kabsch, Umeyama — with exact
gradients at symmetric configurations, where the SVD people copy returns NaN.

The rotation is :func:`~stableeig.special_orthogonalize` (or :func:`~stableeig.polar`) of
the weighted cross-covariance, so it inherits their exact first and second derivatives
and their per-sample ``undefined`` policy.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from . import _validation as checks
from ._precision import autocast_off, working_dtype
from .exceptions import ArgumentError, DTypeError, ShapeError
from .singular import _apply, _check_matrices, _special

__all__ = ["ProcrustesResult", "kabsch", "kabsch_rmsd", "procrustes"]


class ProcrustesResult(NamedTuple):
    """``s R x + t`` maps the source points onto the targets: ``rotation`` (..., d, d),
    ``translation`` (..., d), ``scale`` (...,) (1 without ``scale=True``)."""

    rotation: torch.Tensor
    translation: torch.Tensor
    scale: torch.Tensor


def procrustes(
    X: torch.Tensor,
    Y: torch.Tensor,
    *,
    weights: Optional[torch.Tensor] = None,
    mask: Optional[torch.Tensor] = None,
    reflection: bool = False,
    scale: bool = False,
    center: bool = True,
    undefined: str = "raise",
    compute_dtype: Optional[torch.dtype] = None,
) -> ProcrustesResult:
    """Orthogonal Procrustes / Kabsch / Umeyama alignment with exact gradients: the ``R``
    (a rotation, or with ``reflection=True`` any orthogonal matrix), ``t`` and ``s`` that
    minimize ``Σᵢ wᵢ ‖s R xᵢ + t - yᵢ‖²``, batched.

    ``R`` is :func:`special_orthogonalize` (or :func:`polar`) of the weighted
    cross-covariance ``M = Σ wᵢ (yᵢ - ȳ)(xᵢ - x̄)ᵀ``, so the gradients to both point sets are
    exact at symmetric configurations (tied singular values of ``M``: squares, regular
    polygons, coplanar frames), where the gradient through ``torch.linalg.svd`` is NaN.
    Where the rotation is not unique (collinear points: rank ``M`` <= d - 2; a reflection
    with tied smallest singular values), ``undefined`` decides: ``"raise"`` or ``"zero"``
    (those samples get a zero gradient). Padded points: weight 0.

    Args:
        X: source points (..., N, d).
        Y: target points (..., N, d), the same shape.
        weights: (..., N) finite, >= 0, not all 0 per sample. Default: None (all 1).
        mask: (..., N) bool, False for padding points (weight 0). Default: None (all kept).
        reflection: allow ``det R = -1``. Default: False (Kabsch: a rotation).
        scale: fit the scale ``s`` too (Umeyama). Default: False.
        center: fit the translation (centre both sets first). Default: True.
        undefined: ``"raise"`` or ``"zero"``. Default: ``"raise"``.
        compute_dtype: least working precision. Default: None (float64).

    Returns:
        :class:`ProcrustesResult` in the promoted dtype of the inputs.

    Examples:
        >>> import torch, stableeig as se
        >>> X = torch.randn(10, 3, dtype=torch.float64)
        >>> R = se.special_orthogonalize(torch.randn(3, 3, dtype=torch.float64))
        >>> fit = se.procrustes(X, X @ R.T + 1.0)
        >>> torch.allclose(fit.rotation, R), torch.allclose(fit.translation, 1 + 0 * X[0])
        (True, True)
    """
    return _procrustes("procrustes", X, Y, weights, mask, reflection, scale, center, undefined,
                       compute_dtype)  # fmt: skip


def _procrustes(
    name: str, X: torch.Tensor, Y: torch.Tensor, weights: Optional[torch.Tensor],
    mask: Optional[torch.Tensor], reflection: bool, scale: bool, center: bool, undefined: str,
    compute_dtype: Optional[torch.dtype],
) -> ProcrustesResult:  # fmt: skip
    fit, _, _, _ = _fit(name, X, Y, weights, mask, reflection, scale, center, undefined,
                        compute_dtype)  # fmt: skip
    result = torch.promote_types(X.dtype, Y.dtype)
    return ProcrustesResult(
        *(
            checks.rounded_checked(name, what, part, result)
            for what, part in zip(("the rotation", "the translation", "the scale"), fit)
        )
    )


def _fit(
    name: str, X: torch.Tensor, Y: torch.Tensor, weights: Optional[torch.Tensor],
    mask: Optional[torch.Tensor], reflection: bool, scale: bool, center: bool, undefined: str,
    compute_dtype: Optional[torch.dtype],
) -> tuple[ProcrustesResult, torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """The fit in the working dtype, with the weights (..., N) and the (centred) point sets
    (..., N, d) it was computed from."""
    X = _check_matrices(f"{name}: X", X)
    Y = _check_matrices(f"{name}: Y", Y)
    if X.shape != Y.shape:
        raise ShapeError(
            f"{name}: Y: expected the shape of X, {tuple(X.shape)} (got {tuple(Y.shape)})"
        )
    checks.check_choice(f"{name}: undefined", undefined, ("raise", "zero"))
    result = torch.promote_types(X.dtype, Y.dtype)
    work = working_dtype(result, compute_dtype)
    w = _point_weights(name, X, weights, mask, work)
    with autocast_off(X.device):
        x, y = X.to(work), Y.to(work)
        total = w.sum(-1, keepdim=True)  # (..., 1)
        if center:
            x_mean = (w[..., None] * x).sum(-2) / total
            y_mean = (w[..., None] * y).sum(-2) / total
            x, y = x - x_mean[..., None, :], y - y_mean[..., None, :]
        else:
            x_mean = y_mean = torch.zeros(X.shape[:-2] + X.shape[-1:], dtype=work, device=X.device)
        M = (w[..., None] * y).mT @ x  # (..., d, d): Σ wᵢ yᵢ xᵢᵀ
        if reflection:
            R = _apply(M, torch.ones_like, torch.zeros_like, work, name)
        else:
            R = _special(M, undefined, work, name)
        if scale:
            spread = (w * x.square().sum(-1)).sum(-1)
            s = (R * M).sum((-2, -1)) / spread
        else:
            s = torch.ones(X.shape[:-2], dtype=work, device=X.device)
        t = y_mean - s[..., None] * (R @ x_mean[..., None])[..., 0]
    return ProcrustesResult(R, t, s), w, x, y


def _point_weights(
    name: str, X: torch.Tensor, weights: Optional[torch.Tensor], mask: Optional[torch.Tensor],
    work: torch.dtype,
) -> torch.Tensor:  # fmt: skip
    """(..., N) weights in ``work``: ``weights`` (or 1) times ``mask``, checked."""
    shape = tuple(X.shape[:-1])
    for label, value in (("weights", weights), ("mask", mask)):
        if value is not None and (not isinstance(value, torch.Tensor) or value.shape != shape):
            got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ShapeError(f"{name}: {label}: expected shape {shape}, one per point (got {got})")
    if mask is not None and mask.dtype != torch.bool:
        raise DTypeError(f"{name}: mask: expected a bool tensor, True for real points "
                         f"(got {mask.dtype})")  # fmt: skip
    if weights is None:
        w = torch.ones(shape, dtype=work, device=X.device)
    else:
        checks.check_finite(f"{name}: weights", weights)
        w = weights.to(work)
    if mask is not None:
        w = torch.where(mask, w, torch.zeros_like(w))
    if weights is None and mask is None:
        return w  # all 1: nothing to check
    if checks.host_checks_enabled(w) and not bool(((w >= 0).all(-1) & (w > 0).any(-1)).all()):
        raise ArgumentError(
            f"{name}: weights: expected values >= 0, not all 0 (or masked) in any sample (got a "
            "negative weight or a sample without a weighted point)"
        )
    return w


def kabsch(
    X: torch.Tensor,
    Y: torch.Tensor,
    *,
    weights: Optional[torch.Tensor] = None,
    mask: Optional[torch.Tensor] = None,
    undefined: str = "raise",
    compute_dtype: Optional[torch.dtype] = None,
) -> ProcrustesResult:
    """The Kabsch superposition: the rotation ``R`` and translation ``t`` minimizing
    ``Σᵢ wᵢ ‖R xᵢ + t - yᵢ‖²`` (:func:`procrustes` with a proper rotation, no scale), batched,
    with padded points masked out.

    Examples:
        >>> import torch, stableeig as se
        >>> X = torch.randn(2, 6, 3, dtype=torch.float64)
        >>> R = se.special_orthogonalize(torch.randn(2, 3, 3, dtype=torch.float64))
        >>> mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])   # two padded points
        >>> Y = X @ R.mT
        >>> Y[1, 4:] = 100.0                                                # ignored
        >>> torch.allclose(se.kabsch(X, Y, mask=mask).rotation, R)
        True
    """
    return _procrustes("kabsch", X, Y, weights, mask, False, False, True, undefined,
                       compute_dtype)  # fmt: skip


def kabsch_rmsd(
    X: torch.Tensor,
    Y: torch.Tensor,
    *,
    weights: Optional[torch.Tensor] = None,
    mask: Optional[torch.Tensor] = None,
    undefined: str = "raise",
    compute_dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    """The root-mean-square deviation after Kabsch superposition,
    ``√(Σᵢ wᵢ ‖R x̃ᵢ - ỹᵢ‖² / Σᵢ wᵢ)`` over centred points (...,): the alignment loss of
    structure prediction. Its gradient is exact at symmetric and coplanar structures
    (:func:`kabsch`); where the structures coincide, the RMSD has a kink like ``|x|``: the
    gradient is 0 where the computed deviation is exactly 0, and otherwise a subgradient of
    norm <= 1 with respect to each point set (the direction of the round-off), never NaN.

    Examples:
        >>> import torch, stableeig as se
        >>> X = torch.randn(5, 3, dtype=torch.float64)
        >>> R = se.special_orthogonalize(torch.randn(3, 3, dtype=torch.float64))
        >>> float(se.kabsch_rmsd(X, X @ R.T + 2.0)) < 1e-12
        True
    """
    fit, w, x, y = _fit("kabsch_rmsd", X, Y, weights, mask, False, False, True, undefined,
                        compute_dtype)  # fmt: skip
    with autocast_off(x.device):
        residual = x @ fit.rotation.mT - y  # centred: R x̃ᵢ - ỹᵢ = R xᵢ + t - yᵢ
        squared = (w * residual.square().sum(-1)).sum(-1) / w.sum(-1)
        positive = squared > 0
        rmsd = torch.where(positive, torch.where(positive, squared, 1.0).sqrt(), 0.0)
    return checks.rounded_checked(
        "kabsch_rmsd", "the deviation", rmsd, torch.promote_types(X.dtype, Y.dtype)
    )
