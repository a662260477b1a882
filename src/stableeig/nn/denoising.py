"""The PCA denoising transform: standardize each channel, then project each group onto the
top eigenvectors of its correlation matrix (a fixed number, or the fewest holding a share of
the trace). The layers (:mod:`stableeig.nn.pca`) and
:func:`stableeig.nn.functional.pca_denoising` use :class:`PCATransform`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional, Union

import torch

from .. import _validation as checks
from .._autograd import SpectralFunction
from ..exceptions import ArgumentError
from ..rules import Rule
from ..spectral import energy_projector_function, spectral_unchecked, top_k_function
from .conventions import Convention, get_convention
from .transforms import GroupTransform, RunningValues, unbiased

__all__ = ["PCATransform", "pca_transform", "projector_function"]


def projector_function(n_components: Optional[int], energy: float) -> SpectralFunction:
    """The top ``n_components`` projector, or (``None``) the ``energy`` projector."""
    if n_components is not None:
        return top_k_function(n_components)
    return energy_projector_function(energy)


def pca_transform(
    covariance: torch.Tensor,
    count: Optional[torch.Tensor],
    eps: float,
    rule: Rule,
    function: SpectralFunction,
    convention: Union[str, Convention] = "stableeig",
) -> tuple[torch.Tensor, RunningValues]:
    """Standardize, then project: ``T = P D^{-1/2}`` (G, d, d) from (G, d, d) covariances.

    ``count``: samples behind the biased ``covariance`` (None: it is already unbiased).
    Returns ``T`` and the values the running statistics average: the projector (G, d, d)
    and the unbiased variance (C,).
    """
    variance = covariance.diagonal(dim1=-2, dim2=-1)  # (G, d)
    unbiased_variance = variance if count is None else unbiased(variance, count)
    standardize_unbiased = get_convention(convention).unbiased_standardization
    scale = ((unbiased_variance if standardize_unbiased else variance) + eps).rsqrt()
    correlation = covariance * scale.unsqueeze(-1) * scale.unsqueeze(-2)
    eye = torch.eye(covariance.shape[-1], dtype=covariance.dtype, device=covariance.device)
    projector = spectral_unchecked(correlation + eps * eye, function, rule)[0]  # any rule kind
    return projector * scale.unsqueeze(-2), RunningValues(projector, unbiased_variance.flatten())


@dataclass(frozen=True)
class PCATransform(GroupTransform):
    """PCA denoising: ``T = P D^{-1/2}``, the projector onto the top eigenvectors of the
    standardized covariance, after the standardization.

    Args:
        n_components: eigenvectors kept per group (overrides ``energy``). Default: None.
        energy: keep the fewest top eigenvectors holding this share of the trace, in (0, 1].
            Default: 0.99.
        eps, method, running, convention, compute_dtype, where: as in
            :class:`~stableeig.nn.transforms.GroupTransform`; ``running`` is
            ``"projector"`` (default) or ``"covariance"``.
    """

    n_components: Optional[int] = None
    energy: float = 0.99

    running_choices: ClassVar[tuple[str, ...]] = ("projector", "covariance")
    tracks_variance: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        name = self.where or type(self).__name__
        energy = self.energy
        if isinstance(energy, bool) or not isinstance(energy, (int, float)) or not 0 < energy <= 1:
            raise ArgumentError(f"{name}: expected energy in (0, 1] (got {energy!r})")
        if self.n_components is not None:
            checks.check_int_at_least(f"{name}: n_components", self.n_components, 1)
        object.__setattr__(self, "energy", float(energy))

    def check_group_size(self, name: str, group_size: int) -> None:
        checks.check_k(f"{name}: n_components", self.n_components, group_size, allow_none=True)

    def transform(
        self, covariance: torch.Tensor, count: Optional[torch.Tensor]
    ) -> tuple[torch.Tensor, RunningValues]:
        function = projector_function(self.n_components, self.energy)
        return pca_transform(covariance, count, self.eps, self.rule, function, self.settings)

    def from_averages(self, running: RunningValues) -> torch.Tensor:
        assert running.var is not None
        G, d, _ = running.matrix.shape
        return running.matrix * (running.var + self.eps).rsqrt().view(G, 1, d)

    def from_batchnorm(self, var: torch.Tensor, eps: float) -> RunningValues:
        """``"projector"``: the identity and ``var + eps - self.eps`` (where positive) as the
        running variance, so that ``P D^{-1/2}`` is BatchNorm's ``(var + eps)^{-1/2}``
        (``"covariance"``: :meth:`GroupTransform.from_batchnorm`)."""
        if self.running != "projector":
            return super().from_batchnorm(var, eps)
        shifted = var + (eps - self.eps)
        G, d = var.shape
        eye = torch.eye(d, dtype=var.dtype, device=var.device).expand(G, d, d)
        return RunningValues(eye.clone(), torch.where(shifted > 0, shifted, var).flatten())

    def initial_matrix(self, group_size: int) -> torch.Tensor:
        """The identity (``"reference"``: a running projector starts at 0, as the reference
        code's ``reset_running_stats``)."""
        if self.settings.zero_projector_start and self.running == "projector":
            return torch.zeros(group_size, group_size)
        return super().initial_matrix(group_size)
