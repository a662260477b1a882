"""The second-order layers under ``torch.compile`` and ``torch.func`` (issues 16 and 18):
compiled forward, input and parameter gradients and running means equal eager; forward
mode is the adjoint of the backward; ``vmap`` equals a loop."""

from __future__ import annotations

import copy
from typing import Callable

import pytest
import torch
from torch.func import jvp, vjp, vmap

import stableeig as se


def _spd(N: int, n: int, seed: int) -> torch.Tensor:
    A = torch.randn(N, n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return A @ A.mT / n + 0.1 * torch.eye(n, dtype=torch.float64)


CASES: dict[str, tuple[Callable[[], torch.nn.Module], Callable[[], torch.Tensor]]] = {
    "covpool": (
        lambda: se.nn.CovariancePooling2d(6, reduced_channels=4),
        lambda: torch.randn(8, 6, 3, 3, generator=torch.Generator().manual_seed(0)),
    ),
    "spdnet": (
        lambda: torch.nn.Sequential(
            se.nn.BiMap(6, 4), se.nn.ReEig(0.1), se.nn.LogEig(), torch.nn.Linear(10, 3)
        ),
        lambda: _spd(8, 6, 1).float(),
    ),
    "batchnorm-log-euclidean": (lambda: se.nn.SPDBatchNorm(5), lambda: _spd(8, 5, 2).float()),
    "batchnorm-affine-invariant": (
        lambda: se.nn.SPDBatchNorm(5, mean="affine-invariant", karcher_steps=2),
        lambda: _spd(8, 5, 3).float(),
    ),
}


def _step(module: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    x = x.clone().requires_grad_(True)
    y = module(x)
    G = torch.randn(y.shape, generator=torch.Generator().manual_seed(4))
    return [y.detach(), *torch.autograd.grad((G * y.pow(3)).sum(), [x, *module.parameters()])]


def _eager_and_compiled(
    case: str, fullgraph: bool = False
) -> tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module]:
    """The case's layer, a copy of it, and that copy under ``aot_eager``."""
    torch._dynamo.reset()
    torch.manual_seed(5)
    eager = CASES[case][0]()
    compiled_module = copy.deepcopy(eager)
    compiled = torch.compile(compiled_module, backend="aot_eager", fullgraph=fullgraph)
    return eager, compiled_module, compiled


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_compiled_second_order_layers_equal_eager(case: str) -> None:
    eager, compiled_module, compiled = _eager_and_compiled(case)
    x = CASES[case][1]()
    for _ in range(2):  # the second call sees the updated running mean
        for a, e in zip(_step(compiled, x), _step(eager, x)):
            torch.testing.assert_close(a, e, rtol=2e-4, atol=1e-5)
    for a, e in zip(compiled_module.buffers(), eager.buffers()):
        torch.testing.assert_close(a, e)
    eager.eval(), compiled.eval()
    torch.testing.assert_close(compiled(x), eager(x), rtol=2e-4, atol=1e-5)


@pytest.mark.parametrize(
    "layer",
    [se.nn.ReEig(0.1), se.nn.LogEig(), se.nn.BiMap(4, 3),
     se.nn.SPDBatchNorm(4, mean="affine-invariant"), se.nn.SPDBatchNorm(4)],
    ids=["reeig", "logeig", "bimap", "batchnorm-ai", "batchnorm-le"],
)  # fmt: skip
def test_forward_mode_is_the_adjoint_of_the_backward_and_vmap_is_a_loop(
    layer: torch.nn.Module,
) -> None:
    layer = layer.double()
    with torch.no_grad():  # a bias and a running mean that are not the identity
        for parameter in layer.parameters():
            parameter.copy_(0.3 * torch.randn(parameter.shape, dtype=torch.float64))
        layer(_spd(6, 4, 10))
    layer.eval()
    X = _spd(5, 4, 6)
    T = torch.randn(X.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    T = (T + T.mT) / 2
    y, forward = jvp(layer, (X,), (T,))
    _, pullback = vjp(layer, X)
    U = torch.randn(y.shape, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    torch.testing.assert_close((U * forward).sum(), (pullback(U)[0] * T).sum())
    batches = _spd(15, 4, 9).reshape(3, 5, 4, 4)
    torch.testing.assert_close(vmap(layer)(batches), torch.stack([layer(b) for b in batches]))


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_one_graph_with_host_checks_off(case: str) -> None:
    """``fullgraph=True`` (no graph break) once the host-synchronizing checks are off."""
    eager, _, compiled = _eager_and_compiled(case, fullgraph=True)
    data = CASES[case][1]
    with se.host_checks(False):
        for a, e in zip(_step(compiled, data()), _step(eager, data())):
            torch.testing.assert_close(a, e, rtol=2e-4, atol=1e-5)
