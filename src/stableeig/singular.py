"""Functions of singular values with exact gradients where ``torch.linalg.svd`` has none.

``F(A) = U f(Σ) Vᵀ`` of a thin SVD ``A = U Σ Vᵀ`` (..., m, n) depends on ``U`` and ``V``
only through pairs that tie harmlessly: its derivative (the generalized-matrix-function
Daleckii–Krein formula) is, with ``Ĝ = Uᵀ G V`` and ``m >= n``,

    ∂L/∂A = U (D⁻ ∘ sym Ĝ + D⁺ ∘ skew Ĝ) Vᵀ + (I - U Uᵀ) G V diag(f(σ)/σ) Vᵀ,

``D⁻ᵢⱼ = (f(σᵢ) - f(σⱼ)) / (σᵢ - σⱼ)`` (``f'(σᵢ)`` at ties: the library's cancellation-free
divided differences, no ``σᵢ² - σⱼ²``) and ``D⁺ᵢⱼ = (f(σᵢ) + f(σⱼ)) / (σᵢ + σⱼ)``; ``m < n``
is the transpose. Differentiating ``U`` and ``V`` one by one (torch's SVD backward) divides
by ``σᵢ² - σⱼ²`` and returns NaN at exact rotations, ``I`` and any tied singular values,
where ``F`` is perfectly smooth. The derivative is finite wherever ``D⁺`` and ``f(σ)/σ``
are: ``σᵢ + σⱼ > 0`` for every pair, or ``f(0) = 0``.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from . import _validation as checks
from ._autograd import Function
from ._precision import autocast_off, working_dtype
from .exceptions import DTypeError, NotDifferentiableError, ShapeError
from .matrix_functions import _derivative, divided_differences

__all__ = ["polar", "svd_funm"]

Elementwise = Callable[[torch.Tensor], torch.Tensor]


def _check_matrices(name: str, A: object) -> torch.Tensor:
    """A finite real floating (..., m, n) tensor with m, n >= 1."""
    if not isinstance(A, torch.Tensor):
        raise ShapeError(f"{name}: expected a (..., m, n) tensor (got {type(A).__name__})")
    if A.dtype not in checks.FLOATING_DTYPES:
        raise DTypeError(f"{name}: expected a real floating dtype (got {A.dtype})")
    if A.ndim < 2 or A.shape[-1] < 1 or A.shape[-2] < 1:
        raise ShapeError(f"{name}: expected (..., m, n) matrices, m, n >= 1 (got shape "
                         f"{tuple(A.shape)})")  # fmt: skip
    checks.check_finite(name, A)
    return A


def _sum_quotient(s: torch.Tensor, f: Elementwise, df: Optional[Elementwise]) -> torch.Tensor:
    """``D⁺ᵢⱼ = (f(σᵢ) + f(σⱼ)) / (σᵢ + σⱼ)`` (..., k, k): a sum over a sum of non-negative
    numbers, no cancellation; ``f'(0)`` where both are 0 and ``f(0) = 0``, else Inf there."""
    fs = f(s)
    total = s[..., :, None] + s[..., None, :]
    numerator = fs[..., :, None] + fs[..., None, :]
    zero = total == 0
    at_zero = torch.where(
        numerator == 0,
        _derivative(f, df)(torch.zeros_like(total)),
        torch.full_like(total, torch.inf),
    )
    return torch.where(zero, at_zero, numerator / torch.where(zero, torch.ones_like(total), total))


def _over_sigma(s: torch.Tensor, f: Elementwise, df: Optional[Elementwise]) -> torch.Tensor:
    """``f(σ) / σ`` (..., k): ``f'(0)`` at ``σ = 0`` when ``f(0) = 0``, else Inf there."""
    fs = f(s)
    zero = s == 0
    at_zero = torch.where(fs == 0, _derivative(f, df)(torch.zeros_like(s)), torch.inf)
    return torch.where(zero, at_zero, fs / torch.where(zero, torch.ones_like(s), s))


