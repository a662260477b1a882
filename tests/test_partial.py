"""Issue 41, second part: ``se.eigsh``, the k largest or smallest eigenpairs of dense,
sparse and matrix-free operators (and ``A v = λ B v``): values as ``torch.linalg.eigh``'s;
gradients (eigenvalues, eigenvectors, projectors; with respect to a dense matrix, sparse
values, edge weights, or a callable's parameters) equal to dense float64 ``eigh``
references; ties inside the block exact for losses that do not depend on the basis; no gap
at the cut is a typed error; bad operators are named."""

from __future__ import annotations

import pytest
import torch

import stableeig as se

F64 = torch.float64
pytest.importorskip("scipy")


def _sym(seed: int, n: int) -> torch.Tensor:
    X = torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=F64)
    return X + X.mT


def _aligned(V: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    return V * torch.sign((V * reference).sum(-2, keepdim=True)).detach()


def _reference_gradient(A: torch.Tensor, k: int, largest: bool, G: torch.Tensor) -> torch.Tensor:
    """∂/∂A of Σλ² + ⟨G, V⟩ (signs fixed to the reference's) by float64 eigh autograd, sym."""
    leaf = A.clone().requires_grad_()
    w, V = torch.linalg.eigh(leaf)
    block = slice(A.shape[-1] - k, None) if largest else slice(0, k)
    loss = (w[..., block] ** 2).sum() + (G * V[..., :, block]).sum()
    loss.backward()
    assert leaf.grad is not None
    return (leaf.grad + leaf.grad.mT) / 2


def _operator(kind: str, A: torch.Tensor):  # type: ignore[no-untyped-def]
    if kind == "dense":
        leaf = A.clone().requires_grad_()
        return leaf, leaf, lambda: leaf.grad
    if kind == "sparse":
        leaf = A.to_sparse().requires_grad_()
        return leaf, leaf, lambda: leaf.grad.to_dense()
    leaf = A.clone().requires_grad_()
    return (lambda X: leaf @ X), leaf, lambda: leaf.grad


@pytest.mark.parametrize("which", ["largest", "smallest"])
@pytest.mark.parametrize("kind", ["dense", "sparse", "callable"])
def test_values_vectors_and_gradients_equal_dense_eigh(kind: str, which: str) -> None:
    n, k = 14, 3
    A = _sym(1, n)
    largest = which == "largest"
    w_ref, V_ref = torch.linalg.eigh(A)
    block = slice(n - k, None) if largest else slice(0, k)
    operator, _leaf, grad = _operator(kind, A)
    g = torch.Generator().manual_seed(0)
    w, V = se.eigsh(operator, k, which=which, n=n, generator=g)
    torch.testing.assert_close(w, w_ref[block], rtol=0, atol=1e-12)
    V = _aligned(V, V_ref[:, block])
    torch.testing.assert_close(V, V_ref[:, block], rtol=0, atol=1e-10)
    G = torch.randn(n, k, generator=torch.Generator().manual_seed(2), dtype=F64)
    ((w**2).sum() + (G * V).sum()).backward()
    # A V = V Λ: the fitted gradient is for symmetric perturbations (its symmetric part)
    got = grad()
    expected = _reference_gradient(A, k, largest, G)  # V is aligned to the reference
    torch.testing.assert_close((got + got.mT) / 2, expected, rtol=0, atol=1e-9)


def _cycle_laplacian(n: int, weights: torch.Tensor) -> torch.Tensor:
    """The sparse Laplacian of a weighted cycle (ties: its spectrum comes in pairs)."""
    i = torch.arange(n)
    j = (i + 1) % n
    rows = torch.cat([i, j, i, j])
    cols = torch.cat([j, i, i, j])
    values = torch.cat([-weights, -weights, weights, weights])
    return torch.sparse_coo_tensor(torch.stack([rows, cols]), values, (n, n)).coalesce()


def test_tied_pairs_inside_the_block_are_exact_for_a_projector_loss() -> None:
    """A cycle's Laplacian: eigenvalues 0, then pairs. k = 5 keeps two whole pairs; the
    projector V Vᵀ does not depend on the basis inside them; its gradient with respect to
    the edge weights equals the exact Loewner-rule projector of the dense Laplacian."""
    n, k = 40, 5
    weights = torch.ones(n, dtype=F64, requires_grad=True)
    G = torch.randn(n, n, generator=torch.Generator().manual_seed(3), dtype=F64)
    G = G + G.T
    w, V = se.eigsh(_cycle_laplacian(n, weights), k, which="smallest",
                    generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert float((w[1] - w[2]).abs()) < 1e-12  # a tie inside the block
    (G * (V @ V.T)).sum().backward()
    reference_weights = torch.ones(n, dtype=F64, requires_grad=True)
    dense = _cycle_laplacian(n, reference_weights).to_dense()
    (G * se.top_k_projector(-dense, k)).sum().backward()  # the smallest of L: largest of -L
    assert weights.grad is not None and reference_weights.grad is not None
    torch.testing.assert_close(weights.grad, reference_weights.grad, rtol=0, atol=1e-8)


def test_no_gap_at_the_cut_raises_for_vectors_and_not_for_values() -> None:
    n = 40
    weights = torch.ones(n, dtype=F64, requires_grad=True)
    w, V = se.eigsh(_cycle_laplacian(n, weights), 2, which="smallest",
                    generator=torch.Generator().manual_seed(0))  # fmt: skip
    w.sum().backward(retain_graph=True)  # eigenvalues: defined
    assert weights.grad is not None and bool(torch.isfinite(weights.grad).all())
    with pytest.raises(se.NotDifferentiableError, match="gap at the cut"):
        V.square().sum().backward()


def test_generalized_sparse_equals_dense_eigh_A_B() -> None:
    n, k = 12, 3
    A = _sym(4, n)
    X = torch.randn(n, n, generator=torch.Generator().manual_seed(5), dtype=F64)
    B = X @ X.T / n + torch.eye(n, dtype=F64)
    sparse_A = A.to_sparse().requires_grad_()
    sparse_B = B.to_sparse().requires_grad_()
    w, V = se.eigsh(sparse_A, k, B=sparse_B, generator=torch.Generator().manual_seed(0))
    dense_A, dense_B = A.clone().requires_grad_(), B.clone().requires_grad_()
    w_ref, V_ref = se.eigh(dense_A, dense_B, "analytic")
    torch.testing.assert_close(w, w_ref[-k:], rtol=0, atol=1e-11)
    torch.testing.assert_close(V.T @ B @ V, torch.eye(k, dtype=F64), rtol=0, atol=1e-11)
    G = torch.randn(n, k, generator=torch.Generator().manual_seed(6), dtype=F64)
    V = _aligned(V, V_ref[:, -k:].detach())
    ((w**2).sum() + (G * V).sum()).backward()
    ((w_ref[-k:] ** 2).sum() + (G * V_ref[:, -k:]).sum()).backward()
    for ours, theirs in ((sparse_A.grad, dense_A.grad), (sparse_B.grad, dense_B.grad)):
        ours = ours.to_dense()
        torch.testing.assert_close((ours + ours.T) / 2, (theirs + theirs.T) / 2, rtol=0, atol=1e-9)


def test_hessian_eigenvalues_of_a_network_through_hessian_vector_products() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 1)
    ).double()
    x, y = torch.randn(16, 4, dtype=F64), torch.randn(16, 1, dtype=F64)
    params = list(net.parameters())
    size = sum(p.numel() for p in params)

    def loss_of(flat: torch.Tensor) -> torch.Tensor:
        chunks, start = [], 0
        for p in params:
            chunks.append(flat[start : start + p.numel()].view_as(p))
            start += p.numel()
        hidden = torch.tanh(x @ chunks[0].T + chunks[1])
        return ((hidden @ chunks[2].T + chunks[3] - y) ** 2).mean()

    flat = torch.cat([p.detach().flatten() for p in params])

    def hvp(X: torch.Tensor) -> torch.Tensor:
        return torch.func.vmap(
            lambda v: torch.func.jvp(torch.func.grad(loss_of), (flat,), (v,))[1], in_dims=1,
            out_dims=1,
        )(X)  # fmt: skip

    w, _ = se.eigsh(hvp, 5, n=size, generator=torch.Generator().manual_seed(0))
    reference = torch.linalg.eigvalsh(torch.autograd.functional.hessian(loss_of, flat))[-5:]
    torch.testing.assert_close(w, reference, rtol=0, atol=1e-10)


