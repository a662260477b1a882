"""``stableeig bench svd``: gradients and speed of the rotation / polar maps against the
code people use (issue 40).

Accuracy: the gradient of ``⟨G, R(A)⟩`` for the nearest rotation ``R`` (the 9-D map) at the
points where the SVD's gradient is in question, against an independent reference: central
differences of the same map computed with mpmath's SVD at 60 digits (step 1e-25; ``R`` is
smooth there, so the reference does not depend on the SVD's basis). Methods:
``se.special_orthogonalize``, the copied code (``torch.linalg.svd`` autograd with the
determinant flip), pytorch3d's ``corresponding_points_alignment`` algorithm (transcribed:
the package needs a compiled build), RoMa's ``special_procrustes`` (``pip install roma
--no-deps``).

Speed: forward + backward, median of interleaved repeats, ratio to the copied code, one
thread: ``B × 3×3`` rotations, and the polar factor of 64×64, 512×256 and 2048×1024
matrices.

Writes ``bench_svd.md`` and ``bench_svd.json`` (``--quick``: ``bench_svd_quick.*``).
"""

from __future__ import annotations

import platform
import statistics
import time
from typing import Any, Callable, Optional

import torch

import stableeig as se

__all__ = ["accuracy", "measure", "render", "speed"]

Method = Callable[[torch.Tensor], torch.Tensor]


def copied_rotation(M: torch.Tensor) -> torch.Tensor:
    U, _, Vh = torch.linalg.svd(M)
    flip = torch.ones_like(U[..., 0, :])
    flip[..., -1] = torch.sign(torch.linalg.det(U @ Vh))
    return (U * flip[..., None, :]) @ Vh


def copied_polar(M: torch.Tensor) -> torch.Tensor:
    U, _, Vh = torch.linalg.svd(M, full_matrices=False)
    return U @ Vh


def pytorch3d_rotation(M: torch.Tensor) -> torch.Tensor:
    """pytorch3d's ``corresponding_points_alignment`` algorithm, transcribed (it does not
    install here: a compiled extension): the SVD of the transposed cross-covariance by the
    deprecated ``torch.svd``, ``E = diag(1, …, 1, det(U Vᵀ))``, ``R = U E Vᵀ`` acting on row
    vectors, so the rotation of ``M`` is its transpose."""
    U, _, V = torch.svd(M.mT)
    E = torch.ones_like(U[..., 0, :])
    E[..., -1] = torch.sign(torch.linalg.det(U @ V.mT))
    return ((U * E[..., None, :]) @ V.mT).mT


def roma_rotation() -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
    try:
        import roma
    except ImportError:
        return None
    return lambda M: roma.special_procrustes(M)


def _rotation(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    Q = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))[0]
    return Q * torch.linalg.det(Q).sign()


def points(quick: bool) -> dict[str, torch.Tensor]:
    diagonal = lambda *v: torch.diag(torch.tensor(v, dtype=torch.float64))  # noqa: E731
    chosen = {
        "I₃": torch.eye(3, dtype=torch.float64),
        "diag(2,1,1)": diagonal(2.0, 1.0, 1.0),
        "exact rotation": _rotation(0),
        "diag(2,1,0)": diagonal(2.0, 1.0, 0.0),
        "generic": torch.randn(
            3, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64
        ),
    }
    for gap in (1e-3, 1e-6) if quick else (1e-3, 1e-6, 1e-9, 1e-12):
        chosen[f"gap {gap:g}"] = _rotation(2) @ diagonal(2.0, 1.0 + gap, 1.0) @ _rotation(3)
    return chosen


