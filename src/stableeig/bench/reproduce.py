"""Reproduce the paper's Table 1 (ZCA) and Table 2 (PCA): resumable cells, tables, plots.

Each finished run appends one JSON line to ``results/<table>_<preset>_<dataset>.jsonl``;
rerunning skips the cells already there, so an interrupted reproduction resumes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import statistics
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from .data import Dataset
from .files import (
    LockBusy,
    acquire_lock,
    append_line,
    check_appendable,
    make_dirs,
    own_folder,
    read_text,
    release_lock,
    write_text,
)
from .plotting import new_figure, save_figure
from .training import RunConfig, config_dict, is_finite_number, train_run

__all__ = ["PRESETS", "TABLES", "Cell", "TableKind", "render_table", "run_cells", "table_cells"]

TABLE1_METHODS = ("analytic", "pi", "power", "taylor", "loewner")
TABLE2_METHODS = ("pi", "analytic", "power", "loewner")
# covariance pooling: global average pooling, then Σ^{1/2} by each rule and Newton–Schulz
COVPOOL_METHODS = ("average", "analytic", "power", "taylor", "loewner", "newton-schulz")
GROUP_SIZES = (4, 8, 16, 32, 64)

# What each preset changes from RunConfig's defaults; "quick" fits a 2-core CPU.
PRESETS: dict[str, dict[str, Any]] = {
    "quick": {
        "dataset": "fashion-mnist",
        "width": 0.125,
        "steps": 120,
        "steps_per_epoch": 40,
        "test_subset": 2000,
        "compute_dtype": "float32",
        "convention": "reference",
        "seeds": 3,
    },
    "long": {  # long enough for the baselines' failures to show: 1,000 steps ≈ 2.1 epochs
        "dataset": "fashion-mnist",
        "width": 0.125,
        "steps": 1000,
        "steps_per_epoch": 100,
        "test_subset": None,
        "compute_dtype": "float32",
        "convention": "reference",
        "seeds": 3,
    },
    "demo": {
        "dataset": "fashion-mnist",
        "width": 0.125,
        "steps": 90,
        "steps_per_epoch": 30,
        "test_subset": 2000,
        "compute_dtype": "float32",
        "convention": "reference",
        "seeds": 1,
    },
    "paper": {
        "dataset": "cifar10",
        "width": 1.0,
        "steps": 350 * 391,
        "steps_per_epoch": 391,
        "test_subset": None,
        "compute_dtype": "float32",
        "convention": "reference",
        "seeds": 15,
    },
}

PAPER_TABLE1 = {  # success rate, (min, mean ± std) test error %, NeurIPS 2019 Table 1
    "analytic": {
        4: ("46.7%", "4.59, 4.54±0.08"),
        8: ("0%", "-"),
        16: ("0%", "-"),
        32: ("0%", "-"),
        64: ("0%", "-"),
    },
    "pi": {
        4: ("100%", "4.44, 4.99±0.51"),
        8: ("6.7%", "6.28, -"),
        16: ("0%", "-"),
        32: ("0%", "-"),
        64: ("0%", "-"),
    },
    "power": {
        4: ("100%", "4.59, 4.71±0.11"),
        8: ("100%", "4.43, 4.62±0.18"),
        16: ("100%", "4.40, 4.63±0.14"),
        32: ("100%", "4.46, 4.64±0.15"),
        64: ("100%", "4.44, 4.59±0.09"),
    },
}
PAPER_TABLE2 = {
    "batchnorm": "4.66, 4.81±0.19",
    "pi": "5.05, 5.35±0.25",
    "analytic": "NaN (5/5 failed)",
    "power": "4.58, 4.63±0.11",
}
PAPER_NAMES = {
    "analytic": "SVD",
    "pi": "PI",
    "power": "SVD-PI (ours in the paper)",
    "taylor": "—",
    "loewner": "—",
    "batchnorm": "BN",
}


PAPER_ABLATIONS: dict[
    str, dict[float, str]
] = {  # PCA denoising, ResNet-18 CIFAR-10, test error % (the poster's tables)
    "energy": {
        0.85: "5.60±0.74",
        0.9: "5.05±0.07",
        0.95: "4.67±0.06",
        0.99: "4.63±0.11",
        0.995: "4.72±0.10",
        1.0: "4.81±0.19",
    },
    "n_components": {
        2: "5.09±0.12",
        4: "4.82±0.07",
        8: "4.64±0.18",
        16: "4.63±0.17",
        32: "4.65±0.08",
    },
    "num_iters": {
        1: "4.72±0.10",
        2: "4.63±0.09",
        4: "4.67±0.09",
        9: "4.61±0.14",
        14: "4.69±0.11",
        19: "4.63±0.11",
        29: "4.61±0.03",
    },
    "eps": {},
}
EPS_VALUES = (1e-2, 1e-4, 1e-6, 1e-8)
ABLATION_SEEDS = 2

Key = tuple[str, str, Optional[int], int, tuple[tuple[str, Any], ...]]

ANCHOR = "power"  # the method cells are tested against by default (the paper's SVD-PI)


@dataclass(frozen=True)
class TableKind:
    """What one table is: its runs, how they are trained, and how it is laid out.

    Attributes:
        methods: the default methods (rows).
        group_sizes: the default group sizes; ``(None,)`` where the stem has no groups.
        batchnorm: whether BatchNorm reference runs come first (the "trained" threshold).
        stem: what the stem's normalization is for a method's runs: ``"zca"``, ``"pca"``,
            or ``"covpool"`` (BatchNorm at the stem; the method is the pooling head's).
        layout: ``"grid"`` (the paper's Table 1: methods × group sizes) or ``"list"`` (a row
            per method and size).
        anchor: the method every cell's Fisher p-values are computed against.
        paper: the paper's numbers: per method (``"list"``), or per method and group size
            (``"grid"``, as (success rate, error) pairs).
        paper_label: the paper column's header (``"list"``).
        timed: a column of seconds per step (``"list"``), the median over finished runs.
    """

    methods: tuple[str, ...]
    group_sizes: tuple[Optional[int], ...] = (64,)
    batchnorm: bool = False
    stem: str = "zca"
    layout: str = "list"
    anchor: str = ANCHOR
    paper: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    paper_label: str = "paper"
    timed: bool = False


SPDNET_PEERS = ("geoopt", "spd_learn", "spd_learn-bn")
TABLES: dict[str, TableKind] = {
    "table1": TableKind(
        TABLE1_METHODS, GROUP_SIZES, batchnorm=True, layout="grid", paper=PAPER_TABLE1
    ),
    "table2": TableKind(
        TABLE2_METHODS,
        batchnorm=True,
        stem="pca",
        paper=PAPER_TABLE2,
        paper_label="paper (CIFAR-10)",
    ),
    "covpool": TableKind(COVPOOL_METHODS, (None,), stem="covpool", anchor="loewner", timed=True),
    "demo": TableKind(("analytic", "power", "loewner")),
    "spdnet": TableKind(
        ("analytic", "power", "loewner", "spdbn-le", "spdbn-ai", *SPDNET_PEERS),
        (None,),
        anchor="loewner",
        timed=True,
    ),
    **{  # the ablations: one kind each, run by ablation_cells, rendered by render_ablations
        f"ablation_{name}": TableKind(("power",), stem="zca" if name == "eps" else "pca")
        for name in PAPER_ABLATIONS
    },
}
"""Every table kind by name (a new table is one entry)."""


def table_kind(table: str) -> TableKind:
    """The registered :class:`TableKind` of ``table``."""
    if table not in TABLES:
        raise ValueError(f"table: expected one of {', '.join(TABLES)} (got {table!r})")
    return TABLES[table]


@dataclass(frozen=True)
class Cell:
    table: str
    method: str  # a layer method, or "batchnorm"
    group_size: Optional[int]
    seed: int
    variant: tuple[tuple[str, Any], ...] = ()  # RunConfig fields an ablation varies

    def key(self) -> Key:
        return (self.table, self.method, self.group_size, self.seed, self.variant)


def row_key(row: dict[str, Any]) -> Key:
    variant = tuple(sorted(row.get("variant", {}).items()))
    return (row["table"], row["method"], row["group_size"], row["seed"], variant)


def ablation_cells(seeds: int = ABLATION_SEEDS) -> list[Cell]:
    """The paper's PCA ablations (energy, number of eigenvectors, PI iterations; ``power``,
    one group of 64) and the ε ablation (ZCA, d = 64, ``power`` and ``loewner``)."""
    cells = []
    for field_name, values in PAPER_ABLATIONS.items():
        if field_name == "eps":
            continue
        for value in values:
            cells += [
                Cell(f"ablation_{field_name}", "power", 64, s, ((field_name, value),))
                for s in range(seeds)
            ]
    for method in ("power", "loewner"):
        for eps in EPS_VALUES:
            cells += [Cell("ablation_eps", method, 64, s, (("eps", eps),)) for s in range(seeds)]
    return cells


def table_cells(
    table: str,
    seeds: int,
    group_sizes: Optional[Iterable[int]] = None,
    methods: Optional[Iterable[str]] = None,
) -> list[Cell]:
    """The runs of a table: every method × group size × seed, after the BatchNorm reference
    runs of the tables that have them (:data:`TABLES` says which, and the defaults)."""
    kind = table_kind(table)
    grouped = kind.group_sizes != (None,)
    sizes = tuple(group_sizes or kind.group_sizes) if grouped else (None,)
    cells = [Cell(table, "batchnorm", None, s) for s in range(seeds)] if kind.batchnorm else []
    for method in methods or kind.methods:
        cells += [Cell(table, method, d, s) for d in sizes for s in range(seeds)]
    return cells


def device_name(device: str) -> str:
    """The accelerator's model for a CUDA device, else ``"cpu"`` (recorded in every row)."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return "cpu"


