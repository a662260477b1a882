"""Spectral matrix functions ``F(A) = V f(Λ) Vᵀ`` beyond the square roots: a user's ``f``
(:func:`funm`) and built-ins with cancellation-free divided differences (:func:`logm`,
:func:`expm`, :func:`powm`, :func:`softplusm`, :func:`clamp_eigenvalues`).

The ``loewner`` gradient is ``V ((Vᵀ Ḡ V) ∘ L) Vᵀ`` with the divided differences
``L[i, j] = (f(λᵢ) - f(λⱼ)) / (λᵢ - λⱼ)``, ``L[i, i] = f'(λᵢ)``. The plain quotient loses
``eps · |f| / |λᵢ - λⱼ|`` to cancellation, i.e. everything at near ties. The built-ins use
closed forms without a difference of close numbers (``log1p``, ``expm1``); :func:`funm`
uses the quotient where the gap is large and ``f'`` at the midpoint (error
``|f'''| δ² / 24``) where ``|δ| <= ∛eps · max|λ|`` per matrix, the point where both errors
are equal: about 6e-6 relative in float64 at worst instead of 1 (tested against mpmath).
Tie decisions are per matrix and need no host synchronization.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional, Union

import torch

from ._autograd import SpectralFunction, _elementwise_derivative
from .exceptions import ArgumentError
from .rules import Rule
from .spectral import apply_spectral, require_positive, require_semidefinite

__all__ = [
    "LOG",
    "clamp_eigenvalues",
    "divided_differences",
    "expm",
    "funm",
    "logm",
    "powm",
    "softplusm",
]

Elementwise = Callable[[torch.Tensor], torch.Tensor]


def _pairs(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(λᵢ, λⱼ)`` broadcast to (..., n, n)."""
    return w.unsqueeze(-1).expand(*w.shape, w.shape[-1]), w.unsqueeze(-2).expand(
        *w.shape, w.shape[-1]
    )


def _derivative(f: Elementwise, df: Optional[Elementwise]) -> Elementwise:
    if df is not None:
        return df

    return functools.partial(_elementwise_derivative, f)


def divided_differences(
    w: torch.Tensor, f: Elementwise, df: Optional[Elementwise] = None
) -> torch.Tensor:
    """The Loewner matrix of an elementwise ``f`` at ascending eigenvalues ``w`` (..., n):
    (..., n, n); the quotient beyond ``∛eps · max|λ|`` per matrix, ``f'`` at the midpoint
    within it (``df``: the derivative, else by forward-mode autograd)."""
    derivative = _derivative(f, df)
    a, b = _pairs(w)
    gap = a - b
    scale = w.abs().amax(-1, keepdim=True).unsqueeze(-1)
    near = gap.abs() <= torch.finfo(w.dtype).eps ** (1 / 3) * scale
    fa, fb = _pairs(f(w))
    quotient = (fa - fb) / torch.where(near, torch.ones_like(gap), gap)
    midpoint = derivative((a + b) / 2)
    return torch.where(near, midpoint, quotient)


def _function(name: str, values: Elementwise, loewner: Elementwise, why: str) -> SpectralFunction:
    return SpectralFunction(name, values, loewner, lambda w: why)


