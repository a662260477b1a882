"""The layers under ``torch.compile`` equal eager: forward, input and parameter gradients,
running statistics, eval output and a few SGD steps (issue 16: before the fix the compiled
input gradient was off by ~100 % because the moments backward lost the ``Tᵀ grad_y`` term).

Losses are ``Σ G ∘ y³`` with a random ``G``: a gradient that is far from zero and depends on
every term (``y.sum()`` has an input gradient of almost 0 through a whitening layer).
"""

from __future__ import annotations

import copy

import pytest
import torch

import stableeig as se
from helpers import gaussian
from stableeig.nn import functional as F

pytestmark = pytest.mark.slow

RULES = ["loewner", "power", "taylor", "clip", "analytic", "pi"]
LAYERS = {
    "zca2d": (lambda m, **k: se.nn.ZCAWhitening2d(8, group_size=4, method=m, **k), (16, 8, 3, 3)),
    "zca1d": (lambda m, **k: se.nn.ZCAWhitening1d(8, group_size=4, method=m, **k), (64, 8)),
    "pca2d": (
        lambda m, **k: se.nn.PCADenoising2d(8, group_size=4, n_components=2, method=m, **k),
        (16, 8, 3, 3),
    ),
    "pca1d": (
        lambda m, **k: se.nn.PCADenoising1d(8, group_size=8, energy=0.9, method=m, **k),
        (32, 8, 5),
    ),
}


def _step(layer: torch.nn.Module, x: torch.Tensor, seed: int) -> list[torch.Tensor]:
    """Forward and backward of ``Σ G ∘ y³``: output, input gradient, parameter gradients."""
    x = x.clone().requires_grad_(True)
    torch.manual_seed(seed)  # pi draws its power-iteration starts from torch's generator
    y = layer(x)
    G = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed + 1))
    grads = torch.autograd.grad((G * y.pow(3)).sum(), [x, *layer.parameters()])
    return [y.detach(), *grads]


def _assert_same(actual: list[torch.Tensor], expected: list[torch.Tensor], what: str) -> None:
    for index, (a, e) in enumerate(zip(actual, expected)):
        scale = e.abs().max().clamp_min(1e-6)
        error = float((a - e).abs().max() / scale)
        assert error < 2e-4, f"{what}: tensor {index} differs by {error:.2e} relative"


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_compiled_layers_equal_eager(kind: str, rule: str, backend: str) -> None:
    make, shape = LAYERS[kind]
    torch._dynamo.reset()
    for track in (True, False):
        eager = make(rule, track_running_stats=track)
        with torch.no_grad():
            eager.weight.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(0))
        compiled_layer = copy.deepcopy(eager)
        compiled = torch.compile(compiled_layer, backend=backend)
        for seed in range(2):  # two training steps: running statistics move
            x = gaussian(shape, seed=seed)
            _assert_same(_step(compiled, x, seed), _step(eager, x, seed), f"{kind} train {seed}")
        for name, buffer in eager.named_buffers():
            torch.testing.assert_close(dict(compiled_layer.named_buffers())[name], buffer)
        eager.eval(), compiled_layer.eval()
        x = gaussian(shape, seed=7)
        _assert_same(_step(compiled, x, 7), _step(eager, x, 7), f"{kind} eval track={track}")


def test_the_issue_reproducer_and_sgd_steps_equal_eager() -> None:
    torch._dynamo.reset()
    layer = se.nn.ZCAWhitening2d(8, group_size=4)
    x = torch.randn(4, 8, 3, 3, generator=torch.Generator().manual_seed(0), requires_grad=True)
    (g,) = torch.autograd.grad(layer(x).pow(3).sum(), x)
    (gc,) = torch.autograd.grad(torch.compile(layer, backend="eager")(x).pow(3).sum(), x)
    assert float((g - gc).abs().max()) < 1e-4 * float(g.abs().max())
    # conv -> ZCA -> ReLU, three SGD steps: the same losses and weights
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, bias=False), se.nn.ZCAWhitening2d(16, group_size=8),
        torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.LazyLinear(4),
    )  # fmt: skip
    data = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(16) % 4
    model(data)  # materialize the lazy layer
    twin = copy.deepcopy(model)
    runs = []
    for net in (model, torch.compile(twin, backend="aot_eager")):
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        losses = []
        for _ in range(3):
            loss = torch.nn.functional.cross_entropy(net(data), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss))
        runs.append(losses)
    assert runs[0] == pytest.approx(runs[1], rel=1e-4)
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["zca2d", "pca2d"])
def test_inductor_equals_eager(kind: str) -> None:
    torch._dynamo.reset()
    make, shape = LAYERS[kind]
    eager = make("loewner")
    compiled_layer = copy.deepcopy(eager)
    compiled = torch.compile(compiled_layer, backend="inductor")
    x = gaussian(shape, seed=3)
    _assert_same(_step(compiled, x, 3), _step(eager, x, 3), f"{kind} inductor")


