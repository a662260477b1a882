"""Many small symmetric matrices at memory speed: a batched Jacobi eigensolver for 2×2 and
3×3, in plain tensor code (any device, ``torch.compile``, ``torch.func``).

LAPACK decomposes a batch one matrix at a time (~1.5–3 µs per 3×3 on a CPU core), about a
hundred times what reading and writing the numbers costs. Here each entry of the batch is
one contiguous vector (structure of arrays) and every step of the cyclic Jacobi method is
an elementwise operation on all matrices at once, in cache-sized chunks:

1. scale by the largest entry (no overflow or underflow at 1e±30);
2. ``SWEEPS`` cyclic sweeps of rotations ``tan θ = sign(τ) / (|τ| + √(1 + τ²))``,
   ``τ = (a_qq - a_pp) / (2 a_pq)`` — an exact zero stays zero, so ``cI`` and exact ties are
   left alone, and Jacobi's vectors stay orthonormal at ties and near ties;
3. the vectors orthonormalized once more (Gram–Schmidt, then a cross product for 3×3) and
   the eigenvalues taken as their Rayleigh quotients on the scaled matrix; sorted.

The backward is the library's (it needs only ``(λ, V)``), so gradients are unchanged and
ties stay exact. :func:`eigh_driver` chooses the path: ``"auto"`` (this one for n <= 3 and
at least :data:`MIN_BATCH` matrices), ``"jacobi"`` or ``"lapack"``.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch

from ._validation import check_choice

__all__ = ["MIN_BATCH", "SWEEPS", "eigh_driver", "jacobi_eigh", "use_jacobi"]

SWEEPS = 5
"""Cyclic sweeps: quadratic convergence reaches float64 round-off after 4 on random,
tied, near-tied (gaps 1e-12), graded and scaled 3×3 batches (``tests/test_small.py``);
one more for margin."""

MIN_BATCH = 4096
"""Below this many matrices LAPACK's loop is faster than the ~500 elementwise operations
(``stableeig bench small --quick``: at 1,024 × 3×3 Jacobi takes 1.5× the LAPACK path's
time, at 10,000 0.65×)."""

CHUNK = 1 << 15
"""Matrices per chunk: each entry's vector (256 KiB in float64) stays in cache."""

_STATE = threading.local()


@contextlib.contextmanager
def eigh_driver(name: str) -> Iterator[None]:
    """Within the block (this thread), decompose symmetric matrices with ``name``:
    ``"auto"``, ``"jacobi"`` (2×2 and 3×3 only; larger sizes keep LAPACK) or
    ``"lapack"``. Every consumer takes it: ``eigh``, the spectral functions, the layers.

    Examples:
        >>> import torch, stableeig as se
        >>> A = torch.randn(4096, 3, 3, dtype=torch.float64)
        >>> A = A + A.mT
        >>> with se.eigh_driver("lapack"):
        ...     reference = se.logm(A @ A + torch.eye(3))
        >>> torch.allclose(se.logm(A @ A + torch.eye(3)), reference)    # "auto": Jacobi here
        True
    """
    check_choice("eigh_driver: name", name, ("auto", "jacobi", "lapack"))
    previous = getattr(_STATE, "driver", "auto")
    _STATE.driver = name
    try:
        yield
    finally:
        _STATE.driver = previous


def use_jacobi(A: torch.Tensor) -> bool:
    """Whether :func:`jacobi_eigh` decomposes ``A`` (..., n, n) under the current driver."""
    driver = getattr(_STATE, "driver", "auto")
    if driver == "lapack" or A.shape[-1] not in (2, 3):
        return False
    return driver == "jacobi" or A.numel() >= MIN_BATCH * A.shape[-1] ** 2


