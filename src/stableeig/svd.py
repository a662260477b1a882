"""``stableeig.svd``: the singular value decomposition with a selectable gradient rule, and
the norms of its singular values with exact (sub)gradients.

For ``A = U Σ Vᵀ`` (thin, m >= n) and ``Kᵤ = skew(Uᵀ ∂L/∂U)``, ``Kᵥ = skew(Vᵀ ∂L/∂V)``,

    ∂L/∂A = U (C⁻ ∘ (Kᵤ + Kᵥ) + C⁺ ∘ (Kᵤ - Kᵥ) + diag(∂L/∂σ)) Vᵀ
            + (I - U Uᵀ) (∂L/∂U) Σ⁻¹ Vᵀ,

with ``C⁺ᵢⱼ = 1 / (σⱼ + σᵢ)`` always exact (a sum: never the ``σⱼ² - σᵢ²`` that overflows
or cancels in torch's backward) and ``C⁻ᵢⱼ = 1 / (σⱼ - σᵢ)`` replaced by the eigenvector
rule's coefficients at the singular values (:mod:`stableeig.rules`: ``analytic`` exact,
``clip`` bounded, ``power``/``taylor`` the paper's series). At tied singular values the
vectors are not unique: a loss that does not depend on the choice (a *gauge-invariant*
one) has ``Kᵤ + Kᵥ = 0`` on the tied pairs, and their term is dropped as 0 — the gradient
in every direction that keeps the tie. Losses of the form ``ℓ(U f(Σ) Vᵀ)`` are exact in
every direction through :func:`stableeig.svd_funm`.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Union

import torch

from . import _validation as checks
from ._autograd import Function, decompose_singular
from ._precision import autocast_off, working_dtype
from .exceptions import ArgumentError, NotDifferentiableError
from .rules import EigenvectorRule, Rule, resolve
from .singular import Elementwise, _apply, _check_matrices

__all__ = ["SVDResult", "nuclear_norm", "schatten_norm", "svd", "svdvals"]


class SVDResult(NamedTuple):
    """``(U, S, Vh)``, as ``torch.linalg.svd`` names them (unpacks as a triple)."""

    U: torch.Tensor
    S: torch.Tensor
    Vh: torch.Tensor


class _SVD(Function):
    """Thin ``torch.linalg.svd`` of (..., m, n) with the rule's backward."""

    @staticmethod
    def forward(A: torch.Tensor, rule: EigenvectorRule) -> tuple[torch.Tensor, ...]:
        U, s, Vh = decompose_singular(A)
        return U, s, Vh

    @staticmethod
    def setup_context(ctx, inputs, output):  # type: ignore[no-untyped-def]
        ctx.rule = inputs[1]
        ctx.set_materialize_grads(False)  # unused outputs: None, not zeros
        ctx.save_for_backward(*output)

    @staticmethod
    def backward(ctx, grad_U, grad_s, grad_Vh):  # type: ignore[no-untyped-def]
        U, s, Vh = ctx.saved_tensors
        if U.shape[-2] < Vh.shape[-1]:  # wide: the tall formula for Aᵀ = Vhᵀ Σ Uᵀ
            grad_V = None if grad_Vh is None else grad_Vh.mT
            grad_Uh = None if grad_U is None else grad_U.mT
            return _svd_backward(Vh.mT, s, U.mT, grad_V, grad_s, grad_Uh, ctx.rule).mT, None
        return _svd_backward(U, s, Vh, grad_U, grad_s, grad_Vh, ctx.rule), None


