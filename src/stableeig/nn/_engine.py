"""The one forward pass of the group layers, shared by the modules and ``nn.functional``.

``y = γ ∘ (T (x - μ)) + β`` per group of ``d`` channels, with ``T`` (G, d, d) made from the
batch covariance by ``batch_transform`` in training (or without running statistics) and by
``eval_transform`` otherwise; running statistics are averaged in place when given.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Optional, Union

import torch

from .. import _validation as checks
from .._precision import autocast_off, working_dtype
from ..exceptions import ArgumentError, DTypeError, ShapeError
from ._statistics import GradientLink, group_affine, group_moments, traced

__all__ = [
    "BatchTransform",
    "RankDeficientWarning",
    "check_input",
    "check_momentum",
    "check_samples",
    "group_forward",
    "one_pass_gradient",
    "unbiased",
]

BatchTransform = Callable[
    [torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict[str, torch.Tensor]]
]


def unbiased(biased: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Bessel's correction ``count / (count - 1)``, as BatchNorm's running variance."""
    count = count.to(biased.dtype)
    return biased * (count / (count - 1).clamp_min(1))


class RankDeficientWarning(UserWarning):
    """A group has fewer samples than channels: its covariance is singular before ``eps``."""


def check_momentum(name: str, momentum: object, allow_none: bool = True) -> None:
    """``momentum`` in [0, 1] (or None, the cumulative average, where allowed)."""
    if momentum is None and allow_none:
        return
    if isinstance(momentum, bool) or not (
        isinstance(momentum, (int, float)) and 0.0 <= momentum <= 1.0
    ):
        allowed = " or None" if allow_none else ""
        raise ArgumentError(f"{name}: expected momentum in [0, 1]{allowed} (got {momentum!r})")


def check_samples(
    name: str, x: torch.Tensor, group_size: int, eps: float, training: bool, sync: bool, warn: bool
) -> bool:
    """BatchNorm's error for one value per channel in training, word for word; a
    :class:`RankDeficientWarning` (when ``warn``) for fewer samples than channels per group.
    Returns whether it warned. Shared by the modules and ``nn.functional``."""
    samples = x.shape[0] * math.prod(x.shape[2:])
    if training and samples == 1 and not sync:
        raise ValueError(
            f"Expected more than 1 value per channel when training, got input size {x.size()}"
        )
    if warn and 0 < samples < group_size and not sync:
        warnings.warn(
            f"{name}: {samples} samples for groups of {group_size} channels: the group "
            f"covariance is rank-deficient and regularized only by eps={eps}",
            RankDeficientWarning,
            stacklevel=4,
        )
        return True
    return False


def one_pass_gradient(x: torch.Tensor) -> bool:
    """Whether the moments backward may write the whole input gradient (:class:`GradientLink`).

    The link is an eager-mode optimization: a side channel between two autograd Functions.
    Dynamo records the moments backward as a template while the link is still empty, and
    functorch transforms replay backwards out of order, so under ``torch.compile``,
    ``torch.func`` and shape inference (:func:`traced`) it is off and the statistics and
    affine map are plain operations (same values; tested against eager for every layer,
    rule and backend).
    """
    return not traced(x)


def check_input(name: str, x: object, num_features: int, dims: tuple[int, ...], what: str) -> None:
    """Tensor, dimensions, real floating dtype and channel count of a layer's input."""
    if not isinstance(x, torch.Tensor):
        if isinstance(x, torch.fx.Proxy):
            raise DTypeError(
                f"{name}: expected a torch.Tensor (got an FX Proxy: the layer's statistics "
                "depend on values, which symbolic tracing cannot follow); trace with "
                "stableeig.nn.LeafTracer (the layer stays one call_module node) or use "
                "torch.export"
            )
        raise DTypeError(f"{name}: expected a torch.Tensor (got {type(x).__name__})")
    if x.dim() not in dims:
        raise ShapeError(f"{name}: expected {what} input (got shape {tuple(x.shape)})")
    if x.dtype not in checks.FLOATING_DTYPES:
        raise DTypeError(
            f"{name}: expected a real floating input (float16, bfloat16, float32, float64) "
            f"(got {x.dtype})"
        )
    if x.shape[1] != num_features:
        raise ShapeError(
            f"{name}: expected {num_features} channels in dimension 1 "
            f"(got input of shape {tuple(x.shape)})"
        )


