"""``stableeig bench small``: many small matrices (issue 42).

Forward + backward of ``logm``, of the smallest eigenvector (point-cloud normals) and of the
nearest rotation (``special_orthogonalize``: Kabsch frames) on ``B × n×n`` batches, float32
input, one thread, against the code people write with ``torch.linalg.eigh`` or
``torch.linalg.svd`` autograd (float32 LAPACK) and against our own LAPACK path
(``eigh_driver("lapack")``), median of interleaved repeats; ``n = 22`` (SPDNet) keeps
LAPACK under ``"auto"``. A crossover table times the Jacobi sweeps alone against LAPACK for
n = 2 … 8.

Writes ``bench_small.md`` and ``bench_small.json`` (``--quick``: ``bench_small_quick.*``).
"""

from __future__ import annotations

import platform
import statistics
import time
from typing import Any, Callable

import torch

import stableeig as se

__all__ = ["STORIES", "crossover", "measure", "ours_under", "render"]


def _copied_logm(A: torch.Tensor) -> torch.Tensor:
    w, V = torch.linalg.eigh(A)
    return (V * torch.log(w)[..., None, :]) @ V.mT


def _copied_normal(A: torch.Tensor) -> torch.Tensor:
    return torch.linalg.eigh(A)[1][..., 0].abs()


def _copied_rotation(M: torch.Tensor) -> torch.Tensor:
    """Kabsch's rotation as it is copied: SVD, then the last column's sign fixed by det."""
    U, _, Vh = torch.linalg.svd(M)
    d = torch.linalg.det(U @ Vh)
    return torch.cat([U[..., :-1], U[..., -1:] * d[..., None, None]], -1) @ Vh


def ours_under(function: Callable[..., torch.Tensor], driver: str,
               compute: Any = None) -> Callable[[torch.Tensor], torch.Tensor]:  # fmt: skip
    """``function`` (of ``(A, compute_dtype)``) under ``eigh_driver(driver)``."""

    def call(A: torch.Tensor) -> torch.Tensor:
        with se.eigh_driver(driver):
            return function(A) if compute is None else function(A, compute)

    return call


def _logm(A: torch.Tensor, compute: Any = None) -> torch.Tensor:
    return se.logm(A, compute_dtype=compute)


def _normal(A: torch.Tensor, compute: Any = None) -> torch.Tensor:
    return se.extreme_eigenvector(A, compute_dtype=compute).vector.abs()


def _rotation(M: torch.Tensor, compute: Any = None) -> torch.Tensor:
    return se.special_orthogonalize(M, compute_dtype=compute)


def _general(count: int, n: int) -> torch.Tensor:
    return torch.randn(count, n, n, generator=torch.Generator().manual_seed(0))


def _batch(count: int, n: int) -> torch.Tensor:
    X = torch.randn(count, n, n, generator=torch.Generator().manual_seed(0))
    return X @ X.mT / n + 0.1 * torch.eye(n)


STORIES = {
    "logm": (_copied_logm, _logm, _batch),
    "normal": (_copied_normal, _normal, _batch),
    "rotation": (_copied_rotation, _rotation, _general),
}
"""Each story: the code people copy, ours (``(A, compute_dtype)``) and its input
``(count, n)``; ``benchmarks/small_gpu.py`` times the same three on a GPU."""


def measure(quick: bool = False, repeats: int = 5) -> dict[str, Any]:
    torch.set_num_threads(1)
    cases = [(3, b) for b in ((1024, 10_000) if quick else (4096, 10_000, 100_000, 1_000_000))]
    cases += [(2, 10_000 if quick else 100_000), (4, 10_000 if quick else 100_000)]
    cases += [(22, 256 if quick else 4096)]
    rows = []
    for story, (copied, ours, make) in STORIES.items():
        for n, count in cases:
            if story == "rotation" and n not in (2, 3):
                continue
            A = make(count, n)
            methods = {
                "torch.linalg autograd": copied,
                "stableeig, LAPACK path": ours_under(ours, "lapack"),
                "stableeig (auto)": ours_under(ours, "auto"),
                "stableeig (auto), float32 compute": ours_under(ours, "auto", torch.float32),
            }
            G = torch.randn_like(copied(A))
            samples: dict[str, list[float]] = {name: [] for name in methods}
            for _ in range(1 if count >= 1_000_000 else repeats):
                for name, method in methods.items():  # interleaved
                    leaf = A.clone().requires_grad_()
                    tick = time.perf_counter()
                    (G * method(leaf)).sum().backward()
                    samples[name].append(time.perf_counter() - tick)
            base = statistics.median(samples["torch.linalg autograd"])
            for name, times in samples.items():
                rows.append({"story": story, "n": n, "batch": count, "method": name,
                             "median_s": statistics.median(times),
                             "speedup": base / statistics.median(times)})  # fmt: skip
    return {"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
            "rows": rows, "crossover": crossover(quick)}  # fmt: skip


