"""FeatureStatistics (issue 30): streamed sums equal the one-shot statistics; merge, save and
load with weights_only=True; two gloo processes equal one process on all the features."""

from __future__ import annotations

import io
import os
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
    x = _features(3)
    shard = x[:250] if rank == 0 else x[250:]  # unequal shards
    stats = se.FeatureStatistics(6).update(shard).all_reduce()
    torch.save(stats.state_dict(), os.path.join(out_dir, f"stats{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")
def test_two_gloo_processes_equal_one_process(tmp_path: Path) -> None:
    run_processes(_worker, (str(tmp_path / "init"), str(tmp_path)))
    whole = se.FeatureStatistics(6).update(_features(3)).compute()
    for rank in range(2):
        stats = se.FeatureStatistics(6)
        stats.load_state_dict(torch.load(tmp_path / f"stats{rank}.pt", weights_only=True))
        for a, b in zip(stats.compute(), whole):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-10)