def test_compiled_functional_equals_eager() -> None:
    torch._dynamo.reset()

    def whiten(x: torch.Tensor) -> torch.Tensor:
        return F.zca_whitening(x, 4)

    x = gaussian((16, 8, 3, 3), seed=2)
    G = torch.randn(16, 8, 3, 3, generator=torch.Generator().manual_seed(3))
    results = []
    for f in (whiten, torch.compile(whiten, backend="aot_eager")):
        leaf = x.clone().requires_grad_(True)
        y = f(leaf)
        (grad,) = torch.autograd.grad((G * y.pow(3)).sum(), leaf)
        results.append([y.detach(), grad])
    _assert_same(results[1], results[0], "functional")


def _converted_resnet() -> torch.nn.Module:
    from stableeig.bench.models import resnet

    torch.manual_seed(0)
    model = resnet(num_classes=10, in_channels=1, width=0.125)
    return se.nn.convert_batchnorm(model, "zca", group_size=8)


def test_a_converted_resnet_compiles_whole_with_the_host_checks_on() -> None:
    """Issue 29: every BatchNorm of a ResNet-18 converted to ZCA, default settings (host
    checks on): 0 graph breaks in training and eval, the compiled training step equals
    eager, and bad input still raises (an assertion in the graph)."""
    assert se._validation.host_checks_enabled()
    x = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    for training in (True, False):
        model = _converted_resnet().train(training)
        torch._dynamo.reset()
        explanation = torch._dynamo.explain(model)(x)
        assert explanation.graph_break_count == 0, [r.reason for r in explanation.break_reasons]
    # values in float64: 8 samples whitened in groups of 8 make float32 round-off chaotic
    eager, compiled = _converted_resnet().double(), _converted_resnet().double()
    torch._dynamo.reset()
    step = torch.compile(lambda m, inputs: m(inputs).square().mean())
    for model, run in ((eager, lambda m, i: m(i).square().mean()), (compiled, step)):
        run(model, x.double()).backward()
    for a, b in zip(eager.parameters(), compiled.parameters()):
        assert a.grad is not None and b.grad is not None
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-8, atol=1e-10)
    bad = x.double()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(RuntimeError, match="expected finite"):
        step(compiled, bad)


def test_compiled_spectral_functions_keep_their_checks_in_the_graph() -> None:
    torch._dynamo.reset()
    f = torch.compile(lambda A: se.logm(A), fullgraph=True)
    torch.testing.assert_close(f(2 * torch.eye(3)), se.logm(2 * torch.eye(3)))
    with pytest.raises(RuntimeError, match="logm: A: expected a positive definite"):
        f(-torch.eye(3))
    with pytest.raises(RuntimeError, match="expected a symmetric matrix"):
        f(torch.tensor([[2.0, 1.0], [0.0, 2.0]]))


def test_a_layer_called_eagerly_first_compiles_whole_and_sees_changed_settings() -> None:
    """The transform a layer keeps between eager calls is no graph break under
    ``fullgraph=True``, and a changed ``eps`` recompiles to the new value."""
    torch._dynamo.reset()
    layer = se.nn.ZCAWhitening2d(8, group_size=4, track_running_stats=False)
    x = gaussian((16, 8, 3, 3), seed=0)
    layer(x)  # eager: builds and keeps the transform
    compiled = torch.compile(layer, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), layer(x))
    layer.eps = 0.5
    fresh = se.nn.ZCAWhitening2d(8, group_size=4, eps=0.5, track_running_stats=False)
    fresh.load_state_dict(layer.state_dict())
    torch.testing.assert_close(compiled(x), fresh(x))
