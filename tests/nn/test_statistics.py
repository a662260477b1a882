"""The streamed moments and affine map: every block size, linked or not, equals plain
autograd on whole tensors; the layer's CPU (cache-sized blocks) and GPU (whole batch)
paths agree when each is forced on the CPU."""

from __future__ import annotations

from typing import Optional

import pytest
import torch

import stableeig as se
from stableeig.nn import statistics
from stableeig.nn.statistics import GradientLink, group_affine, group_moments


def _plain(
    x3: torch.Tensor, transform: torch.Tensor, shift: torch.Tensor, d: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean, covariance and ``T (x) + shift`` (with T from the covariance) by autograd ops."""
    N, C, L = x3.shape
    G = C // d
    mean = x3.mean(dim=(0, 2))
    groups = (x3 - mean.view(1, C, 1)).view(N, G, d, L).permute(1, 2, 0, 3).reshape(G, d, N * L)
    covariance = groups @ groups.mT / (N * L)
    T = transform + covariance  # the transform depends on the statistics, as in the layers
    y = (T @ x3.view(N, G, d, L).permute(1, 2, 0, 3).reshape(G, d, N * L) + shift).view(G, d, N, L)
    return mean, covariance, y.permute(2, 0, 1, 3).reshape(N, C, L)


def _streamed(
    x3: torch.Tensor,
    transform: torch.Tensor,
    shift: torch.Tensor,
    d: int,
    block: Optional[int],
    linked: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    link = GradientLink() if linked else None
    mean, covariance, _, alias = group_moments(x3, d, block=block, link=link)
    y = group_affine(alias, transform + covariance, shift, block=block, link=link)
    return mean, covariance, y


def _leaves(seed: int, shape: tuple[int, int, int], d: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    G = shape[1] // d
    x3 = (torch.randn(shape, generator=g, dtype=torch.float64) * 3 + 5).requires_grad_()
    transform = torch.randn(G, d, d, generator=g, dtype=torch.float64).requires_grad_()
    shift = torch.randn(G, d, 1, generator=g, dtype=torch.float64).requires_grad_()
    return [x3, transform, shift]


@pytest.mark.parametrize("block", [None, 1, 2, 3, 7, 100])
@pytest.mark.parametrize("linked", [True, False])
@pytest.mark.parametrize("d", [1, 2, 6])
def test_streamed_equals_plain_autograd(block: Optional[int], linked: bool, d: int) -> None:
    leaves = _leaves(0, (7, 6, 5), d)
    outputs = _plain(*leaves, d)
    streamed = _streamed(*leaves, d, block, linked)
    upstream = [torch.randn_like(o) for o in outputs]
    expected = torch.autograd.grad(outputs, leaves, upstream)
    got = torch.autograd.grad(streamed, leaves, upstream)
    for a, b in zip(streamed + got, outputs + expected):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_the_link_carries_the_whole_input_gradient() -> None:
    """Linked, the affine backward leaves its share and the moments backward writes it."""
    x3, transform, shift = _leaves(1, (4, 4, 3), 2)
    link = GradientLink()
    _, covariance, _, alias = group_moments(x3, 2, link=link)
    y = group_affine(alias, transform + covariance, shift, link=link)
    (grad,) = torch.autograd.grad(y, x3, torch.ones_like(y))
    assert link.pending is None  # taken
    x_only = x3.detach().requires_grad_()
    _, covariance, _, alias = group_moments(x_only, 2)
    expected = torch.autograd.grad(
        group_affine(alias, transform + covariance, shift), x_only, torch.ones_like(y)
    )[0]
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("linked", [True, False])
def test_double_backward_through_the_streamed_path(linked: bool) -> None:
    leaves = _leaves(2, (3, 4, 2), 2)

    def function(*inputs: torch.Tensor) -> torch.Tensor:
        return _streamed(*inputs, 2, 2, linked)[2]

    assert torch.autograd.gradgradcheck(function, leaves)


@pytest.mark.parametrize("method", ["loewner", "power"])
def test_layer_cpu_blocks_equal_the_whole_batch_path(
    method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The GPU's one-block path and the CPU's cache-sized blocks, both forced on the CPU."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(9, 8, 5, 5, generator=g, dtype=torch.float64)  # 25 > 9: streamed
    upstream = torch.randn(9, 8, 5, 5, generator=g, dtype=torch.float64)
    results = []
    for elements in (1, 8 * 25 * 2, 1 << 30):  # one sample, two samples, the whole batch
        monkeypatch.setattr(statistics, "CPU_BLOCK_ELEMENTS", elements)
        layer = se.nn.ZCAWhitening2d(8, group_size=4, method=method).double()
        with torch.no_grad():
            layer.weight.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(0))
        xi = x.clone().requires_grad_()
        y = layer(xi)
        y.backward(upstream)
        layer.eval()
        results.append((y, xi.grad, layer.weight.grad, layer.bias.grad, layer(x)))
    for other in results[1:]:
        for a, b in zip(other, results[0]):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_block_choice_follows_the_device() -> None:
    x3 = torch.zeros(64, 16, 1024)
    assert statistics.samples_per_block(x3) == statistics.CPU_BLOCK_ELEMENTS // (16 * 1024)
    assert statistics.samples_per_block(x3, block=1000) == 64
    assert statistics.samples_per_block(torch.zeros(3, 1 << 20, 1)) == 1
    assert statistics.samples_per_block(x3.to("meta")) == 64  # not a CPU: the whole batch


@pytest.mark.parametrize("block", [1, 3, 12])
def test_covariance_exact_when_the_mean_dwarfs_the_spread(block: int) -> None:
    """Blocks centered at their own means, recombined without cancellation: float32 keeps
    float32 accuracy with a mean 1e4 times the spread and blocks whose means differ."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(12, 4, 50, generator=g) + 1e4
    x[:3] += 100  # the first block sits far from the others
    _, covariance, _, _ = group_moments(x, 2, block=block)
    x64 = x.double()
    centered = (x64 - x64.mean(dim=(0, 2), keepdim=True)).transpose(0, 1).reshape(2, 2, -1)
    truth = centered @ centered.mT / (12 * 50)
    torch.testing.assert_close(covariance.double(), truth, rtol=1e-5, atol=1e-5 * truth.abs().max())


def test_affine_streams_only_when_a_backward_follows(monkeypatch: pytest.MonkeyPatch) -> None:
    """Eval (no graph): one whole-batch call; training: cache-sized blocks."""
    seen: list[int] = []
    apply = statistics._GroupAffine.apply
    monkeypatch.setattr(statistics, "CPU_BLOCK_ELEMENTS", 2 * 6 * 17)
    monkeypatch.setattr(
        statistics._GroupAffine, "apply", lambda *args: seen.append(args[3]) or apply(*args)
    )
    x3, transform, shift = _leaves(5, (7, 6, 17), 3)  # L = 17 > 9: streamed
    with torch.no_grad():
        group_affine(x3, transform, shift)
    group_affine(x3, transform, shift)
    assert seen == [7, 2]


@pytest.mark.parametrize(
    "shape", [(33, 12), (9, 12, 5), (9, 12, 3, 3), (9, 12, 4, 4), (9, 12, 1, 1)]
)
@pytest.mark.parametrize("method", ["loewner", "power"])
def test_whole_tensor_path_equals_the_streamed_passes(
    shape: tuple[int, ...], method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """(N, C) embeddings and maps up to 4×4 take whole-tensor GEMMs; same values, gradients
    (input, weight, bias), running statistics and eval output as the streamed passes forced
    on them."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 1
    upstream = torch.randn(shape, generator=g, dtype=torch.float64)
    cls = se.nn.ZCAWhitening1d if len(shape) < 4 else se.nn.ZCAWhitening2d
    assert statistics.whole_tensor(x.reshape(shape[0], 12, -1))
    results = []
    for limit in (statistics.WHOLE_TENSOR_MAX_LENGTH, 0):  # chosen, then streamed forced
        monkeypatch.setattr(statistics, "WHOLE_TENSOR_MAX_LENGTH", limit)
        layer = cls(12, group_size=4, method=method).double()
        with torch.no_grad():
            layer.weight.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(0))
        xi = x.clone().requires_grad_()
        y = layer(xi)
        y.backward(upstream)
        evaluated = layer.eval()(x)  # running statistics, centered by the running mean
        results.append(
            (y, xi.grad, layer.weight.grad, layer.bias.grad, layer.running_matrix, evaluated)
        )
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
