"""The forward of every group layer, like ``torch.nn.functional.batch_norm``.

:func:`group_transform` is the one forward (checks, warnings, synchronization, statistics,
running updates, the affine map) for any :class:`~stableeig.nn.transforms.GroupTransform`;
:func:`zca_whitening` and :func:`pca_denoising` build their transform and call it, and the
modules of :mod:`stableeig.nn` call it too, as ``_BatchNorm.forward`` calls
``F.batch_norm``.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Union

import torch

from .. import _validation as checks
from .._precision import autocast_off
from ..rules import Rule
from ._checks import (
    check_buffer,
    check_input,
    check_momentum,
    check_samples,
    warn_rank_deficient,
    warn_unsynchronized,
)
from .conventions import Convention
from .denoising import PCATransform
from .statistics import (
    GradientLink,
    affine_by_group,
    finite_moments,
    group_affine,
    one_pass_gradient,
    samples_by_group,
    sync_enabled,
    whole_tensor,
)
from .transforms import GroupTransform, RunningValues
from .whitening import ZCATransform

__all__ = ["group_transform", "pca_denoising", "zca_whitening"]


def _group_size(name: str, x: torch.Tensor, group_size: Optional[int]) -> int:
    C = x.shape[1]
    d = C if group_size is None else checks.check_int_at_least(f"{name}: group_size", group_size, 1)
    if C % d:
        raise checks.ArgumentError(
            f"{name}: expected group_size to divide the {C} channels (got group_size = {d})"
        )
    return d


def _check_statistics(
    name: str,
    transform: GroupTransform,
    shapes: tuple[int, int, int],
    running_mean: Optional[torch.Tensor],
    running: Optional[RunningValues],
    training: bool,
) -> bool:
    """Shapes of the running statistics; whether they are given (both, or neither)."""
    C, G, d = shapes
    names = ["running_mean", *(["running_var"] if transform.tracks_variance else [])]
    names.append(f"running_{transform.running}")
    given = [running_mean]
    if running is not None:
        given += [running.var] if transform.tracks_variance else []
        given.append(running.matrix)
    tracked = len(given) == len(names) and all(t is not None for t in given)
    if not tracked:
        if not training:
            listed = ", ".join(names[:-1]) + " and " + names[-1]
            raise checks.ArgumentError(f"{name}: expected {listed} when training=False")
        if any(t is not None for t in given):
            raise checks.ArgumentError(
                f"{name}: expected all of {', '.join(names)} or none of them (got only some)"
            )
        return False
    assert running is not None
    check_buffer(name, "running_mean", running_mean, (C,))
    check_buffer(name, names[-1], running.matrix, (G, d, d))
    if transform.tracks_variance:
        check_buffer(name, "running_var", running.var, (C,))
    return True


def group_transform(
    x: torch.Tensor,
    transform: GroupTransform,
    group_size: Optional[int] = None,
    *,
    running_mean: Optional[torch.Tensor] = None,
    running: Optional[RunningValues] = None,
    weight: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    training: bool = True,
    momentum: float = 0.1,
    sync_statistics: bool = False,
    process_group: Optional[Any] = None,
    warn: bool = True,
    name: str = "group_transform",
) -> torch.Tensor:
    """``y = γ ∘ (T (x - μ)) + β`` per group of ``d`` channels, ``T`` made by ``transform``.

    With ``training=True`` the batch statistics are used and, when ``running_mean`` and
    ``running`` are given, averaged into them in place (``lerp(momentum)``, after every check
    passed); with ``training=False`` the running statistics are used.

    Args:
        x: activations (N, C), (N, C, L) or (N, C, H, W), real floating.
        transform: how ``T`` is made (:class:`~stableeig.nn.ZCATransform`,
            :class:`~stableeig.nn.PCATransform`, or a subclass of
            :class:`~stableeig.nn.transforms.GroupTransform`).
        group_size: channels per group ``d`` (divides C). Default: None (``d = C``).
        running_mean: (C,) running mean. Default: None.
        running: the other running buffers (a :class:`~stableeig.nn.transforms.RunningValues`
            of a (C/d, d, d) matrix and, for standardizing transforms, a (C,) variance).
        weight, bias: (C,) affine parameters. Default: None (identity).
        training: use (and update) batch statistics. Default: True.
        momentum: factor of the running averages, in [0, 1]. Default: 0.1.
        sync_statistics: all-reduce the batch statistics over ``process_group`` when
            torch.distributed runs more than one process (else a warning). Default: False.
        process_group: the group to synchronize over. Default: None (the world).
        warn: emit :class:`~stableeig.nn.RankDeficientWarning` and the unsynchronized
            warning (the modules warn once). Default: True.
        name: the caller, in error messages.

    Returns:
        Same shape, dtype and memory format as ``x``.
    """
    check_input(name, x, None, (2, 3, 4))
    d = _group_size(name, x, group_size)
    C = x.shape[1]
    G = C // d
    check_momentum(name, momentum, allow_none=False)
    transform.check_group_size(name, d)
    tracked = _check_statistics(name, transform, (C, G, d), running_mean, running, training)
    check_buffer(name, "weight", weight, (C,))
    check_buffer(name, "bias", bias, (C,))
    sync = training and sync_enabled(sync_statistics, process_group, True)
    check_samples(name, x, training, sync)
    if warn and training:
        warn_unsynchronized(name, sync_statistics, sync)
        warn_rank_deficient(name, x, d, transform.eps, sync)
    if x.numel() == 0 and not sync:  # a synchronized empty batch still joins the collectives
        return x.clone()
    x3 = x.reshape(x.shape[0], C, math.prod(x.shape[2:]))
    with autocast_off(x.device):
        work = x3.to(torch.float64 if x.dtype == torch.float64 else torch.float32).contiguous()
        link: Optional[GradientLink] = None
        # (N, C) and small maps: GEMMs on each group's centered samples (G, N·L, d)
        whole = whole_tensor(work) and not sync
        if training:
            # the input gradient written once, by the moments backward (eager only)
            link = GradientLink() if one_pass_gradient(work) else None
            mean, covariance, count, work = finite_moments(
                name, work, d, sync, process_group, link, centered=whole
            )
            covariance = covariance.to(transform.working_dtype(work.dtype))
            T, values = transform.batch((covariance + covariance.mT) / 2, count)
            if tracked:
                assert running_mean is not None and running is not None
                _update(running_mean, running, mean, values, momentum)
        else:
            assert running_mean is not None and running is not None
            T, mean = transform.from_running(running), running_mean
        dtype = work.dtype
        T, mean = T.to(dtype), mean.to(dtype)
        if weight is not None:
            T = T * weight.to(dtype).view(G, d, 1)
        bias = None if bias is None else bias.to(dtype).view(G, d, 1)
        if whole:  # training: work holds the centered samples already
            centered = work if training else samples_by_group(work, d) - mean.view(G, 1, d)
            y = affine_by_group(centered, T, bias, x3.shape)
        else:
            shift = -torch.bmm(T, mean.view(G, d, 1))  # (G, d, 1)
            y = group_affine(work, T, shift if bias is None else shift + bias, link=link)
    y = y.view(x.shape).to(x.dtype)
    if x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last):
        y = y.contiguous(memory_format=torch.channels_last)
    return y


def _update(
    running_mean: torch.Tensor,
    running: RunningValues,
    mean: torch.Tensor,
    values: RunningValues,
    momentum: float,
) -> None:
    """Running averages ``lerp(momentum)`` in place, each in its buffer's dtype."""
    with torch.no_grad():
        for buffer, value in zip((running_mean, *running), (mean, *values)):
            if buffer is not None and value is not None:
                buffer.lerp_(value.detach().to(buffer.dtype), momentum)


