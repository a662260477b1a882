"""PCADenoising1d/2d: projection, energy rule, references, gradients, conventions."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import stableeig as se
from helpers import channel_covariance, gaussian, stem_activations
from stableeig.nn import PCADenoising1d, PCADenoising2d

METHODS = ("loewner", "power", "taylor", "clip", "analytic", "pi")


@pytest.mark.parametrize("method", METHODS)
def test_shapes_and_finite_gradients(method: str) -> None:
    layer = PCADenoising2d(8, group_size=4, method=method)
    x = gaussian((4, 8, 4, 5)).requires_grad_(True)
    y = layer(x)
    assert y.shape == x.shape
    (y * torch.randn_like(y)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    layer.eval()
    assert layer(x).shape == x.shape


def test_energy_one_equals_batchnorm() -> None:
    # Keeping every eigenvector makes the projector the identity: plain standardization.
    bn = nn.BatchNorm2d(6, eps=1e-4, affine=False)
    pca = PCADenoising2d(6, energy=1.0, affine=False)
    x = gaussian((8, 6, 4, 4))
    torch.testing.assert_close(pca(x), bn(x), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(pca.running_var, bn.running_var)
    pca.eval(), bn.eval()
    torch.testing.assert_close(pca(x), bn(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method", ["loewner", "power", "analytic"])
def test_n_components_projects_onto_top_eigenvectors(method: str) -> None:
    x = gaussian((256, 6), dtype=torch.float64)
    y = PCADenoising1d(6, n_components=2, method=method, affine=False)(x)
    standardized = (x - x.mean(0)) / (x.var(0, unbiased=False) + 1e-4).sqrt()
    _, V = torch.linalg.eigh(
        channel_covariance(standardized) + 1e-4 * torch.eye(6, dtype=torch.float64)
    )
    top = V[:, -2:]
    torch.testing.assert_close(y, standardized @ top @ top.T)


def test_energy_rule_picks_fewest_components() -> None:
    # Three strong directions, three weak: 0.99 keeps exactly the strong three.
    g = torch.Generator().manual_seed(0)
    strong = torch.randn(512, 3, generator=g, dtype=torch.float64)
    x = torch.cat([strong, strong @ torch.randn(3, 3, generator=g, dtype=torch.float64)], dim=1)
    x = x + 1e-3 * torch.randn(512, 6, generator=g, dtype=torch.float64)
    y = PCADenoising1d(6, energy=0.99, affine=False)(x)
    rank = int((torch.linalg.eigvalsh(channel_covariance(y)) > 1e-3).sum())
    assert rank == 3


@pytest.mark.parametrize("method", ["loewner", "power", "taylor", "clip"])
@pytest.mark.parametrize("group_size", [4, 16, 64])
def test_rank_deficient_stem_activations_finite(method: str, group_size: int) -> None:
    x = stem_activations(1).requires_grad_(True)
    y = PCADenoising2d(64, group_size=group_size, method=method)(x)
    (y * torch.randn_like(y)).sum().backward()
    assert torch.isfinite(y).all() and x.grad is not None and torch.isfinite(x.grad).all()


def test_loewner_gradcheck_float64() -> None:
    layer = PCADenoising1d(4, n_components=2, dtype=torch.float64)
    x = gaussian((8, 4), dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(layer, (x,))


@pytest.mark.parametrize("running", ["projector", "covariance"])
def test_eval_output_lies_in_the_running_subspace(running: str) -> None:
    # A cumulative average over one repeated batch is that batch's projector (or covariance),
    # so eval projects onto exactly n_components directions.
    layer = PCADenoising1d(6, n_components=3, running=running, momentum=None, affine=False)
    for _ in range(3):
        layer(gaussian((64, 6), seed=0))
    layer.eval()
    y = layer(gaussian((16, 6), seed=7))
    assert int((torch.linalg.eigvalsh(channel_covariance(y)) > 1e-6).sum()) == 3


def test_running_projector_is_an_average_not_a_projector() -> None:
    """The paper's EMA of projectors: documented, starts at the identity."""
    layer = PCADenoising1d(6, n_components=3)
    layer(gaussian((64, 6), seed=0))
    eigenvalues = torch.linalg.eigvalsh(layer.running_projector[0].double())
    torch.testing.assert_close(
        eigenvalues, torch.tensor([0.9, 0.9, 0.9, 1, 1, 1], dtype=torch.float64)
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_components": 5}, r"n_components: expected an integer in \[1, 4\]"),
        ({"energy": 0.0}, r"expected energy in \(0, 1\] \(got 0.0\)"),
        ({"running": "whitening"}, r"running: expected one of 'projector', 'covariance'"),
    ],
)
def test_constructor_errors(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(se.StableEigError, match=message):
        PCADenoising2d(8, group_size=4, **kwargs)  # type: ignore[arg-type]


def test_repr_and_state_dict() -> None:
    layer = PCADenoising2d(8, group_size=4, n_components=2)
    assert "n_components=2" in repr(layer)
    assert set(layer.state_dict()) == {
        "weight",
        "bias",
        "running_mean",
        "running_var",
        "running_matrix",
        "num_batches_tracked",
        "_extra_state",  # the running mode (version 3)
    }


def test_conventions_are_records_read_field_by_field() -> None:
    reference = se.nn.get_convention("reference")
    assert reference.unbiased_standardization and reference.zero_projector_start
    assert not any(
        getattr(se.nn.get_convention("stableeig"), f)
        for f in ("uniform_weight_init", "literal_truncation", "rayleigh_eigenvalues")
    )
    assert se.nn.CONVENTIONS == ("stableeig", "reference")
    with pytest.raises(se.ArgumentError, match="convention: expected one of"):
        se.nn.get_convention("paper")
    layer = PCADenoising2d(8, group_size=4, n_components=2, convention="reference")
    assert torch.equal(layer.running_projector, torch.zeros(2, 4, 4))  # zero_projector_start