def test_deterministic_under_a_seed_and_a_warm_start_gives_the_same_pairs() -> None:
    A = _sym(7, 30).to_sparse()
    first = se.eigsh(A, 4, generator=torch.Generator().manual_seed(1))
    again = se.eigsh(A, 4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(first.eigenvalues, again.eigenvalues)
    assert torch.equal(first.eigenvectors, again.eigenvectors)
    warm = se.eigsh(A, 4, v0=first.eigenvectors)
    torch.testing.assert_close(warm.eigenvalues, first.eigenvalues, rtol=0, atol=1e-12)


def test_bad_operators_are_refused_by_name() -> None:
    A = _sym(8, 6)
    with pytest.raises(se.ArgumentError, match=r"eigsh: k: expected an integer in \[1, 5\]"):
        se.eigsh(A, 6)
    with pytest.raises(se.ShapeError, match="eigsh: A"):
        se.eigsh(torch.zeros(3, 4), 1)
    nonsymmetric = A.clone()
    nonsymmetric[0, 1] += 1.0
    with pytest.raises(se.NotSymmetricError, match="eigsh: A"):
        se.eigsh(nonsymmetric.to_sparse(), 2)
    with pytest.raises(se.ShapeError, match="matvec to return shape"):
        se.eigsh(lambda X: X[:-1], 2, n=6)
    with pytest.raises(se.NonFiniteError, match="matvec"):
        se.eigsh(lambda X: X * float("nan"), 2, n=6)
    with pytest.raises(se.ArgumentError, match="eigsh: n"):
        se.eigsh(lambda X: X, 2)
    with pytest.raises(se.NotPositiveDefiniteError, match="eigsh: B"):
        se.eigsh(A, 2, B=-torch.eye(6, dtype=F64))
    with pytest.raises(se.ArgumentError, match="eigsh: which"):
        se.eigsh(A, 2, which="middle")


def test_dense_path_batched_and_compiled() -> None:
    A = torch.stack([_sym(s, 8) for s in range(3)])
    w, _V = se.eigsh(A, 2)
    torch.testing.assert_close(w, torch.linalg.eigvalsh(A)[..., -2:])
    torch._dynamo.reset()
    compiled = torch.compile(lambda X: se.eigsh(X, 2).eigenvalues.sum(), fullgraph=True,
                             backend="aot_eager")  # fmt: skip
    leaf_c, leaf_e = A.clone().requires_grad_(), A.clone().requires_grad_()
    compiled(leaf_c).backward()
    se.eigsh(leaf_e, 2).eigenvalues.sum().backward()
    torch.testing.assert_close(leaf_c.grad, leaf_e.grad)


def test_shift_invert_finds_the_same_pairs_and_gradients_stay_on_the_pattern() -> None:
    n = 40
    weights = torch.linspace(0.5, 1.5, n, dtype=F64)
    plain_weights = weights.clone().requires_grad_()
    shifted_weights = weights.clone().requires_grad_()
    G = torch.randn(n, 4, generator=torch.Generator().manual_seed(9), dtype=F64)
    probe = torch.randn(n, 1, generator=torch.Generator().manual_seed(11), dtype=F64)
    results = []
    for leaf, sigma in ((plain_weights, None), (shifted_weights, -1e-3)):
        L = _cycle_laplacian(n, leaf)
        w, V = se.eigsh(L, 4, which="smallest", sigma=sigma,
                        generator=torch.Generator().manual_seed(0))  # fmt: skip
        results.append(w.detach())
        (w.sum() + (G * _aligned(V, probe)).sum()).backward()
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=1e-12)
    torch.testing.assert_close(plain_weights.grad, shifted_weights.grad, rtol=0, atol=1e-8)
    sparse = _sym(10, 12).to_sparse().requires_grad_()
    se.eigsh(sparse, 2).eigenvectors.sum().backward()
    assert sparse.grad is not None and sparse.grad.layout == torch.sparse_coo  # O(nnz)
    with pytest.raises(se.ArgumentError, match="eigsh: sigma: expected a sparse A"):
        se.eigsh(lambda X: X, 2, n=6, sigma=0.0)


