"""Folding eval-mode layers into the preceding convolution / linear map (issue 16)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import stableeig as se


def _trained(layer: nn.Module, module: nn.Module, shape: tuple[int, ...]) -> None:
    """A few training batches so that the running statistics are not the identity."""
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        with torch.no_grad():
            layer(module(torch.randn(shape, generator=g) * 2 + 1))
    layer.eval()


ZCA2, PCA2, ZCA1, PCA1 = (
    se.nn.ZCAWhitening2d,
    se.nn.PCADenoising2d,
    se.nn.ZCAWhitening1d,
    se.nn.PCADenoising1d,
)
CASES = [
    (lambda: nn.Conv2d(3, 8, 3, bias=True), lambda **k: ZCA2(8, **k), (16, 3, 6, 6)),
    (lambda: nn.Conv2d(3, 8, 3, bias=False), lambda **k: PCA2(8, energy=0.8, **k), (16, 3, 6, 6)),
    (lambda: nn.Conv1d(4, 8, 3), lambda **k: ZCA1(8, **k), (16, 4, 9)),
    (lambda: nn.Linear(5, 8), lambda **k: PCA1(8, energy=0.8, **k), (64, 5)),
]  # fmt: skip


@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("group_size", [1, 4, 8])
@pytest.mark.parametrize("affine", [True, False])
def test_folded_module_equals_the_pair(case: int, group_size: int, affine: bool) -> None:
    make_module, make_layer, shape = CASES[case]
    torch.manual_seed(case)
    module = make_module()
    layer = make_layer(group_size=group_size, affine=affine)
    if affine:
        with torch.no_grad():
            layer.weight.uniform_(0.5, 1.5), layer.bias.uniform_(-1, 1)
    _trained(layer, module, shape)
    before = [p.clone() for p in module.parameters()]
    fused = se.nn.fold_eval(module, layer)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    expected = layer(module(x))
    torch.testing.assert_close(
        fused(x), expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max())
    )
    assert all(torch.equal(a, b) for a, b in zip(before, module.parameters()))  # untouched


def test_fold_model_and_refusals() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), se.nn.ZCAWhitening2d(8, group_size=4), nn.ReLU())
    _trained(model[1], model[0], (16, 3, 6, 6))
    model.eval()
    folded = se.nn.fold_eval_model(model)
    assert isinstance(folded[1], nn.Identity) and isinstance(model[1], se.nn.ZCAWhitening2d)
    x = torch.randn(4, 3, 6, 6)
    torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-4)
    with pytest.raises(se.ArgumentError, match="eval mode with running statistics"):
        se.nn.fold_eval(nn.Conv2d(3, 8, 3), se.nn.ZCAWhitening2d(8))  # training mode
    with pytest.raises(se.ArgumentError, match="over the 4 output channels"):
        se.nn.fold_eval(nn.Conv2d(3, 4, 3), se.nn.ZCAWhitening2d(8).eval())


def test_convert_sync_batchnorm_and_warn_on_the_rest() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.SyncBatchNorm(8), nn.GroupNorm(2, 8))
    with pytest.warns(UserWarning, match=r"left unchanged .*2 \(GroupNorm\)"):
        se.nn.convert_batchnorm(model, "zca", group_size=4)
    assert isinstance(model[1], se.nn.ZCAWhitening2d) and model[1].sync_statistics
    assert "sync_statistics=True" in repr(model[1])
    with pytest.warns(UserWarning, match="torch.distributed is not initialized"):
        model[1](torch.randn(4, 8, 3, 3))


@pytest.mark.parametrize("layer", [se.nn.ZCAWhitening2d, se.nn.PCADenoising2d])
def test_export_with_a_dynamic_batch_equals_eager_and_runs_with_grad(layer: type) -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), layer(8, group_size=4))
    _trained(model[1], model[0], (16, 3, 8, 8))
    model.eval()
    batch = torch.export.Dim("batch", min=1)
    exported = torch.export.export(
        model, (torch.randn(4, 3, 8, 8),), dynamic_shapes=({0: batch},)
    ).module()
    for n in (1, 7):
        x = torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(n))
        torch.testing.assert_close(exported(x), model(x))
    x = torch.randn(5, 3, 8, 8, requires_grad=True)
    (g,) = torch.autograd.grad(exported(x).pow(2).sum(), x)  # grad enabled: no out= ops
    leaf = x.detach().requires_grad_(True)
    (expected,) = torch.autograd.grad(model(leaf).pow(2).sum(), leaf)
    torch.testing.assert_close(g, expected)


def test_fx_trace_with_the_leaf_tracer_and_a_clear_error_without() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), se.nn.ZCAWhitening2d(8, group_size=4), nn.ReLU())
    graph = torch.fx.GraphModule(model, se.nn.LeafTracer().trace(model))
    x = torch.randn(4, 3, 8, 8)
    torch.testing.assert_close(graph(x), model(x))
    with pytest.raises(se.DTypeError, match=r"LeafTracer .* or use torch\.export"):
        torch.fx.symbolic_trace(model)


def test_quantize_fx_keeps_the_layer_in_float_between_quantized_convolutions() -> None:
    """``prepare_fx``/``convert_fx`` with the layer marked non-traceable (as the error of a
    plain trace says): the convolutions are quantized, the layer runs in float on their
    dequantized output, and the result stays within the quantization error."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.fx.custom_config import PrepareCustomConfig
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), se.nn.ZCAWhitening2d(8, group_size=4), nn.ReLU(),
        nn.Conv2d(8, 4, 1),
    )  # fmt: skip
    for _ in range(3):
        model(torch.randn(16, 3, 6, 6))
    model.eval()
    x = torch.randn(4, 3, 6, 6)
    mapping = get_default_qconfig_mapping()
    with pytest.raises(se.DTypeError, match="set_non_traceable_module_classes"):
        prepare_fx(copy.deepcopy(model), mapping, (x,))
    config = PrepareCustomConfig().set_non_traceable_module_classes([se.nn.ZCAWhitening2d])
    prepared = prepare_fx(copy.deepcopy(model), mapping, (x,), prepare_custom_config=config)
    with torch.no_grad():
        for seed in range(4):  # calibration
            prepared(torch.randn(16, 3, 6, 6, generator=torch.Generator().manual_seed(seed)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's deprecation of quantized tensor creation
        quantized = convert_fx(prepared)
        out = quantized(x)
    kinds = {f"{type(m).__module__}.{type(m).__name__}" for m in quantized.modules()}
    assert "torch.ao.nn.quantized.modules.conv.Conv2d" in kinds
    assert "stableeig.nn.zca.ZCAWhitening2d" in kinds
    expected = model(x)
    error = (out - expected).abs().max() / expected.abs().max()
    assert 1e-4 < error < 0.1  # quantized (not the float model), within its error


@pytest.mark.parametrize("layer", [se.nn.ZCAWhitening2d, se.nn.PCADenoising2d])
@pytest.mark.parametrize("method", ["loewner", "power"])
def test_meta_device_and_fake_tensors_infer_shapes_in_training(layer: type, method: str) -> None:
    from torch._subclasses.fake_tensor import FakeTensorMode

    module = layer(8, group_size=4, method=method, device="meta")
    x = torch.randn(4, 8, 3, 3, device="meta", requires_grad=True)
    module(x).sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape and x.grad.device.type == "meta"
    with FakeTensorMode():
        module = layer(8, group_size=4, method=method)
        x = torch.randn(4, 8, 3, 3, requires_grad=True)
        module(x).sum().backward()
        assert x.grad is not None and x.grad.shape == (4, 8, 3, 3)


def test_torchscript_says_what_to_use_instead() -> None:
    with pytest.raises(RuntimeError, match=r"TorchScript is not supported.*torch\.export"):
        torch.jit.script(se.nn.ZCAWhitening2d(8))
