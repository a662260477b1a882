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

from .. import _validation as checks
from .._autograd import SpectralFunction
from .._docs import fill_args
from ..exceptions import ArgumentError
from ..rules import Rule
from ..spectral import energy_projector_function, spectral_unchecked, top_k_function
from ._base import _GroupTransform
from ._engine import unbiased
from .conventions import get_convention

__all__ = ["PCADenoising1d", "PCADenoising2d", "pca_transform", "projector_function"]


def projector_function(n_components: Optional[int], energy: float) -> SpectralFunction:
    """The top ``n_components`` projector, or (``None``) the ``energy`` projector."""
    if n_components is not None:
        return top_k_function(n_components)
    return energy_projector_function(energy)


def pca_transform(
    covariance: torch.Tensor,
    count: torch.Tensor,
    eps: float,
    rule: Rule,
    function: SpectralFunction,
    convention: str = "stableeig",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Standardize, then project: ``T = P D^{-1/2}`` (G, d, d) from (G, d, d) covariances.

    Returns ``T`` and the values the running statistics average: ``"var"`` (C,), the
    unbiased variance, and ``"projector"`` (G, d, d).
    """
    variance = covariance.diagonal(dim1=-2, dim2=-1)  # (G, d), biased
    unbiased_variance = get_convention(convention).unbiased_standardization
    standardizing = unbiased(variance, count) if unbiased_variance else variance
    scale = (standardizing + eps).rsqrt()
    correlation = covariance * scale.unsqueeze(-1) * scale.unsqueeze(-2)
    eye = torch.eye(covariance.shape[-1], dtype=covariance.dtype, device=covariance.device)
    matrix = correlation + eps * eye
    projector = spectral_unchecked(matrix, function, rule)[0]  # any rule kind
    values = {"var": unbiased(variance, count).reshape(-1), "projector": projector}
    return projector * scale.unsqueeze(-2), values


class _PCADenoising(_GroupTransform):
    _running_choices = ("projector", "covariance")

    def __init__(
        self,
        num_features: int,
        group_size: Optional[int] = None,
        n_components: Optional[int] = None,
        energy: float = 0.99,
        method: Union[str, Rule] = "loewner",
        **kwargs: Any,
    ) -> None:
        super().__init__(num_features, group_size, method=method, **kwargs)
        name = type(self).__name__
        self.n_components = checks.check_k(
            f"{name}: n_components", n_components, self.group_size, allow_none=True
        )
        if isinstance(energy, bool) or not isinstance(energy, (int, float)) or not 0 < energy <= 1:
            raise ArgumentError(f"{name}: expected energy in (0, 1] (got {energy!r})")
        self.energy = float(energy)

    def extra_repr(self) -> str:
        kept = f"n_components={self.n_components}" if self.n_components else f"energy={self.energy}"
        return f"{super().extra_repr()}, {kept}"

    _legacy_names = ("running_projector",)

    def _running_buffers(self) -> dict[str, str]:
        return {"running_var": "vector", "running_matrix": "matrix"}

    @property
    def running_projector(self) -> torch.Tensor:
        """The running projector (G, d, d), with ``running="projector"``."""
        return self._matrix_named("projector")

    def _projector_function(self) -> SpectralFunction:
        return projector_function(self.n_components, self.energy)

    def _initial_matrix(self) -> torch.Tensor:
        """The running projector starts at the identity (``"reference"``: at 0, as the
        reference code's ``reset_running_stats``)."""
        if get_convention(self.convention).zero_projector_start and self.running == "projector":
            return torch.zeros(self.group_size, self.group_size)
        return super()._initial_matrix()

    def _batch_transform(
        self, covariance: torch.Tensor, count: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        transform, values = pca_transform(
            covariance, count, self.eps, self.rule, self._projector_function(), self.convention
        )
        return transform, {"var": values["var"], "matrix": values["projector"]}

    def _running_transform(self) -> torch.Tensor:
        if self.running == "projector":
            scale = (self._buffer("running_var") + self.eps).rsqrt()
            return self._buffer("running_matrix") * scale.view(self.num_groups, 1, self.group_size)
        return self._transform_from_running_covariance()


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
        eps, momentum, affine, track_running_stats, compute_dtype, sync_statistics,
        process_group, device, dtype: as in :class:`stableeig.nn.ZCAWhitening2d`.
"""


class PCADenoising1d(_PCADenoising):
    """PCA denoising of ``(N, C)`` or ``(N, C, L)`` activations, per group of channels.
    {args}
    Shape:
        - Input: (N, C) or (N, C, L). Output: same shape and dtype.

    Example:
        >>> import torch, stableeig as se
        >>> layer = se.nn.PCADenoising1d(8, n_components=2)
        >>> layer(torch.randn(32, 8)).shape
        torch.Size([32, 8])
    """

    _input_dims = (2, 3)
    _input_description = "2D (N, C) or 3D (N, C, L)"


class PCADenoising2d(_PCADenoising):
    """PCA denoising of ``(N, C, H, W)`` activations, per group of channels.
    {args}
    Shape:
        - Input: (N, C, H, W), contiguous or channels_last. Output: same shape and dtype.

    Example:
        >>> import torch, stableeig as se
        >>> layer = se.nn.PCADenoising2d(16, group_size=8, energy=0.99, method="power")
        >>> layer(torch.randn(4, 16, 8, 8)).shape
        torch.Size([4, 16, 8, 8])
    """

    _input_dims = (4,)
    _input_description = "4D (N, C, H, W)"


fill_args(_ARGS, PCADenoising1d, PCADenoising2d)