def cell_config(cell: Cell, preset: str, device: str = "cpu", **overrides: Any) -> RunConfig:
    settings = {k: v for k, v in PRESETS[preset].items() if k != "seeds"}
    settings.update(overrides)
    settings.update(dict(cell.variant))
    kind = table_kind(cell.table)
    if kind.stem == "covpool":  # BatchNorm at the stem; the head varies
        head = "average" if cell.method == "average" else "covpool"
        pool = "loewner" if cell.method == "average" else cell.method
        return RunConfig(
            norm="batchnorm", method="loewner", head=head, pool_method=pool,
            group_size=None, seed=cell.seed, device=device, **settings,
        )  # fmt: skip
    norm = "batchnorm" if cell.method == "batchnorm" else kind.stem
    method = "loewner" if cell.method == "batchnorm" else cell.method
    return RunConfig(
        norm=norm,
        method=method,
        group_size=cell.group_size,
        seed=cell.seed,
        device=device,
        **settings,
    )


def _is_count(value: Any, low: int = 0, high: int = 2**31) -> bool:
    return type(value) is int and low <= value <= high


NAME = re.compile(r"[A-Za-z0-9_.+-]{1,64}")
"""What a table, method or preset name may hold: every name the tool writes, and nothing
that splits a Markdown table (``|``, a newline) or a file name."""
MAX_GROUP_SIZE = 1 << 16
MAX_STEPS = 10**9
MAX_LOSS = 1e12  # a cross-entropy; a run stops at 10 × its first loss