def crossover(quick: bool = False, repeats: int = 3) -> list[dict[str, Any]]:
    """Forward only, float64, one thread: ``torch.linalg.eigh`` against the Jacobi sweeps
    alone (a lower bound on the Jacobi solver's time: no orthonormalization, no sorting, at
    most 5 sweeps) on ``B × n×n``, for the sizes where the batched path could take over."""
    from stableeig.small import _entries, _jacobi_columns

    torch.set_num_threads(1)
    count = 10_000 if quick else 100_000
    rows = []
    for n in (2, 3, 4, 5, 6, 8):
        A = _batch(count, n).double()

        def sweeps(A: torch.Tensor, n: int = n) -> None:
            for chunk in A.split(1 << 15):
                x, _ = _entries(chunk)
                entries = {(i, j): x[i][j] for i in range(n) for j in range(i, n)}
                _jacobi_columns(entries, n, sweeps=5)

        samples: dict[str, list[float]] = {"lapack": [], "jacobi": []}
        for _ in range(repeats):
            for name, call in (("lapack", torch.linalg.eigh), ("jacobi", sweeps)):
                tick = time.perf_counter()
                call(A)
                samples[name].append(time.perf_counter() - tick)
        lapack, jacobi = (statistics.median(samples[k]) for k in ("lapack", "jacobi"))
        rows.append({"n": n, "batch": count, "lapack_s": lapack, "jacobi_sweeps_s": jacobi,
                     "ratio": jacobi / lapack})  # fmt: skip
    return rows


def render(result: dict[str, Any]) -> str:
    lines = [
        "# Many small matrices: forward + backward, float32 input, one thread",
        "",
        f"`stableeig bench small`; {result['machine']}, torch {result['torch']}. Median "
        "seconds (speed-up over `torch.linalg` autograd: `eigh` for logm and normals, `svd` "
        "with the determinant's sign fix for the rotation).",
        "",
    ]
    methods = list(dict.fromkeys(r["method"] for r in result["rows"]))
    lines += ["| story | B × n×n | " + " | ".join(methods) + " |",
              "|---|---|" + "---|" * len(methods)]  # fmt: skip
    keys = dict.fromkeys((r["story"], r["n"], r["batch"]) for r in result["rows"])
    for story, n, count in keys:
        cells = []
        for method in methods:
            row = next(r for r in result["rows"] if (r["story"], r["n"], r["batch"], r["method"])
                       == (story, n, count, method))  # fmt: skip
            cells.append(f"{row['median_s']:.3g} ({row['speedup']:.2f}×)")
        lines.append(f"| {story} | {count:,} × {n}×{n} | " + " | ".join(cells) + " |")
    if result.get("crossover"):
        lines += [
            "", "## Crossover: forward only, float64, one thread", "",
            "The Jacobi sweeps alone (a lower bound on that path) against `torch.linalg.eigh`; "
            "the batched eigensolver takes n <= 4 (the whole path, with its orthonormalization and "
            "sorting, beats our LAPACK path there: the table above).", "",
            "| B × n×n | torch.linalg.eigh | Jacobi sweeps | ratio |", "|---|---|---|---|",
        ]  # fmt: skip
        for row in result["crossover"]:
            lines.append(f"| {row['batch']:,} × {row['n']}×{row['n']} | {row['lapack_s']:.3g} | "
                         f"{row['jacobi_sweeps_s']:.3g} | {row['ratio']:.2f} |")  # fmt: skip
    return "\n".join(lines) + "\n"
