"""Generalized and partial eigenproblems: Deep CCA, Laplacian positional encodings, a
normalized cut with the degree matrix, and the sharpest directions of a network's Hessian.

    python examples/eigenproblems.py      # STABLEEIG_EXAMPLE_SMALL=1 for CI's small size

1. Deep CCA at batch 32 < view dimension 64. The loss people copy (Andrew et al.'s,
   as in DeepCCA ports) whitens each view with ``Σ + r I`` through ``eigh`` eigenvectors;
   with fewer samples than dimensions ``Σ`` has a block of zero eigenvalues, which the ridge
   turns into a tie, and the eigenvector gradient is NaN. The same correlations are the top
   generalized eigenvalues of ``[[0, Σ₁₂], [Σ₂₁, 0]] v = ρ diag(Σ₁₁, Σ₂₂) v``:
   ``se.eigh(M, B, shrinkage=...)``, differentiated through its eigenvalues.
   Deep LDA's loss (the top C - 1 eigenvalues of ``Sw⁻¹ Sb``) is the same problem; its
   port through the general eigensolver gives the same gradient here (printed beside ours).
2. Laplacian positional encodings of a grid graph (10⁵ nodes at full size), k = 16, with the
   gradient to the edge weights: ``se.eigsh`` on the sparse Laplacian. ``torch.lobpcg``'s
   backward refuses sparse input; a dense ``eigh`` would need n² floats.
3. A normalized cut: the Fiedler vector of ``L v = λ D v`` (``B`` = the degree matrix).
4. The top-5 eigenvalues of a network's loss Hessian from Hessian-vector products only.
"""

from __future__ import annotations

import os
import time

import torch

import stableeig as se

SMALL = bool(os.environ.get("STABLEEIG_EXAMPLE_SMALL"))
STEPS = 100 if SMALL else 1000
SIDE = 50 if SMALL else 316
torch.set_default_dtype(torch.float64)


# ---------------------------------------------------------------- 1. Deep CCA


def copied_cca_loss(H1: torch.Tensor, H2: torch.Tensor, outdim: int = 8) -> torch.Tensor:
    """Deep CCA's loss as the ports write it (eigh in place of the removed symeig)."""
    r1 = r2 = 1e-3
    m = H1.shape[0]
    H1bar, H2bar = H1 - H1.mean(0), H2 - H2.mean(0)
    S12 = H1bar.T @ H2bar / (m - 1)
    S11 = H1bar.T @ H1bar / (m - 1) + r1 * torch.eye(H1.shape[1])
    S22 = H2bar.T @ H2bar / (m - 1) + r2 * torch.eye(H2.shape[1])
    D1, V1 = torch.linalg.eigh(S11)
    D2, V2 = torch.linalg.eigh(S22)
    S11_root_inv = V1 @ torch.diag(D1**-0.5) @ V1.T
    S22_root_inv = V2 @ torch.diag(D2**-0.5) @ V2.T
    T = S11_root_inv @ S12 @ S22_root_inv
    values = torch.linalg.eigvalsh(T.T @ T).clamp_min(1e-12)
    return -values.topk(outdim)[0].sqrt().sum()


def stableeig_cca_loss(
    H1: torch.Tensor, H2: torch.Tensor, outdim: int = 8, shrinkage: float = 0.05
) -> torch.Tensor:
    """The top canonical correlations as generalized eigenvalues, B shrunk to be definite."""
    m, d = H1.shape
    H1bar, H2bar = H1 - H1.mean(0), H2 - H2.mean(0)
    S12 = H1bar.T @ H2bar / (m - 1)
    zeros = torch.zeros(d, d)
    M = torch.cat([torch.cat([zeros, S12], 1), torch.cat([S12.T, zeros], 1)])
    B = torch.block_diag(H1bar.T @ H1bar, H2bar.T @ H2bar) / (m - 1)
    correlations = se.eigh(M, B, shrinkage=shrinkage).eigenvalues[-outdim:]
    return -correlations.sum()


