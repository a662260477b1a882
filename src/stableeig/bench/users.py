"""``stableeig bench users``: the shapes and modes users run first (issue 29), each timed
against the code they write today, in one process.

Every row is a pair of callables, ours and the baseline, timed interleaved
(:func:`stableeig.bench.timing.paired`: median of per-pair ratios and their quartiles), and
the whole table is measured ``runs`` times (run 1 for every row, then run 2...), so that a
figure that moves between runs shows it. Rows:

* ``calls``: one small call, fwd+bwd, against ``torch.linalg.eigh`` autograd written out,
  same precision (float64 input): the fixed cost per call, and batches where it amortizes.
* ``embeddings``: ``ZCAWhitening1d`` on (N, C) against three lines of ``inv_sqrtm``.
* ``spdnet``: BiMap → ReEig → LogEig (22 → 16, batch 64, float32) against spd_learn's
  modules and against the same net written with ``torch.linalg.eigh``, with each one's
  input-gradient error against float64 ``loewner``.
* ``fid``: FID from statistics, forward and fwd+bwd, against torchmetrics' ``_compute_fid``
  (eigenvalues of ``Σ₁Σ₂``; run on float64 statistics, as its metric does).
* ``precision``: float32 against float64 compute (the ``compute_dtype`` policy), time and
  gradient error, per function and size, on a full-rank and a rank-deficient spectrum.
* ``compiled``: one SGD step of the quick-preset ResNet-18 under ``torch.compile``
  (default settings, host checks on) against eager, and the compile time, for BatchNorm,
  ZCA at the stem and every BatchNorm converted.

Peers run from their packages when importable (``pip install --no-deps``; see
``docs/benchmarks.md``); a row whose peer is missing is left out with a note.
"""

from __future__ import annotations

import copy
import functools
import importlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from .. import nn as senn
from ..distances import frechet_distance
from ..eigh import eigh
from ..matrix_functions import logm
from ..spectral import inv_sqrtm, sqrtm
from .files import make_dirs, write_text
from .models import resnet
from .plotting import new_figure, save_figure
from .timing import environment, forward_backward, paired

__all__ = ["SECTIONS", "Case", "measure", "render", "write"]

SECTIONS = ("calls", "embeddings", "spdnet", "fid", "precision", "compiled")

Fields = dict[str, Any]


@dataclass
class Case:
    """One row: what it shows (``meta``), and ``measure()``, which times it once and
    returns its timing fields (``ours_ms``, ``baseline_ms``, ``ratio``, ``ratio_quartiles``,
    or the compile section's)."""

    section: str
    meta: Fields
    measure: Callable[[], Fields]
    runs: list[Fields] = field(default_factory=list)


def _paired(ours: Callable[[], object], baseline: Callable[[], object], repeats: int,
            warmup: int = 2) -> Callable[[], Fields]:  # fmt: skip
    def run() -> Fields:
        return paired(ours, baseline, repeats, warmup=warmup).fields("ours_ms", "baseline_ms", 4)

    return run


