"""Private plumbing shared by the public functions and the layers: input preparation and
the two custom autograd Functions (eigenvector rules, Loewner spectral functions).

Nothing here validates arguments: the public entry points do that once.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, ClassVar, Optional

import torch

from . import _validation as checks
from ._precision import working_dtype
from .exceptions import NotDifferentiableError
from .rules import Analytic, EigenvectorRule
from .small import SVD_SIZES, jacobi_eigh, jacobi_svd, use_jacobi

__all__ = [
    "HOST_EIGH_MAX_SIZE",
    "SpectralFunction",
    "compose",
    "decompose",
    "eigh_function",
    "loewner_function",
    "prepare_symmetric",
]

HOST_EIGH_MAX_SIZE = 64
"""On a GPU, matrices up to this size are decomposed by the host's LAPACK and copied back.

Measured on one H200 (torch 2.11): one 64×64 ``eigh`` took 0.81 ms on the device and
0.25 ms as a host round trip; 16 of them 12.3 ms and 3.2 ms. ``benchmarks/gpu.sh``
re-measures both placements per size and batch (``bench speed --only placement``)."""


def prepare_symmetric(
    name: str,
    A: object,
    compute_dtype: Optional[torch.dtype],
    check_symmetric: bool = True,
    symmetrize: bool = True,
) -> torch.Tensor:
    """Validate ``A``, cast it to the working dtype and return ``(A + Aᵀ) / 2``.

    The symmetrization is differentiable, so gradients that reach ``A`` are symmetric.
    ``symmetrize=False`` returns the cast ``A``, for the Functions here, which symmetrize
    what they receive (in the forward, and their gradient in the backward: no autograd
    nodes of their own).
    """
    A = checks.check_square_matrix(name, A)
    checks.check_finite_symmetric(name, A, check_symmetric)  # tolerance of the user's dtype
    work = A.to(working_dtype(A.dtype, compute_dtype))
    return symmetrized(work) if symmetrize else work


def symmetrized(A: torch.Tensor) -> torch.Tensor:
    """``(A + Aᵀ) / 2`` (..., n, n), without overflow for entries near the dtype's maximum."""
    return A * 0.5 + A.mT * 0.5


