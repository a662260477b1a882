"""Activations for layer tests."""

from __future__ import annotations

import torch


def stem_activations(
    in_channels: int,
    out_channels: int = 64,
    batch: int = 16,
    size: int = 8,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Outputs of a bias-free 3×3 stem convolution: rank <= 9·in_channels per pixel."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, in_channels, size, size, generator=g, dtype=dtype)
    weight = torch.randn(out_channels, in_channels, 3, 3, generator=g, dtype=dtype) / 3
    return torch.nn.functional.conv2d(images, weight, padding=1)


def channel_covariance(y: torch.Tensor) -> torch.Tensor:
    """Biased covariance of (N, C, ...) activations over all but the channel dimension."""
    flat = y.transpose(0, 1).reshape(y.shape[1], -1).double()
    flat = flat - flat.mean(1, keepdim=True)
    return flat @ flat.T / flat.shape[1]
