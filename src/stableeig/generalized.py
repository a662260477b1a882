"""The generalized symmetric-definite eigenproblem ``A v = λ B v``, differentiable in both
``A`` and ``B``.

With the Cholesky factor ``B = L Lᵀ``, the problem is the standard one for
``C = L⁻¹ A L⁻ᵀ`` (LAPACK's ``sygv`` reduction, so the values are ``scipy.linalg.eigh(a, b)``'s
to round-off): ``C = W Λ Wᵀ`` and ``V = L⁻ᵀ W`` (``Vᵀ B V = I``). The decomposition of ``C``
is the library's, with its eigenvector rule; the Cholesky factor and the triangular solves
are smooth wherever ``B`` is positive definite, so autograd carries the gradient to ``B``.
Every loss that is a function of the eigenvalues, or of ``V f(Λ) Vᵀ`` (through
:func:`generalized_funm`), is exact at repeated generalized eigenvalues.
"""

from __future__ import annotations

from typing import Callable, Optional, Union

import torch

from . import _validation as checks
from ._autograd import eigh_function, prepare_symmetric, symmetrized
from ._precision import autocast_off
from .exceptions import NotPositiveDefiniteError, ShapeError
from .matrix_functions import funm
from .rules import EigenvectorRule, Rule
from .spectral import check_values_finite

__all__ = ["generalized_eigh", "generalized_funm", "reduce_generalized"]


def reduce_generalized(
    A: torch.Tensor, B: torch.Tensor, compute_dtype: Optional[torch.dtype],
    check_symmetric: bool, shrinkage: float, name: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """``(C, L, A, B)``: ``C = L⁻¹ A L⁻ᵀ`` symmetric, the Cholesky factor of the (shrunk)
    ``B``, and the checked, symmetrized ``A`` and (shrunk) ``B`` it came from, all in the
    working dtype, batch shapes broadcast. ``shrinkage`` α: ``B ← (1 - α) B +
    α (tr B / n) I``. Raises :class:`NotPositiveDefiniteError` naming ``B``."""
    checks.check_in_range(f"{name}: shrinkage", shrinkage, 0.0, 1.0)
    work_A = prepare_symmetric(f"{name}: A", A, compute_dtype, check_symmetric)
    work_B = prepare_symmetric(f"{name}: B", B, compute_dtype, check_symmetric)
    if work_A.shape[-1] != work_B.shape[-1]:
        raise ShapeError(
            f"{name}: B: expected ({work_A.shape[-1]}, {work_A.shape[-1]}) matrices like A "
            f"(got shape {tuple(B.shape)})"
        )
    dtype = torch.promote_types(work_A.dtype, work_B.dtype)
    work_A, work_B = work_A.to(dtype), work_B.to(dtype)
    n = work_B.shape[-1]
    if shrinkage:
        mean = work_B.diagonal(0, -2, -1).mean(-1)[..., None, None]
        eye = torch.eye(n, dtype=dtype, device=work_B.device)
        work_B = (1 - shrinkage) * work_B + shrinkage * mean * eye
    with autocast_off(work_B.device):
        L, info = torch.linalg.cholesky_ex(work_B)
        if checks.in_graph():  # compiled: an assertion inside the graph, no host sync
            message = f"{name}: B: expected a positive definite matrix"
            checks.assert_in_graph((info == 0).all(), message)
        elif checks.host_checks_enabled(info) and bool((info > 0).any()):
            smallest = float(torch.linalg.eigvalsh(work_B.detach()).amin())
            raise NotPositiveDefiniteError(
                f"{name}: B: expected a positive definite matrix (got {int((info > 0).sum())} "
                f"of {info.numel()} not positive definite; smallest eigenvalue {smallest:.3g}); "
                "for a covariance of fewer samples than dimensions pass shrinkage=α in (0, 1]"
            )
        half = torch.linalg.solve_triangular(L, work_A, upper=False)  # L⁻¹ A
        C = torch.linalg.solve_triangular(L, half.mT, upper=False)  # L⁻¹ (L⁻¹ A)ᵀ = L⁻¹ A L⁻ᵀ
    return symmetrized(C), L, work_A, work_B


def generalized_eigh(
    A: torch.Tensor, B: torch.Tensor, rule: EigenvectorRule,
    compute_dtype: Optional[torch.dtype], check_symmetric: bool, shrinkage: float,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """``(w, V)`` of ``A v = λ B v``, ascending, ``Vᵀ B V = I``, in the working dtype."""
    C, L, _, _ = reduce_generalized(A, B, compute_dtype, check_symmetric, shrinkage, "eigh")
    with autocast_off(C.device):
        w, W = eigh_function(C, rule)
        V = torch.linalg.solve_triangular(L.mT, W, upper=True)
    checks.check_eigenvalues_finite("A", w)
    return w, V


def generalized_funm(
    A: torch.Tensor,
    B: torch.Tensor,
    f: Callable[[torch.Tensor], torch.Tensor],
    df: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    *,
    shrinkage: float = 0.0,
    backward: Union[str, Rule] = "loewner",
    compute_dtype: Optional[torch.dtype] = None,
    check_symmetric: bool = True,
) -> torch.Tensor:
    """``V f(Λ) Vᵀ`` for the generalized eigenpairs of ``A v = λ B v`` (..., n, n), exact at
    repeated generalized eigenvalues (``funm`` of ``C = L⁻¹ A L⁻ᵀ``: ``L⁻ᵀ f(C) L⁻¹``), with
    gradients to ``A`` and ``B``. For an indicator ``f`` of the top ``k`` (with a gap at the
    cut) it is ``V_k V_kᵀ``, whose ``(·) B`` is the B-orthogonal projector.

    Args:
        A: symmetric (..., n, n).
        B: symmetric positive definite (..., n, n) (batch shapes broadcast).
        f, df: an elementwise function and its derivative (default: forward-mode autograd).
        shrinkage: α in [0, 1]: ``B ← (1 - α) B + α (tr B / n) I``. Default: 0.
        backward: ``"loewner"`` (exact) or an eigenvector rule. Default: ``"loewner"``.
        compute_dtype: least working precision. Default: None (float64).
        check_symmetric: check ``A`` and ``B``. Default: True.

    Returns:
        (..., n, n) in the promoted dtype of ``A`` and ``B``.

    Examples:
        >>> import torch, stableeig as se
        >>> A = torch.diag(torch.tensor([2.0, 6.0], dtype=torch.float64))
        >>> B = torch.diag(torch.tensor([1.0, 3.0], dtype=torch.float64))  # λ = 2, 2: tied
        >>> F = se.generalized_funm(A, B, torch.log)          # V log(Λ) Vᵀ = log 2 · B⁻¹
        >>> [round(v, 12) for v in F.diagonal().tolist()]
        [0.69314718056, 0.231049060187]
    """
    C, L, _, _ = reduce_generalized(
        A, B, compute_dtype, check_symmetric, shrinkage, "generalized_funm"
    )
    F = funm(C, f, df, backward=backward, check_symmetric=False)
    with autocast_off(C.device):
        right = torch.linalg.solve_triangular(L.mT, F, upper=True)  # L⁻ᵀ F
        result = torch.linalg.solve_triangular(L.mT, right.mT, upper=True).mT  # L⁻ᵀ F L⁻¹
    result = result.to(torch.promote_types(A.dtype, B.dtype))
    check_values_finite("generalized_funm", result, None)  # L⁻ᵀ F L⁻¹ can overflow F's range
    return result