class _SingularFunction(Function):
    """``U f(Σ) Vᵀ`` of tall or square (..., m, n), m >= n, with the exact backward (and
    generated vmap: the host checks are off under vmap)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(
        A: torch.Tensor, f: Elementwise, df: Optional[Elementwise], name: str
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        U, s, Vh = torch.linalg.svd(A, full_matrices=False)
        return (U * f(s)[..., None, :]) @ Vh, U, s, Vh

    @staticmethod
    def setup_context(ctx, inputs, output):  # type: ignore[no-untyped-def]
        _, ctx.f, ctx.df, ctx.name = inputs
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(*output[1:])

    @staticmethod
    def backward(ctx, grad_F, _grad_U, _grad_s, _grad_Vh):  # type: ignore[no-untyped-def]
        U, s, Vh = ctx.saved_tensors
        if grad_F is None:
            return None, None, None, None
        f, df = ctx.f, ctx.df
        V = Vh.mT
        projected = U.mT @ grad_F  # (k, n)
        G_hat = projected @ V
        difference = divided_differences(s, f, df)
        total = _sum_quotient(s, f, df)
        scaled = _over_sigma(s, f, df)
        core = difference * (G_hat + G_hat.mT) / 2 + total * (G_hat - G_hat.mT) / 2
        grad_A = U @ core @ Vh
        if U.shape[-2] > U.shape[-1]:  # m > n: the part of G outside U's columns
            outside = grad_F @ V - U @ G_hat
            grad_A = grad_A + (outside * scaled[..., None, :]) @ Vh
        if checks.host_checks_enabled(grad_A) and not checks.all_finite(grad_A):
            defined = bool(torch.isfinite(total).all()) and bool(torch.isfinite(scaled).all())
            if not defined:
                raise NotDifferentiableError(
                    f"{ctx.name} backward: expected σᵢ + σⱼ > 0 for every pair of singular "
                    f"values, or f(0) = 0 (got a zero singular value, smallest "
                    f"{float(s.amin()):.3g}: the result is not unique at a rank-deficient A)"
                )
        return grad_A, None, None, None


def svd_funm(
    A: torch.Tensor,
    f: Elementwise,
    df: Optional[Elementwise] = None,
    *,
    compute_dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    """``U f(Σ) Vᵀ`` of the thin SVD of ``A`` (..., m, n), with the exact gradient.

    Finite and exact at tied singular values (``I``, exact rotations, any multiplicity),
    where ``torch.linalg.svd`` autograd returns NaN; undefined only where ``σᵢ + σⱼ = 0``
    for a pair (a zero singular value) and ``f(0) ≠ 0``, which raises
    :class:`~stableeig.NotDifferentiableError` in the backward.

    Args:
        A: real matrices (..., m, n), m, n >= 1; float16 … float64.
        f: elementwise function of the singular values (a tensor in, a tensor out).
        df: its derivative. Default: None (forward-mode autograd of ``f``).
        compute_dtype: least working precision. Default: None (float64).

    Returns:
        (..., m, n) in ``A``'s dtype.

    Examples:
        >>> import torch, stableeig as se
        >>> A = torch.eye(3, requires_grad=True)            # three tied singular values
        >>> se.svd_funm(A, torch.tanh).sum().backward()
        >>> bool(torch.isfinite(A.grad).all())
        True
    """
    A = _check_matrices("svd_funm: A", A)
    return _apply(A, f, df, compute_dtype, "svd_funm")


def polar(A: torch.Tensor, *, compute_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """The orthogonal polar factor ``U Vᵀ`` of ``A`` (..., m, n): the nearest matrix with
    orthonormal columns (m >= n) or rows (m < n), with the exact gradient.

    Its gradient is ``U (D⁺ ∘ skew Uᵀ G V) Vᵀ + (I - U Uᵀ) G V Σ⁻¹ Vᵀ``,
    ``D⁺ᵢⱼ = 2 / (σᵢ + σⱼ)``: finite at ``I``, at exact rotations and at any tied singular
    values (``torch.linalg.svd`` autograd: NaN there); undefined at a zero singular value,
    where the factor is not unique (:class:`~stableeig.NotDifferentiableError`).

    Args:
        A: real matrices (..., m, n); float16 … float64.
        compute_dtype: least working precision. Default: None (float64).

    Returns:
        (..., m, n) in ``A``'s dtype.

    Examples:
        >>> import torch, stableeig as se
        >>> R = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64))[0]
        >>> A = R.clone().requires_grad_()                   # an exact rotation: σ = 1, 1, 1
        >>> Q = se.polar(A)
        >>> torch.allclose(Q, R)
        True
        >>> (Q * torch.randn(3, 3, dtype=torch.float64)).sum().backward()
        >>> bool(torch.isfinite(A.grad).all())
        True
    """
    A = _check_matrices("polar: A", A)
    return _apply(A, torch.ones_like, _zero, compute_dtype, "polar")


def _zero(x: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(x)


def _apply(
    A: torch.Tensor, f: Elementwise, df: Optional[Elementwise],
    compute_dtype: Optional[torch.dtype], name: str,
) -> torch.Tensor:  # fmt: skip
    work = working_dtype(A.dtype, compute_dtype)
    wide = A.shape[-2] < A.shape[-1]
    with autocast_off(A.device):
        X = A.to(work)
        X = X.mT if wide else X  # F(Aᵀ) = F(A)ᵀ: one path, m >= n
        F = _SingularFunction.apply(X, f, df, name)[0]
    return (F.mT if wide else F).to(A.dtype)
