"""``stableeig reproduce wide``: whitening d = 128 … 1024 channels in one group.

The paper's abstract claims the method "can handle large matrices without requiring to
split them"; its own largest group is d = 64. This table whitens the hidden layers of an
MLP on Fashion-MNIST, each in **one group of d channels** (decorrelated batch
normalization's placement, Huang et al. 2018)::

    flatten → Linear(784, d) → norm(d) → ReLU → Linear(d, d) → norm(d) → ReLU → Linear(d, 10)

``norm`` is ``nn.BatchNorm1d`` (the reference) or ``ZCAWhitening1d(d, group_size=d)`` with
one gradient rule (ε = 1e-4, float32 decomposition, our default convention: the paper's
truncation for ``power`` with closed-form deflated Rayleigh quotients — the reference's
step-by-step deflation costs 3.4 s per call at d = 1024 — and SGD lr 0.1 with momentum 0.9
and weight decay 5e-4, batch 128, as the ZCA table).
The ZCA layers keep a running **covariance** (``running="covariance"``), whitened in eval:
with fewer samples than channels each batch's whitening matrix multiplies the directions
that batch did not span by ``1/√ε = 100``, and the paper's running average of whitening
matrices carries those factors in random directions into eval (measured: train loss 0.59,
test error 74–79 % for ``analytic``/``taylor``/``loewner`` at d = 128, 300 steps; ``power``,
which zeroes what it truncates, 21.9 %; BatchNorm 15.5 %).

With a batch of 128 and d ≥ 128 every batch covariance is rank-deficient (rank ≤ 127), so
at least ``d − 127`` eigenvalues sit at ε, tied to the float32 round-off: the regime where
the eigenvector gradient ``1/(λᵢ − λⱼ)`` is unbounded.

Every :data:`MEASURE_EVERY` steps the first layer's real batch covariance is saved and
each rule's gradient of ``⟨G, (Σ + εI)^{-1/2}⟩`` (float32 decomposition, as trained) is
compared with the exact one (``loewner`` in float64), for a fixed random symmetric ``G``:
the relative Frobenius error goes into the row (``gradient_errors``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from .. import nn as se_nn
from ..spectral import inv_sqrtm
from .data import Dataset
from .files import read_text

__all__ = ["MEASURED_RULES", "METHODS", "WIDTHS", "WideConfig", "mlp", "run", "train_wide"]

METHODS = ("batchnorm", "analytic", "pi", "power", "taylor", "loewner")
WIDTHS = (128, 256, 512, 1024)
MEASURED_RULES = ("analytic", "power", "taylor", "loewner")
MEASURE_EVERY = 100


@dataclasses.dataclass(frozen=True)
class WideConfig:
    method: str = "loewner"
    width: int = 256
    seed: int = 0
    steps: int = 500
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    eps: float = 1e-4
    test_subset: Optional[int] = None
    measure: bool = True
    running: str = "covariance"


def mlp(
    method: str,
    width: int,
    eps: float = 1e-4,
    classes: int = 10,
    running: str = "covariance",
    in_features: int = 784,
) -> nn.Sequential:
    """The network above; ``method`` a gradient rule or ``"batchnorm"``; ``running`` the ZCA
    layers' eval statistics (see the module docstring)."""

    def norm() -> nn.Module:
        if method == "batchnorm":
            return nn.BatchNorm1d(width)
        return se_nn.ZCAWhitening1d(
            width, group_size=width, eps=eps, method=method, running=running,
            compute_dtype=torch.float32,
        )  # fmt: skip

    return nn.Sequential(
        nn.Flatten(), nn.Linear(in_features, width), norm(), nn.ReLU(),
        nn.Linear(width, width), norm(), nn.ReLU(), nn.Linear(width, classes),
    )  # fmt: skip


