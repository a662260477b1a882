"""The module machinery shared by the group layers (ZCA whitening, PCA denoising).

Each layer outputs, per group of ``d`` channels, ``y = γ ∘ (T (x - μ)) + β``; how ``T`` is
made is the layer's :class:`~stableeig.nn.transforms.GroupTransform`, built from the
module's settings at every call. This base class owns everything else, following
``torch.nn.modules.batchnorm``: arguments, affine parameters, running statistics (EMA or
cumulative), ``state_dict`` versioning and ``extra_repr``; ``forward`` resolves the momentum
factor, calls :func:`stableeig.nn.functional.group_transform` and counts the batch.
"""

from __future__ import annotations

from typing import Any, ClassVar, Optional, Union

import torch
from torch import nn

from .. import _validation as checks
from ..exceptions import ArgumentError
from ..rules import Rule
from ._checks import check_input, check_momentum, warning_due
from .functional import group_transform
from .statistics import sync_enabled
from .transforms import GroupTransform, RunningValues

__all__ = ["GroupLayer", "RunningMatrix"]

_VERSION1_MATRIX_NAMES = ("running_whitening", "running_projector", "running_covariance")


class RunningMatrix:
    """``layer.running_<meaning>``: the layer's ``running_matrix`` (G, d, d) when it holds
    ``meaning`` (``running=meaning``), else an AttributeError (the version-1 names)."""

    def __init__(self, meaning: str) -> None:
        self.meaning = meaning

    def __get__(self, layer: Optional[GroupLayer], owner: type) -> Any:
        return self if layer is None else layer._matrix_named(self.meaning)


