"""Many small symmetric matrices at memory speed: a batched Jacobi eigensolver for 2×2, 3×3
and 4×4 (and an SVD for 2×2 and 3×3), in plain tensor code (any device, ``torch.compile``,
``torch.func``).

LAPACK decomposes a batch one matrix at a time (~1.5–3 µs per 3×3 on a CPU core), about a
hundred times what reading and writing the numbers costs. Here each entry of the batch is
one contiguous vector (structure of arrays) and every step of the cyclic Jacobi method is
an elementwise operation on all matrices at once, in cache-sized chunks:

1. scale by the largest entry (no overflow or underflow at 1e±30);
2. at most ``SWEEPS[n]`` cyclic sweeps of rotations ``tan θ = sign(τ) / (|τ| + √(1 + τ²))``,
   ``τ = (a_qq - a_pp) / (2 a_pq)`` — an exact zero stays zero, so ``cI`` and exact ties are
   left alone, and Jacobi's vectors stay orthonormal at ties and near ties; eager code stops
   once every off-diagonal entry is below eps;
3. the eigenvalues read from the rotated diagonal (within n ulp of the largest against
   40-digit mpmath: ``tests/test_small.py``), the vectors orthonormalized once more
   (Gram–Schmidt, the last of three as a cross product); sorted.

Sizes: :data:`SIZES`. From 5×5 on LAPACK's loop wins (``stableeig bench small``'s crossover
table: the sweeps alone take 0.75× LAPACK's time at 5×5, 1.6× at 8×8, before the rest).

The backward is the library's (it needs only ``(λ, V)``), so gradients are unchanged and
ties stay exact. :func:`eigh_driver` chooses the path: ``"auto"`` (this one for the
:data:`SIZES` and at least :data:`MIN_BATCH` matrices), ``"jacobi"`` or ``"lapack"``.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Optional

import torch

from ._validation import _under_vmap, check_choice, readable
from .exceptions import ArgumentError

__all__ = [
    "MIN_BATCH", "SIZES", "SVD_SIZES", "SWEEPS", "eigh_driver", "jacobi_eigh", "jacobi_svd",
    "use_jacobi",
]  # fmt: skip

SIZES = (2, 3, 4)
"""The sizes ``n`` the batched eigensolver takes."""

SVD_SIZES = (2, 3)
"""The square sizes the batched SVD takes."""

SWEEPS = {2: 1, 3: 5, 4: 7}
"""The most cyclic sweeps per size (one rotation is exact for 2×2). Quadratic convergence
reaches float64 round-off (every off-diagonal entry of 10⁵ random or near-tied matrices
below eps) after 4 sweeps at 3×3 and 6 at 4×4; one more for margin. Eager code stops as
soon as that holds; compiled and vmapped code runs them all."""

MIN_BATCH = 4096
"""Below this many matrices LAPACK's loop is faster than the ~500 elementwise operations
(``stableeig bench small --quick``: at 1,024 × 3×3 Jacobi takes 1.5× the LAPACK path's
time, at 10,000 0.65×)."""

CHUNK = 1 << 15
"""Matrices per chunk in eager CPU code: each entry's vector (256 KiB in float64) stays in
cache. Other devices, and compiled code, take the batch whole."""

_STATE = threading.local()


@contextlib.contextmanager
def eigh_driver(name: str) -> Iterator[None]:
    """Within the block (this thread), decompose symmetric matrices with ``name``:
    ``"auto"``, ``"jacobi"`` (the :data:`SIZES` only; larger sizes keep LAPACK) or
    ``"lapack"``. Every consumer takes it: ``eigh``, the spectral functions, the SVD family,
    the layers. While ``torch.compile`` traces, ``"auto"`` keeps LAPACK: inductor needs two
    to three minutes (empty cache) to compile the unrolled sweeps, for a forward 1.7× faster
    than eager Jacobi (``benchmarks/small_compile.py``); ``"jacobi"`` opts in. The driver is
    read when the graph is traced.

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


def use_jacobi(A: torch.Tensor, sizes: tuple[int, ...] = SIZES) -> bool:
    """Whether the batched solver (of ``sizes``) takes ``A`` (..., n, n) under the current
    driver."""
    driver = getattr(_STATE, "driver", "auto")
    if driver == "lapack" or A.shape[-1] not in sizes:
        return False
    if driver == "auto" and torch.compiler.is_compiling():
        return False  # inductor takes minutes over the unrolled sweeps: see eigh_driver
    return driver == "jacobi" or A.numel() >= MIN_BATCH * A.shape[-1] ** 2


