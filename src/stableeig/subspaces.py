"""Angles and distances between subspaces, accurate at both ends and differentiable where
angles coincide."""

from __future__ import annotations

from typing import Optional

import torch

from ._precision import autocast_off, working_dtype
from .exceptions import ShapeError
from .singular import _check_matrices

__all__ = ["grassmann_distance", "principal_angles"]


def principal_angles(
    X: torch.Tensor, Y: torch.Tensor, *, compute_dtype: Optional[torch.dtype] = None
) -> torch.Tensor:
    """The principal angles between the column spaces of ``X`` (..., n, p) and ``Y``
    (..., n, q), ascending, ``min(p, q)`` of them, in [0, π/2].

    Accurate at both ends (Knyazev and Argentati's rule): from the cosines
    ``svdvals(Qxᵀ Qy)`` where ``cos θ < 1/√2`` and from the sines ``svdvals(Qy - Qx Qxᵀ Qy)``
    (taken from the wider basis's side) where ``sin θ < 1/√2`` — ``arccos`` alone loses
    half the digits of small angles. Gradients are finite where angles coincide, and every
    symmetric function of the angles (:func:`grassmann_distance`) is differentiable there;
    a single angle at 0 has a kink (its gradient is one of the subgradients).

    Args:
        X: a basis of the first subspace (..., n, p), full column rank (orthonormalized here).
        Y: a basis of the second (..., n, q), same ``n``.
        compute_dtype: least working precision. Default: None (float64).

    Returns:
        (..., min(p, q)) angles in radians, in the promoted dtype of the inputs.

    Examples:
        >>> import torch, stableeig as se
        >>> X = torch.eye(3, dtype=torch.float64)[:, :2]          # the xy-plane
        >>> Y = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], dtype=torch.float64)
        >>> [round(a, 4) for a in se.principal_angles(X, Y).tolist()]
        [0.0, 0.7854]
    """
    name = "principal_angles"
    X = _check_matrices(f"{name}: X", X)
    Y = _check_matrices(f"{name}: Y", Y)
    if X.shape[-2] != Y.shape[-2]:
        raise ShapeError(
            f"{name}: Y: expected {X.shape[-2]} rows, as X (got shape {tuple(Y.shape)})"
        )
    result = torch.promote_types(X.dtype, Y.dtype)
    work = working_dtype(result, compute_dtype)
    with autocast_off(X.device):
        Qx = torch.linalg.qr(X.to(work)).Q
        Qy = torch.linalg.qr(Y.to(work)).Q
        if Qx.shape[-1] < Qy.shape[-1]:  # the sines from the side of the smaller basis
            Qx, Qy = Qy, Qx
        cross = Qx.mT @ Qy  # (..., p, q), p >= q
        cosines = torch.linalg.svdvals(cross).clamp(max=1)  # descending: ascending angles
        sines = torch.linalg.svdvals(Qy - Qx @ cross).flip(-1).clamp(max=1)  # ascending
        small = sines < 0.5**0.5  # θ < π/4: the arcsine of the sine, else arccos(cosine)
        zeros = torch.zeros_like(sines)  # (the other branch at 0: no Inf · 0 in backward)
        by_sine = torch.asin(torch.where(small, sines, zeros))
        by_cosine = torch.acos(torch.where(small, zeros, cosines))
        angles = torch.where(small, by_sine, by_cosine)
    return angles.to(result)


def grassmann_distance(
    X: torch.Tensor, Y: torch.Tensor, *, compute_dtype: Optional[torch.dtype] = None
) -> torch.Tensor:
    """The geodesic distance ``‖θ‖₂`` between the column spaces of ``X`` and ``Y`` on the
    Grassmann manifold (:func:`principal_angles`), (...,); its gradient is exact where
    angles coincide and finite everywhere: between identical subspaces, where the distance
    has a kink like ``|x|``, it is 0 if the computed angles are exactly 0 and otherwise a
    bounded subgradient (the angles are round-off there).

    Examples:
        >>> import torch, stableeig as se
        >>> X = torch.eye(3, dtype=torch.float64)[:, :1]
        >>> round(float(se.grassmann_distance(X, torch.ones(3, 1, dtype=torch.float64))), 4)
        0.9553
    """
    angles = principal_angles(X, Y, compute_dtype=compute_dtype)
    squared = angles.square().sum(-1)
    positive = squared > 0
    return torch.where(positive, torch.where(positive, squared, 1.0).sqrt(), 0.0)