def _matrix_mode(
    name: str, kind: str, matrix: Optional[torch.Tensor], covariance: Optional[torch.Tensor]
) -> tuple[str, Optional[torch.Tensor]]:
    """The running mode and matrix from a functional form's ``running_<kind>`` and
    ``running_covariance`` (at most one)."""
    if matrix is not None and covariance is not None:
        raise checks.ArgumentError(
            f"{name}: expected running_{kind} or running_covariance, not both"
        )
    return (kind, matrix) if covariance is None else ("covariance", covariance)


def zca_whitening(
    x: torch.Tensor,
    group_size: Optional[int] = None,
    *,
    running_mean: Optional[torch.Tensor] = None,
    running_whitening: Optional[torch.Tensor] = None,
    running_covariance: Optional[torch.Tensor] = None,
    weight: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    training: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-4,
    method: Union[str, Rule] = "loewner",
    truncation: Optional[str] = None,
    convention: Union[str, Convention] = "stableeig",
    compute_dtype: Optional[torch.dtype] = None,
    sync_statistics: bool = False,
    process_group: Optional[Any] = None,
    shrinkage: float = 0.0,
) -> torch.Tensor:
    """ZCA whitening per group of channels: ``γ ∘ ((Σ + εI)^{-1/2} (x - μ)) + β``.

    With ``training=True`` the batch statistics are used and, if ``running_mean`` and a
    running matrix are given, averaged into them in place (``lerp(momentum)``);
    with ``training=False`` the running statistics are used.

    Args:
        x: activations (N, C), (N, C, L) or (N, C, H, W), real floating.
        group_size: channels per group ``d`` (divides C). Default: None (``d = C``).
        running_mean: (C,) running mean, float32. Default: None.
        running_whitening: (C/d, d, d) running whitening (the paper's). Default: None.
        running_covariance: (C/d, d, d) running unbiased covariance instead, whitened in
            eval (``running="covariance"`` of the modules). Default: None.
        weight, bias: (C,) affine parameters. Default: None (identity).
        training: use (and update) batch statistics. Default: True.
        momentum: of the running averages, in [0, 1]. Default: 0.1.
        eps, method, truncation, convention, compute_dtype, sync_statistics, process_group:
            as in :class:`stableeig.nn.ZCAWhitening2d`.
        shrinkage: ``α`` in [0, 1]: whiten ``(1 - α) Σ + α I`` (W-MSE). Default: 0.

    Returns:
        The whitened activations, same shape and dtype as ``x``.

    Examples:
        >>> import torch, stableeig as se
        >>> y = se.nn.functional.zca_whitening(torch.randn(64, 4), group_size=2)
        >>> torch.allclose(y.T @ y / 64, torch.eye(4), atol=1e-2)  # each group of 2 whitened
        False
        >>> torch.allclose((y.T @ y / 64)[:2, :2], torch.eye(2), atol=1e-2)
        True
    """
    name = "zca_whitening"
    mode, matrix = _matrix_mode(name, "whitening", running_whitening, running_covariance)
    transform = ZCATransform(
        eps, method, mode, convention, compute_dtype, where=name, truncation=truncation,
        shrinkage=shrinkage,
    )  # fmt: skip
    running = None if matrix is None else RunningValues(matrix)
    return group_transform(
        x, transform, group_size, running_mean=running_mean, running=running, weight=weight,
        bias=bias, training=training, momentum=momentum, sync_statistics=sync_statistics,
        process_group=process_group, name=name,
    )  # fmt: skip