def _covariances(batch: int, n: int, samples: int, ridge: float, seed: int) -> torch.Tensor:
    """``X Xᵀ / samples + ridge · I`` (batch, n, n) in float64: rank ``min(n, samples)``."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(batch, n, samples, generator=g, dtype=torch.float64)
    return X @ X.mT / samples + ridge * torch.eye(n, dtype=torch.float64)


def _eigh_squares(decompose: Callable[..., Any]) -> Callable[[torch.Tensor], torch.Tensor]:
    """A sign-invariant use of both outputs: ``V² diag(w)`` (..., n, n)."""

    def function(A: torch.Tensor) -> torch.Tensor:
        w, V = decompose(A)
        return V.square() * w.unsqueeze(-2)

    return function


def _torch_spectral(f: Callable[[torch.Tensor], torch.Tensor]) -> Callable[..., torch.Tensor]:
    def function(A: torch.Tensor) -> torch.Tensor:
        w, V = torch.linalg.eigh(A)
        return (V * f(w).unsqueeze(-2)) @ V.mT

    return function


def calls(quick: bool, repeats: int) -> list[Case]:
    """Small calls (float64), fwd+bwd, against ``torch.linalg.eigh`` autograd."""
    functions = {
        "logm": (logm, _torch_spectral(torch.log)),
        "sqrtm": (sqrtm, _torch_spectral(torch.sqrt)),
        "eigh": (_eigh_squares(eigh), _eigh_squares(torch.linalg.eigh)),
        # torch's own rule: the cost of the call apart from the default rule's series
        'eigh(backward="analytic")': (
            _eigh_squares(functools.partial(eigh, backward="analytic")),
            _eigh_squares(torch.linalg.eigh),
        ),
    }
    shapes = [(1, 3), (64, 22), (4096, 3)] if not quick else [(1, 3), (8, 5)]
    cases = []
    for batch, n in shapes:
        for name, (ours, baseline) in functions.items():
            if (batch == 4096 and name != "logm") or (batch == 1 and "analytic" in name):
                continue  # one row shows the amortized cost, one the analytic rule's
            A = _covariances(batch, n, 2 * n, 0.1, seed=n)
            G = torch.randn(A.shape, dtype=A.dtype, generator=torch.Generator().manual_seed(1))
            with torch.no_grad():
                difference = float((ours(A) - baseline(A)).abs().max())
            meta = {"function": name, "batch": batch, "n": n, "max_abs_difference": difference,
                    "target": 1.3}  # fmt: skip
            step_repeats = repeats * (20 if batch * n * n < 10_000 else 2)
            run = _paired(forward_backward(ours, A, G), forward_backward(baseline, A, G),
                          step_repeats, warmup=20)  # fmt: skip
            cases.append(Case("calls", meta, run))
    return cases


def three_lines(x: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """What a whitening-loss user writes: centre, covariance, ``inv_sqrtm``."""
    xc = x - x.mean(0)
    eye = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
    return xc @ inv_sqrtm(xc.T @ xc / x.shape[0] + eps * eye)


def embeddings(quick: bool, repeats: int) -> list[Case]:
    """``ZCAWhitening1d`` (one group, no running statistics) against :func:`three_lines`."""
    shapes = [(64, 8), (128, 32)] if quick else [(512, 32), (512, 256), (512, 1024), (4096, 256)]
    cases = []
    for shape in shapes:
        g = torch.Generator().manual_seed(0)
        x, G = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
        layer = senn.ZCAWhitening1d(shape[1], affine=False, track_running_stats=False)
        with torch.no_grad():
            difference = float((layer(x) - three_lines(x)).abs().max())
        meta = {"shape": list(shape), "max_abs_difference": difference, "target": 1.2}
        run = _paired(forward_backward(layer, x, G), forward_backward(three_lines, x, G),
                      repeats)  # fmt: skip
        cases.append(Case("embeddings", meta, run))
    return cases


def _optional(module: str) -> Optional[Any]:
    try:
        return importlib.import_module(module)
    except ImportError:  # a peer not installed (or one of its own dependencies missing)
        return None


def _eigh_spdnet(W: torch.Tensor, eps: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """SPDNet written with ``torch.linalg.eigh`` autograd: what users copy."""

    def net(X: torch.Tensor) -> torch.Tensor:
        Y = W.mT @ X @ W
        w, V = torch.linalg.eigh(Y)
        Y = (V * w.clamp_min(eps).unsqueeze(-2)) @ V.mT
        w, V = torch.linalg.eigh(Y)
        return (V * w.log().unsqueeze(-2)) @ V.mT

    return net


def _input_gradient(net: Callable[[torch.Tensor], torch.Tensor], X: torch.Tensor,
                    G: torch.Tensor) -> torch.Tensor:  # fmt: skip
    X = X.detach().requires_grad_(True)
    net(X).backward(G.to(X.dtype))
    assert X.grad is not None
    return X.grad.double()


def spdnet(quick: bool, repeats: int) -> list[Case]:
    """BiMap → ReEig → LogEig against spd_learn and hand-written ``eigh``, float32 input."""
    batch, n, m, eps = (8, 6, 4, 1e-4) if quick else (64, 22, 16, 1e-4)
    X = _covariances(batch, n, 3 * n, 1e-3, seed=2).float()
    G = torch.randn(batch, m, m, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(0)
    ours = nn.Sequential(senn.BiMap(n, m), senn.ReEig(eps), senn.LogEig(vectorize=False))
    bimap: senn.BiMap = ours[0]  # type: ignore[assignment]
    W = bimap.weight.detach().clone()
    reference = _input_gradient(copy.deepcopy(ours).double(), X.double(), G.double())

    def error(net: Callable[[torch.Tensor], torch.Tensor]) -> float:
        return float((_input_gradient(net, X, G) - reference).norm() / reference.norm())

    baselines: list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]] = []
    modules = _optional("spd_learn.modules")
    if modules is not None:
        theirs = nn.Sequential(
            modules.BiMap(n, m), modules.ReEig(threshold=eps),
            modules.LogEig(upper=False, flatten=False),
        )  # fmt: skip
        theirs[0].weight = W
        baselines.append(("spd_learn", theirs))
    baselines.append(("torch.linalg.eigh", _eigh_spdnet(W, eps)))
    cayley = senn.BiMap(n, m, orthogonal_map="cayley")
    cayley.weight = W  # type: ignore[assignment]  # the same W, set through the Cayley map

    def float32(bimap: nn.Module) -> nn.Module:
        return nn.Sequential(
            bimap, senn.ReEig(eps, compute_dtype=torch.float32),
            senn.LogEig(vectorize=False, compute_dtype=torch.float32),
        )  # fmt: skip

    variants = (
        ("defaults (float64 compute, Householder W)", ours),
        ("float32 compute", float32(bimap)),
        ("float32 compute, Cayley W", float32(cayley)),
    )
    cases = []
    for variant, net in variants:
        for name, baseline in baselines:
            meta = {"ours": variant, "baseline": name, "batch": batch, "n": n, "m": m,
                    "ours_gradient_error": error(net), "baseline_gradient_error":
                    error(baseline), "target": 1.2}  # fmt: skip
            run = _paired(forward_backward(net, X, G), forward_backward(baseline, X, G), repeats)
            cases.append(Case("spdnet", meta, run))
    if modules is None:
        cases[0].meta["note"] = "spd_learn not importable: its rows are left out"
    return cases


def _torchmetrics_fid() -> tuple[str, Callable[..., torch.Tensor]]:
    """torchmetrics' own ``_compute_fid`` where importable, else its formula written out."""
    fid = _optional("torchmetrics.image.fid")
    if fid is not None:
        return "torchmetrics _compute_fid", fid._compute_fid

    def formula(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor,
                sigma2: torch.Tensor) -> torch.Tensor:  # fmt: skip
        root = torch.linalg.eigvals(sigma1 @ sigma2).sqrt().real.sum(-1)
        return (mu1 - mu2).square().sum(-1) + sigma1.trace() + sigma2.trace() - 2 * root

    return "torchmetrics' formula (package not importable)", formula


