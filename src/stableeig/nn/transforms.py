"""What a group layer computes from its statistics, as frozen settings objects.

A layer (:func:`stableeig.nn.functional.group_transform`) outputs, per group of ``d``
channels, ``y = γ ∘ (T (x - μ)) + β``. A :class:`GroupTransform` says how ``T`` (G, d, d)
is made: from a batch covariance in training (:meth:`GroupTransform.batch`) and from the
running averages in eval (:meth:`GroupTransform.from_running`). ZCA whitening and PCA
denoising are two subclasses; a new layer kind is one more.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, NamedTuple, Optional, Union

import torch

from .. import _validation as checks
from .._precision import working_dtype
from ..rules import Rule, resolve
from .conventions import Convention, get_convention

__all__ = ["GroupTransform", "RunningValues", "unbiased"]


def unbiased(biased: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Bessel's correction ``count / (count - 1)``, as BatchNorm's running variance."""
    count = count.to(biased.dtype)
    return biased * (count / (count - 1).clamp_min(1))


class RunningValues(NamedTuple):
    """The values a layer's running statistics average besides the mean (also the buffers
    themselves, in eval).

    Attributes:
        matrix: (G, d, d): what the transform's ``running`` names (the whitening matrix, the
            projector, or the unbiased covariance).
        var: (C,) the unbiased per-channel variance, for transforms that standardize
            (``GroupTransform.tracks_variance``); None otherwise.
    """

    matrix: torch.Tensor
    var: torch.Tensor | None = None  # (pdoc evaluates NamedTuple fields without Optional)


@dataclass(frozen=True)
class GroupTransform:
    """How ``T`` is made. Subclasses define :meth:`transform` and :meth:`from_averages`.

    Args:
        eps: the ridge (positive).
        method: the gradient rule, by name or object (:mod:`stableeig.rules`); stored
            resolved in ``rule``.
        running: what the running matrix averages: one of the class's ``running_choices``
            (the first is the default), ``"covariance"`` included for every transform.
        convention: ``"stableeig"`` or ``"reference"`` (:mod:`stableeig.nn.conventions`),
            stored as the :class:`~stableeig.nn.Convention` record.
        compute_dtype: least precision of the decomposition (None: float64).
        where: prefix of error messages (the calling layer's name).
    """

    eps: float = 1e-4
    method: Union[str, Rule] = "loewner"
    running: Optional[str] = None
    convention: Union[str, Convention] = "stableeig"
    compute_dtype: Optional[torch.dtype] = None
    where: str = field(default="", repr=False, compare=False)

    running_choices: ClassVar[tuple[str, ...]] = ("covariance",)
    tracks_variance: ClassVar[bool] = False

    def __post_init__(self) -> None:
        name = self.where or type(self).__name__
        checks.check_positive(f"{name}: eps", self.eps)
        rule = resolve(self.method, argument=f"{name}: method")
        running = self.running_choices[0] if self.running is None else self.running
        checks.check_choice(f"{name}: running", running, self.running_choices)
        convention = get_convention(self.convention, f"{name}: convention")
        working_dtype(torch.float32, self.compute_dtype)  # validates
        object.__setattr__(self, "method", rule)
        object.__setattr__(self, "running", running)
        object.__setattr__(self, "convention", convention)

    @property
    def rule(self) -> Rule:
        """The resolved gradient rule."""
        assert isinstance(self.method, Rule)
        return self.method

    @property
    def settings(self) -> Convention:
        """The resolved convention record."""
        assert isinstance(self.convention, Convention)
        return self.convention

    def check_group_size(self, name: str, group_size: int) -> None:
        """Refuse settings that do not fit groups of ``group_size`` (default: all fit)."""

    # ---- subclass interface -------------------------------------------------------------

    def transform(
        self, covariance: torch.Tensor, count: Optional[torch.Tensor]
    ) -> tuple[torch.Tensor, RunningValues]:
        """``T`` (G, d, d) from symmetric covariances (G, d, d) in working precision over
        ``count`` samples (None: already the unbiased estimate), and the values the running
        statistics average."""
        raise NotImplementedError

    def from_averages(self, running: RunningValues) -> torch.Tensor:
        """Eval ``T`` (G, d, d) from the running averages of the values :meth:`transform`
        returns (not called with ``running="covariance"``)."""
        raise NotImplementedError

    def initial_matrix(self, group_size: int) -> torch.Tensor:
        """Start value of the running matrix: the identity (d, d)."""
        return torch.eye(group_size)

    def from_batchnorm(self, var: torch.Tensor, eps: float) -> RunningValues:
        """Running values for a BatchNorm's per-channel variance ``var`` (G, d) (unbiased,
        the BatchNorm's ``eps``): those whose eval transform is BatchNorm's, ``(var +
        eps)^{-1/2}`` per channel, exactly where the running mode allows it. Here
        (``"covariance"``): ``diag(var + eps - self.eps)`` where that is positive (then
        ``(Σ + εI)^{-1/2}`` is exact), else ``diag(var)``."""
        shifted = var + (eps - self.eps)
        diagonal = torch.where(shifted > 0, shifted, var)
        return RunningValues(
            torch.diag_embed(diagonal), var.flatten() if self.tracks_variance else None
        )

    # ---- what the forward calls ---------------------------------------------------------

    def working_dtype(self, statistics_dtype: torch.dtype) -> torch.dtype:
        """The decomposition's dtype for statistics of ``statistics_dtype``."""
        return working_dtype(statistics_dtype, self.compute_dtype)

    def batch(
        self, covariance: torch.Tensor, count: torch.Tensor
    ) -> tuple[torch.Tensor, RunningValues]:
        """``T`` from a biased batch covariance, and the values for the running averages
        (with ``running="covariance"``: the unbiased covariance as the matrix)."""
        T, values = self.transform(covariance, count)
        if self.running == "covariance":
            values = values._replace(matrix=unbiased(covariance, count))
        return T, values

    def from_running(self, running: RunningValues) -> torch.Tensor:
        """Eval ``T`` from the running buffers (``"covariance"``: the transform of the
        running covariance, decomposed again at every call)."""
        if self.running != "covariance":
            return self.from_averages(running)
        with torch.no_grad():
            covariance = running.matrix.to(self.working_dtype(running.matrix.dtype))
            return self.transform(covariance, None)[0]
