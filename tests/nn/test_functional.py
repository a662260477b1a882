"""``stableeig.nn.functional`` equals the modules (training, running statistics, eval)."""

from __future__ import annotations

import pytest
import torch

import stableeig as se
from helpers import gaussian
from stableeig.nn import functional as F


@pytest.mark.parametrize("method", ["loewner", "power", "pi"])
def test_zca_module_equals_functional(method: str) -> None:
    layer = se.nn.ZCAWhitening2d(8, group_size=4, method=method)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(0))
    mean, whitening = torch.zeros(8), torch.eye(4).repeat(2, 1, 1)
    state = {"running_mean": mean, "running_whitening": whitening}
    affine = {"weight": layer.weight, "bias": layer.bias}
    for seed in range(3):
        x = gaussian((8, 8, 3, 3), seed=seed)
        torch.manual_seed(seed)  # pi draws random starts
        expected = layer(x)
        torch.manual_seed(seed)
        y = F.zca_whitening(x, 4, **state, **affine, method=method)
        torch.testing.assert_close(y, expected)
    torch.testing.assert_close(mean, layer.running_mean)
    torch.testing.assert_close(whitening, layer.running_whitening)
    layer.eval()
    x = gaussian((4, 8, 3, 3), seed=9)
    torch.testing.assert_close(F.zca_whitening(x, 4, **state, **affine, training=False), layer(x))


def test_pca_module_equals_functional() -> None:
    layer = se.nn.PCADenoising1d(8, group_size=4, n_components=2, method="power")
    state = {
        "running_mean": torch.zeros(8),
        "running_var": torch.ones(8),
        "running_projector": torch.eye(4).repeat(2, 1, 1),
    }
    options = {"weight": layer.weight, "bias": layer.bias, "n_components": 2}
    for seed in range(2):
        x = gaussian((32, 8), seed=seed)
        y = F.pca_denoising(x, 4, **state, **options, method="power")
        torch.testing.assert_close(y, layer(x))
    layer.eval()
    x = gaussian((16, 8), seed=5)
    torch.testing.assert_close(F.pca_denoising(x, 4, **state, **options, training=False), layer(x))


def test_functional_errors() -> None:
    with pytest.raises(se.ArgumentError, match="expected running_mean and running_whitening"):
        F.zca_whitening(torch.randn(4, 4), training=False)
    with pytest.raises(se.ArgumentError, match=r"group_size to divide the 4 channels \(got"):
        F.zca_whitening(torch.randn(4, 4), 3)
    with pytest.raises(se.DTypeError, match="real floating"):
        F.pca_denoising(torch.ones(4, 4, dtype=torch.int64))
