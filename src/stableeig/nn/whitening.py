"""The ZCA whitening transform: ``T = M^{-1/2}``, ``M`` the group covariance plus ``eps·I``,
or its truncation to the eigenvectors the paper's SVD-PI (or the PI baseline) keeps.

The layers (:mod:`stableeig.nn.zca`) and :func:`stableeig.nn.functional.zca_whitening` use
:class:`ZCATransform`; the masks are the paper's stop rules, batched and without host syncs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional, Union

import torch

from .. import _validation as checks
from ..exceptions import ArgumentError
from ..rules import Rule
from ..spectral import decompose_by_rule, ridged_inv_sqrt, spectral_unchecked
from .conventions import Convention, get_convention
from .transforms import GroupTransform, RunningValues

__all__ = [
    "TRUNCATIONS",
    "ZCATransform",
    "check_truncation",
    "paper_truncation_mask",
    "pi_truncation_mask",
    "zca_transform",
]

TRUNCATIONS = ("none", "paper", "pi")
ENERGY_TOLERANCE = 1e-4  # the paper: stop once cumulative energy >= 1 - 1e-4
RAYLEIGH_TOLERANCE = 0.1  # the paper: stop if the deflated Rayleigh quotient is off by > 10%


def _deflated_rayleigh(
    w: torch.Tensor, V: torch.Tensor, matrix: torch.Tensor, literal: bool
) -> torch.Tensor:
    """Rayleigh quotients of the descending eigenvectors on ``M`` deflated of the earlier ones.

    ``literal``: deflate step by step, ``M̃ <- M̃ - M̃ v vᵀ``, in the working dtype, as the
    reference code does (its round-off included); otherwise the same quantity in closed form,
    ``vᵢᵀMvᵢ - Σ_{k<i} λₖ (vₖᵀvᵢ)²``. Shapes: (..., n) from (..., n), (..., n, n) ×2.
    """
    if not literal:
        quotient = (V.mT @ matrix @ V).diagonal(dim1=-2, dim2=-1)
        earlier = torch.ones(w.shape[-1], w.shape[-1], dtype=w.dtype, device=w.device).triu(1)
        return quotient - (w.unsqueeze(-1) * (V.mT @ V) ** 2 * earlier).sum(-2)
    deflated, quotients = matrix, []
    for i in range(w.shape[-1]):
        v = V[..., i : i + 1]
        quotients.append(((deflated @ v).mT @ v / (v.mT @ v))[..., 0, 0])
        deflated = deflated - deflated @ v @ v.mT
    return torch.stack(quotients, dim=-1)


def paper_truncation_mask(
    w: torch.Tensor,
    V: torch.Tensor,
    matrix: torch.Tensor,
    eps: float,
    convention: Union[str, Convention] = "stableeig",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's rule for how many eigenvectors SVD-PI keeps, as a 0/1 mask.

    Walking eigenvalues in descending order, stop at the first ``i`` where ``λᵢ <= floor``,
    cumulative energy ``>= 1 - tolerance``, the Rayleigh quotient on the deflated matrix
    differs from ``λᵢ`` by more than 10 %, or it is negative. Batched, no host sync.

    ``convention="reference"`` is the reference code literally: ``floor = eps``,
    ``tolerance = eps``, the Rayleigh quotients from step-by-step deflation in the working
    dtype. ``"stableeig"``: ``floor = eps + n · ulp · λ_max`` (float eigenvalues of an
    ``eps``-ridged covariance scatter around ``eps`` by round-off, so ``λᵢ <= eps`` is decided
    by rounding), ``tolerance = 1e-4``, closed-form Rayleigh quotients.

    Args:
        w: eigenvalues ascending, shape (..., n).
        V: matching eigenvectors, shape (..., n, n).
        matrix: the decomposed matrices ``M``, shape (..., n, n).
        eps: the ridge added to ``M``.
        convention: ``"stableeig"`` or ``"reference"``. Default: ``"stableeig"``.

    Returns:
        ``(mask, rayleigh)``, both (..., n) in ``w``'s order: 1 for kept eigenvectors, and
        the deflated Rayleigh quotients.
    """
    with torch.no_grad():
        n = w.shape[-1]
        literal = get_convention(convention).literal_truncation
        descending, vectors = w.flip(-1), V.flip(-1)
        if literal:
            floor = torch.full_like(descending[..., :1], eps)
            tolerance = eps
        else:
            floor = eps + n * torch.finfo(w.dtype).eps * descending.abs().amax(-1, keepdim=True)
            tolerance = ENERGY_TOLERANCE
        energy = descending.cumsum(-1) / descending.sum(-1, keepdim=True)
        rayleigh = _deflated_rayleigh(descending, vectors, matrix, literal)
        fine = (
            (descending > floor)
            & (energy < 1 - tolerance)
            & ((rayleigh - descending).abs() <= RAYLEIGH_TOLERANCE * descending)
            & (rayleigh >= 0)
        )
        return fine.to(w.dtype).cumprod(-1).flip(-1), rayleigh.flip(-1)


def pi_truncation_mask(w: torch.Tensor, eps: float) -> torch.Tensor:
    """The reference PI layer's stop rule (``ZCANormPIunstable``), as a 0/1 mask.

    In extraction order (the reverse of ``w``'s), keep the first eigenvector, then stop at
    the first Rayleigh quotient that is larger than the previous one or below ``eps``.

    Args:
        w: Rayleigh quotients in reverse extraction order, shape (..., n).
        eps: the ridge added to ``M``.

    Returns:
        (..., n) mask in ``w``'s order.
    """
    with torch.no_grad():
        extracted = w.flip(-1)
        fine = torch.ones_like(extracted, dtype=torch.bool)
        fine[..., 1:] = (extracted[..., 1:] <= extracted[..., :-1]) & (extracted[..., 1:] >= eps)
        return fine.to(w.dtype).cumprod(-1).flip(-1)


