"""Reports of ``stableeig bench speed``: the Markdown tables, the README summary and the plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from .files import write_text
from .plotting import new_figure, save_figure
from .speed import FLOOR

__all__ = ["plot_speed", "speed_markdown", "summary_markdown", "write"]


def _table(title: str, columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> list[str]:
    """A bold title, a blank line and a Markdown table."""
    return [
        title,
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
        *("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows),
    ]


def _decomposition(rows: list[dict[str, Any]]) -> list[str]:
    float64 = {(r["n"], r["method"]): r for r in rows if r["baseline"].endswith("float64")}
    return _table(
        "**(a) inv_sqrtm forward+backward vs torch.linalg.eigh autograd** (float32 input)",
        ("n", "batch", "method", "ours ms", "vs eigh float32", "vs eigh float64"),
        [
            (r["n"], r["batch"], r["method"], r["ours_ms"], f"{r['ratio']:.2f}×",
             f"{float64[r['n'], r['method']]['ratio']:.2f}×")
            for r in rows
            if r["baseline"].endswith("float32")
        ],
    )  # fmt: skip


def _eigh_backward(rows: list[dict[str, Any]]) -> list[str]:
    return _table(
        "**eigh backward alone vs the analytic rule** (16 × 64×64, float32)",
        ("rule", "ratio"),
        [(r["rule"], f"{r['ratio_to_analytic']:.2f}×") for r in rows],
    )


def _layers(rows: list[dict[str, Any]]) -> list[str]:
    evals = {(r["method"], r["group_size"]): r for r in rows if r["mode"] == "eval"}
    return _table(
        f"**(b) ZCAWhitening2d vs nn.BatchNorm2d**, {tuple(rows[0]['shape'])} float32",
        ("method", "group size", "train fwd+bwd", "eval fwd"),
        [
            (r["method"], r["group_size"], _with_target(r),
             _with_target(evals[r["method"], r["group_size"]]))
            for r in rows
            if r["mode"] == "train"
        ],
    )  # fmt: skip


def _pi_over_power(row: dict[str, Any]) -> list[str]:
    return [
        f"The paper's PI layer vs the `power` layer (train fwd+bwd, d={row['group_size']}): "
        f"{row['pi_ms']} ms vs {row['power_ms']} ms, {_with_target(row)}"
    ]


def _placement(rows: list[dict[str, Any]]) -> list[str]:
    return _table(
        "**eigh on the device vs a host round trip** (float64)",
        ("n", "batch", "device ms", "round trip ms", "device / round trip", "layers use"),
        [
            (r["n"], r["batch"], r["device_ms"], r["round_trip_ms"],
             f"{r['device_over_round_trip']:.2f}×", r["layers_use"])
            for r in rows
        ],
    )  # fmt: skip


def _training(rows: list[dict[str, Any]]) -> list[str]:
    return _table(
        f"**(c) one SGD step, quick-preset ResNet-18 (batch {rows[0]['batch']}, 1×28×28), "
        "ZCA at the stem vs BN**",
        ("method", "group size", "ZCA step ms", "BN step ms", "ratio"),
        [
            (r["method"], r["group_size"], r["ours_ms"], r["batchnorm_ms"], _with_target(r))
            for r in rows
        ],
    )


def _compiled(rows: list[dict[str, Any]]) -> list[str]:
    def stem(row: dict[str, Any]) -> str:
        if row["method"] == "batchnorm":
            return "BatchNorm"
        return f"ZCA `{row['method']}`, d = {row['group_size']}"

    return _table(
        f"**(d) the same SGD step with the model under `torch.compile` (backend "
        f"`{rows[0]['backend']}`) vs eager, batch {rows[0]['batch']}**",
        ("stem", "mode", "compiled step ms", "eager step ms", "compiled / eager",
         "first call s", "first-step loss difference"),
        [
            (stem(r), _mode(r), r["compiled_ms"], r["eager_ms"], _ratio(r), r["first_call_s"],
             f"{r['first_loss_difference']:.1e}")
            for r in rows
        ],
    )  # fmt: skip


SECTIONS = (
    ("decomposition", _decomposition),
    ("eigh_backward", _eigh_backward),
    ("layers", _layers),
    ("pi_over_power", _pi_over_power),
    ("placement", _placement),
    ("training", _training),
    ("compiled", _compiled),
)
"""The result's parts in the order ``bench_speed.md`` shows them, each with its renderer."""


