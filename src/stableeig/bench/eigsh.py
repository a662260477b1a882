"""``stableeig bench eigsh``: partial eigenproblems of graph Laplacians (issue 41).

Accuracy, on a weighted grid graph of ~2,000 nodes (k = 16 smallest, the Laplacian
positional encoding): eigenvalues against ``scipy.sparse.linalg.eigsh``; the gradients of
``Σλ`` and of ``⟨G, V Vᵀ⟩`` with respect to the edge weights against float64
``torch.linalg.eigh`` autograd of the dense Laplacian; ``torch.lobpcg`` beside them.

Speed, on a grid of ~10⁵ nodes (one thread, seconds; ``--quick``: ~10⁴): the forward of
``scipy.sparse.linalg.eigsh`` (plain and shift-invert), of ``se.eigsh`` in both modes and
of ``torch.lobpcg``; ``se.eigsh``'s backward (the adjoint solves) after each. scipy and
``se.eigsh`` start from the same vectors (medians over three for shift-invert).

Writes ``bench_eigsh.md`` and ``bench_eigsh.json`` (``--quick``: ``bench_eigsh_quick.*``).
"""

from __future__ import annotations

import platform
import time
from typing import Any, Callable, Optional

import torch

import stableeig as se

__all__ = ["accuracy", "grid_graph", "laplacian", "measure", "render", "speed"]

K = 16
SHIFT = -1e-3  # below a Laplacian's spectrum (its smallest eigenvalue is 0)