def _masked_inverse_sqrt(w: torch.Tensor, V: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``Σ_{kept} vᵢ λᵢ^{-1/2} vᵢᵀ``; dropped eigenvalues never enter a square root."""
    safe = torch.where(keep > 0, w, torch.ones_like(w))
    return (V * (keep * safe.rsqrt()).unsqueeze(-2)) @ V.mT


def check_truncation(name: str, rule: Rule, truncation: Optional[str]) -> str:
    """The truncation for ``rule`` (its default when None), checked: a truncated whitening is
    not a spectral function, so ``loewner`` (whose exact gradient is of the untruncated
    one) refuses any truncation instead of silently changing rule; ``pi`` decomposes by
    power iteration, so only its own stop rule or none apply to it."""
    truncation = rule.default_truncation if truncation is None else truncation
    checks.check_choice(f"{name}: truncation", truncation, TRUNCATIONS)
    if truncation != "none" and rule.kind == "spectral":
        raise ArgumentError(
            f"{name}: truncation={truncation!r} needs an eigenvector rule (power, taylor, "
            f"clip, analytic) or pi: {rule.name}'s exact gradient is of the untruncated "
            f"whitening (got method={rule.name!r})"
        )
    return truncation


def zca_transform(
    covariance: torch.Tensor,
    eps: float,
    rule: Rule,
    truncation: str = "none",
    convention: Union[str, Convention] = "stableeig",
) -> torch.Tensor:
    """The whitening ``(Σ + εI)^{-1/2}`` (or its truncated version) of (G, d, d) covariances.

    Args:
        covariance: batch covariances, (G, d, d), symmetric, working precision.
        eps: the ridge.
        rule: the gradient rule (:mod:`stableeig.rules`), of any kind: spectral and
            eigenvector rules differentiate the exact ``eigh``, ``pi`` also decomposes.
        truncation: ``"none"``, ``"paper"`` or ``"pi"`` (see :class:`~stableeig.nn.ZCAWhitening2d`).
        convention: ``"stableeig"`` or ``"reference"`` (or the record).
    """
    eye = torch.eye(covariance.shape[-1], dtype=covariance.dtype, device=covariance.device)
    matrix = covariance + eps * eye
    if truncation == "none" and rule.kind != "decomposition":
        return spectral_unchecked(matrix, ridged_inv_sqrt(eps), rule)[0]
    # truncated whitening, or pi's own decomposition (check_truncation admits no spectral rule)
    w, V = decompose_by_rule(matrix, rule, stop_below=eps if truncation == "pi" else None)
    if truncation == "pi":
        keep = pi_truncation_mask(w, eps)
    elif truncation == "paper":
        keep, rayleigh = paper_truncation_mask(w, V, matrix, eps, convention)
        if get_convention(convention).rayleigh_eigenvalues:  # value, with the gradient of w
            w = w + (rayleigh - w).detach()
    else:
        keep = torch.ones_like(w)
    return _masked_inverse_sqrt(w, V, keep)


@dataclass(frozen=True)
class ZCATransform(GroupTransform):
    """ZCA whitening: ``T = (Σ + εI)^{-1/2}``, or its truncation (as in
    :class:`~stableeig.nn.ZCAWhitening2d`).

    Args:
        truncation: ``"none"``, ``"paper"``, ``"pi"``, or None (the rule's default).
        shrinkage: ``α`` in [0, 1]: whiten ``(1 - α) Σ + α I`` (W-MSE's shrinkage toward the
            identity). Default: 0.
        eps, method, running, convention, compute_dtype, where: as in
            :class:`~stableeig.nn.transforms.GroupTransform`; ``running`` is
            ``"whitening"`` (default) or ``"covariance"``.

    Examples:
        >>> import torch, stableeig as se
        >>> T, _ = se.nn.ZCATransform(eps=1e-4).batch(4 * torch.eye(2)[None], torch.tensor(8))
        >>> torch.allclose(T, torch.eye(2) / 2, atol=1e-4)
        True
    """

    truncation: Optional[str] = None
    shrinkage: float = 0.0

    running_choices: ClassVar[tuple[str, ...]] = ("whitening", "covariance")

    def __post_init__(self) -> None:
        super().__post_init__()
        name = self.where or type(self).__name__
        object.__setattr__(self, "truncation", check_truncation(name, self.rule, self.truncation))
        shrinkage = checks.check_in_range(f"{name}: shrinkage", self.shrinkage, 0.0, 1.0)
        object.__setattr__(self, "shrinkage", float(shrinkage))

    def transform(
        self, covariance: torch.Tensor, count: Optional[torch.Tensor]
    ) -> tuple[torch.Tensor, RunningValues]:
        assert self.truncation is not None
        if self.shrinkage:
            eye = torch.eye(covariance.shape[-1], dtype=covariance.dtype, device=covariance.device)
            covariance = (1 - self.shrinkage) * covariance + self.shrinkage * eye
        whitening = zca_transform(covariance, self.eps, self.rule, self.truncation, self.settings)
        return whitening, RunningValues(whitening)

    def from_averages(self, running: RunningValues) -> torch.Tensor:
        return running.matrix

    def from_batchnorm(self, var: torch.Tensor, eps: float) -> RunningValues:
        """``"whitening"``: ``diag((var + eps)^{-1/2})``, BatchNorm's eval transform exactly
        (``"covariance"``: :meth:`GroupTransform.from_batchnorm`)."""
        if self.running != "whitening":
            return super().from_batchnorm(var, eps)
        return RunningValues(torch.diag_embed((var + eps).rsqrt()))
