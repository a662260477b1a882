"""What each public function accepts, swept over dtypes and the inputs users pass.

One oracle decides every cell: the function's float64 value on the input **as rounded to
the dtype** (by ``torch.linalg.eigh``, round-off negative eigenvalues of a positive
semidefinite input read as 0). Where that value exists and fits the dtype, the function
must return it within ``16 · eps(dtype)`` relative (Frobenius; ``64 · eps`` for the
functions computed through an SVD), plus ``1e-7`` where a square
root meets zero eigenvalues (float64's own ``sqrt(eps)`` there); where the input is outside
the function's domain it must raise :class:`~stableeig.NotPositiveDefiniteError`; where the
value overflows the dtype, :class:`~stableeig.NonFiniteError`. ``tests/test_accepts.py``
asserts every cell; ``python benchmarks/accepts.py`` writes the table
(``results/accepts.md``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch

import stableeig as se

__all__ = ["DTYPES", "FUNCTIONS", "INPUTS", "Outcome", "judge", "render"]

DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _spd(
    n: int, spectrum: torch.Tensor, seed: int = 0, batch: tuple[int, ...] = ()
) -> torch.Tensor:
    """``Q diag(spectrum) Qᵀ`` (*batch, n, n) with seeded random orthogonal ``Q``."""
    g = torch.Generator().manual_seed(seed)
    Q = torch.linalg.qr(torch.randn(*batch, n, n, generator=g, dtype=torch.float64))[0]
    return (Q * spectrum) @ Q.mT


def _rank_deficient(n: int = 8, rank: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(rank, n, generator=g, dtype=torch.float64)
    return x.T @ x / rank


INPUTS: dict[str, Callable[[], torch.Tensor]] = {
    "well conditioned": lambda: _spd(6, torch.linspace(0.5, 3.0, 6, dtype=torch.float64)),
    "rank-deficient PSD": _rank_deficient,
    "near ties": lambda: _spd(5, torch.tensor([1.0, 1.0 + 1e-9, 2.0, 2.0 + 1e-12, 3.0]).double()),
    "exact ties": lambda: 2 * torch.eye(4, dtype=torch.float64),
    "1×1": lambda: torch.tensor([[2.5]], dtype=torch.float64),
    "scale 1e30": lambda: 1e30 * _spd(4, torch.linspace(1.0, 2.0, 4, dtype=torch.float64)),
    "scale 1e-30": lambda: 1e-30 * _spd(4, torch.linspace(1.0, 2.0, 4, dtype=torch.float64)),
    "batch (2, 3)": lambda: torch.stack(
        [_spd(4, torch.linspace(0.5, 2.0, 4, dtype=torch.float64), seed=s) for s in range(6)]
    ).view(2, 3, 4, 4),
    "empty batch": lambda: torch.zeros(0, 3, 3, dtype=torch.float64),
    # enough 3×3 matrices for eigh_driver("auto") to take the batched Jacobi path; gaps 1.25
    "4,096 × 3×3": lambda: _spd(3, torch.linspace(0.5, 3.0, 3).double(), seed=2, batch=(4096,)),
}


ORACLE_SLACK = {"4,096 × 3×3": 32}
"""eps added to the float64 bound where the oracle (LAPACK's float64 ``eigh``, the precision
of the function judged) is the less accurate side: among 4,096 draws its ``expm`` is off by
up to 20 eps against 40-digit mpmath where the batched Jacobi path is within 1
(``tests/test_small.py::test_expm_of_the_sweep_s_worst_draw_against_mpmath``)."""


@dataclass(frozen=True)
class Function:
    """A public function of one matrix and its float64 oracle on the eigenvalues."""

    call: Callable[[torch.Tensor], torch.Tensor]
    values: Callable[[torch.Tensor], torch.Tensor]  # f(λ) elementwise (float64)
    domain: str  # "any", "semidefinite" (λ >= 0 up to round-off), "definite" (λ > 0)
    root_at_zero: bool = False  # a square root meets zero eigenvalues: float64 sqrt(eps)
    eps_factor: int = 16  # the bound in eps(dtype); an SVD (gesdd) reconstructs within 64
    refuses: tuple[tuple[str, str], ...] = ()  # (input, typed error) refused as documented
    congruence: bool = False  # a generalized problem with B = D²: the oracle on D⁻¹ A D⁻¹


def _root_of_mass(n: int) -> torch.Tensor:
    """D (n,): powers of two, so ``B = D²`` is exact in every dtype (float16 included)."""
    return 2.0 ** (torch.arange(n, dtype=torch.float64) % 3 - 1)


def _mass(A: torch.Tensor) -> torch.Tensor:
    """``B = D²`` (n, n) in ``A``'s dtype: a positive definite partner that is not ``I``."""
    return torch.diag(_root_of_mass(A.shape[-1]) ** 2).to(A.dtype)