def _ordered(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(low, gap)`` of each pair: ``low = min(λᵢ, λⱼ)``, ``gap = |λᵢ - λⱼ| >= 0``."""
    a, b = _pairs(w)
    return torch.minimum(a, b), (a - b).abs()


def _ratio(
    numerator: torch.Tensor, gap: torch.Tensor, at_zero: Union[torch.Tensor, float]
) -> torch.Tensor:
    """``numerator / gap``, and ``at_zero`` (broadcast: a number, or (..., n, 1) per row
    ``i``, where a zero gap means ``λⱼ = λᵢ``) where the gap is exactly 0."""
    zero = gap == 0
    return torch.where(zero, at_zero, numerator / torch.where(zero, 1.0, gap))


def _log_loewner(w: torch.Tensor) -> torch.Tensor:
    low, gap = _ordered(w)  # log(high) - log(low) = log1p(gap / low)
    return _ratio(torch.log1p(gap / low), gap, w.reciprocal().unsqueeze(-1))


def _exp_loewner(w: torch.Tensor) -> torch.Tensor:
    # exp(high) - exp(low) = exp(low) expm1(gap), and exp(low) = min(exp λᵢ, exp λⱼ): n
    # exponentials, not n²
    a, b = _pairs(torch.exp(w))
    gap = (w.unsqueeze(-1) - w.unsqueeze(-2)).abs()
    return torch.minimum(a, b) * _ratio(torch.expm1(gap), gap, 1.0)


def _pow_loewner(p: float) -> Elementwise:
    def loewner(w: torch.Tensor) -> torch.Tensor:
        low, gap = _ordered(w)  # high^p - low^p = low^p expm1(p log1p(gap / low))
        positive = low > 0
        safe = torch.where(positive, low, 1.0)
        relative = gap / safe
        inside = safe.pow(p - 1) * _ratio(torch.expm1(p * torch.log1p(relative)), relative, p)
        high = low + gap  # low == 0: the quotient is high^(p - 1); 0^(p-1) at a double zero
        at_zero = high.pow(p - 1) * torch.where(gap == 0, torch.full_like(gap, p), 1.0)
        return torch.where(positive, inside, at_zero)

    return loewner


LOG = _function("logm", torch.log, _log_loewner, "an eigenvalue is not positive")


def _softplus(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.softplus(x)


def _softplus_loewner(w: torch.Tensor) -> torch.Tensor:
    # softplus(high) - softplus(low) = log1p(expm1(gap) · σ(low)) with σ = sigmoid: no
    # difference of close numbers, and no overflow (expm1(gap) σ(low) <= e^high / (1+e^low))
    # beyond a unit gap the plain quotient has no cancellation to speak of (and expm1 would
    # overflow for gaps beyond ~700)
    low, gap = _ordered(w)
    small = gap <= 1
    difference = torch.log1p(torch.expm1(torch.where(small, gap, 0)) * torch.sigmoid(low))
    plain = _softplus(low + gap) - _softplus(low)
    return _ratio(torch.where(small, difference, plain), gap, torch.sigmoid(w).unsqueeze(-1))


def _clamp_loewner(low: Optional[float], high: Optional[float]) -> Elementwise:
    def loewner(w: torch.Tensor) -> torch.Tensor:
        a, b = _pairs(w)
        fa, fb = _pairs(w.clamp(low, high))
        inside = torch.ones_like(w, dtype=torch.bool)
        if low is not None:
            inside = inside & (w > low)
        if high is not None:
            inside = inside & (w < high)
        slope = _pairs(inside.to(w.dtype))[0]  # f'(λᵢ): 1 strictly inside, 0 at or beyond
        return _ratio(fa - fb, a - b, slope)  # exact: differences of clamped values

    return loewner


Backward = Union[str, Rule]


def funm(
    A: torch.Tensor,
    f: Elementwise,
    df: Optional[Elementwise] = None,
    *,
    backward: Backward = "loewner",
    compute_dtype: Optional[torch.dtype] = None,
    check_symmetric: bool = True,
) -> torch.Tensor:
    """``V f(Λ) Vᵀ`` for a user's elementwise, torch-traceable ``f``, with an exact gradient.

    Args:
        A: real symmetric matrices, shape (..., n, n), any floating dtype.
        f: elementwise function of a tensor of eigenvalues (e.g. ``torch.tanh``).
        df: its derivative, elementwise. Default: None (forward-mode autograd of ``f``).
        backward: ``"loewner"`` (divided differences of ``f``; default) or an eigenvector
            rule of :func:`stableeig.eigh`.
        compute_dtype: least working precision. Default: None (float64).
        check_symmetric: raise if ``A`` is not symmetric within ``sqrt(eps)``. Default: True.

    Returns:
        ``f(A)``, shape (..., n, n), in ``A``'s dtype.

    Raises:
        NotDifferentiableError: (in backward) ``f`` has no finite derivative at an
            eigenvalue, or the gradient overflows ``A``'s dtype.

    Examples:
        >>> import torch, stableeig as se
        >>> A = torch.eye(3, requires_grad=True)             # tied eigenvalues
        >>> se.funm(A, torch.tanh).sum().backward()
        >>> round(float(A.grad[0, 0]), 4)                    # tanh'(1) = 0.42
        0.42
    """

    def loewner(w: torch.Tensor) -> torch.Tensor:
        # f(a) - f(b) cancels where f is flat (tanh near saturation): the quotient in float64
        # from the working eigenvalues, so a float32 decomposition keeps its floor
        wide = torch.float64 if w.dtype in (torch.float16, torch.bfloat16, torch.float32) else None
        if wide is None or w.device.type == "mps":
            return divided_differences(w, f, df)
        return divided_differences(w.to(wide), f, df).to(w.dtype)

    function = SpectralFunction(
        "funm", f, loewner, lambda w: "f has no finite derivative at an eigenvalue of A", True
    )
    return apply_spectral(A, function, backward, compute_dtype, check_symmetric)


def logm(
    A: torch.Tensor,
    backward: Backward = "loewner",
    *,
    compute_dtype: Optional[torch.dtype] = None,
    check_symmetric: bool = True,
) -> torch.Tensor:
    """Principal logarithm of symmetric positive definite matrices: (..., n, n).

    Divided differences ``log1p(δ / λ_low) / δ`` (exact at every gap).

    Examples:
        >>> import torch, stableeig as se
        >>> [round(v, 6) for v in se.logm(torch.eye(2) * torch.e).diagonal().tolist()]
        [1.0, 1.0]
    """
    return apply_spectral(A, LOG, backward, compute_dtype, check_symmetric, require_positive())


def expm(
    A: torch.Tensor,
    backward: Backward = "loewner",
    *,
    compute_dtype: Optional[torch.dtype] = None,
    check_symmetric: bool = True,
) -> torch.Tensor:
    """Exponential of symmetric matrices: (..., n, n); equals ``torch.matrix_exp`` there.

    Divided differences ``exp(λ_low) · expm1(δ) / δ``.

    Examples:
        >>> import torch, stableeig as se
        >>> round(float(se.expm(torch.zeros(2, 2))[0, 0]), 4)
        1.0
    """
    function = _function("expm", torch.exp, _exp_loewner, "the gradient overflows")
    return apply_spectral(A, function, backward, compute_dtype, check_symmetric)


def powm(
    A: torch.Tensor,
    p: Union[float, torch.Tensor],
    backward: Backward = "loewner",
    *,
    compute_dtype: Optional[torch.dtype] = None,
    check_symmetric: bool = True,
) -> torch.Tensor:
    """``A^p`` for symmetric positive semidefinite ``A`` (definite when ``p <= 0``): (..., n, n).

    Divided differences ``λ_low^(p-1) · expm1(p log1p(r)) / r`` with ``r = δ / λ_low``; the
    backward raises where ``p < 1`` meets a zero eigenvalue (infinite derivative). Round-off
    negative eigenvalues of a semidefinite ``A`` count as 0. ``powm(A, 0.5)`` equals
    :func:`stableeig.sqrtm`, ``powm(A, -0.5)`` :func:`stableeig.inv_sqrtm`.

    ``p`` may be a 0-dim tensor that requires grad (a learned exponent, as in matrix power
    normalization): its gradient is ``⟨Ḡ, V (Λ^p log Λ) Vᵀ⟩`` (first order in ``p``; a zero
    eigenvalue contributes 0, the limit of ``λ^p log λ`` for ``p > 0``).

    Examples:
        >>> import torch, stableeig as se
        >>> se.powm(torch.eye(2) * 4, 1.5).diagonal().tolist()
        [8.0, 8.0]
    """
    exponent: Optional[torch.Tensor] = None
    if isinstance(p, torch.Tensor):
        if p.dim() != 0 or not p.is_floating_point():
            raise ArgumentError(
                f"powm: p: expected a finite real number or a 0-dim floating tensor (got a "
                f"tensor of shape {tuple(p.shape)} and dtype {p.dtype})"
            )
        exponent, p = p, float(p.detach())
    if isinstance(p, bool) or not isinstance(p, (int, float)) or p != p or abs(p) == float("inf"):
        raise ArgumentError(f"powm: p: expected a finite real number (got {p!r})")
    p = float(p)
    if p <= 0:
        values: Elementwise = lambda w: w.pow(p)  # noqa: E731
        check = require_positive()
    else:
        values = lambda w: w.clamp_min(0).pow(p)  # noqa: E731
        check = require_semidefinite()
    floored = _pow_loewner(p) if p <= 0 else (lambda w: _pow_loewner(p)(w.clamp_min(0)))
    function = _function(
        f"powm(p={p:g})", values, floored, "the derivative of λ^p is infinite at λ = 0 for p < 1"
    )
    F = apply_spectral(A, function, backward, compute_dtype, check_symmetric, check)
    if exponent is None or not exponent.requires_grad:
        return F
    with torch.no_grad():  # ∂F/∂p = V (Λ^p log Λ) Vᵀ, from a detached decomposition
        work = A.detach().to(F.dtype if compute_dtype is None else compute_dtype)
        w, V = torch.linalg.eigh(work.double() / 2 + work.double().mT / 2)
        positive = w > 0
        safe = torch.where(positive, w, torch.ones_like(w))
        slope = torch.where(positive, values(safe) * safe.log(), torch.zeros_like(w))
        derivative = ((V * slope.unsqueeze(-2)) @ V.mT).to(F.dtype)
    return F + (exponent - exponent.detach()).to(F.dtype) * derivative


def softplusm(
    A: torch.Tensor,
    backward: Backward = "loewner",
    *,
    compute_dtype: Optional[torch.dtype] = None,
    check_symmetric: bool = True,
) -> torch.Tensor:
    """``V log(1 + e^Λ) Vᵀ`` of symmetric matrices (an SPD map): (..., n, n).

    Divided differences ``log1p(expm1(δ) σ(λ_low)) / δ``, ``σ`` the logistic function.
    """
    function = _function("softplusm", _softplus, _softplus_loewner, "the gradient overflows")
    return apply_spectral(A, function, backward, compute_dtype, check_symmetric)


def clamp_eigenvalues(
    A: torch.Tensor,
    min: Optional[float] = None,
    max: Optional[float] = None,
    backward: Backward = "loewner",
    *,
    compute_dtype: Optional[torch.dtype] = None,
    check_symmetric: bool = True,
) -> torch.Tensor:
    """``V clamp(Λ, min, max) Vᵀ`` (SPDNet's ReEig with ``min = ε``): (..., n, n).

    Subgradient at the kink: ``f'(λ) = 1`` strictly inside ``(min, max)``, 0 at ``λ = min``
    or ``max`` and beyond (SPDNet's ``λ > ε`` mask). Divided differences of clamped values
    are exact; a pair tied bit for bit takes ``f'``.

    Examples:
        >>> import torch, stableeig as se
        >>> se.clamp_eigenvalues(torch.diag(torch.tensor([-1.0, 2.0])), min=0.5).diagonal().tolist()
        [0.5, 2.0]
    """
    if min is None and max is None:
        raise ArgumentError("clamp_eigenvalues: expected min or max (got neither)")
    for label, bound in (("min", min), ("max", max)):
        if bound is not None and not (
            isinstance(bound, (int, float)) and abs(bound) < float("inf")
        ):
            raise ArgumentError(
                f"clamp_eigenvalues: {label}: expected a finite number (got {bound!r})"
            )
    if min is not None and max is not None and min > max:
        raise ArgumentError(f"clamp_eigenvalues: expected min <= max (got {min} > {max})")
    function = _function(
        "clamp_eigenvalues",
        lambda w: w.clamp(min, max),
        _clamp_loewner(min, max),
        "unreachable: the clamp's divided differences are bounded by 1",
    )
    return apply_spectral(A, function, backward, compute_dtype, check_symmetric)
