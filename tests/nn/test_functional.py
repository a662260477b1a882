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


def _outcome(call: object) -> tuple[str, str]:
    """(exception or warning type, message without the caller's name) of a call."""
    import warnings as w

    with w.catch_warnings(record=True) as caught:
        w.simplefilter("always")
        try:
            call()  # type: ignore[operator]
        except Exception as error:
            return type(error).__name__, str(error).split(": ", 1)[-1]
    if caught:
        return caught[0].category.__name__, str(caught[0].message).split(": ", 1)[-1]
    return "none", ""


@pytest.mark.parametrize(
    ("case", "x", "options"),
    [
        ("one value per channel", torch.randn(1, 4), {}),
        ("rank-deficient groups", torch.randn(3, 4), {}),
        ("momentum out of range", torch.randn(8, 4), {"momentum": 1.5}),
        ("momentum a bool", torch.randn(8, 4), {"momentum": True}),
        ("non-positive eps", torch.randn(8, 4), {"eps": 0.0}),
        ("non-finite input", torch.full((8, 4), float("nan")), {}),
        ("integer input", torch.ones(8, 4, dtype=torch.int64), {}),
    ],
)
@pytest.mark.parametrize("kind", ["zca", "pca"])
def test_functional_and_module_raise_and_warn_identically(
    case: str, x: torch.Tensor, options: dict[str, object], kind: str
) -> None:
    module_type = se.nn.ZCAWhitening1d if kind == "zca" else se.nn.PCADenoising1d
    function = F.zca_whitening if kind == "zca" else F.pca_denoising

    def module_call() -> object:
        return module_type(4, **options)(x)  # type: ignore[arg-type]

    def functional_call() -> object:
        return function(x, **options)  # type: ignore[arg-type]

    expected = _outcome(module_call)
    assert expected[0] != "none", case  # every case is refused or warned about
    if case.startswith("momentum"):  # like F.batch_norm, the functional takes a factor only
        expected = (expected[0], expected[1].replace(" or None", ""))
    assert _outcome(functional_call) == expected, case


@pytest.mark.parametrize(
    ("case", "kind", "options"),
    [
        ("energy out of range", "pca", {"energy": 1.5}),
        ("energy a bool", "pca", {"energy": True}),
        ("n_components above the group size", "pca", {"n_components": 5}),
        ("n_components zero", "pca", {"n_components": 0}),
        ("unknown truncation", "zca", {"truncation": "some"}),
        ("loewner with a truncation", "zca", {"truncation": "paper"}),
        ("unknown convention", "zca", {"convention": "paper"}),
        ("unknown method", "pca", {"method": "svd"}),
        ("compute_dtype an integer type", "zca", {"compute_dtype": torch.int32}),
        ("sync without a process group", "zca", {"sync_statistics": True}),
        ("sync without a process group", "pca", {"sync_statistics": True}),
    ],
)
def test_functional_and_module_refuse_settings_identically(
    case: str, kind: str, options: dict[str, object]
) -> None:
    module_type = se.nn.ZCAWhitening1d if kind == "zca" else se.nn.PCADenoising1d
    function = F.zca_whitening if kind == "zca" else F.pca_denoising
    x = gaussian((16, 4), seed=0)
    expected = _outcome(lambda: module_type(4, **options)(x))  # type: ignore[arg-type]
    assert expected[0] != "none", case
    assert _outcome(lambda: function(x, **options)) == expected, case  # type: ignore[arg-type]


def test_functional_running_covariance_equals_the_module() -> None:
    layer = se.nn.ZCAWhitening1d(6, group_size=3, running="covariance", affine=False)
    mean, covariance = torch.zeros(6), torch.eye(3).repeat(2, 1, 1)
    for seed in range(3):
        x = gaussian((32, 6), seed=seed)
        y = F.zca_whitening(x, 3, running_mean=mean, running_covariance=covariance)
        torch.testing.assert_close(y, layer(x))
    torch.testing.assert_close(covariance, layer.running_covariance)
    layer.eval()
    x = gaussian((8, 6), seed=7)
    expected = layer(x)
    torch.testing.assert_close(
        F.zca_whitening(x, 3, running_mean=mean, running_covariance=covariance, training=False),
        expected,
    )
    with pytest.raises(se.ArgumentError, match="running_whitening or running_covariance"):
        F.zca_whitening(x, 3, running_whitening=covariance, running_covariance=covariance)
