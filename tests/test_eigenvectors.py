"""extreme_eigenvector (issue 30): exact gradients per matrix, a zero gradient only where the
eigenvalue is tied, and a clear error otherwise."""

from __future__ import annotations

from unittest import mock

import pytest
import torch

import stableeig as se


def _rotated(eigenvalues: list[float], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    Q = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))[0]
    return (Q * torch.tensor(eigenvalues, dtype=torch.float64)) @ Q.T


def _batch() -> torch.Tensor:
    planar = [_rotated([0.01, 1.0, 2.0], s) for s in range(4)]
    tied_above = [_rotated([0.01, 1.0, 1.0], 9)]  # the other two tied: still defined
    isotropic = [2.0 * torch.eye(3, dtype=torch.float64)]
    return torch.stack(planar + tied_above + isotropic)


def _loss(v: torch.Tensor) -> torch.Tensor:
    return v[..., 2].square().sum()  # sign-invariant


def test_gradients_are_exact_per_matrix_and_zero_only_where_undefined() -> None:
    C = _batch().requires_grad_()
    v, defined = se.extreme_eigenvector(C, undefined="zero")
    assert defined.tolist() == [True] * 5 + [False]
    _loss(v).backward()
    assert C.grad is not None and bool(torch.isfinite(C.grad).all())
    assert torch.equal(C.grad[5], torch.zeros(3, 3, dtype=torch.float64))
    for index in range(5):  # central differences in symmetric directions
        E = _rotated([1.0, -0.5, 0.3], 20 + index)
        h = 1e-6

        def at(t: float, index: int = index, E: torch.Tensor = E) -> torch.Tensor:
            return _loss(se.extreme_eigenvector(_batch()[index] + t * E).vector)

        numeric = (at(h) - at(-h)) / (2 * h)
        torch.testing.assert_close((C.grad[index] * E).sum(), numeric, rtol=1e-6, atol=1e-9)


def test_the_largest_eigenvector_and_the_error_for_a_tie() -> None:
    C = _rotated([0.5, 1.0, 3.0], 3)
    v, defined = se.extreme_eigenvector(C, "largest")
    torch.testing.assert_close((C @ v), 3.0 * v)
    assert bool(defined)
    with pytest.raises(se.NotDifferentiableError, match="1 of 6 tied"):
        se.extreme_eigenvector(_batch().requires_grad_())
    v, defined = se.extreme_eigenvector(_batch())  # no gradient wanted: no error
    assert not bool(defined[5])


def test_torch_eigh_poisons_the_whole_batch_where_we_do_not() -> None:
    C = _batch().requires_grad_()
    _loss(torch.linalg.eigh(C)[1][..., 0]).backward()
    assert C.grad is not None and not bool(torch.isfinite(C.grad[5]).all())


def test_top_k_projector_per_matrix_undefined_gradients() -> None:
    """The projector onto the top 1 of a batch with ties at the cut: undefined="zero" keeps
    every other matrix exact, the tied ones get 0; "raise" (the default) raises."""
    C = _batch()  # the last two have their top two eigenvalues tied: no gap at the cut
    G = torch.randn(6, 3, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    leaf = C.clone().requires_grad_()
    P = se.top_k_projector(leaf, 1, undefined="zero")
    torch.testing.assert_close(P.detach(), se.top_k_projector(C, 1))
    (P * G).sum().backward()
    assert leaf.grad is not None and torch.equal(leaf.grad[4:], torch.zeros(2, 3, 3).double())
    exact = C[:4].clone().requires_grad_()
    (se.top_k_projector(exact, 1) * G[:4]).sum().backward()
    torch.testing.assert_close(leaf.grad[:4], exact.grad)
    with pytest.raises(se.NotDifferentiableError):
        (se.top_k_projector(C.clone().requires_grad_(), 1) * G).sum().backward()


def test_top_k_projector_decomposes_twice_when_every_cut_has_a_gap() -> None:
    """undefined="zero": the gap search and the projector; the constant stand-in's own
    decomposition only where some matrix of the batch has no gap at the cut."""
    C = _batch()  # the last two tied at the cut
    counting = mock.Mock(wraps=torch.linalg.eigh)
    for batch, expected in ((C[:4], 1), (C, 2)):
        counting.reset_mock()
        with mock.patch.object(torch.linalg, "eigh", counting):
            P = se.top_k_projector(batch.clone().requires_grad_(), 1, undefined="zero")
        assert counting.call_count == expected
        torch.testing.assert_close(P.detach(), se.top_k_projector(batch, 1))


def test_top_k_projector_checks_its_input_before_lapack_sees_it() -> None:
    """undefined="zero" looks for gaps with an eigvalsh before the projector: NaN must be
    refused first (LAPACK can hang or crash on NaN), with the projector's own error."""
    A = torch.eye(3)
    A[0, 1] = float("nan")
    A.requires_grad_(True)
    seen = []

    def eigvalsh(matrix: torch.Tensor) -> torch.Tensor:
        seen.append(bool(torch.isfinite(matrix).all()))
        return torch.zeros(matrix.shape[:-1], dtype=matrix.dtype)

    refused = pytest.raises(se.NonFiniteError, match="top_k_projector: A: expected finite")
    with mock.patch.object(torch.linalg, "eigvalsh", eigvalsh), refused:
        se.top_k_projector(A, 1, undefined="zero")
    assert seen == []
    B = torch.tensor([[1.0, 0.5], [0.0, 1.0]], requires_grad=True)  # not symmetric
    with pytest.raises(se.NotSymmetricError, match="top_k_projector: A"):
        se.top_k_projector(B, 1, undefined="zero")


def test_compute_dtype_is_the_precision_of_the_decomposition() -> None:
    X = torch.randn(5, 4, 4, generator=torch.Generator().manual_seed(0))
    A = X @ X.mT + torch.eye(4)
    for compute in (torch.float32, torch.float64):
        vector = se.extreme_eigenvector(A, compute_dtype=compute).vector
        reference = torch.linalg.eigh(A.to(compute))[1][..., 0]
        sign = torch.sign((vector.to(compute) * reference).sum(-1, keepdim=True))
        assert torch.equal(vector, (sign * reference).to(torch.float32)), compute