def _moments(
    name: str,
    work: torch.Tensor,
    group_size: int,
    sync: bool,
    group: Any,
    link: Optional[GradientLink],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean, covariance and count of contiguous ``work`` (N, C, L), and the activations they
    were computed from (the alias :func:`group_moments` returns): ``work`` itself, or its
    float64 copy when float32 statistics overflow (finite activations beyond ~1e19, which
    BatchNorm accepts). One host sync."""
    mean, covariance, count, used = group_moments(work, group_size, sync, group, link=link)
    if not checks.host_checks_enabled() or not checks.readable(covariance):  # no sync
        return mean, covariance, count, used
    if bool(torch.isfinite(covariance).all()):  # the forward's one host synchronization
        return mean, covariance, count, used
    if work.dtype == torch.float32:
        mean, covariance, count, used = group_moments(
            work.to(torch.float64), group_size, sync, group, link=link
        )
    checks.check_finite(f"{name}: activations' covariance", covariance)
    return mean, covariance, count, used


def group_forward(
    x: torch.Tensor,
    group_size: int,
    *,
    name: str,
    use_batch: bool,
    batch_transform: BatchTransform,
    eval_transform: Optional[Callable[[], torch.Tensor]] = None,
    running_mean: Optional[torch.Tensor] = None,
    running: Optional[dict[str, torch.Tensor]] = None,
    momentum: Union[float, Callable[[], float]] = 0.1,
    weight: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    compute_dtype: Optional[torch.dtype] = None,
    sync: bool = False,
    process_group: Optional[Any] = None,
) -> torch.Tensor:
    """The layers' forward on a checked input ``x`` (N, C, ...).

    ``running``: buffers updated in place from the values ``batch_transform`` returns (key
    ``k`` -> ``running[k]``, with ``running_mean`` for the mean), by ``lerp(momentum)``;
    a callable ``momentum`` is called once, only when a batch is accepted (after the checks).
    """
    if x.numel() == 0 and not sync:  # a synchronized empty batch still joins the collectives
        return x.clone()
    C = x.shape[1]
    G = C // group_size
    x3 = x.reshape(x.shape[0], C, math.prod(x.shape[2:]))
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    with autocast_off(x.device):
        work = x3.to(dtype).contiguous()  # one copy at most, shared by statistics and output
        # the input gradient written once, by the moments backward (eager only)
        link = GradientLink() if use_batch and one_pass_gradient(work) else None
        if use_batch:
            mean, covariance, count, work = _moments(
                name, work, group_size, sync, process_group, link
            )
            dtype = work.dtype
            covariance = covariance.to(working_dtype(dtype, compute_dtype))
            transform, values = batch_transform((covariance + covariance.mT) / 2, count)
            if running_mean is not None and running is not None:
                factor = momentum() if callable(momentum) else momentum
                with torch.no_grad():
                    running_mean.lerp_(mean.detach().to(running_mean.dtype), factor)
                    for key, buffer in running.items():
                        buffer.lerp_(values[key].detach().to(buffer.dtype), factor)
        else:
            assert eval_transform is not None and running_mean is not None
            transform, mean = eval_transform(), running_mean
        transform, mean = transform.to(dtype), mean.to(dtype)
        if weight is not None:
            transform = transform * weight.to(dtype).view(G, group_size, 1)
        shift = -(transform @ mean.view(G, group_size, 1))  # (G, d, 1)
        if bias is not None:
            shift = shift + bias.to(dtype).view(G, group_size, 1)
        y = group_affine(work, transform, shift, link=link)
    y = y.view(x.shape).to(x.dtype)
    if x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last):
        y = y.contiguous(memory_format=torch.channels_last)
    return y
