"""Functions of singular values (issue 40, first part): ``svd_funm`` and ``polar`` with the
exact generalized Daleckii–Krein gradient, finite at tied singular values (I, exact
rotations, diag(2, 1, 1)) where ``torch.linalg.svd`` autograd is NaN; rectangular, batched,
float32 in float64 compute; a zero singular value raises only where the result is not
unique; the symmetric positive definite case equals ``funm``."""

from __future__ import annotations

import pytest
import torch

import stableeig as se


def _rotation(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    Q = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))[0]
    return Q * torch.linalg.det(Q).sign()


def _randn(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _diagonal(*values: float) -> torch.Tensor:
    return torch.diag(torch.tensor(values, dtype=torch.float64))


POINTS = {
    "I3": lambda: torch.eye(3, dtype=torch.float64),
    "diag(2,1,1)": lambda: _diagonal(2.0, 1.0, 1.0),
    "rotation": lambda: _rotation(3, 0),
    "rotated tie": lambda: _rotation(3, 1) @ _diagonal(3.0, 1.0, 1.0) @ _rotation(3, 2),
    "near tie 1e-9": lambda: _diagonal(1.0, 1.0 + 1e-9, 2.0),
    "tall 5x3": lambda: _randn(3, 5, 3),
    "wide 2x4": lambda: _randn(4, 2, 4),
    "batch": lambda: _randn(5, 2, 3, 4, 3),
}


@pytest.mark.parametrize("point", sorted(POINTS))
@pytest.mark.parametrize("function", ["polar", "tanh", "square"])
def test_gradcheck_at_ties_and_away(point: str, function: str) -> None:
    apply = {
        "polar": se.polar,
        "tanh": lambda X: se.svd_funm(X, torch.tanh),
        "square": lambda X: se.svd_funm(X, torch.square, lambda s: 2 * s),
    }[function]
    A = POINTS[point]().requires_grad_()
    assert torch.autograd.gradcheck(apply, (A,))


@pytest.mark.parametrize("point", ["I3", "diag(2,1,1)"])
def test_torch_svd_autograd_is_nan_where_ours_is_exact(point: str) -> None:
    A = POINTS[point]()
    G = torch.randn(3, 3, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    leaf = A.clone().requires_grad_()
    U, _, Vh = torch.linalg.svd(leaf)
    (G * (U @ Vh)).sum().backward()
    assert leaf.grad is not None and not bool(torch.isfinite(leaf.grad).all())
    ours = A.clone().requires_grad_()
    (G * se.polar(ours)).sum().backward()
    assert ours.grad is not None
    # at A with singular values s and U = V = I: ∂/∂A of ⟨G, polar⟩ = D⁺ ∘ skew(G)
    s = torch.linalg.svdvals(A)
    skew = (G - G.T) / 2
    torch.testing.assert_close(ours.grad, 2 / (s[:, None] + s[None, :]) * skew)


def test_values_and_the_symmetric_positive_definite_case() -> None:
    g = torch.Generator().manual_seed(7)
    X = torch.randn(6, 4, generator=g, dtype=torch.float64)
    U, s, Vh = torch.linalg.svd(X, full_matrices=False)
    torch.testing.assert_close(se.polar(X), U @ Vh)
    torch.testing.assert_close(se.svd_funm(X, torch.tanh), (U * torch.tanh(s)) @ Vh)
    torch.testing.assert_close(se.polar(X.mT), (U @ Vh).mT)
    Q = se.polar(X)
    torch.testing.assert_close(Q.mT @ Q, torch.eye(4, dtype=torch.float64))
    S = X.mT @ X + torch.eye(4, dtype=torch.float64)  # SPD: singular values = eigenvalues
    leaf_a, leaf_b = S.clone().requires_grad_(), S.clone().requires_grad_()
    G = torch.randn(4, 4, generator=g, dtype=torch.float64)
    (G * se.svd_funm(leaf_a, torch.sqrt)).sum().backward()
    (G * se.sqrtm(leaf_b)).sum().backward()
    torch.testing.assert_close(se.svd_funm(S, torch.sqrt), se.sqrtm(S))
    assert leaf_a.grad is not None and leaf_b.grad is not None
    # the same derivative in every symmetric direction (sqrtm's gradient is symmetric)
    torch.testing.assert_close((leaf_a.grad + leaf_a.grad.mT) / 2, leaf_b.grad)


def test_float32_input_is_computed_in_float64_and_returned_in_float32() -> None:
    A = torch.eye(3)
    Q = se.polar(A.requires_grad_())
    assert Q.dtype == torch.float32
    Q.sum().backward()
    assert A.grad is not None and A.grad.dtype == torch.float32
    assert bool(torch.isfinite(A.grad).all())


def test_a_zero_singular_value_raises_only_where_the_result_is_not_unique() -> None:
    A = torch.diag(torch.tensor([2.0, 1.0, 0.0], dtype=torch.float64)).requires_grad_()
    se.polar(A)  # a value: one of the orthogonal factors
    with pytest.raises(se.NotDifferentiableError, match=r"polar backward: expected σᵢ \+ σⱼ > 0"):
        se.polar(A).sum().backward()
    B = A.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda X: se.svd_funm(X, torch.tanh), (B,))  # f(0) = 0


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        (torch.zeros(3), se.ShapeError, r"polar: A: expected \(\.\.\., m, n\)"),
        (torch.zeros(3, 0), se.ShapeError, "m, n >= 1"),
        (torch.zeros(3, 3, dtype=torch.int64), se.DTypeError, "real floating dtype"),
        (torch.full((2, 2), float("nan")), se.NonFiniteError, "polar: A: expected finite"),
        ([[1.0]], se.ShapeError, "got list"),
    ],
)
def test_bad_input_is_refused_by_name(value: object, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        se.polar(value)  # type: ignore[arg-type]


def test_vmap_and_compile_agree_with_eager() -> None:
    A = torch.randn(4, 3, 3, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    eager = se.polar(A)
    compiled = torch.compile(se.polar, backend="eager")(A)
    torch.testing.assert_close(compiled, eager)
    torch.testing.assert_close(torch.func.vmap(se.polar)(A), eager)
    G = _randn(9, 3, 3)
    grads = torch.func.vmap(torch.func.grad(lambda X: (G * se.polar(X)).sum()))(A)
    for index in range(4):
        leaf = A[index].clone().requires_grad_()
        (G * se.polar(leaf)).sum().backward()
        torch.testing.assert_close(grads[index], leaf.grad)
