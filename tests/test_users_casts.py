"""The users' casts and names (issue 39.5): a float32 statistic cast to float64 is refused
with the reason and the way out; errors name the user's argument; identical feature sets
are at distance 0; ``eigh`` reads one triangle like torch; a negative ``dim`` counts every
axis (tests/test_means.py); shape propagation on meta (tests/test_meta.py)."""

from __future__ import annotations

import pytest
import torch

import stableeig as se


def _float32_covariance() -> torch.Tensor:
    """What users upcast: a float32 covariance of fewer samples than dimensions, whose
    asymmetry and negative eigenvalues are float32 round-off."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20, 64, generator=g)
    S = torch.cov(x.T)
    return S + 2e-7 * torch.randn(64, 64, generator=g) * S.abs().max()


def test_an_upcast_float32_statistic_is_refused_with_the_reason() -> None:
    S = _float32_covariance()
    se.sqrtm((S + S.mT) / 2)  # the float32 original is judged at its own round-off
    with pytest.raises(se.NotSymmetricError, match=r"that is float32 round-off.*check_symmetric"):
        se.sqrtm(S.double())
    symmetric = ((S + S.mT) / 2).double()
    w = torch.linalg.eigvalsh(symmetric)
    if bool((w < -1.5e-8 * w.abs().max()).any()):  # below float64's tolerance, not float32's
        with pytest.raises(se.NotPositiveDefiniteError, match="that is float32 round-off"):
            se.sqrtm(symmetric)


def test_a_float64_matrix_that_is_truly_not_symmetric_gets_no_float32_hint() -> None:
    A = torch.eye(3, dtype=torch.float64)
    A[0, 1] = 0.5
    with pytest.raises(se.NotSymmetricError) as error:
        se.sqrtm(A)
    assert "float32 round-off" not in str(error.value)


def test_frechet_distance_from_features_names_sigma2_and_is_0_for_identical_sets() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(100, 256, generator=g)
    assert float(se.frechet_distance_from_features(x, x.clone())) == 0.0  # 0.8.1: 1.4e-14
    leaf = x.clone().requires_grad_()
    d = se.frechet_distance_from_features(leaf, x)
    d.backward()
    assert float(d) == 0.0 and leaf.grad is not None
    assert float(leaf.grad.abs().max()) < 1e-12  # a minimum: the gradient is round-off
    assert float(se.frechet_distance_from_features(x, x + 1)) > 0
    with pytest.raises(se.NotPositiveDefiniteError, match="frechet_distance_from_features: sigma2"):
        se.frechet_distance_from_features(x, mu2=torch.zeros(256), sigma2=-torch.eye(256))


@pytest.mark.parametrize("UPLO", ["L", "U"])
def test_eigh_reads_one_triangle_as_torch(UPLO: str) -> None:
    g = torch.Generator().manual_seed(2)
    X = torch.randn(3, 5, 5, generator=g, dtype=torch.float64)
    A = X @ X.mT
    garbage = torch.randn(3, 5, 5, generator=g, dtype=torch.float64)
    half = A.tril() + garbage.triu(1) if UPLO == "L" else A.triu() + garbage.tril(-1)
    w, V = se.eigh(half, UPLO=UPLO)
    expected = torch.linalg.eigh(half, UPLO=UPLO)
    torch.testing.assert_close(w, expected.eigenvalues)
    torch.testing.assert_close((V * w[..., None, :]) @ V.mT, A)
    leaf = half.clone().requires_grad_()
    se.eigh(leaf, UPLO=UPLO).eigenvalues.sum().backward()
    assert leaf.grad is not None
    ignored = leaf.grad.triu(1) if UPLO == "L" else leaf.grad.tril(-1)
    assert float(ignored.abs().max()) == 0.0  # the other triangle is not read
    with pytest.raises(se.ArgumentError, match="UPLO"):
        se.eigh(A, UPLO="X")
    with pytest.raises(se.NotSymmetricError):
        se.eigh(half)  # without UPLO both triangles are read, and checked


def test_airm_mean_beyond_the_resolvable_condition_names_it() -> None:
    """At condition 1e12 the Karcher gradient is resolved only to ~eps · 1e12: one error
    naming X, the condition and the tolerance that converges."""
    g = torch.Generator().manual_seed(0)
    Q = torch.linalg.qr(torch.randn(5, 5, generator=g, dtype=torch.float64))[0]
    X = []
    for i in range(4):
        Qi = torch.linalg.qr(Q + 0.01 * torch.randn(5, 5, generator=g, dtype=torch.float64))[0]
        X.append((Qi * torch.logspace(0, 12, 5, dtype=torch.float64) * (1 + 0.1 * i)) @ Qi.T)
    stack = torch.stack(X)
    with pytest.raises(se.StableEigError, match=r"airm_mean: X: .*condition number 1e\+12"):
        se.airm_mean(stack)
    G = se.airm_mean(stack, tolerance=1e-3)
    assert bool(torch.isfinite(G).all())