def deep_cca(loss_of, label: str) -> None:  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(0)
    latent_dim, view_dim, batch = 4, 64, 32
    mix1, mix2 = (
        torch.randn(latent_dim, 100, generator=g),
        torch.randn(latent_dim, 100, generator=g),
    )

    def views(size: int) -> tuple[torch.Tensor, torch.Tensor]:
        z = torch.randn(size, latent_dim, generator=g)
        return (torch.tanh(z @ mix1) + 0.5 * torch.randn(size, 100, generator=g),
                torch.tanh(z @ mix2) + 0.5 * torch.randn(size, 100, generator=g))  # fmt: skip

    torch.manual_seed(0)
    f1 = torch.nn.Sequential(
        torch.nn.Linear(100, 64), torch.nn.Tanh(), torch.nn.Linear(64, view_dim)
    )
    f2 = torch.nn.Sequential(
        torch.nn.Linear(100, 64), torch.nn.Tanh(), torch.nn.Linear(64, view_dim)
    )
    optimizer = torch.optim.Adam([*f1.parameters(), *f2.parameters()], lr=1e-3)
    first = None
    for step in range(STEPS):
        x1, x2 = views(batch)
        loss = loss_of(f1(x1), f2(x2))
        optimizer.zero_grad()
        loss.backward()
        grads = [p.grad for p in [*f1.parameters(), *f2.parameters()]]
        if not all(grad is not None and bool(torch.isfinite(grad).all()) for grad in grads):
            print(f"  {label:34s} step {step}: non-finite gradient — training stops")
            return
        optimizer.step()
        first = float(loss.detach()) if first is None else first
    with torch.no_grad():
        x1, x2 = views(2000)  # held out: correlations of the learned features, large batch
        held_out = -float(stableeig_cca_loss(f1(x1), f2(x2), outdim=4, shrinkage=0.0))
    print(f"  {label:34s} loss {first:.3f} -> {float(loss.detach()):.3f} in {STEPS} steps; "
          f"top-4 held-out correlations sum {held_out:.3f} (of 4)")  # fmt: skip


def class_scatter(H: torch.Tensor, y: torch.Tensor, classes: int) -> tuple[torch.Tensor, ...]:
    """Between- and within-class scatter (Deep LDA's definitions)."""
    centred = H - H.mean(0)
    total = centred.T @ centred / (H.shape[0] - 1)
    within = (
        sum(
            (H[y == c] - H[y == c].mean(0)).T
            @ (H[y == c] - H[y == c].mean(0))
            / ((y == c).sum() - 1)
            for c in range(classes)
        )
        / classes
    )
    return total - within, within


def copied_lda_loss(H: torch.Tensor, y: torch.Tensor, classes: int) -> torch.Tensor:
    """The Deep LDA port's algorithm: eigenvalues of pinv(Sw + λI) Sb by the general
    (non-symmetric) eigensolver, real parts, the top C - 1 averaged."""
    between, within = class_scatter(H, y, classes)
    product = torch.linalg.pinv(within + 1e-3 * torch.eye(H.shape[1])) @ between
    values = torch.linalg.eig(product).eigenvalues.real.sort().values
    return -values[-(classes - 1) :].mean()


def stableeig_lda_loss(H: torch.Tensor, y: torch.Tensor, classes: int) -> torch.Tensor:
    between, within = class_scatter(H, y, classes)
    values = se.eigh(between, within + 1e-3 * torch.eye(H.shape[1])).eigenvalues
    return -values[-(classes - 1) :].mean()


def deep_lda() -> None:
    g = torch.Generator().manual_seed(4)
    classes, dimension = 4, 32
    H = torch.randn(64, dimension, generator=g)
    y = torch.arange(64) % classes
    E = torch.randn(64, dimension, generator=g)
    for loss_of, label in ((copied_lda_loss, "copied (pinv + linalg.eig)"),
                           (stableeig_lda_loss, "se.eigh(Sb, Sw + λI)")):  # fmt: skip
        leaf = H.clone().requires_grad_()
        (grad,) = torch.autograd.grad(loss_of(leaf, y, classes), leaf)
        h = 1e-6  # the directional derivative by central differences, for reference
        numeric = (loss_of(H + h * E, y, classes) - loss_of(H - h * E, y, classes)) / (2 * h)
        print(f"  {label:28s} directional derivative {float((grad * E).sum()):.10f} "
              f"(central differences {float(numeric):.10f})")  # fmt: skip


# ---------------------------------------------------------------- 2. and 3. graphs


