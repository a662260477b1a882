"""stableeig.eigh: forward accuracy, the gradient rules, their bounds and failure modes."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import stableeig as se
from helpers import ADVERSARIAL, relative_error, with_spectrum
from stableeig.rules import RULES, Clip, Power, Taylor, geometric_sum

STABLE_RULES = ("power", "taylor", "clip")
SEPARATED = torch.tensor([0.1, 0.3, 0.5, 1.0, 2.0, 4.0], dtype=torch.float64)


def spectral_loss(w: torch.Tensor, V: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """A loss invariant to eigenvector signs: Σ weights · (V diag(j + w / max|w|) Vᵀ)."""
    scale = torch.arange(w.shape[-1], dtype=w.dtype) + w / w.detach().abs().amax(-1, keepdim=True)
    return ((V * scale.unsqueeze(-2)) @ V.mT * weights).sum()


def grad_of(A: torch.Tensor, backward: object, weights: torch.Tensor) -> torch.Tensor:
    A = A.detach().clone().requires_grad_(True)
    w, V = se.eigh(A, backward)  # type: ignore[arg-type]
    spectral_loss(w, V, weights.to(A.dtype)).backward()
    assert A.grad is not None
    return A.grad


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(5,), (3, 5), (2, 3, 5)])
def test_forward_matches_float64_oracle(dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(1)
    X = torch.randn(*shape, 5, generator=g, dtype=torch.float64)
    A64 = X @ X.mT / 5 + 0.1 * torch.eye(5, dtype=torch.float64)
    A = A64.to(dtype)
    w, V = se.eigh(A)
    assert w.dtype == dtype and V.dtype == dtype
    assert w.shape == A.shape[:-1] and V.shape == A.shape
    oracle = torch.linalg.eigvalsh(A.double())  # same (rounded) input, exact arithmetic
    tol = {torch.float16: 2e-3, torch.bfloat16: 1e-2, torch.float32: 1e-6, torch.float64: 1e-12}[
        dtype
    ]
    assert torch.allclose(w.double(), oracle, atol=tol * 10, rtol=tol)
    recon = (V.double() * w.double().unsqueeze(-2)) @ V.double().mT
    assert relative_error(recon, A.double()) < tol * 10


def test_batched_equals_looped() -> None:
    A = torch.stack([ADVERSARIAL["geometric_1e4"](6), with_spectrum(SEPARATED, seed=3)])
    weights = torch.randn(6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for rule in (*STABLE_RULES, "analytic"):
        batched = grad_of(A, rule, weights)
        looped = torch.stack([grad_of(a, rule, weights) for a in A])
        torch.testing.assert_close(batched, looped, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("rule", [*STABLE_RULES, "analytic"])
def test_empty_batch(rule: str) -> None:
    A = torch.zeros(0, 4, 4, requires_grad=True)
    w, V = se.eigh(A, rule)
    assert w.shape == (0, 4) and V.shape == (0, 4, 4)
    (w.sum() + V.sum()).backward()
    assert A.grad is not None and A.grad.shape == (0, 4, 4)


@pytest.mark.parametrize("rule", STABLE_RULES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_adversarial_spectra_finite(adversarial_name: str, rule: str, dtype: torch.dtype) -> None:
    A = ADVERSARIAL[adversarial_name](8).to(dtype)
    weights = torch.randn(8, 8, generator=torch.Generator().manual_seed(0), dtype=dtype)
    w, V = se.eigh(A, rule)
    assert torch.isfinite(w).all() and torch.isfinite(V).all()
    grad = grad_of(A, rule, weights)
    assert torch.isfinite(grad).all(), f"{rule} gradient not finite on {adversarial_name}"


def test_analytic_reproduces_torch() -> None:
    A = with_spectrum(SEPARATED, seed=2).requires_grad_(True)
    weights = torch.randn(6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    spectral_loss(*torch.linalg.eigh(A), weights).backward()
    assert A.grad is not None
    torch_grad = (A.grad + A.grad.mT) / 2
    torch.testing.assert_close(grad_ofs := grad_of(A, "analytic", weights), torch_grad)
    assert torch.allclose(grad_ofs, grad_ofs.mT)
    # The baseline fails where torch fails: repeated eigenvalues give non-finite gradients.
    identity = torch.eye(4, dtype=torch.float64, requires_grad=True)
    spectral_loss(*torch.linalg.eigh(identity), weights[:4, :4]).backward()
    assert identity.grad is not None and not torch.isfinite(identity.grad).all()
    assert not torch.isfinite(grad_of(identity, "analytic", weights[:4, :4])).all()


@pytest.mark.parametrize("rule", [Power, Taylor])
def test_series_converge_to_analytic(rule: type) -> None:
    A = with_spectrum(SEPARATED, seed=4)
    weights = torch.randn(6, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    exact = grad_of(A, "analytic", weights)
    errors = [relative_error(grad_of(A, rule(K), weights), exact) for K in (2, 5, 19, 60, 200)]
    assert all(later < earlier for earlier, later in zip(errors[:3], errors[1:4]))
    assert errors[-1] < 1e-12


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
@pytest.mark.parametrize("K", [0, 1, 9, 19])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_series_coefficients_obey_their_documented_bound(
    name: str, K: int, dtype: torch.dtype
) -> None:
    w = torch.linalg.eigvalsh(ADVERSARIAL[name](8).to(dtype))
    largest = torch.maximum(w.unsqueeze(-1), w.unsqueeze(-2)).clamp_min(1e-5)
    for C in (Power(K).coefficients(w), Taylor(K).coefficients(w)):
        assert torch.isfinite(C).all()
        assert (C.abs() <= (K + 1) / largest * (1 + 1e-5)).all()


@pytest.mark.parametrize("rule", ["power", "taylor", "clip"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "matrix",
    [
        torch.zeros(3, 3),
        torch.ones(4, 4),
        torch.diag(torch.tensor([0.0, 0.0, 1.0, 2.0])),
        -torch.eye(3),
        torch.diag(torch.tensor([-2.0, 0.0, 3.0])),
    ],
    ids=["zero", "ones", "psd_exact_zeros", "negative_identity", "indefinite"],
)
def test_stable_rules_bounded_at_zero_and_negative_eigenvalues(
    rule: str, dtype: torch.dtype, matrix: torch.Tensor
) -> None:
    """Unit-scale matrices with exact zero eigenvalues: |∂L/∂A| <= 1e8 · |upstream|."""
    A = matrix.to(dtype).clone().requires_grad_(True)
    _, V = se.eigh(A, rule)
    upstream = torch.randn(V.shape, generator=torch.Generator().manual_seed(0), dtype=dtype)
    (V * upstream).sum().backward()
    assert A.grad is not None and torch.isfinite(A.grad).all()
    assert float(A.grad.abs().max()) <= 1e8 * float(upstream.abs().max())


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_rules_flagged_finite_have_finite_coefficients_and_analytic_is_not_flagged(
    name: str,
) -> None:
    """The backward multiplies a flagged rule's C without the Inf · 0 guard: the flag must
    hold on every adversarial spectrum (ties, zeros, huge ranges), as the bounds say."""
    w = torch.linalg.eigvalsh(ADVERSARIAL[name](8).double())
    flagged = [rule for rule in RULES.values() if getattr(rule, "finite_coefficients", False)]
    assert {rule.name for rule in flagged} == {"power", "taylor", "clip"}
    for rule in flagged:
        assert torch.isfinite(rule.coefficients(w)).all(), rule.name
        assert torch.isfinite(rule.coefficients(-w)).all(), rule.name
    assert not RULES["analytic"].finite_coefficients  # type: ignore[attr-defined]
    tie = torch.tensor([1.0, 1.0, 2.0], dtype=torch.float64)
    assert not torch.isfinite(RULES["analytic"].coefficients(tie)).all()  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("make", "least", "tie"),
    [(lambda v: Power(floor=v), 40 / 3.4028235e38, True),
     (lambda v: Taylor(floor=v), 20 / 3.4028235e38, True),
     (lambda v: Clip(min_gap=v), 2 / 3.4028235e38, False)],
)  # fmt: skip
def test_a_floor_too_small_for_a_finite_float32_bound_is_refused(
    make: Any, least: float, tie: bool
) -> None:
    """The flag's promise at the edge: the least accepted floor keeps C finite in float32
    where it is largest (the series: a near tie at the floor; clip: a gap below min_gap);
    below it, a clear error."""
    with pytest.raises(se.ArgumentError, match="finite in float32"):
        make(least / 4)
    floor = least * 1.0001
    rule = make(floor)
    near_tie = [floor * 0.999, floor, 1.0]
    w = torch.tensor(near_tie if tie else [0.0, floor / 2, 1.0], dtype=torch.float32)
    C = rule.coefficients(w)
    assert torch.isfinite(C).all() and float(C.abs().max()) > 1e37


def test_power_floor_is_what_bounds_it() -> None:
    """Without the floor the zero matrix would divide by 0; with a larger floor, smaller C."""
    w = torch.zeros(3, dtype=torch.float64)
    assert float(Power().coefficients(w).abs().max()) == pytest.approx(1 / 1e-5)
    assert float(Power(floor=1e-2).coefficients(w).abs().max()) == pytest.approx(1 / 1e-2)


def test_taylor_and_clip_are_antisymmetric() -> None:
    w = torch.tensor([1e-4, 1e-4, 0.5, 0.5 + 1e-9, 2.0], dtype=torch.float64)
    for C in (Taylor().coefficients(w), Clip().coefficients(w)):
        torch.testing.assert_close(C, -C.mT)


def test_registry_describes_every_rule() -> None:
    table = se.rules.rule_table()
    for name, rule in RULES.items():
        assert f"`{name}`" in table and rule.describe().startswith(type(rule).__name__)
    assert se.rules.resolve("power") is RULES["power"]
    with pytest.raises(se.ArgumentError, match="expected one of"):
        se.eigh(torch.eye(2), "loewner")


@pytest.mark.parametrize("rule", [*STABLE_RULES, "analytic"])
def test_gradient_is_symmetric_and_input_unchanged(rule: str) -> None:
    A = with_spectrum(SEPARATED, seed=7)
    before = A.clone()
    weights = torch.randn(6, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    grad = grad_of(A, rule, weights)
    torch.testing.assert_close(grad, grad.mT)
    assert torch.equal(A, before)


def test_low_precision_and_autocast() -> None:
    A = with_spectrum(SEPARATED, seed=8).to(torch.bfloat16).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        w, V = se.eigh(A)
    assert w.dtype == torch.bfloat16 and V.dtype == torch.bfloat16
    (w.float().sum() + V.float().abs().sum()).backward()
    assert A.grad is not None and A.grad.dtype == torch.bfloat16 and torch.isfinite(A.grad).all()
    w64, V64 = torch.linalg.eigh(A.detach().double())  # the bfloat16 matrix, exactly
    torch.testing.assert_close(w.double(), w64, rtol=1e-2, atol=1e-2)  # bfloat16 rounding
    alignment = (V.double().mT @ V64).abs()  # eigenvectors up to sign
    torch.testing.assert_close(alignment, torch.eye(6, dtype=torch.float64), atol=2e-2, rtol=0)


def test_compute_dtype_float32_runs_in_float32() -> None:
    A = with_spectrum(SEPARATED, seed=9).float()
    w32, _ = se.eigh(A, compute_dtype=torch.float32)
    w64, _ = se.eigh(A)
    assert w32.dtype == torch.float32
    assert torch.allclose(w32, w64, rtol=1e-5)


@settings(max_examples=40, deadline=None)
@given(q=st.floats(0.0, 1.0), terms=st.integers(0, 40))
def test_geometric_sum_matches_direct_sum(q: float, terms: int) -> None:
    direct = sum(q**k for k in range(terms))
    value = float(geometric_sum(torch.tensor(q, dtype=torch.float64), terms))
    assert value == pytest.approx(direct, rel=1e-10, abs=1e-12)


def test_geometric_sum_is_within_4_eps_of_the_exact_sum_and_exact_at_one() -> None:
    """The binary splitting has no cancellation: a few eps from the exact rational sum up to
    32 terms, also for q within 1e-16 of 1, and ``terms`` itself at q = 1."""
    q = torch.cat([
        torch.rand(64, dtype=torch.float64, generator=torch.Generator().manual_seed(0)),
        1 - torch.logspace(-16, -1, 16, dtype=torch.float64),
        torch.tensor([0.0, 5e-324, 1.0], dtype=torch.float64),
    ])  # fmt: skip
    eps = Fraction(torch.finfo(torch.float64).eps)
    for terms in (0, 1, 2, 3, 7, 10, 19, 20, 32):
        values = geometric_sum(q, terms).tolist()
        assert values[-1] == terms
        for ratio, value in zip(q.tolist(), values):
            exact = sum(Fraction(ratio) ** k for k in range(terms))
            assert abs(Fraction(value) - exact) <= 4 * eps * exact, (ratio, terms)


@settings(max_examples=25, deadline=None)
@given(
    exponents=st.lists(st.floats(-8, 2), min_size=2, max_size=7),
    seed=st.integers(0, 1000),
    rule=st.sampled_from(STABLE_RULES),
)
def test_property_stable_rules_finite_for_any_psd_spectrum(
    exponents: list[float], seed: int, rule: str
) -> None:
    spectrum = torch.tensor([10.0**e for e in exponents], dtype=torch.float64)
    A = with_spectrum(spectrum, seed=seed).float()
    weights = torch.randn(
        len(exponents), len(exponents), generator=torch.Generator().manual_seed(seed)
    )
    grad = grad_of(A, rule, weights)
    assert torch.isfinite(grad).all()
    torch.testing.assert_close(grad, grad.mT)
