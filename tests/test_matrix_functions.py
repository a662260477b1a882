"""funm, logm, expm, powm, softplusm, clamp_eigenvalues (issue 17): values against torch
and eigh references, divided differences and full gradients against mpmath at every gap
from bit-equal to O(1) (a plain quotient fails these), gradcheck, ties, errors."""

from __future__ import annotations

from typing import Callable

import pytest
import torch

import stableeig as se
from stableeig.matrix_functions import (
    _clamp_loewner,
    _exp_loewner,
    _log_loewner,
    _pow_loewner,
    _softplus_loewner,
    divided_differences,
)

mpmath = pytest.importorskip("mpmath")
mpmath.mp.dps = 50

GAPS = [0.0, 1e-12, 1e-9, 1e-6, 1e-3, 1.0]
SCALES = [1e-3, 1.0, 1e3]

# name -> (mpmath f, our Loewner matrix of w, scales it is used at)
BUILT_INS: dict[str, tuple[Callable, Callable, list[float]]] = {  # type: ignore[type-arg]
    "log": (mpmath.log, _log_loewner, SCALES),
    "exp": (mpmath.exp, _exp_loewner, [1e-3, 1.0, 30.0]),
    "pow 0.3": (lambda x: x ** mpmath.mpf("0.3"), _pow_loewner(0.3), SCALES),
    "pow -0.5": (lambda x: x ** mpmath.mpf("-0.5"), _pow_loewner(-0.5), SCALES),
    "pow 2": (lambda x: x**2, _pow_loewner(2.0), SCALES),
    "softplus": (lambda x: mpmath.log(1 + mpmath.exp(x)), _softplus_loewner, [1e-3, 1.0, 30.0]),
    "funm tanh": (
        mpmath.tanh,
        lambda w: divided_differences(w, torch.tanh),
        [1e-3, 1.0, 3.0],
    ),
    "funm exp (autograd f')": (
        mpmath.exp,
        lambda w: divided_differences(w, torch.exp),
        [1e-3, 1.0, 30.0],
    ),
}


def _reference(f: Callable, a: float, b: float) -> float:  # type: ignore[type-arg]
    a_, b_ = mpmath.mpf(a), mpmath.mpf(b)
    if a_ == b_:
        return float(mpmath.diff(f, a_))
    return float((f(a_) - f(b_)) / (a_ - b_))


@pytest.mark.parametrize("name", sorted(BUILT_INS))
def test_divided_differences_against_mpmath_at_every_gap(name: str) -> None:
    f, loewner, scales = BUILT_INS[name]
    bound = 1e-9 if name.startswith("funm") else 1e-12
    worst = 0.0
    for scale in scales:
        for gap in GAPS:
            w = torch.tensor([scale, scale * (1 + gap)], dtype=torch.float64)
            L = loewner(w)
            expected = _reference(f, float(w[1]), float(w[0]))
            worst = max(worst, abs(float(L[1, 0]) - expected) / abs(expected))
            assert float(L[0, 1]) == pytest.approx(float(L[1, 0]), rel=1e-14)  # symmetric
    assert worst <= bound, f"{name}: worst relative error {worst:.2e}"


def test_a_plain_quotient_fails_the_same_sweep() -> None:
    # what the sweep guards against: (f(a) - f(b)) / (a - b) in float64 at a 1e-9 gap
    a, b = 2.0 * (1 + 1e-9), 2.0
    logs = torch.log(torch.tensor([a, b], dtype=torch.float64))
    plain = (logs[0] - logs[1]) / (a - b)
    expected = _reference(mpmath.log, a, b)
    assert abs(float(plain) - expected) / expected > 1e-12  # the built-ins bound: 1e-12


def _rotation(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))[0]