def jacobi_eigh(A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(w, V)`` of symmetric (..., n, n), n in :data:`SIZES`: ascending eigenvalues, orthonormal
    eigenvectors as columns, like ``torch.linalg.eigh`` (reads ``(A + Aᵀ) / 2``). The forward
    only: for gradients, ``se.eigh`` (or any consumer) under ``eigh_driver("jacobi")``."""
    _no_gradient("jacobi_eigh", A)
    n = A.shape[-1]
    batch = A.shape[:-2]
    flat = A.reshape(-1, n, n)
    if flat.shape[0] == 0:
        return A.new_zeros(*batch, n), A.new_zeros(*batch, n, n)
    parts = [_solve(chunk) for chunk in _chunks(flat)]
    w = torch.cat([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    V = torch.cat([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    return w.reshape(*batch, n), V.reshape(*batch, n, n)


def _no_gradient(name: str, A: torch.Tensor) -> None:
    """Refuse to record the sweeps for autograd (their derivative is NaN at ties)."""
    if A.requires_grad and torch.is_grad_enabled():
        raise ArgumentError(
            f"{name}: A: expected no gradient (the sweeps are not differentiated); use "
            "se.eigh / se.svd under se.eigh_driver('jacobi') for the exact backward"
        )


def _chunks(flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(m, n, n) in cache-sized pieces in eager CPU code; whole on other devices and while
    compiling (inductor fuses the elementwise steps, and one graph per chunk would multiply
    the compile time by the number of chunks)."""
    eager_cpu = flat.device.type == "cpu" and not torch.compiler.is_compiling()
    return flat.split(CHUNK) if eager_cpu else (flat,)


def _rotation(app: torch.Tensor, aqq: torch.Tensor, apq: torch.Tensor):  # type: ignore[no-untyped-def]
    """``(c, s, t)`` of the rotation that annihilates ``apq``: ``t = tan θ`` the smaller root
    of ``t² + 2τt - 1 = 0``, ``τ = (a_qq - a_pp) / (2 a_pq)``, written without dividing by
    ``a_pq``, so ``t = 0`` exactly where ``a_pq = 0`` (ties and ``cI`` are left alone)."""
    difference = aqq - app
    twice = 2 * apq
    twice = torch.where(difference < 0, -twice, twice)  # 2 a_pq · sign(a_qq - a_pp)
    root = torch.sqrt(difference * difference + twice * twice)
    t = twice / (difference.abs() + root).clamp_min(torch.finfo(apq.dtype).tiny)
    c = torch.rsqrt(1 + t * t)
    return c, t * c, t


Vector = list[torch.Tensor]
"""The ``n`` components of one vector per matrix, each a contiguous (m,) tensor."""


def _entries(A: torch.Tensor) -> tuple[list[Vector], torch.Tensor]:
    """``(x, scale)``: ``x[i][j]`` (m,) the entries of (m, n, n) ``A`` divided by its largest
    magnitude ``scale`` (m,), so nothing overflows or underflows at 1e±30."""
    T = A.permute(1, 2, 0).contiguous()
    scale = T.abs().amax((0, 1)).clamp_min(torch.finfo(A.dtype).tiny)
    T = T / scale
    return [list(row.unbind(0)) for row in T.unbind(0)], scale


def _matrix(columns: list[Vector]) -> torch.Tensor:
    """(m, n, n) with ``[:, i, j] = columns[j][i]``."""
    return torch.stack([torch.stack(column, -1) for column in columns], -1)


def _dot(u: Vector, v: Vector) -> torch.Tensor:
    total = u[0] * v[0]
    for a, b in zip(u[1:], v[1:]):
        total = total + a * b
    return total


def _cross(u: Vector, v: Vector) -> Vector:
    return [u[1] * v[2] - u[2] * v[1], u[2] * v[0] - u[0] * v[2], u[0] * v[1] - u[1] * v[0]]


def _along(u: Vector, c: torch.Tensor, v: Vector) -> Vector:
    """``u - c v``."""
    return [a - c * b for a, b in zip(u, v)]


def _unit(u: Vector) -> Vector:
    inverse = torch.rsqrt(_dot(u, u))
    return [a * inverse for a in u]


def _solve(A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One chunk (m, n, n)."""
    n = A.shape[-1]
    x, scale = _entries(A)
    a = {(i, j): (x[i][j] + x[j][i]) / 2 for i in range(n) for j in range(i, n)}
    columns = _orthonormal(_jacobi_columns(a, n))
    w = torch.stack([a[i, i] for i in range(n)], -1)  # the rotated diagonal
    w, V = _sorted(w * scale[:, None], _matrix(columns), False)
    return w, V


def _jacobi_columns(
    a: dict[tuple[int, int], torch.Tensor], n: int, sweeps: Optional[int] = None
) -> list[Vector]:
    """The eigenvector columns of the symmetric matrices whose upper triangle is ``a``
    (overwritten), by at most ``sweeps`` (default ``SWEEPS[n]``) cyclic Jacobi sweeps;
    unsorted."""
    one, zero = torch.ones_like(a[0, 0]), torch.zeros_like(a[0, 0])
    v = [[one if i == j else zero for j in range(n)] for i in range(n)]  # v[row][column]
    early = _may_stop_early(one)
    for sweep in range(SWEEPS[n] if sweeps is None else sweeps):
        if early and sweep >= 3 and _converged(a, n):
            break
        for p, q in _PAIRS[n]:
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
    return [[v[i][j] for i in range(n)] for j in range(n)]


def _may_stop_early(x: torch.Tensor) -> bool:
    """Whether the sweeps may end on a host-side test: in eager code (not while compiling,
    not under ``torch.func.vmap``, on real values)."""
    return not torch.compiler.is_compiling() and not _under_vmap() and readable(x)


def _converged(a: dict[tuple[int, int], torch.Tensor], n: int) -> bool:
    """Every off-diagonal entry of the scaled matrices (largest entry 1) at most eps: the
    rest of the sweeps would move the result by less than its round-off."""
    largest = torch.stack([a[p, q].abs() for p, q in _PAIRS[n]]).amax()
    return bool(largest <= torch.finfo(largest.dtype).eps)


_PAIRS = {n: [(p, q) for p in range(n - 1) for q in range(p + 1, n)] for n in range(2, 33)}
"""The cyclic order of the rotations; sizes above those of :data:`SIZES` only for
``stableeig bench small``'s crossover table (the sweeps alone, against LAPACK)."""


def _sorted(
    values: torch.Tensor, vectors: torch.Tensor, descending: bool, *others: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """``values`` (m, n) sorted, and the columns of ``vectors`` and ``others`` (m, n, n)
    permuted alike."""
    values, order = values.sort(-1, descending=descending)
    index = order[:, None, :].expand_as(vectors)
    return (values, vectors.gather(-1, index), *(M.gather(-1, index) for M in others))


def jacobi_svd(A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(U, S, Vh)`` of square (..., n, n), n in :data:`SVD_SIZES`, like ``torch.linalg.svd``:
    descending singular values, orthonormal U and V (also at ranks below n).

    V from Jacobi on ``XᵀX`` (X = A scaled by its largest entry); one one-sided Jacobi sweep
    on the columns of ``X V`` then takes each rotation from the columns themselves, so small
    singular values keep LAPACK's absolute accuracy (eps · σ₁) rather than the normal
    equations' eps · σ₁² / σᵢ; ``U`` normalizes those columns (the last as a cross product,
    its sign giving σₙ >= 0). The forward only, like :func:`jacobi_eigh`."""
    _no_gradient("jacobi_svd", A)
    n = A.shape[-1]
    batch = A.shape[:-2]
    flat = A.reshape(-1, n, n)
    if flat.shape[0] == 0:
        return A.new_zeros(*batch, n, n), A.new_zeros(*batch, n), A.new_zeros(*batch, n, n)
    parts = [_singular(chunk) for chunk in _chunks(flat)]
    U, S, V = (torch.cat(p) if len(parts) > 1 else p[0] for p in zip(*parts))
    return U.reshape(*batch, n, n), S.reshape(*batch, n), V.mT.reshape(*batch, n, n)


def _singular(A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One chunk (m, n, n): ``(U, S, V)``."""
    n = A.shape[-1]
    x, scale = _entries(A)
    gram = {(i, j): _dot([r[i] for r in x], [r[j] for r in x]) for i in range(n)
            for j in range(i, n)}  # fmt: skip
    V = _orthonormal(_jacobi_columns(gram, n))
    B = [[_dot(row, v) for row in x] for v in V]  # the columns X v
    for p, q in _PAIRS[n]:  # one-sided Jacobi: rotate column pairs until orthogonal
        c, s, _ = _rotation(_dot(B[p], B[p]), _dot(B[q], B[q]), _dot(B[p], B[q]))
        B[p], B[q] = (
            [c * a - s * b for a, b in zip(B[p], B[q])],
            [s * a + c * b for a, b in zip(B[p], B[q])],
        )
        V[p], V[q] = (
            [c * a - s * b for a, b in zip(V[p], V[q])],
            [s * a + c * b for a, b in zip(V[p], V[q])],
        )
    norms = torch.stack([_dot(b, b) for b in B], -1)
    _, columns, right = _sorted(norms, _matrix(B), True, _matrix(V))
    B = [list(column.unbind(0)) for column in columns.permute(2, 1, 0).contiguous().unbind(0)]
    U = _left_vectors(B)
    S = torch.stack([_dot(u, b) for u, b in zip(U, B)], -1)  # >= 0 but the last's sign
    sign = torch.where(S[:, -1] < 0, -1.0, 1.0).to(S.dtype)
    U[-1] = [sign * a for a in U[-1]]
    S = torch.cat([S[:, :-1], S[:, -1:] * sign[:, None]], -1)
    S, U_sorted, V_sorted = _sorted(S * scale[:, None], _matrix(U), True, right)
    return U_sorted, S, V_sorted


def _left_vectors(B: list[Vector]) -> list[Vector]:
    """Orthonormal ``u₁ … uₙ`` from the nearly orthogonal columns ``B`` sorted by norm:
    ``bᵢ`` normalized after Gram–Schmidt while it has a direction (a norm above √tiny),
    else any unit vector orthogonal to the previous; the last as a cross product (n = 3)
    or the rotation by 90° (n = 2)."""
    n = len(B[0])
    floor = torch.finfo(B[0][0].dtype).tiny ** 0.5
    one, zero = torch.ones_like(B[0][0]), torch.zeros_like(B[0][0])
    first = _unit_or(B[0], [one] + [zero] * (n - 1), floor)
    if n == 2:
        return [first, [-first[1], first[0]]]
    # a unit vector orthogonal to ``first``: its cross product with the axis it leans on least
    size = [a.abs() for a in first]
    on_0 = (size[0] <= size[1]) & (size[0] <= size[2])
    on_1 = ~on_0 & (size[1] <= size[2])
    least = [on_0.to(one.dtype), on_1.to(one.dtype), (~on_0 & ~on_1).to(one.dtype)]
    fallback = _unit(_cross(first, least))
    second = _unit_or(_along(B[1], _dot(first, B[1]), first), fallback, floor)
    second = _unit(_along(second, _dot(first, second), first))  # twice is enough
    return [first, second, _cross(first, second)]


def _unit_or(x: Vector, fallback: Vector, floor: float) -> Vector:
    """``x / ‖x‖`` where ``‖x‖ > floor``, else ``fallback``."""
    norm = torch.sqrt(_dot(x, x))
    kept, inverse = norm > floor, 1 / norm.clamp_min(floor)
    return [torch.where(kept, a * inverse, b) for a, b in zip(x, fallback)]


def _orthonormal(columns: list[Vector]) -> list[Vector]:
    """Gram–Schmidt on the nearly orthonormal columns; the last of three as the cross
    product (signed like the column it replaces)."""
    if len(columns) == 3:
        first = _unit(columns[0])
        second = _unit(_along(columns[1], _dot(first, columns[1]), first))
        third = _cross(first, second)
        sign = torch.where(_dot(third, columns[2]) < 0, -1.0, 1.0).to(first[0].dtype)
        return [first, second, [sign * a for a in third]]
    basis: list[Vector] = []
    for column in columns:
        for previous in basis:
            column = _along(column, _dot(previous, column), previous)
        basis.append(_unit(column))
    return basis
