"""Gradient rules as data: one frozen object per rule, one registry, one resolver.

For ``A = V diag(w) Vᵀ`` (ascending ``w``) the gradient through the eigenvectors is

    ∂L/∂A = sym( V ( C ∘ (Vᵀ ∂L/∂V) + diag(∂L/∂w) ) Vᵀ ),

where ``C[m, j]`` is the coefficient of eigenvector ``m`` in the derivative of eigenvector
``j``; exactly ``C[m, j] = 1 / (w[j] - w[m])``. An *eigenvector rule* replaces ``C``
(``Analytic``, ``Power``, ``Taylor``, ``Clip``); ``Loewner`` instead differentiates a spectral
function ``V f(Λ) Vᵀ`` exactly; ``PowerIteration`` is the paper's "PI" baseline, which also
replaces the forward decomposition (layers only). Each rule carries its own settings,
validated when it is built::

    se.eigh(A, backward=se.rules.Power(num_iters=29))
    se.inv_sqrtm(A, backward="loewner")            # a name means the registry's default

Adding a rule is one class here plus one entry in :data:`RULES`; functions, layers, the
command line, benchmarks and the documentation tables enumerate the registry.

Fidelity (``power``, ``taylor``): the arithmetic is that of the authors' reference code
(``power_iteration_once``, ``geometric_approximation``); the README's fidelity table lists
every deliberate difference.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar, Union

import torch

from ._validation import check_choice, check_int_at_least, check_positive
from .exceptions import ArgumentError, DTypeError

__all__ = [
    "RULES",
    "Analytic",
    "Clip",
    "EigenvectorRule",
    "Loewner",
    "Power",
    "PowerIteration",
    "Rule",
    "Taylor",
    "geometric_sum",
    "resolve",
    "rule_table",
]

REFERENCE_NORM_FLOOR = 1e-5  # the reference's clamp(min=1e-5) on ‖M v‖ (one home: also pi's)


@dataclass(frozen=True)
class Rule:
    """Base of every gradient rule; subclasses are frozen dataclasses of their settings."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = ""  # "eigenvector", "spectral" or "decomposition"
    default_truncation: ClassVar[str] = "none"  # which eigenvectors a ZCA layer whitens
    paper_name: ClassVar[str] = "—"
    summary: ClassVar[str] = ""
    bound: ClassVar[str] = ""

    def describe(self) -> str:
        """``Class(setting=value, ...)``: how the rule prints in tables and reprs."""
        fields = dataclasses.fields(self)
        settings = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields)
        return f"{type(self).__name__}({settings})"


@dataclass(frozen=True)
class EigenvectorRule(Rule):
    """A rule that replaces the coefficients ``C`` of the eigenvector gradient."""

    kind: ClassVar[str] = "eigenvector"
    finite_coefficients: ClassVar[bool] = False
    """Whether ``C`` is finite for every finite ``w`` (a bounded rule): the backward then
    multiplies by it without guarding ``Inf · 0`` (True for the stabilized rules)."""

    def coefficients(self, w: torch.Tensor) -> torch.Tensor:
        """``C`` (..., n, n) from ascending eigenvalues ``w`` (..., n)."""
        raise NotImplementedError


def geometric_sum(q: torch.Tensor, terms: int) -> torch.Tensor:
    """``Σ_{k=0}^{terms-1} q^k`` for ``q`` in [0, 1], accurate also as ``q -> 1``.

    Binary splitting, ``S_{2m} = S_m (1 + q^m)`` and ``S_{m+1} = 1 + q S_m``: about
    ``2 log₂ terms`` products and sums of non-negative numbers, so nothing cancels near
    ``q = 1`` (``q = 1`` gives ``terms`` exactly, ``q = 0`` gives 1, and 0 when ``terms = 0``);
    no transcendental functions. Within ``4 eps`` of the exact sum up to 32 terms (tested).
    """
    if terms == 0:
        return torch.zeros_like(q)
    one = torch.ones((), dtype=q.dtype, device=q.device)
    digits = bin(terms)[3:]  # the binary digits of terms after the leading 1
    total, power = torch.ones_like(q) if terms == 1 else q + 1, q  # S_1 and q^1 (or S_2)
    for position, digit in enumerate(digits):
        if position:  # S_{2m} = S_m + S_m q^m (the first doubling is S_2 = 1 + q, above)
            total = torch.addcmul(total, total, power)
        if digit == "1":
            total = torch.addcmul(one, q, total)  # S_{2m+1} = 1 + q S_{2m}
        if position + 1 < len(digits):  # q^m for the next doubling
            power = power * power * q if digit == "1" else power * power
    return total


