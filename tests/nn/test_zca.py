"""ZCAWhitening1d/2d: smoke, exceptions, shapes, references, gradcheck, compile."""

from __future__ import annotations

import copy
import io
import pickle
import warnings

import pytest
import torch
from torch import nn

import stableeig as se
from helpers import channel_covariance, gaussian, stem_activations
from stableeig.nn import ZCAWhitening1d, ZCAWhitening2d

METHODS = ("loewner", "power", "taylor", "clip", "analytic", "pi")
STABLE = ("loewner", "power", "taylor", "clip")


# ---- smoke / shapes ---------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    ("cls", "shape"),
    [(ZCAWhitening1d, (32, 8)), (ZCAWhitening1d, (8, 8, 5)), (ZCAWhitening2d, (4, 8, 4, 5))],
)
def test_shapes_train_and_eval(cls: type, shape: tuple[int, ...], method: str) -> None:
    layer = cls(8, group_size=4, method=method)
    x = gaussian(shape).requires_grad_(True)
    y = layer(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    y.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    layer.eval()
    assert layer(x).shape == x.shape


def test_channels_last_preserved_and_equal() -> None:
    x = gaussian((4, 8, 5, 6))
    layer = ZCAWhitening2d(8, group_size=4)
    y = layer(x)
    y_cl = layer(x.contiguous(memory_format=torch.channels_last))
    assert y_cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y_cl, y)


# ---- references -------------------------------------------------------------------------