def _is_name(value: Any) -> bool:
    return isinstance(value, str) and NAME.fullmatch(value) is not None


def _is_scalar(value: Any) -> bool:
    """A variant's value: a name, a finite number, a bool or None (hashable, printable)."""
    return value is None or isinstance(value, bool) or is_finite_number(value) or _is_name(value)


ROW_SCHEMA: dict[str, Callable[[Any], bool]] = {
    "table": _is_name,
    "method": _is_name,
    "group_size": lambda v: v is None or _is_count(v, 1, MAX_GROUP_SIZE),
    "seed": _is_count,
    "success": lambda v: isinstance(v, bool),
    "test_error": lambda v: v is None or is_finite_number(v, 0, 100),
    "failure_step": lambda v: v is None or _is_count(v, 0, MAX_STEPS),
    "seconds": lambda v: is_finite_number(v, 0, 1e9),
    "losses": lambda v: isinstance(v, list) and len(v) <= 10**6
    and all(is_finite_number(x, 0, MAX_LOSS) for x in v),
    "config": lambda v: isinstance(v, dict) and _is_count(v.get("steps"), 1, MAX_STEPS),
}  # fmt: skip
"""The fields every table reads, with their types and ranges; :func:`row_problem` adds the
optional fields' and the consistency between fields."""


