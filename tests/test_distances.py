"""Gaussian and SPD distances (issue 17): closed forms, eigh-based float64 references for
values and gradients, invariances, and what happens where peers return NaN."""

from __future__ import annotations

from typing import Callable
from unittest import mock

import pytest
import torch

import stableeig as se


def _spd(n: int, seed: int, low: float = 0.5, high: float = 3.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    Q = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))[0]
    return (Q * torch.linspace(low, high, n, dtype=torch.float64)) @ Q.T


def _eigh_function(A: torch.Tensor, f: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    w, V = torch.linalg.eigh((A + A.mT) / 2)
    return (V * f(w).unsqueeze(-2)) @ V.mT


def _reference_bw2(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    root = _eigh_function(A, torch.sqrt)
    fidelity = _eigh_function(root @ B @ root, torch.sqrt).diagonal(dim1=-2, dim2=-1).sum(-1)
    return A.trace() + B.trace() - 2 * fidelity


REFERENCES = {
    "bures_wasserstein²": (
        lambda A, B: se.bures_wasserstein(A, B, squared=True), _reference_bw2
    ),
    "log_euclidean": (
        se.log_euclidean_distance,
        lambda A, B: (_eigh_function(A, torch.log) - _eigh_function(B, torch.log)).norm(),
    ),
    "airm": (
        se.airm_distance,
        lambda A, B: _eigh_function(
            _eigh_function(A, torch.rsqrt) @ B @ _eigh_function(A, torch.rsqrt), torch.log
        ).norm(),
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_values_and_gradients_equal_eigh_references(name: str) -> None:
    ours, reference = REFERENCES[name]
    A, B = _spd(4, 0), _spd(4, 1, 1.0, 5.0)
    results = []
    for f in (ours, reference):
        a, b = A.clone().requires_grad_(True), B.clone().requires_grad_(True)
        value = f(a, b)
        value.backward()
        results.append((value.detach(), a.grad, b.grad))
    for got, expected in zip(*results):
        torch.testing.assert_close(got, expected)


def test_closed_forms_for_commuting_matrices() -> None:
    a = torch.tensor([1.0, 4.0, 9.0], dtype=torch.float64)
    b = torch.tensor([4.0, 1.0, 16.0], dtype=torch.float64)
    A, B = torch.diag(a), torch.diag(b)
    expected_bw = (a.sqrt() - b.sqrt()).square().sum().sqrt()
    torch.testing.assert_close(se.bures_wasserstein(A, B), expected_bw)
    torch.testing.assert_close(se.trace_sqrt_product(A, B), (a * b).sqrt().sum())
    torch.testing.assert_close(se.log_euclidean_distance(A, B), (a.log() - b.log()).norm())
    torch.testing.assert_close(se.airm_distance(A, B), (b / a).log().norm())
    mu1, mu2 = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    torch.testing.assert_close(se.frechet_distance(mu1, A, mu2, B), 3 + expected_bw**2)


def test_airm_is_affine_invariant_and_batched() -> None:
    A, B = _spd(4, 2), _spd(4, 3)
    X = torch.randn(4, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    torch.testing.assert_close(se.airm_distance(X @ A @ X.T, X @ B @ X.T), se.airm_distance(A, B))
    batch = se.airm_distance(torch.stack([A, B]), torch.stack([B, A]))
    torch.testing.assert_close(batch, se.airm_distance(A, B).expand(2))  # symmetric too


@pytest.mark.parametrize(
    "distance",
    [se.bures_wasserstein, se.log_euclidean_distance, se.airm_distance,
     lambda A, B: se.frechet_distance(torch.zeros(3), A, torch.zeros(3), B)],
)  # fmt: skip
def test_equal_inputs_and_the_identity_give_zero_with_a_zero_gradient(
    distance: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> None:
    for base in (torch.eye(3), _spd(3, 5).float()):  # identity: where geoopt/POT give NaN
        A = base.clone().requires_grad_(True)
        value = distance(A, base)
        value.backward()
        assert A.grad is not None
        assert float(value) == pytest.approx(0.0, abs=1e-5)
        assert float(A.grad.abs().max()) <= 1e-5


def test_float32_input_keeps_float64_accuracy_and_dtype() -> None:
    A, B = _spd(5, 6), _spd(5, 7)
    value = se.bures_wasserstein(A.float(), B.float(), squared=True)
    assert value.dtype == torch.float32
    reference = _reference_bw2(A.float().double(), B.float().double())
    assert float((value.double() - reference).abs()) <= 1e-6 * float(reference.abs())


def test_rank_deficient_covariances_raise_instead_of_nan() -> None:
    A = torch.diag(torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)).requires_grad_(True)
    value = se.bures_wasserstein(A, torch.eye(3, dtype=torch.float64), squared=True)
    torch.testing.assert_close(value, torch.tensor(2.0, dtype=torch.float64))  # forward fine
    with pytest.raises(se.NotDifferentiableError, match="infinite"):
        value.backward()
    ridged = (A.detach() + 1e-6 * torch.eye(3, dtype=torch.float64)).requires_grad_(True)
    se.bures_wasserstein(ridged, torch.eye(3, dtype=torch.float64), squared=True).backward()
    assert ridged.grad is not None and bool(torch.isfinite(ridged.grad).all())


def test_shape_errors() -> None:
    with pytest.raises(se.ShapeError, match="expected matrices of A's size 3"):
        se.bures_wasserstein(torch.eye(3), torch.eye(2))
    with pytest.raises(se.ShapeError, match="mu1: expected a mean of size 3"):
        se.frechet_distance(torch.zeros(2), torch.eye(3), torch.zeros(3), torch.eye(3))


def test_the_fid_forward_without_gradient_takes_a_cholesky_factor_and_agrees() -> None:
    """Without a gradient a positive definite Σ₁ is factored (Cholesky) instead of
    decomposed; the value equals the square-root path's, and a semidefinite Σ₁ (no
    factor) falls back to it, still exact."""
    g = torch.Generator().manual_seed(0)
    n = 24
    for samples in (3 * n, n // 2):  # positive definite, then rank-deficient Σ₁
        x1 = torch.randn(samples, n, generator=g, dtype=torch.float64)
        x2 = torch.randn(3 * n, n, generator=g, dtype=torch.float64)
        m1, m2, s1, s2 = x1.mean(0), x2.mean(0), torch.cov(x1.T), torch.cov(x2.T)
        calls: list[bool] = []

        def factor(A: torch.Tensor, calls: list[bool] = calls, _f=torch.linalg.cholesky_ex):  # type: ignore[no-untyped-def]
            result = _f(A)
            calls.append(bool((result.info == 0).all()))
            return result

        with torch.no_grad(), mock.patch.object(torch.linalg, "cholesky_ex", factor):
            forward_only = se.frechet_distance(m1, s1, m2, s2)
        sigma2 = s2.clone().requires_grad_(True)
        with_gradient = se.frechet_distance(m1, s1, m2, sigma2)  # the square-root path
        assert calls == [samples > n]  # factored where Σ₁ is positive definite
        # rank-deficient: n - samples zero eigenvalues come out as ±round-off, whose square
        # roots (~1e-8 each) differ between any two computations of the same value
        rel = 1e-12 if samples > n else 1e-7
        assert float(forward_only) == pytest.approx(float(with_gradient), rel=rel)


def test_the_forward_only_fid_still_names_an_indefinite_argument() -> None:
    A = torch.diag(torch.tensor([2.0, 1.0, 1.0], dtype=torch.float64))
    B = torch.diag(torch.tensor([1.0, -1.0, 1.0], dtype=torch.float64))
    mu = torch.zeros(3, dtype=torch.float64)
    with torch.no_grad():
        with pytest.raises(se.NotPositiveDefiniteError, match="sigma2"):
            se.frechet_distance(mu, A, mu, B)
        with pytest.raises(se.NotPositiveDefiniteError, match="sigma1"):
            se.frechet_distance(mu, B, mu, A)