def _top(w: torch.Tensor) -> torch.Tensor:
    kept = torch.zeros_like(w)
    kept[..., -1] = 1
    return kept


def _projector(V: torch.Tensor) -> torch.Tensor:
    return V @ V.mT


def _generalized_reconstruction(A: torch.Tensor) -> torch.Tensor:
    w, V = se.eigh(A, _mass(A))
    return (V * w.unsqueeze(-2)) @ V.mT  # D⁻¹ C D⁻¹ with C = D⁻¹ A D⁻¹


def _reconstructed(A: torch.Tensor) -> torch.Tensor:
    U, S, Vh = se.svd(A)
    return (U * S.unsqueeze(-2)) @ Vh


FUNCTIONS: dict[str, Function] = {
    "inv_sqrtm": Function(se.inv_sqrtm, torch.rsqrt, "definite"),
    "sqrtm": Function(se.sqrtm, lambda w: w.clamp_min(0).sqrt(), "semidefinite", True),
    "powm(p=0.5)": Function(
        lambda A: se.powm(A, 0.5), lambda w: w.clamp_min(0).sqrt(), "semidefinite", True
    ),
    "powm(p=-1)": Function(lambda A: se.powm(A, -1.0), torch.reciprocal, "definite"),
    "logm": Function(se.logm, torch.log, "definite"),
    "expm": Function(se.expm, torch.exp, "any"),
    "softplusm": Function(se.softplusm, torch.nn.functional.softplus, "any"),
    "clamp_eigenvalues(min=1)": Function(
        lambda A: se.clamp_eigenvalues(A, min=1.0), lambda w: w.clamp_min(1.0), "any"
    ),
    "funm(tanh)": Function(lambda A: se.funm(A, torch.tanh), torch.tanh, "any"),
    # singular values of a symmetric A are |λ|, and tanh is odd: U tanh(Σ) Vᵀ = V tanh(Λ) Vᵀ
    "svd_funm(tanh)": Function(
        lambda A: se.svd_funm(A, torch.tanh), torch.tanh, "any", eps_factor=64
    ),  # measured: 21 · eps at scales 1e±30 in float64 (LAPACK's SVD, not its eigh)
    "top_k_projector(k=1)": Function(lambda A: se.top_k_projector(A, 1), _top, "any"),
    # the decomposition itself: U diag(S) Vh reconstructs A
    "svd: U·S·Vh": Function(_reconstructed, lambda w: w, "any", eps_factor=64),
    # partial and generalized eigenproblems (issue 41): k < n, so a 1×1 A is refused
    "eigsh(k=1): V Vᵀ": Function(
        lambda A: _projector(se.eigsh(A, 1).eigenvectors),
        _top,
        "any",
        refuses=(("1×1", "ArgumentError"),),
    ),
    "eigh(A, B): V Λ Vᵀ": Function(
        _generalized_reconstruction, lambda w: w, "any", congruence=True
    ),
    "generalized_funm(exp)": Function(
        lambda A: se.generalized_funm(A, _mass(A), torch.exp), torch.exp, "any", congruence=True
    ),
}


@dataclass(frozen=True)
class Outcome:
    """``"ok"`` (with the relative error and its bound), an error class name, or ``"—"``
    where the input cannot be written in the dtype (overflow or flush to 0 of every entry)."""

    result: str
    error: Optional[float] = None
    bound: Optional[float] = None
    expected: str = "ok"

    @property
    def agrees(self) -> bool:
        if self.result == "—":
            return True
        if self.result != self.expected:
            return False
        return self.result != "ok" or (self.error is not None and self.error <= (self.bound or 0))


