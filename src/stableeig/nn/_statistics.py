"""Per-group batch moments, optionally synchronized across a process group.

Activations are viewed as ``(N, C, L)``; channels form ``G = C / d`` consecutive groups of
``d``. The covariance of each group is built from centered activations (two passes: exact
also when the mean is large next to the spread) with one batched matrix product.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

__all__ = ["GroupMoments", "group_moments", "sync_enabled"]


class GroupMoments:
    """Batch mean (C,), biased covariance (G, d, d) and sample count (a 0-d tensor)."""

    def __init__(self, mean: torch.Tensor, covariance: torch.Tensor, count: torch.Tensor) -> None:
        self.mean = mean
        self.covariance = covariance
        self.count = count


def sync_enabled(sync: bool, process_group: Optional[Any], training: bool) -> bool:
    """Synchronize only in training, with torch.distributed initialized and world size > 1."""
    if not (sync and training and torch.distributed.is_available()):
        return False
    if not torch.distributed.is_initialized():
        return False
    return torch.distributed.get_world_size(process_group) > 1


def _all_reduce(tensor: torch.Tensor, process_group: Optional[Any]) -> torch.Tensor:
    """Differentiable sum across processes (its backward sums the gradients as well)."""
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(tensor, group=process_group)


def group_moments(
    x: torch.Tensor, group_size: int, sync: bool = False, process_group: Optional[Any] = None
) -> GroupMoments:
    """Mean and per-group covariance of ``x``.

    Args:
        x: activations, shape (N, C, L), float32 or float64.
        group_size: channels per group ``d``; must divide C.
        sync: all-reduce the sum, the count and the centered sum of outer products over
            ``process_group`` (differentiably). Default: False.
        process_group: the group to reduce over. Default: None (the world).

    Returns:
        :class:`GroupMoments` with mean (C,), covariance (C/d, d, d) and count.
    """
    N, C, L = x.shape
    count = torch.tensor(float(N * L), dtype=x.dtype, device=x.device)
    total = x.sum(dim=(0, 2))
    if sync:
        count = _all_reduce(count, process_group)
        total = _all_reduce(total, process_group)
    mean = total / count
    grouped = (x - mean.unsqueeze(-1)).view(N, C // group_size, group_size, L)
    outer = (grouped @ grouped.mT).sum(dim=0)  # (G, d, d)
    if sync:
        outer = _all_reduce(outer, process_group)
    return GroupMoments(mean, outer / count, count)