@pytest.mark.parametrize("gap", [0.0, 1e-9, 1e-4, 0.5])
@pytest.mark.parametrize("name", ["log", "exp", "pow 0.3", "softplus", "funm tanh"])
def test_full_float32_gradient_within_1e_6_of_mpmath(name: str, gap: float) -> None:
    f, _, _ = BUILT_INS[name]
    public = {
        "log": se.logm, "exp": se.expm, "pow 0.3": lambda A: se.powm(A, 0.3),
        "softplus": se.softplusm, "funm tanh": lambda A: se.funm(A, torch.tanh),
    }[name]  # fmt: skip
    w = torch.tensor([0.5, 1.0, 1.0 + gap, 2.0], dtype=torch.float64)
    Q = _rotation(4, 1)
    A = ((Q * w) @ Q.T).float()
    # the reference: the exact float32 matrix, decomposed and differentiated in mpmath
    M = mpmath.matrix(A.double().tolist())
    values, vectors = mpmath.eigsy(M)
    n = 4
    G = torch.randn(4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    Gs = mpmath.matrix(((G + G.T) / 2).tolist())
    inner = vectors.T * Gs * vectors
    L = mpmath.matrix(n, n)
    for i in range(n):
        for j in range(n):
            a, b = values[i], values[j]
            L[i, j] = mpmath.diff(f, a) if a == b else (f(a) - f(b)) / (a - b)
    core = mpmath.matrix(n, n)
    for i in range(n):
        for j in range(n):
            core[i, j] = inner[i, j] * L[i, j]
    expected = torch.tensor((vectors * core * vectors.T).tolist(), dtype=torch.float64)
    leaf = A.clone().requires_grad_(True)
    (public(leaf) * G.float()).sum().backward()
    assert leaf.grad is not None
    error = float((leaf.grad.double() - expected).norm() / expected.norm())
    assert error <= 1e-6, f"{name} gap {gap}: {error:.2e}"


def _spd(n: int = 4, seed: int = 0) -> torch.Tensor:
    Q = _rotation(n, seed)
    return (Q * torch.linspace(0.5, 3.0, n, dtype=torch.float64)) @ Q.T


def test_values_against_torch_and_each_other() -> None:
    A = _spd()
    S = (A - A.mean()) / 2
    torch.testing.assert_close(se.expm(S), torch.matrix_exp(S))
    torch.testing.assert_close(se.logm(se.expm(S)), S)
    torch.testing.assert_close(se.powm(A, 0.5), se.sqrtm(A))
    torch.testing.assert_close(se.powm(A, -0.5), se.inv_sqrtm(A))
    torch.testing.assert_close(se.powm(A, 2), A @ A)
    torch.testing.assert_close(se.funm(A, torch.exp), se.expm(A))
    w, V = torch.linalg.eigh(A)
    torch.testing.assert_close(se.softplusm(A), (V * torch.nn.functional.softplus(w)) @ V.T)
    torch.testing.assert_close(
        se.clamp_eigenvalues(A, min=1.0, max=2.0), (V * w.clamp(1.0, 2.0)) @ V.T
    )
    assert se.logm(A.float()).dtype == torch.float32  # low precision: computed upcast
    assert se.expm(torch.zeros(3, 0, 0)).shape == (3, 0, 0)


@pytest.mark.parametrize(
    "function",
    [se.logm, se.expm, se.softplusm, lambda A: se.powm(A, 0.3), lambda A: se.powm(A, -1.5),
     lambda A: se.funm(A, torch.tanh), lambda A: se.clamp_eigenvalues(A, min=1.0)],
)  # fmt: skip
def test_gradcheck_and_gradgradcheck(function: Callable[[torch.Tensor], torch.Tensor]) -> None:
    A = _spd(seed=3).requires_grad_(True)

    def symmetric(A: torch.Tensor) -> torch.Tensor:
        return function((A + A.mT) / 2)

    assert torch.autograd.gradcheck(symmetric, (A,))
    assert torch.autograd.gradgradcheck(symmetric, (A,))


@pytest.mark.parametrize(
    ("function", "derivative"),
    [(se.logm, 1 / 2), (se.expm, 7.38905609893065), (lambda A: se.powm(A, 0.3), 0.3 * 2**-0.7),
     (lambda A: se.funm(A, torch.tanh), 1 - 0.9640275800758169**2)],
)  # fmt: skip
def test_exact_ties_give_f_prime(function: Callable, derivative: float) -> None:  # type: ignore[type-arg]
    A = (2 * torch.eye(3, dtype=torch.float64)).requires_grad_(True)
    G = torch.randn(3, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    (function(A) * G).sum().backward()
    assert A.grad is not None
    torch.testing.assert_close(A.grad, derivative * (G + G.T) / 2)


def test_clamp_subgradient_and_errors() -> None:
    A = torch.diag(torch.tensor([0.5, 1.0, 3.0], dtype=torch.float64)).requires_grad_(True)
    se.clamp_eigenvalues(A, min=1.0).trace().backward()  # λ = 1 sits on the kink: 0
    assert A.grad is not None
    assert A.grad.diagonal().tolist() == [0.0, 0.0, 1.0]
    with pytest.raises(se.NotPositiveDefiniteError, match="logm: A: expected a positive definite"):
        se.logm(-torch.eye(2))
    with pytest.raises(se.NotPositiveDefiniteError, match="powm"):
        se.powm(torch.diag(torch.tensor([0.0, 1.0])), -1.0)
    B = torch.diag(torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)).requires_grad_(True)
    with pytest.raises(se.NotDifferentiableError, match="infinite at λ = 0"):
        se.powm(B, 0.5).sum().backward()
    C = torch.diag(torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)).requires_grad_(True)
    se.powm(C, 2.0).sum().backward()  # p >= 1: finite at zero eigenvalues
    assert C.grad is not None and C.grad.diagonal().tolist() == [0.0, 0.0, 2.0]
    for p in (float("nan"), float("inf"), "2"):
        with pytest.raises(se.ArgumentError, match="p: expected a finite real number"):
            se.powm(torch.eye(2), p)  # type: ignore[arg-type]
    with pytest.raises(se.ArgumentError, match="expected min <= max"):
        se.clamp_eigenvalues(torch.eye(2), min=2.0, max=1.0)


