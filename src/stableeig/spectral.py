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
of the ``loewner`` path are the second-order Daleckii–Krein formula with the second divided
differences ``f[λᵢ, λₖ, λⱼ]`` (finite and exact at repeated eigenvalues; ``hessian`` and
double backward work at ``2I``).
"""

from __future__ import annotations

from typing import Callable, Optional, Union

import torch

from . import _validation as checks
from ._autograd import (
    SpectralFunction,
    compose,
    eigh_function,
    loewner_function,
    prepare_symmetric,
)
from ._docs import fill_args
from ._precision import autocast_off
from .exceptions import ArgumentError, NonFiniteError, NotPositiveDefiniteError
from .power_iteration import power_iteration_unchecked
from .rules import EigenvectorRule, PowerIteration, Rule, resolve

__all__ = [
    "INV_SQRT",
    "SQRT",
    "SpectralFunction",
    "apply_spectral",
    "check_values_finite",
    "energy_projector_function",
    "inv_sqrtm",
    "ridged_inv_sqrt",
    "spectral_unchecked",
    "sqrtm",
    "top_k_function",
    "top_k_projector",
]

SPECTRAL_KINDS = ("spectral", "eigenvector")


def _inv_sqrt_loewner(w: torch.Tensor) -> torch.Tensor:
    s = w.sqrt()
    s_i, s_j = s.unsqueeze(-1), s.unsqueeze(-2)
    return -1.0 / (s_i * s_j * (s_i + s_j))


def _sqrt_loewner(w: torch.Tensor) -> torch.Tensor:
    s = w.clamp_min(0).sqrt()
    return 1.0 / (s.unsqueeze(-1) + s.unsqueeze(-2))


def _inv_sqrt_undefined(w: torch.Tensor) -> str:
    if bool((w <= 0).any()):
        return f"an eigenvalue is not positive (smallest {float(w.amin()):.3g})"
    return (
        f"the gradient overflows {w.dtype} at eigenvalues as small as {float(w.amin()):.3g}; "
        "rescale A or add eps·I"
    )


INV_SQRT = SpectralFunction("inv_sqrtm", torch.rsqrt, _inv_sqrt_loewner, _inv_sqrt_undefined)


def ridged_inv_sqrt(eps: float) -> SpectralFunction:
    """``(A)^{-1/2}`` for ``A = Σ + eps·I`` with ``Σ`` positive semidefinite: every true
    eigenvalue is ``>= eps``, so computed ones below it (float32 round-off, ~``n·ulp·λ_max``)
    are read as ``eps`` — in the values and in the Loewner matrix alike. Without this a
    float32 decomposition with a small ``eps`` returns eigenvalues ``<= 0`` and NaN."""

    def floored(w: torch.Tensor) -> torch.Tensor:
        return w.clamp_min(eps)

    return SpectralFunction(
        "inverse square root of a ridged covariance",
        lambda w: floored(w).rsqrt(),
        lambda w: _inv_sqrt_loewner(floored(w)),
        _inv_sqrt_undefined,
    )


SQRT = SpectralFunction(  # round-off negative eigenvalues count as 0
    "sqrtm",
    lambda w: w.clamp_min(0).sqrt(),
    _sqrt_loewner,
    lambda w: "the derivative of √λ is infinite at an eigenvalue equal to 0; add eps·I to A",
)


def _resolution(w: torch.Tensor) -> torch.Tensor:
    """``n · eps · max|λ|`` per matrix, (..., 1): eigenvalue differences below it are noise."""
    n = max(w.shape[-1], 1)
    return n * torch.finfo(w.dtype).eps * w.abs().amax(-1, keepdim=True)


def _projector_function(
    name: str, indicator: Callable[[torch.Tensor], torch.Tensor], undefined_gradient: str
) -> SpectralFunction:
    """A projector onto the eigenvectors selected by ``indicator`` (0/1 per eigenvalue)."""

    def loewner(w: torch.Tensor) -> torch.Tensor:
        kept = indicator(w)
        crossing = kept.unsqueeze(-1) - kept.unsqueeze(-2)  # ±1 for kept × dropped pairs
        gaps = w.unsqueeze(-1) - w.unsqueeze(-2)
        # A gap within round-off of the decomposition (n · eps · max|λ|) is a tie: its
        # derivative is undefined, whatever tiny nonzero value the eigensolver returned.
        resolution = _resolution(w).unsqueeze(-1)
        gaps = torch.where(gaps.abs() <= resolution, torch.zeros_like(gaps), gaps)
        # 1 where the pair does not cross the cut: keeps 0/0 out of double backward
        return crossing / torch.where(crossing != 0, gaps, torch.ones_like(gaps))

    return SpectralFunction(name, indicator, loewner, lambda w: undefined_gradient)


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


def decompose_by_rule(
    symmetric: torch.Tensor, rule: Rule, stop_below: Optional[float] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(w, V)`` of a validated symmetric working-precision batch, differentiated by ``rule``:
    an eigenvector rule (exact ``eigh`` forward, the rule's backward) or the decomposition
    rule ``pi`` (power iteration and deflation forward; ``stop_below`` ends its extraction
    once every matrix's Rayleigh quotient fell below it). The one dispatcher of the rule kinds
    that produce eigenpairs; a spectral rule (``loewner``) has no eigenvector gradient."""
    if isinstance(rule, PowerIteration):
        n = symmetric.shape[-1]
        return power_iteration_unchecked(
            symmetric, n, rule.num_iters, backward=rule.backward, stop_below=stop_below
        )
    if isinstance(rule, EigenvectorRule):
        return eigh_function(symmetric, rule)
    raise ArgumentError(
        f"{rule.name}: expected a rule that differentiates eigenvectors (an eigenvector rule "
        f"or pi) (got a rule of kind {rule.kind!r})"
    )


