"""Exact second order at tied eigenvalues (issue 28): the second-order Daleckii–Krein backward
(second divided differences f[λᵢ, λₖ, λⱼ]) for every built-in spectral function; gradgradcheck
at 2I, at one tied pair and away from ties; Hessian-vector products at gaps 1e-9 … 1e-12
against fourth-order differences of the (exact) first-order gradient; an infinite second
derivative raises instead of returning NaN."""

from __future__ import annotations

from typing import Callable

import pytest
import torch

import stableeig as se

Function = Callable[[torch.Tensor], torch.Tensor]
FUNCTIONS: dict[str, Function] = {
    "logm": se.logm,
    "expm": se.expm,
    "sqrtm": se.sqrtm,
    "inv_sqrtm": se.inv_sqrtm,
    "powm(0.7)": lambda A: se.powm(A, 0.7),
    "powm(-1.5)": lambda A: se.powm(A, -1.5),
    "softplusm": se.softplusm,
    "funm(tanh)": lambda A: se.funm(A, torch.tanh),
}


def _rotated(eigenvalues: list[float], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    n = len(eigenvalues)
    Q = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))[0]
    return (Q * torch.tensor(eigenvalues, dtype=torch.float64)) @ Q.T


POINTS = {
    "2I": lambda: 2 * torch.eye(3, dtype=torch.float64),
    "one tied pair": lambda: _rotated([1.0, 1.0, 3.0]),
    "distinct": lambda: _rotated([0.5, 1.0, 3.0]),
}


@pytest.mark.parametrize("point", sorted(POINTS))
@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_gradgradcheck_at_ties_and_away(name: str, point: str) -> None:
    f = FUNCTIONS[name]
    X = POINTS[point]().requires_grad_()
    assert torch.autograd.gradgradcheck(lambda X: f((X + X.mT) / 2), (X,))


def _gradient(f: Function, A: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    leaf = A.clone().requires_grad_()
    (C * f(leaf)).sum().backward()
    assert leaf.grad is not None
    return leaf.grad


def _hvp(f: Function, A: torch.Tensor, C: torch.Tensor, E: torch.Tensor) -> torch.Tensor:
    leaf = A.clone().requires_grad_()
    (grad,) = torch.autograd.grad((C * f(leaf)).sum(), leaf, create_graph=True)
    (hvp,) = torch.autograd.grad((grad * E).sum(), leaf)
    return hvp


def _reference_hvp(f: Function, A: torch.Tensor, C: torch.Tensor, E: torch.Tensor) -> torch.Tensor:
    """Fourth-order central differences of the exact, smooth first-order gradient."""
    h = 1e-3
    g = [_gradient(f, A + k * h * E, C) for k in (-2, -1, 1, 2)]
    return (g[0] - 8 * g[1] + 8 * g[2] - g[3]) / (12 * h)


@pytest.mark.parametrize("gap", [0.0, 1e-9, 1e-10, 1e-12])
@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_hessian_vector_products_at_and_near_ties(name: str, gap: float) -> None:
    f = FUNCTIONS[name]
    A = _rotated([1.0, 1.0 + gap, 2.5], seed=1)
    C = _rotated([0.3, -1.0, 2.0], seed=2)
    E = _rotated([1.0, -0.5, 0.25], seed=3)
    got, expected = _hvp(f, A, C, E), _reference_hvp(f, A, C, E)
    error = float((got - expected).norm() / expected.norm())
    assert error < 1e-8, error


def test_torch_func_hessian_is_finite_and_equals_the_hvps_at_2i() -> None:
    C = _rotated([0.3, -1.0, 2.0], seed=2)
    A = 2 * torch.eye(3, dtype=torch.float64)
    H = torch.func.hessian(lambda X: (C * se.logm((X + X.mT) / 2)).sum())(A)
    assert bool(torch.isfinite(H).all())
    E = _rotated([1.0, -0.5, 0.25], seed=3)
    torch.testing.assert_close(
        (H * E).sum((-2, -1)), _reference_hvp(se.logm, A, C, E), rtol=1e-8, atol=1e-10
    )


def test_an_infinite_second_derivative_raises_never_nan() -> None:
    """powm(A, 1.5) at a zero eigenvalue: f' = 1.5 √λ is finite (first order fine), f'' is
    infinite there."""
    A = torch.diag(torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)).requires_grad_()
    (grad,) = torch.autograd.grad(se.powm(A, 1.5).sum(), A, create_graph=True)
    assert bool(torch.isfinite(grad).all())
    with pytest.raises(se.NotDifferentiableError, match="double backward"):
        torch.autograd.grad(grad.sum(), A)