def jacobi_eigh(A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(w, V)`` of symmetric (..., n, n), n in {2, 3}: ascending eigenvalues, orthonormal
    eigenvectors as columns, like ``torch.linalg.eigh`` (reads ``(A + Aᵀ) / 2``)."""
    n = A.shape[-1]
    batch = A.shape[:-2]
    flat = A.reshape(-1, n, n)
    if flat.shape[0] == 0:
        return A.new_zeros(*batch, n), A.new_zeros(*batch, n, n)
    parts = [_solve(chunk) for chunk in flat.split(CHUNK)]
    w = torch.cat([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    V = torch.cat([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    return w.reshape(*batch, n), V.reshape(*batch, n, n)


def _rotation(app: torch.Tensor, aqq: torch.Tensor, apq: torch.Tensor):  # type: ignore[no-untyped-def]
    """``(c, s, t)`` of the rotation that annihilates ``apq``; ``t = 0`` where it is 0."""
    nonzero = apq != 0
    tau = (aqq - app) / torch.where(nonzero, 2 * apq, torch.ones_like(apq))
    t = torch.where(tau >= 0, 1.0, -1.0) / (tau.abs() + torch.sqrt(1 + tau * tau))
    t = torch.where(nonzero, t, torch.zeros_like(t))
    c = torch.rsqrt(1 + t * t)
    return c, t * c, t


def _solve(A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One chunk (m, n, n)."""
    n = A.shape[-1]
    scale = A.abs().amax((-2, -1)).clamp_min(torch.finfo(A.dtype).tiny)
    X = A / scale[:, None, None]
    a = {(i, j): (X[:, i, j] + X[:, j, i]) / 2 for i in range(n) for j in range(i, n)}
    original = dict(a)
    one, zero = torch.ones_like(scale), torch.zeros_like(scale)
    v = [[one if i == j else zero for j in range(n)] for i in range(n)]  # v[row][column]
    pairs = [(p, q) for p in range(n - 1) for q in range(p + 1, n)]
    for _ in range(1 if n == 2 else SWEEPS):
        for p, q in pairs:
            c, s, t = _rotation(a[p, p], a[q, q], a[p, q])
            apq = a[p, q]
            a[p, p], a[q, q], a[p, q] = a[p, p] - t * apq, a[q, q] + t * apq, zero
            for r in range(n):  # the third index: rows/columns p and q of the rest
                if r in (p, q):
                    continue
                rp, rq = (min(r, p), max(r, p)), (min(r, q), max(r, q))
                a[rp], a[rq] = c * a[rp] - s * a[rq], s * a[rp] + c * a[rq]
            for row in v:
                row[p], row[q] = c * row[p] - s * row[q], s * row[p] + c * row[q]
    columns = _orthonormal([torch.stack([v[i][j] for i in range(n)], -1) for j in range(n)])
    w = torch.stack([_rayleigh(original, u, n) for u in columns], -1)
    V = torch.stack(columns, -1)
    w, order = w.sort(-1)
    V = V.gather(-1, order[:, None, :].expand_as(V))
    return w * scale[:, None], V


def _rayleigh(a: dict[tuple[int, int], torch.Tensor], u: torch.Tensor, n: int) -> torch.Tensor:
    """``uᵀ A u`` (m,) from the upper triangle ``a`` and unit vectors ``u`` (m, n)."""
    total = torch.zeros_like(u[:, 0])
    for (i, j), value in a.items():
        total = total + (value if i == j else 2 * value) * u[:, i] * u[:, j]
    return total


def _orthonormal(columns: list[torch.Tensor]) -> list[torch.Tensor]:
    """Gram–Schmidt on (m, n) columns; the last of three as the cross product."""
    first = columns[0] / columns[0].norm(dim=-1, keepdim=True)
    second = columns[1] - (first * columns[1]).sum(-1, keepdim=True) * first
    second = second / second.norm(dim=-1, keepdim=True)
    if len(columns) == 2:
        return [first, second]
    third = torch.linalg.cross(first, second, dim=-1)
    third = third * torch.where((third * columns[2]).sum(-1, keepdim=True) < 0, -1.0, 1.0)
    return [first, second, third]