def _features(images: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    return (images.float() / 255 - mean) / std


def gradient_errors(covariance: torch.Tensor, eps: float, seed: int) -> dict[str, float]:
    """Each measured rule's relative error of ``∂⟨G, (Σ + εI)^{-1/2}⟩/∂Σ`` (float32
    decomposition) against ``loewner`` in float64, ``G`` symmetric random from ``seed``."""
    n = covariance.shape[-1]
    g = torch.Generator().manual_seed(seed)
    G = torch.randn(n, n, generator=g, dtype=torch.float64)
    G = (G + G.mT) / 2
    A64 = covariance.double() + eps * torch.eye(n, dtype=torch.float64)

    def gradient(rule: str, dtype: torch.dtype) -> torch.Tensor:
        A = A64.to(dtype).requires_grad_()
        (grad,) = torch.autograd.grad(
            (inv_sqrtm(A, backward=rule, compute_dtype=dtype) * G.to(dtype)).sum(), A
        )
        return grad.double()

    exact = gradient("loewner", torch.float64)
    scale = float(exact.norm())
    errors = {}
    for rule in MEASURED_RULES:
        try:
            value = float((gradient(rule, torch.float32) - exact).norm()) / scale
        except (ValueError, RuntimeError):  # a rule refusing the matrix
            value = math.inf
        errors[rule] = value if math.isfinite(value) else math.inf
    return errors


def train_wide(config: WideConfig, dataset: Dataset) -> dict[str, Any]:
    """One run: ``{"success", "test_error", "failure_step", "failure_reason", "seconds",
    "seconds_per_step", "losses", "gradient_errors"}``; a numerical failure (non-finite or
    diverged loss, non-finite gradient, a refused forward or backward) is recorded, never
    raised."""
    images = dataset.train_images
    mean = float(images.float().mean() / 255)
    std = float((images.float() / 255).std())
    test = _features(dataset.test_images, mean, std)
    test_labels = dataset.test_labels
    if config.test_subset is not None:
        test, test_labels = test[: config.test_subset], test_labels[: config.test_subset]
    torch.manual_seed(config.seed)
    model = mlp(
        config.method, config.width, config.eps, dataset.num_classes, config.running,
        in_features=images[0].numel(),
    )  # fmt: skip
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum,
        weight_decay=config.weight_decay,
    )  # fmt: skip
    generator = torch.Generator().manual_seed(config.seed)
    seen: dict[str, torch.Tensor] = {}
    hook = model[2].register_forward_pre_hook(lambda _, inputs: seen.update(x=inputs[0]))
    losses: list[float] = []
    window: list[float] = []
    measured: list[dict[str, Any]] = []
    first: Optional[float] = None
    start = time.perf_counter()
    measuring = 0.0

    def failed(step: int, why: str) -> dict[str, Any]:
        return _outcome(False, None, step, why, start, measuring, step, losses, measured)

    for step in range(config.steps):
        index = torch.randint(0, len(images), (config.batch_size,), generator=generator)
        batch = _features(images[index], mean, std)
        try:
            loss = nn.functional.cross_entropy(model(batch), dataset.train_labels[index])
            value = float(loss.detach())
            if not math.isfinite(value):
                return failed(step, "non-finite loss")
            first = value if first is None else first
            if value > 10 * first:
                return failed(step, f"diverged: loss {value:.3g} > 10 x initial {first:.3g}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        except (ValueError, RuntimeError) as error:
            return failed(step, f"raised {type(error).__name__}: {str(error)[:120]}")
        if not all(p.grad is None or bool(p.grad.isfinite().all()) for p in model.parameters()):
            return failed(step, "non-finite gradient")
        optimizer.step()
        window.append(value)
        if (step + 1) % MEASURE_EVERY == 0 or step == 0:
            if window:
                losses.append(sum(window) / len(window))
                window = []
            if config.measure and config.method != "batchnorm":
                tick = time.perf_counter()
                x = seen["x"].detach().double()
                centered = x - x.mean(0)
                covariance = centered.mT @ centered / len(x)
                errors = gradient_errors(covariance, config.eps, config.seed * 100003 + step)
                measured.append({"step": step + 1, **errors})
                measuring += time.perf_counter() - tick
    hook.remove()
    model.eval()
    with torch.no_grad():
        wrong = sum(
            int((model(test[i : i + 1000]).argmax(1) != test_labels[i : i + 1000]).sum())
            for i in range(0, len(test), 1000)
        )
    test_error = 100.0 * wrong / max(len(test), 1)
    steps = config.steps
    return _outcome(True, test_error, None, None, start, measuring, steps, losses, measured)


def _outcome(
    success: bool, error: Optional[float], step: Optional[int], why: Optional[str],
    start: float, measuring: float, steps: int, losses: list[float],
    measured: list[dict[str, Any]],
) -> dict[str, Any]:  # fmt: skip
    seconds = time.perf_counter() - start
    return {
        "success": success, "test_error": error, "failure_step": step, "failure_reason": why,
        "seconds": seconds,
        "seconds_per_step": round((seconds - measuring) / max(steps, 1), 4),
        "losses": losses, "gradient_errors": measured,
    }  # fmt: skip


def run(
    dataset: Dataset, results: Path, seeds: int = 5, steps: int = 300,
    widths: tuple[int, ...] = WIDTHS, methods: tuple[str, ...] = METHODS,
    seeds_at_1024: int = 3, batch_size: int = 128,
) -> list[dict[str, Any]]:  # fmt: skip
    """Every width × method × seed not yet in ``results`` (JSONL), one row per run; seed
    by seed, so that an interrupted table has every cell at the same depth."""
    from . import reproduce as rp

    def runner(cell: rp.Cell) -> tuple[dict[str, Any], dict[str, Any]]:
        assert cell.group_size is not None
        config = WideConfig(
            method=cell.method, width=cell.group_size, seed=cell.seed, steps=steps,
            batch_size=batch_size,
        )  # fmt: skip
        return train_wide(config, dataset), dataclasses.asdict(config)

    cells = [
        rp.Cell("wide", method, d, seed)
        for seed in range(seeds)
        for d in widths
        if seed < (seeds_at_1024 if d >= 1024 else seeds)
        for method in methods
    ]
    return rp.run_cells(cells, dataset, f"steps{steps}", results, progress=False, runner=runner)


def floor_seconds(widths: tuple[int, ...] = WIDTHS, repeats: int = 5) -> dict[str, float]:
    """The floor of one step's decomposition: the median time of one float32 LAPACK ``eigh``
    of a d × d covariance (1 thread as the runs), per width."""
    import statistics as stats

    floors = {}
    for d in widths:
        g = torch.Generator().manual_seed(d)
        x = torch.randn(128, d, generator=g)
        A = x.T @ x / 128 + 1e-4 * torch.eye(d)
        times = []
        for _ in range(repeats):
            tick = time.perf_counter()
            torch.linalg.eigh(A)
            times.append(time.perf_counter() - tick)
        floors[str(d)] = stats.median(times)
    return floors


def read_floors(path: Path) -> Optional[dict[str, float]]:
    """``wide_floor.json`` (:func:`floor_seconds`): width → seconds, or None where it is
    absent or malformed (a warning says which; the tables render without the floor)."""
    if not path.is_file():
        return None
    try:
        floors = json.loads(read_text(path))
        if isinstance(floors, dict) and all(
            isinstance(k, str) and k.isascii() and k.isdigit()
            and isinstance(v, (int, float)) and not isinstance(v, bool)
            and math.isfinite(v) and 0 < v < 1e6
            for k, v in floors.items()
        ):  # fmt: skip
            return {k: float(v) for k, v in floors.items()}
        problem = "expected an object of width: seconds"
    except (OSError, ValueError) as error:
        problem = str(error)
    print(f"warning: {path}: ignored ({problem})", file=sys.stderr)
    return None


def _median(values: list[float]) -> Optional[float]:
    import statistics as stats

    finite = [v for v in values if math.isfinite(v)]
    return stats.median(finite) if finite else None


def gradient_error_summary(rows: list[dict[str, Any]]) -> dict[tuple[int, str], dict[str, Any]]:
    """Per (width, rule): median relative gradient error over every covariance measured in
    every run of that width (all methods' runs), and the share of measurements where the
    rule's gradient was non-finite or refused."""
    collected: dict[tuple[int, str], list[float]] = {}
    for row in rows:
        for point in row.get("gradient_errors") or []:
            for rule in MEASURED_RULES:
                if rule in point:
                    collected.setdefault((row["group_size"], rule), []).append(point[rule])
    summary = {}
    for key, values in collected.items():
        bad = sum(not math.isfinite(v) for v in values)
        summary[key] = {"median": _median(values), "non_finite": bad, "count": len(values)}
    return summary


def render(rows: list[dict[str, Any]], floors: Optional[dict[str, float]] = None) -> str:
    """The large-d table: per width and method, success with Wilson CI, test error, the
    "trained" rate (below 1.5 × that width's BatchNorm mean), Fisher p against ``power``
    and against ``loewner`` (finished runs), the final training loss, seconds per step;
    then the gradient-error table per width and rule, with the decomposition floor."""
    from . import reproduce as rp

    rows = rp.unique_rows(rows)
    widths = sorted({r["group_size"] for r in rows})
    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    lines = [
        "| d | method | success | test error % (min, mean±std) | trained | "
        "Fisher p vs power | Fisher p vs loewner | final train loss (mean) | s/step (median) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for d in widths:
        at_d = [r for r in rows if r["group_size"] == d]
        threshold = rp.trained_threshold(at_d)
        for method in methods:
            cell = [r for r in at_d if r["method"] == method]
            if not cell:
                continue
            rate, error = rp._summary(cell)
            good = sum(rp.trained(r, threshold) for r in cell)
            p_values = []
            for anchor_method in ("power", "loewner"):
                anchor = [r for r in at_d if r["method"] == anchor_method]
                if method == anchor_method or not anchor:
                    p_values.append("")
                    continue
                a = sum(r["success"] for r in cell)
                b = sum(r["success"] for r in anchor)
                p_values.append(rp._p(rp.fisher_exact(a, len(cell) - a, b, len(anchor) - b)))
            losses = [r["losses"][-1] for r in cell if r["success"] and r.get("losses")]
            loss = f"{sum(losses) / len(losses):.3f}" if losses else "—"
            per_step = _median([r["seconds_per_step"] for r in cell if r["success"]])
            seconds = f"{per_step:.3g}" if per_step is not None else "—"
            lines.append(
                f"| {d} | {method} | {rate} | {error} | {rp._rate(good, len(cell))} | "
                f"{p_values[0]} | {p_values[1]} | {loss} | {seconds} |"
            )
    summary = gradient_error_summary(rows)
    lines += [
        "",
        "Gradient of ⟨G, (Σ + εI)^{-1/2}⟩ on the real first-layer covariances met during "
        "training (every 100 steps, every run of that width), float32 decomposition, relative "
        "error against `loewner` in float64: median (non-finite or refused / measured).",
        "",
        "| d | " + " | ".join(MEASURED_RULES) + " | floor: one float32 `eigh` (s) |",
        "|---|" + "---|" * (len(MEASURED_RULES) + 1),
    ]
    for d in widths:
        cells = []
        for rule in MEASURED_RULES:
            entry = summary.get((d, rule))
            if entry is None:
                cells.append("—")
                continue
            median = entry["median"]
            shown = f"{median:.2g}" if median is not None else "all non-finite"
            cells.append(f"{shown} ({entry['non_finite']}/{entry['count']})")
        floor = (floors or {}).get(str(d))
        shown_floor = f"{floor:.3g}" if floor is not None else "—"
        lines.append(f"| {d} | " + " | ".join(cells) + f" | {shown_floor} |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path, floors: Optional[dict[str, float]] = None) -> None:
    """Success rate, seconds per step (with the floor) and gradient error against d."""
    import matplotlib.ticker as ticker

    from . import reproduce as rp
    from .plotting import new_figure, save_figure

    rows = rp.unique_rows(rows)
    widths = sorted({r["group_size"] for r in rows})
    figure, axes = new_figure(3, width=5.0, height=4.2)
    colours = {m: f"C{i}" for i, m in enumerate(METHODS)}  # one colour per method, every panel
    offsets = {m: 1.5 * (i - 2.5) for i, m in enumerate(METHODS)}  # overlapping 100 % lines
    for method in METHODS:
        cells = [
            [r for r in rows if r["method"] == method and r["group_size"] == d] for d in widths
        ]
        present = [(d, c) for d, c in zip(widths, cells) if c]
        if not present:
            continue
        xs = [d for d, _ in present]
        rates = [100 * sum(r["success"] for r in c) / len(c) + offsets[method] for _, c in present]
        axes[0].plot(xs, rates, marker="o", label=method, color=colours[method])
        speed = [
            (d, _median([r["seconds_per_step"] for r in c if r["success"]])) for d, c in present
        ]
        speed = [(d, s) for d, s in speed if s is not None]
        if speed:
            axes[1].plot(*zip(*speed), marker="o", label=method, color=colours[method])
    if floors:
        axes[1].plot(widths, [floors.get(str(d)) for d in widths], "k--", label="one eigh (floor)")
    summary = gradient_error_summary(rows)
    for rule in MEASURED_RULES:
        points = [(d, summary[(d, rule)]["median"]) for d in widths if (d, rule) in summary]
        points = [(d, m) for d, m in points if m is not None]
        if points:
            axes[2].plot(*zip(*points), marker="o", label=rule, color=colours[rule])
    axes[0].set(xscale="log", xlabel="d (channels whitened in one group)",
                ylabel="success % (lines offset ≤ 4 points to stay visible)",
                title="finished without NaN/divergence")  # fmt: skip
    axes[1].set(xscale="log", yscale="log", xlabel="d", ylabel="s / step (median)",
                title="time per training step")  # fmt: skip
    axes[2].set(xscale="log", yscale="log", xlabel="d", ylabel="relative error",
                title="gradient error on training covariances")  # fmt: skip
    for axis in axes:
        axis.set_xticks(widths, [str(d) for d in widths])
        axis.xaxis.set_minor_locator(ticker.NullLocator())
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=7)
    save_figure(figure, path)