def test_dense_path_under_torch_func_grad_and_vmap() -> None:
    A = torch.stack([_sym(s, 8) for s in range(3)])

    def loss(X: torch.Tensor) -> torch.Tensor:
        w, V = se.eigsh(X, 2)
        return w.sum() + ((V @ V.mT) * X).sum()

    leaf = A.clone().requires_grad_()
    loss(leaf).backward()
    torch.testing.assert_close(torch.func.vmap(torch.func.grad(loss))(A), leaf.grad)


def test_numpy_and_tensor_integers_are_integers() -> None:
    numpy = pytest.importorskip("numpy")
    A = _sym(0, 8)
    expected = se.eigsh(A, 3).eigenvalues
    for k in (numpy.int64(3), torch.tensor(3)):
        torch.testing.assert_close(se.eigsh(A, k).eigenvalues, expected)
        torch.testing.assert_close(se.eigsh(A.to_sparse(), k).eigenvalues, expected)
    torch.testing.assert_close(se.low_rank(A, numpy.int32(2)), se.low_rank(A, 2))
    with pytest.raises(se.ArgumentError, match="eigsh: k: expected an integer"):
        se.eigsh(A, 3.0)
    with pytest.raises(se.ArgumentError, match="eigsh: k: expected an integer"):
        se.eigsh(A, True)


def test_too_few_iterations_name_the_pairs_asked_for() -> None:
    with pytest.raises(se.ArgumentError, match=r"the k = 2 asked for and one more"):
        se.eigsh(_sym(0, 30).to_sparse(), 2, maxiter=1)
