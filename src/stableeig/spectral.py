"""Spectral matrix functions ``F(A) = V f(Λ) Vᵀ`` with an exact, stable gradient.

With ``backward="loewner"`` (the default) the gradient is the Daleckii–Krein formula

    ∂L/∂A = sym( V ( (Vᵀ ∂L/∂F V) ∘ L ) Vᵀ ),
    L[i, j] = (f(λᵢ) - f(λⱼ)) / (λᵢ - λⱼ),   L[i, i] = f'(λᵢ),

evaluated in closed forms that stay exact and finite when eigenvalues are equal:

* ``inv_sqrtm``: ``L[i, j] = -1 / (sᵢ sⱼ (sᵢ + sⱼ))`` with ``s = √λ``; needs ``λ > 0``.
* ``sqrtm``: ``L[i, j] = 1 / (sᵢ + sⱼ)``; finite unless two eigenvalues are both 0, where
  the derivative of ``√`` is infinite: the backward then raises.
* ``top_k_projector``: ``L[i, j] = 1 / (λᵢ - λⱼ)`` for one kept and one dropped eigenvalue,
  0 otherwise; only the gap at the cut matters. If ``λ_{n-k} == λ_{n-k+1}`` exactly the
  projector is not a function of ``A`` (it depends on an arbitrary basis of the tied
  eigenspace) and its derivative is infinite: the backward raises rather than return NaN.

Only ``loewner`` is invariant to the choice of basis inside a tied eigenspace: a bounded
eigenvector rule has to drop the ``f'(λ)·Ĝᵢⱼ`` terms of a tied block, so its gradient there
depends on which orthonormal basis the eigensolver returned. All rules are invariant to
eigenvector signs.

Any other rule name (``"analytic"``, ``"power"``, ``"taylor"``, ``"clip"``) differentiates
``V f(Λ) Vᵀ`` through :func:`stableeig.eigh` with that eigenvector rule. Second derivatives
of the ``loewner`` path use the exact (``analytic``) eigenvector rule, so they are unstable
at repeated eigenvalues.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from . import _validation as checks
from ._docs import fill_args
from .eigh import _Eigh, analytic_coefficients, coefficient_rule, prepare_symmetric

__all__ = [
    "INV_SQRT",
    "SPECTRAL_BACKWARDS",
    "SpectralFunction",
    "energy_projector_function",
    "inv_sqrtm",
    "spectral_unchecked",
    "sqrtm",
    "top_k_function",
    "top_k_projector",
]

SPECTRAL_BACKWARDS = ("loewner", "analytic", "power", "taylor", "clip")


@dataclass(frozen=True)
class SpectralFunction:
    """A scalar function of eigenvalues and its Loewner matrix, both ``(..., n) -> ...``."""

    name: str
    values: Callable[[torch.Tensor], torch.Tensor]  # (..., n) -> (..., n)
    loewner: Callable[[torch.Tensor], torch.Tensor]  # (..., n) -> (..., n, n)
    undefined_gradient: str  # why L can be infinite, for the error message


def _inv_sqrt_loewner(w: torch.Tensor) -> torch.Tensor:
    s = w.sqrt()
    s_i, s_j = s.unsqueeze(-1), s.unsqueeze(-2)
    return -1.0 / (s_i * s_j * (s_i + s_j))


def _sqrt_loewner(w: torch.Tensor) -> torch.Tensor:
    s = w.clamp_min(0).sqrt()
    return 1.0 / (s.unsqueeze(-1) + s.unsqueeze(-2))


INV_SQRT = SpectralFunction(
    "inv_sqrtm", torch.rsqrt, _inv_sqrt_loewner, "an eigenvalue is not positive"
)
SQRT = SpectralFunction(  # round-off negative eigenvalues count as 0
    "sqrtm",
    lambda w: w.clamp_min(0).sqrt(),
    _sqrt_loewner,
    "the derivative of √λ is infinite at an eigenvalue equal to 0; add eps·I to A",
)


def _projector_function(
    name: str, indicator: Callable[[torch.Tensor], torch.Tensor], undefined_gradient: str
) -> SpectralFunction:
    """A projector onto the eigenvectors selected by ``indicator`` (0/1 per eigenvalue)."""

    def loewner(w: torch.Tensor) -> torch.Tensor:
        kept = indicator(w)
        crossing = kept.unsqueeze(-1) - kept.unsqueeze(-2)  # ±1 for kept × dropped pairs
        gaps = w.unsqueeze(-1) - w.unsqueeze(-2)
        # 1 where the pair does not cross the cut: keeps 0/0 out of double backward
        return crossing / torch.where(crossing != 0, gaps, torch.ones_like(gaps))

    return SpectralFunction(name, indicator, loewner, undefined_gradient)


def top_k_function(k: int) -> SpectralFunction:
    """The projector onto the ``k`` largest eigenvalues (ascending order: the last ``k``)."""

    def indicator(w: torch.Tensor) -> torch.Tensor:
        kept = torch.zeros_like(w)
        kept[..., w.shape[-1] - k :] = 1
        return kept

    return _projector_function(
        "top_k_projector",
        indicator,
        f"eigenvalues {k} and {k + 1} from the top are equal (zero gap at the cut), so the "
        "projector is not differentiable; choose k at a gap or use backward='clip'",
    )


def energy_projector_function(energy: float) -> SpectralFunction:
    """The projector onto the fewest largest eigenvalues holding ``energy`` of the trace.

    For positive semidefinite matrices; computed per matrix from its eigenvalues with masks,
    so a batch may keep a different number of eigenvectors per matrix without a host sync.
    """

    def indicator(w: torch.Tensor) -> torch.Tensor:
        descending = w.flip(-1).clamp_min(0)
        share = descending / descending.sum(-1, keepdim=True)
        before = share.cumsum(-1) - share  # energy of the larger eigenvalues
        return (before < energy).to(w.dtype).flip(-1)

    return _projector_function(
        "energy projector",
        indicator,
        "the eigenvalues on both sides of the energy cut are equal (zero gap), so the "
        "projector is not differentiable there",
    )


def _compose(V: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``V diag(values) Vᵀ``: (..., n, n)."""
    return (V * values.unsqueeze(-2)) @ V.mT


