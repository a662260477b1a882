"""SPD means and geodesics (issue 18): closed forms (commuting matrices, two matrices),
the fixed-point equation, affine equivariance, eigh-based float64 references, gradients
(gradcheck and a value at tied spectra where eigh autograd is NaN) and errors."""

from __future__ import annotations

from typing import Callable

import pytest
import torch

import stableeig as se


def _spd(N: int, n: int, seed: int, low: float = 0.3, high: float = 4.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    Q = torch.linalg.qr(torch.randn(N, n, n, generator=g, dtype=torch.float64))[0]
    w = low + (high - low) * torch.rand(N, n, generator=g, dtype=torch.float64)
    return (Q * w.unsqueeze(-2)) @ Q.mT


def _eigh_function(A: torch.Tensor, f: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    w, V = torch.linalg.eigh((A + A.mT) / 2)
    return (V * f(w).unsqueeze(-2)) @ V.mT


def _gradient_norm(G: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """‖mean log(G^{-1/2} X G^{-1/2})‖_F by plain eigh: 0 at the Karcher mean."""
    root = _eigh_function(G, torch.rsqrt)
    return _eigh_function(root @ X @ root, torch.log).mean(0).norm()


def test_commuting_matrices_have_the_log_euclidean_mean_after_one_step() -> None:
    g = torch.Generator().manual_seed(0)
    Q = torch.linalg.qr(torch.randn(5, 5, generator=g, dtype=torch.float64))[0]
    w = 0.1 + 5 * torch.rand(7, 5, generator=g, dtype=torch.float64)
    X = (Q * w.unsqueeze(-2)) @ Q.T  # seven matrices with the same eigenvectors
    expected = (Q * w.log().mean(0).exp()) @ Q.T
    torch.testing.assert_close(se.log_euclidean_mean(X), expected)
    torch.testing.assert_close(se.airm_mean(X, steps=1), expected)
    torch.testing.assert_close(se.airm_mean(X), expected)


def test_mean_of_two_is_the_geodesic_midpoint() -> None:
    A, B = _spd(2, 4, 1)
    root, inverse = _eigh_function(A, torch.sqrt), _eigh_function(A, torch.rsqrt)
    midpoint = root @ _eigh_function(inverse @ B @ inverse, torch.sqrt) @ root
    torch.testing.assert_close(se.airm_geodesic(A, B, 0.5), midpoint)
    torch.testing.assert_close(se.airm_mean(torch.stack([A, B])), midpoint, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(se.airm_geodesic(A, B, 0.0), A)
    torch.testing.assert_close(se.airm_geodesic(A, B, 1.0), B)
    for t in (0.25, 0.7, 1.5):  # constant speed: d(A, γ(t)) = |t| d(A, B)
        torch.testing.assert_close(
            se.airm_distance(A, se.airm_geodesic(A, B, t)), t * se.airm_distance(A, B)
        )


def test_converged_mean_solves_the_fixed_point_equation_and_is_affine_equivariant() -> None:
    X = _spd(9, 5, 2)
    G = se.airm_mean(X, tolerance=1e-12)
    assert float(_gradient_norm(G, X)) < 1e-11
    assert float(_gradient_norm(se.airm_mean(X, steps=1), X)) > 1e-3  # one step is not there
    M = torch.randn(5, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    congruent = M @ X @ M.T
    torch.testing.assert_close(se.airm_mean(congruent, tolerance=1e-12), M @ G @ M.T)
    G2 = se.airm_mean(X, steps=2)  # each iterate is equivariant, not only the limit
    torch.testing.assert_close(se.airm_mean(congruent, steps=2), M @ G2 @ M.T)
    torch.testing.assert_close(se.airm_mean(X.flip(0), tolerance=1e-12), G)


def test_dim_batches_and_dtype() -> None:
    X = _spd(12, 3, 4).reshape(3, 4, 3, 3)
    per_row = torch.stack([se.airm_mean(row) for row in X])
    torch.testing.assert_close(se.airm_mean(X, dim=1), per_row)
    torch.testing.assert_close(se.airm_mean(X.transpose(0, 1), dim=0), per_row)
    torch.testing.assert_close(se.airm_mean(X, dim=-3), per_row)  # as torch counts axes
    with pytest.raises(se.ArgumentError, match=r"got -1 \(a matrix axis\)"):
        se.airm_mean(X, dim=-1)  # 0.8.1 read -1 as the last batch axis
    torch.testing.assert_close(
        se.log_euclidean_mean(X, dim=1), torch.stack([se.log_euclidean_mean(r) for r in X])
    )
    single = se.airm_mean(X.float(), dim=1)
    assert single.dtype == torch.float32
    torch.testing.assert_close(single.double(), per_row, rtol=1e-6, atol=1e-6)


def test_weights_are_repetitions_and_equal_weights_the_plain_mean() -> None:
    X = _spd(4, 3, 15)
    repeated = torch.cat([X, X[:1], X[:1]])  # weight 3 on the first matrix
    weights = torch.tensor([3.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    for mean in (se.airm_mean, se.log_euclidean_mean):
        torch.testing.assert_close(mean(X, weights=weights), mean(repeated))
        torch.testing.assert_close(mean(X, weights=torch.full((4,), 0.5)), mean(X))
    torch.testing.assert_close(  # a weight of 0 drops the matrix
        se.airm_mean(X, weights=torch.tensor([0.0, 1.0, 1.0, 1.0])), se.airm_mean(X[1:])
    )
    torch.testing.assert_close(  # weights t, 1 - t on two matrices: the geodesic at 1 - t
        se.airm_mean(X[:2], weights=torch.tensor([0.7, 0.3])), se.airm_geodesic(X[0], X[1], 0.3)
    )
    batched = X.reshape(2, 2, 3, 3)
    torch.testing.assert_close(
        se.airm_mean(batched, dim=1, weights=torch.tensor([0.2, 0.8])),
        torch.stack([se.airm_mean(b, weights=torch.tensor([0.2, 0.8])) for b in batched]),
    )
    with pytest.raises(se.ShapeError, match=r"weights: expected shape \(4,\)"):
        se.airm_mean(X, weights=torch.ones(3))
    with pytest.raises(se.ArgumentError, match="weights: expected finite values >= 0"):
        se.log_euclidean_mean(X, weights=torch.tensor([1.0, -1.0, 1.0, 1.0]))
    with pytest.raises(se.ArgumentError, match="positive sum"):
        se.airm_mean(X, weights=torch.zeros(4))


def test_gradcheck_float64() -> None:
    X = _spd(3, 3, 5).requires_grad_(True)
    sym = lambda X: (X + X.mT) / 2  # noqa: E731
    assert torch.autograd.gradcheck(lambda X: se.airm_mean(sym(X), steps=3), (X,))
    assert torch.autograd.gradcheck(lambda X: se.log_euclidean_mean(sym(X)), (X,))
    t = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    A, B = _spd(2, 3, 6)
    assert torch.autograd.gradcheck(
        lambda A, B, t: se.airm_geodesic(sym(A), sym(B), t),
        (A.requires_grad_(True), B.requires_grad_(True), t),
    )


def test_gradient_at_equal_tied_matrices_is_the_arithmetic_mean_where_eigh_is_nan() -> None:
    # N copies of the identity: every eigenvalue tied. The mean's differential there is the
    # arithmetic mean of the perturbations, so d⟨Ḡ, G⟩/dXᵢ = sym(Ḡ) / N.
    N, n = 4, 3
    X = torch.eye(n, dtype=torch.float64).repeat(N, 1, 1).requires_grad_(True)
    Gbar = torch.randn(n, n, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    (se.airm_mean(X, steps=2) * Gbar).sum().backward()
    assert X.grad is not None
    torch.testing.assert_close(X.grad, ((Gbar + Gbar.T) / 2 / N).expand(N, n, n))
    naive = X.detach().clone().requires_grad_(True)  # the same flow by eigh autograd
    G = naive.mean(0)
    inverse = _eigh_function(G, torch.rsqrt)
    tangent = _eigh_function(inverse @ naive @ inverse, torch.log).mean(0)
    root = _eigh_function(G, torch.sqrt)
    ((root @ _eigh_function(tangent, torch.exp) @ root) * Gbar).sum().backward()
    assert naive.grad is not None and not bool(torch.isfinite(naive.grad).all())


def test_errors_name_what_was_expected() -> None:
    X = _spd(3, 3, 8)
    with pytest.raises(
        se.ArgumentError, match=r"dim: expected an axis .* in \[0, 0\] or \[-3, -3\]"
    ):
        se.airm_mean(X, dim=1)
    with pytest.raises(se.ArgumentError, match="dim"):
        se.log_euclidean_mean(X, dim=True)  # type: ignore[arg-type]
    with pytest.raises(se.ShapeError, match=r"expected matrices to average, \(N, n, n\)"):
        se.airm_mean(X[0])
    with pytest.raises(se.ShapeError, match="at least one matrix"):
        se.airm_mean(X[:0])
    with pytest.raises(se.ShapeError):
        se.airm_mean(torch.ones(3, 2, 3))
    with pytest.raises(se.ArgumentError, match="tolerance"):
        se.airm_mean(X, tolerance=0.0)
    with pytest.raises(se.ArgumentError, match="steps"):
        se.airm_mean(X, steps=-1)
    with pytest.raises(se.NotPositiveDefiniteError):
        se.airm_mean(-X)
    skewed = X.clone()
    skewed[0, 0, 1] += 1.0  # the congruences symmetrize: checked once, on entry
    for function in (se.airm_mean, se.log_euclidean_mean):
        with pytest.raises(se.NotSymmetricError, match="X: expected a symmetric matrix"):
            function(skewed)
    with pytest.raises(se.NotSymmetricError, match="B: expected a symmetric matrix"):
        se.airm_geodesic(X[1], skewed[0], 0.5)
    with pytest.raises(se.NonFiniteError):
        se.airm_mean(torch.full_like(X, float("inf")))
    with pytest.raises(se.ShapeError, match="A's size 3"):
        se.airm_geodesic(X[0], torch.eye(4, dtype=torch.float64), 0.5)
    spread = _spd(6, 4, 9, low=1e-3, high=1e3)
    with pytest.raises(se.StableEigError, match="did not converge in max_steps=2"):
        se.airm_mean(spread, max_steps=2, tolerance=1e-14)
    before = X.clone()
    se.airm_mean(X)
    assert torch.equal(X, before)  # nothing the user passed is modified


def test_equal_to_pyriemann_where_it_is_installed() -> None:
    mean = pytest.importorskip("pyriemann.utils.mean")  # optional peer (pip --no-deps)
    X = _spd(10, 5, 14, low=0.05, high=8.0)
    reference = mean.mean_riemann(X.numpy(), tol=1e-13, maxiter=500)
    torch.testing.assert_close(
        se.airm_mean(X, tolerance=1e-13), torch.from_numpy(reference), rtol=1e-10, atol=1e-10
    )
    torch.testing.assert_close(
        se.log_euclidean_mean(X), torch.from_numpy(mean.mean_logeuclid(X.numpy()))
    )
    w = torch.linspace(0.1, 2.0, 10, dtype=torch.float64)
    weighted = mean.mean_riemann(X.numpy(), tol=1e-13, maxiter=500, sample_weight=w.numpy())
    torch.testing.assert_close(
        se.airm_mean(X, weights=w, tolerance=1e-13),
        torch.from_numpy(weighted),
        rtol=1e-10,
        atol=1e-10,
    )
