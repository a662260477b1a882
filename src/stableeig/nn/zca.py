"""ZCA whitening layers: a drop-in alternative to batch normalization.

Per group of ``d`` channels, ``y = γ ∘ (M^{-1/2} (x - μ)) + β`` with ``M`` the batch
covariance plus ``eps·I``. The whitening matrix and its gradient come from the chosen
``method`` (a :mod:`stableeig.rules` rule); ``truncation`` picks the eigenvectors whitened.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from .. import _validation as checks
from .._docs import fill_args
from ..exceptions import ArgumentError
from ..rules import PowerIteration, Rule
from ..spectral import decompose_by_rule, ridged_inv_sqrt, spectral_unchecked
from ._base import _GroupTransform
from .conventions import get_convention

__all__ = [
    "TRUNCATIONS",
    "ZCAWhitening1d",
    "ZCAWhitening2d",
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
    convention: str = "stableeig",
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


def default_truncation(rule: Rule) -> str:
    """The rule class's ``default_truncation``: ``"paper"`` for ``power``, ``"pi"`` for
    ``pi``, ``"none"`` for the others."""
    return rule.default_truncation


def check_truncation(name: str, rule: Rule, truncation: Optional[str]) -> str:
    """The truncation for ``rule`` (its default when None), checked: a truncated whitening is
    not a spectral function, so ``loewner`` (whose exact gradient is of the untruncated
    one) refuses any truncation instead of silently changing rule; ``pi`` decomposes by
    power iteration, so only its own stop rule or none apply to it."""
    truncation = default_truncation(rule) if truncation is None else truncation
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
    convention: str = "stableeig",
) -> torch.Tensor:
    """The whitening ``(Σ + εI)^{-1/2}`` (or its truncated version) of (G, d, d) covariances.

    Args:
        covariance: biased batch covariances, (G, d, d), symmetric, working precision.
        eps: the ridge.
        rule: the gradient rule (:mod:`stableeig.rules`); ``PowerIteration`` also decomposes.
        truncation: ``"none"``, ``"paper"`` or ``"pi"`` (see :class:`ZCAWhitening2d`).
        convention: ``"stableeig"`` or ``"reference"``.
    """
    eye = torch.eye(covariance.shape[-1], dtype=covariance.dtype, device=covariance.device)
    matrix = covariance + eps * eye
    if truncation == "none" and not isinstance(rule, PowerIteration):
        return spectral_unchecked(matrix, ridged_inv_sqrt(eps), rule)[0]
    # truncated whitening (check_truncation admits eigenvector rules and pi only)
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


class _ZCAWhitening(_GroupTransform):
    _running_choices = ("whitening", "covariance")

    def __init__(
        self, num_features: int, *args: Any, truncation: Optional[str] = None, **kwargs: Any
    ) -> None:
        super().__init__(num_features, *args, **kwargs)
        self.truncation = check_truncation(type(self).__name__, self.rule, truncation)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, truncation={self.truncation!r}"

    _legacy_names = ("running_whitening",)

    @property
    def running_whitening(self) -> torch.Tensor:
        """The running whitening matrix (G, d, d), with ``running="whitening"``."""
        return self._matrix_named("whitening")

    def _batch_transform(
        self, covariance: torch.Tensor, count: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        whitening = zca_transform(covariance, self.eps, self.rule, self.truncation, self.convention)
        return whitening, {"matrix": whitening}

    def _running_transform(self) -> torch.Tensor:
        if self.running == "whitening":
            return self._buffer("running_matrix")
        return self._transform_from_running_covariance()


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

    Example:
        >>> import torch, stableeig as se
        >>> layer = se.nn.ZCAWhitening1d(8, group_size=4)
        >>> y = layer(torch.randn(32, 8))
        >>> covariance = y.T @ y / 32                   # each group of 4 is whitened
        >>> torch.allclose(covariance[:4, :4], torch.eye(4), atol=1e-3)
        True
    """

    _input_dims = (2, 3)
    _input_description = "2D (N, C) or 3D (N, C, L)"


class ZCAWhitening2d(_ZCAWhitening):
    """ZCA whitening of ``(N, C, H, W)`` activations, per group of channels.
    {args}
    Shape:
        - Input: (N, C, H, W), contiguous or channels_last. Output: same shape, dtype and
          memory format.

    Example:
        >>> import torch, stableeig as se
        >>> layer = se.nn.ZCAWhitening2d(16, group_size=8)
        >>> layer(torch.randn(4, 16, 8, 8)).shape
        torch.Size([4, 16, 8, 8])
    """

    _input_dims = (4,)
    _input_description = "4D (N, C, H, W)"


fill_args(_ARGS, ZCAWhitening1d, ZCAWhitening2d)
