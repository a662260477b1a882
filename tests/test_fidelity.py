"""Fidelity: the defaults of ``power``, ``taylor``, ``pi`` and the paper's layers reproduce the
authors' reference arithmetic (transcribed in ``tests/reference.py``) on full-rank input."""

from __future__ import annotations

import functools
from typing import Callable

import pytest
import torch

import reference
import stableeig as se
from helpers import relative_error, with_spectrum
from stableeig.rules import Taylor

SEPARATED = torch.tensor([0.1, 0.3, 0.5, 1.0, 2.0, 4.0], dtype=torch.float64)


def _loss(V: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Sign-invariant: Σ weights · (V diag(1..n) Vᵀ)."""
    scale = torch.arange(1, V.shape[-1] + 1, dtype=V.dtype)
    return ((V * scale) @ V.mT * weights).sum()


@pytest.mark.parametrize("K", [0, 1, 19, 40])
def test_power_equals_reference_series_with_deflation(K: int) -> None:
    A = with_spectrum(SEPARATED, seed=5)
    weights = torch.randn(6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    A1 = A.clone().requires_grad_(True)
    _loss(reference.svdpi_eigenvectors(A1, K), weights).backward()
    A2 = A.clone().requires_grad_(True)
    rule = se.Power(num_iters=K) if K != 19 else "power"  # the default is the reference's 19
    _loss(se.eigh(A2, rule)[1], weights).backward()
    assert A1.grad is not None and A2.grad is not None
    expected = (A1.grad + A1.grad.mT) / 2
    assert relative_error(A2.grad, expected) <= 1e-9


def test_power_default_is_twenty_terms_not_nineteen() -> None:
    """The paper's printed formula has K = 19 terms; the code (and the library) sums 20."""
    w = SEPARATED
    C = se.Power().coefficients(w)
    q = float(w[0] / w[-1])
    assert float(C[0, -1]) == pytest.approx(sum(q**k for k in range(20)) / float(w[-1]), 1e-12)


def test_taylor_equals_geometric_approximation() -> None:
    w = torch.tensor([0.01, 0.3, 0.5, 1.0, 2.0, 4.0], dtype=torch.float64)
    descending = w.flip(0)
    a = reference.geometric_approximation(descending)  # C_ref[m, j] = a[j, m] in its order
    ours = Taylor().coefficients(w).flip(0, 1)
    torch.testing.assert_close(ours, a.T, rtol=1e-12, atol=0)


def _zca_pair(d: int, method: str, convention: str, seed: int) -> tuple:  # type: ignore[type-arg]
    C = 16
    layer = se.nn.ZCAWhitening2d(
        C, group_size=d, method=method, convention=convention, dtype=torch.float64
    )
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(seed))
        layer.bias.normal_(generator=torch.Generator().manual_seed(seed + 1))
    running = {"mean": torch.zeros(C, 1, dtype=torch.float64)}
    running["subspace"] = [torch.eye(d, dtype=torch.float64) for _ in range(C // d)]
    return layer, running


def _batches(steps: int, seed: int, C: int = 16) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(C, C, generator=g, dtype=torch.float64) + 2 * torch.eye(C)
    return [
        torch.einsum("ij,njhw->nihw", mixing, torch.randn(8, C, 4, 4, generator=g).double()) + 0.5
        for _ in range(steps)
    ]


def _assert_same_training_step(
    reference_step: Callable[[torch.Tensor], torch.Tensor], layer: torch.nn.Module, x: torch.Tensor
) -> None:
    """One training forward + ``backward(G)`` of both: outputs and input gradients agree."""
    G = torch.randn(x.shape, generator=torch.Generator().manual_seed(7), dtype=x.dtype)
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    y1, y2 = reference_step(x1), layer(x2)
    y1.backward(G)
    y2.backward(G)
    assert relative_error(y2, y1) <= 1e-7
    assert x1.grad is not None and x2.grad is not None
    assert relative_error(x2.grad, x1.grad) <= 1e-7


@pytest.mark.parametrize("d", [4, 16])
@pytest.mark.parametrize("convention", ["stableeig", "reference"])
def test_zca_power_layer_equals_reference_layer(d: int, convention: str) -> None:
    layer, running = _zca_pair(d, "power", convention, seed=d)
    for x in _batches(3, seed=d):
        G = torch.randn(x.shape, generator=torch.Generator().manual_seed(7), dtype=x.dtype)
        x1 = x.clone().requires_grad_(True)
        y1 = reference.zca_svdpi_train(
            x1, 16 // d, layer.weight.detach(), layer.bias.detach(), running
        )
        y1.backward(G)
        x2 = x.clone().requires_grad_(True)
        y2 = layer(x2)
        y2.backward(G)
        assert relative_error(y2, y1) <= 1e-7
        assert x1.grad is not None and x2.grad is not None
        assert relative_error(x2.grad, x1.grad) <= 1e-7
    assert relative_error(layer.running_mean, running["mean"].view(-1)) <= 1e-7
    assert relative_error(layer.running_whitening, torch.stack(running["subspace"])) <= 1e-7
    layer.eval()
    x = _batches(1, seed=99)[0]
    expected = reference.zca_eval(x, 16 // d, layer.weight.detach(), layer.bias.detach(), running)
    assert relative_error(layer(x), expected) <= 1e-7


@pytest.mark.parametrize("d", [4, 16])
def test_zca_pi_layer_equals_reference_pi_layer(d: int, monkeypatch: pytest.MonkeyPatch) -> None:
    layer, running = _zca_pair(d, "pi", "stableeig", seed=d)
    starts = torch.randn(16 // d, d, d, generator=torch.Generator().manual_seed(3)).double()
    original = se.spectral.power_iteration_unchecked  # the core's one rule dispatcher
    monkeypatch.setattr(
        se.spectral, "power_iteration_unchecked", functools.partial(original, starts=starts)
    )
    weight, bias = layer.weight.detach(), layer.bias.detach()
    for x in _batches(2, seed=d + 1):
        step = functools.partial(
            reference.zca_pi_train,
            groups=16 // d,
            weight=weight,
            bias=bias,
            running=running,
            starts=starts,
        )
        _assert_same_training_step(step, layer, x)
    assert relative_error(layer.running_whitening, torch.stack(running["subspace"])) <= 1e-7


def test_pi_reference_backward_differs_from_exact() -> None:
    """The reference PI backward is not the exact gradient of its own forward (M for Mᵀ):
    on a clustered spectrum, where the iterations have not converged, they differ by ~15 %."""
    A = with_spectrum(torch.tensor([0.9, 0.95, 1.0, 1.02, 1.05, 1.1], dtype=torch.float64), 11)
    starts = torch.randn(6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    grads = {}
    for backward in ("reference", "exact"):
        A1 = A.clone().requires_grad_(True)
        w, V = se.power_iteration.power_iteration_unchecked(
            (A1 + A1.mT) / 2, 6, 19, backward=backward, starts=starts
        )
        ((V * torch.arange(6.0)).sum() + w.sum()).backward()
        grads[backward] = A1.grad
    assert relative_error(grads["reference"], grads["exact"]) > 1e-2


@pytest.mark.parametrize("k", [4, 8])
def test_pca_power_reference_convention_equals_reference_layer(k: int) -> None:
    C = 16
    layer = se.nn.PCADenoising2d(
        C, n_components=k, method="power", convention="reference", dtype=torch.float64
    )
    assert torch.count_nonzero(layer.running_projector) == 0  # the reference starts at 0
    running = {
        "mean": torch.zeros(C, 1, dtype=torch.float64),
        "var": torch.ones(C, 1, dtype=torch.float64),
        "subspace": torch.zeros(C, C, dtype=torch.float64),
    }
    weight, bias = layer.weight.detach(), layer.bias.detach()
    for x in _batches(3, seed=k):
        step = functools.partial(
            reference.pca_svdpi_train, n_eigens=k, weight=weight, bias=bias, running=running
        )
        _assert_same_training_step(step, layer, x)
    assert relative_error(layer.running_var, running["var"].view(-1)) <= 1e-7
    assert relative_error(layer.running_projector[0], running["subspace"]) <= 1e-7
    layer.eval()
    x = _batches(1, seed=98)[0]
    expected = reference.pca_eval(x, layer.weight.detach(), layer.bias.detach(), running)
    assert relative_error(layer(x), expected) <= 1e-7