def _reference(function: Function, A: torch.Tensor) -> tuple[str, Optional[torch.Tensor]]:
    """(expected outcome, float64 value) for the dtype-rounded input ``A`` (float64)."""
    if A.numel() == 0:
        return "ok", A.clone()
    inverse_root = 1 / _root_of_mass(A.shape[-1]) if function.congruence else None
    if inverse_root is not None:  # exact: scaling by powers of two
        A = A * inverse_root[:, None] * inverse_root[None, :]
    w, V = torch.linalg.eigh((A + A.mT) / 2)
    scale = w.abs().amax(-1, keepdim=True)
    if function.domain == "definite" and bool((w <= 0).any()):
        return "NotPositiveDefiniteError", None
    if function.domain == "semidefinite":
        tolerance = 1e-3 * scale  # far beyond round-off either way in these inputs
        if bool((w < -tolerance).any()):
            return "NotPositiveDefiniteError", None
    value = (V * function.values(w).unsqueeze(-2)) @ V.mT
    if inverse_root is not None:
        value = value * inverse_root[:, None] * inverse_root[None, :]
    return "ok", value


def judge(name: str, kind: str, dtype: torch.dtype) -> Outcome:
    """Run ``name`` on input ``kind`` in ``dtype`` and compare with the oracle."""
    function = FUNCTIONS[name]
    exact = INPUTS[kind]()
    A = exact.to(dtype)
    if exact.numel() and (not bool(torch.isfinite(A).all()) or not bool((A != 0).any())):
        return Outcome("—")
    expected, reference = _reference(function, A.double())
    overflows = reference is not None and not bool(torch.isfinite(reference.to(dtype)).all())
    if expected == "ok" and overflows:
        expected = "NonFiniteError"
    expected = dict(function.refuses).get(kind, expected)
    tie_at_cut = function.values is _top and kind == "exact ties"
    if tie_at_cut:
        expected = "ok"  # the projector's value exists (any basis of the tie); see below
    try:
        result = function.call(A)
    except se.StableEigError as raised:
        return Outcome(type(raised).__name__, expected=expected)
    if expected != "ok":
        return Outcome("ok (no error)", expected=expected)
    assert reference is not None
    if result.dtype != dtype or result.shape != A.shape:
        return Outcome(f"wrong dtype/shape {result.dtype} {tuple(result.shape)}")
    if tie_at_cut:
        # a tie at the cut: any unit-trace projector of the tied space is a valid value
        trace = result.double().diagonal(dim1=-2, dim2=-1).sum(-1)
        error = float((trace - 1).abs().max())
        return Outcome("ok", error, 16 * torch.finfo(dtype).eps)
    if reference.numel() == 0:
        return Outcome("ok", 0.0, 0.0)
    scale = float(torch.linalg.matrix_norm(reference).max())
    error = float(torch.linalg.matrix_norm(result.double() - reference).max()) / max(
        scale, torch.finfo(torch.float64).tiny
    )
    bound = function.eps_factor * torch.finfo(dtype).eps + (1e-7 if function.root_at_zero else 0)
    if dtype == torch.float64:  # the float64 oracle's own round-off, where it dominates
        bound += ORACLE_SLACK.get(kind, 0) * torch.finfo(dtype).eps
    return Outcome("ok", error if math.isfinite(error) else math.inf, bound)


def render(dtypes: tuple[torch.dtype, ...] = DTYPES) -> str:
    """Markdown: one row per function and input, one column per dtype."""
    short = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32",
             torch.float64: "float64"}  # fmt: skip
    lines = [
        "| function | input | " + " | ".join(short[d] for d in dtypes) + " |",
        "|---|---|" + "---|" * len(dtypes),
    ]
    for name in FUNCTIONS:
        for kind in INPUTS:
            cells = []
            for dtype in dtypes:
                outcome = judge(name, kind, dtype)
                text = outcome.result
                if outcome.result == "ok" and outcome.error is not None:
                    text = f"ok ({outcome.error:.0e})"
                cells.append(
                    text if outcome.agrees else f"**{text} (expected {outcome.expected})**"
                )
            lines.append(f"| `{name}` | {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
