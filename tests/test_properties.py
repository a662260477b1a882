"""Property-based tests: random shapes, dtypes, group sizes and spectra (clustered,
rank-deficient, graded) for the functions and the layers."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import stableeig as se
from helpers import with_spectrum
from stableeig.nn import functional as F

STABLE = ("power", "taylor", "clip", "loewner")


@st.composite
def spectra(draw: st.DrawFn) -> torch.Tensor:
    """Eigenvalues: clustered, rank-deficient (+ a ridge or exactly 0), or graded."""
    n = draw(st.integers(2, 9))
    kind = draw(st.sampled_from(["clustered", "rank_deficient", "graded", "zeros"]))
    if kind == "clustered":
        gap = 10.0 ** draw(st.integers(-15, -1))
        values = [1.0 + gap * k for k in range(n)]
    elif kind == "rank_deficient":
        rank = draw(st.integers(1, n - 1))
        ridge = draw(st.sampled_from([0.0, 1e-8, 1e-4]))
        values = [ridge] * (n - rank) + [float(k + 1) for k in range(rank)]
    elif kind == "zeros":
        values = [0.0] * n
    else:
        exponents = draw(st.lists(st.floats(-8, 3), min_size=n, max_size=n))
        values = [10.0**e for e in exponents]
    return torch.tensor(values, dtype=torch.float64)


@settings(max_examples=60, deadline=None)
@given(
    spectrum=spectra(),
    seed=st.integers(0, 10_000),
    rule=st.sampled_from(STABLE[:3]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    batch=st.sampled_from([(), (2,), (2, 3)]),
)
def test_stable_eigenvector_rules_give_finite_bounded_gradients(
    spectrum: torch.Tensor, seed: int, rule: str, dtype: torch.dtype, batch: tuple[int, ...]
) -> None:
    A = with_spectrum(spectrum, seed).to(dtype).expand(*batch, -1, -1).clone()
    A.requires_grad_(True)
    w, V = se.eigh(A, rule)
    upstream = torch.randn(V.shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    ((V * upstream).sum() + w.sum()).backward()
    assert A.grad is not None and torch.isfinite(A.grad).all()
    # |C| <= (K+1)/floor = 2e6 (power, taylor; floor 1e-5) or 1/min_gap = 100 (clip), at any
    # scale: |∂L/∂A| <= n² · max|C| · max|upstream| + the eigenvalue term
    bound = (2e6 * A.shape[-1] ** 2 + 1) * float(upstream.abs().max())
    assert float(A.grad.abs().max()) <= bound


@settings(max_examples=40, deadline=None)
@given(spectrum=spectra(), seed=st.integers(0, 10_000), rule=st.sampled_from(STABLE))
def test_inv_sqrtm_of_a_ridged_matrix_is_finite_with_every_stable_rule(
    spectrum: torch.Tensor, seed: int, rule: str
) -> None:
    A = (with_spectrum(spectrum, seed) + 1e-3 * torch.eye(spectrum.shape[0])).float()
    A.requires_grad_(True)
    W = se.inv_sqrtm(A, rule)
    assert torch.isfinite(W).all()
    W.sum().backward()
    assert A.grad is not None and torch.isfinite(A.grad).all()


@st.composite
def layer_inputs(draw: st.DrawFn) -> tuple[torch.Tensor, int, str]:
    group_size = draw(st.sampled_from([1, 2, 4]))
    channels = group_size * draw(st.integers(1, 3))
    shape = draw(
        st.sampled_from(
            [(draw(st.integers(2, 8)), channels), (draw(st.integers(2, 6)), channels, 3, 3)]
        )
    )
    rank = draw(st.sampled_from(["full", "deficient"]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 1000)))
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    if rank == "deficient":  # every channel a copy of the first: a rank-one covariance
        x = x[:, :1].expand(shape).clone()
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    return x.to(dtype), group_size, draw(st.sampled_from(STABLE))


@settings(max_examples=40, deadline=None)
@given(case=layer_inputs())
def test_layers_finite_and_equal_to_their_functional_form(
    case: tuple[torch.Tensor, int, str],
) -> None:
    x, group_size, rule = case
    for module, function in (
        (se.nn.ZCAWhitening1d if x.ndim == 2 else se.nn.ZCAWhitening2d, F.zca_whitening),
        (se.nn.PCADenoising1d if x.ndim == 2 else se.nn.PCADenoising2d, F.pca_denoising),
    ):
        layer = module(x.shape[1], group_size=group_size, method=rule).to(x.dtype)
        xs = x.clone().requires_grad_(True)
        y = layer(xs)
        y.square().sum().backward()
        assert torch.isfinite(y).all() and xs.grad is not None and torch.isfinite(xs.grad).all()
        expected = function(x, group_size, method=rule, weight=layer.weight, bias=layer.bias)
        torch.testing.assert_close(y.detach(), expected.detach())


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 1000), group_size=st.sampled_from([2, 4, 8]))
def test_eval_does_not_depend_on_batch_composition(seed: int, group_size: int) -> None:
    g = torch.Generator().manual_seed(seed)
    layer = se.nn.ZCAWhitening2d(8, group_size=group_size)
    for _ in range(3):
        layer(torch.randn(6, 8, 3, 3, generator=g))
    layer.eval()
    x = torch.randn(6, 8, 3, 3, generator=g)
    whole = layer(x)
    one_at_a_time = torch.cat([layer(x[i : i + 1]) for i in range(6)])
    torch.testing.assert_close(whole, one_at_a_time)
