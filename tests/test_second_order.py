"""Exact second order at tied eigenvalues (issue 28): the second-order Daleckii–Krein backward
(second divided differences f[λᵢ, λₖ, λⱼ]) for every built-in spectral function; gradgradcheck
at 2I, at one tied pair and away from ties; Hessian-vector products at gaps 1e-9 … 1e-12
against fourth-order differences of the (exact) first-order gradient; an infinite second
derivative raises instead of returning NaN."""

from __future__ import annotations

from typing import Any, Callable

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


GAPS = [0.0, 1e-12, 1e-10, 1e-9, 1e-8, 1e-7, 1e-6, 2e-6, 3e-6, 6e-6, 1e-5, 1e-4, 1e-2]


@pytest.mark.parametrize("gap", GAPS)
@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_hessian_vector_products_at_and_near_ties(name: str, gap: float) -> None:
    """A dense grid of gaps through the switch between the tie rule and the quotient
    (``∛eps`` ≈ 6e-6 relative): 0.8.1 was off by 1.6e-7 … 4.8e-7 at 1e-6 … 3e-6."""
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


def _third_point(
    x: torch.Tensor, y: torch.Tensor, z: torch.Tensor,
    Lxy: torch.Tensor, Lxz: torch.Tensor, Lyz: torch.Tensor,
    function: Any, delta: torch.Tensor,
) -> torch.Tensor:  # fmt: skip
    """``f[x, y, z]`` from the first divided differences: the quotient
    ``(L[p, r] - L[q, r]) / (p - q)`` over the pair farthest apart, or, where the three lie
    within ``δ``, ``f''(c) / 2`` at their centroid (a scheme independent of the library's)."""
    from stableeig._autograd import _elementwise_derivative

    gxy, gxz, gyz = x - y, x - z, y - z
    axy, axz, ayz = gxy.abs(), gxz.abs(), gyz.abs()
    use_xy = (axy >= axz) & (axy >= ayz)
    use_xz = ~use_xy & (axz >= ayz)
    numerator = torch.where(use_xy, Lxz - Lyz, torch.where(use_xz, Lxy - Lyz, Lxy - Lxz))
    gap = torch.where(use_xy, gxy, torch.where(use_xz, gxz, gyz))
    close = torch.maximum(torch.maximum(axy, axz), ayz) <= delta
    quotient = numerator / torch.where(close, torch.ones_like(gap), gap)
    centroid = (x + y + z) / 3
    second = _elementwise_derivative(
        lambda t: _elementwise_derivative(function.values, t), centroid
    )
    return torch.where(close, second / 2, quotient)


def second_divided_differences(w: torch.Tensor, function: Any) -> torch.Tensor:
    """The reference ``T[i, k, j] = f[λᵢ, λₖ, λⱼ]`` (..., n, n, n), the n³ tensor that
    ``contract_second_differences`` never forms."""
    from stableeig._autograd import _tie_scale

    L = function.loewner(w)
    x, y, z = w[..., :, None, None], w[..., None, :, None], w[..., None, None, :]
    Lxy, Lxz, Lyz = L[..., :, :, None], L[..., :, None, :], L[..., None, :, :]
    return _third_point(x, y, z, Lxy, Lxz, Lyz, function, _tie_scale(w)[..., None])


def _contracted_differences(w: torch.Tensor, function: Any) -> torch.Tensor:
    """The same tensor read off the library's contraction: with ``X`` all ``e_k`` and ``Y``
    all ones, ``C[a, b] = f[λₐ, λ_b, λ_k]``."""
    from stableeig._autograd import contract_second_differences

    n = w.shape[-1]
    eye, ones = torch.eye(n, dtype=w.dtype), torch.ones(n, n, dtype=w.dtype)
    return torch.stack(
        [contract_second_differences(w, function, eye[k].expand(n, n), ones) for k in range(n)],
        dim=-1,
    )


MPMATH = {
    "logm": "log",
    "expm": "exp",
    "sqrtm": "sqrt",
    "inv_sqrtm": "inv_sqrt",
    "powm(0.7)": "pow 0.7",
    "powm(-1.5)": "pow -1.5",
}


def _spectral_function(name: str) -> object:
    from stableeig import matrix_functions as mf
    from stableeig.spectral import INV_SQRT, SQRT

    return {
        "logm": mf.LOG,
        "expm": mf._function("expm", torch.exp, mf._exp_loewner, ""),
        "sqrtm": SQRT,
        "inv_sqrtm": INV_SQRT,
        "powm(0.7)": mf._function("powm", lambda w: w.pow(0.7), mf._pow_loewner(0.7), ""),
        "powm(-1.5)": mf._function("powm", lambda w: w.pow(-1.5), mf._pow_loewner(-1.5), ""),
    }[name]


