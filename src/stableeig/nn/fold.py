"""Fold an eval-mode ZCA/PCA layer into the convolution (or linear map) before it.

In eval mode with running statistics a layer is one affine map per pixel, ``y = M x + c``
with a block-diagonal ``M`` (C, C); after ``conv`` (weight ``W``, bias ``b``) the pair is
the single convolution with weight ``M W`` and bias ``M b + c``: free at inference, like
``torch.nn.utils.fusion.fuse_conv_bn_eval`` for BatchNorm.
"""

from __future__ import annotations

import copy
from typing import Optional, Union

import torch
from torch import nn

from ..exceptions import ArgumentError
from ._base import GroupLayer

__all__ = ["LeafTracer", "fold_eval", "fold_eval_model"]

Foldable = Union[nn.Conv1d, nn.Conv2d, nn.Linear]


def affine_map(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """``(M (C, C), c (C,))`` with ``layer(x) = M x + c`` per pixel, in float64, read off
    the eval-mode layer itself (its constant term and its response to each basis vector)."""
    if not isinstance(layer, GroupLayer):
        raise ArgumentError(f"fold_eval: expected a ZCA or PCA layer (got {type(layer).__name__})")
    if layer.training or not layer.track_running_stats:
        raise ArgumentError(
            f"fold_eval: expected a layer in eval mode with running statistics (got "
            f"training={layer.training}, track_running_stats={layer.track_running_stats}); "
            "in training, or with batch statistics, the layer is not a fixed map"
        )
    C = layer.num_features
    probe = copy.deepcopy(layer).to(torch.float64).eval()
    basis = torch.cat([torch.zeros(1, C), torch.eye(C)]).to(
        dtype=torch.float64, device=layer.get_buffer("running_mean").device
    )
    shape = (C + 1, C) if 2 in probe._input_dims else (C + 1, C, 1, 1)
    with torch.no_grad():
        out = probe(basis.view(shape))
    out = out.reshape(C + 1, C)
    return (out[1:] - out[0]).mT, out[0]


def fold_eval(module: Foldable, layer: nn.Module) -> Foldable:
    """One ``Conv1d``/``Conv2d``/``Linear`` equal to ``layer(module(x))`` in eval mode.

    Args:
        module: the convolution or linear map whose output channels the layer normalizes.
        layer: a ZCA/PCA layer in eval mode with running statistics.

    Returns:
        A new module (the inputs are not modified) in ``module``'s dtype and device.

    Examples:
        >>> import torch, stableeig as se
        >>> conv, zca = torch.nn.Conv2d(3, 8, 3), se.nn.ZCAWhitening2d(8, group_size=4)
        >>> _ = zca(conv(torch.randn(16, 3, 6, 6)))   # running statistics move
        >>> zca.eval()  # doctest: +ELLIPSIS
        ZCAWhitening2d(...)
        >>> fused, x = se.nn.fold_eval(conv, zca), torch.randn(2, 3, 6, 6)
        >>> bool(torch.allclose(fused(x), zca(conv(x)), atol=1e-5))
        True
    """
    if not isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)):
        raise ArgumentError(
            f"fold_eval: expected a Conv1d, Conv2d or Linear (got {type(module).__name__})"
        )
    channels = (
        module.out_channels if isinstance(module, (nn.Conv1d, nn.Conv2d)) else module.out_features
    )
    if not isinstance(layer, GroupLayer) or layer.num_features != channels:
        got = getattr(layer, "num_features", type(layer).__name__)
        raise ArgumentError(
            f"fold_eval: expected a ZCA/PCA layer over the {channels} output channels (got {got})"
        )
    M, c = affine_map(layer)
    fused = copy.deepcopy(module)
    weight = module.weight.detach().to(torch.float64)
    bias = (
        module.bias.detach().to(torch.float64)
        if module.bias is not None
        else torch.zeros(channels, dtype=torch.float64, device=weight.device)
    )
    folded = (M @ weight.reshape(channels, -1)).reshape(weight.shape)
    with torch.no_grad():
        fused.weight.copy_(folded.to(module.weight.dtype))
        if fused.bias is None:
            fused.bias = nn.Parameter(
                torch.empty(channels, dtype=module.weight.dtype, device=module.weight.device)
            )
        fused.bias.copy_((M @ bias + c).to(module.weight.dtype))
    return fused


def fold_eval_model(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Fold every conv/linear → ZCA/PCA pair that follows each other in an ``nn.Sequential``
    (the layer becomes ``nn.Identity``); the model must be in eval mode.

    Args:
        model: the model. inplace: change it in place (default: a folded copy).

    Returns:
        The folded model; pairs outside ``nn.Sequential`` containers are left as they are
        (fold them with :func:`fold_eval`, which needs the pair's order of application).
    """
    folded: Optional[nn.Module] = model if inplace else copy.deepcopy(model)
    assert folded is not None
    for container in folded.modules():
        if not isinstance(container, nn.Sequential):
            continue
        names = list(container._modules)
        for first, second in zip(names, names[1:]):
            a, b = container._modules[first], container._modules[second]
            if isinstance(a, (nn.Conv1d, nn.Conv2d, nn.Linear)) and isinstance(b, GroupLayer):
                container._modules[first] = fold_eval(a, b)
                container._modules[second] = nn.Identity()
    return folded


class LeafTracer(torch.fx.Tracer):
    """An FX tracer that keeps every stableeig layer as one ``call_module`` node (like the
    built-in ``nn`` layers), so ``torch.fx.GraphModule(model, LeafTracer().trace(model))``
    works on models that contain them.

    Examples:
        >>> import torch, stableeig as se
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), se.nn.ZCAWhitening2d(8))
        >>> graph = se.nn.LeafTracer().trace(net)
        >>> [n.target for n in graph.nodes if n.op == "call_module"]
        ['0', '1']
    """

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if type(m).__module__.startswith("stableeig."):
            return True
        return super().is_leaf_module(m, module_qualified_name)
