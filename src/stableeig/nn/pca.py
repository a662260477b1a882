"""PCA denoising layers: standardize, project each group onto its principal subspace.

Per group of ``d`` channels: ``x̂ = D^{-1/2} (x - μ)`` with ``D`` the per-channel variances
plus eps, ``M`` the covariance of ``x̂`` plus ``eps·I``, and ``y = γ ∘ (P x̂) + β`` with ``P``
the projector onto the top eigenvectors of ``M``: a fixed ``n_components``, or the fewest
holding ``energy`` of the trace (the paper's best: 0.99). With ``method="loewner"`` the
gradient is the exact projector gradient, in which only pairs across the cut appear.
"""

from __future__ import annotations

from typing import Any, Optional, Union

import torch

from .._docs import fill_args
from ..rules import Rule
from ._base import GroupLayer, RunningMatrix
from .denoising import PCATransform, pca_transform, projector_function

__all__ = [
    "PCADenoising1d",
    "PCADenoising2d",
    "PCATransform",
    "pca_transform",
    "projector_function",
]


class _PCADenoising(GroupLayer):
    _transform_type = PCATransform

    def __init__(
        self,
        num_features: int,
        group_size: Optional[int] = None,
        n_components: Optional[int] = None,
        energy: float = 0.99,
        method: Union[str, Rule] = "loewner",
        *,
        eps: float = 1e-4,
        momentum: Optional[float] = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        running: Optional[str] = None,
        convention: str = "stableeig",
        compute_dtype: Optional[torch.dtype] = None,
        sync_statistics: bool = False,
        process_group: Optional[Any] = None,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
        **settings: Any,
    ) -> None:
        super().__init__(
            num_features, group_size, eps, momentum, affine, track_running_stats, method,
            running, convention, compute_dtype, sync_statistics, process_group, device, dtype,
            n_components=n_components, energy=energy, **settings,
        )  # fmt: skip

    running_projector = RunningMatrix("projector")  # with running="projector"


_ARGS = """
    Args:
        num_features: number of channels ``C``.
        group_size: channels per group ``d``; must divide ``C``. Default: None (``d = C``).
        n_components: eigenvectors kept per group, in ``[1, d]``; overrides ``energy``.
            Default: None.
        energy: keep the fewest top eigenvectors whose eigenvalues hold this share of the
            trace (chosen per group and batch, without a host sync). Default: 0.99.
        method: ``"loewner"`` (exact projector gradient), ``"power"`` (the paper's
            SVD-PI), ``"taylor"``, ``"clip"``, ``"analytic"``, ``"pi"``. Default: ``"loewner"``.
        running: ``"projector"`` (EMA of the running variance and of the projector, the
            paper's) or ``"covariance"`` (EMA of the covariance, decomposed in eval).
            Default: ``"projector"``.
        convention: ``"stableeig"`` (default: standardize by the biased batch variance, as
            BatchNorm does; running projector starts at the identity) or ``"reference"``
            (the authors' code: the unbiased variance, running projector starting at 0,
            weight initialised ``uniform_()``).

    ``eps``, ``momentum``, ``affine``, ``track_running_stats``, ``compute_dtype``,
    ``sync_statistics``, ``process_group``, ``device`` and ``dtype`` are as in
    :class:`stableeig.nn.ZCAWhitening2d`.
"""


class PCADenoising1d(_PCADenoising):
    """PCA denoising of ``(N, C)`` or ``(N, C, L)`` activations, per group of channels.
    {args}
    Shape:
        - Input: (N, C) or (N, C, L). Output: same shape and dtype.

    Examples:
        >>> import torch, stableeig as se
        >>> layer = se.nn.PCADenoising1d(8, n_components=2)
        >>> layer(torch.randn(32, 8)).shape
        torch.Size([32, 8])
    """

    _input_dims = (2, 3)


class PCADenoising2d(_PCADenoising):
    """PCA denoising of ``(N, C, H, W)`` activations, per group of channels.
    {args}
    Shape:
        - Input: (N, C, H, W), contiguous or channels_last. Output: same shape and dtype.

    Examples:
        >>> import torch, stableeig as se
        >>> layer = se.nn.PCADenoising2d(16, group_size=8, energy=0.99, method="power")
        >>> layer(torch.randn(4, 16, 8, 8)).shape
        torch.Size([4, 16, 8, 8])
    """

    _input_dims = (4,)


fill_args(_ARGS, PCADenoising1d, PCADenoising2d)
