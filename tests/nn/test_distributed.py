"""Synchronized statistics: two gloo processes on halves equal one process on the whole."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

import stableeig as se
from helpers import run_processes

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")


def make_layer(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    cls = se.nn.ZCAWhitening2d if kind == "zca" else se.nn.PCADenoising2d
    layer = cls(8, group_size=4, sync_statistics=True)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.uniform_(-1, 1)
    return layer


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 8, 3, 3, generator=g) * 2 + 1, torch.randn(8, 8, 3, 3, generator=g)


def worker(rank: int, world: int, init_file: str, out_dir: str, kind: str, split: int) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    layer = make_layer(kind)
    x, upstream = batch()
    half = slice(0, split) if rank == 0 else slice(split, 8)  # rank 1 may get nothing
    xs = x[half].clone().requires_grad_(True)
    y = layer(xs)
    (y * upstream[half]).sum().backward()
    torch.save(
        {
            "y": y.detach(),
            "grad": xs.grad,
            "running_mean": layer.running_mean,
            "weight_grad": layer.weight.grad,
        },
        os.path.join(out_dir, f"rank{rank}.pt"),
    )
    dist.destroy_process_group()


def run_two_processes(tmp_path: Path, kind: str, split: int) -> None:
    run_processes(worker, (2, str(tmp_path / "init"), str(tmp_path), kind, split))


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "split"), [("zca", 4), ("pca", 4), ("zca", 8)])
def test_two_process_sync_equals_single_process_on_whole_batch(
    tmp_path: Path, kind: str, split: int
) -> None:
    """``split = 8``: rank 1 has an empty batch and must still join every collective."""
    run_two_processes(tmp_path, kind, split)
    parts = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    layer = make_layer(kind)  # sync_statistics has no effect without a process group
    x, upstream = batch()
    x = x.requires_grad_(True)
    y = layer(x)
    (y * upstream).sum().backward()
    torch.testing.assert_close(torch.cat([p["y"] for p in parts]), y.detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.cat([p["grad"] for p in parts]), x.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(parts[0]["running_mean"], layer.running_mean)
    torch.testing.assert_close(
        parts[0]["weight_grad"] + parts[1]["weight_grad"], layer.weight.grad, rtol=1e-4, atol=1e-5
    )