class GroupLayer(nn.Module):
    """Base of the group layers: a subclass names its transform type and input dimensions.

    Example (a layer that only centers, with a ``Centering`` transform whose ``T`` is
    ``I``; the tests define it in full)::

        class Centering1d(stableeig.nn.GroupLayer):
            _transform_type = Centering
            _input_dims = (2, 3)

    The constructor's arguments are those of :class:`~stableeig.nn.ZCAWhitening2d` that
    every layer has, plus the transform's own fields as keywords.
    """

    _version = 3  # 2: fixed buffer names (running_matrix); 3: the running mode is saved
    _transform_type: ClassVar[type[GroupTransform]] = GroupTransform
    _input_dims: ClassVar[tuple[int, ...]] = (2, 3, 4)

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
        **settings: Any,
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
        check_momentum(name, momentum)
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        self.sync_statistics = sync_statistics
        self.process_group = process_group
        self._warned = False
        transform = self._transform_type(
            eps, method, running, convention, compute_dtype, where=name, **settings
        )
        transform.check_group_size(name, group_size)
        self.eps = transform.eps
        self.rule = transform.rule
        self.method = self.rule.name
        self.running: str = transform.running  # type: ignore[assignment]
        self.convention = transform.settings.name
        self.compute_dtype = compute_dtype
        self._settings = tuple(settings)
        for key in self._settings:  # resolved (e.g. the rule's default truncation)
            setattr(self, key, getattr(transform, key))
        factory = {"device": device, "dtype": dtype}
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features, **factory))  # type: ignore[arg-type]
            self.bias = nn.Parameter(torch.zeros(num_features, **factory))  # type: ignore[arg-type]
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        shapes: dict[str, tuple[int, ...]] = {"running_mean": (num_features,)}
        if transform.tracks_variance:
            shapes["running_var"] = (num_features,)
        shapes["running_matrix"] = (self.num_groups, group_size, group_size)
        for buffer, shape in shapes.items():
            value = torch.zeros(shape, device=device, dtype=torch.float32)
            self.register_buffer(buffer, value if track_running_stats else None)
        self.register_buffer(
            "num_batches_tracked",
            torch.tensor(0, dtype=torch.long, device=device) if track_running_stats else None,
        )
        self.reset_parameters()

    def transform(self) -> GroupTransform:
        """The layer's transform, from its current settings (changing ``layer.eps`` or
        ``layer.rule`` takes effect at the next call, as in BatchNorm).

        Built (and validated) once per distinct settings: an eager call compares the
        settings with the last ones (~0.1 ms saved per call on a CPU)."""
        settings = (self.eps, self.rule, self.running, self.convention, self.compute_dtype)
        settings += tuple(getattr(self, key) for key in self._settings)
        cached = self.__dict__.get("_transform_cache")
        if cached is not None and cached[0] == settings:
            return cached[1]
        transform = self._transform_type(
            *settings[:5], where=type(self).__name__,
            **dict(zip(self._settings, settings[5:])),
        )  # fmt: skip
        if not torch.compiler.is_compiling():  # no side effect for Dynamo to trace
            self.__dict__["_transform_cache"] = (settings, transform)
        return transform

    def _matrix_named(self, meaning: str) -> torch.Tensor:
        """``running_matrix`` when it holds ``meaning`` (the version-1 buffer names)."""
        if self.running != meaning or not self.track_running_stats:
            raise AttributeError(
                f"{type(self).__name__} keeps no running {meaning} (running={self.running!r}, "
                f"track_running_stats={self.track_running_stats})"
            )
        return self._buffer("running_matrix")

    running_covariance = RunningMatrix("covariance")

    def _running(self) -> Optional[RunningValues]:
        if not self.track_running_stats:
            return None
        var = self._buffer("running_var") if self._transform_type.tracks_variance else None
        return RunningValues(self._buffer("running_matrix"), var)

    # ---- BatchNorm conventions ----------------------------------------------------------

    @torch.no_grad()
    def load_batchnorm_statistics(
        self,
        running_mean: torch.Tensor,
        running_var: torch.Tensor,
        eps: float,
        num_batches_tracked: Optional[torch.Tensor] = None,
    ) -> None:
        """Start the running statistics from a BatchNorm's (C,) ``running_mean`` and
        ``running_var`` with its ``eps``: in eval the layer then computes the BatchNorm's
        output (exactly for ZCA with ``running="whitening"`` and PCA with
        ``running="projector"``, the defaults; with ``running="covariance"`` where ``var +
        eps > self.eps``). :func:`~stableeig.nn.convert_batchnorm` and loading a
        BatchNorm's state dict call it."""
        running = self._running()
        if running is None:
            return
        C = self.num_features
        for name, value in (("running_mean", running_mean), ("running_var", running_var)):
            if not isinstance(value, torch.Tensor) or tuple(value.shape) != (C,):
                got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value)
                raise ArgumentError(
                    f"{type(self).__name__}: expected a BatchNorm {name} of shape ({C},) "
                    f"(got {got})"
                )
        values = self._batchnorm_values(running_var, eps)
        self._buffer("running_mean").copy_(running_mean)
        running.matrix.copy_(values.matrix)
        if running.var is not None and values.var is not None:
            running.var.copy_(values.var)
        if num_batches_tracked is not None:
            self._buffer("num_batches_tracked").copy_(num_batches_tracked)

    def reset_running_stats(self) -> None:
        if not self.track_running_stats:
            return
        running = self._running()
        assert running is not None
        self._buffer("running_mean").zero_()
        running.matrix.copy_(self.transform().initial_matrix(self.group_size))
        if running.var is not None:
            running.var.fill_(1.0)
        self._buffer("num_batches_tracked").zero_()

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        if self.affine:
            if self.transform().settings.uniform_weight_init:
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
            + "".join(f", {key}={getattr(self, key)!r}" for key in self._settings)
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
        if self._is_batchnorm_state(state_dict, prefix):
            self._load_batchnorm_state(state_dict, prefix)
        elif (version is None or version < 2) and self.track_running_stats:
            for old in _VERSION1_MATRIX_NAMES:  # version 1 -> 2
                if prefix + old in state_dict:
                    state_dict[prefix + "running_matrix"] = state_dict.pop(prefix + old)
            key = prefix + "running_var"
            if self._transform_type.tracks_variance and key not in state_dict:  # not kept in v1
                state_dict[key] = torch.ones(self.num_features)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def _is_batchnorm_state(self, state_dict: dict[str, Any], prefix: str) -> bool:
        """A BatchNorm's entries (a ``running_var`` of one value per channel, no running
        matrix under any of this layer's names) where this layer's are expected."""
        names = ("running_matrix", *_VERSION1_MATRIX_NAMES)
        var = state_dict.get(prefix + "running_var")
        return (
            self.track_running_stats
            and isinstance(var, torch.Tensor)
            and tuple(var.shape) == (self.num_features,)
            and prefix + "running_mean" in state_dict
            and not any(prefix + name in state_dict for name in names)
        )

    def _batchnorm_values(self, running_var: torch.Tensor, eps: float) -> RunningValues:
        """The running values for a BatchNorm's variance (C,), computed in float64."""
        var = running_var.detach().to(torch.float64).view(self.num_groups, self.group_size)
        return self.transform().from_batchnorm(var, float(eps))

    def _load_batchnorm_state(self, state_dict: dict[str, Any], prefix: str) -> None:
        """Rewrite a BatchNorm's entries as this layer's (:meth:`load_batchnorm_statistics`;
        the BatchNorm's ``eps`` is taken to be this layer's, which
        :func:`~stableeig.nn.convert_batchnorm` copies)."""
        values = self._batchnorm_values(state_dict[prefix + "running_var"], self.eps)
        state_dict[prefix + "running_matrix"] = values.matrix.float()
        if values.var is None:
            del state_dict[prefix + "running_var"]
        else:
            state_dict[prefix + "running_var"] = values.var.float()

    def __prepare_scriptable__(self) -> nn.Module:
        raise RuntimeError(
            f"{type(self).__name__}: TorchScript is not supported (the layer validates and "
            "dispatches in Python); use torch.export (eval, dynamic batch), torch.compile, or "
            "stableeig.nn.fold_eval to fold an eval layer into the preceding convolution"
        )

    # ---- forward ------------------------------------------------------------------------

    def _buffer(self, name: str) -> torch.Tensor:
        value = getattr(self, name)
        assert isinstance(value, torch.Tensor), f"{name} is not tracked"
        return value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        name = type(self).__name__
        check_input(name, x, self.num_features, self._input_dims)
        update = self.training and self.track_running_stats
        factor = 0.0 if self.momentum is None else self.momentum
        if update and self.momentum is None:  # cumulative average, counting this batch
            factor = 1.0 / (float(self._buffer("num_batches_tracked")) + 1)
        sync_statistics = self.sync_statistics and self.training  # as SyncBatchNorm
        warn = not self._warned
        y = group_transform(
            x,
            self.transform(),
            self.group_size,
            running_mean=self._buffer("running_mean") if self.track_running_stats else None,
            running=self._running(),
            weight=self.weight,
            bias=self.bias,
            training=self.training or not self.track_running_stats,
            momentum=factor,
            sync_statistics=sync_statistics,
            process_group=self.process_group,
            warn=warn,
            name=name,
        )
        synchronized = sync_enabled(sync_statistics, self.process_group, True)
        if update and (x.numel() > 0 or synchronized):  # the batch was accepted
            self._buffer("num_batches_tracked").add_(1)
        if warn and (self.training or not self.track_running_stats):  # a layer warns once
            self._warned = warning_due(x, self.group_size, sync_statistics, synchronized)
        return y
