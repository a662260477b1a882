"""The module machinery shared by ZCA whitening and PCA denoising.

Both layers compute, per group of ``d`` channels, a matrix ``T`` (G, d, d) from the batch
covariance and output ``y = γ ∘ (T (x - μ)) + β``; they differ only in how ``T`` is made.
This base class owns everything else, following ``torch.nn.modules.batchnorm``: arguments,
affine parameters, running statistics (EMA or cumulative), input checks, precision,
synchronization, ``state_dict`` versioning and ``extra_repr``.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Optional, Union

import torch
from torch import nn

from .. import _validation as checks
from .._autograd import SpectralFunction
from .._precision import working_dtype
from ..exceptions import ArgumentError, DTypeError, ShapeError
from ..rules import Rule, resolve
from ..spectral import spectral_unchecked
from ._statistics import group_affine, group_moments, sync_enabled

__all__ = ["CONVENTIONS", "RankDeficientWarning"]

CONVENTIONS = ("stableeig", "reference")


def unbiased(biased: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Bessel's correction ``count / (count - 1)``, as BatchNorm's running variance."""
    count = count.to(biased.dtype)
    return biased * (count / (count - 1).clamp_min(1))


class RankDeficientWarning(UserWarning):
    """A group has fewer samples than channels: its covariance is singular before ``eps``."""


