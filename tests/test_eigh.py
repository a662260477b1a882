"""stableeig.eigh: forward accuracy, the gradient rules, their bounds and failure modes."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import stableeig as se
from conftest import ADVERSARIAL, relative_error, with_spectrum
from stableeig.eigh import (
    clip_coefficients,
    geometric_sum,
    power_coefficients,
    taylor_coefficients,
)

STABLE_RULES = ("power", "taylor", "clip")
SEPARATED = torch.tensor([0.1, 0.3, 0.5, 1.0, 2.0, 4.0], dtype=torch.float64)


def spectral_loss(w: torch.Tensor, V: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """A loss invariant to eigenvector signs: Σ weights · (V diag(j + w / max|w|) Vᵀ)."""
    scale = torch.arange(w.shape[-1], dtype=w.dtype) + w / w.detach().abs().amax(-1, keepdim=True)
    return ((V * scale.unsqueeze(-2)) @ V.mT * weights).sum()


def grad_of(A: torch.Tensor, backward: str, weights: torch.Tensor, **knobs: object) -> torch.Tensor:
    A = A.detach().clone().requires_grad_(True)
    w, V = se.eigh(A, backward, **knobs)  # type: ignore[arg-type]
    spectral_loss(w, V, weights.to(A.dtype)).backward()
    assert A.grad is not None
    return A.grad


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(5,), (3, 5), (2, 3, 5)])
def test_forward_matches_float64_oracle(dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(1)
    X = torch.randn(*shape, 5, generator=g, dtype=torch.float64)
    A64 = X @ X.mT / 5 + 0.1 * torch.eye(5, dtype=torch.float64)
    A = A64.to(dtype)
    w, V = se.eigh(A)
    assert w.dtype == dtype and V.dtype == dtype
    assert w.shape == A.shape[:-1] and V.shape == A.shape
    oracle = torch.linalg.eigvalsh(A.double())  # same (rounded) input, exact arithmetic
    tol = {torch.float16: 2e-3, torch.bfloat16: 1e-2, torch.float32: 1e-6, torch.float64: 1e-12}[
        dtype
    ]
    assert torch.allclose(w.double(), oracle, atol=tol * 10, rtol=tol)
    recon = (V.double() * w.double().unsqueeze(-2)) @ V.double().mT
    assert relative_error(recon, A.double()) < tol * 10


def test_batched_equals_looped() -> None:
    A = torch.stack([ADVERSARIAL["geometric_1e4"](6), with_spectrum(SEPARATED, seed=3)])
    weights = torch.randn(6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for rule in (*STABLE_RULES, "analytic"):
        batched = grad_of(A, rule, weights)
        looped = torch.stack([grad_of(a, rule, weights) for a in A])
        torch.testing.assert_close(batched, looped, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("rule", [*STABLE_RULES, "analytic"])
def test_empty_batch(rule: str) -> None:
    A = torch.zeros(0, 4, 4, requires_grad=True)
    w, V = se.eigh(A, rule)
    assert w.shape == (0, 4) and V.shape == (0, 4, 4)
    (w.sum() + V.sum()).backward()
    assert A.grad is not None and A.grad.shape == (0, 4, 4)


@pytest.mark.parametrize("rule", STABLE_RULES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_adversarial_spectra_finite(adversarial_name: str, rule: str, dtype: torch.dtype) -> None:
    A = ADVERSARIAL[adversarial_name](8).to(dtype)
    weights = torch.randn(8, 8, generator=torch.Generator().manual_seed(0), dtype=dtype)
    w, V = se.eigh(A, rule)
    assert torch.isfinite(w).all() and torch.isfinite(V).all()
    grad = grad_of(A, rule, weights)
    assert torch.isfinite(grad).all(), f"{rule} gradient not finite on {adversarial_name}"


def test_analytic_reproduces_torch() -> None:
    A = with_spectrum(SEPARATED, seed=2).requires_grad_(True)
    weights = torch.randn(6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    spectral_loss(*torch.linalg.eigh(A), weights).backward()
    assert A.grad is not None
    torch_grad = (A.grad + A.grad.mT) / 2
    torch.testing.assert_close(grad_ofs := grad_of(A, "analytic", weights), torch_grad)
    assert torch.allclose(grad_ofs, grad_ofs.mT)
    # The baseline fails where torch fails: repeated eigenvalues give non-finite gradients.
    identity = torch.eye(4, dtype=torch.float64, requires_grad=True)
    spectral_loss(*torch.linalg.eigh(identity), weights[:4, :4]).backward()
    assert identity.grad is not None and not torch.isfinite(identity.grad).all()
    assert not torch.isfinite(grad_of(identity, "analytic", weights[:4, :4])).all()


def test_power_matches_the_paper_algorithm_literally() -> None:
    """The closed form equals the reference code: PI layer per eigenvector, autograd deflation."""

    class PowerIterationLayer(torch.autograd.Function):
        @staticmethod
        def forward(ctx, M, v, K):  # type: ignore[no-untyped-def, override]
            ctx.save_for_backward(M, v)
            ctx.K = K
            return v.clone()

        @staticmethod
        def backward(ctx, grad_v):  # type: ignore[no-untyped-def, override]
            M, v = ctx.saved_tensors
            norm = (M @ v).norm()
            projector = torch.eye(v.shape[0], dtype=M.dtype) - v @ v.T
            series, power = torch.zeros_like(M), torch.eye(v.shape[0], dtype=M.dtype)
            for k in range(ctx.K):
                series = series + power @ projector / norm ** (k + 1)
                power = power @ M
            return series @ grad_v @ v.T, None, None

    A = with_spectrum(SEPARATED, seed=5).requires_grad_(True)
    weights = torch.randn(6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for K in (1, 3, 19):
        with torch.no_grad():
            w, V = torch.linalg.eigh(A)
        deflated, vectors = A, []
        for j in reversed(range(6)):
            v = PowerIterationLayer.apply(deflated, V[:, j : j + 1].clone(), K)
            vectors.append(v)
            deflated = deflated - deflated @ v @ v.T
        literal = torch.cat(vectors[::-1], dim=1)
        (reference,) = torch.autograd.grad(spectral_loss(w.detach(), literal, weights), A)
        reference = (reference + reference.T) / 2
        ours = grad_of(A, "power", weights, num_iters=K)
        # eigenvalue gradients are exact in ours; the literal version above holds w fixed
        A2 = A.detach().clone().requires_grad_(True)
        w2, V2 = se.eigh(A2, "power", num_iters=K)
        spectral_loss(w2.detach(), V2, weights).backward()
        assert A2.grad is not None
        torch.testing.assert_close(A2.grad, reference, rtol=1e-9, atol=1e-11)
        assert torch.isfinite(ours).all()


@pytest.mark.parametrize(("rule", "knob"), [("power", "num_iters"), ("taylor", "order")])
def test_series_converge_to_analytic(rule: str, knob: str) -> None:
    A = with_spectrum(SEPARATED, seed=4)
    weights = torch.randn(6, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    exact = grad_of(A, "analytic", weights)
    errors = [
        relative_error(grad_of(A, rule, weights, **{knob: K}), exact) for K in (2, 5, 19, 60, 200)
    ]
    assert all(later < earlier for earlier, later in zip(errors[:3], errors[1:4]))
    assert errors[-1] < 1e-12


@pytest.mark.parametrize("name", ["identity", "all_equal", "clustered", "rank_1", "zero_plus_eps"])
@pytest.mark.parametrize("K", [1, 9, 19])
def test_series_coefficients_bounded_on_degenerate_spectra(name: str, K: int) -> None:
    w = torch.linalg.eigvalsh(ADVERSARIAL[name](8))
    floor = w.abs().amax() * 8 * torch.finfo(w.dtype).eps
    largest = torch.maximum(w.unsqueeze(-1), w.unsqueeze(-2)).clamp_min(floor)
    for C in (power_coefficients(w, K), taylor_coefficients(w, K)):
        assert torch.isfinite(C).all()
        assert (C.abs() <= (K + 1) / largest * (1 + 1e-12)).all()


def test_taylor_and_clip_are_antisymmetric() -> None:
    w = torch.tensor([1e-4, 1e-4, 0.5, 0.5 + 1e-9, 2.0], dtype=torch.float64)
    for C in (taylor_coefficients(w), clip_coefficients(w)):
        torch.testing.assert_close(C, -C.mT)


@pytest.mark.parametrize("rule", [*STABLE_RULES, "analytic"])
def test_gradient_is_symmetric_and_input_unchanged(rule: str) -> None:
    A = with_spectrum(SEPARATED, seed=7)
    before = A.clone()
    weights = torch.randn(6, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    grad = grad_of(A, rule, weights)
    torch.testing.assert_close(grad, grad.mT)
    assert torch.equal(A, before)


def test_low_precision_and_autocast() -> None:
    A = with_spectrum(SEPARATED, seed=8).to(torch.bfloat16).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        w, V = se.eigh(A)
    assert w.dtype == torch.bfloat16 and V.dtype == torch.bfloat16
    (w.float().sum() + V.float().abs().sum()).backward()
    assert A.grad is not None and A.grad.dtype == torch.bfloat16 and torch.isfinite(A.grad).all()


def test_compute_dtype_float32_runs_in_float32() -> None:
    A = with_spectrum(SEPARATED, seed=9).float()
    w32, _ = se.eigh(A, compute_dtype=torch.float32)
    w64, _ = se.eigh(A)
    assert w32.dtype == torch.float32
    assert torch.allclose(w32, w64, rtol=1e-5)


@settings(max_examples=40, deadline=None)
@given(q=st.floats(0.0, 1.0), terms=st.integers(0, 40))
def test_geometric_sum_matches_direct_sum(q: float, terms: int) -> None:
    direct = sum(q**k for k in range(terms))
    value = float(geometric_sum(torch.tensor(q, dtype=torch.float64), terms))
    assert value == pytest.approx(direct, rel=1e-10, abs=1e-12)


@settings(max_examples=25, deadline=None)
@given(
    exponents=st.lists(st.floats(-8, 2), min_size=2, max_size=7),
    seed=st.integers(0, 1000),
    rule=st.sampled_from(STABLE_RULES),
)
def test_property_stable_rules_finite_for_any_psd_spectrum(
    exponents: list[float], seed: int, rule: str
) -> None:
    spectrum = torch.tensor([10.0**e for e in exponents], dtype=torch.float64)
    A = with_spectrum(spectrum, seed=seed).float()
    weights = torch.randn(
        len(exponents), len(exponents), generator=torch.Generator().manual_seed(seed)
    )
    grad = grad_of(A, rule, weights)
    assert torch.isfinite(grad).all()
    torch.testing.assert_close(grad, grad.mT)