def test_batches_of_very_different_scales_keep_their_own_accuracy() -> None:
    w = torch.tensor([[1.0, 1.0 + 1e-7, 2.0], [1e5, 1e5 * (1 + 1e-7), 2e5]], dtype=torch.float64)
    together = _log_loewner(w)
    for row in range(2):
        torch.testing.assert_close(together[row], _log_loewner(w[row]), rtol=0, atol=0)
        alone = divided_differences(w[row : row + 1], torch.log)[0]
        torch.testing.assert_close(divided_differences(w, torch.log)[row], alone, rtol=0, atol=0)


def test_every_rule_runs_through_the_built_ins() -> None:
    A = _spd(seed=5)
    for rule in ("analytic", "power", "taylor", "clip"):
        leaf = A.clone().requires_grad_(True)
        se.logm(leaf, backward=rule).sum().backward()
        assert leaf.grad is not None
    exact = A.clone().requires_grad_(True)
    se.logm(exact).sum().backward()
    analytic = A.clone().requires_grad_(True)
    se.logm(analytic, backward="analytic").sum().backward()
    torch.testing.assert_close(exact.grad, analytic.grad)  # separated spectrum: the same


def test_clamp_loewner_is_exact_and_bounded() -> None:
    w = torch.tensor([-1.0, 0.5, 0.5 + 1e-12, 3.0], dtype=torch.float64)
    L = _clamp_loewner(0.6, None)(w)
    assert float(L.abs().max()) <= 1.0 and float(L[3, 2]) == pytest.approx(2.4 / (2.5 - 1e-12))


def test_powm_gradient_with_respect_to_a_learned_exponent() -> None:
    A = _spd(seed=7)
    G = torch.randn(4, 4, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    p = torch.tensor(0.4, dtype=torch.float64, requires_grad=True)
    leaf = A.clone().requires_grad_(True)
    (se.powm(leaf, p) * G).sum().backward()
    w, V = torch.linalg.eigh(A)
    reference_p = torch.tensor(0.4, dtype=torch.float64, requires_grad=True)
    (((V * w.pow(reference_p)) @ V.T) * G).sum().backward()
    torch.testing.assert_close(p.grad, reference_p.grad)
    fixed = A.clone().requires_grad_(True)
    (se.powm(fixed, 0.4) * G).sum().backward()
    torch.testing.assert_close(leaf.grad, fixed.grad)  # the A-gradient is unchanged
    torch.testing.assert_close(se.powm(A, p).detach(), se.powm(A, 0.4))
    with pytest.raises(se.ArgumentError, match="0-dim floating tensor"):
        se.powm(A, torch.tensor([0.5, 0.5]))


@pytest.mark.parametrize("gap", [0.0, 1e-9, 1e-3])
def test_funm_in_float32_keeps_the_float32_floor_where_f_is_flat(gap: float) -> None:
    """``tanh`` near saturation (eigenvalues 1.5 … 6): ``f(a) - f(b)`` cancels, so the
    divided differences are taken in float64 from the float32 eigenpairs, and the gradient
    stays within 2× of the floor (the exact Loewner matrix on those eigenpairs); 0.3's
    float32 quotient was 3.4–5.7× off it."""
    from stableeig.matrix_functions import divided_differences

    g = torch.Generator().manual_seed(1)
    Q = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=torch.float64))[0]
    A = ((Q * torch.tensor([1.5, 3.0, 3.0 * (1 + gap), 6.0], dtype=torch.float64)) @ Q.T).float()
    aimed = torch.outer(Q[:, 1], Q[:, 2])
    G = (aimed + aimed.T).float()

    def gradient(compute_dtype: torch.dtype) -> torch.Tensor:
        leaf = A.clone().requires_grad_(True)
        (se.funm(leaf, torch.tanh, compute_dtype=compute_dtype) * G).sum().backward()
        assert leaf.grad is not None
        return leaf.grad.double()

    expected = gradient(torch.float64)  # float64 decomposition: far below the float32 floor
    w, V = torch.linalg.eigh(A)
    w, V = w.double(), V.double()
    L = divided_differences(w, torch.tanh, lambda x: 1 - torch.tanh(x) ** 2)
    floor = V @ (L * (V.T @ G.double() @ V)) @ V.T
    ours = gradient(torch.float32)
    ratio = (ours - expected).norm() / (floor - expected).norm()
    assert ratio <= 2.0, float(ratio)


def test_parameters_held_by_f_receive_their_gradient() -> None:
    """A learned threshold inside funm's f: its gradient V (∂f/∂τ)(Λ) Vᵀ (0.8.1 detached
    it: the result did not require grad, or the gradient was silently missing)."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(5, 5, generator=g, dtype=torch.float64)
    A = X @ X.T
    tau = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    G = torch.randn(5, 5, generator=g, dtype=torch.float64)
    leaf = A.clone().requires_grad_()
    (G * se.funm(leaf, lambda w: torch.nn.functional.softplus(w - tau))).sum().backward()
    w, V = torch.linalg.eigh(A)
    slope = -torch.sigmoid(w - 1.5)  # ∂/∂τ softplus(w - τ)
    expected = ((V.T @ G @ V).diagonal() * slope).sum()
    assert tau.grad is not None
    torch.testing.assert_close(tau.grad, expected)
    start = tau.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda t: se.funm(A, lambda w: torch.nn.functional.softplus(w - t)), (start,)
    )