def speed_markdown(result: dict[str, Any]) -> str:
    """``bench_speed.md``: the environment, then one table per measured part."""
    env = result["environment"]
    lines = [
        f"Measured on {env['cpu']}, {env['threads']} threads, torch {env['torch']}, "
        f"device {result['device']}; medians of interleaved per-pair ratios [quartiles]. "
        "Training is timed as forward, then `y.backward(G)` with a fixed random G.",
        "",
    ]
    for key, section in SECTIONS:
        if result.get(key):
            lines += [*section(result[key]), ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def _mode(row: dict[str, Any]) -> str:
    """``default`` or ``reduce-overhead, host checks off``."""
    mode = row.get("mode", "default")
    return mode if row.get("host_checks", True) else f"{mode}, host checks off"


def _ratio(row: dict[str, Any]) -> str:
    """``1.23× [1.10–1.40]``: the median ratio and, when measured, its quartiles."""
    if not row.get("ratio_quartiles"):
        return f"{row['ratio']:.2f}×"
    low, high = row["ratio_quartiles"]
    return f"{row['ratio']:.2f}× [{low:.2f}–{high:.2f}]"


def _with_target(row: dict[str, Any]) -> str:
    target: Optional[float] = row.get("target")
    text = _ratio(row)
    if target is not None:
        text += f" ({'≤' if row['ratio'] <= target else 'above'} {target}×)"
    return text


def plot_speed(result: dict[str, Any], path: Path) -> None:
    figure, (left, right) = new_figure(2)
    rows = [r for r in result.get("decomposition", []) if r["baseline"].endswith("float64")]
    for method in dict.fromkeys(r["method"] for r in rows):
        points = [(r["n"], r["ratio"]) for r in rows if r["method"] == method]
        left.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=method)
    left.axhline(1.0, color="gray", lw=0.8)
    left.set_xscale("log", base=2)
    left.set_xlabel("matrix size n (batch = 65536 / n²)")
    left.set_ylabel("time / torch.linalg.eigh autograd (float64)")
    left.set_title("(a) inv_sqrtm forward+backward")
    left.legend()
    layers = result.get("layers", [])
    for mode, style in (("train", "-o"), ("eval", "--s")):
        for method in ("loewner", "power"):
            points = [
                (r["group_size"], r["ratio"])
                for r in layers
                if r["mode"] == mode and r["method"] == method
            ]
            if points:
                right.plot(
                    [p[0] for p in points], [p[1] for p in points], style, label=f"{method} {mode}"
                )
    right.axhline(1.0, color="gray", lw=0.8)
    right.set_xscale("log", base=2)
    right.set_xlabel("group size")
    right.set_ylabel("time / nn.BatchNorm2d")
    right.set_title(f"(b) ZCAWhitening2d, {tuple(layers[0]['shape']) if layers else ''}")
    right.legend()
    save_figure(figure, path)


def summary_markdown(result: dict[str, Any]) -> str:
    """The README's speed table: each of issue 9's CPU targets, its measurement and, for the
    layer, the floor (:data:`FLOOR`, the same passes without the decomposition)."""
    env = result["environment"]
    lines = [
        f"Measured on {env['cpu']}, {env['threads']} threads, torch {env['torch']} "
        "(`stableeig bench speed`).",
        "",
        "| measurement | ratio [quartiles] | passes alone (floor) | target |",
        "|---|---|---|---|",
    ]

    def add(label: str, row: Optional[dict[str, Any]], floor: str = "") -> None:
        if row is None:
            return
        target = row.get("target")
        verdict = (
            ""
            if target is None
            else f"≤ {target}×" + ("" if row["ratio"] <= target else " (not met)")
        )
        lines.append(f"| {label} | {_ratio(row)} | {floor} | {verdict} |")

    decomposition = {
        (r["n"], r["method"]): r
        for r in result.get("decomposition", [])
        if r["baseline"].endswith("float64")
    }
    if (64, "loewner") in decomposition:
        row = dict(decomposition[64, "loewner"], target=1.2)
        add(
            '`inv_sqrtm(backward="loewner")` fwd+bwd, 16 × 64×64, vs `torch.linalg.eigh` '
            "autograd in float64",
            row,
        )
    for row in result.get("eigh_backward", []):
        if row["rule"] == "power":
            add(
                '`eigh(backward="power")` backward vs `analytic`, 16 × 64×64',
                {"ratio": row["ratio_to_analytic"], "target": 3.0},
            )
    layers = {(r["method"], r["group_size"], r["mode"]): r for r in result.get("layers", [])}
    shape = tuple(result["layers"][0]["shape"]) if result.get("layers") else ()
    for method, group_size, mode in (
        ("loewner", 16, "train"),
        ("loewner", 64, "train"),
        ("power", 64, "train"),
        ("loewner", 16, "eval"),
        ("loewner", 64, "eval"),
    ):
        floor = layers.get((FLOOR, group_size, mode))
        what = "train fwd+bwd" if mode == "train" else "eval forward"
        add(
            f"`ZCAWhitening2d` {what} vs `nn.BatchNorm2d`, {shape}, `{method}`, d = {group_size}",
            layers.get((method, group_size, mode)),
            _ratio(floor) if floor else "",
        )
    if result.get("pi_over_power"):
        row = result["pi_over_power"]
        add(f"the paper's PI layer vs the `power` layer, train, d = {row['group_size']}", row)
    for row in result.get("training", []):
        add(
            f"one SGD step, quick-preset ResNet-18, ZCA (`{row['method']}`, d = "
            f"{row['group_size']}) vs BatchNorm at the stem",
            row,
        )
    for row in result.get("compiled", []):
        stem = "BatchNorm" if row["method"] == "batchnorm" else f"ZCA (`{row['method']}`)"
        add(f"the same SGD step, {stem} at the stem, `torch.compile` ({_mode(row)}) vs eager", row)
    return "\n".join(lines) + "\n"


def write(result: dict[str, Any], folder: Path, stem: str = "bench_speed") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_text(folder / f"{stem}.json", json.dumps(result, indent=1) + "\n")
    write_text(folder / f"{stem}.md", speed_markdown(result))
    write_text(folder / f"{stem}_summary.md", summary_markdown(result))
    plot_speed(result, folder / f"{stem}.png")