class _GroupTransform(nn.Module):
    """Base of the group-decorrelation layers. Subclasses define the transform ``T``."""

    _version = 1
    _running_choices: tuple[str, ...] = ("covariance",)

    def __init__(
        self,
        num_features: int,
        group_size: Optional[int] = None,
        eps: float = 1e-4,
        momentum: Optional[float] = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        method: Union[str, Rule] = "loewner",
        running: Optional[str] = None,
        convention: str = "stableeig",
        compute_dtype: Optional[torch.dtype] = None,
        sync_statistics: bool = False,
        process_group: Optional[Any] = None,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        self.num_features = checks.check_int_at_least(f"{name}: num_features", num_features, 1)
        group_size = num_features if group_size is None else group_size
        checks.check_int_at_least(f"{name}: group_size", group_size, 1)
        if num_features % group_size:
            raise ArgumentError(
                f"{name}: expected group_size to divide num_features = {num_features} "
                f"(got group_size = {group_size})"
            )
        self.group_size = group_size
        self.num_groups = num_features // group_size
        self.eps = checks.check_positive(f"{name}: eps", eps)
        if momentum is not None and not (
            isinstance(momentum, (int, float)) and 0.0 <= momentum <= 1.0
        ):
            raise ArgumentError(f"{name}: expected momentum in [0, 1] or None (got {momentum!r})")
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        self.rule = resolve(method, argument=f"{name}: method")
        self.method = self.rule.name
        running = self._running_choices[0] if running is None else running
        self.running = checks.check_choice(f"{name}: running", running, self._running_choices)
        self.convention = checks.check_choice(f"{name}: convention", convention, CONVENTIONS)
        working_dtype(torch.float32, compute_dtype)  # validates
        self.compute_dtype = compute_dtype
        self.sync_statistics = sync_statistics
        self.process_group = process_group
        self._warned_rank_deficient = False
        factory = {"device": device, "dtype": dtype}
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features, **factory))  # type: ignore[arg-type]
            self.bias = nn.Parameter(torch.zeros(num_features, **factory))  # type: ignore[arg-type]
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        matrix_shape = (self.num_groups, group_size, group_size)
        for buffer, kind in {"running_mean": "vector", **self._running_buffers()}.items():
            shape = matrix_shape if kind == "matrix" else (num_features,)
            value = torch.zeros(shape, device=device, dtype=torch.float32)
            self.register_buffer(buffer, value if track_running_stats else None)
        self.register_buffer(
            "num_batches_tracked",
            torch.tensor(0, dtype=torch.long, device=device) if track_running_stats else None,
        )
        self.reset_parameters()

    # ---- subclass interface -------------------------------------------------------------

    def _running_buffers(self) -> dict[str, str]:
        """Running buffers besides ``running_mean``: name -> ``"vector"`` (C,) or
        ``"matrix"`` (G, d, d). Vectors start at 1, matrices at the identity."""
        raise NotImplementedError

    def _batch_transform(
        self, covariance: torch.Tensor, count: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``T`` (G, d, d) from a biased covariance (G, d, d) in working precision over
        ``count`` samples, and the per-batch values that the running buffers average
        (key ``"x"`` updates ``running_x``)."""
        raise NotImplementedError

    def _running_transform(self) -> torch.Tensor:
        """``T`` (G, d, d) for evaluation, from the running buffers."""
        raise NotImplementedError

    def _initial_matrix(self) -> torch.Tensor:
        """Initial value of the running matrices: the identity (d, d)."""
        return torch.eye(self.group_size)

    _input_dims: tuple[int, ...] = ()
    _input_description = ""

    # ---- BatchNorm conventions ----------------------------------------------------------

    def reset_running_stats(self) -> None:
        if not self.track_running_stats:
            return
        self._buffer("running_mean").zero_()
        for name, kind in self._running_buffers().items():
            buffer = self._buffer(name)
            buffer.copy_(self._initial_matrix()) if kind == "matrix" else buffer.fill_(1.0)
        self._buffer("num_batches_tracked").zero_()

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        if self.affine:
            if self.convention == "reference":
                nn.init.uniform_(self.weight)  # the reference code's weight.data.uniform_()
            else:
                nn.init.ones_(self.weight)
            nn.init.zeros_(self.bias)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, group_size={self.group_size}, eps={self.eps}, "
            f"momentum={self.momentum}, affine={self.affine}, "
            f"track_running_stats={self.track_running_stats}, method={self.rule.describe()}, "
            f"running={self.running!r}, convention={self.convention!r}"
        )

    def _load_from_state_dict(  # type: ignore[no-untyped-def]
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        version = local_metadata.get("version", None)
        key = prefix + "num_batches_tracked"
        if (version is None or version < 1) and self.track_running_stats and key not in state_dict:
            state_dict[key] = torch.tensor(0, dtype=torch.long)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    # ---- forward ------------------------------------------------------------------------

    def _spectral(self, matrix: torch.Tensor, function: SpectralFunction) -> torch.Tensor:
        """``V f(Λ) Vᵀ`` of (G, d, d) ``matrix`` with the layer's rule (not ``pi``)."""
        return spectral_unchecked(matrix, function, self.rule)[0]

    def _ridge(self, matrix: torch.Tensor) -> torch.Tensor:
        """``matrix + eps·I`` for a (G, d, d) batch."""
        eye = torch.eye(self.group_size, dtype=matrix.dtype, device=matrix.device)
        return matrix + self.eps * eye

    def _decomposition_dtype(self, statistics_dtype: torch.dtype) -> torch.dtype:
        return working_dtype(statistics_dtype, self.compute_dtype)

    def _buffer(self, name: str) -> torch.Tensor:
        value = getattr(self, name)
        assert isinstance(value, torch.Tensor), f"{name} is not tracked"
        return value

    def _transform_from_running_covariance(self) -> torch.Tensor:
        """Eval ``T`` for ``running="covariance"``: the batch transform of the running one."""
        with torch.no_grad():
            covariance = self._buffer("running_covariance")
            covariance = covariance.to(self._decomposition_dtype(covariance.dtype))
            return self._batch_transform(covariance, torch.tensor(0.0))[0]

    def _update_running(self, mean: torch.Tensor, values: dict[str, torch.Tensor]) -> None:
        tracked = self._buffer("num_batches_tracked")
        tracked.add_(1)
        factor = 1.0 / float(tracked) if self.momentum is None else self.momentum
        updates = {"mean": mean, **values}
        for name, value in updates.items():
            buffer = self._buffer("running_" + name)
            buffer.lerp_(value.detach().to(buffer.dtype), factor)

    def _check_input(self, x: torch.Tensor) -> None:
        name = type(self).__name__
        if x.dim() not in self._input_dims:
            raise ShapeError(
                f"{name}: expected {self._input_description} input (got shape {tuple(x.shape)})"
            )
        if x.dtype not in checks.FLOATING_DTYPES:
            raise DTypeError(
                f"{name}: expected a real floating input (float16, bfloat16, float32, float64) "
                f"(got {x.dtype})"
            )
        if x.shape[1] != self.num_features:
            raise ShapeError(
                f"{name}: expected {self.num_features} channels in dimension 1 "
                f"(got input of shape {tuple(x.shape)})"
            )

    def _check_samples(self, x: torch.Tensor, samples: int, sync: bool) -> None:
        """BatchNorm's error for one value per channel; a warning for rank-deficient groups."""
        if self.training and samples == 1 and not sync:
            raise ValueError(
                f"Expected more than 1 value per channel when training, got input size {x.size()}"
            )
        if 0 < samples < self.group_size and not sync and not self._warned_rank_deficient:
            self._warned_rank_deficient = True
            warnings.warn(
                f"{type(self).__name__}: {samples} samples for groups of {self.group_size} "
                f"channels: the group covariance is rank-deficient and regularized only by "
                f"eps={self.eps}",
                RankDeficientWarning,
                stacklevel=3,
            )

    def _batch_moments(
        self, x3: torch.Tensor, dtype: torch.dtype, sync: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, covariance and count in ``dtype``; retried in float64 if float32 overflows
        (finite activations beyond ~1e19, which BatchNorm accepts). One host sync."""
        mean, covariance, count = group_moments(
            x3.to(dtype).contiguous(), self.group_size, sync, self.process_group
        )
        if dtype == torch.float32 and not bool(torch.isfinite(covariance).all()):
            mean, covariance, count = group_moments(
                x3.to(torch.float64).contiguous(), self.group_size, sync, self.process_group
            )
        checks.check_finite(f"{type(self).__name__}: activations' covariance", covariance)
        return mean, covariance, count

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        use_batch = self.training or not self.track_running_stats
        sync = use_batch and sync_enabled(self.sync_statistics, self.process_group, self.training)
        if x.numel() == 0 and not sync:  # a synchronized empty batch still joins the collectives
            return x.clone()
        N, length = x.shape[0], math.prod(x.shape[2:])
        x3 = x.reshape(N, self.num_features, length)
        self._check_samples(x, N * length, sync)
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        with torch.autocast(x.device.type, enabled=False):
            if use_batch:
                mean, covariance, count = self._batch_moments(x3, dtype, sync)
                dtype = covariance.dtype
                covariance = covariance.to(self._decomposition_dtype(dtype))
                transform, values = self._batch_transform((covariance + covariance.mT) / 2, count)
                if self.training and self.track_running_stats:
                    if self.running == "covariance":
                        values = {"covariance": unbiased(covariance, count)}
                    with torch.no_grad():
                        self._update_running(mean, values)
            else:
                transform, mean = self._running_transform(), self._buffer("running_mean")
            y = self._transform_output(
                x3.to(dtype).contiguous(), transform.to(dtype), mean.to(dtype)
            )
        y = y.view(x.shape).to(x.dtype)
        if x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last):
            y = y.contiguous(memory_format=torch.channels_last)
        return y

    def _transform_output(
        self, x3: torch.Tensor, transform: torch.Tensor, mean: torch.Tensor
    ) -> torch.Tensor:
        """``γ ∘ (T (x - μ)) + β`` as one pass ``T' x + shift`` over (N, C, L) activations."""
        G, d = self.num_groups, self.group_size
        if self.affine:
            transform = transform * self.weight.to(transform.dtype).view(G, d, 1)
        shift = -(transform @ mean.view(G, d, 1))  # (G, d, 1)
        if self.affine:
            shift = shift + self.bias.to(transform.dtype).view(G, d, 1)
        return group_affine(x3, transform, shift)
