"""Functional forms of the layers, like ``torch.nn.functional.batch_norm``.

The modules in :mod:`stableeig.nn` are thin wrappers over the same forward
(:func:`stableeig.nn._engine.group_forward`) and the same transforms
(:func:`stableeig.nn.zca.zca_transform`, :func:`stableeig.nn.pca.pca_transform`).
"""

from __future__ import annotations

from typing import Optional, Union

import torch

from .. import _validation as checks
from ..rules import Rule, resolve
from ._engine import check_input, check_momentum, check_samples, group_forward
from .conventions import get_convention
from .pca import pca_transform, projector_function
from .zca import check_truncation, zca_transform

__all__ = ["pca_denoising", "zca_whitening"]


def _groups(name: str, x: torch.Tensor, group_size: Optional[int]) -> int:
    check_input(name, x, x.shape[1] if x.dim() >= 2 else -1, (2, 3, 4), "(N, C, ...)")
    C = x.shape[1]
    d = C if group_size is None else checks.check_int_at_least(f"{name}: group_size", group_size, 1)
    if C % d:
        raise checks.ArgumentError(
            f"{name}: expected group_size to divide the {C} channels (got group_size = {d})"
        )
    return d


def zca_whitening(
    x: torch.Tensor,
    group_size: Optional[int] = None,
    *,
    running_mean: Optional[torch.Tensor] = None,
    running_whitening: Optional[torch.Tensor] = None,
    weight: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    training: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-4,
    method: Union[str, Rule] = "loewner",
    truncation: Optional[str] = None,
    convention: str = "stableeig",
    compute_dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    """ZCA whitening per group of channels: ``γ ∘ ((Σ + εI)^{-1/2} (x - μ)) + β``.

    With ``training=True`` the batch statistics are used and, if ``running_mean`` and
    ``running_whitening`` are given, averaged into them in place (``lerp(momentum)``);
    with ``training=False`` the running statistics are used.

    Args:
        x: activations (N, C), (N, C, L) or (N, C, H, W), real floating.
        group_size: channels per group ``d`` (divides C). Default: None (``d = C``).
        running_mean: (C,) running mean, float32. Default: None.
        running_whitening: (C/d, d, d) running whitening. Default: None.
        weight, bias: (C,) affine parameters. Default: None (identity).
        training: use (and update) batch statistics. Default: True.
        momentum: of the running averages, in [0, 1]. Default: 0.1.
        eps, method, truncation, convention, compute_dtype: as in
            :class:`stableeig.nn.ZCAWhitening2d`.

    Returns:
        The whitened activations, same shape and dtype as ``x``.

    Example:
        >>> import torch, stableeig as se
        >>> y = se.nn.functional.zca_whitening(torch.randn(64, 4), group_size=2)
        >>> torch.allclose(y.T @ y / 64, torch.eye(4), atol=1e-2)  # each group of 2 whitened
        False
        >>> torch.allclose((y.T @ y / 64)[:2, :2], torch.eye(2), atol=1e-2)
        True
    """
    d = _groups("zca_whitening", x, group_size)
    check_momentum("zca_whitening", momentum, allow_none=False)
    rule = resolve(method, argument="zca_whitening: method")
    truncation = check_truncation("zca_whitening", rule, truncation)
    get_convention(convention, "zca_whitening: convention")
    checks.check_positive("zca_whitening: eps", eps)

    def batch_transform(
        covariance: torch.Tensor, count: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        whitening = zca_transform(covariance, eps, rule, truncation, convention)
        return whitening, {"whitening": whitening}

    tracked = running_mean is not None and running_whitening is not None
    check_samples("zca_whitening", x, d, eps, training, sync=False, warn=True)
    if not training and not tracked:
        raise checks.ArgumentError(
            "zca_whitening: expected running_mean and running_whitening when training=False"
        )
    return group_forward(
        x,
        d,
        name="zca_whitening",
        use_batch=training,
        batch_transform=batch_transform,
        eval_transform=lambda: running_whitening,  # type: ignore[arg-type, return-value]
        running_mean=running_mean,
        running={"whitening": running_whitening} if tracked and training else None,  # type: ignore[dict-item]
        momentum=momentum,
        weight=weight,
        bias=bias,
        compute_dtype=compute_dtype,
    )


def pca_denoising(
    x: torch.Tensor,
    group_size: Optional[int] = None,
    *,
    running_mean: Optional[torch.Tensor] = None,
    running_var: Optional[torch.Tensor] = None,
    running_projector: Optional[torch.Tensor] = None,
    weight: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    training: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-4,
    n_components: Optional[int] = None,
    energy: float = 0.99,
    method: Union[str, Rule] = "loewner",
    convention: str = "stableeig",
    compute_dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    """PCA denoising per group of channels: standardize, project onto the top eigenvectors.

    Running statistics (``running_mean``, ``running_var`` (C,), ``running_projector``
    (C/d, d, d)) are used and updated as in :func:`zca_whitening`.

    Args:
        x, group_size, running_*, weight, bias, training, momentum, eps, method, convention,
        compute_dtype: as in :func:`zca_whitening`.
        n_components: eigenvectors kept per group (overrides ``energy``). Default: None.
        energy: keep the fewest top eigenvectors holding this share of the trace. Default: 0.99.

    Returns:
        The denoised activations, same shape and dtype as ``x``.

    Example:
        >>> import torch, stableeig as se
        >>> se.nn.functional.pca_denoising(torch.randn(32, 8), n_components=2).shape
        torch.Size([32, 8])
    """
    d = _groups("pca_denoising", x, group_size)
    check_momentum("pca_denoising", momentum, allow_none=False)
    rule = resolve(method, argument="pca_denoising: method")
    get_convention(convention, "pca_denoising: convention")
    checks.check_positive("pca_denoising: eps", eps)
    checks.check_k("pca_denoising: n_components", n_components, d, allow_none=True)
    function = projector_function(n_components, energy)

    def batch_transform(
        covariance: torch.Tensor, count: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return pca_transform(covariance, count, eps, rule, function, convention)

    buffers = {"var": running_var, "projector": running_projector}
    tracked = running_mean is not None and all(b is not None for b in buffers.values())
    check_samples("pca_denoising", x, d, eps, training, sync=False, warn=True)
    if not training and not tracked:
        raise checks.ArgumentError(
            "pca_denoising: expected running_mean, running_var and running_projector when "
            "training=False"
        )

    def eval_transform() -> torch.Tensor:
        assert running_var is not None and running_projector is not None
        scale = (running_var + eps).rsqrt().view(-1, 1, d)
        return running_projector * scale

    return group_forward(
        x,
        d,
        name="pca_denoising",
        use_batch=training,
        batch_transform=batch_transform,
        eval_transform=eval_transform,
        running_mean=running_mean,
        running=buffers if tracked and training else None,  # type: ignore[arg-type]
        momentum=momentum,
        weight=weight,
        bias=bias,
        compute_dtype=compute_dtype,
    )
