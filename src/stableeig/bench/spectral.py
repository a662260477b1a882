"""Accuracy of spectral-function gradients (``stableeig bench spectral``).

For ``F(A) = V f(Λ) Vᵀ`` and float32 inputs ``A = Q diag(λ) Qᵀ`` with one eigenvalue pair at
a relative gap of 0 … 1 and scales 1e-3 … 1e3, the relative Frobenius error of
``∂⟨G, F(A)⟩/∂A`` against a 40-digit mpmath reference computed on the exact float32 matrix,
for a random symmetric ``G`` and for ``G`` aimed at the near-tied pair (``vᵢvⱼᵀ + vⱼvᵢᵀ``,
which isolates one divided difference). Methods, on the same inputs: stableeig (float64
decomposition, the default; and ``compute_dtype=float32``), ``torch.linalg.eigh`` autograd,
the exact Loewner formula with plain quotients (what the built-ins avoid), and the peers that
import here (``torchspd``; others are reported as skipped with the reason).
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from .. import matrix_functions as mf
from ..spectral import SpectralFunction, apply_spectral, inv_sqrtm, sqrtm
from .files import write_text
from .plotting import new_figure, save_figure
from .timing import environment, forward_backward, paired

__all__ = ["CASES", "PEERS", "over_floor", "render_all", "run", "speed"]

Matrix = Callable[[torch.Tensor], torch.Tensor]
GAPS = (0.0, 1e-9, 1e-6, 1e-3, 1.0)
SCALES = (1e-3, 1.0, 1e3)


@dataclass(frozen=True)
class Case:
    """One spectral function: ours, its scalar form in torch and in mpmath, the scales."""

    ours: Callable[..., torch.Tensor]  # (A, compute_dtype=...) -> F(A)
    torch_f: Callable[[torch.Tensor], torch.Tensor]
    torch_df: Callable[[torch.Tensor], torch.Tensor]
    mp_f: Callable[[Any], Any]
    scales: tuple[float, ...] = SCALES
    power: Optional[float] = None  # the exponent, for the peers' power functions


def _mp() -> Any:
    import mpmath

    mpmath.mp.dps = 40
    return mpmath


def _cases() -> dict[str, Case]:
    mp = _mp()
    half = mp.mpf(1) / 2
    return {
        "log": Case(mf.logm, torch.log, torch.reciprocal, mp.log),
        "exp": Case(mf.expm, torch.exp, torch.exp, mp.exp, (1e-3, 1.0, 10.0)),
        "sqrt": Case(sqrtm, torch.sqrt, lambda w: 0.5 * w.rsqrt(), mp.sqrt),
        "inv_sqrt": Case(
            inv_sqrtm, torch.rsqrt, lambda w: -0.5 * w.pow(-1.5), lambda x: x**-half,
        ),
        "pow 0.3": Case(
            lambda A, **k: mf.powm(A, 0.3, **k), lambda w: w.pow(0.3),
            lambda w: 0.3 * w.pow(-0.7), lambda x: x ** (mp.mpf(3) / 10), power=0.3,
        ),
        "pow 2": Case(
            lambda A, **k: mf.powm(A, 2.0, **k), lambda w: w.pow(2), lambda w: 2 * w,
            lambda x: x**2, power=2.0,
        ),
        "softplus": Case(
            mf.softplusm, torch.nn.functional.softplus, torch.sigmoid,
            lambda x: mp.log(1 + mp.exp(x)), (1e-3, 1.0, 10.0),
        ),
        "user f = tanh (funm)": Case(
            lambda A, **k: mf.funm(A, torch.tanh, **k), torch.tanh,
            lambda w: 1 - torch.tanh(w) ** 2, mp.tanh, (1e-3, 1.0, 3.0),
        ),
    }  # fmt: skip


CASES = tuple(_cases())


def _plain(case: Case) -> Callable[..., torch.Tensor]:
    """The exact Loewner formula with plain quotients (f′ on the exact diagonal)."""

    def loewner(w: torch.Tensor) -> torch.Tensor:
        a, b = w.unsqueeze(-1), w.unsqueeze(-2)
        gap = a - b
        quotient = (case.torch_f(a) - case.torch_f(b)) / torch.where(gap == 0, 1.0, gap)
        return torch.where(gap == 0, case.torch_df(a).expand_as(gap), quotient)

    function = SpectralFunction("plain", case.torch_f, loewner, lambda w: "plain quotient")

    def apply(A: torch.Tensor) -> torch.Tensor:
        return apply_spectral(A, function)

    return apply


def _eigh_autograd(case: Case) -> Callable[..., torch.Tensor]:
    def apply(A: torch.Tensor) -> torch.Tensor:
        w, V = torch.linalg.eigh(A)
        return (V * case.torch_f(w).unsqueeze(-2)) @ V.mT

    return apply


def _torchspd(name: str, case: Case) -> Optional[Matrix]:
    import torchspd  # type: ignore[import-not-found, import-untyped, unused-ignore]

    named = {"log": "logm", "exp": "expm", "sqrt": "sqrtm", "inv_sqrt": "invsqrtm"}
    if case.power is not None:
        return lambda A: torchspd.powm(A, case.power)
    return getattr(torchspd, named[name]) if name in named else None


def _geoopt(name: str, case: Case) -> Optional[Matrix]:
    from geoopt import linalg  # type: ignore[import-not-found, import-untyped, unused-ignore]

    named = {"log": linalg.sym_logm, "exp": linalg.sym_expm, "sqrt": linalg.sym_sqrtm,
             "inv_sqrt": linalg.sym_inv_sqrtm1}  # fmt: skip
    function: Matrix = named.get(name, lambda A: linalg.sym_funcm(A, case.torch_f))
    return function  # sym_funcm: its generic eigh + autograd


def _spd_learn(name: str, case: Case) -> Optional[Matrix]:
    from spd_learn import functional  # type: ignore[import-not-found, import-untyped, unused-ignore]

    named = {"log": functional.matrix_log, "exp": functional.matrix_exp,
             "sqrt": functional.matrix_sqrt, "inv_sqrt": functional.matrix_inv_sqrt,
             "softplus": functional.matrix_softplus}  # fmt: skip
    if case.power is not None:
        return lambda A: functional.matrix_power.apply(A, case.power)
    return named[name].apply if name in named else None


def _pyriemann(name: str, case: Case) -> Optional[Matrix]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from pyriemann.utils import base  # type: ignore[import-not-found, import-untyped, unused-ignore]
    named = {"log": base.logm, "exp": base.expm, "sqrt": base.sqrtm, "inv_sqrt": base.invsqrtm}
    if case.power is not None:
        return lambda A: base.powm(A, case.power)
    return named.get(name)  # torch tensors: its eigh, autograd


PEERS: dict[str, Callable[[str, Case], Optional[Matrix]]] = {
    "torchspd": _torchspd,
    "geoopt": _geoopt,
    "spd_learn": _spd_learn,
    "pyriemann": _pyriemann,
}
"""The peer packages, run from the packages themselves (each installs from PyPI with
``--no-deps`` beside our torch; one that does not import is reported as skipped)."""


def _peers(name: str, case: Case) -> dict[str, Any]:
    """The peers' function for this case (None: they have none), or why a peer is skipped."""
    found: dict[str, Any] = {}
    for peer, lookup in PEERS.items():
        try:
            function = lookup(name, case)
        except Exception as error:
            found[peer] = f"skipped: {type(error).__name__}: {error}"
            continue
        if function is not None:
            found[peer] = function
    return found