def decompose(A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.linalg.eigh(A)``, on the host for small matrices on a GPU: ``(w, V)`` on
    ``A``'s device. The round trip's copy is the forward's one host synchronization.
    Batches of 2×2, 3×3 and 4×4 go to the batched Jacobi solver (:mod:`stableeig.small`) where
    :func:`~stableeig.eigh_driver` allows."""
    if use_jacobi(A):
        return jacobi_eigh(A)
    if A.device.type == "cuda" and A.shape[-1] <= HOST_EIGH_MAX_SIZE:
        w, V = torch.linalg.eigh(A.cpu())
        return w.to(A.device), V.to(A.device)
    return torch.linalg.eigh(A)


def decompose_singular(
    A: torch.Tensor, full_matrices: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``torch.linalg.svd(A, full_matrices)``: ``(U, S, Vh)``; batches of square 2×2 and 3×3
    go to the batched Jacobi solver (:func:`~stableeig.small.jacobi_svd`) where
    :func:`~stableeig.eigh_driver` allows."""
    if A.shape[-2] == A.shape[-1] and use_jacobi(A, SVD_SIZES):
        return jacobi_svd(A)
    U, S, Vh = torch.linalg.svd(A, full_matrices=full_matrices)
    return U, S, Vh


def compose(V: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``V diag(values) Vᵀ``: (..., n, n)."""
    return (V * values.unsqueeze(-2)) @ V.mT


def _unused_is_zero(coefficients: torch.Tensor, rotated: torch.Tensor) -> torch.Tensor:
    """``C ∘ rotated`` with the entries where ``rotated`` is exactly 0 set to 0, not
    ``Inf · 0 = NaN`` (an infinite coefficient at a tie): what eager autograd does for an
    output that is not used (its gradient is None). Needed where the gradient is
    materialized as zeros: AOTAutograd (``torch.compile``) passes zeros, not None."""
    return torch.where(rotated == 0, torch.zeros_like(rotated), coefficients * rotated)


def eigenvector_backward(
    w: torch.Tensor,
    V: torch.Tensor,
    grad_w: Optional[torch.Tensor],
    grad_V: Optional[torch.Tensor],
    rule: EigenvectorRule,
) -> torch.Tensor:
    """``V (C ∘ (Vᵀ grad_V) + diag(grad_w)) Vᵀ`` with ``C = rule.coefficients(w)``: (..., n, n).

    Not symmetrized here; the callers symmetrize their input, so the gradient that reaches
    the user is the symmetric part.
    """
    if grad_V is None:
        inner = torch.zeros_like(V)
    elif rule.finite_coefficients:  # no Inf · 0 to guard
        inner = rule.coefficients(w) * (V.mT @ grad_V)
    else:
        inner = _unused_is_zero(rule.coefficients(w), V.mT @ grad_V)
    if grad_w is not None:
        inner = inner + torch.diag_embed(grad_w)
    return V @ inner @ V.mT


def eigen_tangents(
    w: torch.Tensor, V: torch.Tensor, dA: torch.Tensor, coefficients: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward-mode derivative: ``(Vᵀ dA V, dw, dV)`` with ``dw = diag(Vᵀ dA V)`` and
    ``dV = V (C ∘ Vᵀ dA V)`` — the adjoint of :func:`eigenvector_backward` for the same
    coefficient matrix ``C``, so forward and reverse mode agree for every rule."""
    rotated = V.mT @ dA @ V
    return rotated, rotated.diagonal(dim1=-2, dim2=-1), V @ (coefficients * rotated)


class Function(torch.autograd.Function):
    """``torch.autograd.Function`` whose eager ``apply`` skips the per-call
    ``inspect.signature`` binding of default arguments (~0.1 ms, a fifth of a 3×3 call)
    when every argument of ``forward`` is passed; under torch.func transforms and
    ``torch.compile`` the standard ``apply`` runs."""

    _arity: ClassVar[Optional[int]] = None

    @classmethod
    def apply(cls, *args, **kwargs):  # type: ignore[no-untyped-def]
        if kwargs or torch._C._are_functorch_transforms_active() or _compiling():
            return super().apply(*args, **kwargs)
        arity = cls.__dict__.get("_arity")
        if arity is None:
            arity = len(inspect.signature(cls.forward).parameters)
            cls._arity = arity
        if len(args) != arity:
            return super().apply(*args)
        # torch.autograd.Function.apply without the binding: the C++ apply it ends in
        return super(torch.autograd.Function, cls).apply(*args)


def _compiling() -> bool:
    return torch.compiler.is_compiling()


class _EighReverse(Function):
    """Exact ``torch.linalg.eigh`` forward of ``(A + Aᵀ) / 2``, eigenvector gradient by a
    rule's coefficients, symmetrized (reverse mode only: the form Dynamo traces)."""

    @staticmethod
    def forward(A: torch.Tensor, rule: EigenvectorRule) -> tuple[torch.Tensor, torch.Tensor]:
        w, V = decompose(symmetrized(A))
        return w, V

    @staticmethod
    def setup_context(ctx, inputs, output):  # type: ignore[no-untyped-def]
        ctx.rule = inputs[1]
        ctx.set_materialize_grads(False)  # unused outputs: None, not zeros (0 · Inf)
        ctx.save_for_backward(*output)
        ctx.save_for_forward(*output)

    @staticmethod
    def backward(ctx, grad_w, grad_V):  # type: ignore[no-untyped-def]
        w, V = ctx.saved_tensors
        return symmetrized(eigenvector_backward(w, V, grad_w, grad_V, ctx.rule)), None


class _EighForward(_EighReverse):
    """:class:`_EighReverse` with forward mode (the same coefficients) and generated vmap."""

    generate_vmap_rule = True

    @staticmethod
    def jvp(ctx, dA, _rule):  # type: ignore[no-untyped-def]
        w, V = ctx.saved_tensors
        _, dw, dV = eigen_tangents(w, V, symmetrized(dA), ctx.rule.coefficients(w))
        return dw, dV


def eigh_function(A: torch.Tensor, rule: EigenvectorRule) -> tuple[torch.Tensor, torch.Tensor]:
    """``(w, V)`` with the rule's backward; forward mode and vmap too, except while Dynamo
    traces (it cannot trace a custom ``jvp``)."""
    function = _EighReverse if torch.compiler.is_compiling() else _EighForward
    return function.apply(A, rule)


@dataclass(frozen=True)
class SpectralFunction:
    """A scalar function of eigenvalues and its Loewner matrix, both ``(..., n) -> ...``."""

    name: str
    values: Callable[[torch.Tensor], torch.Tensor]  # (..., n) -> (..., n)
    loewner: Callable[[torch.Tensor], torch.Tensor]  # (..., n) -> (..., n, n)
    undefined_gradient: Callable[[torch.Tensor], str]  # why L is infinite at these w
    user_defined: bool = False  # f may hold tensors that require grad (``funm``'s closures)


class _LoewnerReverse(Function):
    """``F = V f(Λ) Vᵀ`` of ``(A + Aᵀ) / 2`` with the Daleckii–Krein backward, symmetrized;
    also returns ``(w, V)``."""

    @staticmethod
    def forward(
        A: torch.Tensor, function: SpectralFunction, grad_dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        w, V = decompose(symmetrized(A))
        return compose(V, function.values(w)), w, V

    @staticmethod
    def setup_context(ctx, inputs, output):  # type: ignore[no-untyped-def]
        ctx.function = inputs[1]
        ctx.grad_dtype = inputs[2]  # the user's dtype: the gradient must fit it
        ctx.set_materialize_grads(False)  # unused outputs: None, not zeros (0 · Inf)
        ctx.save_for_backward(output[1], output[2], inputs[0])
        ctx.save_for_forward(output[1], output[2])

    @staticmethod
    def backward(ctx, grad_F, grad_w, grad_V):  # type: ignore[no-untyped-def]
        w, V, A = ctx.saved_tensors
        function: SpectralFunction = ctx.function
        common = grad_F is not None and grad_w is None and grad_V is None
        if common and not torch.is_grad_enabled() and not _compiling():  # fewest operations
            grad_A = _first_order_backward(function, w, V, grad_F, ctx.grad_dtype)
            return symmetrized(grad_A), None, None
        terms = []  # of Vᵀ grad_A V
        loewner = None
        second_order = None
        if grad_F is not None and torch.is_grad_enabled() and not _compiling():
            # with create_graph: the first-order backward as a function of (grad_F, A)
            # whose own backward is the exact second-order Daleckii–Krein formula
            loewner = function.loewner(w.detach())
            second_order = _LoewnerSecond.apply(grad_F, A, w.detach(), V.detach(), function)
        elif grad_F is not None:
            loewner = function.loewner(w)
            terms.append(loewner * (V.mT @ grad_F @ V))
        if grad_V is not None:  # only in double backward: exact eigenvector rule
            terms.append(_unused_is_zero(Analytic().coefficients(w), V.mT @ grad_V))
        if grad_w is not None:
            terms.append(torch.diag_embed(grad_w))
        if terms:
            grad_A = V @ sum(terms[1:], terms[0]) @ V.mT
            grad_A = grad_A if second_order is None else grad_A + second_order
        else:
            grad_A = second_order if second_order is not None else torch.zeros_like(V)
        if loewner is not None and checks.in_graph():
            defined = torch.isfinite(loewner).all() | ~torch.isfinite(grad_F).all()
            message = f"{function.name} backward: expected a differentiable point"
            checks.assert_in_graph(defined, message)
            return symmetrized(grad_A), None, None
        if loewner is not None and checks.host_checks_enabled(grad_A):
            # one host sync, on sums and a max |entry| (a sum is finite only if every term is)
            fine = checks.finite_flag(loewner) & checks.finite_flag(grad_F)
            if not bool(fine & _within_range(grad_A, ctx.grad_dtype)):
                _raise_if_undefined(function, w, loewner, grad_F, grad_A, ctx.grad_dtype)
        return symmetrized(grad_A), None, None


def _within_range(grad_A: torch.Tensor, grad_dtype: torch.dtype) -> torch.Tensor:
    """Whether ``grad_A`` fits ``grad_dtype`` (a 0-dim bool); always where that dtype is the
    working precision (an overflow there is already an Inf that a finiteness test sees)."""
    if grad_dtype == grad_A.dtype:
        return torch.ones((), dtype=torch.bool, device=grad_A.device)
    return checks.max_abs(grad_A) <= torch.finfo(grad_dtype).max


def _raise_if_undefined(
    function: SpectralFunction, w: torch.Tensor, loewner: torch.Tensor, grad_F: torch.Tensor,
    grad_A: torch.Tensor, grad_dtype: torch.dtype,
) -> None:  # fmt: skip
    """Raise :class:`NotDifferentiableError` for an infinite derivative, or for a finite
    upstream gradient whose result overflows the user's dtype (float32 at λ ~ 1e-30,
    float16 at 1e-4); a non-finite upstream gradient passes through (not ours to judge)."""
    overflow = torch.isfinite(grad_F).all() & ~torch.isfinite(grad_A.to(grad_dtype)).all()
    infinite = ~torch.isfinite(loewner).all()
    if bool(infinite | overflow):
        why = (
            function.undefined_gradient(w)
            if bool(infinite)
            else f"a gradient beyond the range of {grad_dtype} at eigenvalues "
            f"{float(w.amin()):.3g} … {float(w.amax()):.3g}; rescale A or add eps·I"
        )
        raise NotDifferentiableError(
            f"{function.name} backward: expected a differentiable point (got: {why})"
        )


def _first_order_backward(
    function: SpectralFunction, w: torch.Tensor, V: torch.Tensor, grad_F: torch.Tensor,
    grad_dtype: torch.dtype,
) -> torch.Tensor:  # fmt: skip
    """``V (L ∘ (Vᵀ grad_F V)) Vᵀ`` checked with one host sync: the Hadamard product is
    finite exactly when ``L`` and ``grad_F`` are (``Inf · 0 = NaN``), so one sum of it stands
    for both sums of the general path."""
    loewner = function.loewner(w)
    inner = loewner * (V.mT @ grad_F @ V)
    grad_A = V @ inner @ V.mT
    if checks.host_checks_enabled(grad_A):
        fine = checks.finite_flag(inner)
        if grad_dtype != grad_A.dtype:  # where they are equal, an overflow is an Inf already
            fine = fine & _within_range(grad_A, grad_dtype)
        if not bool(fine):
            _raise_if_undefined(function, w, loewner, grad_F, grad_A, grad_dtype)
    return grad_A


def _tie_scale(w: torch.Tensor) -> torch.Tensor:
    """``δ = ∛eps · max|λ|`` (..., 1, 1): within it eigenvalues count as one point (where a
    quotient's cancellation ``eps/δ`` and the expansion's ``δ²`` balance at ``eps^(2/3)``:
    4e-11 in float64)."""
    scale = w.abs().amax(-1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)
    return (torch.finfo(w.dtype).eps ** (1 / 3) * scale)[..., None]


def contract_second_differences(
    w: torch.Tensor, function: SpectralFunction, X: torch.Tensor, Y: torch.Tensor
) -> torch.Tensor:
    """``C[a, b] = Σⱼ f[λₐ, λ_b, λⱼ] X[a, j] Y[b, j]`` (..., n, n) in matrix products only,
    without the n³ tensor: time ``O(n³)`` in GEMMs whatever the ties, extra memory ``O(n²)``.

    Pairs with ``|λₐ - λ_b| > δ``: ``f[a,b,j] = (L[a,j] - L[b,j]) / (λₐ - λ_b)``, so
    ``C = ((L ∘ X) Yᵀ - X (L ∘ Y)ᵀ) / (λₐ - λ_b)``. Pairs within ``δ`` (the diagonal; every
    pair at ``2I``): for ``|λⱼ - λₐ| > 2δ``, ``f[a,b,j] = (L[a,b] - L[b,j]) / (λₐ - λⱼ)``
    (a divisor ``> 2δ``: the quotient's cancellation stays ``eps/δ``), which gives
    ``L ∘ ((R ∘ X) Yᵀ) - (R ∘ X)(L ∘ Y)ᵀ`` with ``R[a,j] = 1/(λₐ - λⱼ)`` there; for
    ``|λⱼ - λₐ| <= 2δ`` the expansion at ``λₐ``, ``f₂(λₐ) + f₃(λₐ) ((λ_b - λₐ) + (λⱼ - λₐ))``
    with ``f₂ = f''/2`` and ``f₃ = f'''/6`` (error ``O(δ²)``), separable in ``b`` and ``j``:
    two more products.
    """
    L = function.loewner(w)
    delta = _tie_scale(w)
    gap = w[..., :, None] - w[..., None, :]  # λₐ - λ_b (also λₐ - λⱼ)
    near = gap.abs() <= delta
    zeros = torch.zeros_like(gap)
    ones = torch.ones_like(gap)
    far = ((L * X) @ Y.mT - X @ (L * Y).mT) / torch.where(near, ones, gap)
    # pairs within δ: every j, split at 2δ from λₐ
    close = gap.abs() <= 2 * delta
    RX = torch.where(close, zeros, X / torch.where(close, ones, gap))
    quotient = L * (RX @ Y.mT) - RX @ (L * Y).mT
    f1 = function.values
    f2 = _elementwise_derivative(lambda t: _elementwise_derivative(f1, t), w) / 2
    f3 = (
        _elementwise_derivative(
            lambda t: _elementwise_derivative(lambda u: _elementwise_derivative(f1, u), t), w
        )
        / 6
    )
    offset = -gap  # λ_b - λₐ, and λⱼ - λₐ
    within = close & (offset != 0)  # elsewhere 0: never Inf · 0 where f''' is infinite
    linear = torch.where(within, f3[..., :, None] * torch.where(within, offset, zeros), zeros)
    MX = torch.where(close, X, zeros)
    expansion = (f2[..., :, None] + linear) * (MX @ Y.mT) + (linear * MX) @ Y.mT
    return torch.where(near, quotient + expansion, far)


def _elementwise_derivative(
    f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor
) -> torch.Tensor:
    """``f'(x)`` of an elementwise ``f`` by forward mode (one pass); by reverse mode inside
    a forward-mode level of ``torch.autograd.forward_ad`` (a custom ``jvp``, ``gradcheck``'s
    forward check), which cannot nest another."""
    nested = torch.autograd.forward_ad._current_level >= 0
    if nested and not torch._C._are_functorch_transforms_active():
        with torch.enable_grad():
            leaf = x.detach().requires_grad_()
            (derivative,) = torch.autograd.grad(f(leaf).sum(), leaf, allow_unused=True)
        return torch.zeros_like(x) if derivative is None else derivative
    return torch.func.jvp(f, (x,), (torch.ones_like(x),))[1]


class _LoewnerSecond(Function):
    """The first-order Daleckii–Krein backward ``B(G, A) = V (L ∘ (Vᵀ G V)) Vᵀ`` as a function
    of the incoming gradient ``G`` and the matrix ``A`` (decomposed as ``(A + Aᵀ) / 2``),
    with the exact second-order backward: ``∂/∂G = V (L ∘ (Vᵀ H V)) Vᵀ`` and
    ``∂/∂A = sym(V D Vᵀ)``,
    ``D[a,b] = Σⱼ T[a,b,j] Ĥ[a,j] Ĝ[b,j] + Σᵢ T[i,a,b] Ĥ[i,b] Ĝ[i,a]`` with the second
    divided differences ``T`` (finite at ties; contracted without forming the n³ tensor,
    :func:`contract_second_differences`); forward mode (``jacfwd`` of a gradient:
    ``hessian``) ``dB = V (L ∘ dĜ + D²[dÂ, Ĝ]) Vᵀ``. Third derivatives: refused."""

    generate_vmap_rule = True

    @staticmethod
    def forward(
        G: torch.Tensor, A: torch.Tensor, w: torch.Tensor, V: torch.Tensor,
        function: SpectralFunction,
    ) -> torch.Tensor:  # fmt: skip
        return V @ (function.loewner(w) * (V.mT @ G @ V)) @ V.mT

    @staticmethod
    def setup_context(ctx, inputs, output):  # type: ignore[no-untyped-def]
        G, _, w, V, ctx.function = inputs
        ctx.save_for_backward(G, w, V)
        ctx.save_for_forward(G, w, V)

    @staticmethod
    def jvp(ctx, dG, dA, _dw, _dV, _function):  # type: ignore[no-untyped-def]
        G, w, V = ctx.saved_tensors
        function: SpectralFunction = ctx.function
        inner = torch.zeros_like(V)
        if dG is not None:
            inner = inner + function.loewner(w) * (V.mT @ dG @ V)
        if dA is not None:  # Σₖ T[i,k,j] (Ê[i,k] Ĝ[k,j] + Ĝ[i,k] Ê[k,j]), T symmetric
            E_hat, G_hat = V.mT @ symmetrized(dA) @ V, V.mT @ G @ V
            inner = inner + contract_second_differences(w, function, E_hat, G_hat.mT)
            inner = inner + contract_second_differences(w, function, G_hat, E_hat.mT)
        return V @ inner @ V.mT

    @staticmethod
    def backward(ctx, H):  # type: ignore[no-untyped-def]
        G, w, V = ctx.saved_tensors
        function: SpectralFunction = ctx.function
        G_hat = V.mT @ G @ V
        H_hat = V.mT @ H @ V
        grad_G = V @ (function.loewner(w) * H_hat) @ V.mT
        # Σⱼ T[a,b,j] Ĥ[a,j] Ĝ[b,j] + Σᵢ T[i,a,b] Ĥ[i,b] Ĝ[i,a], T symmetric
        inner = contract_second_differences(w, function, H_hat, G_hat)
        inner = inner + contract_second_differences(w, function, G_hat.mT, H_hat.mT)
        grad_A = V @ inner @ V.mT
        if checks.host_checks_enabled(grad_A) and not checks.all_finite(grad_A):
            raise NotDifferentiableError(
                f"{function.name} double backward: expected a point where f is twice "
                "differentiable at every eigenvalue (got an infinite second derivative)"
            )
        return grad_G, symmetrized(grad_A), None, None, None


class _LoewnerForward(_LoewnerReverse):
    """:class:`_LoewnerReverse` with forward mode, ``dF = V (L ∘ (Vᵀ dA V)) Vᵀ`` (and exact
    eigen-tangents for ``w``, ``V``), and generated vmap (host checks are off under vmap)."""

    generate_vmap_rule = True

    @staticmethod
    def jvp(ctx, dA, _function, _dtype):  # type: ignore[no-untyped-def]
        w, V = ctx.saved_tensors
        rotated, dw, dV = eigen_tangents(w, V, symmetrized(dA), Analytic().coefficients(w))
        dF = V @ (ctx.function.loewner(w) * rotated) @ V.mT
        return dF, dw, dV


def loewner_function(
    A: torch.Tensor, function: SpectralFunction, grad_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(F, w, V)`` with the Daleckii–Krein backward (a gradient that overflows
    ``grad_dtype`` raises); forward mode and vmap too, except while Dynamo traces."""
    cls = _LoewnerReverse if torch.compiler.is_compiling() else _LoewnerForward
    return cls.apply(A, function, grad_dtype)
