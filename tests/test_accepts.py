"""The dtype sweep (issue 28): every spectral function × input users pass × dtype against
the float64 oracle on the dtype-rounded input, or the documented typed error
(:mod:`stableeig.bench.accepts`; the README's table is its rendering)."""

from __future__ import annotations

import pytest
import torch

from stableeig.bench import accepts


@pytest.mark.parametrize("dtype", accepts.DTYPES, ids=str)
@pytest.mark.parametrize("kind", list(accepts.INPUTS))
@pytest.mark.parametrize("name", list(accepts.FUNCTIONS))
def test_every_function_in_every_dtype_matches_the_oracle(
    name: str, kind: str, dtype: torch.dtype
) -> None:
    outcome = accepts.judge(name, kind, dtype)
    assert outcome.agrees, outcome


def test_the_sweep_covers_every_dtype_and_refuses_where_documented() -> None:
    outcomes = {
        (name, kind): accepts.judge(name, kind, torch.float32)
        for name in ("inv_sqrtm", "sqrtm", "expm")
        for kind in ("rank-deficient PSD", "scale 1e30")
    }
    assert outcomes[("sqrtm", "rank-deficient PSD")].result == "ok"  # float32 PSD accepted
    assert outcomes[("inv_sqrtm", "rank-deficient PSD")].result == "NotPositiveDefiniteError"
    assert outcomes[("expm", "scale 1e30")].result == "NonFiniteError"  # never NaN


def test_a_disagreement_is_reported_not_hidden() -> None:
    wrong = accepts.Outcome("ok", 1.0, 1e-6)
    assert not wrong.agrees
    assert not accepts.Outcome("NonFiniteError", expected="ok").agrees