def row_problem(row: Any) -> Optional[str]:
    """Why a parsed results line is not a usable row, or None: every field a renderer reads
    has its type and range (:data:`ROW_SCHEMA`), the fields agree with each other (a
    finished run has a test error and no failure step, a failed one no test error), and the
    fields of its table's kind are there (an ablation's varied value, a wide run's timing)."""
    if not isinstance(row, dict):
        return f"a JSON {type(row).__name__}, not an object"
    for key, valid in ROW_SCHEMA.items():
        if key not in row:
            return f"no {key!r}"
        if not valid(row[key]):
            return f"{key!r} = {_shown(row[key])} has the wrong type or range"
    variant = row.get("variant", {})
    if not isinstance(variant, dict) or not all(
        _is_name(k) and _is_scalar(v) for k, v in variant.items()
    ):
        return f"'variant' = {_shown(variant)} is not an object of names and scalars"
    if "preset" in row and not _is_name(row["preset"]):
        return f"'preset' = {_shown(row['preset'])} is not a name"
    if row["success"] != (row["test_error"] is not None):
        return "'success' and 'test_error' disagree (a finished run has a test error)"
    if row["success"] and row["failure_step"] is not None:
        return "a finished run with a 'failure_step'"
    if row["failure_step"] is not None and row["failure_step"] > row["config"]["steps"]:
        return "'failure_step' beyond the run's steps"
    if row["table"].startswith("ablation_"):
        varied = row["table"].removeprefix("ablation_")
        # the varied value is plotted on a log axis: positive, within a plottable range
        plottable = is_finite_number(variant.get(varied), 1e-30, 1e30)
        if not plottable or not _is_name(row.get("preset")):
            return f"an ablation row without its varied value {varied!r} or its preset"
    if row["table"] == "wide":
        if row["group_size"] is None or not is_finite_number(row.get("seconds_per_step"), 0, 1e9):
            return "a wide row without its width or seconds_per_step"
        measured = row.get("gradient_errors", [])
        if not isinstance(measured, list) or not all(
            isinstance(point, dict)
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in point.values())
            for point in measured
        ):
            return "'gradient_errors' is not a list of objects of numbers"
    return None


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def read_results(path: Path) -> list[dict[str, Any]]:
    """The rows of a results file; a torn line (a run killed mid-append) or a malformed row
    (valid JSON that is not a row: see :data:`ROW_SCHEMA`) is skipped with one warning on
    stderr naming the file and line, never losing the others. A FIFO, symlink or hard link
    at ``path`` is refused (:class:`~stableeig.bench.files.FileFault`), never read."""
    if not os.path.lexists(path):
        return []
    rows = []
    for number, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            print(f"warning: {path}:{number}: skipping a torn line", file=sys.stderr)
            continue
        problem = row_problem(row)
        if problem is not None:
            print(
                f"warning: {path}:{number}: skipping a malformed row ({problem})", file=sys.stderr
            )
            continue
        rows.append(row)
    return rows


def _done(results: Path) -> set[Key]:
    return {row_key(r) for r in read_results(results)}


def _append(results: Path, line: dict[str, Any]) -> None:
    """Append one JSON row (after a newline if the file ends in a torn fragment)."""
    append_line(results, json.dumps(line))


@contextlib.contextmanager
def _claim(results: Path, cell: Cell) -> Iterator[bool]:
    """Claim a cell for this process (``True``), so that concurrent ``reproduce`` processes
    on one results file run each cell once; ``False`` if a live process holds it.

    A claim is an ``fcntl`` lock on a file in ``<results>.claims/``: the kernel releases it
    when its process dies, so a killed holder's claim is free at once and a reused pid or a
    half-written file can never hold a cell.
    """
    name = "_".join(str(part) for part in cell.key()[:4])
    name += "".join(f"_{k}={v}" for k, v in cell.variant)
    path = results.with_name(results.name + ".claims") / (name + ".claim")
    with own_folder(path.parent, "claims folder") as folder:  # a symlink there: refused
        try:
            descriptor = acquire_lock(path, "cell's claim", folder)
        except LockBusy as busy:
            print(f"note: skipping {name}: {busy.strerror}", file=sys.stderr)
            yield False
            return
        try:
            yield True
        finally:
            release_lock(path, descriptor, folder)


