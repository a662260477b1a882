"""The Fréchet distance from features (issue 30): equal to the covariance-level value and to
the FID formula, exact gradients at batch < dimension (gradcheck), reference statistics, and
the covariance-level error that points to it."""

from __future__ import annotations

import pytest
import torch

import stableeig as se


def _features(n: int, d: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(d, d, generator=g, dtype=torch.float64) / d**0.5
    return torch.randn(n, d, generator=g, dtype=torch.float64) @ mixing + shift


def _statistics(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x.mean(0), torch.cov(x.T)


def _mpmath_fid(x1: torch.Tensor, x2: torch.Tensor) -> float:
    """The FID of the two batches with the fidelity from 40-digit singular values."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 40
    c1, c2 = x1 - x1.mean(0), x2 - x2.mean(0)
    singular = mpmath.svd_r(mpmath.matrix((c1 @ c2.T).tolist()), compute_uv=False)
    fidelity = sum(singular) / mpmath.sqrt((len(x1) - 1) * (len(x2) - 1))
    traces = (c1.square().sum() / (len(x1) - 1) + c2.square().sum() / (len(x2) - 1)).item()
    return float((x1.mean(0) - x2.mean(0)).square().sum().item() + traces - 2 * fidelity)


@pytest.mark.parametrize(("n1", "n2", "d"), [(8, 12, 32), (40, 40, 16), (6, 50, 20), (30, 5, 10)])
def test_value_equals_a_high_precision_reference_and_the_covariance_level_function(
    n1: int, n2: int, d: int
) -> None:
    """Exact to float64 against 40-digit singular values; the covariance-level function
    agrees to 1e-10 where the covariances have full rank and to its sqrt(eps) floor (square
    roots of round-off eigenvalues) where they do not."""
    x1, x2 = _features(n1, d, 0), _features(n2, d, 1, shift=0.3)
    ours = float(se.frechet_distance_from_features(x1, x2))
    assert ours == pytest.approx(_mpmath_fid(x1, x2), rel=1e-12)
    covariance_level = float(se.frechet_distance(*_statistics(x1), *_statistics(x2)))
    full_rank = min(n1, n2) > d
    assert ours == pytest.approx(covariance_level, rel=1e-10 if full_rank else 1e-7)
    mu2, sigma2 = _statistics(x2)
    from_statistics = float(se.frechet_distance_from_features(x1, mu2=mu2, sigma2=sigma2))
    assert from_statistics == pytest.approx(ours, rel=1e-10 if n2 > d else 1e-7)


@pytest.mark.parametrize(("n1", "n2", "d"), [(5, 7, 12), (6, 6, 4)])
def test_gradients_are_exact_at_batch_smaller_than_dimension(n1: int, n2: int, d: int) -> None:
    """gradcheck (central differences in float64) with respect to both feature batches,
    where the covariance-level backward must raise (both covariances rank-deficient)."""
    x1 = _features(n1, d, 2).requires_grad_()
    x2 = _features(n2, d, 3, shift=0.2).requires_grad_()
    assert torch.autograd.gradcheck(se.frechet_distance_from_features, (x1, x2))
    mu2, sigma2 = (t.detach() for t in _statistics(x2))
    assert torch.autograd.gradcheck(
        lambda x: se.frechet_distance_from_features(x, mu2=mu2, sigma2=sigma2), (x1,)
    )


def test_the_covariance_level_backward_points_to_the_features_function() -> None:
    x1, x2 = _features(5, 12, 4), _features(6, 12, 5)
    (mu1, s1), (mu2, s2) = _statistics(x1), _statistics(x2)
    s1.requires_grad_()
    with pytest.raises(se.NotDifferentiableError, match="frechet_distance_from_features"):
        se.frechet_distance(mu1, s1, mu2, s2).backward()


def test_float32_features_and_a_training_step_move_toward_the_reference() -> None:
    x = _features(16, 64, 6).float().requires_grad_()
    reference = _features(32, 64, 7, shift=1.0).float()
    optimizer = torch.optim.SGD([x], lr=0.05)
    first = None
    for _ in range(30):
        loss = se.frechet_distance_from_features(x, reference)
        assert loss.dtype == torch.float32
        first = float(loss) if first is None else first
        optimizer.zero_grad()
        loss.backward()
        assert x.grad is not None and bool(torch.isfinite(x.grad).all())
        optimizer.step()
    assert float(loss) < 0.8 * first


def test_bad_arguments_get_named_errors() -> None:
    x = torch.randn(8, 4)
    with pytest.raises(se.ArgumentError, match="expected features2, or both mu2 and sigma2"):
        se.frechet_distance_from_features(x)
    with pytest.raises(se.ShapeError, match="features2: expected 4 features"):
        se.frechet_distance_from_features(x, torch.randn(8, 5))
    with pytest.raises(se.ShapeError, match="N >= 2"):
        se.frechet_distance_from_features(x[:1], x)
    with pytest.raises(se.NonFiniteError, match="features1"):
        se.frechet_distance_from_features(x * float("nan"), x)


def test_eigh_returns_a_named_tuple_and_the_distance_alias() -> None:
    result = se.eigh(torch.diag(torch.tensor([2.0, 1.0])))
    w, V = result
    assert result.eigenvalues is w and result.eigenvectors is V and w.tolist() == [1.0, 2.0]
    assert se.bures_wasserstein_distance is se.bures_wasserstein
