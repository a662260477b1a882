"""The whitening–colouring transform (WCT) of style transfer, differentiable in content and
style: ``Σₛ^{1/2} Σ_c^{-1/2} (x_c - μ_c) + μₛ`` on channel features, with the truncation
people use (eigenvalues at or below ``threshold`` dropped) as a spectral function with an
exact gradient wherever no eigenvalue sits on the threshold.
"""

from __future__ import annotations

from typing import Optional

import torch

from . import _validation as checks
from ._precision import working_dtype
from .exceptions import ShapeError
from .matrix_functions import funm

__all__ = ["whiten_colour"]


def _truncated_power(threshold: float, p: float):  # type: ignore[no-untyped-def]
    """``λ^p`` above ``threshold · max λ`` of each matrix (the eigenvalues (..., n) arrive
    together), 0 at or below it, and its derivative (the cut moves with the scale but is
    locally constant: the gradient is exact wherever no eigenvalue sits on it)."""

    def kept(w: torch.Tensor) -> torch.Tensor:
        return w > threshold * w.detach().amax(-1, keepdim=True).clamp_min(0)

    def f(w: torch.Tensor) -> torch.Tensor:
        keep = kept(w)
        return torch.where(keep, torch.where(keep, w, 1.0).pow(p), 0.0)

    def df(w: torch.Tensor) -> torch.Tensor:
        keep = kept(w)
        return torch.where(keep, p * torch.where(keep, w, 1.0).pow(p - 1), 0.0)

    return f, df


def _statistics(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(mean (..., C, 1), centred (..., C, N), unbiased covariance (..., C, C))``."""
    mean = x.mean(-1, keepdim=True)
    centred = x - mean
    covariance = centred @ centred.mT / max(x.shape[-1] - 1, 1)
    return mean, centred, (covariance + covariance.mT) / 2


def whiten_colour(
    content: torch.Tensor,
    style: torch.Tensor,
    *,
    alpha: float = 1.0,
    threshold: float = 1e-5,
    compute_dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    """Whitening–colouring transform of ``content`` features to ``style``'s statistics.

    Args:
        content: (..., C, N_c) features (e.g. a VGG map flattened over H·W).
        style: (..., C, N_s) features, broadcastable batch.
        alpha: blend ``alpha · WCT + (1 - alpha) · content``, in [0, 1]. Default: 1.
        threshold: eigenvalues of either covariance at or below ``threshold`` times that
            covariance's largest eigenvalue are dropped: scale-free (PytorchWCT's absolute
            λ > 1e-5, which 0.8.1 kept, turned content of standard deviation 1e-3 into the
            style's mean). Default: 1e-5.
        compute_dtype: least working precision. Default: None (float64).

    Returns:
        (..., C, N_c) in the promoted dtype of the inputs; gradients to both inputs are
        exact where no eigenvalue equals ``threshold``.

    Examples:
        >>> import torch, stableeig as se
        >>> content, style = torch.randn(8, 100), 3 * torch.randn(8, 50) + 1
        >>> out = se.whiten_colour(content, style)
        >>> bool(torch.allclose(torch.cov(out), torch.cov(style), atol=1e-4))
        True
    """
    for name, x in (("content", content), ("style", style)):
        if not isinstance(x, torch.Tensor) or x.ndim < 2 or x.shape[-1] < 2:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ShapeError(
                f"whiten_colour: {name}: expected (..., C, N) features with N >= 2 (got {shape})"
            )
        checks.check_finite(f"whiten_colour: {name}", x)
    if content.shape[-2] != style.shape[-2]:
        raise ShapeError(
            f"whiten_colour: style: expected {content.shape[-2]} channels as content (got "
            f"shape {tuple(style.shape)})"
        )
    checks.check_in_range("whiten_colour: alpha", alpha, 0.0, 1.0)
    checks.check_positive("whiten_colour: threshold", threshold)
    result = torch.promote_types(content.dtype, style.dtype)
    work = working_dtype(result, compute_dtype)
    _, centred, content_cov = _statistics(content.to(work))
    style_mean, _, style_cov = _statistics(style.to(work))
    whiten = funm(content_cov, *_truncated_power(threshold, -0.5), check_symmetric=False)
    colour = funm(style_cov, *_truncated_power(threshold, 0.5), check_symmetric=False)
    transferred = colour @ (whiten @ centred) + style_mean
    blended = alpha * transferred + (1 - alpha) * content.to(work)
    return checks.rounded_checked("whiten_colour", "the result", blended, result)
