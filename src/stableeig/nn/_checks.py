"""The group layers' argument and input checks, shared by the modules and
:mod:`stableeig.nn.functional` (every check lives here once)."""

from __future__ import annotations

import math
import warnings
from typing import Optional

import torch

from .. import _validation as checks
from ..exceptions import ArgumentError, DTypeError, ShapeError

__all__ = [
    "RankDeficientWarning",
    "check_buffer",
    "check_input",
    "check_momentum",
    "check_samples",
    "describe_dims",
    "warn_rank_deficient",
    "warn_unsynchronized",
    "warning_due",
]


class RankDeficientWarning(UserWarning):
    """A group has fewer samples than channels: its covariance is singular before ``eps``."""


_DIMS = {2: "2D (N, C)", 3: "3D (N, C, L)", 4: "4D (N, C, H, W)"}


def describe_dims(dims: tuple[int, ...]) -> str:
    """``"2D (N, C) or 3D (N, C, L)"`` for ``(2, 3)``."""
    return " or ".join(_DIMS[d] for d in dims)


def check_momentum(name: str, momentum: object, allow_none: bool = True) -> None:
    """``momentum`` in [0, 1] (or None, the cumulative average, where allowed)."""
    if momentum is None and allow_none:
        return
    if isinstance(momentum, bool) or not (
        isinstance(momentum, (int, float)) and 0.0 <= momentum <= 1.0
    ):
        allowed = " or None" if allow_none else ""
        raise ArgumentError(f"{name}: expected momentum in [0, 1]{allowed} (got {momentum!r})")


def check_input(name: str, x: object, num_features: Optional[int], dims: tuple[int, ...]) -> None:
    """Tensor, dimensions, real floating dtype and (when given) channel count of an input."""
    if not isinstance(x, torch.Tensor):
        if isinstance(x, torch.fx.Proxy):
            raise DTypeError(
                f"{name}: expected a torch.Tensor (got an FX Proxy: the layer's statistics "
                "depend on values, which symbolic tracing cannot follow); trace with "
                "stableeig.nn.LeafTracer (the layer stays one call_module node), for "
                "quantize_fx pass PrepareCustomConfig().set_non_traceable_module_classes("
                "[the layer's class]) to prepare_fx, or use torch.export"
            )
        raise DTypeError(f"{name}: expected a torch.Tensor (got {type(x).__name__})")
    if x.dim() not in dims:
        raise ShapeError(
            f"{name}: expected {describe_dims(dims)} input (got shape {tuple(x.shape)})"
        )
    if x.dtype not in checks.FLOATING_DTYPES:
        raise DTypeError(
            f"{name}: expected a real floating input (float16, bfloat16, float32, float64) "
            f"(got {x.dtype})"
        )
    if num_features is not None and x.shape[1] != num_features:
        raise ShapeError(
            f"{name}: expected {num_features} channels in dimension 1 "
            f"(got input of shape {tuple(x.shape)})"
        )


def check_buffer(name: str, what: str, tensor: object, shape: tuple[int, ...]) -> None:
    """A running buffer or affine parameter: a floating tensor of ``shape``."""
    if tensor is None:
        return
    if not isinstance(tensor, torch.Tensor) or tensor.dtype not in checks.FLOATING_DTYPES:
        got = tensor.dtype if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        raise DTypeError(f"{name}: expected {what} as a real floating tensor (got {got})")
    if tuple(tensor.shape) != shape:
        raise ShapeError(f"{name}: expected {what} of shape {shape} (got {tuple(tensor.shape)})")


def _samples(x: torch.Tensor) -> int:
    return x.shape[0] * math.prod(x.shape[2:])


def check_samples(name: str, x: torch.Tensor, batch_statistics: bool, sync: bool) -> None:
    """BatchNorm's error for one value per channel with batch statistics, word for word."""
    if batch_statistics and _samples(x) == 1 and not sync:
        raise ValueError(
            f"Expected more than 1 value per channel when training, got input size {x.size()}"
        )


def _rank_deficient(x: torch.Tensor, group_size: int, sync: bool) -> bool:
    return 0 < _samples(x) < group_size and not sync


def warning_due(x: torch.Tensor, group_size: int, sync_statistics: bool, sync: bool) -> bool:
    """Whether batch statistics of ``x`` get one of the two warnings below."""
    return _rank_deficient(x, group_size, sync) or (sync_statistics and not sync)


def warn_rank_deficient(
    name: str, x: torch.Tensor, group_size: int, eps: float, sync: bool
) -> None:
    """A :class:`RankDeficientWarning` for fewer samples than channels per group."""
    if _rank_deficient(x, group_size, sync):
        warnings.warn(
            f"{name}: {_samples(x)} samples for groups of {group_size} channels: the group "
            f"covariance is rank-deficient and regularized only by eps={eps}",
            RankDeficientWarning,
            stacklevel=4,
        )


def warn_unsynchronized(name: str, sync_statistics: bool, sync: bool) -> None:
    """A warning when synchronization was asked for but cannot happen."""
    if sync_statistics and not sync:
        warnings.warn(
            f"{name}: sync_statistics=True but torch.distributed is not initialized (or "
            "has one process): using this process's batch statistics",
            stacklevel=4,
        )
