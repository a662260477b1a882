"""Shape propagation on the meta device (issue 38.6, 39.5): every public function and layer
runs on meta tensors and returns the shapes it returns on the CPU; no value check reads a
meta tensor (``Tensor.item() cannot be called on meta tensors`` crashed the memory
estimate of ``stableeig train --head covpool``)."""

from __future__ import annotations

from typing import Any, Callable

import pytest
import torch

import stableeig as se


def _spd(batch: int = 2, n: int = 5) -> torch.Tensor:
    X = torch.randn(batch, n, n, generator=torch.Generator().manual_seed(0))
    return X @ X.mT + torch.eye(n)


FUNCTIONS: dict[str, Callable[[torch.Tensor], Any]] = {
    "eigh": lambda A: se.eigh(A),
    "eigh power": lambda A: se.eigh(A, backward="power"),
    "inv_sqrtm": se.inv_sqrtm,
    "sqrtm": se.sqrtm,
    "logm": se.logm,
    "expm": se.expm,
    "powm": lambda A: se.powm(A, 0.3),
    "funm": lambda A: se.funm(A, torch.tanh),
    "softplusm": se.softplusm,
    "clamp_eigenvalues": lambda A: se.clamp_eigenvalues(A, 0.1),
    "top_k_projector": lambda A: se.top_k_projector(A, 2),
    "power_iteration_eigh": lambda A: se.power_iteration_eigh(A),
    "extreme_eigenvector": lambda A: se.extreme_eigenvector(A),
    "nuclear_norm": se.nuclear_norm,
    "frechet_distance": lambda A: se.frechet_distance(A[0, 0], A[0], A[1, 0], A[1]),
    "frechet_distance_from_features": lambda A: se.frechet_distance_from_features(A[0], A[1]),
    "bures_wasserstein": lambda A: se.bures_wasserstein(A[0], A[1]),
    "trace_sqrt_product": lambda A: se.trace_sqrt_product(A[0], A[1]),
    "airm_distance": lambda A: se.airm_distance(A[0], A[1]),
    "log_euclidean_distance": lambda A: se.log_euclidean_distance(A[0], A[1]),
    "airm_mean": se.airm_mean,
    "log_euclidean_mean": se.log_euclidean_mean,
    "airm_geodesic": lambda A: se.airm_geodesic(A[0], A[1], 0.3),
    "polar": se.polar,
    "low_rank": lambda A: se.low_rank(A, 2),
    "singular_value_threshold": lambda A: se.singular_value_threshold(A, 0.5),
    "spectral_clip": lambda A: se.spectral_clip(A, 2.0),
    "special_orthogonalize": se.special_orthogonalize,
    "procrustes": lambda A: se.procrustes(A[0], A[1]),
    "principal_angles": lambda A: se.principal_angles(A[0][:, :2], A[1][:, :3]),
    "grassmann_distance": lambda A: se.grassmann_distance(A[0][:, :2], A[1][:, :3]),
    "svd_funm": lambda A: se.svd_funm(A[..., :3], torch.tanh),
    "svd": lambda A: se.svd(A[..., :3]),
    "eigh(A, B)": lambda A: se.eigh(A[0], A[1]),
    "generalized_funm": lambda A: se.generalized_funm(A[0], A[1], torch.tanh),
    "svdvals": lambda A: se.svdvals(A[..., :3, :]),
    "schatten_norm": lambda A: se.schatten_norm(A, 3.0),
}


def _shapes(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return tuple(value.shape), value.dtype
    if isinstance(value, (tuple, list)):
        return [_shapes(v) for v in value]
    return type(value).__name__


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_every_function_propagates_shapes_on_meta(name: str) -> None:
    A = _spd()
    expected = _shapes(FUNCTIONS[name](A))
    got = FUNCTIONS[name](A.to("meta"))
    assert _shapes(got) == expected


LAYERS: dict[str, tuple[Callable[[], torch.nn.Module], tuple[int, ...]]] = {
    "ZCAWhitening2d": (lambda: se.nn.ZCAWhitening2d(8, group_size=4), (6, 8, 3, 3)),
    "ZCAWhitening1d": (lambda: se.nn.ZCAWhitening1d(8, group_size=8), (16, 8)),
    "PCADenoising2d": (lambda: se.nn.PCADenoising2d(8, group_size=8), (6, 8, 3, 3)),
    "CovariancePooling2d": (lambda: se.nn.CovariancePooling2d(8), (4, 8, 3, 3)),
    "SPDNet": (
        lambda: torch.nn.Sequential(se.nn.BiMap(5, 3), se.nn.ReEig(), se.nn.LogEig()),
        (4, 5, 5),
    ),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_every_layer_propagates_shapes_on_meta(name: str) -> None:
    build, shape = LAYERS[name]
    torch.manual_seed(0)
    x = torch.randn(shape)
    if name == "SPDNet":
        x = x @ x.mT + torch.eye(shape[-1])
    expected = _shapes(build().train()(x))
    with torch.device("meta"):
        layer = build().train()
    assert _shapes(layer(x.to("meta"))) == expected
