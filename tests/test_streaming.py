"""FeatureStatistics (issue 30): streamed sums equal the one-shot statistics; merge, save and
load with weights_only=True; two gloo processes equal one process on all the features."""

from __future__ import annotations

import io
import os
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

import stableeig as se
from helpers import run_processes


def _features(seed: int, n: int = 300, d: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) * 3 + 100  # a mean far above the spread


def test_streamed_equals_one_shot_and_merges() -> None:
    x = _features(0)
    stats = se.FeatureStatistics(6)
    for chunk in x.split(37):
        stats.update(chunk)
    mean, covariance = stats.compute()
    torch.testing.assert_close(mean, x.double().mean(0))
    torch.testing.assert_close(covariance, torch.cov(x.double().T), rtol=1e-9, atol=1e-9)
    first, second = se.FeatureStatistics(6).update(x[:100]), se.FeatureStatistics(6).update(x[100:])
    merged = first.merge(second).compute()
    torch.testing.assert_close(merged[1], covariance, rtol=1e-9, atol=1e-9)
    other = se.FeatureStatistics(6).update(_features(1))
    expected = se.frechet_distance(*stats.compute(), *other.compute())
    assert float(stats.frechet_distance(other)) == float(expected)
    assert float(stats.frechet_distance(stats)) == 0.0


def test_state_round_trips_with_weights_only() -> None:
    stats = se.FeatureStatistics(6).update(_features(2))
    buffer = io.BytesIO()
    torch.save(stats.state_dict(), buffer)
    buffer.seek(0)
    restored = se.FeatureStatistics(6)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    for a, b in zip(restored.compute(), stats.compute()):
        assert torch.equal(a, b)


def test_bad_input_is_refused_by_name() -> None:
    stats = se.FeatureStatistics(4)
    with pytest.raises(se.ShapeError, match=r"expected shape \(N, 4\)"):
        stats.update(torch.zeros(3, 5))
    with pytest.raises(se.NonFiniteError, match="update: features"):
        stats.update(torch.full((2, 4), float("nan")))
    with pytest.raises(se.ArgumentError, match="at least 2 samples"):
        stats.update(torch.zeros(1, 4)).compute()
    with pytest.raises(se.ArgumentError, match="statistics of 4 features"):
        stats.merge(se.FeatureStatistics(3))


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    x = _offset_features(1e6, seed=3)
    shard = x[:250] if rank == 0 else x[250:]  # unequal shards
    stats = se.FeatureStatistics(6).update(shard).all_reduce()
    torch.save(stats.state_dict(), os.path.join(out_dir, f"stats{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")
def test_two_gloo_processes_equal_one_process(tmp_path: Path) -> None:
    run_processes(_worker, (str(tmp_path / "init"), str(tmp_path)))
    x = _offset_features(1e6, seed=3)  # far from the origin: the shards' sums must not cancel
    mean, covariance = _two_pass(x)
    for rank in range(2):
        stats = se.FeatureStatistics(6)
        stats.load_state_dict(torch.load(tmp_path / f"stats{rank}.pt", weights_only=True))
        got_mean, got_covariance = stats.compute()
        torch.testing.assert_close(got_mean, mean, rtol=1e-15, atol=1e-9)
        assert _relative(got_covariance, covariance) < 1e-9


def _offset_features(offset: float, seed: int = 0, n: int = 400, d: int = 6) -> torch.Tensor:
    """float64 features whose mean is ``offset`` standard deviations from the origin."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) + offset


def _two_pass(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The float64 reference: the mean, then the covariance of the centred samples."""
    mean = x.mean(0)
    centred = x - mean
    return mean, centred.T @ centred / (len(x) - 1)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("offset", [0.0, 1e2, 1e4, 1e5, 1e6])
def test_streaming_matches_two_pass_float64_far_from_the_origin(offset: float) -> None:
    """Issue 39.2: plain sums lost 1.1e-5 at 1e4 standard deviations, 3.6e-3 at 1e5."""
    x = _offset_features(offset)
    mean, covariance = _two_pass(x)
    streamed = se.FeatureStatistics(6)
    for chunk in x.split(37):
        streamed.update(chunk)
    halves = [se.FeatureStatistics(6).update(part) for part in x.split([150, 250])]
    merged = halves[0].merge(halves[1])
    singles = se.FeatureStatistics(6)
    for row in x.split(1):  # one sample at a time: every merge is a Welford step
        singles.update(row)
    for stats in (streamed, merged, singles):
        got_mean, got_covariance = stats.compute()
        torch.testing.assert_close(got_mean, mean, rtol=1e-15, atol=1e-9)
        assert _relative(got_covariance, covariance) < 1e-9


@pytest.mark.parametrize(
    "cast",
    ["half", "bfloat16", "float", "double", "to-float16", "parent-to-bfloat16", "parent-half"],
)
def test_the_accumulators_stay_float64_under_every_cast(cast: str) -> None:
    x = _offset_features(1e3, n=10_000)
    x[5000:] = x[5000:].float().double()  # the second half as a float32 model feeds it
    mean, covariance = _two_pass(x)
    stats = se.FeatureStatistics(6).update(x[:5000])
    parent = torch.nn.Sequential(torch.nn.Linear(6, 6), stats)
    cast_module = {
        "half": lambda: stats.half(),
        "bfloat16": lambda: stats.bfloat16(),
        "float": lambda: stats.float(),
        "double": lambda: stats.double(),
        "to-float16": lambda: stats.to(torch.float16),
        "parent-to-bfloat16": lambda: parent.to(torch.bfloat16),
        "parent-half": lambda: parent.half(),
    }[cast]
    cast_module()
    assert all(b.dtype == torch.float64 for b in stats.buffers())
    stats.update(x[5000:].float())
    assert float(stats.count) == 10_000
    got_mean, got_covariance = stats.compute()
    torch.testing.assert_close(got_mean, mean, rtol=1e-15, atol=1e-9)
    assert _relative(got_covariance, covariance) < 1e-9
    if cast.startswith("parent"):
        assert parent[0].weight.dtype != torch.float64  # the cast did act on the model


def test_a_state_dict_of_raw_sums_still_loads() -> None:
    """0.8.1 saved count, total = Σx and outer = Σxxᵀ (version 1)."""
    x = _offset_features(10.0)
    old = {"count": torch.tensor(float(len(x)), dtype=torch.float64), "total": x.sum(0),
           "outer": x.T @ x}  # fmt: skip
    stats = se.FeatureStatistics(6)
    state = OrderedDict(old)
    state._metadata = OrderedDict({"": {"version": 1}})  # type: ignore[attr-defined]
    stats.load_state_dict(state)
    mean, covariance = _two_pass(x)
    torch.testing.assert_close(stats.compute()[0], mean)
    assert _relative(stats.compute()[1], covariance) < 1e-12
