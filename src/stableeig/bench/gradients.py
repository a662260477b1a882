"""Gradient fidelity: every method against the float64 exact gradient, over spectrum families.

For ``inv_sqrtm`` and ``top_k_projector`` (``k = n/2``), each method's gradient of
``<G, F(A)>`` for a matrix ``A`` rounded to the test dtype is compared with the float64
Loewner gradient of the same rounded matrix (exact: Daleckii–Krein). Reported per cell:
the median relative error over upstream draws, and the fraction of non-finite gradients.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any, Callable

import torch

from ..rules import Analytic, Clip, Loewner, Power, Taylor
from ..spectral import inv_sqrtm, top_k_projector
from .files import write_text
from .matrices import stem_covariance, with_spectrum
from .plotting import new_figure, save_figure

__all__ = [
    "METHODS",
    "gradient_sweep",
    "plot_gradients",
    "spectral_gradient",
    "spectrum_families",
    "summary_markdown",
]

METHODS: dict[str, dict[str, Any]] = {
    "analytic": {"backward": Analytic()},
    "power K=5": {"backward": Power(num_iters=5)},
    "power K=19": {"backward": Power(num_iters=19)},
    "power K=50": {"backward": Power(num_iters=50)},
    "taylor 5": {"backward": Taylor(order=5)},
    "taylor 9": {"backward": Taylor(order=9)},
    "taylor 20": {"backward": Taylor(order=20)},
    "clip 1e-2": {"backward": Clip(min_gap=1e-2)},
    "clip 1e-4": {"backward": Clip(min_gap=1e-4)},
    "loewner": {"backward": Loewner()},
}
GAPS = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8)


def spectrum_families(n: int) -> dict[str, tuple[torch.Tensor, float]]:
    """Named float64 SPD matrices of size n, each with its smallest relative eigenvalue gap."""
    arange = torch.arange(n, dtype=torch.float64)
    families: dict[str, tuple[torch.Tensor, float]] = {
        "identity": (torch.eye(n, dtype=torch.float64), 0.0),
    }
    for gap in GAPS:  # eigenvalues 1 + k·gap: every neighbouring gap equals `gap`
        families[f"clustered gap {gap:.0e}"] = (with_spectrum(1 + gap * arange), gap)
    for condition in (1e2, 1e4, 1e8):
        spectrum = torch.logspace(0, -math.log10(condition), n, dtype=torch.float64)
        ratio = float(spectrum[1] / spectrum[0]) if n > 1 else 1.0
        families[f"geometric cond {condition:.0e}"] = (with_spectrum(spectrum), 1 - ratio)
    if n >= 16:
        families["stem conv 1 channel (rank 9) + 1e-4 I"] = (
            stem_covariance(n, in_channels=1, samples=2048),
            0.0,
        )
    return families


def spectral_gradient(
    function: Callable[..., torch.Tensor], A: torch.Tensor, G: torch.Tensor, knobs: dict[str, Any]
) -> torch.Tensor:
    """float64 gradient of ``<G, function(A, **knobs)>`` with respect to ``A``."""
    A = A.detach().clone().requires_grad_(True)
    (function(A, **knobs) * G.to(A.dtype)).sum().backward()
    assert A.grad is not None
    return A.grad.double()


def gradient_sweep(
    sizes: tuple[int, ...] = (4, 16, 64, 256),
    dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.float64),
    draws: int = 3,
) -> list[dict[str, Any]]:
    """One row per (function, method, n, dtype, spectrum): median error and non-finite share."""
    functions: dict[str, Callable[[int], Callable[..., torch.Tensor]]] = {
        "inv_sqrtm": lambda n: inv_sqrtm,
        "top_k_projector": lambda n: lambda A, **kw: top_k_projector(A, max(1, n // 2), **kw),
    }
    rows = []
    for n in sizes:
        for spectrum, (matrix, gap) in spectrum_families(n).items():
            for dtype in dtypes:
                A = matrix.to(dtype)
                for function_name, make in functions.items():
                    function = make(n)
                    upstreams = [
                        torch.randn(
                            n, n, generator=torch.Generator().manual_seed(s), dtype=torch.float64
                        )
                        for s in range(draws)
                    ]
                    try:
                        truths = [
                            spectral_gradient(function, A.double(), G, {"backward": "loewner"})
                            for G in upstreams
                        ]
                    except ValueError:  # e.g. a projector cut inside a tie: no derivative
                        continue
                    for method, knobs in METHODS.items():
                        errors, non_finite = [], 0
                        for G, truth in zip(upstreams, truths):
                            try:
                                grad = spectral_gradient(function, A, G, knobs)
                            except ValueError:
                                non_finite += 1
                                continue
                            if not bool(torch.isfinite(grad).all()):
                                non_finite += 1
                                continue
                            errors.append(
                                float((grad - truth).norm() / truth.norm().clamp_min(1e-300))
                            )
                        rows.append(
                            {
                                "function": function_name,
                                "method": method,
                                "n": n,
                                "dtype": str(dtype).replace("torch.", ""),
                                "spectrum": spectrum,
                                "min_gap": gap,
                                "median_relative_error": statistics.median(errors)
                                if errors
                                else None,
                                "non_finite_fraction": non_finite / draws,
                            }
                        )
    return rows


def summary_markdown(rows: list[dict[str, Any]], n: int = 64, dtype: str = "float32") -> str:
    """Median relative error per method (columns) and spectrum (rows), for one n and dtype."""
    lines = []
    for function in dict.fromkeys(r["function"] for r in rows):
        chosen = [
            r for r in rows if r["function"] == function and r["n"] == n and r["dtype"] == dtype
        ]
        if not chosen:
            continue
        methods = list(dict.fromkeys(r["method"] for r in chosen))
        lines += [
            f"**{function}**, n = {n}, {dtype} (median relative error; NaN = non-finite)",
            "",
            "| spectrum | " + " | ".join(methods) + " |",
            "|---|" + "---|" * len(methods),
        ]
        for spectrum in dict.fromkeys(r["spectrum"] for r in chosen):
            cells = []
            for method in methods:
                row = next(r for r in chosen if r["spectrum"] == spectrum and r["method"] == method)
                error = row["median_relative_error"]
                cells.append("NaN" if error is None else f"{error:.1e}")
            lines.append(f"| {spectrum} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot_gradients(
    rows: list[dict[str, Any]], path: Path, n: int = 64, dtype: str = "float32"
) -> None:
    """Relative error vs eigenvalue gap (clustered family), one line per method."""
    functions = list(dict.fromkeys(r["function"] for r in rows))
    figure, axes = new_figure(len(functions), width=6, height=4.5)
    for axis, function in zip(axes, functions):
        chosen = [
            r
            for r in rows
            if r["function"] == function
            and r["n"] == n
            and r["dtype"] == dtype
            and r["spectrum"].startswith("clustered")
        ]
        for method in dict.fromkeys(r["method"] for r in chosen):
            points = sorted(
                (r["min_gap"], r["median_relative_error"]) for r in chosen if r["method"] == method
            )
            gaps = [g for g, _ in points]
            errors = [e if e is not None else float("nan") for _, e in points]
            failed = [g for g, e in points if e is None]
            line = axis.plot(gaps, [max(e, 1e-17) for e in errors], marker="o", label=method)[0]
            if failed:
                axis.plot(failed, [1e3] * len(failed), "x", color=line.get_color(), markersize=9)
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.invert_xaxis()
        axis.set_xlabel("eigenvalue gap (eigenvalues 1 + k·gap)")
        axis.set_ylabel("relative gradient error vs float64 exact")
        axis.set_title(f"{function}, n={n}, {dtype} (x at top: non-finite)")
        axis.legend(fontsize=7, ncol=2)
    save_figure(figure, path)


def write(rows: list[dict[str, Any]], folder: Path, n: int = 64) -> None:
    """``bench_gradients.json`` (every row), ``.md`` and ``.png`` (size ``n``, float32)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_text(folder / "bench_gradients.json", json.dumps(rows, indent=0) + "\n")
    write_text(folder / "bench_gradients.md", summary_markdown(rows, n=n) + "\n")
    plot_gradients(rows, folder / "bench_gradients.png", n=n)