class _Float32Floor(torch.autograd.Function):
    """The float32 floor: ``V f(Λ) Vᵀ`` from float32 eigenpairs, and in the backward the
    exact Loewner matrix of those float32 eigenvalues (40-digit mpmath, rounded once to
    float32) with the float32 products ``V (L ∘ Vᵀ Ḡ V) Vᵀ``: what a float32 decomposition
    reaches when its divided differences add nothing."""

    @staticmethod
    def forward(ctx: Any, A: torch.Tensor, case: Case) -> torch.Tensor:
        w, V = torch.linalg.eigh(A.float())
        ctx.save_for_backward(w, V)
        ctx.case = case
        return (V * case.torch_f(w).unsqueeze(-2)) @ V.mT

    @staticmethod
    def backward(ctx: Any, G: torch.Tensor) -> tuple[torch.Tensor, None]:
        w, V = ctx.saved_tensors
        mp, case = _mp(), ctx.case
        values = [mp.mpf(float(x)) for x in w.double()]
        L = torch.tensor(
            [[float(_divided(case, a, b)) for b in values] for a in values], dtype=torch.float32
        )
        inner = V.mT @ ((G + G.mT) / 2).float() @ V
        return (V @ (L * inner) @ V.mT).to(G.dtype), None


def _divided(case: Case, a: Any, b: Any) -> Any:
    mp = _mp()
    return mp.diff(case.mp_f, a) if a == b else (case.mp_f(a) - case.mp_f(b)) / (a - b)


