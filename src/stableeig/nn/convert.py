"""``convert_batchnorm``: swap chosen BatchNorm layers of a model for ZCA or PCA layers."""

from __future__ import annotations

import warnings
from typing import Any, Callable, Union

import torch
from torch import nn

from .. import _validation as checks
from ..exceptions import ArgumentError, StableEigError
from ._base import GroupLayer
from .pca import PCADenoising1d, PCADenoising2d
from .zca import ZCAWhitening1d, ZCAWhitening2d

__all__ = ["convert_batchnorm"]

Selector = Union[str, Callable[[str, nn.Module], bool]]

_REPLACEMENTS: dict[str, dict[type, type]] = {
    "zca": {nn.BatchNorm1d: ZCAWhitening1d, nn.BatchNorm2d: ZCAWhitening2d},
    "pca": {nn.BatchNorm1d: PCADenoising1d, nn.BatchNorm2d: PCADenoising2d},
}


def _replacement(
    bn: nn.modules.batchnorm._BatchNorm, kind: str, name: str, **kwargs: Any
) -> nn.Module:
    if isinstance(bn, nn.SyncBatchNorm):  # DDP models: the 2d layer, synchronized
        cls = _REPLACEMENTS[kind][nn.BatchNorm2d]
        kwargs.setdefault("sync_statistics", True)
        kwargs.setdefault("process_group", bn.process_group)
    else:
        cls = next(new for old, new in _REPLACEMENTS[kind].items() if isinstance(bn, old))
    kwargs.setdefault("momentum", bn.momentum)
    kwargs.setdefault("eps", bn.eps)
    try:
        layer: GroupLayer = cls(
            bn.num_features,
            affine=bn.affine,
            track_running_stats=bn.track_running_stats,
            device=bn.weight.device if bn.affine else None,
            dtype=bn.weight.dtype if bn.affine else None,
            **kwargs,
        )
    except StableEigError as error:
        raise ArgumentError(f"convert_batchnorm: cannot replace {name!r}: {error}") from None
    with torch.no_grad():
        if bn.affine:
            layer.weight.copy_(bn.weight)
            layer.bias.copy_(bn.bias)
        if bn.track_running_stats and bn.running_mean is not None and bn.running_var is not None:
            layer.load_batchnorm_statistics(
                bn.running_mean, bn.running_var, bn.eps, bn.num_batches_tracked
            )
    layer.train(bn.training)
    return layer.to(bn.running_mean.device) if bn.running_mean is not None else layer


def convert_batchnorm(
    module: nn.Module, kind: str = "zca", which: Selector = "all", **layer_kwargs: Any
) -> nn.Module:
    """Replace BatchNorm1d/2d layers of ``module`` by ZCA whitening or PCA denoising layers.

    ``nn.SyncBatchNorm`` (what ``convert_sync_batchnorm`` leaves) becomes the 2d layer with
    ``sync_statistics=True`` and the same process group. Other normalizations (BatchNorm3d,
    LayerNorm, GroupNorm, ...) are left as they are; each is named in a ``UserWarning``.

    Affine parameters, ``eps``, momentum, device, dtype, the training flag and the running
    statistics are copied: the running mean, and the running variance as a diagonal
    covariance (a BatchNorm has no cross-channel statistics), so that a pretrained model in
    eval mode gives the BatchNorm model's output before any training step (to float32
    round-off; exact for the default ``running`` modes, see
    :meth:`~stableeig.nn.GroupLayer.load_batchnorm_statistics`). Pass ``eps`` to choose
    another ridge (the paper's 1e-4) — then the eval output moves by that difference. A
    BatchNorm checkpoint also loads into the converted model, strictly: the layers read a
    BatchNorm's ``running_var`` as that diagonal.

    A BatchNorm module used at several places is replaced at every place by one shared new
    layer. The model is changed in place and returned (a
    BatchNorm passed as ``module`` itself is returned replaced).

    Args:
        module: the model.
        kind: ``"zca"`` or ``"pca"``. Default: ``"zca"``.
        which: ``"all"``, ``"first"`` (the first BatchNorm in ``named_modules`` order: the
            paper's placement after the stem convolution), or a predicate
            ``(qualified_name, batchnorm) -> bool``. Default: ``"all"``.
        **layer_kwargs: arguments of the new layers (``group_size``, ``method``, ...).

    Returns:
        The converted module.

    Examples:
        >>> import torch, stableeig as se
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.BatchNorm2d(16))
        >>> net = se.nn.convert_batchnorm(net, "zca", which="first", group_size=8)
        >>> type(net[1]).__name__
        'ZCAWhitening2d'
    """
    checks.check_choice("convert_batchnorm: kind", kind, tuple(_REPLACEMENTS))
    batchnorms = [
        (name, m)
        for name, m in module.named_modules(remove_duplicate=False)  # every place it is used
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.SyncBatchNorm))
    ]
    skipped = [
        f"{name or '<root>'} ({type(m).__name__})"
        for name, m in module.named_modules()
        if isinstance(m, (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm))
        and not isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.SyncBatchNorm))
    ]
    if skipped:
        warnings.warn(
            f"convert_batchnorm: left unchanged (no ZCA/PCA counterpart): {', '.join(skipped)}",
            stacklevel=2,
        )
    if which == "all":
        chosen = batchnorms
    elif which == "first":
        chosen = [(name, m) for name, m in batchnorms if m is batchnorms[0][1]]
    elif callable(which):
        chosen = [(name, m) for name, m in batchnorms if which(name, m)]
    else:
        raise ArgumentError(
            f"convert_batchnorm: expected which = 'all', 'first' or a predicate (got {which!r})"
        )
    replaced: dict[int, nn.Module] = {}  # a BatchNorm used at two places stays shared
    for name, bn in chosen:
        if id(bn) not in replaced:
            replaced[id(bn)] = _replacement(bn, kind, name or "<root>", **layer_kwargs)
        new = replaced[id(bn)]
        if not name:
            return new
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, child, new)
    return module