@pytest.mark.parametrize("momentum", [0.1, None])
def test_group_size_1_equals_batchnorm(momentum: float | None) -> None:
    bn = nn.BatchNorm2d(6, eps=1e-4, momentum=momentum, affine=False)
    zca = ZCAWhitening2d(
        6, group_size=1, eps=1e-4, momentum=momentum, affine=False, running="covariance"
    )
    for seed in range(3):
        x = gaussian((8, 6, 5, 5), seed=seed)
        torch.testing.assert_close(zca(x), bn(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(zca.running_mean, bn.running_mean)
    torch.testing.assert_close(
        zca.running_covariance.diagonal(dim1=-2, dim2=-1).reshape(-1), bn.running_var
    )
    bn.eval(), zca.eval()
    x = gaussian((3, 6, 5, 5), seed=9)
    torch.testing.assert_close(zca(x), bn(x), rtol=1e-5, atol=1e-5)


def test_group_size_1_gradients_equal_batchnorm() -> None:
    x = gaussian((8, 6, 5, 5)).requires_grad_(True)
    bn = nn.BatchNorm2d(6, eps=1e-4)
    zca = ZCAWhitening2d(6, group_size=1)
    G = torch.randn(8, 6, 5, 5)
    (grad_bn,) = torch.autograd.grad((bn(x) * G).sum(), x)
    (grad_zca,) = torch.autograd.grad((zca(x) * G).sum(), x)
    torch.testing.assert_close(grad_zca, grad_bn, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", ["loewner", "analytic", "taylor", "clip"])
def test_output_covariance_is_identity(method: str) -> None:
    # Whitening M + eps·I leaves eigenvalues λ/(λ + eps) >= 1 - 1e-3 for λ >= 0.1.
    x = gaussian((64, 16, 6, 6), dtype=torch.float64)
    y = ZCAWhitening2d(16, group_size=8, method=method, affine=False)(x)
    cov = channel_covariance(y)
    for g in range(2):
        block = cov[8 * g : 8 * g + 8, 8 * g : 8 * g + 8]
        torch.testing.assert_close(block, torch.eye(8, dtype=torch.float64), atol=2e-3, rtol=0)


def test_power_output_covariance_is_the_kept_projector() -> None:
    x = gaussian((64, 8, 6, 6), dtype=torch.float64)
    layer = ZCAWhitening2d(8, method="power", affine=False)
    cov = channel_covariance(layer(x))
    eigenvalues = torch.linalg.eigvalsh(cov)
    kept = int((eigenvalues > 0.5).sum())
    assert 1 <= kept < 8  # the paper's rules always drop the last component
    torch.testing.assert_close(cov @ cov, cov, atol=2e-3, rtol=0)  # idempotent: a projector
    assert torch.allclose(eigenvalues[-kept:], torch.ones(kept, dtype=torch.float64), atol=2e-3)


@pytest.mark.parametrize("method", STABLE)
@pytest.mark.parametrize("group_size", [4, 8, 16, 32, 64])
@pytest.mark.parametrize("in_channels", [1, 3])
def test_rank_deficient_stem_activations_finite(
    method: str, group_size: int, in_channels: int
) -> None:
    x = stem_activations(in_channels).requires_grad_(True)
    layer = ZCAWhitening2d(64, group_size=group_size, method=method)
    y = layer(x)
    (y * torch.randn_like(y)).sum().backward()
    assert torch.isfinite(y).all() and x.grad is not None and torch.isfinite(x.grad).all()


def test_analytic_baseline_fails_on_exactly_repeated_eigenvalues() -> None:
    # Rows of a Hadamard matrix: the covariance of every group is exactly c·I.
    hadamard = torch.tensor([[1.0, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]])
    x = hadamard.T.contiguous().requires_grad_(True)  # (N=4, C=4), zero-mean channels
    weights = torch.arange(16.0).view(4, 4)
    (ZCAWhitening1d(4, method="analytic")(x) * weights).sum().backward()
    assert x.grad is not None and not torch.isfinite(x.grad).all()
    x.grad = None
    (ZCAWhitening1d(4, method="loewner")(x) * weights).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_eval_ignores_batch_composition_and_buffers_update_only_in_training() -> None:
    layer = ZCAWhitening2d(8, group_size=4)
    for seed in range(3):
        layer(gaussian((16, 8, 4, 4), seed=seed))
    assert int(layer.num_batches_tracked) == 3
    layer.eval()
    state = {k: v.clone() for k, v in layer.state_dict().items() if k != "_extra_state"}
    a, b = gaussian((5, 8, 4, 4), seed=10), gaussian((7, 8, 4, 4), seed=11)
    alone = layer(a[:1])  # eval with N = 1
    together = layer(torch.cat([a[:1], b]))[:1]
    torch.testing.assert_close(alone, together)
    for key, value in layer.state_dict().items():
        assert key == "_extra_state" or torch.equal(value, state[key]), key


def test_running_whitening_converges_to_population_whitening() -> None:
    layer = ZCAWhitening1d(4, momentum=None)  # cumulative average
    for _ in range(20):
        layer(gaussian((512, 4), seed=0))  # the same batch: the average is that batch's W
    batch_w = se.inv_sqrtm(
        channel_covariance(gaussian((512, 4), seed=0)) + 1e-4 * torch.eye(4, dtype=torch.float64)
    )
    torch.testing.assert_close(layer.running_whitening[0].double(), batch_w, rtol=1e-4, atol=1e-5)


def test_track_running_stats_false_uses_batch_statistics_in_eval() -> None:
    layer = ZCAWhitening1d(4, track_running_stats=False)
    assert layer.running_mean is None and layer.num_batches_tracked is None
    x = gaussian((64, 4))
    y_train = layer(x)
    layer.eval()
    torch.testing.assert_close(layer(x), y_train)


# ---- precision --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_input(dtype: torch.dtype) -> None:
    layer = ZCAWhitening2d(8, group_size=4)
    x = gaussian((8, 8, 4, 4)).to(dtype).requires_grad_(True)
    y = layer(x)
    assert y.dtype == dtype and layer.running_mean.dtype == torch.float32
    y.float().square().sum().backward()
    assert x.grad is not None and x.grad.dtype == dtype and torch.isfinite(x.grad).all()
    reference = ZCAWhitening2d(8, group_size=4)(x.detach().float())
    torch.testing.assert_close(y.float(), reference, atol=0.05, rtol=0.05)


def test_autocast() -> None:
    """Under bfloat16 autocast the layer sees the convolution's bfloat16 output, computes
    its statistics in float32 (decomposition in float64) and returns bfloat16: equal to the
    float32 layer on that same input, up to the output's rounding."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), ZCAWhitening2d(8, group_size=4))
    reference = ZCAWhitening2d(8, group_size=4)
    x = torch.randn(4, 3, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features = model[0](x)
        y = model(x)
    assert features.dtype == y.dtype == torch.bfloat16
    expected = reference(features.float())
    torch.testing.assert_close(y.float(), expected, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(model[1].running_whitening, reference.running_whitening)
    assert model[1].running_whitening.dtype == torch.float32


# ---- awkward input and exceptions ---------------------------------------------------------


def test_empty_batch() -> None:
    layer = ZCAWhitening2d(8, group_size=4)
    y = layer(torch.zeros(0, 8, 4, 4))
    assert y.shape == (0, 8, 4, 4) and int(layer.num_batches_tracked) == 0


def test_one_value_per_channel_in_training() -> None:
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        ZCAWhitening1d(4)(torch.randn(1, 4))
    layer = ZCAWhitening1d(4).eval()
    assert layer(torch.randn(1, 4)).shape == (1, 4)


def test_fewer_samples_than_channels_warns_once_and_stays_finite() -> None:
    layer = ZCAWhitening1d(16)
    x = torch.randn(5, 16, requires_grad=True)
    with pytest.warns(se.nn.RankDeficientWarning, match="5 samples for groups of 16"):
        y = layer(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer(torch.randn(5, 16))
    y.square().sum().backward()
    assert torch.isfinite(y).all() and x.grad is not None and torch.isfinite(x.grad).all()


def test_non_finite_activations_raise_and_leave_running_stats() -> None:
    layer = ZCAWhitening1d(4)
    x = torch.randn(8, 4)
    x[3, 1] = float("nan")
    with pytest.raises(se.NonFiniteError, match="activations' covariance"):
        layer(x)
    assert int(layer.num_batches_tracked) == 0 and torch.equal(layer.running_mean, torch.zeros(4))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"group_size": 3},
            r"expected group_size to divide num_features = 8 \(got group_size = 3\)",
        ),
        ({"eps": 0.0}, r"eps: expected a finite number > 0 \(got 0.0\)"),
        ({"method": "svd"}, r"method: expected one of .* \(got 'svd'\)"),
        ({"running": "mean"}, r"running: expected one of 'whitening', 'covariance' \(got 'mean'\)"),
        ({"momentum": 1.5}, r"expected momentum in \[0, 1\] or None \(got 1.5\)"),
        ({"convention": "paper"}, r"convention: expected one of 'stableeig', 'reference'"),
        ({"truncation": "half"}, r"truncation: expected one of 'none', 'paper', 'pi'"),
    ],
)
def test_constructor_errors(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(se.StableEigError, match=message):
        ZCAWhitening2d(8, **kwargs)  # type: ignore[arg-type]


def test_input_errors() -> None:
    with pytest.raises(
        se.ShapeError, match=r"expected 4D \(N, C, H, W\) input \(got shape \(4, 8\)\)"
    ):
        ZCAWhitening2d(8)(torch.randn(4, 8))
    with pytest.raises(
        se.ShapeError,
        match=r"expected 8 channels in dimension 1 \(got input of shape \(4, 6, 2, 2\)\)",
    ):
        ZCAWhitening2d(8)(torch.randn(4, 6, 2, 2))
    with pytest.raises(se.ShapeError, match=r"expected 2D \(N, C\) or 3D \(N, C, L\) input"):
        ZCAWhitening1d(8)(torch.randn(4, 8, 2, 2))


def test_input_not_modified() -> None:
    x = gaussian((8, 8, 3, 3))
    before = x.clone()
    ZCAWhitening2d(8)(x)
    assert torch.equal(x, before)


# ---- module conventions -----------------------------------------------------------------


def test_state_dict_round_trip_deepcopy_pickle_and_to() -> None:
    layer = ZCAWhitening2d(8, group_size=4, method="power")
    for seed in range(2):
        layer(gaussian((8, 8, 3, 3), seed=seed))
    layer.eval()
    x = gaussian((3, 8, 3, 3), seed=5)
    expected = layer(x)
    fresh = ZCAWhitening2d(8, group_size=4, method="power").eval()
    fresh.load_state_dict(layer.state_dict())
    torch.testing.assert_close(fresh(x), expected)
    assert layer.state_dict()._metadata[""]["version"] == 3  # type: ignore[attr-defined]
    torch.testing.assert_close(copy.deepcopy(layer)(x), expected)
    torch.testing.assert_close(pickle.loads(pickle.dumps(layer))(x), expected)
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    fresh.load_state_dict(torch.load(buffer))
    torch.testing.assert_close(layer.double()(x.double()), expected.double(), rtol=1e-5, atol=1e-5)
    state = layer.state_dict()
    del state["running_matrix"]
    with pytest.raises(RuntimeError, match="Missing key"):
        fresh.load_state_dict(state)


def test_extra_repr_and_reset() -> None:
    layer = ZCAWhitening2d(8, group_size=4, method="taylor")
    assert "8, group_size=4, eps=0.0001, momentum=0.1" in repr(layer) and "Taylor(order=9" in repr(
        layer
    )
    layer(gaussian((8, 8, 3, 3)))
    layer.reset_running_stats()
    assert torch.equal(layer.running_whitening, torch.eye(4).expand(2, 4, 4))
    assert int(layer.num_batches_tracked) == 0


def test_changed_settings_take_effect_at_the_next_call() -> None:
    """The layer keeps its built transform between calls; a changed eps, rule or
    truncation is seen at the next call, as a fresh layer with those settings computes."""
    x = gaussian((64, 8), dtype=torch.float64)
    layer = ZCAWhitening1d(8, affine=False, track_running_stats=False, dtype=torch.float64)
    first = layer(x)
    layer.eps = 0.5
    fresh = ZCAWhitening1d(8, eps=0.5, affine=False, track_running_stats=False)
    assert not torch.allclose(layer(x), first)
    torch.testing.assert_close(layer(x), fresh(x), rtol=0, atol=0)
    layer.rule, layer.truncation = se.rules.Power(), "paper"
    assert layer.transform().rule == se.rules.Power()
    assert layer.transform().truncation == "paper"  # type: ignore[attr-defined]


def test_gradcheck_float64() -> None:
    layer = ZCAWhitening1d(4, group_size=2, dtype=torch.float64)
    x = gaussian((6, 4), dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(layer, (x,))


@pytest.mark.slow
def test_torch_compile_smoke() -> None:
    layer = ZCAWhitening2d(8, group_size=4)
    compiled = torch.compile(layer, backend="aot_eager")
    x = gaussian((4, 8, 3, 3)).requires_grad_(True)
    y = compiled(x)
    torch.testing.assert_close(y, ZCAWhitening2d(8, group_size=4)(x))
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


# ---- reliability probes (each failed before 0.2) ----------------------------------------


@pytest.mark.parametrize("dtype", [torch.int64, torch.complex64])
def test_layers_refuse_integer_and_complex_input(dtype: torch.dtype) -> None:
    for layer in (ZCAWhitening2d(4), se.nn.PCADenoising2d(4, n_components=2)):
        with pytest.raises(se.DTypeError, match=r"expected a real floating input .*got torch\."):
            layer(torch.ones(2, 4, 3, 3, dtype=dtype))


def test_huge_finite_float32_activations_are_whitened_like_float64() -> None:
    x = gaussian((16, 8, 4, 4), seed=3, dtype=torch.float64) * 1e19  # x² overflows float32
    layer32, layer64 = ZCAWhitening2d(8, group_size=4), ZCAWhitening2d(8, group_size=4).double()
    y32 = layer32(x.float())
    y64 = layer64(x)
    assert torch.isfinite(y32).all()
    torch.testing.assert_close(y32.double(), y64, rtol=1e-3, atol=1e-3)
    assert (
        torch.isfinite(layer32.running_mean).all()
        and torch.isfinite(layer32.running_whitening).all()
    )


def test_double_backward_gradient_penalty() -> None:
    layer = ZCAWhitening2d(4, group_size=2).double()
    x = gaussian((6, 4, 2, 2), seed=4, dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradgradcheck(lambda t: layer(t), (x,), eps=1e-6, atol=1e-4)
    x32 = x.detach().float().requires_grad_(True)
    (grad,) = torch.autograd.grad(
        ZCAWhitening2d(4).float()(x32).square().sum(), x32, create_graph=True
    )
    grad.square().sum().backward()  # a gradient penalty
    assert x32.grad is not None and torch.isfinite(x32.grad).all()


def test_state_dict_keys_do_not_depend_on_running_and_version_1_checkpoints_load() -> None:
    from pathlib import Path

    keys = {
        running: list(ZCAWhitening2d(8, group_size=4, running=running).state_dict())
        for running in ("whitening", "covariance")
    }
    assert keys["whitening"] == keys["covariance"]
    assert ZCAWhitening2d(8).state_dict()._metadata[""]["version"] == 3  # type: ignore[attr-defined]
    saved = torch.load(Path(__file__).parents[1] / "data" / "state_dicts_v1.pt")
    for name, entry in saved.items():  # saved by release 0.1 (buffer names per `running`)
        kind, running = name.split("_")
        cls = ZCAWhitening2d if kind == "zca" else se.nn.PCADenoising2d
        kwargs = {} if kind == "zca" else {"n_components": 2}
        layer = cls(8, group_size=4, running=running, **kwargs)
        layer.load_state_dict(entry["state_dict"])
        layer.eval()
        torch.testing.assert_close(layer(entry["input"]), entry["eval_output"])
    with pytest.raises(AttributeError, match="running_whitening"):
        _ = ZCAWhitening2d(8, running="covariance").running_whitening


@pytest.mark.parametrize("method", ["loewner", "taylor", "clip"])
def test_tiny_eps_with_a_float32_decomposition_stays_finite(method: str) -> None:
    """Rank-deficient stem activations, eps = 1e-8, float32 eigh: round-off puts eigenvalues
    below 0; they are read as eps (the true floor) instead of giving NaN (0.1 did)."""
    x = stem_activations(1, 64, batch=16, size=8, seed=2) * 10  # λ_max ~ 1e2, rank 9
    layer = ZCAWhitening2d(64, eps=1e-8, method=method, compute_dtype=torch.float32)
    xs = x.clone().requires_grad_(True)
    y = layer(xs)
    y.square().mean().backward()
    assert torch.isfinite(y).all() and xs.grad is not None and torch.isfinite(xs.grad).all()
    w = torch.linalg.eigvalsh(channel_covariance(x).float() + 1e-8 * torch.eye(64))
    assert float(w.min()) <= 0  # the situation the floor exists for


def test_a_state_dict_never_loads_under_another_running_mode() -> None:
    saved = ZCAWhitening2d(8, group_size=4, running="whitening")
    saved(gaussian((8, 8, 3, 3)))
    state = saved.state_dict()
    with pytest.raises(se.ArgumentError, match="saved with running='whitening'"):
        ZCAWhitening2d(8, group_size=4, running="covariance").load_state_dict(state)
    same = ZCAWhitening2d(8, group_size=4, running="whitening")
    same.load_state_dict(state)
    torch.testing.assert_close(same.running_whitening, saved.running_whitening)
    legacy = {k: v for k, v in state.items() if k != "_extra_state"}  # version 2: unrecorded
    legacy = torch.nn.modules.module.OrderedDict(legacy)
    legacy._metadata = {"": {"version": 2}}  # type: ignore[attr-defined]
    ZCAWhitening2d(8, group_size=4, running="covariance").load_state_dict(legacy)
