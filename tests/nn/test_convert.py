"""convert_batchnorm on a small ResNet-style model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import stableeig as se


class Block(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.bn(self.conv(x)))


def small_resnet() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        Block(16),
        Block(16),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
        nn.BatchNorm1d(10),
    )


def test_first_replaces_the_stem_norm_and_copies_parameters() -> None:
    model = small_resnet()
    with torch.no_grad():
        model[1].weight.uniform_()
        model[1].running_mean.fill_(0.5)
    stem_weight = model[1].weight.clone()
    model.eval()
    se.nn.convert_batchnorm(model, "zca", which="first", group_size=8, method="power")
    assert isinstance(model[1], se.nn.ZCAWhitening2d) and model[1].method == "power"
    assert not model[1].training
    torch.testing.assert_close(model[1].weight.detach(), stem_weight)
    torch.testing.assert_close(model[1].running_mean, torch.full((16,), 0.5))
    assert isinstance(model[3].bn, nn.BatchNorm2d)
    model.train()
    model(torch.randn(4, 3, 8, 8)).sum().backward()


def test_all_and_predicate_and_1d() -> None:
    model = se.nn.convert_batchnorm(small_resnet(), "pca", which="all", group_size=2)
    kinds = [type(m).__name__ for m in model.modules() if "PCA" in type(m).__name__]
    assert kinds == ["PCADenoising2d", "PCADenoising2d", "PCADenoising2d", "PCADenoising1d"]
    model = se.nn.convert_batchnorm(
        small_resnet(), "zca", which=lambda name, m: name.startswith("3.")
    )
    assert isinstance(model[3].bn, se.nn.ZCAWhitening2d) and isinstance(model[4].bn, nn.BatchNorm2d)
    model(torch.randn(4, 3, 8, 8))


def test_root_batchnorm_dtype_and_errors() -> None:
    layer = se.nn.convert_batchnorm(nn.BatchNorm2d(8, dtype=torch.float64), group_size=4)
    assert isinstance(layer, se.nn.ZCAWhitening2d) and layer.weight.dtype == torch.float64
    with pytest.raises(
        se.StableEigError, match=r"cannot replace '1'.*group_size to divide num_features = 16"
    ):
        se.nn.convert_batchnorm(small_resnet(), group_size=3)
    with pytest.raises(se.StableEigError, match=r"kind: expected one of 'zca', 'pca' \(got 'bn'\)"):
        se.nn.convert_batchnorm(small_resnet(), "bn")


def test_a_batchnorm_used_twice_is_replaced_at_both_places() -> None:
    shared = torch.nn.BatchNorm2d(8)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 1), shared, torch.nn.Conv2d(8, 8, 1), shared)
    model = se.nn.convert_batchnorm(model, "zca", group_size=4)
    assert isinstance(model[1], se.nn.ZCAWhitening2d) and model[1] is model[3]
    model = torch.nn.Sequential(shared, torch.nn.Identity(), shared)
    model = se.nn.convert_batchnorm(model, "zca", which="first", group_size=4)
    assert isinstance(model[2], se.nn.ZCAWhitening2d) and model[0] is model[2]
