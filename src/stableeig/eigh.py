"""``stableeig.eigh``: exact forward decomposition, selectable eigenvector gradient rule.

For ``A = V diag(w) Vᵀ`` (ascending ``w``), every rule computes

    ∂L/∂A = sym( V ( C ∘ (Vᵀ ∂L/∂V) + diag(∂L/∂w) ) Vᵀ ),

where ``C[m, j]`` is the coefficient of eigenvector ``m`` in the derivative of eigenvector
``j``. The exact value is ``C[m, j] = 1 / (w[j] - w[m])``; the rules differ only in how they
replace it, and each is a small pure function ``w -> C`` below. Eigenvalue gradients
``vᵀ dA v`` are exact and stable in every rule.

================  ===========================================================================
rule              ``C[m, j]`` for ``m != j``
================  ===========================================================================
``analytic``      ``1 / (w[j] - w[m])``: exact; ±Inf/NaN at equal eigenvalues (torch's rule)
``power``         paper's SVD-PI, power-iteration series with deflation, ``K = num_iters``:
                  ``S_K(w[m] / w[j]) / w[j]`` if ``w[m] < w[j]`` (not yet deflated), and
                  ``-S_{K-1}(w[j] / w[m]) / w[m]`` if ``w[m] >= w[j]`` (deflated before j),
                  with ``S_N(q) = Σ_{k<N} q^k``; ``|C| <= K / max(w[m], w[j])``
``taylor``        TPAMI follow-up, degree ``order``:
                  ``sign(w[j] - w[m]) S_{order+1}(min/max) / max``; 0 at exact ties
``clip``          ``sign(w[j] - w[m]) / max(|w[j] - w[m]|, min_gap)``; 0 at exact ties
================  ===========================================================================

``power`` and ``taylor`` are series for positive semidefinite matrices (the paper's
``M + εI``): eigenvalues below ``n · eps · max|w|`` are treated as that floor, so the bound
``|C| <= (K + 1) / max(w[m], w[j])`` holds for every input. Cost: every rule is one
decomposition forward and four ``n × n`` matrix products backward; the rules themselves
are ``O(n²)`` elementwise work.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional

import torch

from . import _validation as checks
from ._precision import working_dtype

__all__ = [
    "BACKWARD_RULES",
    "analytic_coefficients",
    "clip_coefficients",
    "eigenvector_backward",
    "eigh",
    "geometric_sum",
    "power_coefficients",
    "taylor_coefficients",
]

BACKWARD_RULES = ("analytic", "power", "taylor", "clip")

CoefficientRule = Callable[[torch.Tensor], torch.Tensor]


def geometric_sum(q: torch.Tensor, terms: int) -> torch.Tensor:
    """``Σ_{k=0}^{terms-1} q^k`` for ``q`` in [0, 1], accurate also as ``q -> 1``.

    Uses ``expm1(terms · log q) / (q - 1)`` with ``q`` clamped to the largest float below 1:
    the numerator loses no digits near ``q = 1``, ``q - 1`` is exact there, ``q = 1`` gives
    ``terms`` to within ``terms`` ulps and ``q = 0`` gives 1.
    """
    if terms == 0:
        return torch.zeros_like(q)
    below_one, log_q = _below_one_and_log(q)
    return torch.expm1(terms * log_q) / (below_one - 1)


def _below_one_and_log(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``q`` clamped to the largest float below 1, and its logarithm."""
    below_one = q.clamp(max=1 - torch.finfo(q.dtype).eps / 2)
    return below_one, torch.log(below_one)


def _floored(w: torch.Tensor) -> torch.Tensor:
    """Eigenvalues raised to ``max(n · eps · max|w|, tiny)`` per matrix: (..., n)."""
    info = torch.finfo(w.dtype)
    n = max(w.shape[-1], 1)
    scale = w.abs().amax(dim=-1, keepdim=True) if w.numel() else w
    return torch.maximum(w, (scale * (n * info.eps)).clamp_min(info.tiny))


def _pairwise_gaps(w: torch.Tensor) -> torch.Tensor:
    """``gaps[..., m, j] = w[j] - w[m]``: (..., n, n)."""
    return w.unsqueeze(-2) - w.unsqueeze(-1)


def analytic_coefficients(w: torch.Tensor) -> torch.Tensor:
    """Exact ``C[m, j] = 1 / (w[j] - w[m])``, 0 on the diagonal; unbounded at ties.

    Args:
        w: eigenvalues, ascending, shape (..., n).

    Returns:
        (..., n, n) coefficients. Equal eigenvalues give ±Inf, as in ``torch.linalg.eigh``.
    """
    gaps = _pairwise_gaps(w)
    gaps.diagonal(dim1=-2, dim2=-1).fill_(float("inf"))
    return gaps.reciprocal()


