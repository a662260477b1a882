"""inv_sqrtm, sqrtm, top_k_projector: accuracy, exact Loewner gradients, invariances."""

from __future__ import annotations

from typing import Callable

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import stableeig as se
from helpers import ADVERSARIAL, relative_error, with_spectrum

Function = Callable[..., torch.Tensor]
FUNCTIONS: dict[str, Function] = {
    "inv_sqrtm": se.inv_sqrtm,
    "sqrtm": se.sqrtm,
    "top_k_projector": lambda A, backward="loewner", **kw: se.top_k_projector(A, 3, backward, **kw),
}
SEPARATED = torch.tensor([0.1, 0.3, 0.5, 1.0, 2.0, 4.0], dtype=torch.float64)


def upstream(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def grad_of(function: Function, A: torch.Tensor, backward: object) -> torch.Tensor:
    A = A.detach().clone().requires_grad_(True)
    (function(A, backward) * upstream(A.shape[-1]).to(A.dtype)).sum().backward()
    assert A.grad is not None
    return A.grad


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_forward_accuracy(dtype: torch.dtype) -> None:
    A = torch.stack([with_spectrum(SEPARATED, seed=s) for s in range(3)]).to(dtype)
    A64 = A.double()
    eye = torch.eye(6, dtype=torch.float64)
    tol = {torch.float16: 3e-3, torch.bfloat16: 2e-2, torch.float32: 1e-6, torch.float64: 1e-12}[
        dtype
    ]
    W, S, P = se.inv_sqrtm(A), se.sqrtm(A), se.top_k_projector(A, 2)
    assert W.dtype == S.dtype == P.dtype == dtype
    assert relative_error(W.double() @ A64 @ W.double(), eye.expand_as(A64)) < 10 * tol
    assert relative_error(S.double() @ S.double(), A64) < 10 * tol
    assert relative_error(P.double() @ P.double(), P.double()) < 10 * tol
    assert torch.allclose(
        P.double().diagonal(dim1=-2, dim2=-1).sum(-1),
        torch.full((3,), 2.0, dtype=torch.float64),
        atol=10 * tol,
    )


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_loewner_gradcheck_and_gradgradcheck(name: str) -> None:
    function = FUNCTIONS[name]
    A = with_spectrum(SEPARATED, seed=1).unsqueeze(0).repeat(2, 1, 1)
    A[1] = with_spectrum(SEPARATED * 1.5, seed=2)

    def symmetric_input(X: torch.Tensor) -> torch.Tensor:
        return function((X + X.mT) / 2)

    X = A.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(symmetric_input, (X,))
    assert torch.autograd.gradgradcheck(symmetric_input, (X,))


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
@pytest.mark.parametrize("backward", ["analytic", "power", "taylor", "clip"])
def test_loewner_equals_eigenvector_rules_in_their_exact_limit(name: str, backward: str) -> None:
    A = with_spectrum(SEPARATED, seed=3)
    exact = grad_of(FUNCTIONS[name], A, "loewner")
    limits = {"power": se.Power(400), "taylor": se.Taylor(400), "clip": se.Clip(1e-6)}
    other = grad_of(FUNCTIONS[name], A, limits.get(backward, backward))
    assert relative_error(other, exact) < 1e-10


def test_inv_sqrtm_gradient_at_identity_is_exact() -> None:
    # d(A^{-1/2}) at A = I is -dA/2: the gradient is -sym(G)/2, with all eigenvalues equal.
    G = upstream(5)
    grad = grad_of(se.inv_sqrtm, torch.eye(5, dtype=torch.float64), "loewner")
    torch.testing.assert_close(grad, -(G + G.T) / 4)
    grad32 = grad_of(se.inv_sqrtm, torch.eye(5), "loewner")
    torch.testing.assert_close(grad32, (-(G + G.T) / 4).float())


def test_sqrtm_gradient_on_repeated_eigenvalues_is_exact() -> None:
    # sqrtm(c·I + t·D) = √c·I + t·D/(2√c) + O(t²): the gradient at c·I is sym(G)/(2√c).
    G = upstream(4)
    grad = grad_of(se.sqrtm, 4 * torch.eye(4, dtype=torch.float64), "loewner")
    torch.testing.assert_close(grad, (G + G.T) / 2 / 4)


@pytest.mark.parametrize("backward", ["loewner", "power", "taylor", "clip"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_inv_sqrtm_finite_on_adversarial_spectra(
    adversarial_name: str, backward: str, dtype: torch.dtype
) -> None:
    A = ADVERSARIAL[adversarial_name](8).to(dtype)
    W = se.inv_sqrtm(A, backward)
    assert torch.isfinite(W).all()
    grad = grad_of(se.inv_sqrtm, A, backward)
    assert torch.isfinite(grad).all(), f"{backward} not finite on {adversarial_name}"


def test_analytic_inv_sqrtm_fails_on_identity_like_torch() -> None:
    assert not torch.isfinite(grad_of(se.inv_sqrtm, torch.eye(4), "analytic")).all()


def stem_covariance(seed: int) -> torch.Tensor:
    """64 channels after a one-channel 3×3 stem convolution: rank <= 9, plus 1e-4·I."""
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(64, 9, generator=g, dtype=torch.float64) @ torch.randn(
        9, 2048, generator=g, dtype=torch.float64
    )
    features = features - features.mean(1, keepdim=True)
    return features @ features.T / 2048 / 9 + 1e-4 * torch.eye(64, dtype=torch.float64)


@pytest.mark.parametrize("seed", range(3))
def test_float32_gradient_within_1e_3_of_float64_truth(seed: int) -> None:
    A32 = stem_covariance(seed).float()
    truth = grad_of(se.inv_sqrtm, A32.double(), "loewner")
    assert relative_error(grad_of(se.inv_sqrtm, A32, "loewner"), truth) < 1e-3


def _decompose_with(monkeypatch: pytest.MonkeyPatch, transform: torch.Tensor) -> None:
    """Make torch.linalg.eigh return V @ transform (a valid eigenbasis of the same A)."""
    original = torch.linalg.eigh

    def rotated(A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w, V = original(A)
        # snap equal eigenvalues to exactly equal, as an exact eigensolver would return them
        w = torch.where((w - w.round(decimals=6)).abs() < 1e-9, w.round(decimals=6), w)
        return w, V @ transform.to(V.dtype)

    monkeypatch.setattr(torch.linalg, "eigh", rotated)


def _rotation_in_block(angle: float) -> torch.Tensor:
    """Rotation of eigenvectors 1 and 2 (inside the tied eigenvalue 1.0 below), with sign flips."""
    c, s = torch.tensor(angle).cos().item(), torch.tensor(angle).sin().item()
    rotation = torch.eye(6, dtype=torch.float64)
    rotation[1:3, 1:3] = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    return rotation @ torch.diag(torch.tensor([-1.0, 1, -1, 1, 1, -1], dtype=torch.float64))


DEGENERATE = torch.tensor([0.5, 1.0, 1.0, 1.0, 2.0, 2.0], dtype=torch.float64)


def test_loewner_invariant_to_signs_and_rotations_in_degenerate_eigenspaces(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    A = with_spectrum(DEGENERATE, seed=4)
    reference_out, reference_grad = se.inv_sqrtm(A), grad_of(se.inv_sqrtm, A, "loewner")
    _decompose_with(monkeypatch, _rotation_in_block(0.7))
    torch.testing.assert_close(se.inv_sqrtm(A), reference_out)
    torch.testing.assert_close(grad_of(se.inv_sqrtm, A, "loewner"), reference_grad)


@pytest.mark.parametrize("backward", ["taylor", "clip", "power"])
def test_bounded_rules_depend_on_the_basis_of_a_degenerate_eigenspace(
    monkeypatch: pytest.MonkeyPatch, backward: str
) -> None:
    """Documented limitation: a bounded rule drops f'(λ)·Ĝᵢⱼ inside a tied block, so its
    gradient depends on which orthonormal basis of that block the solver returned."""
    A = with_spectrum(DEGENERATE, seed=4)
    _decompose_with(monkeypatch, torch.eye(6, dtype=torch.float64))
    reference = grad_of(se.inv_sqrtm, A, backward)
    _decompose_with(monkeypatch, _rotation_in_block(0.7))
    assert relative_error(grad_of(se.inv_sqrtm, A, backward), reference) > 1e-3


@pytest.mark.parametrize("backward", ["loewner", "analytic", "power", "taylor", "clip"])
def test_every_rule_invariant_to_eigenvector_signs(
    monkeypatch: pytest.MonkeyPatch, backward: str
) -> None:
    A = with_spectrum(SEPARATED, seed=6)
    reference = grad_of(se.inv_sqrtm, A, backward)
    _decompose_with(monkeypatch, torch.diag(torch.tensor([1.0, -1, -1, 1, -1, 1])))
    torch.testing.assert_close(grad_of(se.inv_sqrtm, A, backward), reference)


def test_top_k_projector_gradient_only_from_the_cut() -> None:
    # Ties inside the kept and inside the dropped set: the exact gradient is still finite,
    # has no kept×kept or dropped×dropped part, and its cross part is Ĝᵢⱼ / (λ_kept - λ_dropped).
    spectrum = torch.tensor([0.2, 0.2, 0.5, 1.0, 3.0, 3.0], dtype=torch.float64)
    A = with_spectrum(spectrum, seed=7)
    grad = grad_of(FUNCTIONS["top_k_projector"], A, "loewner")
    w, V = torch.linalg.eigh(A)
    G = upstream(6)
    G_hat = V.T @ ((G + G.T) / 2) @ V
    in_basis = V.T @ grad @ V
    kept = torch.arange(6) >= 3
    same_side = kept.unsqueeze(0) == kept.unsqueeze(1)
    assert in_basis[same_side].abs().max() < 1e-12
    expected = G_hat / (w.unsqueeze(1) - w.unsqueeze(0)).abs().where(~same_side, torch.ones(()))
    torch.testing.assert_close(in_basis[~same_side], expected[~same_side])


def test_top_k_projector_zero_gap_at_cut_raises_in_backward() -> None:
    A = torch.diag(torch.tensor([1.0, 2.0, 2.0, 3.0], dtype=torch.float64)).requires_grad_(True)
    P = se.top_k_projector(A, 2)  # the cut falls inside the tied pair 2.0, 2.0
    with pytest.raises(se.NotDifferentiableError, match="zero gap at the cut"):
        P.sum().backward()


def test_sqrtm_of_singular_matrix_forward_ok_backward_raises() -> None:
    A = torch.diag(torch.tensor([0.0, 0.0, 4.0], dtype=torch.float64)).requires_grad_(True)
    S = se.sqrtm(A)
    torch.testing.assert_close(
        S.detach(), torch.diag(torch.tensor([0.0, 0.0, 2.0], dtype=torch.float64))
    )
    with pytest.raises(se.NotDifferentiableError, match="infinite"):
        S.sum().backward()


def test_non_positive_definite_inputs_raise() -> None:
    with pytest.raises(
        se.NotPositiveDefiniteError,
        match=r"expected a positive definite.*got smallest eigenvalue -1",
    ):
        se.inv_sqrtm(torch.diag(torch.tensor([-1.0, 2.0])))
    with pytest.raises(se.NotPositiveDefiniteError, match="positive semidefinite"):
        se.sqrtm(torch.diag(torch.tensor([-1.0, 2.0])))


@settings(max_examples=25, deadline=None)
@given(
    exponents=st.lists(st.floats(-6, 2), min_size=2, max_size=8),
    seed=st.integers(0, 1000),
    backward=st.sampled_from(["loewner", "power", "taylor", "clip"]),
)
def test_property_inv_sqrtm_gradient_finite_and_symmetric(
    exponents: list[float], seed: int, backward: str
) -> None:
    A = with_spectrum(torch.tensor([10.0**e for e in exponents], dtype=torch.float64), seed).float()
    # rounding to float32 moves eigenvalues by ~eps32 · 100: a 1e-6 one can turn negative, and
    # inv_sqrtm rightly refuses that matrix (found by CI); the property is for accepted inputs
    w = torch.linalg.eigvalsh(A.double())
    assume(float(w.min()) > 1e-9 * float(w.max()))
    grad = grad_of(se.inv_sqrtm, A, backward)
    assert torch.isfinite(grad).all()
    torch.testing.assert_close(grad, grad.mT)


def test_projector_tie_in_a_rotated_basis_raises_instead_of_overflowing() -> None:
    """A tie the eigensolver returns as a 1e-16 gap is still a tie: no 1e14 gradient."""
    A = with_spectrum(torch.tensor([1.0, 2.0, 2.0, 3.0], dtype=torch.float64), seed=5)
    A = A.requires_grad_(True)
    P = se.top_k_projector(A, k=2)
    with pytest.raises(se.NotDifferentiableError, match="zero gap at the cut"):
        P.sum().backward()


def test_inv_sqrtm_of_tiny_matrix_says_the_gradient_overflows() -> None:
    A = (1e-300 * torch.eye(3, dtype=torch.float64)).requires_grad_(True)
    with pytest.raises(se.NotDifferentiableError, match=r"overflows torch\.float64"):
        se.inv_sqrtm(A).sum().backward()


# ---- issue 19, item 9: overflow is an error, never a silent Inf ---------------------------


@pytest.mark.parametrize(
    ("dtype", "smallest"), [(torch.float32, 1e-30), (torch.float32, 1e-45), (torch.float16, 1e-4)]
)
def test_inv_sqrtm_gradient_overflowing_the_users_dtype_raises(
    dtype: torch.dtype, smallest: float
) -> None:
    A = torch.diag(torch.tensor([smallest, 1.0, 2.0], dtype=torch.float64)).to(dtype)
    A.requires_grad_(True)
    with pytest.raises(se.NotDifferentiableError, match=f"beyond the range of {dtype}"):
        se.inv_sqrtm(A).sum().backward()
    B = torch.diag(torch.tensor([1e-3, 1.0, 2.0])).requires_grad_(True)  # fits: exact value
    se.inv_sqrtm(B).sum().backward()
    assert B.grad is not None
    torch.testing.assert_close(B.grad.diagonal()[0], torch.tensor(-0.5 * 1e-3**-1.5))


def test_top_k_projector_gradient_overflowing_float32_raises() -> None:
    Q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(0)))
    A = (Q @ torch.diag(torch.tensor([1.0, 2.0, 3.0])) @ Q.T * 1e-40).requires_grad_(True)
    G = torch.randn(3, 3, generator=torch.Generator().manual_seed(1))
    with pytest.raises(se.NotDifferentiableError, match=r"beyond the range of torch\.float32"):
        (se.top_k_projector(A, 1) * G).sum().backward()


def test_near_overflow_float64_input_is_a_clear_error() -> None:
    B = torch.full((3, 3), 1e308, dtype=torch.float64)
    B = B + torch.diag(torch.tensor([0.0, 1e307, 2e307], dtype=torch.float64))
    for function in (se.eigh, se.inv_sqrtm, se.sqrtm):
        with pytest.raises(se.NonFiniteError, match="expected eigenvalues within the range"):
            function(B)
    w, _ = se.eigh(B / 1e10)  # the symmetrization itself no longer overflows
    assert bool(torch.isfinite(w).all())