def reference_gradient(A: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """∂⟨G, R(A)⟩/∂A by central differences of mpmath's 60-digit SVD, step 1e-25."""
    import mpmath

    mpmath.mp.dps = 60

    def rotation(M: Any) -> Any:
        U, _, V = mpmath.svd_r(M)
        d = mpmath.sign(mpmath.det(U * V))
        flip = mpmath.diag([1, 1, d])
        return U * flip * V

    base = mpmath.matrix(A.tolist())
    weights = mpmath.matrix(G.tolist())
    h = mpmath.mpf("1e-25")
    grad = torch.zeros(3, 3, dtype=torch.float64)
    for i in range(3):
        for j in range(3):
            up, down = base.copy(), base.copy()
            up[i, j] += h
            down[i, j] -= h
            difference = rotation(up) - rotation(down)
            value = sum(weights[a, b] * difference[a, b] for a in range(3) for b in range(3))
            grad[i, j] = float(value / (2 * h))
    return grad


def gradient(method: Callable[[torch.Tensor], torch.Tensor], A: torch.Tensor,
             G: torch.Tensor) -> torch.Tensor:  # fmt: skip
    leaf = A.clone().requires_grad_()
    (G * method(leaf)).sum().backward()
    assert leaf.grad is not None
    return leaf.grad


def accuracy(quick: bool) -> list[dict[str, Any]]:
    G = torch.randn(3, 3, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    methods: dict[str, Method] = {
        "stableeig": se.special_orthogonalize,
        "torch.linalg.svd (copied)": copied_rotation,
        "pytorch3d (transcribed)": pytorch3d_rotation,
    }
    roma = roma_rotation()
    if roma is not None:
        methods["RoMa special_procrustes"] = roma
    rows = []
    for name, A in points(quick).items():
        expected = reference_gradient(A, G)
        for method, apply in methods.items():
            try:
                got = gradient(apply, A, G)
                finite = bool(torch.isfinite(got).all())
                error = float((got - expected).norm() / expected.norm()) if finite else None
                outcome = "finite" if finite else "NaN/Inf"
            except se.StableEigError as raised:
                error, outcome = None, type(raised).__name__
            rows.append({"point": name, "method": method, "outcome": outcome, "error": error})
    return rows


def _time(call: Callable[[], None], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        tick = time.perf_counter()
        call()
        times.append(time.perf_counter() - tick)
    return times


def rotation_methods() -> dict[str, Method]:
    """The nearest-rotation maps the speed and memory tables compare."""
    methods: dict[str, Method] = {
        "stableeig": se.special_orthogonalize,
        "stableeig, float32 compute": lambda M: se.special_orthogonalize(
            M, compute_dtype=torch.float32
        ),
        "copied": copied_rotation,
    }
    roma = roma_rotation()
    if roma is not None:
        methods["RoMa"] = roma
    return methods


def speed(quick: bool, repeats: int) -> list[dict[str, Any]]:
    torch.set_num_threads(1)
    rotations = rotation_methods()
    polars: dict[str, Method] = {
        "stableeig": se.polar,
        "stableeig, float32 compute": lambda M: se.polar(M, compute_dtype=torch.float32),
        "copied": copied_polar,
    }
    batches = (64, 1024) if quick else (64, 1024, 16384, 100_000)
    cases: list[tuple[str, tuple[int, ...], dict[str, Method]]] = [
        (f"{b} × 3×3 rotation", (b, 3, 3), rotations) for b in batches
    ]
    cases += [("64×64 polar", (64, 64), polars), ("512×256 polar", (512, 256), polars)]
    if not quick:
        cases.append(("2048×1024 polar", (2048, 1024), polars))
    rows = []
    for label, shape, methods in cases:
        A = torch.randn(*shape, generator=torch.Generator().manual_seed(4), dtype=torch.float32)
        G = torch.randn_like(A)

        def run(
            apply: Callable[[torch.Tensor], torch.Tensor], A: torch.Tensor = A,
            G: torch.Tensor = G,
        ) -> Callable[[], None]:  # fmt: skip
            def call() -> None:
                leaf = A.clone().requires_grad_()
                (G * apply(leaf)).sum().backward()

            return call

        for apply in methods.values():
            run(apply)()  # warm-up
        samples: dict[str, list[float]] = {name: [] for name in methods}
        for _ in range(repeats):  # interleaved: the machine's drift hits every method alike
            for name, apply in methods.items():
                samples[name] += _time(run(apply), 1)
        base = statistics.median(samples["copied"])
        for name, times in samples.items():
            rows.append({"case": label, "method": name, "median_s": statistics.median(times),
                         "ratio": statistics.median(times) / base})  # fmt: skip
    return rows


def saved_bytes(apply: Callable[[torch.Tensor], torch.Tensor], A: torch.Tensor) -> int:
    """Bytes autograd keeps for the backward of ``apply(A)`` (every saved tensor once): the
    memory a training step holds per call."""
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        seen[id(tensor)] = tensor.numel() * tensor.element_size()
        return tensor

    leaf = A.clone().requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        apply(leaf).sum()
    return sum(seen.values())


def memory(quick: bool) -> list[dict[str, Any]]:
    """Saved-for-backward bytes per 3×3 matrix at B = 16,384 (1,024 quick)."""
    count = 1024 if quick else 16384
    A = torch.randn(count, 3, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float32)
    methods = rotation_methods()
    return [{"method": name, "batch": count, "bytes_per_matrix": saved_bytes(apply, A) / count}
            for name, apply in methods.items()]  # fmt: skip


def render(result: dict[str, Any]) -> str:
    lines = [
        "# The rotation and polar maps against the code people use",
        "",
        f"`stableeig bench svd`; {result['machine']}, torch {result['torch']}.",
        "",
        "## Gradient of ⟨G, R(A)⟩, nearest rotation, float64, relative error against "
        "60-digit mpmath differences",
        "",
    ]
    methods = list(dict.fromkeys(r["method"] for r in result["accuracy"]))
    lines += ["| point | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for point in dict.fromkeys(r["point"] for r in result["accuracy"]):
        cells = []
        for method in methods:
            row = next(
                r for r in result["accuracy"] if r["point"] == point and r["method"] == method
            )
            cells.append(f"{row['error']:.1e}" if row["error"] is not None else row["outcome"])
        lines.append(f"| {point} | " + " | ".join(cells) + " |")
    lines += ["", "## Forward + backward, float32 input, one thread: median seconds "
              "(ratio to the copied code)", ""]  # fmt: skip
    methods = list(dict.fromkeys(r["method"] for r in result["speed"]))
    lines += ["| case | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for case in dict.fromkeys(r["case"] for r in result["speed"]):
        cells = []
        for method in methods:
            row = next((r for r in result["speed"] if r["case"] == case and r["method"] == method),
                       None)  # fmt: skip
            cells.append("—" if row is None else f"{row['median_s']:.3g} ({row['ratio']:.2f}×)")
        lines.append(f"| {case} | " + " | ".join(cells) + " |")
    if result.get("memory"):
        count = result["memory"][0]["batch"]
        lines += ["", f"## Memory kept for the backward, {count:,} × 3×3 rotations (bytes per "
                  "matrix)", "", "| method | bytes |", "|---|---|"]  # fmt: skip
        for row in result["memory"]:
            lines.append(f"| {row['method']} | {row['bytes_per_matrix']:.0f} |")
    return "\n".join(lines) + "\n"


def measure(quick: bool = False, repeats: int = 7) -> dict[str, Any]:
    """Both tables' rows, with the machine and torch version."""
    return {
        "machine": f"{platform.processor() or platform.machine()}",
        "torch": torch.__version__,
        "accuracy": accuracy(quick),
        "speed": speed(quick, 3 if quick else repeats),
        "memory": memory(quick),
    }
