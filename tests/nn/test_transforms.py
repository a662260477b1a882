"""Transforms as objects: a new layer kind is one transform class, a new rule one rule class."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

import pytest
import torch

import stableeig as se
from helpers import gaussian
from stableeig.nn import functional as F
from stableeig.nn.transforms import GroupTransform, RunningValues


@dataclass(frozen=True)
class Centering(GroupTransform):
    """A test-only layer kind: ``T = I`` (the layer subtracts the mean, then the affine)."""

    running_choices: ClassVar[tuple[str, ...]] = ("identity", "covariance")

    def transform(
        self, covariance: torch.Tensor, count: Optional[torch.Tensor]
    ) -> tuple[torch.Tensor, RunningValues]:
        eye = torch.eye(covariance.shape[-1], dtype=covariance.dtype).expand_as(covariance)
        return eye + 0 * covariance, RunningValues(eye)

    def from_averages(self, running: RunningValues) -> torch.Tensor:
        return running.matrix


class Centering1d(se.nn.GroupLayer):
    _transform_type = Centering
    _input_dims = (2, 3)


@pytest.mark.parametrize("running", ["identity", "covariance"])
def test_a_new_transform_is_one_class_in_the_functional_and_the_modules(running: str) -> None:
    layer = Centering1d(6, group_size=3, running=running, momentum=0.5)
    with torch.no_grad():
        layer.weight.copy_(torch.arange(1.0, 7.0))
        layer.bias.fill_(0.25)
    x = gaussian((16, 6), seed=0) * 3 + 1
    expected = (x - x.mean(0)) * torch.arange(1.0, 7.0) + 0.25
    torch.testing.assert_close(layer(x), expected)
    torch.testing.assert_close(layer.running_mean, 0.5 * x.mean(0))
    if running == "covariance":
        torch.testing.assert_close(
            layer.running_covariance[0], 0.5 * torch.eye(3) + 0.5 * torch.cov(x[:, :3].T)
        )
    y = F.group_transform(x, Centering(running=running), 3)  # the functional, no state
    torch.testing.assert_close(y, x - x.mean(0))
    layer.eval()
    torch.testing.assert_close(
        layer(x), (x - 0.5 * x.mean(0)) * torch.arange(1.0, 7.0) + 0.25
    )  # eval: the running mean
    clone = Centering1d(6, group_size=3, running=running)
    clone.load_state_dict(layer.state_dict())
    torch.testing.assert_close(clone.eval()(x), layer(x))
    assert "running='" + running + "'" in repr(layer)


def test_a_transform_checks_its_settings_with_the_callers_name() -> None:
    with pytest.raises(se.ArgumentError, match=r"^Centering1d: running: expected one of"):
        Centering1d(4, running="whitening")
    with pytest.raises(se.ArgumentError, match=r"^group_transform: expected running_mean and"):
        F.group_transform(torch.randn(4, 2), Centering(), training=False)
    with pytest.raises(se.ShapeError, match=r"running_identity of shape \(1, 2, 2\)"):
        F.group_transform(
            torch.randn(4, 2), Centering(), running_mean=torch.zeros(2),
            running=RunningValues(torch.eye(3)[None]),
        )  # fmt: skip
    with pytest.raises(se.ArgumentError, match="or none of them"):
        F.zca_whitening(torch.randn(8, 2), running_mean=torch.zeros(2))


@dataclass(frozen=True)
class HalfAnalytic(se.rules.EigenvectorRule):
    """A user's rule: half the exact eigenvector coefficients."""

    name: ClassVar[str] = "half"

    def coefficients(self, w: torch.Tensor) -> torch.Tensor:
        return se.Analytic().coefficients(w) / 2


@dataclass(frozen=True)
class NoEigenvectors(se.rules.EigenvectorRule):
    """A user's rule: the eigenvalue part of the gradient only."""

    name: ClassVar[str] = "none"

    def coefficients(self, w: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(se.Analytic().coefficients(w))


@pytest.mark.parametrize("layer_type", [se.nn.ZCAWhitening1d, se.nn.PCADenoising1d])
def test_a_user_rule_is_one_class_and_acts_linearly_in_its_coefficients(
    layer_type: type,
) -> None:
    """The layer's gradient is the eigenvalue part plus the coefficients' part, so half the
    coefficients give the mean of the full and the eigenvalue-only gradients."""
    x = gaussian((32, 4), seed=3, dtype=torch.float64) @ torch.diag(
        torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    )
    G = gaussian((32, 4), seed=4, dtype=torch.float64)
    outputs, grads = [], []
    options = {"n_components": 2} if layer_type is se.nn.PCADenoising1d else {}
    for rule in (HalfAnalytic(), se.Analytic(), NoEigenvectors()):
        leaf = x.clone().requires_grad_(True)
        layer = layer_type(4, method=rule, dtype=torch.float64, **options)
        y = layer(leaf)
        y.backward(G)
        outputs.append(y.detach())
        grads.append(leaf.grad)
        assert type(rule).__name__ in repr(layer)
    torch.testing.assert_close(outputs[0], outputs[1])
    torch.testing.assert_close(grads[0], (grads[1] + grads[2]) / 2)
    assert (grads[1] - grads[2]).abs().max() > 1e-3  # the eigenvector part is not zero


def test_pca_reference_convention_evaluates_a_running_covariance() -> None:
    """Eval with running="covariance" decomposes the running (already unbiased) covariance;
    with momentum 1 it is the last batch's, so eval on that batch reproduces training up to
    the unbiased variance's factor (0.2.x standardized it by 0 instead: ~100x off)."""
    for convention in ("stableeig", "reference"):
        layer = se.nn.PCADenoising1d(
            6, energy=0.9, running="covariance", momentum=1.0, convention=convention,
            method="power",
        )  # fmt: skip
        with torch.no_grad():
            layer.weight.fill_(1.0)
        x = gaussian((64, 6), seed=1, dtype=torch.float32) * torch.arange(1.0, 7.0)
        trained = layer(x)
        layer.eval()
        torch.testing.assert_close(layer(x), trained, rtol=0.05, atol=0.05)
