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
from ._autograd import (
    Function,
    SpectralFunction,
    _elementwise_derivative,
    _LoewnerSecond,
    decompose_singular,
    symmetrized,
)
from ._precision import autocast_off, working_dtype
from .exceptions import ArgumentError, DTypeError, NotDifferentiableError, ShapeError
from .matrix_functions import _derivative, _pairs, divided_differences

__all__ = [
    "low_rank",
    "polar",
    "singular_value_threshold",
    "special_orthogonalize",
    "spectral_clip",
    "svd_funm",
]

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
        U, s, Vh = decompose_singular(A)
        return (U * f(s)[..., None, :]) @ Vh, U, s, Vh

    @staticmethod
    def setup_context(ctx, inputs, output):  # type: ignore[no-untyped-def]
        _, ctx.f, ctx.df, ctx.name = inputs
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(inputs[0], *output[1:])
        ctx.save_for_forward(*output[1:])

    @staticmethod
    def backward(ctx, grad_F, _grad_U, _grad_s, _grad_Vh):  # type: ignore[no-untyped-def]
        A, U, s, Vh = ctx.saved_tensors
        if grad_F is None:
            return None, None, None, None
        f, df = ctx.f, ctx.df
        if torch.is_grad_enabled() and not torch.compiler.is_compiling():  # create_graph
            function = _odd_extension(ctx.name, f, df)
            first = _first_order(U.detach(), s.detach(), Vh.detach(), grad_F.detach(), f, df)
            grad_A = _second_order_backward(A, grad_F, U, s, Vh, function, _kinks(s, f), first)
        else:
            grad_A = _first_order(U, s, Vh, grad_F, f, df)
        expected = (
            f"{ctx.name} backward: expected a finite derivative of f at every singular value "
            "and σᵢ + σⱼ > 0 for every pair, or f(0) = 0"
        )
        if torch.compiler.is_compiling():  # an assertion in the graph, no host sync
            fine = torch.isfinite(grad_A).all() | ~torch.isfinite(grad_F).all()
            checks.assert_in_graph(fine, expected)
        elif (
            checks.host_checks_enabled(grad_A)
            and not checks.all_finite(grad_A)
            and checks.all_finite(grad_F)  # a non-finite incoming gradient is not ours to judge
        ):
            zero = bool(torch.isfinite(_sum_quotient(s, f, df)).all()) and bool(
                torch.isfinite(_over_sigma(s, f, df)).all()
            )
            why = (
                "an infinite derivative of f at a singular value"
                if zero
                else f"a zero singular value, smallest {float(s.amin()):.3g}: the result is "
                "not unique at a rank-deficient A"
            )
            raise NotDifferentiableError(f"{expected} (got {why})")
        return grad_A, None, None, None


class _SingularForward(_SingularFunction):
    """:class:`_SingularFunction` with forward mode (the same self-adjoint map), except
    while Dynamo traces (it cannot trace a custom ``jvp``)."""

    @staticmethod
    def jvp(ctx, dA, _f, _df, _name):  # type: ignore[no-untyped-def]
        U, s, Vh = ctx.saved_tensors
        derivative = _first_order(U, s, Vh, dA, ctx.f, ctx.df)  # the map is self-adjoint
        return derivative, torch.zeros_like(U), torch.zeros_like(s), torch.zeros_like(Vh)


