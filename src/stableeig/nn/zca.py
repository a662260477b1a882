"""ZCA whitening layers: a drop-in alternative to batch normalization.

Per group of ``d`` channels, ``y = γ ∘ (M^{-1/2} (x - μ)) + β`` with ``M`` the batch
covariance plus ``eps·I``. The whitening matrix and its gradient come from the chosen
``method`` (a :mod:`stableeig.rules` rule); ``truncation`` picks the eigenvectors whitened
(:mod:`stableeig.nn.whitening` has the transform and the truncation rules).
"""

from __future__ import annotations

from typing import Any, Optional, Union

import torch

from .._docs import fill_args
from ..rules import Rule
from ._base import GroupLayer, RunningMatrix
from .whitening import (
    TRUNCATIONS,
    ZCATransform,
    check_truncation,
    paper_truncation_mask,
    pi_truncation_mask,
    zca_transform,
)

__all__ = [
    "TRUNCATIONS",
    "ZCATransform",
    "ZCAWhitening1d",
    "ZCAWhitening2d",
    "check_truncation",
    "paper_truncation_mask",
    "pi_truncation_mask",
    "zca_transform",
]


class _ZCAWhitening(GroupLayer):
    _transform_type = ZCATransform

    def __init__(  # GroupLayer's arguments, spelled out for help() and the API reference
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
        *,
        truncation: Optional[str] = None,
        **settings: Any,
    ) -> None:
        super().__init__(
            num_features, group_size, eps, momentum, affine, track_running_stats, method,
            running, convention, compute_dtype, sync_statistics, process_group, device, dtype,
            truncation=truncation, **settings,
        )  # fmt: skip

    running_whitening = RunningMatrix("whitening")  # with running="whitening"


_ARGS = """
    Args:
        num_features: number of channels ``C``.
        group_size: channels per group ``d``; must divide ``C``. Groups are whitened
            independently (a batch of ``C/d`` decompositions). Default: ``None`` (``d = C``).
        eps: ridge added to each group covariance. Default: 1e-4 (the paper's).
        momentum: factor of the running averages; ``None`` for a cumulative average.
            Default: 0.1.
        affine: learnable per-channel weight (init 1) and bias (init 0). Default: True.
        track_running_stats: keep running statistics for eval; if False, eval uses batch
            statistics too. Default: True.
        method: the gradient rule, by name or as a :mod:`stableeig.rules` object:
            ``"loewner"`` (exact, stable), ``"power"`` (the paper's SVD-PI layer),
            ``"taylor"``, ``"clip"``, ``"analytic"`` and ``"pi"`` (the paper's failing
            baselines, not stabilized; ``"pi"`` also decomposes by power iteration).
            Settings go in the object, e.g. ``stableeig.rules.Power(num_iters=29)``.
            Default: ``"loewner"``.
        truncation: which eigenvectors are whitened: ``"none"`` (all), ``"paper"`` (the
            SVD-PI rule, see :func:`paper_truncation_mask`: whitens only the kept subspace
            and zeroes the rest) or ``"pi"`` (the PI baseline's rule, see
            :func:`pi_truncation_mask`). Default: ``None`` — ``"paper"`` for ``power``,
            ``"pi"`` for ``pi``, ``"none"`` otherwise.
        running: what eval uses: ``"whitening"`` (EMA of the whitening matrix, the paper's)
            or ``"covariance"`` (EMA of the unbiased covariance, whitened in eval; each eval
            forward then decomposes it). Default: ``"whitening"``.
        convention: ``"stableeig"`` (default) or ``"reference"``, the authors' code's
            arithmetic where the two differ: the literal truncation tests ``λ <= eps`` and
            energy ``>= 1 - eps`` with step-by-step deflation, Rayleigh-quotient eigenvalues
            in the truncated whitening, and weight initialised ``uniform_()``.
        compute_dtype: least precision of the decomposition. Default: None (float64).
        sync_statistics: all-reduce the batch statistics over ``process_group`` in training
            (like ``nn.SyncBatchNorm``). Default: False.
        process_group: the group for ``sync_statistics``. Default: None (the world).
        device, dtype: of the affine parameters (running statistics stay float32).

    One host synchronization per training forward checks the batch covariance for NaN/Inf
    (raises :class:`stableeig.NonFiniteError` instead of corrupting the running statistics).
"""


class ZCAWhitening1d(_ZCAWhitening):
    """ZCA whitening of ``(N, C)`` or ``(N, C, L)`` activations, per group of channels.
    {args}
    Shape:
        - Input: (N, C) or (N, C, L). Output: same shape and dtype.

    Examples:
        >>> import torch, stableeig as se
        >>> layer = se.nn.ZCAWhitening1d(8, group_size=4)
        >>> y = layer(torch.randn(32, 8))
        >>> covariance = y.T @ y / 32                   # each group of 4 is whitened
        >>> torch.allclose(covariance[:4, :4], torch.eye(4), atol=1e-3)
        True
    """

    _input_dims = (2, 3)


class ZCAWhitening2d(_ZCAWhitening):
    """ZCA whitening of ``(N, C, H, W)`` activations, per group of channels.
    {args}
    Shape:
        - Input: (N, C, H, W), contiguous or channels_last. Output: same shape, dtype and
          memory format.

    Examples:
        >>> import torch, stableeig as se
        >>> layer = se.nn.ZCAWhitening2d(16, group_size=8)
        >>> layer(torch.randn(4, 16, 8, 8)).shape
        torch.Size([4, 16, 8, 8])
    """

    _input_dims = (4,)


fill_args(_ARGS, ZCAWhitening1d, ZCAWhitening2d)
