"""The module machinery shared by ZCA whitening and PCA denoising.

Both layers compute, per group of ``d`` channels, a matrix ``T`` (G, d, d) from the batch
covariance and output ``y = γ ∘ (T (x - μ)) + β``; they differ only in how ``T`` is made.
This base class owns everything else, following ``torch.nn.modules.batchnorm``: arguments,
affine parameters, running statistics (EMA or cumulative), input checks, precision,
synchronization, ``state_dict`` versioning and ``extra_repr``.
"""

from __future__ import annotations

import warnings
from typing import Any, Optional, Union

import torch
from torch import nn

from .. import _validation as checks
from .._precision import working_dtype
from ..exceptions import ArgumentError
from ..rules import Rule, resolve
from ._engine import (
    RankDeficientWarning,
    check_input,
    check_momentum,
    check_samples,
    group_forward,
    unbiased,
)
from ._statistics import sync_enabled
from .conventions import CONVENTIONS, get_convention

__all__ = ["CONVENTIONS", "RankDeficientWarning"]  # CONVENTIONS: from .conventions


class _GroupTransform(nn.Module):
    """Base of the group-decorrelation layers. Subclasses define the transform ``T``."""

    _version = 3  # 2: fixed buffer names (running_matrix); 3: the running mode is saved
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
        check_momentum(name, momentum)
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
        self._warned_unsynchronized = False
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
        ``"matrix"`` (G, d, d). Vectors start at 1, matrices at :meth:`_initial_matrix`.
        The names are fixed; ``running_matrix`` holds what ``running`` says."""
        return {"running_matrix": "matrix"}

    _legacy_names: tuple[str, ...] = ()  # version-1 names of running_matrix

    def _batch_transform(
        self, covariance: torch.Tensor, count: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``T`` (G, d, d) from a biased covariance (G, d, d) in working precision over
        ``count`` samples, and the per-batch values that the running buffers average
        (key ``"x"`` updates ``running_x``; ``"matrix"`` is what ``running`` names)."""
        raise NotImplementedError

    def _running_transform(self) -> torch.Tensor:
        """``T`` (G, d, d) for evaluation, from the running buffers."""
        raise NotImplementedError

    def _initial_matrix(self) -> torch.Tensor:
        """Initial value of the running matrices: the identity (d, d)."""
        return torch.eye(self.group_size)

    def _matrix_named(self, meaning: str) -> torch.Tensor:
        """``running_matrix`` when it holds ``meaning`` (the version-1 buffer names)."""
        if self.running != meaning or not self.track_running_stats:
            raise AttributeError(
                f"{type(self).__name__} keeps no running {meaning} (running={self.running!r}, "
                f"track_running_stats={self.track_running_stats})"
            )
        return self._buffer("running_matrix")

    @property
    def running_covariance(self) -> torch.Tensor:
        """The running covariance (G, d, d), with ``running="covariance"``."""
        return self._matrix_named("covariance")

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
            if get_convention(self.convention).uniform_weight_init:
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
            + (", sync_statistics=True" if self.sync_statistics else "")
        )

    def get_extra_state(self) -> dict[str, str]:
        """What ``running_matrix`` holds, saved so that it never loads as something else."""
        return {"running": self.running}

    def set_extra_state(self, state: Any) -> None:
        saved = state.get("running") if isinstance(state, dict) else None
        if saved != self.running:
            raise ArgumentError(
                f"{type(self).__name__}: expected a state dict saved with running="
                f"{self.running!r} (got one saved with running={saved!r}: its running_matrix "
                "means something else); build the layer with the same running= to load it"
            )

    def _load_from_state_dict(  # type: ignore[no-untyped-def]
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        version = local_metadata.get("version", None)
        if (version is None or version < 3) and prefix + "_extra_state" not in state_dict:
            state_dict[prefix + "_extra_state"] = {"running": self.running}  # not recorded
        key = prefix + "num_batches_tracked"
        if (version is None or version < 1) and self.track_running_stats and key not in state_dict:
            state_dict[key] = torch.tensor(0, dtype=torch.long)
        if (version is None or version < 2) and self.track_running_stats:
            for old in (*self._legacy_names, "running_covariance"):  # version 1 -> 2
                if prefix + old in state_dict:
                    state_dict[prefix + "running_matrix"] = state_dict.pop(prefix + old)
            for name, kind in self._running_buffers().items():
                if kind == "vector" and prefix + name not in state_dict:  # not kept in v1
                    state_dict[prefix + name] = torch.ones(self.num_features)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def __prepare_scriptable__(self) -> nn.Module:
        raise RuntimeError(
            f"{type(self).__name__}: TorchScript is not supported (the layer validates and "
            "dispatches in Python); use torch.export (eval, dynamic batch), torch.compile, or "
            "stableeig.nn.fold_eval to fold an eval layer into the preceding convolution"
        )

    # ---- forward ------------------------------------------------------------------------

    def _decomposition_dtype(self, statistics_dtype: torch.dtype) -> torch.dtype:
        return working_dtype(statistics_dtype, self.compute_dtype)

    def _buffer(self, name: str) -> torch.Tensor:
        value = getattr(self, name)
        assert isinstance(value, torch.Tensor), f"{name} is not tracked"
        return value

    def _transform_from_running_covariance(self) -> torch.Tensor:
        """Eval ``T`` for ``running="covariance"``: the batch transform of the running one."""
        with torch.no_grad():
            covariance = self._buffer("running_matrix")
            covariance = covariance.to(self._decomposition_dtype(covariance.dtype))
            return self._batch_transform(covariance, torch.tensor(0.0))[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        name = type(self).__name__
        check_input(name, x, self.num_features, self._input_dims, self._input_description)
        use_batch = self.training or not self.track_running_stats
        sync = use_batch and sync_enabled(self.sync_statistics, self.process_group, self.training)
        if self.sync_statistics and self.training and not sync and not self._warned_unsynchronized:
            self._warned_unsynchronized = True
            warnings.warn(
                f"{name}: sync_statistics=True but torch.distributed is not initialized (or "
                "has one process): using this process's batch statistics",
                stacklevel=2,
            )
        warn = not self._warned_rank_deficient  # once per layer
        if check_samples(name, x, self.group_size, self.eps, self.training, sync, warn):
            self._warned_rank_deficient = True
        update = self.training and self.track_running_stats and (x.numel() > 0 or sync)

        def momentum() -> float:  # called once the batch passed its checks
            tracked = self._buffer("num_batches_tracked")
            tracked.add_(1)
            return 1.0 / float(tracked) if self.momentum is None else self.momentum

        batch_transform = self._batch_transform
        if self.running == "covariance":

            def batch_transform(
                covariance: torch.Tensor, count: torch.Tensor
            ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
                transform, values = self._batch_transform(covariance, count)
                return transform, {**values, "matrix": unbiased(covariance, count)}

        running = (
            {key[len("running_") :]: self._buffer(key) for key in self._running_buffers()}
            if update
            else None
        )
        return group_forward(
            x,
            self.group_size,
            name=name,
            use_batch=use_batch,
            batch_transform=batch_transform,
            eval_transform=self._running_transform if self.track_running_stats else None,
            running_mean=self._buffer("running_mean") if self.track_running_stats else None,
            running=running,
            momentum=momentum,
            weight=self.weight,
            bias=self.bias,
            compute_dtype=self.compute_dtype,
            sync=sync,
            process_group=self.process_group,
        )