def grid(side: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    index = torch.arange(side * side).view(side, side)
    source = torch.cat([index[:, :-1].flatten(), index[:-1, :].flatten()])
    target = torch.cat([index[:, 1:].flatten(), index[1:, :].flatten()])
    weight = 0.5 + torch.rand(source.numel(), generator=torch.Generator().manual_seed(seed))
    return source, target, weight


def laplacian(
    n: int, source: torch.Tensor, target: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    rows, cols = (
        torch.cat([source, target, source, target]),
        torch.cat([target, source, source, target]),
    )
    values = torch.cat([-weight, -weight, weight, weight])
    return torch.sparse_coo_tensor(torch.stack([rows, cols]), values, (n, n)).coalesce()


def positional_encodings() -> None:
    n = SIDE * SIDE
    source, target, weight = grid(SIDE)
    weight.requires_grad_()
    L = laplacian(n, source, target, weight)
    tick = time.perf_counter()
    values, encodings = se.eigsh(L, 16, which="smallest", sigma=-1e-3,
                                 generator=torch.Generator().manual_seed(0))  # fmt: skip
    forward = time.perf_counter() - tick
    G = torch.randn(n, 16, generator=torch.Generator().manual_seed(1))
    tick = time.perf_counter()
    (values.sum() + (G * (encodings @ (encodings.T @ G))).sum()).backward()  # a subspace loss
    backward = time.perf_counter() - tick
    assert weight.grad is not None
    print(f"  se.eigsh, n = {n:,}, k = 16: forward {forward:.2f} s, backward {backward:.2f} s, "
          f"edge-weight gradient finite: {bool(torch.isfinite(weight.grad).all())}")  # fmt: skip
    try:
        leaf = weight.detach().clone().requires_grad_()
        X = torch.randn(n, 16, generator=torch.Generator().manual_seed(0))
        w, _ = torch.lobpcg(laplacian(n, source, target, leaf), k=16, X=X, largest=False, niter=20)
        w.sum().backward()
        print("  torch.lobpcg: backward ran")
    except Exception as raised:  # the comparison is the point
        print(
            f"  torch.lobpcg backward: {type(raised).__name__}: {str(raised).splitlines()[0][:70]}"
        )
    print(f"  dense torch.linalg.eigh: {n * n * 8 / 2**20:,.0f} MiB for the matrix alone")


def normalized_cut() -> None:
    g = torch.Generator().manual_seed(3)
    half = 60
    points = torch.cat(
        [torch.randn(half, 2, generator=g) - 2.5, torch.randn(half, 2, generator=g) + 2.5]
    )
    affinity = torch.exp(-torch.cdist(points, points).square() / 2) * (1 - torch.eye(2 * half))
    degree = affinity.sum(1)
    L, D = torch.diag(degree) - affinity, torch.diag(degree)
    values, vectors = se.eigsh(L.to_sparse(), 2, B=D.to_sparse(), which="smallest",
                               generator=torch.Generator().manual_seed(0))  # fmt: skip
    fiedler = vectors[:, 1]
    labels = torch.cat([torch.zeros(half), torch.ones(half)])
    accuracy = float(((fiedler > 0).double() == labels).double().mean())
    accuracy = max(accuracy, 1 - accuracy)
    print(f"  se.eigsh(L, B=D), two clusters of {half}: λ₂ = {float(values[1]):.4f}, "
          f"cut accuracy {accuracy:.3f}")  # fmt: skip


def hessian_spectrum() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(64, 8), torch.randn(64, 1)
    shapes = [(16, 8), (16,), (1, 16), (1,)]
    sizes = [torch.Size(s).numel() for s in shapes]
    flat = torch.cat([torch.randn(size) * 0.3 for size in sizes])

    def loss_of(theta: torch.Tensor) -> torch.Tensor:
        W1, b1, W2, b2 = (p.view(s) for p, s in zip(theta.split(sizes), shapes))
        return ((torch.tanh(x @ W1.T + b1) @ W2.T + b2 - y) ** 2).mean()

    def hvp(V: torch.Tensor) -> torch.Tensor:
        return torch.func.vmap(lambda v: torch.func.jvp(torch.func.grad(loss_of), (flat,), (v,))[1],
                               in_dims=1, out_dims=1)(V)  # fmt: skip

    values, _ = se.eigsh(hvp, 5, n=flat.numel(), generator=torch.Generator().manual_seed(0))
    dense = torch.linalg.eigvalsh(torch.autograd.functional.hessian(loss_of, flat))[-5:]
    print(
        f"  top-5 Hessian eigenvalues ({flat.numel()} parameters) by HVPs: "
        + ", ".join(f"{v:.4f}" for v in values.tolist())
        + f"; largest difference to the dense Hessian {float((values - dense).abs().max()):.1e}"
    )


def main() -> None:
    print(f"1. Deep CCA, batch 32 < view dimension 64, top-8 correlations, {STEPS} steps:")
    deep_cca(copied_cca_loss, "copied loss (eigh eigenvectors)")
    deep_cca(stableeig_cca_loss, "se.eigh(M, B, shrinkage=0.05)")
    print("1b. Deep LDA, batch 64, 32 features, 4 classes, the top-3 generalized eigenvalues:")
    deep_lda()
    print("2. Laplacian positional encodings of a weighted grid:")
    positional_encodings()
    print("3. Normalized cut with the degree matrix as B:")
    normalized_cut()
    print("4. Hessian spectrum from Hessian-vector products:")
    hessian_spectrum()


if __name__ == "__main__":
    main()
