"""The "pi" baseline: converges where power iteration converges, fails where it fails."""

from __future__ import annotations

import pytest
import torch

import stableeig as se
from helpers import relative_error, with_spectrum

SEPARATED = torch.tensor([0.05, 0.1, 0.2, 0.5, 1.5, 4.0], dtype=torch.float64)


def test_converges_on_a_well_separated_spectrum() -> None:
    A = torch.stack([with_spectrum(SEPARATED, seed=s) for s in range(3)])
    g = torch.Generator().manual_seed(0)
    w, V = se.power_iteration_eigh(A, k=3, num_iters=200, generator=g)
    w_ref, V_ref = torch.linalg.eigh(A)
    assert w.shape == (3, 3) and V.shape == (3, 6, 3)
    torch.testing.assert_close(w, w_ref[..., 3:], rtol=1e-8, atol=1e-10)
    overlap = (V * V_ref[..., 3:]).sum(-2).abs()  # |cos| between matched eigenvectors
    torch.testing.assert_close(overlap, torch.ones_like(overlap), rtol=0, atol=1e-8)


def test_seeded_generator_is_reproducible_and_input_unchanged() -> None:
    A = with_spectrum(SEPARATED, seed=1)
    before = A.clone()
    first = se.power_iteration_eigh(A, generator=torch.Generator().manual_seed(7))
    second = se.power_iteration_eigh(A, generator=torch.Generator().manual_seed(7))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert torch.equal(A, before)


def test_gradient_flows_through_the_iterations() -> None:
    A = with_spectrum(SEPARATED, seed=2).requires_grad_(True)
    w, V = se.power_iteration_eigh(
        A, k=2, num_iters=300, generator=torch.Generator().manual_seed(0)
    )
    loss = w.sum() + (V @ V.mT * torch.arange(36.0, dtype=torch.float64).view(6, 6)).sum()
    (grad,) = torch.autograd.grad(loss, A)
    B = A.detach().clone().requires_grad_(True)
    w_ref, V_ref = torch.linalg.eigh(B)
    loss_ref = (
        w_ref[4:].sum()
        + (V_ref[:, 4:] @ V_ref[:, 4:].T * torch.arange(36.0, dtype=torch.float64).view(6, 6)).sum()
    )
    (grad_ref,) = torch.autograd.grad(loss_ref, B)
    assert relative_error(grad, (grad_ref + grad_ref.T) / 2) < 1e-6


def test_fails_like_the_baseline_on_close_eigenvalues() -> None:
    # λ₂/λ₁ = 0.999 needs ~3000 iterations; 19 leave the top eigenvector far from the truth.
    A = with_spectrum(torch.tensor([0.1, 0.2, 0.999, 1.0], dtype=torch.float64), seed=3)
    _, V = se.power_iteration_eigh(A, k=1, num_iters=19, generator=torch.Generator().manual_seed(0))
    _, V_ref = torch.linalg.eigh(A)
    assert float((V[:, 0] @ V_ref[:, -1]).abs()) < 0.99


@pytest.mark.parametrize(("k", "num_iters"), [(0, 19), (7, 19), (2, 0), (2.5, 19)])
def test_argument_errors(k: object, num_iters: int) -> None:
    with pytest.raises(se.StableEigError, match="expected an integer"):
        se.power_iteration_eigh(torch.eye(6), k=k, num_iters=num_iters)  # type: ignore[arg-type]


def test_empty_matrix_raises_a_shape_error() -> None:
    with pytest.raises(se.ShapeError, match=r"n >= 1 for power iteration \(got shape \(0, 0\)\)"):
        se.power_iteration_eigh(torch.zeros(0, 0))


def test_early_stop_returns_the_same_kept_pairs_and_gradients() -> None:
    """``stop_below`` only skips eigenpairs that the PI stop rule would drop anyway."""
    from stableeig.nn.whitening import _masked_inverse_sqrt, pi_truncation_mask
    from stableeig.power_iteration import power_iteration_unchecked

    g = torch.Generator().manual_seed(0)
    X = torch.randn(3, 8, 3, generator=g, dtype=torch.float64)  # rank 3 of 8, + ridge
    M = X @ X.mT + 1e-4 * torch.eye(8, dtype=torch.float64)
    starts = torch.randn(3, 8, 8, generator=g, dtype=torch.float64)
    results = []
    for stop in (None, 1e-4):
        A = M.clone().requires_grad_(True)
        w, V = power_iteration_unchecked(A, 8, 19, starts=starts, stop_below=stop)
        W = _masked_inverse_sqrt(w, V, pi_truncation_mask(w, 1e-4))
        W.sum().backward()
        results.append((W.detach(), A.grad, w.shape[-1]))
    (full, full_grad, n_full), (early, early_grad, n_early) = results
    assert n_early < n_full == 8
    torch.testing.assert_close(early, full, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(early_grad, full_grad, rtol=1e-10, atol=1e-10)