FLOOR = "float32 floor (exact L on float32 eigenpairs)"


def _methods(name: str, case: Case) -> dict[str, Any]:
    methods: dict[str, Any] = {
        "stableeig": lambda A: case.ours(A),
        "stableeig (compute_dtype=float32)": lambda A: case.ours(A, compute_dtype=torch.float32),
        FLOOR: lambda A: _Float32Floor.apply(A, case),
        "torch.linalg.eigh autograd": _eigh_autograd(case),
        "Loewner, plain quotient (float64)": _plain(case),
    }
    methods.update(_peers(name, case))
    return methods


def _reference(case: Case, A: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """``V (L ∘ Vᵀ Ḡ V) Vᵀ`` in 40-digit arithmetic on the exact entries of ``A``."""
    mp = _mp()
    n = A.shape[-1]
    values, vectors = mp.eigsy(mp.matrix(A.double().tolist()))
    inner = vectors.T * mp.matrix(((G + G.T) / 2).double().tolist()) * vectors
    core = mp.matrix(n, n)
    for i in range(n):
        for j in range(n):
            a, b = values[i], values[j]
            core[i, j] = inner[i, j] * _divided(case, a, b)
    return torch.tensor((vectors * core * vectors.T).tolist(), dtype=torch.float64)


def _inputs(scale: float, gap: float, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A float32 4×4 with eigenvalues scale·(0.5, 1, 1 + gap, 2), a random ``G`` and ``G``
    aimed at the pair."""
    g = torch.Generator().manual_seed(seed)
    Q = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=torch.float64))[0]
    w = scale * torch.tensor([0.5, 1.0, 1.0 + gap, 2.0], dtype=torch.float64)
    A = ((Q * w) @ Q.T).float()
    random = torch.randn(4, 4, generator=g, dtype=torch.float64)
    aimed = torch.outer(Q[:, 1], Q[:, 2])
    # G as the float32 methods receive it: the reference uses the same rounded entries
    return A, (random + random.T).float().double(), (aimed + aimed.T).float().double()


def _error(method: Any, A: torch.Tensor, G: torch.Tensor, expected: torch.Tensor) -> float:
    leaf = A.clone().requires_grad_(True)
    try:
        (method(leaf) * G.to(leaf.dtype)).sum().backward()
    except Exception:
        return math.inf
    assert leaf.grad is not None
    if not bool(torch.isfinite(leaf.grad).all()):
        return math.nan
    return float((leaf.grad.double() - expected).norm() / expected.norm())


def run(results: Path, quick: bool = False) -> dict[str, Any]:
    """Measure every case × method; write ``bench_spectral.{json,md,png}`` to ``results``."""
    cases = _cases()
    gaps = (0.0, 1e-6, 1.0) if quick else GAPS
    rows: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    for name, case in cases.items():
        for scale in case.scales[:1] if quick else case.scales:
            for gap in gaps:
                A, random, aimed = _inputs(scale, gap, seed=len(rows))
                for kind, G in (("random G", random), ("G on the pair", aimed)):
                    expected = _reference(case, A, G)
                    for method, apply in _methods(name, case).items():
                        if isinstance(apply, str):
                            skipped[method] = apply
                            continue
                        rows.append(
                            {"function": name, "scale": scale, "gap": gap, "G": kind,
                             "method": method, "error": _error(apply, A, G, expected)}
                        )  # fmt: skip
    summary = _summarize(rows)
    speed_rows = speed(((4, 16, 3),) if quick else SPEED_SHAPES, repeats=2 if quick else 7)
    results.mkdir(parents=True, exist_ok=True)
    data = {
        "rows": rows, "summary": summary, "over_floor": over_floor(rows), "skipped": skipped,
        "speed": speed_rows, "environment": environment(),
    }  # fmt: skip
    write_text(results / "bench_spectral.json", json.dumps(data, indent=1) + "\n")
    write_text(results / "bench_spectral.md", render_all(data) + "\n")
    _plot(rows, results / "bench_spectral.png")
    return data


def over_floor(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Per function, the worst ratio over the sweep of stableeig's error with
    ``compute_dtype=float32`` to the float32 floor's on the same input (target: ≤ 2)."""
    errors: dict[tuple[str, float, float, str], dict[str, float]] = {}
    for row in rows:
        key = (row["function"], row["scale"], row["gap"], row["G"])
        errors.setdefault(key, {})[row["method"]] = row["error"]
    worst: dict[str, float] = {}
    for (function, *_), cell in errors.items():
        ratio = cell["stableeig (compute_dtype=float32)"] / max(cell[FLOOR], 1e-300)
        worst[function] = max(worst.get(function, 0.0), ratio)
    return worst


SPEED_SHAPES = ((16, 64, 20), (128, 256, 5))  # batch, n, pairs timed


def speed(
    shapes: tuple[tuple[int, int, int], ...] = SPEED_SHAPES, repeats: int = 7
) -> list[dict[str, Any]]:
    """``logm``/``expm`` forward + ``backward(G)`` (float32 input, float64 decomposition)
    against ``torch.linalg.eigh`` autograd of the same function in float32 and in float64,
    interleaved in pairs (the method of ``stableeig bench speed``)."""
    rows = []
    for batch, n, pairs in shapes:
        g = torch.Generator().manual_seed(n)
        X = torch.randn(batch, n, 2 * n, generator=g)
        A = X @ X.mT / (2 * n) + 0.1 * torch.eye(n)  # SPD, eigenvalues ~0.1 … 3
        G = torch.randn(A.shape, generator=g)
        for name, ours, f in (("logm", mf.logm, torch.log), ("expm", mf.expm, torch.exp)):
            for dtype in (torch.float32, torch.float64):

                def baseline(M: torch.Tensor, f: Any = f, dtype: torch.dtype = dtype) -> Any:
                    w, V = torch.linalg.eigh(M.to(dtype))
                    return ((V * f(w).unsqueeze(-2)) @ V.mT).to(M.dtype)

                timed = paired(
                    forward_backward(ours, A, G), forward_backward(baseline, A, G),
                    min(pairs, repeats),
                )  # fmt: skip
                rows.append(
                    {"function": name, "batch": batch, "n": n,
                     "baseline": f"torch.linalg.eigh autograd in {str(dtype)[6:]}",
                     **timed.fields("ours_ms", "baseline_ms")}
                )  # fmt: skip
    return rows


def render_all(data: dict[str, Any]) -> str:
    """The accuracy table, the float32-floor ratios and the speed table."""
    lines = [render(data["summary"], data["skipped"]), ""]
    lines.append(
        "stableeig with `compute_dtype=float32` over the float32 floor, worst over the "
        "sweep (target ≤ 2×): " + ", ".join(f"{f} {r:.2f}×" for f, r in data["over_floor"].items())
    )
    if data.get("speed"):
        lines += [
            "",
            "| function | batch × n × n | baseline | ours ms | baseline ms | ratio [quartiles] |",
            "|---|---|---|---|---|---|",
        ]
        for row in data["speed"]:
            low, high = row["ratio_quartiles"]
            lines.append(
                f"| {row['function']} | {row['batch']} × {row['n']}×{row['n']} | "
                f"{row['baseline']} | {row['ours_ms']} | {row['baseline_ms']} | "
                f"{row['ratio']:.2f}× [{low:.2f}–{high:.2f}] |"
            )
    return "\n".join(lines)


def _summarize(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """function -> method -> worst and median error (NaN counts as worst), NaN count."""
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for row in rows:
        summary.setdefault(row["function"], {}).setdefault(row["method"], {"errors": []})  # type: ignore[dict-item]
        summary[row["function"]][row["method"]]["errors"].append(row["error"])  # type: ignore[attr-defined]
    for methods in summary.values():
        for method, cell in methods.items():
            errors: list[float] = cell.pop("errors")  # type: ignore[assignment]
            finite = [e for e in errors if math.isfinite(e)]
            methods[method] = {
                "worst": max(errors, key=lambda e: math.inf if not math.isfinite(e) else e),
                "median": statistics.median(finite) if finite else math.nan,
                "nan_or_refused": float(len(errors) - len(finite)),
                "cases": float(len(errors)),
            }
    return summary


def _format(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    return "refused" if math.isinf(value) else f"{value:.1e}"


def render(summary: dict[str, dict[str, dict[str, float]]], skipped: dict[str, str]) -> str:
    methods = list(dict.fromkeys(m for cells in summary.values() for m in cells))
    lines = [
        "Worst (median) relative error of the float32-input gradient vs 40-digit mpmath; "
        "NaN/refused: cases without a finite gradient.",
        "",
        "| function | " + " | ".join(methods) + " |",
        "|---|" + "---|" * len(methods),
    ]
    for function, cells in summary.items():
        entries = []
        for method in methods:
            cell = cells.get(method)
            if cell is None:
                entries.append("—")
                continue
            bad = int(cell["nan_or_refused"])
            text = f"{_format(cell['worst'])} ({_format(cell['median'])})"
            entries.append(text + (f"; {bad}/{int(cell['cases'])} NaN/refused" if bad else ""))
        lines.append(f"| {function} | " + " | ".join(entries) + " |")
    for method, why in sorted(skipped.items()):
        lines.append(f"\n{method}: {why}")
    return "\n".join(lines)


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    figure, axes = new_figure(2)
    for axis, function in zip(axes, ("log", "pow 0.3")):
        chosen = [r for r in rows if r["function"] == function and r["G"] == "G on the pair"]
        for method in dict.fromkeys(r["method"] for r in chosen):
            points: dict[float, float] = {}
            for r in chosen:
                if r["method"] == method:
                    error = r["error"] if math.isfinite(r["error"]) else 1.0
                    points[r["gap"]] = max(points.get(r["gap"], 0.0), max(error, 1e-17))
            gaps = sorted(points)
            axis.plot(
                [max(g, 1e-12) for g in gaps], [points[g] for g in gaps], marker="o", label=method
            )
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("relative gap of the pair (0 plotted at 1e-12)")
        axis.set_ylabel("worst relative gradient error (NaN plotted at 1)")
        axis.set_title(f"{function}: G aimed at the pair")
        axis.legend(fontsize=7)
    save_figure(figure, path)