def _svd_backward(
    U: torch.Tensor, s: torch.Tensor, Vh: torch.Tensor, grad_U: Optional[torch.Tensor],
    grad_s: Optional[torch.Tensor], grad_Vh: Optional[torch.Tensor], rule: EigenvectorRule,
) -> torch.Tensor:  # fmt: skip
    """The module docstring's formula for tall or square (..., m, n), m >= n."""
    V = Vh.mT
    inner = torch.zeros_like(Vh) if grad_s is None else torch.diag_embed(grad_s)
    if grad_U is None and grad_Vh is None:
        return U @ inner @ Vh
    K_u = _skew(U.mT @ grad_U) if grad_U is not None else torch.zeros_like(inner)
    K_v = _skew(V.mT @ grad_Vh.mT) if grad_Vh is not None else torch.zeros_like(inner)
    plus = s[..., None, :] + s[..., :, None]  # σⱼ + σᵢ, > 0 unless both are 0
    rotation = K_u - K_v
    inner = inner + torch.where(rotation == 0, 0.0, rotation / plus)
    ascending = rule.coefficients(s.flip(-1)).flip(-2, -1)  # 1/(σⱼ - σᵢ), the rule's
    gauge = K_u + K_v  # 0 on tied pairs for a loss that does not depend on the basis
    tied = s[..., None, :] == s[..., :, None]
    dropped = tied & (gauge.abs() <= _round_off(gauge))
    inner = inner + torch.where(dropped, 0.0, ascending * gauge)
    grad_A = U @ inner @ Vh
    if grad_U is not None and U.shape[-2] > U.shape[-1]:  # m > n: outside U's columns
        outside = grad_U - U @ (U.mT @ grad_U)
        grad_A = grad_A + torch.where(outside == 0, 0.0, outside / s[..., None, :]) @ Vh
    expected = (
        "svd backward: expected distinct singular values for a loss that depends on the "
        "choice of singular vectors, and σ > 0 where ∂L/∂U leaves U's span"
    )
    advice = "use a bounded rule (backward='clip' or 'power'), or svd_funm for U f(Σ) Vᵀ"
    if checks.in_graph():  # an assertion in the graph, no host sync
        checks.assert_in_graph(torch.isfinite(grad_A).all(), f"{expected}; {advice}")
    elif checks.host_checks_enabled(grad_A) and not checks.all_finite(grad_A):
        raise NotDifferentiableError(f"{expected} (got singular values {_listed(s)}); {advice}")
    return grad_A


def _skew(X: torch.Tensor) -> torch.Tensor:
    return (X - X.mT) / 2


def _round_off(X: torch.Tensor) -> torch.Tensor:
    """``n · eps · max|X|`` per matrix (..., 1, 1): the gauge term of an invariant loss."""
    scale = X.abs().amax((-2, -1), keepdim=True)
    return X.shape[-1] * torch.finfo(X.dtype).eps * scale


def _listed(s: torch.Tensor) -> str:
    values = s.detach().flatten()[:6].tolist()
    return ", ".join(f"{v:.6g}" for v in values) + (" …" if s.numel() > 6 else "")


def svd(
    A: torch.Tensor,
    backward: Union[str, Rule] = "analytic",
    *,
    compute_dtype: Optional[torch.dtype] = None,
) -> SVDResult:
    """Thin singular value decomposition ``A = U diag(S) Vh`` with a selectable gradient rule.

    The forward pass is ``torch.linalg.svd(A, full_matrices=False)`` in at least
    ``compute_dtype``; results come back in ``A``'s dtype. The backward never forms
    ``σⱼ² - σᵢ²`` (torch's, which overflows beyond 1e154 and cancels at close values): the
    sum ``σⱼ + σᵢ`` is always exact, and the difference goes through ``backward``'s rule. At
    tied singular values the vectors are not unique; a loss that does not depend on that
    choice gets the gradient in every direction that keeps the tie (its tied-pair term is
    dropped), others need a bounded rule. For losses of ``U f(Σ) Vᵀ`` use :func:`svd_funm`
    (or :func:`polar`), exact in every direction.

    Args:
        A: real matrices (..., m, n); float16 … float64.
        backward: the rule for ``1 / (σⱼ - σᵢ)``: ``"analytic"`` (exact; an infinite
            gradient raises), ``"clip"``, ``"power"``, ``"taylor"`` or a rule object.
            Default: ``"analytic"``.
        compute_dtype: least working precision. Default: None (float64).

    Returns:
        ``SVDResult(U, S, Vh)``: (..., m, k), (..., k) descending, (..., k, n), ``k = min(m, n)``.

    Raises:
        NotDifferentiableError: in the backward, a tie the loss depends on (``analytic``),
            or ``σ = 0`` where ``∂L/∂U`` leaves ``U``'s span.

    Examples:
        >>> import torch, stableeig as se
        >>> A = torch.eye(3, dtype=torch.float64, requires_grad=True)   # σ = 1, 1, 1
        >>> U, S, Vh = se.svd(A)
        >>> (U @ Vh).trace().backward()                  # does not depend on the basis
        >>> A.grad.abs().max().item() < 1e-12            # I is the maximizer: gradient 0
        True
    """
    return _svd(A, backward, compute_dtype, "svd")


