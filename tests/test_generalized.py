"""Issue 41, first part: the generalized eigenproblem ``A v = λ B v`` (``se.eigh(A, B)``,
``se.generalized_funm``): values and vectors as ``scipy.linalg.eigh(a, b)``; gradients to
``A`` and ``B`` against 40-digit mpmath at repeated generalized eigenvalues and near ties;
``B`` refused by name where it is not positive definite; shrinkage for a covariance of
fewer samples than dimensions."""

from __future__ import annotations

from typing import Any, Callable

import pytest
import torch

import stableeig as se

F64 = torch.float64


def _randn(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _sym(seed: int, n: int) -> torch.Tensor:
    X = _randn(seed, n, n)
    return X + X.mT


def _spd(seed: int, n: int) -> torch.Tensor:
    X = _randn(seed, n, n)
    return X @ X.mT + 0.5 * torch.eye(n, dtype=F64)


def _with_spectrum(values: list[float], B: torch.Tensor, seed: int) -> torch.Tensor:
    """An ``A`` whose generalized eigenvalues with ``B`` are ``values`` (ties included)."""
    Q = torch.linalg.qr(_randn(seed, len(values), len(values)))[0]
    L = torch.linalg.cholesky(B)
    return L @ (Q * torch.tensor(values, dtype=F64)) @ Q.mT @ L.mT


def test_values_and_vectors_equal_scipy() -> None:
    scipy_linalg = pytest.importorskip("scipy.linalg")
    A = torch.stack([_sym(s, 6) for s in range(3)])
    B = _spd(10, 6)  # broadcast over A's batch
    w, V = se.eigh(A, B)
    for index in range(3):
        ws, Vs = scipy_linalg.eigh(A[index].numpy(), B.numpy())
        reference = torch.from_numpy(ws)
        assert float((w[index] - reference).abs().max() / reference.abs().max()) < 1e-12
        signs = torch.sign((V[index] * torch.from_numpy(Vs)).sum(0))
        torch.testing.assert_close(V[index] * signs, torch.from_numpy(Vs), rtol=0, atol=1e-12)
    eye = torch.eye(6, dtype=F64)
    torch.testing.assert_close(V.mT @ B @ V, eye.expand(3, 6, 6))  # B-orthonormal
    torch.testing.assert_close(A @ V, B @ V * w[..., None, :])
    torch.testing.assert_close(se.eigh(A, B=B).eigenvalues, w)  # keyword and positional


def _mp_generalized(A: Any, B: Any, f: Callable[[Any], Any]) -> tuple[Any, Any]:
    """(Σ f(λ), V f(Λ) Vᵀ) of A v = λ B v in mpmath."""
    import mpmath

    L = mpmath.cholesky(B)
    Linv = L**-1
    C = Linv * A * Linv.T
    C = (C + C.T) / 2
    E, Q = mpmath.eigsy(C)
    n = A.rows
    F = Q * mpmath.diag([f(E[i]) for i in range(n)]) * Q.T
    return sum(f(E[i]) for i in range(n)), Linv.T * F * Linv


POINTS = {
    "triple tie": ([1.0, 1.0, 1.0, 2.0, 3.0], 0),
    "two pairs": ([0.5, 0.5, 2.0, 2.0, 3.0], 1),
    "gap 1e-3": ([1.0, 1.001, 2.0, 3.0, 4.0], 2),
    "gap 1e-12": ([1.0, 1.0 + 1e-12, 2.0, 3.0, 4.0], 3),
}


@pytest.mark.parametrize("point", sorted(POINTS))
def test_gradients_to_A_and_B_equal_40_digit_mpmath_at_ties(point: str) -> None:
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 40
    values, seed = POINTS[point]
    B = _spd(20 + seed, 5)
    A = _with_spectrum(values, B, 30 + seed)
    G = _randn(40 + seed, 5, 5)
    E_A, E_B = _sym(50 + seed, 5), _sym(60 + seed, 5)
    leaf_A, leaf_B = A.clone().requires_grad_(), B.clone().requires_grad_()
    trace = se.eigh(leaf_A, leaf_B).eigenvalues.tanh().sum()
    funm = (G * se.generalized_funm(leaf_A, leaf_B, torch.tanh)).sum()
    ours = []
    for loss in (trace, funm):
        grad_A, grad_B = torch.autograd.grad(loss, (leaf_A, leaf_B), retain_graph=True)
        ours.append(float((grad_A * E_A).sum() + (grad_B * E_B).sum()))
    h = mpmath.mpf("1e-15")

    def at(t: Any) -> tuple[Any, Any]:
        shifted_A = mpmath.matrix(A.tolist()) + t * mpmath.matrix(E_A.tolist())
        shifted_B = mpmath.matrix(B.tolist()) + t * mpmath.matrix(E_B.tolist())
        total, F = _mp_generalized(shifted_A, shifted_B, mpmath.tanh)
        weights = mpmath.matrix(G.tolist())
        return total, sum(weights[i, j] * F[i, j] for i in range(5) for j in range(5))

    up, down = at(h), at(-h)
    for got, (a, b) in zip(ours, zip(up, down)):
        reference = float((a - b) / (2 * h))
        assert abs(got - reference) <= 1e-10 * max(1.0, abs(reference)), (point, got, reference)


def test_gradcheck_and_gradgradcheck_in_A_and_B_at_a_tie() -> None:
    B = _spd(70, 4)
    A = _with_spectrum([1.0, 1.0, 2.0, 3.0], B, 71)
    leaves = (A.requires_grad_(), B.requires_grad_())

    def funm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return se.generalized_funm(a, b, torch.tanh, check_symmetric=False)

    def eigenvalues(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return se.eigh(a, B=b, check_symmetric=False).eigenvalues.square().sum()

    for function in (funm, eigenvalues):
        assert torch.autograd.gradcheck(function, leaves)
        assert torch.autograd.gradgradcheck(function, leaves)


def test_a_b_that_is_not_positive_definite_is_named_and_shrinkage_repairs_it() -> None:
    A = _sym(80, 6)
    X = _randn(81, 3, 6)
    B = X.mT @ X / 3  # a covariance of 3 samples in 6 dimensions: rank 3
    with pytest.raises(
        se.NotPositiveDefiniteError, match=r"eigh: B: expected a positive definite.*shrinkage"
    ):
        se.eigh(A, B)
    w, V = se.eigh(A, B, shrinkage=0.1)
    shrunk = 0.9 * B + 0.1 * B.diagonal().mean() * torch.eye(6, dtype=F64)
    torch.testing.assert_close(A @ V, shrunk @ V * w)
    with pytest.raises(se.ShapeError, match=r"eigh: B: expected \(6, 6\) matrices like A"):
        se.eigh(A, torch.eye(5, dtype=F64))
    with pytest.raises(se.ArgumentError, match="shrinkage"):
        se.eigh(A, B, shrinkage=1.5)
    with pytest.raises(se.NotSymmetricError, match="B"):
        se.eigh(A, B + torch.triu(torch.ones(6, 6, dtype=F64), 1))
    with pytest.raises(se.NonFiniteError, match="B"):
        se.eigh(A, torch.full((6, 6), float("nan"), dtype=F64))


def test_float32_inputs_are_computed_in_float64_and_returned_in_float32() -> None:
    A, B = _sym(90, 5).float(), _spd(91, 5).float()
    w, V = se.eigh(A, B)
    assert w.dtype == V.dtype == torch.float32
    reference = se.eigh(A.double(), B.double())
    torch.testing.assert_close(w, reference.eigenvalues.float())


def _generalized_loss(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """Basis-free: the top-2 eigenvalues and the B-orthogonal projector onto their space."""
    w, V = se.eigh(A, B)
    return w[..., -2:].sum(-1) + ((V[..., :, -2:] @ V[..., :, -2:].mT) ** 2).sum((-2, -1))


def test_torch_func_grad_and_vmap_equal_autograd() -> None:
    A = torch.stack([_sym(s, 5) for s in range(3)])
    B = torch.stack([_spd(10 + s, 5) for s in range(3)])
    leaf_A, leaf_B = A.clone().requires_grad_(), B.clone().requires_grad_()
    _generalized_loss(leaf_A, leaf_B).sum().backward()
    grad_A, grad_B = torch.func.vmap(torch.func.grad(_generalized_loss, argnums=(0, 1)))(A, B)
    torch.testing.assert_close(grad_A, leaf_A.grad)
    torch.testing.assert_close(grad_B, leaf_B.grad)


def test_compiled_whole_equals_eager() -> None:
    A, B = _sym(0, 5), _spd(1, 5)
    torch._dynamo.reset()
    compiled = torch.compile(_generalized_loss, fullgraph=True, backend="aot_eager")
    leaves = [(A.clone().requires_grad_(), B.clone().requires_grad_()) for _ in range(2)]
    compiled(*leaves[0]).backward()
    _generalized_loss(*leaves[1]).backward()
    torch.testing.assert_close(leaves[0][0].grad, leaves[1][0].grad)
    torch.testing.assert_close(leaves[0][1].grad, leaves[1][1].grad)