def power_coefficients(w: torch.Tensor, num_iters: int = 19) -> torch.Tensor:
    """Power-iteration (SVD-PI) coefficients with deflation in descending order.

    Eigenvector ``j``'s gradient is the paper's series
    ``Σ_{k<K} M̃ᵏ (I - v vᵀ) / ‖M̃ v‖^{k+1}`` on the matrix ``M̃`` deflated of the larger
    eigenvectors, with the gradient that flows back through those deflations. In the
    eigenbasis that is ``S_K(w[m]/w[j]) / w[j]`` for smaller ``w[m]`` and
    ``-S_{K-1}(w[j]/w[m]) / w[m]`` for larger (deflated) ``w[m]``.

    Args:
        w: eigenvalues, ascending, shape (..., n); treated as positive semidefinite.
        num_iters: number of series terms ``K`` (the paper: 19). Default: 19.

    Returns:
        (..., n, n) coefficients, bounded by ``K / max(w[m], w[j])``.
    """
    lam = _floored(w)
    larger = torch.maximum(lam.unsqueeze(-1), lam.unsqueeze(-2))
    q = torch.minimum(lam.unsqueeze(-1), lam.unsqueeze(-2)) / larger  # both cases: min / max
    n = w.shape[-1]
    deflated_before_j = torch.ones(n, n, dtype=w.dtype, device=w.device).tril(-1)  # w[m] >= w[j]
    # S_{K-1}(q) = S_K(q) - q^{K-1}: one series, negated and shortened below the diagonal
    below_one, log_q = _below_one_and_log(q)
    series = torch.expm1(num_iters * log_q) / (below_one - 1)  # S_K(q), as geometric_sum
    last_term = torch.exp((num_iters - 1) * log_q) * deflated_before_j
    coefficients = (series * (1 - 2 * deflated_before_j) + last_term) / larger
    coefficients.diagonal(dim1=-2, dim2=-1).zero_()
    return coefficients


def taylor_coefficients(w: torch.Tensor, order: int = 9) -> torch.Tensor:
    """Closed-form geometric series of ``1 / (w[j] - w[m])`` to degree ``order``.

    Args:
        w: eigenvalues, ascending, shape (..., n); treated as positive semidefinite.
        order: degree of the series (``order + 1`` terms). Default: 9 (the TPAMI code).

    Returns:
        (..., n, n) antisymmetric coefficients, bounded by ``(order + 1) / max(w[m], w[j])``.
    """
    lam = _floored(w)
    lam_m, lam_j = lam.unsqueeze(-1), lam.unsqueeze(-2)
    larger = torch.maximum(lam_m, lam_j)
    series = geometric_sum(torch.minimum(lam_m, lam_j) / larger, order + 1) / larger
    return torch.sign(_pairwise_gaps(w)) * series


def clip_coefficients(w: torch.Tensor, min_gap: float = 1e-2) -> torch.Tensor:
    """``sign(w[j] - w[m]) / max(|w[j] - w[m]|, min_gap)``: the gap-clamping workaround.

    Args:
        w: eigenvalues, ascending, shape (..., n).
        min_gap: smallest gap used in a denominator (absolute). Default: 1e-2.

    Returns:
        (..., n, n) antisymmetric coefficients, bounded by ``1 / min_gap``.
    """
    gaps = _pairwise_gaps(w)
    return torch.sign(gaps) / gaps.abs().clamp_min(min_gap)


def eigenvector_backward(
    w: torch.Tensor,
    V: torch.Tensor,
    grad_w: Optional[torch.Tensor],
    grad_V: Optional[torch.Tensor],
    coefficients: CoefficientRule,
) -> torch.Tensor:
    """``V (C ∘ (Vᵀ grad_V) + diag(grad_w)) Vᵀ`` with ``C = coefficients(w)``: (..., n, n).

    The result is not symmetrized here; ``stableeig.eigh`` symmetrizes its input, so the
    gradient that reaches the user is the symmetric part.
    """
    inner = torch.zeros_like(V)
    if grad_V is not None:
        inner = coefficients(w) * (V.mT @ grad_V)
    if grad_w is not None:
        inner = inner + torch.diag_embed(grad_w)
    return V @ inner @ V.mT


