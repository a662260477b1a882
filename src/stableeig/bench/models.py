"""CIFAR-style ResNets (3×3 stem, no max-pool) with a chosen normalization after the stem.

The paper's placement: only the normalization after the stem convolution is replaced
(``batchnorm``, ``zca`` or ``pca``); every other normalization stays ``BatchNorm2d``.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from ..nn import CovariancePooling2d, PCADenoising2d, ZCAWhitening2d
from ..nn.spd import symmetric_to_vector
from .config import HEADS, POOL_METHODS, STEM_CHANNELS

__all__ = [
    "HEADS",
    "POOL_METHODS",
    "STEM_NORMS",
    "CovariancePoolingHead",
    "ResNet",
    "newton_schulz_sqrt",
    "resnet",
]

STEM_NORMS = ("batchnorm", "zca", "pca")

DEPTHS = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
}


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(in_planes, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.shortcut = _shortcut(in_planes, planes * 4, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        return torch.relu(self.bn3(self.conv3(out)) + self.shortcut(x))


def _shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Module:
    if stride == 1 and in_planes == out_planes:
        return nn.Identity()
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, 1, stride, bias=False), nn.BatchNorm2d(out_planes)
    )


def stem_norm(name: str, channels: int, **kwargs: Any) -> nn.Module:
    """``batchnorm``, ``zca`` (``ZCAWhitening2d``) or ``pca`` (``PCADenoising2d``)."""
    if name == "batchnorm":
        return nn.BatchNorm2d(channels)
    if name == "zca":
        return ZCAWhitening2d(channels, **kwargs)
    if name == "pca":
        return PCADenoising2d(channels, **kwargs)
    raise ValueError(f"stem norm: expected one of {', '.join(STEM_NORMS)} (got {name!r})")


def newton_schulz_sqrt(
    covariance: torch.Tensor, iterations: int = 5, compensate: bool = True
) -> torch.Tensor:
    """iSQRT-COV's approximate ``Σ^{1/2}`` (Li et al., CVPR 2018): trace pre-normalization,
    ``iterations`` coupled Newton–Schulz steps, ``√tr Σ`` post-compensation (or, without
    ``compensate``, ``(Σ / tr Σ)^{1/2}``); plain autograd. The approximate method
    covariance-pooling users pick instead of an eigendecomposition."""
    n = covariance.shape[-1]
    eye = torch.eye(n, dtype=covariance.dtype, device=covariance.device).expand_as(covariance)
    trace = covariance.diagonal(dim1=-2, dim2=-1).sum(-1).view(-1, 1, 1)
    Y, Z = covariance / trace, eye
    for _ in range(iterations):
        T = 0.5 * (3 * eye - Z @ Y)
        Y, Z = Y @ T, T @ Z
    return Y * trace.sqrt() if compensate else Y


class CovariancePoolingHead(nn.Module):
    """The pooled (N, C, H, W) → (N, C (C + 1) / 2) features of a covariance head, ``Σ^{1/2}``
    of each sample's channel covariance: by the library's ``CovariancePooling2d`` with a
    gradient rule, or by iSQRT-COV's Newton–Schulz (trace pre-normalization and √tr
    post-compensation, so both approximate the same ``Σ^{1/2}``). Without the compensation
    the features shrink by √tr Σ and a 120-step run stalls at 59–68 % error (measured, see
    the README), so the exact methods skip the normalization altogether."""

    def __init__(self, channels: int, method: str = "loewner", **kwargs: Any) -> None:
        super().__init__()
        self.method = method
        rule = "loewner" if method == "newton-schulz" else method
        self.pool = CovariancePooling2d(channels, method=rule, trace_norm=False, **kwargs)
        self.output_size = channels * (channels + 1) // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.method != "newton-schulz":
            return self.pool(x)
        root = newton_schulz_sqrt(self.pool.covariance(x))
        return symmetric_to_vector((root + root.mT) / 2).to(x.dtype)


class ResNet(nn.Module):
    """CIFAR ResNet: 3×3 stem conv -> norm -> ReLU -> 4 stages -> average pool -> linear.

    Args:
        depth: ``"resnet18"``, ``"resnet34"`` or ``"resnet50"``.
        num_classes: output classes.
        in_channels: image channels (1 for Fashion-MNIST, 3 for CIFAR).
        width: multiplier of the stage widths 64/128/256/512. Default: 1.
        stem_channels: channels of the stem convolution, where the chosen norm sits.
            Default: 64 (the paper's).
        norm: the stem normalization: ``batchnorm``, ``zca`` or ``pca``.
        head: ``"average"`` (global average pooling) or ``"covpool"`` (second-order pooling
            of the last feature map, :class:`CovariancePoolingHead`). Default: ``"average"``.
        pool_method: the covariance head's ``Σ^{1/2}``: a gradient rule or
            ``"newton-schulz"``. Default: ``"loewner"``.
        **norm_kwargs: arguments of the stem ZCA/PCA layer (``group_size``, ``method``...).
    """

    def __init__(
        self,
        depth: str = "resnet18",
        num_classes: int = 10,
        in_channels: int = 3,
        width: float = 1.0,
        stem_channels: int = STEM_CHANNELS,
        norm: str = "batchnorm",
        head: str = "average",
        pool_method: str = "loewner",
        **norm_kwargs: Any,
    ) -> None:
        super().__init__()
        kind, blocks = DEPTHS[depth]
        block = BasicBlock if kind == "basic" else Bottleneck
        self.conv1 = nn.Conv2d(in_channels, stem_channels, 3, 1, 1, bias=False)
        self.bn1 = stem_norm(norm, stem_channels, **norm_kwargs)
        stages, in_planes = [], stem_channels
        for index, count in enumerate(blocks):
            planes = max(1, round(64 * 2**index * width))
            for position in range(count):
                stride = 2 if index > 0 and position == 0 else 1
                stages.append(block(in_planes, planes, stride))
                in_planes = planes * block.expansion
        self.layers = nn.Sequential(*stages)
        if head not in HEADS:
            raise ValueError(f"head: expected one of {', '.join(HEADS)} (got {head!r})")
        self.head: Optional[CovariancePoolingHead] = None
        features = in_planes
        if head == "covpool":
            self.head = CovariancePoolingHead(in_planes, pool_method)
            features = self.head.output_size
        self.linear = nn.Linear(features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.layers(out)
        if self.head is not None:
            return self.linear(self.head(out))
        return self.linear(torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1))


def resnet(depth: str = "resnet18", **kwargs: Any) -> ResNet:
    if depth not in DEPTHS:
        raise ValueError(f"depth: expected one of {', '.join(DEPTHS)} (got {depth!r})")
    return ResNet(depth, **kwargs)