def _first_order(
    U: torch.Tensor, s: torch.Tensor, Vh: torch.Tensor, G: torch.Tensor, f: Elementwise,
    df: Optional[Elementwise],
) -> torch.Tensor:  # fmt: skip
    """``U (D⁻ ∘ sym Ĝ + D⁺ ∘ skew Ĝ) Vᵀ + (I - U Uᵀ) G V diag(f(σ)/σ) Vᵀ`` (..., m, n),
    ``Ĝ = Uᵀ G V``: the gradient for an incoming ``G``, and (the map is self-adjoint) the
    derivative in the direction ``G``."""
    V = Vh.mT
    G_hat = U.mT @ G @ V
    if f is torch.ones_like:  # the polar factor: D⁻ = 0, D⁺ = 2 / (σᵢ + σⱼ), f(σ)/σ = 1/σ
        core = (G_hat - G_hat.mT) / (s[..., :, None] + s[..., None, :])
        scaled = s.reciprocal()
    else:
        difference = divided_differences(s, f, df)
        total = _sum_quotient(s, f, df)
        core = difference * (G_hat + G_hat.mT) / 2 + total * (G_hat - G_hat.mT) / 2
        scaled = _over_sigma(s, f, df)
    result = U @ core @ Vh
    if U.shape[-2] > U.shape[-1]:  # m > n: the part of G outside U's columns
        outside = G @ V - U @ G_hat
        result = result + (outside * scaled[..., None, :]) @ Vh
    return result


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
        f: elementwise function of the singular values (a tensor in, a tensor out); tensors
            it holds that require grad (a learned threshold) receive their gradient.
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
        function = _SingularFunction if torch.compiler.is_compiling() else _SingularForward
        F, U, s, Vh = function.apply(X, f, df, name)
        values = f(s.detach())
        if values.requires_grad:  # f holds parameters (a learned threshold): their gradient
            change = values - values.detach()  # U (∂f/∂θ)(Σ) Vᵀ, 0 in value
            F = F + (U.detach() * change[..., None, :]) @ Vh.detach()
    return checks.rounded_checked(name, "the result", F.mT if wide else F, A.dtype)