def spectral_unchecked(
    symmetric: torch.Tensor,
    function: SpectralFunction,
    rule: Rule,
    grad_dtype: Optional[torch.dtype] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(F, w)`` for an already validated symmetric working-precision batch, no host sync.

    ``rule`` is :class:`~stableeig.rules.Loewner` (the exact spectral gradient) or an
    eigenvector rule, which differentiates ``V f(Λ) Vᵀ`` through the eigenvectors. For the
    layers, which validate their own inputs once. ``grad_dtype``: the dtype the gradient
    is returned in (a ``loewner`` gradient that overflows it raises); default: the input's.
    """
    with autocast_off(symmetric.device):
        if rule.kind != "spectral":  # eigenvector and decomposition rules
            w, V = decompose_by_rule(symmetric, rule)
            return compose(V, function.values(w)), w
        F, w, V = loewner_function(symmetric, function, grad_dtype or symmetric.dtype)
        if function.user_defined:  # parameters held by f: their gradient V (∂f/∂θ)(Λ) Vᵀ
            values = function.values(w.detach())
            if values.requires_grad:
                F = F + compose(V.detach(), values - values.detach())
        return F, w


EigenvalueCheck = Callable[[torch.Tensor, str, torch.dtype], None]
"""A check of decomposed eigenvalues: ``check(w, name, dtype)`` raises naming the user's
argument ``name``, judging round-off at the precision of ``dtype`` (the dtype the user
passed, whatever the working precision)."""


def apply_spectral(
    A: torch.Tensor,
    function: SpectralFunction,
    backward: Union[str, Rule] = "loewner",
    compute_dtype: Optional[torch.dtype] = None,
    check_symmetric: bool = True,
    eigenvalue_check: Optional[EigenvalueCheck] = None,
    *,
    name: str = "A",
    where: Optional[str] = None,
    judged_dtype: Optional[torch.dtype] = None,
    result_dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    """``F(A) = V f(Λ) Vᵀ`` (..., n, n) for a :class:`SpectralFunction` (its values and its
    Loewner matrix), validated like the built-ins: what :func:`stableeig.funm` and every
    built-in spectral function run.

    Args:
        A: real symmetric matrices, (..., n, n).
        function: ``f`` and its Loewner matrix.
        backward: ``"loewner"`` (the function's Loewner matrix) or an eigenvector rule.
        compute_dtype: least working precision. Default: None (float64).
        check_symmetric: raise if ``A`` is not symmetric within ``sqrt(eps)``.
        eigenvalue_check: called with the eigenvalues (e.g. to require positivity).
        name: ``A``'s name in error messages. Default: ``"A"``.
        where: the public function in error messages. Default: ``function.name``.
        judged_dtype: the precision whose round-off the eigenvalue check allows (for a
            matrix the caller already cast from the user's dtype). Default: ``A``'s dtype.
        result_dtype: the dtype of the result and of ``A``'s gradient. Default: ``A``'s.
    """
    rule = resolve(backward, kinds=SPECTRAL_KINDS)
    label = f"{where or function.name}: {name}"
    # SPECTRAL_KINDS: the Functions of loewner and the eigenvector rules, which symmetrize
    # what they receive
    work = prepare_symmetric(label, A, compute_dtype, check_symmetric, symmetrize=False)
    result_dtype = result_dtype or A.dtype
    F, w = spectral_unchecked(work, function, rule, result_dtype)
    F = F.to(result_dtype)
    judged = judged_dtype or A.dtype
    condition = getattr(eigenvalue_check, "condition", None)
    if (
        checks.host_checks_enabled(F)
        and not checks.in_graph()
        and (eigenvalue_check is None or condition is not None)
    ):
        # the three checks below in one host synchronization when they all pass
        ok = checks.finite_flag(w) & checks.finite_flag(F.detach())
        if condition is not None:
            ok = ok & condition(w.detach(), judged)
        if bool(ok):
            return F
    checks.check_eigenvalues_finite(label, w)
    if eigenvalue_check is not None:
        eigenvalue_check(w, label, judged)
    check_values_finite(where or function.name, F, w)
    return F


def check_values_finite(function: str, F: torch.Tensor, w: Optional[torch.Tensor]) -> None:
    """Raise :class:`~stableeig.NonFiniteError` where ``f(λ)`` overflowed the working
    precision or the result's dtype (``expm`` of a large eigenvalue), instead of returning
    Inf and NaN entries; the message names the largest ``|λ|`` of ``w`` where given."""
    if checks.in_graph():
        message = f"{function}: expected f(eigenvalues) within the range of {F.dtype}"
        checks.assert_in_graph(torch.isfinite(F).all(), message)
        return
    if F.numel() == 0 or not checks.host_checks_enabled(F) or checks.all_finite(F):
        return
    where = "" if w is None else f" at an eigenvalue of magnitude up to {float(w.abs().amax()):.4g}"
    raise NonFiniteError(
        f"{function}: expected f(eigenvalues) within the range of {F.dtype} (got Inf/NaN: "
        f"f overflowed{where}); rescale A or use compute_dtype=torch.float64"
    )


def require_positive(hint: str = "") -> EigenvalueCheck:
    """A check of decomposed eigenvalues: all > 0, else :class:`NotPositiveDefiniteError`
    naming the argument (``hint`` is appended to the message)."""

    def check(w: torch.Tensor, name: str, dtype: torch.dtype) -> None:
        if checks.in_graph():
            message = f"{name}: expected a positive definite matrix, all eigenvalues > 0{hint}"
            checks.assert_in_graph((w > 0).all(), message)
            return
        if w.numel() and checks.host_checks_enabled(w) and not bool((w > 0).all()):
            raise NotPositiveDefiniteError(
                f"{name}: expected a positive definite matrix, all eigenvalues > 0 "
                f"(got smallest eigenvalue {float(w.detach().amin()):.3g}){hint}"
            )

    check.condition = lambda w, dtype: (w > 0).all()  # type: ignore[attr-defined]
    return check


def semidefinite_tolerance(w: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``sqrt(eps(dtype)) · max|λ|`` per matrix, (..., 1): eigenvalues of a positive
    semidefinite matrix given in ``dtype`` (a float32 covariance of fewer samples than
    dimensions) can come out this far below 0 by that dtype's round-off (the symmetry
    check's tolerance, so one precision judges both)."""
    return checks.symmetry_tolerance(dtype) * w.detach().abs().amax(-1, keepdim=True)


def require_semidefinite() -> EigenvalueCheck:
    """A check of decomposed eigenvalues: all ``>= -sqrt(eps) · max|λ|`` per matrix, ``eps``
    of the user's dtype (round-off below 0, read as 0 by the functions), else
    :class:`NotPositiveDefiniteError` naming the argument."""

    def condition(w: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return (w >= -semidefinite_tolerance(w, dtype)).all()

    def check(w: torch.Tensor, name: str, dtype: torch.dtype) -> None:
        if checks.in_graph():
            message = f"{name}: expected a positive semidefinite matrix"
            checks.assert_in_graph((w >= -semidefinite_tolerance(w, dtype)).all(), message)
            return
        if w.numel() == 0 or not checks.host_checks_enabled(w):
            return
        tolerance = semidefinite_tolerance(w, dtype)
        below = w.detach() < -tolerance
        if bool(below.any()):
            ratio = float((w.detach() / tolerance.clamp_min(torch.finfo(w.dtype).tiny)).amin())
            hint = ""
            loose = semidefinite_tolerance(w, torch.float32)
            if dtype == torch.float64 and bool((w.detach() >= -loose).all()):
                hint = (
                    "; that is float32 round-off: for a float32 matrix cast to float64, "
                    "keep it float32 (judged at its own round-off) or clamp its eigenvalues "
                    "(stableeig.clamp_eigenvalues)"
                )
            raise NotPositiveDefiniteError(
                f"{name}: expected a positive semidefinite matrix, eigenvalues >= "
                f"-sqrt(eps({dtype})) * max|λ| (got smallest eigenvalue "
                f"{float(w.detach().amin()):.3g}, {-ratio:.3g} times that tolerance){hint}"
            )

    check.condition = condition  # type: ignore[attr-defined]
    return check


_require_positive = require_positive("; add eps·I to A")
_require_semidefinite = require_semidefinite()


def _no_requirement(w: torch.Tensor, name: str, dtype: torch.dtype) -> None:
    return None


_no_requirement.condition = lambda w, dtype: torch.ones((), dtype=torch.bool)  # type: ignore[attr-defined]


_DOC_ARGS = """
    Args:
        A: real symmetric matrices, shape (..., n, n), any floating dtype.
        backward: ``"loewner"`` (exact, stable; default) or an eigenvector rule of
            :func:`stableeig.eigh`, by name (``"analytic"``, ``"power"``, ``"taylor"``,
            ``"clip"``) or as a :mod:`stableeig.rules` object.
        compute_dtype: least working precision. Default: ``None`` (float64).
        check_symmetric: raise if ``A`` is not symmetric within ``sqrt(eps)``. Default: True.
"""


def inv_sqrtm(
    A: torch.Tensor,
    backward: Union[str, Rule] = "loewner",
    *,
    compute_dtype: Optional[torch.dtype] = None,
    check_symmetric: bool = True,
) -> torch.Tensor:
    """Inverse square root ``A^{-1/2}`` of symmetric positive definite matrices.
    {args}
    Returns:
        ``A^{-1/2}``, shape (..., n, n), in ``A``'s dtype.

    Raises:
        NotPositiveDefiniteError: an eigenvalue of ``A`` is <= 0.

    Examples:
        >>> import torch, stableeig as se
        >>> A = torch.eye(4, requires_grad=True)       # all eigenvalues equal
        >>> se.inv_sqrtm(A).sum().backward()
        >>> bool(torch.isfinite(A.grad).all())
        True
    """
    return apply_spectral(
        A,
        INV_SQRT,
        backward,
        compute_dtype,
        check_symmetric,
        _require_positive,
    )


def sqrtm(
    A: torch.Tensor,
    backward: Union[str, Rule] = "loewner",
    *,
    compute_dtype: Optional[torch.dtype] = None,
    check_symmetric: bool = True,
) -> torch.Tensor:
    """Principal square root ``A^{1/2}`` of symmetric positive semidefinite matrices.

    Eigenvalues within round-off below 0 (``>= -sqrt(eps) · max|λ|``, ``eps`` of ``A``'s own
    dtype: a float32 covariance of fewer samples than dimensions passes) are treated as 0.
    {args}
    Returns:
        ``A^{1/2}``, shape (..., n, n), in ``A``'s dtype.

    Raises:
        NotPositiveDefiniteError: an eigenvalue is clearly negative.
        NotDifferentiableError: (in backward, ``loewner``) the derivative is infinite
            because eigenvalues are 0.

    Examples:
        >>> import torch, stableeig as se
        >>> S = se.sqrtm(4 * torch.eye(2))
        >>> S.diagonal().tolist()
        [2.0, 2.0]
    """
    return apply_spectral(
        A,
        SQRT,
        backward,
        compute_dtype,
        check_symmetric,
        _require_semidefinite,
    )


def top_k_projector(
    A: torch.Tensor,
    k: int,
    backward: Union[str, Rule] = "loewner",
    *,
    compute_dtype: Optional[torch.dtype] = None,
    check_symmetric: bool = True,
    undefined: str = "raise",
) -> torch.Tensor:
    """Orthogonal projector ``V_k V_kᵀ`` onto the eigenvectors of the ``k`` largest eigenvalues.
    {args}
        k: number of kept eigenvectors, ``1 <= k <= n``.
        undefined: where the gap at the cut is 0 within round-off (``n · eps · max|λ|``, no
            derivative): ``"raise"`` in the backward, or ``"zero"``: a zero gradient for
            those matrices only, every other matrix of the batch exact. Default: ``"raise"``.

    Returns:
        The projector, shape (..., n, n), in ``A``'s dtype.

    Raises:
        NotDifferentiableError: (in backward, ``loewner``, ``undefined="raise"``) the gap at
            the cut is exactly 0.

    Examples:
        >>> import torch, stableeig as se
        >>> P = se.top_k_projector(torch.diag(torch.tensor([1.0, 3.0, 2.0])), k=2)
        >>> P.diagonal().tolist()
        [0.0, 1.0, 1.0]
    """
    checks.check_square_matrix("A", A)
    n = A.shape[-1]
    checks.check_k("k", k, n)
    checks.check_choice("undefined", undefined, ("raise", "zero"))
    function = top_k_function(k)
    options = (backward, compute_dtype, check_symmetric, _no_requirement)
    if undefined == "raise" or k == n or not (A.requires_grad and torch.is_grad_enabled()):
        return apply_spectral(A, function, *options)
    # LAPACK never sees NaN (it can hang or crash): the checks apply_spectral makes, first
    checks.check_finite_symmetric("top_k_projector: A", A, check_symmetric)
    with torch.no_grad():  # which matrices have a gap at the cut (one eigvalsh, no graph)
        w = torch.linalg.eigvalsh(A.detach().to(torch.float64))
        gap = w[..., n - k] - w[..., n - k - 1]
        defined = gap > n * torch.finfo(A.dtype).eps * w.abs().amax(-1)
    # differentiate a safe stand-in (distinct eigenvalues) where the cut has no gap
    stand_in = torch.diag(torch.arange(1, n + 1, dtype=A.dtype, device=A.device))
    mask = defined[..., None, None]
    differentiable = apply_spectral(torch.where(mask, A, stand_in), function, *options)
    readable = checks.host_checks_enabled(defined)
    if readable and not checks.in_graph() and bool(defined.all()):
        return differentiable  # the common case: no stand-in to replace, no third eigh
    constant = apply_spectral(A.detach(), function, *options)
    return torch.where(mask, differentiable, constant)


fill_args(_DOC_ARGS, inv_sqrtm, sqrtm, top_k_projector)