def _svd(
    A: torch.Tensor, backward: Union[str, Rule], compute_dtype: Optional[torch.dtype], name: str
) -> SVDResult:
    rule = resolve(backward, kinds=("eigenvector",))
    assert isinstance(rule, EigenvectorRule)
    A = _check_matrices(f"{name}: A", A)
    work = working_dtype(A.dtype, compute_dtype)
    with autocast_off(A.device):
        U, S, Vh = _SVD.apply(A.to(work), rule)  # the vectors torch.linalg.svd returns
    S = checks.rounded_checked(name, "the singular values", S, A.dtype)
    return SVDResult(U.to(A.dtype), S, Vh.to(A.dtype))


def svdvals(A: torch.Tensor, *, compute_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Singular values (..., min(m, n)), descending, with the gradient ``U diag(∂L/∂σ) Vᵀ``
    (finite at ties; exact there for every symmetric function of the singular values).

    Examples:
        >>> import torch, stableeig as se
        >>> se.svdvals(torch.diag(torch.tensor([1.0, -3.0]))).tolist()
        [3.0, 1.0]
    """
    return _svd(A, "analytic", compute_dtype, "svdvals").S


class _SchattenNorm(Function):
    """``‖σ‖_p`` of tall or square (..., m, n) with the minimum-norm subgradient."""

    @staticmethod
    def forward(A: torch.Tensor, p: float) -> tuple[torch.Tensor, ...]:
        U, s, Vh = decompose_singular(A)
        if p == 1:  # a sum: the nuclear norm of the FID, unscaled
            return s.sum(-1), U, s, Vh
        largest = s[..., :1].clamp_min(torch.finfo(s.dtype).tiny)  # σᵖ would overflow
        return largest[..., 0] * torch.linalg.vector_norm(s / largest, p, -1), U, s, Vh

    @staticmethod
    def setup_context(ctx, inputs, output):  # type: ignore[no-untyped-def]
        ctx.p = inputs[1]
        ctx.mark_non_differentiable(*output[1:])
        ctx.save_for_backward(inputs[0], *output)

    @staticmethod
    def backward(ctx, grad, _U, _s, _Vh):  # type: ignore[no-untyped-def]
        A, norm, U, s, Vh = ctx.saved_tensors
        size = max(U.shape[-2], Vh.shape[-1])
        weight = _norm_derivative(s, norm.detach(), ctx.p, size)  # ∂‖σ‖/∂σ, (..., k)
        if torch.is_grad_enabled() and not torch.compiler.is_compiling():  # create_graph
            # U diag(φ(σ)) Vᵀ through svd_funm: exact to second order. The gradient of a
            # norm is the same at A / c for a constant c > 0: for 1 < p < ∞, c = the norm,
            # so that σ^(p-1) cannot overflow (σ ~ 1e30, p = 12 gave NaN); the steps of
            # p = 1 and ∞ are bounded and keep c = 1.
            finite = ctx.p not in (1, float("inf"))
            fixed = torch.where((norm > 0) & finite, norm, torch.ones_like(norm)).detach()
            f, df, scale = _norm_function(s / fixed[..., None], norm / fixed, ctx.p, size)
            derivative = _apply(A / fixed[..., None, None], f, df, A.dtype, "schatten_norm")
            return (grad * scale)[..., None, None] * derivative, None
        return grad[..., None, None] * ((U * weight[..., None, :]) @ Vh), None


def _norm_function(
    s: torch.Tensor, norm: torch.Tensor, p: float, size: int
) -> tuple[Elementwise, Optional[Elementwise], torch.Tensor]:
    """``(φ, φ', c)`` with ``c φ(σ) = ∂‖σ‖_p / ∂σ`` near this point: ``σ^(p-1)`` and
    ``‖σ‖^(1-p)`` (``norm`` stays in the graph), or for p = 1 and ∞ the fixed steps of
    :func:`_norm_derivative` (``φ' = 0``: their per-matrix thresholds broadcast against
    singular values, not against the pairs a derivative would be taken at)."""
    if p in (1, float("inf")):
        floor = (size * torch.finfo(s.dtype).eps * s[..., :1]).detach()
        top = (s[..., :1] - floor).detach()
        count = ((s >= top) & (top + floor > 0)).sum(-1, keepdim=True).clamp_min(1)

        def step(x: torch.Tensor) -> torch.Tensor:
            kept = (x > floor) if p == 1 else (x >= top) & (top + floor > 0)
            return kept.to(x.dtype) / (1 if p == 1 else count) + 0 * x

        return step, torch.zeros_like, torch.ones_like(norm)
    positive = norm > 0
    scale = torch.where(positive, norm, torch.ones_like(norm)) ** (1 - p)
    return (lambda x: x ** (p - 1)), None, torch.where(positive, scale, torch.zeros_like(norm))


def _norm_derivative(s: torch.Tensor, norm: torch.Tensor, p: float, size: int) -> torch.Tensor:
    """``∂‖σ‖_p / ∂σᵢ``, the minimum-norm subgradient: 0 at ``σ = 0`` for p = 1 (below
    ``max(m, n) · eps · σ₁``: round-off of exact zeros) and the mean over a tied maximum
    (within that) for p = ∞."""
    floor = size * torch.finfo(s.dtype).eps * s[..., :1]
    if p == 1:
        return (s > floor).to(s.dtype)
    if p == float("inf"):
        top = (s >= s[..., :1] - floor) & (s[..., :1] > 0)
        return top.to(s.dtype) / top.sum(-1, keepdim=True).clamp_min(1)
    positive = norm[..., None] > 0
    safe = torch.where(positive, norm[..., None], torch.ones_like(norm[..., None]))
    return torch.where(positive, (s / safe) ** (p - 1), torch.zeros_like(s))


def schatten_norm(
    A: torch.Tensor, p: float = 1.0, *, compute_dtype: Optional[torch.dtype] = None
) -> torch.Tensor:
    """The Schatten ``p``-norm ``(Σ σᵢᵖ)^(1/p)`` of ``A`` (..., m, n), ``p`` in [1, ∞]: the
    nuclear norm (p = 1), Frobenius (2), spectral (∞). Its gradient is the minimum-norm
    subgradient wherever the norm is not differentiable: ``U_r V_rᵀ`` over the non-zero
    singular values for p = 1, the mean of ``uᵢ vᵢᵀ`` over a tied largest for p = ∞, 0 at
    ``A = 0`` — independent of the singular vectors LAPACK happens to return (torch's
    gradient at a rank-deficient ``A`` is not).

    Args:
        A: real matrices (..., m, n); float16 … float64.
        p: a number in [1, ∞]. Default: 1.
        compute_dtype: least working precision. Default: None (float64).

    Returns:
        (...,) in ``A``'s dtype.

    Examples:
        >>> import torch, stableeig as se
        >>> A = torch.diag(torch.tensor([3.0, 4.0, 0.0]))
        >>> [round(float(se.schatten_norm(A, p)), 4) for p in (1, 2, float("inf"))]
        [7.0, 5.0, 4.0]
    """
    return _schatten_norm(A, p, compute_dtype, "schatten_norm")


def _schatten_norm(
    A: torch.Tensor, p: float, compute_dtype: Optional[torch.dtype], name: str
) -> torch.Tensor:
    A = _check_matrices(f"{name}: A", A)
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not p >= 1:
        raise ArgumentError(f"{name}: p: expected a number in [1, inf] (got {p!r})")
    work = working_dtype(A.dtype, compute_dtype)
    with autocast_off(A.device):
        X = A.to(work)
        norm = _SchattenNorm.apply(X.mT if A.shape[-2] < A.shape[-1] else X, float(p))[0]
    return checks.rounded_checked(name, "the norm", norm, A.dtype)


def nuclear_norm(A: torch.Tensor, *, compute_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """``‖A‖_*``, the sum of the singular values of (..., m, n): :func:`schatten_norm` with
    ``p = 1`` (gradient ``U_r V_rᵀ`` over the non-zero singular values, the minimum-norm
    subgradient at a rank-deficient ``A``).

    Examples:
        >>> import torch, stableeig as se
        >>> float(se.nuclear_norm(torch.tensor([[3.0, 0.0], [0.0, -4.0]])))
        7.0
    """
    return _schatten_norm(A, 1.0, compute_dtype, "nuclear_norm")