class _Eigh(torch.autograd.Function):
    """Exact ``torch.linalg.eigh`` forward, eigenvector gradient by a coefficient rule."""

    @staticmethod
    def forward(
        A: torch.Tensor, coefficients: CoefficientRule
    ) -> tuple[torch.Tensor, torch.Tensor]:
        w, V = torch.linalg.eigh(A)
        return w, V

    @staticmethod
    def setup_context(ctx, inputs, output):  # type: ignore[no-untyped-def]
        ctx.coefficients = inputs[1]
        ctx.set_materialize_grads(False)  # unused outputs: None, not zeros (0 · Inf)
        ctx.save_for_backward(*output)

    @staticmethod
    def backward(ctx, grad_w, grad_V):  # type: ignore[no-untyped-def]
        w, V = ctx.saved_tensors
        return eigenvector_backward(w, V, grad_w, grad_V, ctx.coefficients), None


def coefficient_rule(
    backward: str, *, num_iters: int = 19, order: int = 9, min_gap: float = 1e-2
) -> CoefficientRule:
    """The validated coefficient function ``w -> C`` for a rule name."""
    checks.check_choice("backward", backward, BACKWARD_RULES)
    if backward == "power":
        return functools.partial(
            power_coefficients, num_iters=checks.check_int_at_least("num_iters", num_iters, 1)
        )
    if backward == "taylor":
        return functools.partial(
            taylor_coefficients, order=checks.check_int_at_least("order", order, 0)
        )
    if backward == "clip":
        return functools.partial(
            clip_coefficients, min_gap=checks.check_positive("min_gap", min_gap)
        )
    return analytic_coefficients


def prepare_symmetric(
    name: str,
    A: object,
    compute_dtype: Optional[torch.dtype],
    check_symmetric: bool = True,
) -> torch.Tensor:
    """Validate ``A``, cast it to the working dtype and return ``(A + Aᵀ) / 2``.

    The symmetrization is differentiable, so gradients that reach ``A`` are symmetric.
    """
    A = checks.check_square_matrix(name, A)
    checks.check_finite(name, A)
    work = A.to(working_dtype(A.dtype, compute_dtype))
    if check_symmetric:
        checks.check_symmetric(name, A)  # tolerance of the dtype the user gave
    return (work + work.mT) / 2


def eigh(
    A: torch.Tensor,
    backward: str = "power",
    *,
    num_iters: int = 19,
    order: int = 9,
    min_gap: float = 1e-2,
    compute_dtype: Optional[torch.dtype] = None,
    check_symmetric: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric eigendecomposition with a stable, selectable eigenvector gradient.

    The forward pass is ``torch.linalg.eigh`` of ``(A + Aᵀ) / 2`` in at least
    ``compute_dtype``, with autocast disabled; results come back in ``A``'s dtype.

    Args:
        A: real symmetric matrices, shape (..., n, n); float16/bfloat16/float32/float64.
        backward: eigenvector gradient rule, one of ``"analytic"``, ``"power"``,
            ``"taylor"``, ``"clip"`` (see the module docstring). Default: ``"power"``.
        num_iters: series terms ``K`` for ``"power"``, >= 1. Default: 19.
        order: series degree for ``"taylor"``, >= 0. Default: 9.
        min_gap: smallest eigenvalue gap for ``"clip"``, > 0. Default: 1e-2.
        compute_dtype: least working precision, ``torch.float32`` or ``torch.float64``.
            Default: ``None`` (float64; see ``stableeig._precision``).
        check_symmetric: raise :class:`NotSymmetricError` if ``A`` is not symmetric within
            ``sqrt(eps)`` of its dtype. Default: ``True``.

    Returns:
        ``(w, V)``: eigenvalues ascending, shape (..., n), and orthonormal eigenvectors as
        columns, shape (..., n, n), in ``A``'s dtype.

    Raises:
        ShapeError, DTypeError, NonFiniteError, NotSymmetricError, StableEigError.

    Example:
        >>> import torch, stableeig as se
        >>> A = torch.eye(3, requires_grad=True)
        >>> w, V = se.eigh(A, backward="power")
        >>> (V[..., -1] ** 2).sum().backward()   # finite, though eigenvalues are equal
        >>> bool(torch.isfinite(A.grad).all())
        True
    """
    rule = coefficient_rule(backward, num_iters=num_iters, order=order, min_gap=min_gap)
    symmetric = prepare_symmetric("A", A, compute_dtype, check_symmetric)
    with torch.autocast(symmetric.device.type, enabled=False):
        w, V = _Eigh.apply(symmetric, rule)
    return w.to(A.dtype), V.to(A.dtype)