def unique_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per cell (the first written), whatever ran twice."""
    seen, unique = set(), []
    for row in rows:
        key = row_key(row)
        if key not in seen:
            seen.add(key)
            unique.append(row)
    return unique


Runner = Callable[[Cell], tuple[dict[str, Any], dict[str, Any]]]
"""Runs one cell: (its outcome — success, test_error, failure_step, failure_reason, seconds,
losses — and the configuration to record)."""


def run_cells(
    cells: list[Cell],
    dataset: Dataset,
    preset: str,
    results: Path,
    device: str = "cpu",
    progress: bool = True,
    overrides: Optional[dict[str, Any]] = None,
    runner: Optional[Runner] = None,
) -> list[dict[str, Any]]:
    """Run the cells not yet in ``results`` (JSONL), appending one line per finished run.

    ``overrides`` replace fields of the preset's :class:`RunConfig` (e.g. ``steps``);
    ``runner`` replaces the ResNet training (e.g. the SPD network's).
    """
    make_dirs(results.parent, "results folder")
    check_appendable(results)  # a results path that cannot be appended to fails before work
    todo = [c for c in cells if c.key() not in _done(results)]
    started, durations = time.monotonic(), []
    for number, cell in enumerate(todo, 1):
        tick = time.monotonic()
        with _claim(results, cell) as claimed:
            if not claimed or cell.key() in _done(results):
                continue  # another process runs (or ran) this cell
            if runner is None:
                config = cell_config(cell, preset, device, **(overrides or {}))
                result = train_run(config, dataset, progress=progress)
                outcome, record = dataclasses.asdict(result), config_dict(config)
            else:
                outcome, record = runner(cell)
            line = {
                "table": cell.table,
                "dataset": dataset.name,
                "preset": preset,
                "method": cell.method,
                "group_size": cell.group_size,
                "seed": cell.seed,
                "variant": dict(cell.variant),
                # chaotic runs (the baselines) depend on the summation order, i.e. on these
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "device_name": device_name(device),
                **outcome,
                "config": record,
            }
            error = line["test_error"]
            line["test_error"] = None if error is None else round(error, 3)
            line["seconds"] = round(line["seconds"], 1)
            _append(results, line)
        summary = (
            f"error {line['test_error']}%"
            if line["success"]
            else f"FAILED at step {line['failure_step']}: {line['failure_reason']}"
        )
        durations.append(time.monotonic() - tick)
        left = statistics.median(durations) * (len(todo) - number)
        print(
            f"[{number}/{len(todo)}] {cell.method} d={cell.group_size} seed={cell.seed}: "
            f"{summary} ({line['seconds']}s); {_duration(time.monotonic() - started)} "
            f"elapsed, about {_duration(left)} left",
            flush=True,
        )
    return unique_rows(read_results(results))


def _duration(seconds: float) -> str:
    """``42s``, ``7m05s`` or ``3h12m``."""
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def wilson_interval(successes: int, runs: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a success rate (meaningful also for 0/n and n/n)."""
    if runs == 0:
        return 0.0, 1.0
    p = successes / runs
    centre = (p + z * z / (2 * runs)) / (1 + z * z / runs)
    half = z / (1 + z * z / runs) * (p * (1 - p) / runs + z * z / (4 * runs * runs)) ** 0.5
    return max(0.0, centre - half), min(1.0, centre + half)


def fisher_exact(a: int, b: int, c: int, d: int) -> float:
    """Two-sided Fisher exact p-value of the 2×2 table ``[[a, b], [c, d]]`` (rows: two
    methods; columns: successes, failures): the probability, with the margins fixed, of a
    table at most as likely as the observed one."""
    rows, column, total = a + b, a + c, a + b + c + d
    denominator = math.comb(total, column)

    def probability(x: int) -> float:
        return math.comb(rows, x) * math.comb(total - rows, column - x) / denominator

    observed = probability(a)
    low, high = max(0, column - (total - rows)), min(rows, column)
    p = sum(q for x in range(low, high + 1) if (q := probability(x)) <= observed * (1 + 1e-7))
    return min(1.0, p)


TRAINED_FACTOR = 1.5
"""A finished run *trained* when its test error is below this × the BatchNorm runs' mean
error in the same results file (see the README: 1.5 × ≈ 24 % for the long Fashion-MNIST runs,
above every BatchNorm, ``analytic``, ``power`` and ``loewner`` run, far below chance)."""


def trained_threshold(rows: list[dict[str, Any]]) -> Optional[float]:
    """``TRAINED_FACTOR`` × the mean test error of the finished BatchNorm rows, or None."""
    reference = [r for r in rows if r["method"] in ("batchnorm", "average")]  # first-order
    errors = [r["test_error"] for r in reference if r["success"]]
    return TRAINED_FACTOR * statistics.mean(errors) if errors else None


def trained(row: dict[str, Any], threshold: Optional[float]) -> bool:
    """Finished without NaN/divergence and (when a threshold exists) trained below it."""
    if not row["success"]:
        return False
    return threshold is None or row["test_error"] < threshold


def _rate(successes: int, runs: int) -> str:
    low, high = wilson_interval(successes, runs)
    return (
        f"{100 * successes / runs:.0f}% ({successes}/{runs}; CI {100 * low:.0f}–{100 * high:.0f}%)"
    )


def _summary(rows: list[dict[str, Any]]) -> tuple[str, str]:
    """(success rate, "min, mean ± std" of test error) over runs of one cell."""
    if not rows:
        return "", ""
    ok = [r["test_error"] for r in rows if r["success"]]
    rate = _rate(len(ok), len(rows))
    if not ok:
        return rate, "-"
    spread = f"±{statistics.stdev(ok):.2f}" if len(ok) > 1 else ""
    return rate, f"{min(ok):.2f}, {statistics.mean(ok):.2f}{spread}"


def _versus(
    cell: list[dict[str, Any]], anchor: list[dict[str, Any]], threshold: Optional[float]
) -> tuple[str, str]:
    """(trained rate, "p finished; p trained") of a cell against the anchor's cell."""
    if not cell:
        return "", ""
    good = sum(trained(r, threshold) for r in cell)
    if not anchor or cell is anchor:
        return _rate(good, len(cell)), ""
    finished = [sum(r["success"] for r in rows) for rows in (cell, anchor)]
    ok = [good, sum(trained(r, threshold) for r in anchor)]
    p_finished = fisher_exact(
        finished[0], len(cell) - finished[0], finished[1], len(anchor) - finished[1]
    )
    p_trained = fisher_exact(ok[0], len(cell) - ok[0], ok[1], len(anchor) - ok[1])
    return _rate(good, len(cell)), f"{_p(p_finished)}; {_p(p_trained)}"


def _p(p: float) -> str:
    return f"{p:.2g}" if p < 0.01 else f"{p:.2f}"


def _seconds_per_step(rows: list[dict[str, Any]]) -> str:
    """Median wall seconds per training step of the finished runs (``—`` if none)."""
    per_step = [r["seconds"] / r["config"]["steps"] for r in rows if r["success"]]
    return f"{statistics.median(per_step):.3g}" if per_step else "—"


def render_table(rows: list[dict[str, Any]], table: str) -> str:
    """Markdown in the paper's layout: success rate and (min, mean ± std) test error %, the
    "trained" rate (below ``TRAINED_FACTOR`` × the BatchNorm mean) and, per cell, two-sided
    Fisher exact p-values against ``power`` for both rates."""
    rows = unique_rows(rows)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    threshold = trained_threshold(rows)
    limit = f"< {threshold:.1f}%" if threshold is not None else "no BatchNorm rows"
    kind = table_kind(table)
    anchor_method = kind.anchor
    p_label = f"Fisher p vs {anchor_method} (finished; trained)"
    if kind.layout == "list":
        sizes = sorted({r["group_size"] for r in rows if r["group_size"] is not None})
        paper_label = kind.paper_label
        timing = " s/step (median) |" if kind.timed else ""
        lines = [
            "| method | group size | success | test error % (min, mean±std) "
            f"| trained ({limit}) | {p_label} |{timing} {paper_label} |",
            "|---|---|---|---|---|---|---|" + ("---|" if kind.timed else ""),
        ]
        for method in methods:
            for size in [None] if method in ("batchnorm", "average") or not sizes else sizes:
                cell = [r for r in rows if r["method"] == method and r["group_size"] == size]
                anchor = [
                    r for r in rows if r["method"] == anchor_method and r["group_size"] == size
                ]
                rate, error = _summary(cell)
                good, p = _versus(cell, anchor if method != anchor_method else cell, threshold)
                paper = kind.paper.get(method, "—")
                seconds = f" {_seconds_per_step(cell)} |" if kind.timed else ""
                lines.append(
                    f"| {method} | {size or '-'} | {rate} | {error} | {good} | {p} |{seconds}"
                    f" {paper} |"
                )
        return "\n".join(lines)
    sizes = sorted({r["group_size"] for r in rows if r["group_size"] is not None})
    header = "| method | | " + " | ".join(f"d={d}" for d in sizes) + " |"
    lines = [header, "|---|---|" + "---|" * len(sizes)]
    for method in methods:
        if method == "batchnorm":
            rate, error = _summary([r for r in rows if r["method"] == method])
            lines.append(
                f"| batchnorm (reference) | Suc. Rate, Min, Mean | {rate}; {error} |"
                + " |" * (len(sizes) - 1)
            )
            continue
        chosen = [
            [r for r in rows if r["method"] == method and r["group_size"] == d] for d in sizes
        ]
        anchors = [
            [r for r in rows if r["method"] == anchor_method and r["group_size"] == d]
            for d in sizes
        ]
        cells = [_summary(c) for c in chosen]
        versus = [
            _versus(c, c if method == anchor_method else a, threshold)
            for c, a in zip(chosen, anchors)
        ]
        lines.append(f"| {method} | Min, Mean | " + " | ".join(c[1] for c in cells) + " |")
        lines.append(f"| {method} | Suc. Rate | " + " | ".join(c[0] for c in cells) + " |")
        lines.append(f"| {method} | Trained ({limit}) | " + " | ".join(v[0] for v in versus) + " |")
        if method != anchor_method:
            lines.append(f"| {method} | {p_label} | " + " | ".join(v[1] for v in versus) + " |")
        if method in kind.paper:
            reference = kind.paper[method]
            lines.append(
                f"| *paper {PAPER_NAMES[method]}* | Suc. Rate; Min, Mean | "
                + " | ".join(
                    f"*{reference[d][0]}; {reference[d][1]}*" if d in reference else ""
                    for d in sizes
                )
                + " |"
            )
    return "\n".join(lines)


def render_ablations(rows: list[dict[str, Any]]) -> str:
    """One Markdown table per ablation: value, success (Wilson interval), error, paper."""
    rows = unique_rows(rows)
    parts = []
    for field_name, paper in PAPER_ABLATIONS.items():
        chosen = [r for r in rows if r["table"] == f"ablation_{field_name}"]
        if not chosen:
            continue
        parts += [
            f"**{field_name}** ({chosen[0]['preset']} protocol)",
            "",
            f"| method | {field_name} | success | test error % (min, mean±std) | paper |",
            "|---|---|---|---|---|",
        ]
        for method in dict.fromkeys(r["method"] for r in chosen):
            values = sorted({r["variant"][field_name] for r in chosen if r["method"] == method})
            for value in values:
                cell = [
                    r for r in chosen if r["method"] == method and r["variant"][field_name] == value
                ]
                rate, error = _summary(cell)
                parts.append(
                    f"| {method} | {value:g} | {rate} | {error} | {paper.get(value, '—')} |"
                )
        parts.append("")
    return "\n".join(parts)


def plot_ablations(rows: list[dict[str, Any]], path: Path) -> None:
    """Mean test error vs the varied value, one panel per ablation."""
    rows = unique_rows(rows)
    fields = [f for f in PAPER_ABLATIONS if any(r["table"] == f"ablation_{f}" for r in rows)]
    figure, axes = new_figure(max(len(fields), 1))
    for axis, field_name in zip(axes, fields):
        chosen = [r for r in rows if r["table"] == f"ablation_{field_name}"]
        for method in dict.fromkeys(r["method"] for r in chosen):
            values = sorted({r["variant"][field_name] for r in chosen if r["method"] == method})
            means = []
            for value in values:
                errors = [
                    r["test_error"]
                    for r in chosen
                    if r["method"] == method and r["variant"][field_name] == value and r["success"]
                ]
                means.append(statistics.mean(errors) if errors else float("nan"))
            axis.plot(values, means, marker="o", label=method)
        if field_name in ("eps", "num_iters", "n_components"):
            axis.set_xscale("log")
        axis.set_xlabel(field_name)
        axis.set_ylabel("test error % (mean of successful runs)")
        axis.set_title(f"ablation: {field_name}")
        axis.legend()
    save_figure(figure, path)


def kaplan_meier(runs: list[tuple[int, bool]]) -> list[tuple[int, float]]:
    """Survival curve from ``(steps survived, failed)`` per run, censored at the run length.

    Returns ``(step, fraction alive after it)`` at 0 and at each failure step.
    """
    curve, alive = [(0, 1.0)], 1.0
    for step in sorted({t for t, failed in runs if failed}):
        at_risk = sum(1 for t, _ in runs if t >= step)
        failures = sum(1 for t, failed in runs if failed and t == step)
        alive *= 1 - failures / at_risk
        curve.append((step, alive))
    return curve


Run = tuple[int, bool, bool]  # (steps survived, failed, trained)


def _survival_runs(rows: list[dict[str, Any]]) -> dict[tuple[str, int], list[Run]]:
    runs: dict[tuple[str, int], list[Run]] = {}
    rows = unique_rows(rows)
    threshold = trained_threshold(rows)  # per results file: its own BatchNorm runs
    for row in rows:
        if row["method"] == "batchnorm" or row["group_size"] is None:
            continue
        length = row["failure_step"] if not row["success"] else row["config"]["steps"]
        if not row["success"] and row["failure_step"] is None:  # failed in evaluation
            length = row["config"]["steps"]
        # rows written before 0.2 ran a 19-term power series and a stabilized pi
        method = row["method"] + ("" if "convention" in row["config"] else " (pre-0.2)")
        runs.setdefault((method, row["group_size"]), []).append(
            (int(length), not row["success"], trained(row, threshold))
        )
    return runs


def survival_report(folder: Path) -> str:
    """Kaplan–Meier survival of every committed ``table1_*.jsonl`` row (any run length):
    writes ``table1_survival.png`` and ``table1_survival.md`` in ``folder``. Rows written
    before the 0.2 fidelity fixes are labelled ``(pre-0.2)``, never mixed with newer ones.
    "Trained" counts finished runs below ``TRAINED_FACTOR`` × their file's BatchNorm mean."""
    runs: dict[tuple[str, int], list[Run]] = {}
    for path in sorted(folder.glob("table1_*.jsonl")):  # each file: its own cells
        for key, cell in _survival_runs(read_results(path)).items():
            runs.setdefault(key, []).extend(cell)
    sizes = sorted({d for _, d in runs})
    figure, axes = new_figure(max(len(sizes), 1))
    for axis, size in zip(axes, sizes):
        for method in dict.fromkeys(m for m, d in runs if d == size):
            cell = runs[(method, size)]
            curve = kaplan_meier([(t, failed) for t, failed, _ in cell])
            longest = max(t for t, _, _ in cell)
            steps = [t for t, _ in curve] + [longest]
            alive = [a for _, a in curve] + [curve[-1][1]]
            line = axis.step(steps, alive, where="post", label=f"{method} ({len(cell)})")
            share = sum(good for _, _, good in cell) / len(cell)  # trained, at the end
            axis.plot([longest], [share], marker="x", color=line[0].get_color())
        axis.set_ylim(-0.05, 1.05)
        axis.set_xlabel("training step")
        axis.set_ylabel("fraction of runs alive (x: trained at the end)")
        axis.set_title(f"d = {size}")
        axis.legend(fontsize=7)
    save_figure(figure, folder / "table1_survival.png")
    lines = [
        "| method | d | runs | failed | steps (longest run) | alive at the end (Kaplan–Meier) "
        f"| success rate (95% Wilson CI) | trained (< {TRAINED_FACTOR:g}× BatchNorm mean) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (method, size), cell in sorted(runs.items(), key=lambda item: (item[0][1], item[0][0])):
        failed = sum(f for _, f, _ in cell)
        good = sum(g for _, _, g in cell)
        curve = kaplan_meier([(t, f) for t, f, _ in cell])
        lines.append(
            f"| {method} | {size} | {len(cell)} | {failed} | {max(t for t, _, _ in cell)} | "
            f"{curve[-1][1]:.2f} | {100 * (len(cell) - failed) / len(cell):.0f}% "
            f"({_interval(len(cell) - failed, len(cell))}) | {good}/{len(cell)} |"
        )
    text = "\n".join(lines)
    write_text(folder / "table1_survival.md", text + "\n")
    return text


def _interval(successes: int, runs: int) -> str:
    low, high = wilson_interval(successes, runs)
    return f"{100 * low:.0f}–{100 * high:.0f}%"


def _rates(cell: list[dict[str, Any]], threshold: Optional[float]) -> tuple[float, float]:
    """Finished and trained rates (%) of a cell's runs (NaN for an empty cell)."""
    if not cell:
        return float("nan"), float("nan")
    finished = 100 * sum(r["success"] for r in cell) / len(cell)
    return finished, 100 * sum(trained(r, threshold) for r in cell) / len(cell)


def plot(rows: list[dict[str, Any]], table: str, path: Path) -> None:
    """Success rate vs group size per method (bars per method where a table has no group
    sizes), and mean training-loss curves at the largest d."""
    figure, (left, right) = new_figure(2)
    methods = [m for m in dict.fromkeys(r["method"] for r in rows) if m != "batchnorm"]
    sizes = sorted({r["group_size"] for r in rows if r["group_size"] is not None})
    threshold = trained_threshold(rows)
    if sizes:
        for method in methods:
            cells = [
                [r for r in rows if r["method"] == method and r["group_size"] == d] for d in sizes
            ]
            finished, good = zip(*(_rates(cell, threshold) for cell in cells))
            line = left.plot(sizes, finished, marker="o", label=f"{method}: finished")
            color = line[0].get_color()
            left.plot(
                sizes, good, marker="x", linestyle="--", color=color, label=f"{method}: trained"
            )
        left.set_xscale("log", base=2)
        left.set_xticks(sizes, [str(d) for d in sizes])
        left.set_xlabel("group size d")
    elif methods:  # one cell per method: grouped bars
        finished, good = zip(
            *(_rates([r for r in rows if r["method"] == m], threshold) for m in methods)
        )
        places = list(range(len(methods)))
        left.bar([p - 0.2 for p in places], finished, width=0.4, label="finished")
        left.bar([p + 0.2 for p in places], good, width=0.4, hatch="//", label="trained")
        left.set_xticks(places, methods, rotation=30, ha="right")
    left.set_ylabel("success rate (%)")
    left.set_ylim(-5, 105 if sizes else 130)  # room above the bars for the legend
    left.set_title(f"{table}: finished (no NaN/divergence) and trained")
    if methods:  # (a file killed after its BatchNorm reference rows has no other)
        left.legend(loc="best" if sizes else "upper center", ncol=1 if sizes else 2)
    largest = max(sizes) if sizes else None
    for method in dict.fromkeys(r["method"] for r in rows):
        curves = [
            r["losses"]
            for r in rows
            if r["method"] == method and r["group_size"] in (largest, None) and r["losses"]
        ]
        if curves:
            longest = max(curves, key=len)
            right.plot(range(1, len(longest) + 1), longest, marker=".", label=method)
    right.set_xlabel("epoch")
    right.set_ylabel("training loss (one seed)")
    right.set_title(f"training curves at d={largest}" if sizes else "training curves")
    if right.get_legend_handles_labels()[0]:
        right.legend()
    save_figure(figure, path)