class _Loewner(torch.autograd.Function):
    """``F = V f(Λ) Vᵀ`` with the Daleckii–Krein backward; also returns ``(w, V)``."""

    @staticmethod
    def forward(
        A: torch.Tensor, function: SpectralFunction
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        w, V = torch.linalg.eigh(A)
        return _compose(V, function.values(w)), w, V

    @staticmethod
    def setup_context(ctx, inputs, output):  # type: ignore[no-untyped-def]
        ctx.function = inputs[1]
        ctx.set_materialize_grads(False)  # unused outputs: None, not zeros (0 · Inf)
        ctx.save_for_backward(output[1], output[2])

    @staticmethod
    def backward(ctx, grad_F, grad_w, grad_V):  # type: ignore[no-untyped-def]
        w, V = ctx.saved_tensors
        function: SpectralFunction = ctx.function
        inner = torch.zeros_like(V)
        if grad_F is not None:
            loewner = function.loewner(w)
            if not bool(torch.isfinite(loewner).all()):
                raise checks.NotDifferentiableError(
                    f"{function.name} backward: expected a differentiable point (got: "
                    f"{function.undefined_gradient})"
                )
            inner = loewner * (V.mT @ grad_F @ V)
        if grad_V is not None:  # only in double backward: exact eigenvector rule
            inner = inner + analytic_coefficients(w) * (V.mT @ grad_V)
        if grad_w is not None:
            inner = inner + torch.diag_embed(grad_w)
        return V @ inner @ V.mT, None


def spectral_unchecked(
    symmetric: torch.Tensor,
    function: SpectralFunction,
    coefficients: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(F, w)`` for an already validated symmetric working-precision batch, no host sync.

    ``coefficients=None`` selects the Loewner backward, otherwise the eigenvector rule
    (a function ``w -> C`` from :func:`stableeig.eigh.coefficient_rule`). For layers, which
    validate their own inputs once.
    """
    with torch.autocast(symmetric.device.type, enabled=False):
        if coefficients is None:
            F, w, _ = _Loewner.apply(symmetric, function)
            return F, w
        w, V = _Eigh.apply(symmetric, coefficients)
        return _compose(V, function.values(w)), w


def _spectral(
    A: torch.Tensor,
    function: SpectralFunction,
    backward: str,
    num_iters: int,
    order: int,
    min_gap: float,
    compute_dtype: Optional[torch.dtype],
    check_symmetric: bool,
    eigenvalue_check: Callable[[torch.Tensor], None],
) -> torch.Tensor:
    checks.check_choice("backward", backward, SPECTRAL_BACKWARDS)
    rule = None
    if backward != "loewner":
        rule = coefficient_rule(backward, num_iters=num_iters, order=order, min_gap=min_gap)
    symmetric = prepare_symmetric("A", A, compute_dtype, check_symmetric)
    F, w = spectral_unchecked(symmetric, function, rule)
    eigenvalue_check(w)
    return F.to(A.dtype)


def _require_positive(w: torch.Tensor) -> None:
    if w.numel() and not bool((w > 0).all()):
        raise checks.NotPositiveDefiniteError(
            "inv_sqrtm: expected a positive definite matrix, all eigenvalues > 0 "
            f"(got smallest eigenvalue {float(w.amin()):.3g}); add eps·I to A"
        )


def _require_semidefinite(w: torch.Tensor) -> None:
    if w.numel() == 0:
        return
    tolerance = checks.symmetry_tolerance(w.dtype) * w.abs().amax()
    if not bool((w >= -tolerance).all()):
        raise checks.NotPositiveDefiniteError(
            "sqrtm: expected a positive semidefinite matrix, eigenvalues >= "
            f"-{float(tolerance):.3g} (got smallest eigenvalue {float(w.amin()):.3g})"
        )


def _no_requirement(w: torch.Tensor) -> None:
    return None


_DOC_ARGS = """
    Args:
        A: real symmetric matrices, shape (..., n, n), any floating dtype.
        backward: ``"loewner"`` (exact, stable; default) or an eigenvector rule of
            :func:`stableeig.eigh`: ``"analytic"``, ``"power"``, ``"taylor"``, ``"clip"``.
        num_iters, order, min_gap: knobs of the ``power``/``taylor``/``clip`` rules.
        compute_dtype: least working precision. Default: ``None`` (float64).
        check_symmetric: raise if ``A`` is not symmetric within ``sqrt(eps)``. Default: True.
"""


def inv_sqrtm(
    A: torch.Tensor,
    backward: str = "loewner",
    *,
    num_iters: int = 19,
    order: int = 9,
    min_gap: float = 1e-2,
    compute_dtype: Optional[torch.dtype] = None,
    check_symmetric: bool = True,
) -> torch.Tensor:
    """Inverse square root ``A^{-1/2}`` of symmetric positive definite matrices.
    {args}
    Returns:
        ``A^{-1/2}``, shape (..., n, n), in ``A``'s dtype.

    Raises:
        NotPositiveDefiniteError: an eigenvalue of ``A`` is <= 0.

    Example:
        >>> import torch, stableeig as se
        >>> A = torch.eye(4, requires_grad=True)       # all eigenvalues equal
        >>> se.inv_sqrtm(A).sum().backward()
        >>> bool(torch.isfinite(A.grad).all())
        True
    """
    return _spectral(
        A,
        INV_SQRT,
        backward,
        num_iters,
        order,
        min_gap,
        compute_dtype,
        check_symmetric,
        _require_positive,
    )


def sqrtm(
    A: torch.Tensor,
    backward: str = "loewner",
    *,
    num_iters: int = 19,
    order: int = 9,
    min_gap: float = 1e-2,
    compute_dtype: Optional[torch.dtype] = None,
    check_symmetric: bool = True,
) -> torch.Tensor:
    """Principal square root ``A^{1/2}`` of symmetric positive semidefinite matrices.

    Eigenvalues within round-off below 0 (``>= -sqrt(eps) · max|λ|``) are treated as 0.
    {args}
    Returns:
        ``A^{1/2}``, shape (..., n, n), in ``A``'s dtype.

    Raises:
        NotPositiveDefiniteError: an eigenvalue is clearly negative.
        NotDifferentiableError: (in backward, ``loewner``) the derivative is infinite
            because eigenvalues are 0.

    Example:
        >>> import torch, stableeig as se
        >>> S = se.sqrtm(4 * torch.eye(2))
        >>> S.diagonal().tolist()
        [2.0, 2.0]
    """
    return _spectral(
        A,
        SQRT,
        backward,
        num_iters,
        order,
        min_gap,
        compute_dtype,
        check_symmetric,
        _require_semidefinite,
    )


def top_k_projector(
    A: torch.Tensor,
    k: int,
    backward: str = "loewner",
    *,
    num_iters: int = 19,
    order: int = 9,
    min_gap: float = 1e-2,
    compute_dtype: Optional[torch.dtype] = None,
    check_symmetric: bool = True,
) -> torch.Tensor:
    """Orthogonal projector ``V_k V_kᵀ`` onto the eigenvectors of the ``k`` largest eigenvalues.
    {args}
        k: number of kept eigenvectors, ``1 <= k <= n``.

    Returns:
        The projector, shape (..., n, n), in ``A``'s dtype.

    Raises:
        NotDifferentiableError: (in backward, ``loewner``) the gap at the cut is exactly 0.

    Example:
        >>> import torch, stableeig as se
        >>> P = se.top_k_projector(torch.diag(torch.tensor([1.0, 3.0, 2.0])), k=2)
        >>> P.diagonal().tolist()
        [0.0, 1.0, 1.0]
    """
    checks.check_square_matrix("A", A)
    checks.check_k("k", k, A.shape[-1])
    return _spectral(
        A,
        top_k_function(k),
        backward,
        num_iters,
        order,
        min_gap,
        compute_dtype,
        check_symmetric,
        _no_requirement,
    )


fill_args(_DOC_ARGS, inv_sqrtm, sqrtm, top_k_projector)