def fid(quick: bool, repeats: int) -> list[Case]:
    """FID at ``n`` = 2048 (64 quick) from float64 statistics of 3n samples: forward, and
    fwd+bwd with respect to the second covariance (the generated features')."""
    n = 64 if quick else 2048
    g = torch.Generator().manual_seed(4)
    x1 = torch.randn(3 * n, n, generator=g, dtype=torch.float64)
    x2 = torch.randn(3 * n, n, generator=g, dtype=torch.float64) * 1.1 + 0.1
    m1, m2, s1, s2 = x1.mean(0), x2.mean(0), torch.cov(x1.T), torch.cov(x2.T)
    name, theirs = _torchmetrics_fid()

    def forward(function: Callable[..., torch.Tensor]) -> Callable[[], torch.Tensor]:
        return lambda: function(m1, s1, m2, s2)

    def with_gradient(function: Callable[..., torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            sigma = s2.clone().requires_grad_(True)
            function(m1, s1, m2, sigma).backward()

        return run

    ours_value = float(frechet_distance(m1, s1, m2, s2))
    theirs_value = float(theirs(m1, s1, m2, s2))
    meta = {"n": n, "baseline": name, "ours_value": ours_value, "baseline_value": theirs_value,
            "relative_difference": abs(ours_value - theirs_value) / abs(theirs_value)}  # fmt: skip
    count = max(1, repeats // 3)
    return [
        Case("fid", {**meta, "mode": "forward", "target": 1.0},
             _paired(forward(frechet_distance), forward(theirs), count, warmup=1)),
        Case("fid", {**meta, "mode": "fwd+bwd", "target": 1.2},
             _paired(with_gradient(frechet_distance), with_gradient(theirs), count, warmup=1)),
    ]  # fmt: skip


PRECISION_FUNCTIONS: dict[str, Callable[..., torch.Tensor]] = {
    "inv_sqrtm": inv_sqrtm,
    "logm": logm,
    "sqrtm": sqrtm,
}
SPECTRA = {  # name: (samples per dimension, ridge)
    "full rank": (2.0, 1e-3),
    "rank n/2 + 1e-4·I": (0.5, 1e-4),
}


def precision(quick: bool, repeats: int) -> list[Case]:
    """float32 input, ``compute_dtype=float32`` against float64: time (fwd+bwd) and the
    input gradient's relative error against float64 compute on float64 input (the exact
    gradient at the float32-rounded matrix), beside the float32 floor (that gradient
    rounded to float32)."""
    sizes = {3: 4096, 22: 64, 64: 16, 256: 1, 2048: 1} if not quick else {3: 16, 22: 2}
    cases = []
    for function_name, function in PRECISION_FUNCTIONS.items():
        for n, batch in sizes.items():
            for spectrum, (per_dimension, ridge) in SPECTRA.items():
                if n == 2048 and (function_name != "inv_sqrtm" or spectrum != "full rank"):
                    continue  # one row at 2048: each call takes seconds
                samples = max(1, round(per_dimension * n))
                A = _covariances(batch, n, samples, ridge, seed=n).float()
                G = torch.randn(A.shape, generator=torch.Generator().manual_seed(5))
                fast = functools.partial(function, compute_dtype=torch.float32)
                exact = functools.partial(function, compute_dtype=torch.float64)
                truth = _input_gradient(exact, A.double(), G.double())

                def error(gradient: torch.Tensor, truth: torch.Tensor = truth) -> float:
                    return float((gradient - truth).norm() / truth.norm())

                meta = {
                    "function": function_name, "n": n, "batch": batch, "spectrum": spectrum,
                    "float32_error": error(_input_gradient(fast, A, G)),
                    "float64_error": error(_input_gradient(exact, A, G)),
                    "float32_floor": error(truth.float().double()),
                }  # fmt: skip
                count = max(2, repeats // 3) if n >= 256 else repeats
                run = _paired(forward_backward(fast, A, G), forward_backward(exact, A, G),
                              count, warmup=1 if n >= 256 else 2)  # fmt: skip
                cases.append(Case("precision", meta, run))
    return cases


def _compile_and_time(build: Callable[[], nn.Module], batch: int, repeats: int) -> Fields:
    """Compile time (the first compiled step, caches off) and compiled vs eager step."""
    from .speed import _sgd_steps

    torch._dynamo.reset()
    step_of = _sgd_steps(batch, "cpu")
    torch.manual_seed(0)
    eager_model = build()
    compiled_model = copy.deepcopy(eager_model)
    eager, compiled = step_of(eager_model), step_of(compiled_model, torch.compile)
    with torch._inductor.config.patch(force_disable_caches=True):
        start = time.perf_counter()
        compiled()
        compile_s = time.perf_counter() - start
    timed = paired(compiled, eager, repeats)
    return {"compile_s": round(compile_s, 1), **timed.fields("ours_ms", "baseline_ms")}


def compiled(quick: bool, repeats: int) -> list[Case]:
    """The quick-preset ResNet-18 (1×28×28, width 0.125) under ``torch.compile`` with default
    settings and the host checks on: compiled step vs eager step, and compile time."""
    width, batch = (0.125, 8) if quick else (0.125, 32)

    def build(norm: str) -> Callable[[], nn.Module]:
        def model() -> nn.Module:
            if norm == "zca-all":
                net = resnet("resnet18", in_channels=1, width=width, norm="batchnorm")
                return senn.convert_batchnorm(net, "zca", group_size=8)
            options = {"group_size": 16} if norm == "zca" else {}
            return resnet("resnet18", in_channels=1, width=width, norm=norm, **options)

        return model

    labels = {"batchnorm": "BatchNorm", "zca": "ZCA at the stem (d = 16)",
              "zca-all": "every BatchNorm → ZCA (d = 8)"}  # fmt: skip
    return [
        Case("compiled", {"model": labels[norm], "norm": norm, "batch": batch, "width": width,
                          "target": 1.0},
             functools.partial(_compile_and_time, build(norm), batch, max(3, repeats // 2)))
        for norm in labels
    ]  # fmt: skip


BUILDERS: dict[str, Callable[[bool, int], list[Case]]] = {
    "calls": calls,
    "embeddings": embeddings,
    "spdnet": spdnet,
    "fid": fid,
    "precision": precision,
    "compiled": compiled,
}


def measure(sections: tuple[str, ...], runs: int, repeats: int, quick: bool,
            progress: Optional[Callable[[str], None]] = None) -> dict[str, Any]:  # fmt: skip
    """Build every row, then time all of them ``runs`` times; the JSON-ready result."""
    progress = progress or functools.partial(print, flush=True)
    cases = [case for section in sections for case in BUILDERS[section](quick, repeats)]
    for run in range(runs):
        for case in cases:
            case.runs.append(case.measure())
            progress(f"run {run + 1}/{runs} {case.section} {_describe(case.section, case.meta)}: "
                     f"{_ratio_cell(case.runs[-1])}")  # fmt: skip
    return {
        "environment": environment(),
        "runs": runs,
        "repeats": repeats,
        "quick": quick,
        "rows": [{"section": c.section, **c.meta, "runs": c.runs} for c in cases],
    }


def _describe(section: str, meta: Fields) -> str:
    """A row's short name, from its section and what it shows."""
    if section == "calls":
        return f"{meta['function']}, {meta['batch']} × {meta['n']}×{meta['n']}"
    if section == "embeddings":
        return f"ZCAWhitening1d {tuple(meta['shape'])}"
    if section == "spdnet":
        return f"{meta['ours']} vs {meta['baseline']}"
    if section == "fid":
        return f"{meta['mode']}, n = {meta['n']}"
    if section == "precision":
        return f"{meta['function']}, {meta['batch']} × {meta['n']}², {meta['spectrum']}"
    return str(meta["model"])


def _ratio_cell(run: Fields) -> str:
    low, high = run["ratio_quartiles"]
    return f"{run['ratio']:.2f}× [{low:.2f}–{high:.2f}]"


def _row_cells(row: Fields) -> list[str]:
    return [_ratio_cell(run) for run in row["runs"]]


def _met(row: Fields) -> str:
    target = row.get("target")
    if target is None:
        return ""
    worst = max(run["ratio"] for run in row["runs"])
    return f"≤ {target}× " + ("met" if worst <= target else "**not met**")


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> list[str]:
    """A bold title, a Markdown table, a blank line."""
    return [
        f"**{title}**",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
        *("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows),
        "",
    ]


def render(result: dict[str, Any]) -> str:
    """``bench_users.md``: the environment, then one table per section."""
    env = result["environment"]
    runs = [f"run {i + 1}" for i in range(result["runs"])]
    lines = [
        f"Measured on {env['cpu']}, {env['threads']} thread(s), torch {env['torch']}; "
        f"{result['runs']} runs of every row, each the median of interleaved per-pair "
        "ratios ours / baseline [quartiles]; fwd+bwd = forward, then `y.backward(G)`.",
        "",
    ]
    rows = result["rows"]

    def section(name: str) -> list[Fields]:
        return [row for row in rows if row["section"] == name]

    def ms(row: Fields, key: str) -> str:
        return " / ".join(f"{run[key]:.3g}" for run in row["runs"])

    if section("calls"):
        lines += _table(
            "Small calls, fwd+bwd, float64, against `torch.linalg.eigh` autograd",
            ["function", "batch × n×n", "ours ms", "eigh ms", *runs, "target"],
            [[f"`{r['function']}`", f"{r['batch']} × {r['n']}×{r['n']}", ms(r, "ours_ms"),
              ms(r, "baseline_ms"), *_row_cells(r), _met(r)] for r in section("calls")],
        )  # fmt: skip
    if section("embeddings"):
        lines += _table(
            "(N, C) embeddings: `ZCAWhitening1d` against three lines of `inv_sqrtm`",
            ["shape", "layer ms", "three lines ms", *runs, "target", "max abs difference"],
            [[tuple(r["shape"]), ms(r, "ours_ms"), ms(r, "baseline_ms"), *_row_cells(r),
              _met(r), f"{r['max_abs_difference']:.1e}"] for r in section("embeddings")],
        )  # fmt: skip
    if section("spdnet"):
        first = section("spdnet")[0]
        lines += _table(
            f"SPDNet BiMap({first['n']}→{first['m']}) → ReEig → LogEig, batch {first['batch']}, "
            "float32 input, fwd+bwd",
            ["ours", "baseline", "ours ms", "baseline ms", *runs, "target",
             "input-gradient error ours", "baseline's"],
            [[r["ours"], r["baseline"], ms(r, "ours_ms"), ms(r, "baseline_ms"), *_row_cells(r),
              _met(r), f"{r['ours_gradient_error']:.1e}", f"{r['baseline_gradient_error']:.1e}"]
             for r in section("spdnet")],
        )  # fmt: skip
    if section("fid"):
        first = section("fid")[0]
        lines += _table(
            f"FID, n = {first['n']}, float64 statistics, against {first['baseline']} (values "
            f"{first['ours_value']:.10g} and {first['baseline_value']:.10g}, relative "
            f"difference {first['relative_difference']:.1e})",
            ["mode", "ours ms", "torchmetrics ms", *runs, "target"],
            [[r["mode"], ms(r, "ours_ms"), ms(r, "baseline_ms"), *_row_cells(r), _met(r)]
             for r in section("fid")],
        )  # fmt: skip
    if section("precision"):
        lines += _table(
            "Precision policy: `compute_dtype=float32` against float64, float32 input, "
            "fwd+bwd (ratio = float32 time / float64 time; errors: input gradient against "
            "the exact gradient at the float32 matrix, relative)",
            ["function", "batch × n²", "spectrum", "float32 ms", "float64 ms", *runs,
             "error float32 compute", "error float64 compute", "float32 floor"],
            [[f"`{r['function']}`", f"{r['batch']} × {r['n']}²", r["spectrum"],
              ms(r, "ours_ms"), ms(r, "baseline_ms"), *_row_cells(r),
              f"{r['float32_error']:.1e}", f"{r['float64_error']:.1e}",
              f"{r['float32_floor']:.1e}"] for r in section("precision")],
        )  # fmt: skip
    if section("compiled"):
        first = section("compiled")[0]
        batchnorm = [r for r in section("compiled") if r["norm"] == "batchnorm"]

        def compile_cell(row: Fields) -> str:
            seconds = [run["compile_s"] for run in row["runs"]]
            cell = " / ".join(f"{s:.1f}" for s in seconds)
            if batchnorm and row is not batchnorm[0]:
                ratios = [s / b["compile_s"] for s, b in zip(seconds, batchnorm[0]["runs"])]
                cell += " (" + " / ".join(f"{r:.2f}×" for r in ratios) + " BatchNorm's)"
            return cell

        lines += _table(
            f"One SGD step, quick-preset ResNet-18 (width {first['width']}, batch "
            f"{first['batch']}), `torch.compile` defaults, host checks on, against eager",
            ["model", "compiled ms", "eager ms", *runs, "target", "compile s (target: ZCA at "
             "the stem ≤ 1.2× BatchNorm's)"],
            [[r["model"], ms(r, "ours_ms"), ms(r, "baseline_ms"), *_row_cells(r), _met(r),
              compile_cell(r)] for r in section("compiled")],
        )  # fmt: skip
    notes = [row["note"] for row in rows if row.get("note")]
    lines += [f"Note: {note}" for note in notes]
    return "\n".join(lines).rstrip("\n") + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    """Each row's ratio per run (log scale), with its target."""
    rows = [row for row in result["rows"] if row["section"] != "precision"]
    figure, (axis,) = new_figure(1, width=9.0, height=0.28 * len(rows) + 1.5)
    labels = []
    for index, row in enumerate(rows):
        labels.append(f"{row['section']}: {_describe(row['section'], row)}")
        for run in row["runs"]:
            axis.plot(run["ratio"], index, "o", color="tab:blue", alpha=0.7)
        if row.get("target") is not None:
            axis.plot(row["target"], index, "|", color="tab:red", markersize=12)
    axis.axvline(1.0, color="grey", linewidth=0.8)
    axis.set_xscale("log")
    ticks = [0.25, 0.5, 1, 1.5, 2, 3]
    axis.set_xticks(ticks, [f"{t:g}×" for t in ticks])
    axis.xaxis.set_minor_formatter("")
    axis.set_yticks(range(len(rows)), labels, fontsize=7)
    axis.invert_yaxis()
    axis.set_xlabel("ours / baseline (dots: runs; red bars: targets)")
    save_figure(figure, path)


def write(result: dict[str, Any], folder: Path, stem: str = "bench_users") -> None:
    """``stem``.json, .md and .png in ``folder``."""
    make_dirs(folder, "results folder")
    write_text(folder / f"{stem}.json", json.dumps(result, indent=1) + "\n")
    write_text(folder / f"{stem}.md", render(result))
    plot(result, folder / f"{stem}.png")
