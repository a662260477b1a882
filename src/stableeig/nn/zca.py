"""ZCA whitening layers: a drop-in alternative to batch normalization.

Per group of ``d`` channels, ``y = γ ∘ (M^{-1/2} (x - μ)) + β`` with ``M`` the batch
covariance plus ``eps·I``. The whitening matrix and its gradient come from the chosen
``method`` (see :data:`stableeig.nn.zca.METHOD_NOTES`).
"""

from __future__ import annotations

import torch

from .._docs import fill_args
from ..eigh import _Eigh
from ..power_iteration import power_iteration_unchecked
from ..spectral import INV_SQRT
from ._base import _GroupTransform

__all__ = ["METHOD_NOTES", "ZCAWhitening1d", "ZCAWhitening2d", "paper_truncation_mask"]

METHOD_NOTES = {
    "loewner": "eigh forward, exact Daleckii–Krein gradient of M^{-1/2}; full whitening",
    "power": "the paper's SVD-PI layer: truncated eigenbasis, power-iteration gradients",
    "taylor": "eigh forward, degree-`order` Taylor series gradient; full whitening",
    "clip": "eigh forward, gap-clamped gradient (`min_gap`); full whitening",
    "analytic": "eigh forward, exact eigenvector gradient 1/(λi - λj): fails on ties (baseline)",
    "pi": "power iteration forward and backward (`num_iters`), truncated (baseline)",
}

ENERGY_TOLERANCE = 1e-4  # the paper: stop once cumulative energy >= 1 - 1e-4
RAYLEIGH_TOLERANCE = 0.1  # the paper: stop if the deflated Rayleigh quotient is off by > 10%


def paper_truncation_mask(
    w: torch.Tensor, V: torch.Tensor, matrix: torch.Tensor, eps: float
) -> torch.Tensor:
    """The paper's rule for how many eigenvectors SVD-PI keeps, as a 0/1 mask.

    Walking eigenvalues in descending order, stop at the first ``i`` where ``λᵢ <= eps``
    (within ``n · ulp · λ_max``: float64 ε-eigenvalues scatter around eps), cumulative
    energy ``>= 1 - 1e-4``, the Rayleigh quotient on the deflated matrix differs from
    ``λᵢ`` by more than 10 %, or it is negative. Batched, no host sync.

    Args:
        w: eigenvalues in extraction order reversed (ascending for eigh), shape (..., n).
        V: matching eigenvectors, shape (..., n, n).
        matrix: the decomposed matrices ``M``, shape (..., n, n).
        eps: the ridge added to ``M``.

    Returns:
        (..., n) mask in ``w``'s order: 1 for kept eigenvectors.
    """
    with torch.no_grad():
        n = w.shape[-1]
        descending, vectors = w.flip(-1), V.flip(-1)
        floor = eps + n * torch.finfo(w.dtype).eps * descending.abs().amax(-1, keepdim=True)
        energy = descending.cumsum(-1) / descending.clamp_min(0).sum(-1, keepdim=True)
        # Rayleigh quotient on M deflated of the earlier vectors: vᵢᵀMvᵢ - Σ_{k<i} λₖ (vₖᵀvᵢ)²
        quotient = (vectors.mT @ matrix @ vectors).diagonal(dim1=-2, dim2=-1)
        earlier = torch.ones(n, n, dtype=w.dtype, device=w.device).triu(1)  # k < i
        overlap = (vectors.mT @ vectors) ** 2 * earlier
        rayleigh = quotient - (descending.unsqueeze(-1) * overlap).sum(-2)
        fine = (
            (descending > floor)
            & (energy < 1 - ENERGY_TOLERANCE)
            & ((rayleigh - descending).abs() <= RAYLEIGH_TOLERANCE * descending.abs())
            & (rayleigh >= 0)
        )
        return fine.to(w.dtype).cumprod(-1).flip(-1)


def _masked_inverse_sqrt(w: torch.Tensor, V: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``Σ_{kept} vᵢ λᵢ^{-1/2} vᵢᵀ``; dropped eigenvalues never enter a square root."""
    safe = torch.where(keep > 0, w, torch.ones_like(w))
    return (V * (keep * safe.rsqrt()).unsqueeze(-2)) @ V.mT


class _ZCAWhitening(_GroupTransform):
    _running_choices = ("whitening", "covariance")

    def _running_buffers(self) -> dict[str, str]:
        return {f"running_{self.running}": "matrix"}

    def _whitening(self, matrix: torch.Tensor) -> torch.Tensor:
        """``M^{-1/2}`` (or the paper's truncated version) of ``M`` (G, d, d)."""
        if self.method not in ("power", "pi"):
            return self._spectral(matrix, INV_SQRT)
        if self.method == "power":
            w, V = _Eigh.apply(matrix, self._coefficient_rule())
        else:  # "pi": power iteration forward, autograd through it
            w, V = power_iteration_unchecked(matrix, self.group_size, self.num_iters)
        return _masked_inverse_sqrt(w, V, paper_truncation_mask(w, V, matrix, self.eps))

    def _batch_transform(
        self, covariance: torch.Tensor, count: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        whitening = self._whitening(self._ridge(covariance))
        return whitening, {"whitening": whitening}

    def _running_transform(self) -> torch.Tensor:
        if self.running == "whitening":
            return self._buffer("running_whitening")
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
        method: gradient method: ``"loewner"`` (exact, stable), ``"power"`` (the paper's
            SVD-PI layer: truncated by its rules, so it whitens only the kept subspace and
            zeroes the rest), ``"taylor"``, ``"clip"``, ``"analytic"`` and ``"pi"`` (the
            paper's failing baselines, not stabilized). Default: ``"loewner"``.
        running: what eval uses: ``"whitening"`` (EMA of the whitening matrix, the paper's)
            or ``"covariance"`` (EMA of the unbiased covariance, whitened in eval; each eval
            forward then decomposes it). Default: ``"whitening"``.
        num_iters, order, min_gap: knobs of ``power``/``pi``, ``taylor``, ``clip``.
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