def pca_denoising(
    x: torch.Tensor,
    group_size: Optional[int] = None,
    *,
    running_mean: Optional[torch.Tensor] = None,
    running_var: Optional[torch.Tensor] = None,
    running_projector: Optional[torch.Tensor] = None,
    running_covariance: Optional[torch.Tensor] = None,
    weight: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    training: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-4,
    n_components: Optional[int] = None,
    energy: float = 0.99,
    method: Union[str, Rule] = "loewner",
    convention: Union[str, Convention] = "stableeig",
    compute_dtype: Optional[torch.dtype] = None,
    sync_statistics: bool = False,
    process_group: Optional[Any] = None,
) -> torch.Tensor:
    """PCA denoising per group of channels: standardize, project onto the top eigenvectors.

    Running statistics (``running_mean``, ``running_var`` (C,), and ``running_projector``
    or ``running_covariance`` (C/d, d, d)) are used and updated as in :func:`zca_whitening`.

    ``x``, ``group_size``, ``running_mean``, ``running_covariance``, ``weight``, ``bias``,
    ``training``, ``momentum``, ``eps``, ``method``, ``convention``, ``compute_dtype``,
    ``sync_statistics`` and ``process_group`` are as in :func:`zca_whitening`.

    Args:
        running_var: (C,) running unbiased variance. Default: None.
        running_projector: (C/d, d, d) running projector (the paper's). Default: None.
        n_components: eigenvectors kept per group (overrides ``energy``). Default: None.
        energy: keep the fewest top eigenvectors holding this share of the trace. Default: 0.99.

    Returns:
        The denoised activations, same shape and dtype as ``x``.

    Examples:
        >>> import torch, stableeig as se
        >>> se.nn.functional.pca_denoising(torch.randn(32, 8), n_components=2).shape
        torch.Size([32, 8])
    """
    name = "pca_denoising"
    mode, matrix = _matrix_mode(name, "projector", running_projector, running_covariance)
    transform = PCATransform(
        eps, method, mode, convention, compute_dtype, where=name, n_components=n_components,
        energy=energy,
    )  # fmt: skip
    running = None
    if matrix is not None or running_var is not None:
        running = RunningValues(matrix, running_var)  # type: ignore[arg-type]
    return group_transform(
        x, transform, group_size, running_mean=running_mean, running=running, weight=weight,
        bias=bias, training=training, momentum=momentum, sync_statistics=sync_statistics,
        process_group=process_group, name=name,
    )  # fmt: skip
