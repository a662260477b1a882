"""The orthogonal parametrization of :class:`~stableeig.nn.BiMap`'s weights.

``torch.nn.utils.parametrizations.orthogonal`` with its ``"householder"`` map forms the
product of the Householder reflections by ``torch.linalg.householder_product``, whose
backward loops over the reflections. Here the same map forms the product in closed form,
``Q = I - V T Vᵀ`` with ``T⁻¹ = triu(VᵀV, 1) + diag(1/τ)`` (the UT transform of Joffrain,
Low, Quintana-Ortí, van de Geijn and Van Zee, ACM TOMS 32(2), 2006): two batched matrix
products and one triangular solve, differentiated by autograd. Same parameters, same
buffers and state dict, same ``W`` to rounding (``QᵀQ = I`` to a few ulps, as LAPACK's);
the forward and backward of a 22 × 16 map took 0.29–0.34× torch's time, 64 × 32 0.17×,
256 × 128 0.08–0.10× (one thread, ``python benchmarks/householder.py``,
``results/householder.md``).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import _OrthMaps, _Orthogonal, orthogonal

__all__ = ["householder_columns", "orthogonal_weight"]


def householder_columns(reflectors: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """``torch.linalg.householder_product(reflectors, tau)``: the first ``k`` columns of
    ``H₁ ⋯ H_k``, ``H_i = I - τ_i v_i v_iᵀ``, ``v_i`` column ``i`` of ``reflectors`` below
    its diagonal with a unit diagonal; (..., n, k) for (..., n, k) ``reflectors`` (n >= k)
    and (..., k) ``tau`` (nonzero)."""
    n, k = reflectors.shape[-2:]
    eye = torch.eye(n, k, dtype=reflectors.dtype, device=reflectors.device)
    V = reflectors.tril(-1) + eye
    T_inverse = (V.mT @ V).triu(1) + torch.diag_embed(tau.reciprocal())
    # T (V[:k])ᵀ, with V[:k] the unit lower triangular top: one triangular solve
    TVt = torch.linalg.solve_triangular(T_inverse, V[..., :k, :].mT, upper=True)
    return eye - V @ TVt


class _Householder(_Orthogonal):
    """torch's orthogonal parametrization with the ``"householder"`` map, its product by
    :func:`householder_columns` (``right_inverse`` and buffers: torch's)."""

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        transposed = X.shape[-2] < X.shape[-1]
        if transposed:
            X = X.mT
        A = X.tril(diagonal=-1)
        Q = householder_columns(A, 2.0 / (1.0 + (A * A).sum(dim=-2)))
        # as torch: the ±1 diagonal of X signs the columns, not differentiated
        Q = Q * X.diagonal(dim1=-2, dim2=-1).int().unsqueeze(-2)
        # built on the meta device, torch's registration leaves the base None: shapes only
        if hasattr(self, "base") and not (self.base is None and Q.device.type == "meta"):
            Q = self.base @ Q
        return Q.mT if transposed else Q


def orthogonal_weight(module: nn.Module, name: str, orthogonal_map: str) -> nn.Module:
    """``torch.nn.utils.parametrizations.orthogonal(module, name, orthogonal_map)``, the
    ``"householder"`` map formed by :func:`householder_columns`."""
    if orthogonal_map != "householder":
        return orthogonal(module, name, orthogonal_map=orthogonal_map)
    weight = getattr(module, name)
    householder = _Householder(weight, _OrthMaps.householder, use_trivialization=True)
    parametrize.register_parametrization(module, name, householder, unsafe=True)
    return module
