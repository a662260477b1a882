"""Streaming Gaussian statistics of features: what an FID metric accumulates.

:class:`FeatureStatistics` keeps float64 running **sums** — the count, ``Σ x`` and
``Σ x xᵀ`` — so that batches, shards and processes combine by addition (``update``,
``merge``, ``all_reduce``: the sums are all-reduced, never averaged covariances), and
``compute`` forms the mean and the unbiased covariance once at the end. The state is three
buffers: ``torch.save(stats.state_dict())`` reads back with ``weights_only=True``.

Precision: the covariance is ``(Σ x xᵀ - N μ μᵀ) / (N - 1)`` in float64; its absolute
round-off is about ``N · eps₆₄ · max(‖x‖²)`` per entry — 1e-9 relative to the spread for
features whose mean is 100× their standard deviation at N = 50,000.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import nn

from . import _validation as checks
from .exceptions import ArgumentError, ShapeError

__all__ = ["FeatureStatistics"]


class FeatureStatistics(nn.Module):
    """Running count, sum and sum of outer products of ``(N, d)`` feature batches.

    Args:
        num_features: ``d``.
        device: of the buffers. Default: None (CPU).

    Example:
        >>> import torch, stableeig as se
        >>> real, fake = se.FeatureStatistics(8), se.FeatureStatistics(8)
        >>> for _ in range(3):
        ...     _ = real.update(torch.randn(16, 8)), fake.update(torch.randn(16, 8) + 1)
        >>> fid = real.frechet_distance(fake)
        >>> bool(fid > 0)
        True
    """

    count: torch.Tensor
    total: torch.Tensor
    outer: torch.Tensor

    def __init__(self, num_features: int, device: Optional[torch.device] = None) -> None:
        super().__init__()
        self.num_features = checks.check_int_at_least("num_features", num_features, 1)
        factory: dict[str, Any] = {"dtype": torch.float64, "device": device}
        self.register_buffer("count", torch.zeros((), **factory))
        self.register_buffer("total", torch.zeros(num_features, **factory))
        self.register_buffer("outer", torch.zeros(num_features, num_features, **factory))

    def reset(self) -> None:
        """Back to no samples."""
        for buffer in (self.count, self.total, self.outer):
            buffer.zero_()

    @torch.no_grad()
    def update(self, features: torch.Tensor) -> FeatureStatistics:
        """Add a (N, d) batch (any floating dtype, summed in float64); returns ``self``."""
        name = "FeatureStatistics.update: features"
        if not isinstance(features, torch.Tensor) or features.dtype not in checks.FLOATING_DTYPES:
            got = features.dtype if isinstance(features, torch.Tensor) else type(features).__name__
            raise ShapeError(
                f"{name}: expected a floating (N, {self.num_features}) tensor (got {got})"
            )
        if features.ndim != 2 or features.shape[1] != self.num_features:
            raise ShapeError(
                f"{name}: expected shape (N, {self.num_features}) (got {tuple(features.shape)})"
            )
        checks.check_finite(name, features)
        x = features.detach().to(self.total.device, torch.float64)
        self.count += x.shape[0]
        self.total += x.sum(0)
        self.outer += x.T @ x
        return self

    @torch.no_grad()
    def merge(self, other: FeatureStatistics) -> FeatureStatistics:
        """Add another accumulator's sums (another shard, a saved state); returns ``self``."""
        if not isinstance(other, FeatureStatistics) or other.num_features != self.num_features:
            got = getattr(other, "num_features", type(other).__name__)
            raise ArgumentError(
                f"FeatureStatistics.merge: expected statistics of {self.num_features} features "
                f"(got {got})"
            )
        self.count += other.count.to(self.count.device)
        self.total += other.total.to(self.total.device)
        self.outer += other.outer.to(self.outer.device)
        return self

    @torch.no_grad()
    def all_reduce(self, group: Optional[Any] = None) -> FeatureStatistics:
        """Sum the three buffers over ``torch.distributed`` (every process must call it; a
        process with no samples contributes zeros); returns ``self``. Without an initialized
        process group it does nothing."""
        if dist.is_available() and dist.is_initialized():
            for buffer in (self.count, self.total, self.outer):
                dist.all_reduce(buffer, group=group)
        return self

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean (d,), unbiased covariance (d, d))`` in float64; needs two samples."""
        count = float(self.count)
        if count < 2:
            raise ArgumentError(
                f"FeatureStatistics.compute: expected at least 2 samples (got {count:g})"
            )
        mean = self.total / count
        covariance = (self.outer - count * torch.outer(mean, mean)) / (count - 1)
        return mean, (covariance + covariance.T) / 2

    def frechet_distance(self, other: FeatureStatistics) -> torch.Tensor:
        """The Fréchet distance (FID) between the two accumulated Gaussians (float64)."""
        from .distances import frechet_distance

        return frechet_distance(*self.compute(), *other.compute())

    def extra_repr(self) -> str:
        return f"{self.num_features}, count={float(self.count):g}"