def grid_graph(side: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(source, target, weight)`` of a side × side grid, weights uniform in [0.5, 1.5]."""
    index = torch.arange(side * side).view(side, side)
    source = torch.cat([index[:, :-1].flatten(), index[:-1, :].flatten()])
    target = torch.cat([index[:, 1:].flatten(), index[1:, :].flatten()])
    generator = torch.Generator().manual_seed(seed)
    weight = 0.5 + torch.rand(source.numel(), generator=generator, dtype=torch.float64)
    return source, target, weight


def laplacian(n: int, source: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
              dense: bool = False) -> torch.Tensor:  # fmt: skip
    """``D - W`` (sparse COO, or dense), differentiable in ``weight``."""
    rows = torch.cat([source, target, source, target])
    cols = torch.cat([target, source, source, target])
    values = torch.cat([-weight, -weight, weight, weight])
    if dense:
        return torch.zeros(n, n, dtype=weight.dtype).index_put(
            (rows, cols), values, accumulate=True
        )
    return torch.sparse_coo_tensor(torch.stack([rows, cols]), values, (n, n)).coalesce()


def _losses(values: torch.Tensor, vectors: torch.Tensor, G: torch.Tensor) -> list[torch.Tensor]:
    return [values.sum(), (G * (vectors @ vectors.T)).sum()]


def _edge_gradients(make: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
                    weight: torch.Tensor, G: torch.Tensor) -> list[torch.Tensor]:  # fmt: skip
    grads = []
    for index in range(2):
        leaf = weight.clone().requires_grad_()
        values, vectors = make(leaf)
        (grad,) = torch.autograd.grad(_losses(values, vectors, G)[index], leaf)
        grads.append(grad)
    return grads


def accuracy(quick: bool) -> list[dict[str, Any]]:
    import scipy.sparse.linalg as sparse_linalg

    side = 20 if quick else 45
    n = side * side
    source, target, weight = grid_graph(side)
    G = torch.randn(n, n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    G = (G + G.T) / 2
    sparse = laplacian(n, source, target, weight)
    indices = sparse.indices().numpy()
    import scipy.sparse

    matrix = scipy.sparse.csr_matrix(
        (sparse.values().numpy(), (indices[0], indices[1])), shape=(n, n)
    )
    reference_values = (
        torch.from_numpy(sparse_linalg.eigsh(matrix, k=K, sigma=SHIFT, which="LM")[0]).sort().values
    )

    def dense_eigh(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        values, vectors = torch.linalg.eigh(laplacian(n, source, target, w, dense=True))
        return values[:K], vectors[:, :K]

    expected = _edge_gradients(dense_eigh, weight, G)
    methods: dict[str, Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]] = {
        "se.eigsh (ARPACK)": lambda w: se.eigsh(
            laplacian(n, source, target, w),
            K,
            which="smallest",
            generator=torch.Generator().manual_seed(0),
        ),
        "se.eigsh (shift-invert)": lambda w: se.eigsh(
            laplacian(n, source, target, w),
            K,
            which="smallest",
            sigma=SHIFT,
            generator=torch.Generator().manual_seed(0),
        ),
        "torch.lobpcg": lambda w: torch.lobpcg(
            laplacian(n, source, target, w),
            k=K,
            largest=False,
            niter=200,
            tol=1e-10,
            X=torch.randn(n, K, generator=torch.Generator().manual_seed(0), dtype=torch.float64),
        ),
    }
    rows = []
    for name, make in methods.items():
        row: dict[str, Any] = {"method": name, "n": n}
        try:
            values, _ = make(weight)
            row["values"] = float(
                ((values.detach() - reference_values).abs() / reference_values.abs().max()).max()
            )
        except Exception as raised:  # a peer's failure is a result here
            row["values"] = f"{type(raised).__name__}"
        for label, index in (("grad Σλ", 0), ("grad ⟨G, P⟩", 1)):
            try:
                got = _edge_gradients(make, weight, G)[index]
                row[label] = float(
                    (got - expected[index]).abs().max() / expected[index].abs().max()
                )
            except Exception as raised:
                row[label] = f"{type(raised).__name__}: {str(raised).splitlines()[0][:60]}"
        rows.append(row)
    return rows


def _timed(call: Callable[[], Any]) -> tuple[float, Any]:
    tick = time.perf_counter()
    result = call()
    return time.perf_counter() - tick, result


def speed(quick: bool) -> list[dict[str, Any]]:
    import scipy.sparse

    torch.set_num_threads(1)
    side = 100 if quick else 316
    n = side * side
    source, target, weight = grid_graph(side)
    sparse = laplacian(n, source, target, weight)
    indices = sparse.indices().numpy()
    matrix = scipy.sparse.csr_matrix(
        (sparse.values().numpy(), (indices[0], indices[1])), shape=(n, n)
    )
    G = torch.randn(n, K, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    se.eigsh(laplacian(9, *grid_graph(3)), 2)  # imports and first-call set-up, untimed
    rows: list[dict[str, Any]] = []
    for label, shift, runs in (("plain", None, 1), ("shift-invert", SHIFT, 3)):
        rows += _speed_rows(label, shift, matrix, n, (source, target, weight), G, runs)
    X = torch.randn(n, K, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    try:
        seconds, _ = _timed(lambda: torch.lobpcg(sparse, k=K, X=X, largest=False, niter=200))
        rows.append({"method": "torch.lobpcg (200 iterations)", "n": n, "forward_s": seconds,
                     "runs": 1})  # fmt: skip
    except Exception as raised:
        rows.append({"method": "torch.lobpcg", "n": n, "forward_s": type(raised).__name__})
    return rows


def _speed_rows(
    label: str, shift: Optional[float], matrix: Any, n: int,
    graph: tuple[torch.Tensor, ...], G: torch.Tensor, runs: int,
) -> list[dict[str, Any]]:  # fmt: skip
    """Both solvers from the same start vectors (ARPACK's iteration count depends on it),
    each operator built before the clock starts; medians over ``runs`` start vectors."""

    which = "SA" if shift is None else "LM"
    times = [_one_run(run, shift, which, matrix, n, graph, G) for run in range(runs)]
    reference, forward, backward, agreement = (list(column) for column in zip(*times))
    return [
        {"method": f"scipy eigsh ({label})", "n": n, "forward_s": _median(reference),
         "runs": runs},
        {"method": f"se.eigsh ({label})", "n": n, "forward_s": _median(forward),
         "backward_s": _median(backward), "runs": runs, "values_vs_scipy": max(agreement)},
    ]  # fmt: skip


def _one_run(
    run: int, shift: Optional[float], which: str, matrix: Any, n: int,
    graph: tuple[torch.Tensor, ...], G: torch.Tensor,
) -> tuple[float, float, float, float]:  # fmt: skip
    """Seconds of scipy's forward, ours and our backward from start vector number ``run``,
    and the largest relative difference between the two solvers' eigenvalues."""
    import scipy.sparse.linalg as sparse_linalg

    source, target, weight = graph
    start = torch.randn(n, generator=torch.Generator().manual_seed(run), dtype=torch.float64)
    reference, (scipy_values, _) = _timed(
        lambda: sparse_linalg.eigsh(matrix, k=K, sigma=shift, which=which, v0=start.numpy())
    )
    operator = laplacian(n, source, target, weight.clone().requires_grad_())
    forward, (values, vectors) = _timed(
        lambda: se.eigsh(operator, K, which="smallest", sigma=shift, v0=start)
    )
    backward, _ = _timed(lambda: (values.sum() + (G * vectors).sum()).backward())
    expected = torch.from_numpy(scipy_values).sort().values
    agreement = float(((values.detach() - expected).abs() / expected.abs().max()).max())
    return reference, forward, backward, agreement


def _median(samples: list[float]) -> float:
    return sorted(samples)[len(samples) // 2]


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2e}" if value < 0.01 else f"{value:.3g}"
    return "—" if value is None else str(value)


def render(result: dict[str, Any]) -> str:
    lines = [
        "# Partial eigenproblems of graph Laplacians",
        "",
        f"`stableeig bench eigsh`; {result['machine']}, torch {result['torch']}, one thread.",
        "",
        f"## Accuracy: k = {K} smallest, weighted grid, n = {result['accuracy'][0]['n']}",
        "",
        "Relative errors: eigenvalues against scipy (shift-invert), edge-weight gradients "
        "against float64 `torch.linalg.eigh` autograd of the dense Laplacian.",
        "",
        "| method | eigenvalues | grad Σλ | grad ⟨G, V Vᵀ⟩ |",
        "|---|---|---|---|",
    ]
    for row in result["accuracy"]:
        lines.append(f"| {row['method']} | {_cell(row['values'])} | {_cell(row['grad Σλ'])} | "
                     f"{_cell(row['grad ⟨G, P⟩'])} |")  # fmt: skip
    lines += [
        "", f"## Speed: k = {K} smallest, weighted grid, n = {result['speed'][0]['n']}, seconds",
        "", "Medians over `runs` start vectors, the same for scipy and `se.eigsh` (ARPACK's "
        "iteration count depends on it); each operator built before the clock starts.",
        "", "| method | forward | backward | runs | eigenvalues vs scipy (max relative) |",
        "|---|---|---|---|---|",
    ]  # fmt: skip
    for row in result["speed"]:
        lines.append(
            f"| {row['method']} | {_cell(row['forward_s'])} | {_cell(row.get('backward_s'))} | "
            f"{row.get('runs', 1)} | {_cell(row.get('values_vs_scipy'))} |"
        )
    return "\n".join(lines) + "\n"


def measure(quick: bool = False) -> dict[str, Any]:
    return {
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "accuracy": accuracy(quick),
        "speed": speed(quick),
    }
