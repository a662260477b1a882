"""``stableeig.eigh``: exact forward decomposition, selectable eigenvector gradient rule.

For ``A = V diag(w) Vᵀ`` (ascending ``w``), every rule computes

    ∂L/∂A = sym( V ( C ∘ (Vᵀ ∂L/∂V) + diag(∂L/∂w) ) Vᵀ ),

and differs only in how it replaces the exact ``C[m, j] = 1 / (w[j] - w[m])``: see
:mod:`stableeig.rules` (``analytic``, ``power``, ``taylor``, ``clip``). Eigenvalue gradients
``vᵀ dA v`` are exact and stable in every rule. Cost: one decomposition forward and four
``n × n`` matrix products backward; the rules themselves are ``O(n²)`` elementwise work.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Union

import torch

from . import _validation as checks
from ._autograd import eigh_function, prepare_symmetric
from ._precision import autocast_off
from .exceptions import ArgumentError
from .generalized import generalized_eigh
from .rules import EigenvectorRule, Rule, resolve

__all__ = ["EighResult", "eigh"]


class EighResult(NamedTuple):
    """``(eigenvalues, eigenvectors)``, as ``torch.linalg.eigh`` names them (unpacks as a
    pair)."""

    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor


def eigh(
    A: torch.Tensor,
    B: Union[torch.Tensor, str, Rule, None] = None,
    backward: Union[str, Rule, None] = None,
    *,
    shrinkage: float = 0.0,
    compute_dtype: Optional[torch.dtype] = None,
    check_symmetric: bool = True,
    UPLO: Optional[str] = None,
) -> EighResult:
    """Symmetric eigendecomposition with a stable, selectable eigenvector gradient; with
    ``B``, the generalized problem ``A v = λ B v``.

    The forward pass is ``torch.linalg.eigh`` of ``(A + Aᵀ) / 2`` in at least
    ``compute_dtype``, with autocast disabled; results come back in ``A``'s dtype. With
    ``B`` (positive definite): the Cholesky reduction ``C = L⁻¹ A L⁻ᵀ`` (LAPACK ``sygv``'s,
    as ``scipy.linalg.eigh(a, b)``), ``V = L⁻ᵀ W`` with ``Vᵀ B V = I``, gradients to both
    ``A`` and ``B`` (:mod:`stableeig.generalized`).

    Args:
        A: real symmetric matrices, shape (..., n, n); float16/bfloat16/float32/float64.
        B: symmetric positive definite (..., n, n) for ``A v = λ B v`` (batch shapes
            broadcast; ``eigh(A, B)`` as scipy). A rule here is ``backward`` (``eigh(A,
            "power")``, as before ``B`` existed). Default: None (the standard problem).
        backward: eigenvector gradient rule: a name (``"analytic"``, ``"power"``,
            ``"taylor"``, ``"clip"``, with default settings) or a rule object such as
            ``stableeig.rules.Power(num_iters=29)``. Default: None, ``"power"`` (the paper's
            SVD-PI gradient, 19 power iterations = 20 series terms, as its reference code).
        shrinkage: with ``B``, α in [0, 1]: ``B ← (1 - α) B + α (tr B / n) I`` (a covariance
            of fewer samples than dimensions). Default: 0.
        compute_dtype: least working precision, ``torch.float32`` or ``torch.float64``.
            Default: ``None`` (float64; see ``stableeig._precision``).
        check_symmetric: raise :class:`NotSymmetricError` if ``A`` is not symmetric within
            ``sqrt(eps)`` of its dtype. Default: ``True``.
        UPLO: ``"L"`` or ``"U"``: read only that triangle of ``A`` (the other is ignored, not
            checked), as ``torch.linalg.eigh(A, UPLO)``; the gradient flows to that
            triangle. Default: ``None`` (both triangles, symmetrized and checked).

    Returns:
        ``EighResult(eigenvalues, eigenvectors)`` (a named tuple, as ``torch.linalg.eigh``'s):
        eigenvalues ascending, shape (..., n), and orthonormal eigenvectors as columns,
        shape (..., n, n), in ``A``'s dtype.

    Raises:
        ShapeError: ``A`` is not a batch of square matrices.
        DTypeError: ``A`` is not a floating tensor.
        NonFiniteError: ``A`` holds NaN or Inf.
        NotSymmetricError: ``A`` is not symmetric within ``sqrt(eps)`` (``UPLO`` unset).
        NotPositiveDefiniteError: ``B`` is not positive definite (named; suggests shrinkage).
        ArgumentError: an unknown ``backward`` or ``UPLO``.

    Examples:
        >>> import torch, stableeig as se
        >>> A = torch.eye(3, requires_grad=True)
        >>> w, V = se.eigh(A, backward=se.rules.Power(num_iters=19))
        >>> (V[..., -1] ** 2).sum().backward()   # finite, though eigenvalues are equal
        >>> bool(torch.isfinite(A.grad).all())
        True
    """
    if B is not None and not isinstance(B, torch.Tensor):  # eigh(A, "power"): a rule there
        if backward is not None:
            raise ArgumentError(f"eigh: B: expected a tensor (got {B!r} and backward=)")
        B, backward = None, B
    rule = resolve("power" if backward is None else backward, kinds=("eigenvector",))
    assert isinstance(rule, EigenvectorRule)
    if B is not None:
        if UPLO is not None:
            raise ArgumentError(f"eigh: UPLO: expected None with B (got {UPLO!r})")
        w, V = generalized_eigh(A, B, rule, compute_dtype, check_symmetric, shrinkage)
        dtype = torch.promote_types(A.dtype, B.dtype)
        return EighResult(
            checks.rounded_checked("eigh", "the eigenvalues", w, dtype),
            checks.rounded_checked("eigh", "the eigenvectors (B-orthonormal)", V, dtype),
        )
    if UPLO is not None:
        checks.check_choice("UPLO", UPLO, ("L", "U"))
        A = checks.check_square_matrix("A", A)
        triangle = A.tril() if UPLO == "L" else A.triu()
        A, check_symmetric = triangle + triangle.mT - torch.diag_embed(A.diagonal(0, -2, -1)), False
    work = prepare_symmetric("A", A, compute_dtype, check_symmetric, symmetrize=False)
    with autocast_off(work.device):
        w, V = eigh_function(work, rule)  # decomposes (A + Aᵀ) / 2
    checks.check_eigenvalues_finite("A", w)
    return EighResult(checks.rounded_checked("eigh", "the eigenvalues", w, A.dtype), V.to(A.dtype))