def _check_bound_finite(name: str, floor: object, terms: int) -> None:
    """A positive ``floor`` large enough that the bound ``terms / floor`` (with a factor 2
    for rounding) is finite in float32, the least working precision: a bounded rule's
    coefficients are then finite in every precision (``finite_coefficients``)."""
    check_positive(name, floor)
    least = 2.0 * terms / torch.finfo(torch.float32).max
    if floor < least:  # type: ignore[operator]
        setting = name.split()[-1]
        raise ArgumentError(
            f"{name}: expected a value >= {least:.3g}, so that the bound {terms} / {setting} "
            f"is finite in float32 (got {floor!r})"
        )


def _pairwise_gaps(w: torch.Tensor) -> torch.Tensor:
    """``gaps[..., m, j] = w[j] - w[m]``: (..., n, n)."""
    return w.unsqueeze(-2) - w.unsqueeze(-1)


def _series_ratio(w: torch.Tensor, floor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q, denominator)`` (..., n, n) of the series rules, for ascending ``w`` (..., n).

    ``denominator = max(w_larger, floor)`` (the reference's ``clamp(min=1e-5)`` of ``‖M v‖``)
    and ``q = max(w_smaller, 0) / denominator`` in ``[0, 1]``. For ascending ``w`` the larger
    of a pair by value is the later one by position, which the deflation order follows.
    """
    at_least_floor, at_least_zero = w.clamp_min(floor), w.clamp_min(0)
    denominator = torch.maximum(at_least_floor.unsqueeze(-1), at_least_floor.unsqueeze(-2))
    smaller = torch.minimum(at_least_zero.unsqueeze(-1), at_least_zero.unsqueeze(-2))
    return smaller / denominator, denominator


def _later_is_first(n: int, device: torch.device) -> torch.Tensor:
    """``mask[m, j] = m > j`` (n, n): the eigenvalue ``w[m]`` is the larger of the pair."""
    return torch.ones(n, n, dtype=torch.bool, device=device).tril(-1)


@dataclass(frozen=True)
class Analytic(EigenvectorRule):
    """The exact eigenvector gradient, ``C[m, j] = 1 / (w[j] - w[m])``: ±Inf/NaN at ties."""

    name: ClassVar[str] = "analytic"
    paper_name: ClassVar[str] = "SVD (baseline)"
    summary: ClassVar[str] = "exact `1/(λⱼ − λᵢ)`: ±Inf/NaN at equal eigenvalues (torch's rule)"
    bound: ClassVar[str] = "none"

    def coefficients(self, w: torch.Tensor) -> torch.Tensor:
        gaps = _pairwise_gaps(w)
        gaps.diagonal(dim1=-2, dim2=-1).fill_(float("inf"))
        return gaps.reciprocal()


@dataclass(frozen=True)
class Power(EigenvectorRule):
    """The paper's SVD-PI gradient: power-iteration series with deflation (descending order).

    The backward of ``num_iters`` power iterations started at the eigenvector ``v`` of the
    matrix ``M̃`` deflated of the larger eigenvectors sums ``num_iters + 1`` terms,
    ``Σ_{k=0}^{K} M̃ᵏ (I - v vᵀ) / ‖M̃ v‖^{k+1}``, exactly as the reference code
    (``power_iteration_once`` with ``num_iter=19``) does; the paper's printed formula stops one
    term earlier. With the gradient that flows back through the deflations, in the
    eigenbasis: ``C[m, j] = S_{K+1}(q) / λ'`` for a smaller ``w[m]`` and ``-S_K(q) / λ'`` for
    an already deflated (larger) one, ``S_N(q) = Σ_{k<N} qᵏ``, ``λ' = max(λ_larger, floor)``.

    Args:
        num_iters: power iterations ``K`` (>= 0); the series has ``K + 1`` terms. Default: 19.
        floor: least denominator ``‖M̃ v‖`` (the reference's ``clamp(min=1e-5)``), at
            least ``2 (num_iters + 1) / float32 max`` (the bound stays finite). Default: 1e-5.

    Bound: ``|C[m, j]| <= (K + 1) / max(λ_larger, floor)``; negative eigenvalues count as 0.
    """

    num_iters: int = 19
    floor: float = REFERENCE_NORM_FLOOR

    name: ClassVar[str] = "power"
    finite_coefficients: ClassVar[bool] = True
    paper_name: ClassVar[str] = "SVD-PI (proposed)"
    default_truncation: ClassVar[str] = "paper"  # the SVD-PI layer's recipe
    summary: ClassVar[str] = (
        "power-iteration series, `num_iters + 1` terms as in the reference code, deflation "
        "in descending order"
    )
    bound: ClassVar[str] = "`(num_iters + 1) / max(λᵢ, λⱼ, floor)`"

    def __post_init__(self) -> None:
        check_int_at_least("Power: num_iters", self.num_iters, 0)
        _check_bound_finite("Power: floor", self.floor, self.num_iters + 1)

    def coefficients(self, w: torch.Tensor) -> torch.Tensor:
        q, denominator = _series_ratio(w, self.floor)
        partial = geometric_sum(q, self.num_iters)  # S_K(q)
        full = torch.addcmul(torch.ones((), dtype=q.dtype, device=q.device), q, partial)
        # S_{K+1}(q) = 1 + q S_K(q); where w[m] was deflated before w[j] (m > j): -S_K(q)
        later_is_m = _later_is_first(w.shape[-1], w.device)
        coefficients = torch.where(later_is_m, -partial, full) / denominator
        coefficients.diagonal(dim1=-2, dim2=-1).zero_()
        return coefficients


@dataclass(frozen=True)
class Taylor(EigenvectorRule):
    """The TPAMI follow-up: ``1 / (w[j] - w[m])`` as a geometric series of degree ``order``.

    ``C[m, j] = sign(w[j] - w[m]) S_{order+1}(min/max) / max`` (``order + 1`` terms, the
    reference ``geometric_approximation``'s degree 9 = 10 terms); 0 at exact ties, where the
    reference code puts ``+S/λ`` on both sides.

    Args:
        order: degree of the series (>= 0). Default: 9.
        floor: least eigenvalue in a denominator, at least ``2 (order + 1) / float32 max``
            (the bound stays finite). Default: 1e-5.

    Bound: ``|C[m, j]| <= (order + 1) / max(λ_larger, floor)``; negative eigenvalues count as 0.
    """

    order: int = 9
    floor: float = REFERENCE_NORM_FLOOR

    name: ClassVar[str] = "taylor"
    finite_coefficients: ClassVar[bool] = True
    paper_name: ClassVar[str] = "Taylor (TPAMI follow-up)"
    summary: ClassVar[str] = "closed-form geometric series of degree `order` (10 terms by default)"
    bound: ClassVar[str] = "`(order + 1) / max(λᵢ, λⱼ, floor)`"

    def __post_init__(self) -> None:
        check_int_at_least("Taylor: order", self.order, 0)
        _check_bound_finite("Taylor: floor", self.floor, self.order + 1)

    def coefficients(self, w: torch.Tensor) -> torch.Tensor:
        q, denominator = _series_ratio(w, self.floor)
        return torch.sign(_pairwise_gaps(w)) * geometric_sum(q, self.order + 1) / denominator


@dataclass(frozen=True)
class Clip(EigenvectorRule):
    """``sign(w[j] - w[m]) / max(|w[j] - w[m]|, min_gap)``: the gap-clamping workaround.

    Args:
        min_gap: smallest gap used in a denominator (absolute), at least
            ``2 / float32 max`` (the bound stays finite). Default: 1e-2.

    Bound: ``|C[m, j]| <= 1 / min_gap``; 0 at exact ties.
    """

    min_gap: float = 1e-2

    name: ClassVar[str] = "clip"
    finite_coefficients: ClassVar[bool] = True
    paper_name: ClassVar[str] = "common workaround"
    summary: ClassVar[str] = "`1/(λⱼ − λᵢ)` with the gap clamped to `min_gap`"
    bound: ClassVar[str] = "`1 / min_gap`"

    def __post_init__(self) -> None:
        _check_bound_finite("Clip: min_gap", self.min_gap, 1)

    def coefficients(self, w: torch.Tensor) -> torch.Tensor:
        gaps = _pairwise_gaps(w)
        return torch.sign(gaps) / gaps.abs().clamp_min(self.min_gap)


@dataclass(frozen=True)
class Loewner(Rule):
    """The exact Daleckii–Krein gradient of a spectral function ``V f(Λ) Vᵀ`` (not of ``V``)."""

    name: ClassVar[str] = "loewner"
    kind: ClassVar[str] = "spectral"
    summary: ClassVar[str] = "exact gradient of the spectral function (Daleckii–Krein)"
    bound: ClassVar[str] = "finite wherever the derivative exists (else a clear error)"


@dataclass(frozen=True)
class PowerIteration(Rule):
    """The paper's "PI" baseline: power iteration and deflation in the forward pass too.

    Args:
        num_iters: iterations per eigenvector (>= 1). Default: 19.
        backward: ``"reference"`` — the reference code's custom backward
            (``power_iteration_unstable``) as it computes it, which propagates through the
            deflated, non-symmetric ``M̃`` where ``M̃ᵀ`` is needed; or ``"exact"`` — autograd
            through the iterations. Default: ``"reference"``.
    """

    num_iters: int = 19
    backward: str = "reference"

    name: ClassVar[str] = "pi"
    kind: ClassVar[str] = "decomposition"
    default_truncation: ClassVar[str] = "pi"  # the reference PI layer's stop rule
    paper_name: ClassVar[str] = "PI (baseline)"
    summary: ClassVar[str] = (
        "power iteration + deflation forward, the reference's PI backward (layers only)"
    )
    bound: ClassVar[str] = "none"

    def __post_init__(self) -> None:
        check_int_at_least("PowerIteration: num_iters", self.num_iters, 1)
        check_choice("PowerIteration: backward", self.backward, ("reference", "exact"))


RULES: dict[str, Rule] = {
    rule.name: rule for rule in (Loewner(), Power(), Taylor(), Clip(), Analytic(), PowerIteration())
}
"""Every rule by name, with its default settings."""


def names(kinds: Iterable[str] = ("eigenvector", "spectral", "decomposition")) -> tuple[str, ...]:
    """The registry's rule names of the given kinds, in registry order."""
    wanted = set(kinds)
    return tuple(name for name, rule in RULES.items() if rule.kind in wanted)


def resolve(
    value: Union[str, Rule],
    kinds: Iterable[str] = ("eigenvector", "spectral", "decomposition"),
    argument: str = "backward",
) -> Rule:
    """The rule object for a name or a rule, checked against the accepted ``kinds``.

    The only place a rule is validated (a rule object validated its settings when built).
    Any :class:`Rule` subclass of an accepted kind works, registered or not: a user's
    :class:`EigenvectorRule` with its own ``coefficients`` is used like the built-ins.
    """
    wanted = tuple(kinds)
    if isinstance(value, str) and value in RULES and RULES[value].kind in wanted:
        return RULES[value]  # the common case, without building the message's lists
    if isinstance(value, Rule):
        if value.kind not in wanted:
            raise ArgumentError(
                f"{argument}: expected a rule of kind {', '.join(map(repr, wanted))} "
                f"(got {type(value).__name__} of kind {value.kind!r})"
            )
        return value
    if not isinstance(value, str):
        raise DTypeError(
            f"{argument}: expected a rule name or a stableeig.rules.Rule "
            f"(got {type(value).__name__})"
        )
    return RULES[check_choice(argument, value, names(wanted))]


def rule_table(kinds: Iterable[str] = ("eigenvector", "spectral", "decomposition")) -> str:
    """A Markdown table of the registry: name, default settings, summary, bound, paper name."""
    lines = [
        "| rule | defaults | what it does | bounded by | paper name |",
        "|---|---|---|---|---|",
    ]
    for name in names(kinds):
        rule = RULES[name]
        cells = (f"`{name}`", f"`{rule.describe()}`", rule.summary, rule.bound, rule.paper_name)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