def _exact_second_difference(name: str, x: float, y: float, z: float) -> float:
    """f[x, y, z] at 60 digits (derivatives where points coincide)."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 60
    kind = MPMATH[name]
    if kind.startswith("pow"):
        p = mpmath.mpf(kind.split()[1])

        def f(t: object) -> object:
            return t**p
    else:
        f = {"log": mpmath.log, "exp": mpmath.exp, "sqrt": mpmath.sqrt,
             "inv_sqrt": lambda t: 1 / mpmath.sqrt(t)}[kind]  # fmt: skip
    a, b, c = sorted(mpmath.mpf(v) for v in (x, y, z))

    def first(u: object, v: object) -> object:
        return (f(u) - f(v)) / (u - v) if u != v else mpmath.diff(f, u)

    if a == c:
        return float(mpmath.diff(f, a, 2) / 2)
    return float((first(b, c) - first(a, b)) / (c - a))


@pytest.mark.parametrize("name", sorted(MPMATH))
def test_second_divided_differences_on_a_dense_grid_of_gaps(name: str) -> None:
    """Every triple of a tight cluster and of a pair beside a far point, relative gaps 1e-14
    … 1e-2 (four per decade), as the library's contraction computes them and as the
    independent reference does: within 1e-9 of 60-digit values (``eps^(2/3)`` ≈ 4e-11 is
    the schemes' balance; the largest errors measured: 4.2e-10 and 1.8e-10)."""
    function = _spectral_function(name)
    worst = 0.0
    for exponent in range(-56, -7):
        gap = 10.0 ** (exponent / 4)
        for w in ([1.0, 1.0 + gap, 2.5], [1.0, 1.0 + gap, 1.0 + 2 * gap],
                  [1.0, 1.0 + gap, 1.0 + 1.5 * gap]):  # fmt: skip
            points = torch.tensor(w, dtype=torch.float64)
            reference = second_divided_differences(points, function)
            used = _contracted_differences(points, function)  # what the library computes
            values = points.tolist()
            for i, j, k in [(0, 1, 2), (0, 0, 1), (0, 1, 1), (1, 1, 2), (2, 2, 2)]:
                exact = _exact_second_difference(name, values[i], values[j], values[k])
                for T in (reference, used):
                    worst = max(worst, abs(float(T[i, j, k]) - exact) / abs(exact))
    assert worst < 1e-9, worst


@pytest.mark.parametrize("spectrum", ["distinct", "one cluster", "all tied", "two clusters"])
def test_the_contraction_equals_the_full_tensor(spectrum: str) -> None:
    """contract_second_differences (two matrix products and a band of near pairs) against
    the n³ tensor it replaces, batched, with a tie pattern per matrix."""
    from stableeig._autograd import contract_second_differences
    from stableeig.matrix_functions import LOG

    n = 7
    base = torch.linspace(0.5, 3.0, n, dtype=torch.float64)
    if spectrum == "one cluster":
        base[2:5] = 1.0 + torch.tensor([0.0, 1e-9, 3e-7], dtype=torch.float64)
    elif spectrum == "all tied":
        base[:] = 2.0
    elif spectrum == "two clusters":
        base[:3], base[4:] = 0.7, 2.0 + torch.arange(3, dtype=torch.float64) * 1e-8
    w = torch.stack([base, base.flip(0).sort().values * 1.5])  # a batch of two
    g = torch.Generator().manual_seed(0)
    X, Y = torch.randn(2, 2, n, n, generator=g, dtype=torch.float64)
    T = second_divided_differences(w, LOG)
    expected = torch.einsum("...abj,...aj,...bj->...ab", T, X, Y)
    got = contract_second_differences(w, LOG, X, Y)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_the_contraction_is_finite_where_only_the_third_derivative_is_infinite() -> None:
    """powm(A, 2.5) at a zero eigenvalue: f'' = 3.75 √λ is 0 there, f''' infinite; the
    expansion's linear term must not form Inf · 0."""
    from stableeig import matrix_functions as mf
    from stableeig._autograd import contract_second_differences

    function = mf._function("powm", lambda w: w.pow(2.5), mf._pow_loewner(2.5), "")
    w = torch.tensor([0.0, 1.0, 1.0, 2.0], dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    X, Y = torch.randn(2, 4, 4, generator=g, dtype=torch.float64)
    got = contract_second_differences(w, function, X, Y)
    T = second_divided_differences(w, function)
    expected = torch.einsum("abj,aj,bj->ab", T, X, Y)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
