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


def _pretrained() -> nn.Sequential:
    """A small BatchNorm model after 20 SGD steps: running statistics far from 0 and 1."""
    torch.manual_seed(0)
    model = small_resnet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(20):
        x = 3 * torch.randn(32, 3, 8, 8) + 1
        model(x).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


@pytest.mark.parametrize("kind", ["zca", "pca"])
@pytest.mark.parametrize("running", [None, "covariance"])
def test_a_converted_pretrained_model_equals_the_batchnorm_model_in_eval(
    kind: str, running: str | None
) -> None:
    """Issue 39.1: 0.8.1 dropped running_var (99 % relative difference before training)."""
    model = _pretrained()
    x = 3 * torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(1)) + 1
    with torch.no_grad():
        reference = model(x)
    options = {} if running is None else {"running": running}
    converted = se.nn.convert_batchnorm(_pretrained(), kind, group_size=2, **options).eval()
    with torch.no_grad():
        out = converted(x)
    scale = reference.abs().max()
    assert float((out - reference).abs().max() / scale) < 2e-6  # float32 round-off
    assert converted[1].num_batches_tracked == model[1].num_batches_tracked == 20
    assert converted[1].eps == model[1].eps  # copied, as the momentum


@pytest.mark.parametrize("kind", ["zca", "pca"])
def test_a_batchnorm_checkpoint_loads_strictly_into_a_converted_model(kind: str) -> None:
    model = _pretrained()
    checkpoint = {k: v.clone() for k, v in model.state_dict().items()}
    converted = se.nn.convert_batchnorm(small_resnet(), kind, group_size=2).eval()
    result = converted.load_state_dict(checkpoint, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert all(torch.equal(checkpoint[k], v) for k, v in model.state_dict().items())  # untouched
    x = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        reference, out = model(x), converted(x)
    assert float((out - reference).abs().max() / reference.abs().max()) < 2e-6
    # the layer's own checkpoints still load as themselves
    again = se.nn.convert_batchnorm(small_resnet(), kind, group_size=2).eval()
    again.load_state_dict(converted.state_dict(), strict=True)
    assert torch.equal(again[1].running_matrix, converted[1].running_matrix)


def test_an_explicit_eps_is_kept_and_statistics_still_start_from_the_batchnorm() -> None:
    model = _pretrained()
    converted = se.nn.convert_batchnorm(_pretrained(), "zca", group_size=2, eps=1e-4).eval()
    assert converted[1].eps == 1e-4
    var = model[1].running_var.double()
    whitening = converted[1].running_matrix.diagonal(dim1=-2, dim2=-1).reshape(-1).double()
    assert torch.allclose(whitening, (var + model[1].eps).rsqrt(), rtol=1e-6)
    with pytest.raises(se.ArgumentError, match=r"running_var of shape \(16,\)"):
        converted[1].load_batchnorm_statistics(torch.zeros(16), torch.ones(8), 1e-5)
