"""Timing harness: interleaved pairs of calls, medians and quartiles of per-pair ratios.

Every comparison in :mod:`stableeig.bench.speed` runs ours and its baseline in the same
process, alternately, so that machine noise hits both alike.
"""

from __future__ import annotations

import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

import torch
from torch import nn

__all__ = ["Paired", "environment", "forward_backward", "no_grad_call", "paired", "sync"]


def environment() -> dict[str, Any]:
    """torch version, threads, CPU model and CUDA device of this process."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": cpu,
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def sync(device: str) -> None:
    """Wait for the device (CUDA) to finish."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class Paired(NamedTuple):
    """One paired comparison: medians of ours and of the baseline (seconds), the median
    per-pair ratio, and the ratios' first and third quartiles."""

    ours_s: float
    baseline_s: float
    ratio: float
    quartiles: list[float]

    def fields(self, ours: str, baseline: str, digits: int = 2) -> dict[str, Any]:
        """A result row's timing fields: both medians in ms (named ``ours``/``baseline``),
        the ratio and its quartiles."""
        return {
            ours: round(self.ours_s * 1e3, digits),
            baseline: round(self.baseline_s * 1e3, digits),
            "ratio": round(self.ratio, 3),
            "ratio_quartiles": self.quartiles,
        }


def paired(
    ours: Callable[[], object],
    baseline: Callable[[], object],
    repeats: int,
    device: str = "cpu",
    warmup: int = 2,
) -> Paired:
    """Time ``ours`` against ``baseline``, after a warm-up of ``warmup`` calls each.

    Pairs are interleaved (ours, then the baseline, ``repeats`` times) so that machine noise
    hits both alike.
    """
    for _ in range(warmup):
        ours()
        baseline()
    sync(device)
    a, b, ratios = [], [], []
    for _ in range(repeats):
        start = time.perf_counter()
        ours()
        sync(device)
        middle = time.perf_counter()
        baseline()
        sync(device)
        end = time.perf_counter()
        a.append(middle - start)
        b.append(end - middle)
        ratios.append((middle - start) / (end - middle))
    quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    spread = [round(quartiles[0], 3), round(quartiles[2], 3)]
    return Paired(statistics.median(a), statistics.median(b), statistics.median(ratios), spread)


def forward_backward(
    function: Callable[[torch.Tensor], torch.Tensor], A: torch.Tensor, G: torch.Tensor
) -> Callable[[], None]:
    """A call of exactly what training runs: ``function(A)``, then ``backward(G)``."""

    def run() -> None:  # exactly what training runs: forward, then backward(G)
        X = A.detach().requires_grad_(True)
        function(X).backward(G)

    return run


def no_grad_call(module: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    """``module(x)`` without autograd (eval timing)."""

    def run() -> None:
        with torch.no_grad():
            module(x)

    return run