class _SpecialPolar(Function):
    """The nearest rotation ``U diag(1, …, 1, det(U Vᵀ)) Vᵀ`` of square (..., n, n): the
    polar factor of the signed SVD ``A = U' diag(s̃) Vᵀ`` (``s̃ₙ = ±σₙ``, ``u'ₙ = ±uₙ``,
    ``det(U' Vᵀ) = 1``), whose gradient is ``U' (D⁺ ∘ skew Ĝ) Vᵀ`` with
    ``D⁺ᵢⱼ = 2 / (s̃ᵢ + s̃ⱼ)`` off the diagonal (the diagonal of a skew matrix is 0).
    Undefined (the rotation not unique) exactly where some ``s̃ᵢ + s̃ⱼ = 0``, i ≠ j: a
    negative determinant with the two smallest singular values tied, or rank <= n - 2.
    Returns ``(R, defined)`` with ``defined`` (...,) per matrix."""

    generate_vmap_rule = True

    @staticmethod
    def forward(A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        U, s, Vh = decompose_singular(A, full_matrices=True)
        sign = torch.linalg.det(U) * torch.linalg.det(Vh)  # ±1
        flip = torch.ones_like(s)
        flip[..., -1] = sign
        U = U * flip[..., None, :]
        signed = s * flip
        pairs = signed[..., :, None] + signed[..., None, :]
        off = ~torch.eye(s.shape[-1], dtype=torch.bool, device=s.device)
        defined = ((pairs != 0) | ~off).all(-1).all(-1)
        return U @ Vh, defined, U, signed, Vh  # type: ignore[return-value]

    @staticmethod
    def setup_context(ctx, inputs, output):  # type: ignore[no-untyped-def]
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(inputs[0], *output[2:])
        ctx.save_for_forward(inputs[0], *output[2:])
        ctx.mark_non_differentiable(output[1])

    @staticmethod
    def backward(ctx, grad_R, _defined, _U, _s, _Vh):  # type: ignore[no-untyped-def]
        A, U, signed, Vh = ctx.saved_tensors
        if grad_R is None:
            return None
        if torch.is_grad_enabled() and not torch.compiler.is_compiling():  # create_graph
            function, kinks = _rotation_signs(signed)
            first = _rotation_first_order(U.detach(), signed.detach(), Vh.detach(), grad_R.detach())
            return _second_order_backward(A, grad_R, U, signed, Vh, function, kinks, first)
        return _rotation_first_order(U, signed, Vh, grad_R)


class _SpecialForward(_SpecialPolar):
    """:class:`_SpecialPolar` with forward mode (the same self-adjoint map), except while
    Dynamo traces."""

    @staticmethod
    def jvp(ctx, dA):  # type: ignore[no-untyped-def]
        _, U, signed, Vh = ctx.saved_tensors
        dR = _rotation_first_order(U, signed, Vh, dA)
        return dR, None, torch.zeros_like(U), torch.zeros_like(signed), torch.zeros_like(Vh)


def _rotation_first_order(
    U: torch.Tensor, signed: torch.Tensor, Vh: torch.Tensor, G: torch.Tensor
) -> torch.Tensor:
    """``U' (D⁺ ∘ skew Ĝ) Vᵀ``, ``D⁺ᵢⱼ = 2 / (s̃ᵢ + s̃ⱼ)`` off the diagonal: the gradient for
    an incoming ``G`` and (the map is self-adjoint) the derivative in the direction ``G``."""
    G_hat = U.mT @ G @ Vh.mT
    pairs = signed[..., :, None] + signed[..., None, :]
    off = ~torch.eye(signed.shape[-1], dtype=torch.bool, device=signed.device)
    usable = off & (pairs != 0)
    # undefined pairs: 0 here; _UndefinedGate has already refused or zeroed their matrix
    total = torch.where(usable, 2 / torch.where(usable, pairs, torch.ones_like(pairs)), 0)
    return U @ (total * (G_hat - G_hat.mT) / 2) @ Vh


def _rotation_signs(signed: torch.Tensor) -> tuple[SpectralFunction, torch.Tensor]:
    """The ``g`` of the rotation on J's eigenvalues ``±s̃``: +1 on the ``s̃`` branch, -1 on
    the other. With ``s̃ₙ = -σₙ < 0`` (a reflection corrected) that is ``sign(λ)`` flipped
    for ``|λ|`` below ``μ = (σₙ₋₁ + σₙ) / 2``: constant near every eigenvalue of J where
    the rotation is unique."""
    flipped = torch.signbit(signed[..., -1:])
    magnitude = signed.abs()
    middle = (
        (magnitude[..., -2:-1] + magnitude[..., -1:]) / 2
        if signed.shape[-1] > 1
        else torch.full_like(magnitude, torch.inf)
    )

    def values(w: torch.Tensor) -> torch.Tensor:
        sign = torch.where(torch.signbit(w), -torch.ones_like(w), torch.ones_like(w))
        return torch.where(flipped & (w.abs() < middle), -sign, sign) + 0 * w

    kinks = torch.cat([torch.zeros_like(middle), torch.where(flipped, middle, 0 * middle)], -1)
    return _piecewise("special_orthogonalize", values), kinks


def special_orthogonalize(
    A: torch.Tensor,
    *,
    undefined: str = "raise",
    compute_dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    """The nearest rotation (determinant +1) to each square ``A`` (..., n, n): the 9-D → SO(3)
    map of rotation regression (Levinson et al., 2020) for any n, with the exact gradient.

    Exact at ``I``, at rotations and at tied singular values, where the gradient through
    ``torch.linalg.svd`` is NaN. The rotation is not unique — and its gradient undefined —
    exactly where two signed singular values cancel: ``det(A) < 0`` with the two smallest
    singular values tied, or rank <= n - 2. There ``undefined="raise"`` raises
    :class:`~stableeig.NotDifferentiableError` in the backward (naming how many of the batch),
    and ``"zero"`` gives those matrices a zero gradient, the others their exact one: one
    degenerate sample never aborts a batch.

    Args:
        A: real square matrices (..., n, n); float16 … float64.
        undefined: ``"raise"`` or ``"zero"``. Default: ``"raise"``.
        compute_dtype: least working precision. Default: None (float64).

    Returns:
        (..., n, n) rotations in ``A``'s dtype.

    Examples:
        >>> import torch, stableeig as se
        >>> M = torch.randn(4, 3, 3, requires_grad=True)     # a batch of 9-D network outputs
        >>> R = se.special_orthogonalize(M)
        >>> bool(torch.allclose(torch.linalg.det(R), torch.ones(4), atol=1e-5))
        True
    """
    A = _check_matrices("special_orthogonalize: A", A)
    checks.check_square_matrix("special_orthogonalize: A", A)
    checks.check_choice("special_orthogonalize: undefined", undefined, ("raise", "zero"))
    return _special(A, undefined, compute_dtype, "special_orthogonalize")


_ROTATION = (
    "{name} backward: expected a unique rotation (got {count} matrices with det < 0 and the "
    "two smallest singular values tied, or rank <= n - 2); pass undefined='zero' for a zero "
    "gradient there"
)


def _special(
    A: torch.Tensor, undefined: str, compute_dtype: Optional[torch.dtype], name: str
) -> torch.Tensor:
    work = working_dtype(A.dtype, compute_dtype)
    with autocast_off(A.device):
        function = _SpecialPolar if torch.compiler.is_compiling() else _SpecialForward
        R, defined = function.apply(A.to(work))[:2]
        R = _gate(R, defined, undefined, _ROTATION.format(name=name, count="{count}"))
    return R.to(A.dtype)


class _UndefinedGate(Function):
    """Identity forward; backward zeroes (``"zero"``) or refuses (``"raise"``, with
    ``message``, whose ``{count}`` is filled in) the gradient of the matrices whose result
    is not unique (``defined`` False)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(R: torch.Tensor, defined: torch.Tensor, policy: str, message: str) -> torch.Tensor:
        return R.view_as(R)

    @staticmethod
    def setup_context(ctx, inputs, output):  # type: ignore[no-untyped-def]
        _, defined, ctx.policy, ctx.message = inputs
        ctx.save_for_backward(defined)
        ctx.save_for_forward(defined)

    @staticmethod
    def _gated(ctx, grad):  # type: ignore[no-untyped-def]
        (defined,) = ctx.saved_tensors
        if ctx.policy == "raise":
            if torch.compiler.is_compiling():  # an assertion in the graph, no host sync
                checks.assert_in_graph(defined.all(), ctx.message.format(count="some"))
            elif checks.host_checks_enabled(defined) and not bool(defined.all()):
                count = f"{int((~defined).sum())} of {defined.numel()}"
                raise NotDifferentiableError(ctx.message.format(count=count))
            return grad
        return torch.where(defined[..., None, None], grad, torch.zeros_like(grad))

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def]
        return _UndefinedGate._gated(ctx, grad), None, None, None


class _UndefinedGateForward(_UndefinedGate):
    """:class:`_UndefinedGate` with forward mode (the same gate on the tangent)."""

    @staticmethod
    def jvp(ctx, tangent, _defined, _policy, _message):  # type: ignore[no-untyped-def]
        return _UndefinedGate._gated(ctx, tangent)


def _gate(R: torch.Tensor, defined: torch.Tensor, policy: str, message: str) -> torch.Tensor:
    """:class:`_UndefinedGate` (with forward mode except while Dynamo traces)."""
    gate = _UndefinedGate if torch.compiler.is_compiling() else _UndefinedGateForward
    return gate.apply(R, defined, policy, message)


def _scalar(name: str, value: object, minimum: float) -> torch.Tensor | float:
    """A number, or a 0-dim floating tensor (which may require grad), at least ``minimum``."""
    if isinstance(value, torch.Tensor):
        if value.dim() != 0 or not value.is_floating_point():
            raise ShapeError(
                f"{name}: expected a number or a 0-dim floating tensor (got a tensor of shape "
                f"{tuple(value.shape)} and dtype {value.dtype})"
            )
        checks.check_finite(name, value)
        if checks.host_checks_enabled(value) and float(value.detach()) < minimum:
            raise ArgumentError(f"{name}: expected a value >= {minimum} (got {float(value):g})")
        return value
    return checks.check_in_range(name, value, minimum, float("inf"))


def singular_value_threshold(
    A: torch.Tensor,
    tau: float | torch.Tensor,
    *,
    compute_dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    """The proximal operator of ``τ ‖·‖_*``: ``U max(Σ - τ, 0) Vᵀ`` (..., m, n), the step of
    nuclear-norm regularized solvers (matrix completion, robust PCA), with the exact
    gradient (:func:`svd_funm`), finite where the singular values tie — below the threshold
    they all tie at 0 after it. ``tau`` may be a 0-dim tensor that requires grad (a learned
    threshold): it receives its gradient.

    Examples:
        >>> import torch, stableeig as se
        >>> A = torch.diag(torch.tensor([3.0, 1.0, 0.5]))
        >>> [round(v, 4) for v in se.singular_value_threshold(A, 0.8).diagonal().tolist()]
        [2.2, 0.2, 0.0]
    """
    threshold = _scalar("singular_value_threshold: tau", tau, 0.0)
    return svd_funm(A, lambda s: torch.relu(s - threshold), compute_dtype=compute_dtype)


def spectral_clip(
    A: torch.Tensor,
    max_value: float | torch.Tensor,
    *,
    compute_dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    """``U min(Σ, c) Vᵀ`` (..., m, n): every singular value clipped at ``c`` (spectral-norm
    control of a weight, a Lipschitz bound), with the exact gradient (:func:`svd_funm`),
    finite where the clipped singular values tie at ``c``. ``max_value`` may be a 0-dim
    tensor that requires grad.

    Examples:
        >>> import torch, stableeig as se
        >>> se.spectral_clip(torch.diag(torch.tensor([3.0, 1.0])), 2.0).diagonal().tolist()
        [2.0, 1.0]
    """
    clip = _scalar("spectral_clip: max_value", max_value, 0.0)
    return svd_funm(A, lambda s: torch.clamp(s, max=clip), compute_dtype=compute_dtype)


class _Truncation(Function):
    """``U_k Σ_k V_kᵀ`` of tall or square (..., m, n), m >= n, 1 <= k <= n, with the exact
    backward: :class:`_SingularFunction`'s formula for ``f(σᵢ) = σᵢ`` on the ``k`` largest
    and 0 on the rest (by position): ``D⁻`` and ``D⁺`` are 1 within the kept, 0 within the
    dropped, ``σᵢ / (σᵢ ∓ σⱼ)`` across the cut, which needs ``σ_k > σ_{k+1}``; ``f(σ)/σ``
    is 1 on the kept, 0 on the dropped. Returns ``(F, defined)``, ``defined`` (...,)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(A: torch.Tensor, k: int) -> tuple[torch.Tensor, ...]:
        U, s, Vh = decompose_singular(A)
        kept = torch.arange(s.shape[-1], device=s.device) < k
        F = (U * torch.where(kept, s, torch.zeros_like(s))[..., None, :]) @ Vh
        if k < s.shape[-1]:
            gap = s[..., k - 1] - s[..., k]
            scale = s[..., :1].squeeze(-1).clamp_min(torch.finfo(s.dtype).tiny)
            defined = gap > s.shape[-1] * torch.finfo(s.dtype).eps * scale
        else:
            defined = torch.ones(s.shape[:-1], dtype=torch.bool, device=s.device)
        return F, defined, U, s, Vh

    @staticmethod
    def setup_context(ctx, inputs, output):  # type: ignore[no-untyped-def]
        ctx.k = inputs[1]
        ctx.set_materialize_grads(False)
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(inputs[0], *output[2:])
        ctx.save_for_forward(inputs[0], *output[2:])

    @staticmethod
    def backward(ctx, grad_F, _defined, _U, _s, _Vh):  # type: ignore[no-untyped-def]
        A, U, s, Vh = ctx.saved_tensors
        if grad_F is None:
            return None, None
        if torch.is_grad_enabled() and not torch.compiler.is_compiling():  # create_graph
            function, kinks = _cut(s, ctx.k)
            first = _truncation_first_order(
                U.detach(), s.detach(), Vh.detach(), grad_F.detach(), ctx.k
            )
            return _second_order_backward(A, grad_F, U, s, Vh, function, kinks, first), None
        return _truncation_first_order(U, s, Vh, grad_F, ctx.k), None


class _TruncationForward(_Truncation):
    """:class:`_Truncation` with forward mode, except while Dynamo traces."""

    @staticmethod
    def jvp(ctx, dA, _k):  # type: ignore[no-untyped-def]
        _, U, s, Vh = ctx.saved_tensors
        dF = _truncation_first_order(U, s, Vh, dA, ctx.k)
        return dF, None, torch.zeros_like(U), torch.zeros_like(s), torch.zeros_like(Vh)


def _truncation_first_order(
    U: torch.Tensor, s: torch.Tensor, Vh: torch.Tensor, G: torch.Tensor, k: int
) -> torch.Tensor:
    """:func:`_first_order` for ``f(σᵢ) = σᵢ`` on the ``k`` largest, 0 on the rest (the
    class docstring's ``D⁻``, ``D⁺``); self-adjoint, so also the forward derivative."""
    kept = torch.arange(s.shape[-1], device=s.device) < k
    both = kept[:, None] & kept[None, :]
    across = kept[:, None] ^ kept[None, :]
    big = torch.where(kept[:, None], s[..., :, None], s[..., None, :])  # the kept one
    minus = s[..., :, None] - s[..., None, :]
    plus = s[..., :, None] + s[..., None, :]
    sign = torch.where(kept[:, None], 1.0, -1.0).to(s.dtype)  # (kept_i - kept_j) order
    safe = torch.where(across & (minus != 0), minus, torch.ones_like(minus))
    difference = torch.where(both, 1.0, 0.0).to(s.dtype) + torch.where(
        across, sign * big / safe, torch.zeros_like(minus)
    )
    total = torch.where(both, 1.0, 0.0).to(s.dtype) + torch.where(
        across & (plus != 0), big / torch.where(plus != 0, plus, torch.ones_like(plus)), 0.0
    )
    G_hat = U.mT @ G @ Vh.mT
    core = difference * (G_hat + G_hat.mT) / 2 + total * (G_hat - G_hat.mT) / 2
    result = U @ core @ Vh
    if U.shape[-2] > U.shape[-1]:
        outside = G @ Vh.mT - U @ G_hat
        result = result + (outside * kept.to(s.dtype)) @ Vh
    return result


def _cut(s: torch.Tensor, k: int) -> tuple[SpectralFunction, torch.Tensor]:
    """The truncation's ``g`` on J's eigenvalues: ``λ`` where ``|λ|`` is above the middle
    of the gap at the cut, ``(σ_k + σ_{k+1}) / 2``, else 0."""
    middle = (
        (s[..., k - 1 : k] + s[..., k : k + 1]) / 2
        if k < s.shape[-1]
        else torch.full_like(s[..., :1], -1.0)
    )

    def values(w: torch.Tensor) -> torch.Tensor:
        return torch.where(w.abs() > middle, w, torch.zeros_like(w))

    return _piecewise("low_rank", values), middle


_CUT = (
    "low_rank backward: expected σ_k > σ_{{k+1}}, a gap at the cut (got {count} matrices with "
    "the cut inside tied singular values: the truncation is not unique); pass "
    "undefined='zero' for a zero gradient there"
)


def low_rank(
    A: torch.Tensor,
    k: int,
    *,
    undefined: str = "raise",
    compute_dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    """The best rank-``k`` approximation ``U_k Σ_k V_kᵀ`` of ``A`` (..., m, n) (Eckart–Young),
    with the exact gradient: finite at ties among the kept and among the dropped singular
    values; defined only where ``σ_k > σ_{k+1}`` (a gap at the cut, beyond
    ``min(m, n) · eps · σ₁``). Where the cut falls in a tie, the truncation is not unique:
    ``undefined="raise"`` raises :class:`~stableeig.NotDifferentiableError` in the backward,
    ``"zero"`` gives those matrices a zero gradient (the others their exact one).

    Examples:
        >>> import torch, stableeig as se
        >>> A = torch.diag(torch.tensor([3.0, 2.0, 1.0]))
        >>> se.low_rank(A, 2).diagonal().tolist()
        [3.0, 2.0, 0.0]
    """
    name = "low_rank"
    A = _check_matrices(f"{name}: A", A)
    checks.check_choice(f"{name}: undefined", undefined, ("raise", "zero"))
    size = min(A.shape[-2], A.shape[-1])
    checks.check_k(f"{name}: k", k, size)
    work = working_dtype(A.dtype, compute_dtype)
    wide = A.shape[-2] < A.shape[-1]
    with autocast_off(A.device):
        X = A.to(work)
        function = _Truncation if torch.compiler.is_compiling() else _TruncationForward
        F, defined = function.apply(X.mT if wide else X, k)[:2]
        F = _gate(F, defined, undefined, _CUT)
    return checks.rounded_checked(name, "the result", F.mT if wide else F, A.dtype)


# Second order: the Jordan–Wielandt matrix J = [[0, A], [Aᵀ, 0]] (m + n square, symmetric)
# has the eigenvalues ±σᵢ (and m - n zeros) with eigenvectors (uᵢ, ±vᵢ)/√2 (and (u⊥, 0)),
# and U f(Σ) Vᵀ is the upper right block of g(J) for the odd extension g of f. So the
# backward, as a function of (G, A), is the library's symmetric Daleckii–Krein backward of
# g at J, whose exact second-order backward (:class:`_LoewnerSecond`) needs only
# (λ, eigenvectors): built here from the SVD, with no second decomposition.


def _augmented(A: torch.Tensor, upper_only: bool = False) -> torch.Tensor:
    """``[[0, A], [Aᵀ, 0]]`` (..., m + n, m + n); ``upper_only``: ``[[0, A], [0, 0]]``."""
    m, n = A.shape[-2:]
    zeros = A.new_zeros((*A.shape[:-2], m, m))
    top = torch.cat([zeros, A], -1)
    lower = torch.zeros_like(A.mT) if upper_only else A.mT
    bottom = torch.cat([lower, A.new_zeros((*A.shape[:-2], n, n))], -1)
    return torch.cat([top, bottom], -2)


def _augmented_eigenpairs(
    U: torch.Tensor, signed: torch.Tensor, Vh: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (..., m + n) and orthonormal eigenvectors (..., m + n, m + n) of the
    Jordan–Wielandt matrix of ``U diag(signed) Vh`` (m >= n): ``signed`` first, then its
    negation (``-0.0`` at a zero singular value: :func:`torch.signbit` tells the branches
    apart), then ``m - n`` zeros with the complement of ``U``'s columns."""
    m, n = U.shape[-2:]
    V = Vh.mT
    half = 0.5**0.5
    vectors = torch.cat([torch.cat([U, U], -1), torch.cat([V, -V], -1)], -2) * half
    values = torch.cat([signed, -signed], -1)
    if m > n:
        complement = torch.linalg.qr(U, mode="complete").Q[..., n:]
        padding = complement.new_zeros((*complement.shape[:-2], n, m - n))
        vectors = torch.cat([vectors, torch.cat([complement, padding], -2)], -1)
        values = torch.cat([values, signed.new_zeros((*signed.shape[:-1], m - n))], -1)
    return values, vectors


def _second_order_backward(
    A: torch.Tensor, grad_F: torch.Tensor, U: torch.Tensor, signed: torch.Tensor,
    Vh: torch.Tensor, function: SpectralFunction, kinks: torch.Tensor, first: torch.Tensor,
) -> torch.Tensor:  # fmt: skip
    """The first-order gradient as a differentiable function of ``(grad_F, A)`` whose own
    backward (and forward mode) is exact: the upper right block of the symmetric backward
    of ``g`` at ``J``, doubled (``A`` sits in both off-diagonal blocks). ``kinks``
    (..., p): where ``|g|`` jumps or bends; a singular value near one refuses the second
    derivative (:class:`_SecondOrderGate`). The value is ``first``, the direct formula's
    (J's route multiplies round-off by ``1/s̃ᵢ`` on the pairs ``(s̃ᵢ, -s̃ᵢ)``, whose exact
    weight is 0: wrong by O(1) at a rank-deficient ``special_orthogonalize``)."""
    m = A.shape[-2]
    w, E = _augmented_eigenpairs(U.detach(), signed.detach(), Vh.detach())
    J_grad = _LoewnerSecond.apply(_augmented(grad_F, upper_only=True), _augmented(A), w, E,
                                  function)  # fmt: skip
    route = 2 * symmetrized(J_grad)[..., :m, m:]
    grad_A = first + (route - route.detach())
    if torch._C._are_functorch_transforms_active():  # no host checks there (and a bool
        return grad_A  # input would have no tangent for vmap's generated jvp rule)
    unsafe = _near(signed.detach().abs(), kinks)
    return _SecondOrderGate.apply(grad_A, unsafe, function.name)


def _branches(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(|λ|, negative branch (..., n), same branch (..., n, n))`` of J's eigenvalues."""
    negative = torch.signbit(w)
    magnitude = torch.where(negative, -w, w)  # tangent ±1: no abs' 0 at 0
    return magnitude, negative, negative[..., :, None] == negative[..., None, :]


def _odd_extension(name: str, f: Elementwise, df: Optional[Elementwise]) -> SpectralFunction:
    """``g(λ) = ±f(|λ|)`` by branch, with the divided differences of :func:`svd_funm`:
    ``D⁻`` within a branch, ``D⁺`` across (a sum over a sum: no cancellation)."""

    def values(w: torch.Tensor) -> torch.Tensor:
        magnitude, negative, _ = _branches(w)
        fw = f(magnitude)
        return torch.where(negative, -fw, fw)

    def loewner(w: torch.Tensor) -> torch.Tensor:
        magnitude, _, same = _branches(w)
        within = divided_differences(magnitude, f, df)
        return torch.where(same, within, _sum_quotient(magnitude, f, df))

    return SpectralFunction(name, values, loewner, lambda w: "a zero singular value")


def _kinks(s: torch.Tensor, f: Elementwise) -> torch.Tensor:
    """(..., 1): 0 where the odd extension of ``f`` jumps or bends there (``f(0) ≠ 0`` or
    ``f''(0) ≠ 0``), else a point no singular value reaches (-1)."""
    zero = torch.zeros(1, dtype=s.dtype, device=s.device)  # not batched under vmap
    second = _elementwise_derivative(lambda x: _elementwise_derivative(f, x), zero)
    smooth = bool((f(zero) == 0).all()) and bool((second == 0).all())
    return torch.full_like(s[..., :1], -1.0 if smooth else 0.0)


def _piecewise(name: str, values: Elementwise) -> SpectralFunction:
    """A ``g`` that is constant or the identity near every eigenvalue of J (the rotation's
    signs, a truncation's cut): the exact quotient where ``g`` differs, else ``g'`` (0 on a
    constant piece, 1 on the identity: equal values there mean a tie)."""

    def loewner(w: torch.Tensor) -> torch.Tensor:
        a, b = _pairs(w)
        ga, gb = _pairs(values(w))
        differ = ga != gb
        quotient = (ga - gb) / torch.where(differ, a - b, torch.ones_like(a))
        return torch.where(differ, quotient, _pairs(_derivative(values, None)(w))[0])

    return SpectralFunction(name, values, loewner, lambda w: "a result that is not unique")


class _SecondOrderGate(Function):
    """Identity on a first-order gradient computed with ``create_graph=True``; its backward
    refuses (``unsafe``, (...,) per matrix) where ``g`` jumps or kinks within ``2δ`` of an
    eigenvalue of J that it acts on: the second derivative is undefined or ill-conditioned
    there, and the expansion of :func:`contract_second_differences` would not hold."""

    generate_vmap_rule = True

    @staticmethod
    def forward(grad: torch.Tensor, unsafe: torch.Tensor, name: str) -> torch.Tensor:
        return grad.view_as(grad)

    @staticmethod
    def setup_context(ctx, inputs, output):  # type: ignore[no-untyped-def]
        _, unsafe, ctx.name = inputs
        ctx.save_for_backward(unsafe)

    @staticmethod
    def jvp(ctx, tangent, _unsafe, _name):  # type: ignore[no-untyped-def]
        return tangent.view_as(tangent)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def]
        (unsafe,) = ctx.saved_tensors
        if checks.host_checks_enabled(unsafe) and bool(unsafe.any()):
            raise NotDifferentiableError(
                f"{ctx.name} double backward: expected singular values at least ∛eps · σ₁ "
                "away from where the function of them jumps or bends (0, or a cut), where "
                f"the second derivative is undefined or ill-conditioned (got {int(unsafe.sum())}"
                f" of {unsafe.numel()} matrices); differentiate once there"
            )
        return grad, None, None


def _near(magnitudes: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Whether any of ``magnitudes`` (..., k) lies within ``2 ∛eps · max`` of any of
    ``points`` (..., p): (...,)."""
    scale = magnitudes.abs().amax(-1, keepdim=True)
    delta = 2 * torch.finfo(magnitudes.dtype).eps ** (1 / 3) * scale
    distance = (magnitudes[..., :, None] - points[..., None, :]).abs()
    return (distance <= delta[..., None]).any(-1).any(-1)
