"""``stableeig.eigsh``: the ``k`` largest or smallest eigenpairs of a dense, sparse or
matrix-free symmetric operator (optionally ``A v = λ B v``), with gradients that never
differentiate the iterations.

Forward: a dense tensor is decomposed whole (``torch.linalg.eigh``, batched; the path for
``torch.compile`` and ``torch.func``); a ``torch.sparse`` matrix or a callable
``X (n, p) -> A X`` goes to ARPACK's implicitly restarted Lanczos (``scipy.sparse.linalg.eigsh``,
the maintained library for this on a CPU: shift-free, reorthogonalized, deterministic
under the start vector, which comes from ``generator`` or a warm start ``v0``).

Backward, for ``A V = B V Λ`` with ``Vᵀ B V = I`` (``B = I`` without ``B``): with
``K = Vᵀ ∂L/∂V`` the loss moves by ``Σᵢ ⟨wᵢ, (dA - λᵢ dB) vᵢ⟩ - ½ Σᵢ Kᵢᵢ vᵢᵀ dB vᵢ``, where

    wᵢ = (∂L/∂λᵢ) vᵢ + Σⱼ≠ᵢ Kⱼᵢ / (λᵢ - λⱼ) vⱼ  +  yᵢ,    (λᵢ B - A) yᵢ = (I - B V Vᵀ) gᵢ,
    Vᵀ B yᵢ = 0,

the first sum over the computed block (the library's eigenvector rule; a tie inside the
block is exact for a loss that does not depend on the basis there), ``yᵢ`` the part outside
it: from the full spectrum for a dense tensor, else by projected conjugate gradients with
matvecs only (``λᵢ B - A`` is definite on the complement when there is a gap at the cut).
The gradient reaches ``A`` (and ``B``) through one product ``A V`` recorded in the forward,
so a sparse ``A`` gets a gradient on its pattern (memory O(nnz + n k)) and a callable
gets one for whatever parameters it holds (a Hessian-vector product's network).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

import torch

from . import _validation as checks
from ._autograd import Function, decompose, prepare_symmetric
from ._precision import autocast_off, working_dtype
from .eigh import EighResult
from .exceptions import (
    ArgumentError,
    DTypeError,
    NonFiniteError,
    NotDifferentiableError,
    NotSymmetricError,
    ShapeError,
)
from .generalized import reduce_generalized
from .rules import EigenvectorRule, Rule, resolve

__all__ = ["eigsh"]

Operator = Union[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]


@dataclass
class _Problem:
    """What the backward needs besides the saved tensors."""

    matvec: Callable[[torch.Tensor], torch.Tensor]  # A X, no graph
    bmatvec: Optional[Callable[[torch.Tensor], torch.Tensor]]  # B X, or None for B = I
    largest: bool
    rule: EigenvectorRule
    tol: float
    maxiter: int
    outside: Optional[tuple[torch.Tensor, torch.Tensor]]  # dense: the other eigenpairs
    preconditioner: Optional[Callable[[torch.Tensor], torch.Tensor]] = None  # ± (A - σB)⁻¹


def eigsh(
    A: Operator,
    k: int,
    *,
    B: Optional[torch.Tensor] = None,
    which: str = "largest",
    n: Optional[int] = None,
    v0: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
    tol: Optional[float] = None,
    maxiter: Optional[int] = None,
    sigma: Optional[float] = None,
    backward: Union[str, Rule] = "analytic",
    compute_dtype: Optional[torch.dtype] = None,
) -> EighResult:
    """The ``k`` largest (or smallest) eigenpairs of symmetric ``A``, or of ``A v = λ B v``.

    Args:
        A: a dense symmetric tensor (..., n, n), a ``torch.sparse`` (n, n) matrix (COO or
            CSR), or a callable taking (n, p) and returning ``A X`` (n, p) — a
            Hessian-vector product, say. Gradients flow to the tensor, to the sparse
            values, or to the tensors the callable uses.
        k: how many, 1 <= k < n.
        B: symmetric positive definite, dense (n, n) or sparse. Default: None (``B = I``).
        which: ``"largest"`` or ``"smallest"``. Default: ``"largest"``.
        n: the size, for a callable (else read from ``v0``).
        v0: a warm start, (n,) or the previous eigenvectors (n, k) (iterative forward).
        generator: for the random start vector (deterministic results). Default: None.
        tol: the iterations' relative tolerance. Default: None (machine precision for the
            eigenpairs; a residual of 1e-10, or 1e3 · eps in float32, for the backward's
            solves).
        maxiter: iterations for the forward and for each backward solve. Default: None
            (ARPACK's ``10 n``; ``10 n`` for the solves).
        sigma: a sparse ``A`` only: shift-invert about ``sigma`` (a sparse LU of
            ``A - σ B``), below the smallest eigenvalue for ``"smallest"`` (above the largest
            for ``"largest"``): the same eigenpairs in far fewer iterations on meshes and
            grids (a 10⁵-node grid Laplacian: 2.8 s instead of 71–79 s in ``stableeig
            bench eigsh``), and the LU preconditions the backward's solves. Fill-in makes it
            costly on expander-like graphs. Default: None (no factorization).
        backward: the eigenvector rule inside the computed block. Default: ``"analytic"``
            (exact; a tie the loss depends on raises).
        compute_dtype: least working precision. Default: None (float64).

    Returns:
        ``EighResult(eigenvalues (..., k) ascending, eigenvectors (..., n, k))``,
        ``Vᵀ B V = I``.

    Raises:
        ShapeError, DTypeError, NonFiniteError, ArgumentError: bad operators (named ``A`` or
            ``B``, a matvec of the wrong shape or with NaN included), ``k >= n``.
        NotDifferentiableError: in the backward, no gap at the cut (``λ_k = λ_{k+1}``: the
            subspace is not unique) where eigenvectors are differentiated.

    Examples:
        >>> import torch, stableeig as se
        >>> A = torch.diag(torch.arange(1.0, 7.0, dtype=torch.float64))
        >>> se.eigsh(A, 2).eigenvalues.tolist()
        [5.0, 6.0]
        >>> w, V = se.eigsh(lambda X: A @ X, 2, n=6, which="smallest")   # matrix-free
        >>> [round(v, 12) for v in w.tolist()]
        [1.0, 2.0]
    """
    checks.check_choice("eigsh: which", which, ("largest", "smallest"))
    rule = resolve(backward, kinds=("eigenvector",))
    assert isinstance(rule, EigenvectorRule)
    if isinstance(A, torch.Tensor) and A.layout == torch.strided:
        return _dense(A, k, B, which == "largest", rule, compute_dtype)
    return _iterative(A, k, B, which == "largest", n, v0, generator, tol, maxiter, sigma, rule,
                      compute_dtype)  # fmt: skip


# ---------------------------------------------------------------- the dense path


def _check_k(k: object, n: int) -> int:
    integer = checks.as_integer(k)
    if integer is None or not 1 <= integer < n:
        raise ArgumentError(
            f"eigsh: k: expected an integer in [1, {n - 1}] for n = {n} (got {k!r}); all "
            "eigenpairs: se.eigh"
        )
    return integer


def _dense(
    A: torch.Tensor, k: int, B: Optional[torch.Tensor], largest: bool, rule: EigenvectorRule,
    compute_dtype: Optional[torch.dtype],
) -> EighResult:  # fmt: skip
    n = checks.check_square_matrix("eigsh: A", A).shape[-1]
    k = _check_k(k, n)
    work_B: Optional[torch.Tensor] = None
    if B is None:
        work = prepare_symmetric("eigsh: A", A, compute_dtype)
        L = None
        C = work.detach()
    else:
        if not isinstance(B, torch.Tensor) or B.layout != torch.strided:
            raise ArgumentError("eigsh: B: expected a dense tensor with a dense A")
        C, L, work, work_B = reduce_generalized(A, B, compute_dtype, True, 0.0, "eigsh")
        C = C.detach()
        L = L.detach()
    with autocast_off(C.device):
        w, W = decompose(C)
        V_all = W if L is None else torch.linalg.solve_triangular(L.mT, W, upper=True)
    checks.check_eigenvalues_finite("eigsh: A", w)
    block = slice(n - k, n) if largest else slice(0, k)
    rest = slice(0, n - k) if largest else slice(k, n)
    values, vectors = w[..., block], V_all[..., :, block]
    edge = (w[..., n - k - 1], w[..., n - k]) if largest else (w[..., k - 1], w[..., k])
    scale = w.abs().amax(-1).clamp_min(torch.finfo(w.dtype).tiny)
    defined = (edge[1] - edge[0]) > n * torch.finfo(w.dtype).eps * scale
    problem = _Problem(
        matvec=lambda X: X, bmatvec=None, largest=largest, rule=rule, tol=0.0, maxiter=0,
        outside=(w[..., rest], V_all[..., :, rest]),
    )  # fmt: skip
    with autocast_off(C.device):
        Y_A = work @ vectors
        Y_B = torch.zeros_like(vectors[..., :0, :]) if work_B is None else work_B @ vectors
        out_values, out_vectors = _Partial.apply(Y_A, Y_B, values, vectors, defined, problem)
    dtype = A.dtype if B is None else torch.promote_types(A.dtype, B.dtype)
    return _rounded(out_values, out_vectors, dtype)


# ---------------------------------------------------------------- sparse and matrix-free


def _check_sparse(name: str, M: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """The coalesced COO form of a square, finite, symmetric sparse ``M``, and its scipy CSR
    copy (float64, detached) for ARPACK and the LU."""
    import scipy.sparse

    if M.layout not in (torch.sparse_coo, torch.sparse_csr):
        raise ShapeError(f"{name}: expected a dense, sparse COO or CSR tensor (got {M.layout})")
    if M.dtype not in checks.FLOATING_DTYPES:
        raise DTypeError(f"{name}: expected a real floating dtype (got {M.dtype})")
    if M.ndim != 2 or M.shape[0] != M.shape[1]:
        raise ShapeError(f"{name}: expected a square (n, n) sparse matrix (got {tuple(M.shape)})")
    coo = M.to_sparse_coo().coalesce() if M.layout != torch.sparse_coo else M.coalesce()
    values = coo.values().detach()
    if not bool(torch.isfinite(values).all()):
        raise NonFiniteError(f"{name}: expected finite entries (got NaN/Inf among its values)")
    indices = coo.indices().cpu().numpy()
    copy = scipy.sparse.csr_matrix(
        (values.cpu().double().numpy(), (indices[0], indices[1])), shape=tuple(coo.shape)
    )
    asymmetry = float(abs(copy - copy.T).max()) if copy.nnz else 0.0
    scale = float(values.abs().max()) if values.numel() else 0.0
    if asymmetry > checks.symmetry_tolerance(M.dtype) * scale:
        raise NotSymmetricError(
            f"{name}: expected a symmetric matrix (got max|A - Aᵀ| = {asymmetry:.3g} with "
            f"max|A| = {scale:.3g})"
        )
    return coo, copy


def _checked_matvec(
    name: str, apply: Callable[[torch.Tensor], torch.Tensor], n: int
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``apply`` with its result checked: a tensor of the block's shape, finite."""

    def matvec(X: torch.Tensor) -> torch.Tensor:
        Y = apply(X)
        if not isinstance(Y, torch.Tensor) or Y.shape != X.shape:
            got = tuple(Y.shape) if isinstance(Y, torch.Tensor) else type(Y).__name__
            raise ShapeError(
                f"{name}: expected the matvec to return shape {tuple(X.shape)} for an input "
                f"of that shape (got {got})"
            )
        if not bool(torch.isfinite(Y).all()):
            raise NonFiniteError(f"{name}: expected finite matvec results (got NaN/Inf)")
        return Y

    return matvec


def _iterative(
    A: Operator, k: int, B: Optional[torch.Tensor], largest: bool, n: Optional[int],
    v0: Optional[torch.Tensor], generator: Optional[torch.Generator], tol: Optional[float],
    maxiter: Optional[int], sigma: Optional[float], rule: EigenvectorRule,
    compute_dtype: Optional[torch.dtype],
) -> EighResult:  # fmt: skip
    try:
        import scipy.sparse.linalg as sparse_linalg
    except ImportError as missing:  # pragma: no cover - scipy is in the dev and bench extras
        raise ArgumentError(
            "eigsh: A: a sparse or matrix-free operator needs scipy (pip install scipy)"
        ) from missing
    if isinstance(A, torch.Tensor):
        coo, scipy_A = _check_sparse("eigsh: A", A)
        size, device, dtype = coo.shape[0], coo.device, coo.dtype
        work = working_dtype(dtype, compute_dtype)
        A_work = coo.to(work)
        product: Callable[[torch.Tensor], torch.Tensor] = lambda X: torch.sparse.mm(A_work, X)  # noqa: E731
        recorded = lambda X: _sparse_product(A_work, X)  # noqa: E731
    elif callable(A):
        if n is None and v0 is None:
            raise ArgumentError("eigsh: n: expected the size of a callable A (or v0)")
        size = int(n if n is not None else v0.shape[0])  # type: ignore[union-attr]
        dtype = v0.dtype if v0 is not None else torch.float64
        device = v0.device if v0 is not None else torch.device("cpu")
        work = working_dtype(dtype, compute_dtype)
        product = _checked_matvec("eigsh: A", A, size)
        recorded = product
        scipy_A = None
        if sigma is not None:
            raise ArgumentError("eigsh: sigma: expected a sparse A to factorize (got a callable)")
    else:
        raise ShapeError(f"eigsh: A: expected a tensor or a callable (got {type(A).__name__})")
    k = _check_k(k, size)
    bproduct: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
    scipy_B: object = None
    if B is not None:
        if not isinstance(B, torch.Tensor):
            raise ShapeError(f"eigsh: B: expected a tensor (got {type(B).__name__})")
        if B.layout == torch.strided:
            B_work = prepare_symmetric("eigsh: B", checks.check_square_matrix("eigsh: B", B),
                                       work)  # fmt: skip
            scipy_B = B_work.detach().cpu().double().numpy()
        else:
            B_coo, scipy_B = _check_sparse("eigsh: B", B)
            B_work = B_coo.to(work)
        if B_work.shape[-1] != size:
            raise ShapeError(f"eigsh: B: expected ({size}, {size}) (got {tuple(B.shape)})")
        dense_B = B.layout == torch.strided
        bproduct = (lambda X: B_work @ X) if dense_B else (lambda X: torch.sparse.mm(B_work, X))
        brecorded = (lambda X: B_work @ X) if dense_B else (lambda X: _sparse_product(B_work, X))
    start = _start_vector(size, v0, generator)

    def on_host(X):  # type: ignore[no-untyped-def]
        with torch.no_grad():
            block = torch.from_numpy(X).to(device=device, dtype=work)
            block = block[:, None] if block.ndim == 1 else block
            return product(block).double().cpu().numpy()

    operator = scipy_A if scipy_A is not None else sparse_linalg.LinearOperator(
        (size, size), matvec=on_host, matmat=on_host, dtype="float64"
    )  # fmt: skip
    count = min(k + 1, size - 1)  # one more: the gap at the cut
    factor = None
    if sigma is not None:
        checks.check_finite("eigsh: sigma", torch.tensor(float(sigma)))
        mass: Any = scipy_B if scipy_B is not None else _identity(size)
        shift: Any = sigma * mass
        shifted: Any = scipy_A - shift
        factor = sparse_linalg.splu(shifted.tocsc())
    try:
        w_np, V_np = sparse_linalg.eigsh(
            operator, k=count, M=scipy_B, sigma=sigma,
            which=("LA" if largest else "SA") if sigma is None else "LM",
            OPinv=None if factor is None else sparse_linalg.LinearOperator(
                (size, size), matvec=factor.solve, dtype="float64"),
            v0=start, tol=0.0 if tol is None else tol, maxiter=maxiter,
        )  # fmt: skip
    except sparse_linalg.ArpackNoConvergence as failed:
        raise ArgumentError(
            f"eigsh: maxiter: expected enough iterations (got {failed.eigenvalues.size} of "
            f"{count} eigenpairs converged: the k = {k} asked for and one more, to check the gap "
            "at the cut); raise maxiter or tol"
        ) from None
    w_all = torch.from_numpy(w_np).to(device=device, dtype=work)
    V_all = torch.from_numpy(V_np).to(device=device, dtype=work)
    order = torch.argsort(w_all)
    w_all, V_all = w_all[order], V_all[:, order]
    if largest:
        values, vectors = w_all[count - k :], V_all[:, count - k :]
        neighbour = w_all[0] if count > k else None
    else:
        values, vectors = w_all[:k], V_all[:, :k]
        neighbour = w_all[-1] if count > k else None
    scale = float(w_all.abs().max().clamp_min(torch.finfo(work).tiny))
    edge = values[0] if largest else values[-1]
    gap = abs(float(edge - neighbour)) if neighbour is not None else float("inf")
    problem = _Problem(
        matvec=lambda X: product(X).detach(),
        bmatvec=None if bproduct is None else (lambda X: bproduct(X).detach()),
        largest=largest, rule=rule,
        tol=_solve_tolerance(tol, work),
        maxiter=10 * size if maxiter is None else maxiter, outside=None,
        preconditioner=None if factor is None else _lu_preconditioner(factor, largest, work),
    )  # fmt: skip
    defined = torch.tensor(gap > size * torch.finfo(work).eps * scale, device=device)
    Y_A = recorded(vectors)  # the one product through which gradients reach A
    Y_B = brecorded(vectors) if bproduct is not None else torch.zeros_like(vectors[:0])
    out_values, out_vectors = _Partial.apply(Y_A, Y_B, values, vectors, defined, problem)
    result = dtype if B is None else torch.promote_types(dtype, B.dtype)
    return _rounded(out_values, out_vectors, result)


def _rounded(values: torch.Tensor, vectors: torch.Tensor, dtype: torch.dtype) -> EighResult:
    return EighResult(
        checks.rounded_checked("eigsh", "the eigenvalues", values, dtype),
        checks.rounded_checked("eigsh", "the eigenvectors", vectors, dtype),
    )


def _solve_tolerance(tol: Optional[float], dtype: torch.dtype) -> float:
    eps = torch.finfo(dtype).eps
    return max(1e3 * eps, 1e-10) if tol is None else max(tol, eps)


def _sparse_product(coo: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """``A X`` for a coalesced COO ``A`` by gathering and scattering its nonzeros: its
    gradient to the values is ``(W[rows] * X[cols]).sum(-1)``, O(nnz · k) (``torch.sparse.mm``'s
    backward forms the dense n × n product)."""
    rows, cols = coo.indices()
    terms = coo.values()[:, None] * X[cols]
    return torch.zeros_like(X).index_add(0, rows, terms)


def _identity(size: int) -> object:
    import scipy.sparse

    return scipy.sparse.identity(size, format="csr")


def _lu_preconditioner(
    factor: object, largest: bool, dtype: torch.dtype
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``R -> ∓(A - σB)⁻¹ R``, definite with the sign of the backward's operator."""
    sign = -1.0 if largest else 1.0

    def apply(R: torch.Tensor) -> torch.Tensor:
        solved = factor.solve(R.detach().double().cpu().numpy())  # type: ignore[attr-defined]
        return sign * torch.from_numpy(solved).to(device=R.device, dtype=dtype)

    return apply


def _start_vector(
    size: int, v0: Optional[torch.Tensor], generator: Optional[torch.Generator]
) -> object:
    """ARPACK's start vector (numpy): the warm start's columns summed, or seeded noise."""
    if v0 is not None:
        if not isinstance(v0, torch.Tensor) or v0.shape[0] != size or v0.ndim > 2:
            got = tuple(v0.shape) if isinstance(v0, torch.Tensor) else type(v0).__name__
            raise ShapeError(f"eigsh: v0: expected ({size},) or ({size}, k) (got {got})")
        checks.check_finite("eigsh: v0", v0)
        start = v0.detach().double().cpu()
        start = start.sum(-1) if start.ndim == 2 else start
        if float(start.norm()) > 0:
            return start.numpy()
    return torch.randn(size, generator=generator, dtype=torch.float64).numpy()


# ---------------------------------------------------------------- the backward


_NO_GAP = (
    "eigsh backward: expected a gap at the cut, λ_k ≠ λ_{k+1} (got them equal within "
    "round-off: the subspace of the k eigenvectors is not unique); differentiate the "
    "eigenvalues only, or change k"
)


_BASIS = (
    "eigsh backward: expected a loss that does not depend on the basis of repeated "
    "eigenvalues inside the block (got one that does); use a bounded rule (backward='clip') "
    "or a function of the subspace"
)


class _Partial(Function):
    """Identity on ``(values, vectors)``; the backward returns the gradients of the recorded
    products ``Y_A = A V`` and ``Y_B = B V`` (the module docstring's ``wᵢ``)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(
        Y_A: torch.Tensor, Y_B: torch.Tensor, values: torch.Tensor, vectors: torch.Tensor,
        defined: torch.Tensor, problem: _Problem,
    ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        return values.clone(), vectors.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):  # type: ignore[no-untyped-def]
        _, Y_B, values, vectors, defined, ctx.problem = inputs
        ctx.generalized = Y_B.shape[-2] != 0
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(values, vectors, defined)

    @staticmethod
    def backward(ctx, grad_values, grad_vectors):  # type: ignore[no-untyped-def]
        values, V, defined = ctx.saved_tensors
        problem: _Problem = ctx.problem
        gw = torch.zeros_like(values) if grad_values is None else grad_values
        W_A = V * gw[..., None, :]
        W_B = -W_A * values[..., None, :]
        if grad_vectors is not None:
            if checks.in_graph():
                checks.assert_in_graph(defined.all(), _NO_GAP)
            elif checks.host_checks_enabled(defined) and not bool(defined.all()):
                raise NotDifferentiableError(_NO_GAP)
            K = V.mT @ grad_vectors  # K[j, i] = vⱼᵀ gᵢ
            within = V @ _within_block(values, K, problem.rule, V.shape[-2])
            outside = _outside_block(values, V, grad_vectors, problem)
            W_A = W_A + within + outside
            W_B = W_B - (within + outside) * values[..., None, :]
            W_B = W_B - V * (K.diagonal(0, -2, -1) / 2)[..., None, :]
        if not ctx.generalized:
            W_B = torch.zeros_like(W_B[..., :0, :])
        return W_A, W_B, None, None, None, None


def _within_block(
    values: torch.Tensor, K: torch.Tensor, rule: EigenvectorRule, n: int
) -> torch.Tensor:
    """``D[j, i] = C[j, i] K[j, i]`` (..., k, k), ``C[j, i] = 1/(λᵢ - λⱼ)`` by the rule. A
    pair within ``∛eps · max|λ|`` whose gauge numerator ``K[j, i] - K[i, j]`` is round-off
    (``n · eps · max|K|``) is dropped: a loss that does not depend on the basis there (the
    error of dropping a genuine term is at most ``eps^(2/3)`` relative). A pair tied within
    the solver's round-off whose numerator is not raises (with the unbounded rule)."""
    C = rule.coefficients(values)
    gap = (values[..., :, None] - values[..., None, :]).abs()
    scale = values.abs().amax(-1, keepdim=True)[..., None]
    eps = torch.finfo(values.dtype).eps
    off = ~torch.eye(values.shape[-1], dtype=torch.bool, device=values.device)
    close = off & (gap <= eps ** (1 / 3) * scale)
    tied = off & (gap <= n * eps * scale)
    invariant = (K - K.mT).abs() <= n * eps * K.abs().amax((-2, -1), keepdim=True)
    if not rule.finite_coefficients:
        basis_free = ~(tied & ~invariant).any()
        if checks.in_graph():
            checks.assert_in_graph(basis_free, _BASIS)
        elif checks.host_checks_enabled(K) and not bool(basis_free):
            raise NotDifferentiableError(_BASIS)
    return torch.where(close & invariant, torch.zeros_like(K), C * K)


def _outside_block(
    values: torch.Tensor, V: torch.Tensor, G: torch.Tensor, problem: _Problem
) -> torch.Tensor:
    """``yᵢ`` (..., n, k): ``(λᵢ B - A) yᵢ = (I - B V Vᵀ) gᵢ`` with ``Vᵀ B yᵢ = 0``."""
    if problem.outside is not None:  # dense: yᵢ = Σⱼ vⱼ (vⱼᵀ gᵢ) / (λᵢ - λⱼ) over the rest
        rest_values, rest_vectors = problem.outside
        gaps = values[..., None, :] - rest_values[..., :, None]  # (..., n - k, k)
        return rest_vectors @ ((rest_vectors.mT @ G) / gaps)
    return _projected_cg(values, V, G, problem)


def _projected_cg(
    values: torch.Tensor, V: torch.Tensor, G: torch.Tensor, problem: _Problem
) -> torch.Tensor:
    """Conjugate gradients for every column at once on ``M yᵢ = s (I - B V Vᵀ) gᵢ``,
    ``M = s (λᵢ B - A)`` (s = 1 for the
    largest: definite on the complement), preconditioned by the projector
    ``P = I - V Vᵀ B`` onto it; matvecs only."""
    bmatvec = problem.bmatvec if problem.bmatvec is not None else (lambda X: X)
    sign = 1.0 if problem.largest else -1.0
    BV = bmatvec(V)

    def project(X: torch.Tensor) -> torch.Tensor:  # P X = X - V (Vᵀ B X)
        return X - V @ (BV.mT @ X)

    def operator(X: torch.Tensor) -> torch.Tensor:
        return sign * (bmatvec(X) * values - problem.matvec(X))

    def precondition(R: torch.Tensor) -> torch.Tensor:
        R = R - BV @ (V.mT @ R)  # Pᵀ R (round-off)
        return project(R if problem.preconditioner is None else problem.preconditioner(R))

    rhs = sign * (G - BV @ (V.mT @ G))  # s (I - B V Vᵀ) g: orthogonal to V
    Y = torch.zeros_like(G)
    residual = rhs
    Z = precondition(residual)
    direction = Z
    rz = (residual * Z).sum(0)
    target = problem.tol * rhs.norm(dim=0)
    for _ in range(problem.maxiter):
        if bool((residual.norm(dim=0) <= target).all()):
            return project(Y)
        MP = operator(direction)
        curvature = (direction * MP).sum(0)
        step = torch.where(curvature > 0, rz / torch.where(curvature > 0, curvature, 1.0), 0.0)
        Y = Y + direction * step
        residual = residual - MP * step
        Z = precondition(residual)
        rz_next = (residual * Z).sum(0)
        direction = Z + direction * torch.where(rz > 0, rz_next / torch.where(rz > 0, rz, 1.0), 0.0)
        rz = rz_next
    if bool((residual.norm(dim=0) <= target).all()):
        return project(Y)
    worst = float((residual.norm(dim=0) / target.clamp_min(torch.finfo(Z.dtype).tiny)).max())
    raise NotDifferentiableError(
        f"eigsh backward: expected the adjoint solves to converge in {problem.maxiter} "
        f"iterations (got a residual {worst:.3g}× the tolerance): the gap at the cut is small "
        "against the spread of the spectrum; raise maxiter or tol"
    )
