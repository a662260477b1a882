"""A result that is finite in the working precision but overflows the caller's dtype raises
:class:`~stableeig.NonFiniteError` instead of returning Inf: float16 eigenvalues and
singular values beyond 65504, float32 ones beyond 3.4e38 (computed in float64), a
generalized problem whose ``B`` is tiny (found by the dtype sweep, issue 41), and the same
for the distances, means, alignments and power iteration (found by sweeping the rest of the
public functions by hand)."""

from __future__ import annotations

from typing import Callable

import pytest
import torch

import stableeig as se

HALF_LARGE = torch.full((2, 2), 60000.0).half()  # eigenvalue / singular value 120000
SINGLE_LARGE = torch.full((2, 2), 3e38)  # 6e38 in float64, Inf in float32
EYE16 = torch.eye(2, dtype=torch.float16)
TINY16 = (1e-7 * torch.eye(2)).half()  # A v = λ B v: λ = 1e7
HALF_DIAGONAL = (60000.0 * torch.eye(2)).half()


def _points(seed: int) -> torch.Tensor:
    return torch.randn(8, 3, generator=torch.Generator().manual_seed(seed))


# its best rank-1 approximation has a (1, 1) entry of ~68300, beyond float16's 65504
INDEFINITE16 = torch.tensor([[65000.0, 30000.0], [30000.0, -60000.0]]).half()

CALLS: dict[str, Callable[[], object]] = {
    "eigh float16": lambda: se.eigh(HALF_LARGE),
    "eigh float32": lambda: se.eigh(SINGLE_LARGE),
    "eigh(A, B) float16": lambda: se.eigh(EYE16, TINY16),
    "eigsh float16": lambda: se.eigsh(HALF_LARGE, 1),
    "svd float16": lambda: se.svd(HALF_LARGE),
    "svdvals float32": lambda: se.svdvals(SINGLE_LARGE),
    "nuclear_norm float16": lambda: se.nuclear_norm(HALF_LARGE),
    "schatten_norm(p=2) float16": lambda: se.schatten_norm(HALF_LARGE, 2),
    "generalized_funm float16": lambda: se.generalized_funm(EYE16, TINY16, lambda x: x),
    "svd_funm float16": lambda: se.svd_funm(HALF_LARGE, lambda s: 2 * s),
    "low_rank float16": lambda: se.low_rank(INDEFINITE16, 1),
    "power_iteration_eigh float16": lambda: se.power_iteration_eigh(HALF_LARGE),
    "procrustes(scale=True) float16": lambda: se.procrustes(
        (1e-3 * _points(0)).half(), (1e4 * _points(1)).half(), scale=True
    ),
    "frechet_distance float16": lambda: se.frechet_distance(
        torch.zeros(2).half(), EYE16, torch.full((2,), 60000.0).half(), EYE16
    ),
    "frechet_distance_from_features float16": lambda: se.frechet_distance_from_features(
        _points(2).half(), (60000.0 + 0 * _points(3)).half()
    ),
    "bures_wasserstein(squared=True) float16": lambda: se.bures_wasserstein(
        60000.0 * EYE16, 1e-3 * EYE16, squared=True
    ),
    "trace_sqrt_product float16": lambda: se.trace_sqrt_product(HALF_DIAGONAL, HALF_DIAGONAL),
    "airm_geodesic(t=2) float16": lambda: se.airm_geodesic(EYE16, 60000.0 * EYE16, 2.0),
}


@pytest.mark.parametrize("name", list(CALLS))
def test_overflow_of_the_callers_dtype_raises(name: str) -> None:
    with pytest.raises(se.NonFiniteError, match="within the range of"):
        CALLS[name]()


def test_results_within_range_are_unchanged_by_the_check() -> None:
    A = torch.full((2, 2), 20000.0).half()  # 40000 fits float16
    assert se.eigh(A).eigenvalues.tolist() == [0.0, 40000.0]
    assert se.svdvals(A).tolist() == [40000.0, 0.0]


def test_a_unit_vector_fits_where_the_eigenvalues_would_not() -> None:
    """``extreme_eigenvector`` returns only the vector: float16 eigenvalues of 120000 are no
    reason to refuse it (they stay in the working precision)."""
    vector, defined = se.extreme_eigenvector(HALF_LARGE)
    assert vector.dtype == torch.float16 and bool(defined)
    assert torch.allclose(vector.abs().float(), torch.full((2,), 0.5**0.5), atol=1e-3)
