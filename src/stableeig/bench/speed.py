"""Speed: decompositions, layers and a training step, each against its baseline in-process.

Every comparison interleaves ours and the baseline and reports the median of per-pair
ratios, so machine noise hits both alike. (a) ``inv_sqrtm`` forward+backward per method
vs ``torch.linalg.eigh`` autograd (float32, and float64 to compare at the same internal
precision); (b) ``ZCAWhitening2d`` train forward+backward and eval forward vs
``nn.BatchNorm2d``; (c) one SGD step of the quick-preset ResNet with ZCA vs with BatchNorm.
"""

from __future__ import annotations

import functools
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from .._autograd import HOST_EIGH_MAX_SIZE
from ..nn import ZCAWhitening2d
from ..nn._statistics import GradientLink, group_affine, group_moments
from ..rules import RULES
from ..rules import names as rule_names
from ..spectral import inv_sqrtm
from .models import resnet
from .plotting import new_figure, save_figure

__all__ = [
    "FLOOR",
    "StreamedPasses",
    "decomposition_speed",
    "environment",
    "forward_backward",
    "layer_speed",
    "paired",
    "pi_over_power",
    "placement_speed",
    "speed_markdown",
    "summary_markdown",
    "training_speed",
]

LAYER_TARGETS = {  # issue 9's CPU targets, ratios to nn.BatchNorm2d
    ("loewner", 16, "train"): 1.5,
    ("loewner", 64, "train"): 2.0,
    ("power", 64, "train"): 2.5,
}
EVAL_TARGETS = {16: 1.2, 64: 1.35}  # every method
PI_OVER_POWER_TARGET = 2.0


def environment() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": cpu,
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def paired(
    ours: Callable[[], None], baseline: Callable[[], None], repeats: int, device: str = "cpu"
) -> tuple[float, float, float]:
    """(median seconds of ours, of the baseline, median per-pair ratio), after a warm-up.

    Pairs are interleaved (ours, then the baseline, ``repeats`` times) so that machine noise
    hits both alike; the quartiles of the per-pair ratios are kept in ``LAST_SPREAD``.
    """
    for _ in range(2):
        ours()
        baseline()
    _sync(device)
    a, b, ratios = [], [], []
    for _ in range(repeats):
        start = time.perf_counter()
        ours()
        _sync(device)
        middle = time.perf_counter()
        baseline()
        _sync(device)
        end = time.perf_counter()
        a.append(middle - start)
        b.append(end - middle)
        ratios.append((middle - start) / (end - middle))
    quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    LAST_SPREAD[:] = [round(quartiles[0], 3), round(quartiles[2], 3)]
    return statistics.median(a), statistics.median(b), statistics.median(ratios)


LAST_SPREAD: list[float] = []  # [first quartile, third quartile] of the last paired() ratios


def _torch_inv_sqrtm(dtype: torch.dtype) -> Callable[[torch.Tensor], torch.Tensor]:
    def function(A: torch.Tensor) -> torch.Tensor:
        w, V = torch.linalg.eigh(A.to(dtype))
        return ((V * w.rsqrt().unsqueeze(-2)) @ V.mT).to(A.dtype)

    return function


def forward_backward(
    function: Callable[[torch.Tensor], torch.Tensor], A: torch.Tensor, G: torch.Tensor
) -> Callable[[], None]:
    def run() -> None:  # exactly what training runs: forward, then backward(G)
        X = A.detach().requires_grad_(True)
        function(X).backward(G)

    return run


def decomposition_speed(
    sizes: tuple[int, ...] = (4, 16, 64, 128, 256),
    elements: int = 1 << 16,
    repeats: int = 10,
    device: str = "cpu",
) -> list[dict[str, Any]]:
    """``inv_sqrtm`` fwd+bwd per method vs torch eigh autograd; batch = elements / n²."""
    rows = []
    for n in sizes:
        batch = max(1, elements // (n * n))
        g = torch.Generator().manual_seed(n)
        X = torch.randn(batch, n, 2 * n, generator=g)
        A = (X @ X.mT / (2 * n) + 1e-3 * torch.eye(n)).to(device)
        G = torch.randn(A.shape, generator=g).to(device)
        for method in rule_names(("spectral", "eigenvector")):
            for baseline_dtype in (torch.float32, torch.float64):
                ours_s, base_s, ratio = paired(
                    forward_backward(functools.partial(inv_sqrtm, backward=method), A, G),
                    forward_backward(_torch_inv_sqrtm(baseline_dtype), A, G),
                    repeats,
                    device,
                )
                rows.append(
                    {
                        "n": n,
                        "batch": batch,
                        "method": method,
                        "baseline": f"torch.linalg.eigh autograd in {str(baseline_dtype)[6:]}",
                        "ours_ms": round(ours_s * 1e3, 3),
                        "baseline_ms": round(base_s * 1e3, 3),
                        "ratio": round(ratio, 3),
                    }
                )
    return rows


def eigh_backward_speed(
    n: int = 64, batch: int = 16, repeats: int = 20, device: str = "cpu"
) -> list[dict[str, Any]]:
    """Backward alone of ``eigh`` per rule vs the ``analytic`` rule (issue target: power ≤ 3×)."""
    from ..eigh import eigh

    g = torch.Generator().manual_seed(1)
    X = torch.randn(batch, n, 3 * n, generator=g)
    A = (X @ X.mT / (3 * n) + 1e-4 * torch.eye(n)).to(device).requires_grad_(True)
    G = torch.randn(batch, n, n, generator=g).to(device)

    def backward_of(rule: str) -> Callable[[], None]:
        def run() -> None:
            w, V = eigh(A, rule)
            loss = (V * G).sum() + w.sum()
            start = time.perf_counter()
            loss.backward()
            _sync(device)
            run.seconds.append(time.perf_counter() - start)  # type: ignore[attr-defined]

        run.seconds = []  # type: ignore[attr-defined]
        return run

    analytic = backward_of("analytic")
    rows = []
    for rule in ("power", "taylor", "clip"):
        ours = backward_of(rule)
        analytic.seconds.clear()  # type: ignore[attr-defined]
        paired(ours, analytic, repeats, device)
        ratios = [a / b for a, b in zip(ours.seconds[2:], analytic.seconds[2:])]  # type: ignore[attr-defined]
        rows.append(
            {
                "rule": rule,
                "n": n,
                "batch": batch,
                "ratio_to_analytic": round(statistics.median(ratios), 3),
                "target": 3.0 if rule == "power" else None,
            }
        )
    return rows


FLOOR = "passes alone"  # the layer's activation passes with a fixed transform


class StreamedPasses(nn.Module):
    """The layers' activation passes without the decomposition: the floor of their cost.

    Training: batch moments and the affine map with a fixed transform that still depends
    on the covariance (so the backward makes the same passes); eval: the affine map.
    """

    def __init__(self, num_features: int, group_size: int) -> None:
        super().__init__()
        groups = num_features // group_size
        self.group_size = group_size
        self.transform: torch.Tensor
        self.shift: torch.Tensor
        self.register_buffer("transform", torch.eye(group_size).repeat(groups, 1, 1))
        self.register_buffer("shift", torch.zeros(groups, group_size, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x3 = x.reshape(x.shape[0], x.shape[1], -1).contiguous()
        if not self.training:
            return group_affine(x3, self.transform, self.shift).view(x.shape)
        link = GradientLink()
        _, covariance, _, alias = group_moments(x3, self.group_size, link=link)
        transform = self.transform + 0 * covariance
        return group_affine(alias, transform, self.shift, link=link).view(x.shape)


def layer_speed(
    shape: tuple[int, ...] = (128, 64, 32, 32),
    group_sizes: tuple[int, ...] = (4, 16, 64),
    methods: tuple[str, ...] = tuple(RULES),
    repeats: int = 10,
    device: str = "cpu",
) -> list[dict[str, Any]]:
    """ZCAWhitening2d train fwd+bwd and eval fwd vs nn.BatchNorm2d on float32 ``shape``.

    Training is timed as a training step sees the layer: forward, then ``y.backward(G)``
    with a fixed random ``G``, nothing added on either side. ``pi`` runs at the largest
    group size only (its 64 sequential deflations make it the slow baseline). A last row
    per group size, :data:`FLOOR`, times :class:`StreamedPasses`: what is left of the
    layer without its decomposition and d×d work."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g).to(device)
    upstream = torch.randn(shape, generator=g).to(device)
    bn = nn.BatchNorm2d(shape[1]).to(device)
    rows = []
    for group_size in group_sizes:
        for method in (*methods, FLOOR):
            if method == "pi" and group_size != max(group_sizes):
                continue
            layer = (
                StreamedPasses(shape[1], group_size)
                if method == FLOOR
                else ZCAWhitening2d(shape[1], group_size=group_size, method=method)
            ).to(device)
            for mode in ("train", "eval"):
                layer.train(mode == "train"), bn.train(mode == "train")
                if mode == "train":
                    ours, base = (
                        forward_backward(layer, x, upstream),
                        forward_backward(bn, x, upstream),
                    )
                else:
                    ours, base = _no_grad(layer, x), _no_grad(bn, x)
                ours_s, base_s, ratio = paired(ours, base, repeats, device)
                target = (
                    None
                    if method == FLOOR
                    else EVAL_TARGETS.get(group_size)
                    if mode == "eval"
                    else LAYER_TARGETS.get((method, group_size, mode))
                )
                rows.append(
                    {
                        "method": method,
                        "group_size": group_size,
                        "mode": mode,
                        "shape": list(shape),
                        "ours_ms": round(ours_s * 1e3, 2),
                        "batchnorm_ms": round(base_s * 1e3, 2),
                        "ratio": round(ratio, 3),
                        "ratio_quartiles": list(LAST_SPREAD),
                        "target": target,
                    }
                )
    return rows


def _no_grad(module: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        with torch.no_grad():
            module(x)

    return run


def pi_over_power(
    shape: tuple[int, ...] = (128, 64, 32, 32), repeats: int = 10, device: str = "cpu"
) -> dict[str, Any]:
    """The paper's PI baseline layer vs the ``power`` layer, train fwd+bwd, d = C."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g).to(device)
    upstream = torch.randn(shape, generator=g).to(device)
    pi, power = (
        ZCAWhitening2d(shape[1], group_size=shape[1], method=m).to(device) for m in ("pi", "power")
    )
    pi_s, power_s, ratio = paired(
        forward_backward(pi, x, upstream), forward_backward(power, x, upstream), repeats, device
    )
    return {
        "group_size": shape[1],
        "pi_ms": round(pi_s * 1e3, 2),
        "power_ms": round(power_s * 1e3, 2),
        "ratio": round(ratio, 3),
        "ratio_quartiles": list(LAST_SPREAD),
        "target": PI_OVER_POWER_TARGET,
    }


def placement_speed(
    device: str,
    sizes: tuple[int, ...] = (4, 16, 32, 64, 128, 256),
    batches: tuple[int, ...] = (1, 16),
    repeats: int = 10,
) -> list[dict[str, Any]]:
    """``torch.linalg.eigh`` (float64, as the layers decompose) on the device vs a host
    round trip (copy, LAPACK, copy back): the data behind ``HOST_EIGH_MAX_SIZE``. Empty on
    a CPU, where there is no round trip."""
    if not device.startswith("cuda"):
        return []
    rows = []
    for n in sizes:
        for batch in batches:
            g = torch.Generator().manual_seed(n)
            X = torch.randn(batch, n, 2 * n, generator=g, dtype=torch.float64)
            A = (X @ X.mT / (2 * n) + 1e-4 * torch.eye(n, dtype=torch.float64)).to(device)

            def on_device(A: torch.Tensor = A) -> None:
                torch.linalg.eigh(A)

            def round_trip(A: torch.Tensor = A) -> None:
                w, V = torch.linalg.eigh(A.cpu())
                w.to(device), V.to(device)

            device_s, host_s, ratio = paired(on_device, round_trip, repeats, device)
            rows.append(
                {
                    "n": n,
                    "batch": batch,
                    "device_ms": round(device_s * 1e3, 3),
                    "round_trip_ms": round(host_s * 1e3, 3),
                    "device_over_round_trip": round(ratio, 3),
                    "layers_use": "host" if n <= HOST_EIGH_MAX_SIZE else "device",
                }
            )
    return rows


def training_speed(
    methods: tuple[str, ...] = ("loewner", "power"),
    group_size: int = 64,
    batch: int = 128,
    repeats: int = 10,
    device: str = "cpu",
    width: float = 0.125,
) -> list[dict[str, Any]]:
    """One SGD step of the quick-preset ResNet-18 (Fashion-MNIST-sized input), ZCA vs BN."""
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 1, 28, 28, generator=g).to(device)
    labels = torch.randint(0, 10, (batch,), generator=g).to(device)

    def step_of(model: nn.Module) -> Callable[[], None]:
        model.to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

        def run() -> None:
            optimizer.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(images), labels).backward()
            optimizer.step()

        return run

    reference = step_of(resnet("resnet18", in_channels=1, width=width, norm="batchnorm"))
    rows = []
    for method in methods:
        model = resnet(
            "resnet18", in_channels=1, width=width, norm="zca", group_size=group_size, method=method
        )
        ours_s, base_s, ratio = paired(step_of(model), reference, repeats, device)
        rows.append(
            {
                "method": method,
                "group_size": group_size,
                "batch": batch,
                "width": width,
                "ours_ms": round(ours_s * 1e3, 1),
                "batchnorm_ms": round(base_s * 1e3, 1),
                "ratio": round(ratio, 3),
                "ratio_quartiles": list(LAST_SPREAD),
                "target": 1.3,
            }
        )
    return rows


def speed_markdown(result: dict[str, Any]) -> str:
    env = result["environment"]
    lines = [
        f"Measured on {env['cpu']}, {env['threads']} threads, torch {env['torch']}, "
        f"device {result['device']}; medians of interleaved per-pair ratios [quartiles]. "
        "Training is timed as forward, then `y.backward(G)` with a fixed random G.",
        "",
    ]
    if result.get("decomposition"):
        lines += [
            "**(a) inv_sqrtm forward+backward vs torch.linalg.eigh autograd** (float32 input)",
            "",
            "| n | batch | method | ours ms | vs eigh float32 | vs eigh float64 |",
            "|---|---|---|---|---|---|",
        ]
        rows = result["decomposition"]
        for row in rows:
            if row["baseline"].endswith("float32"):
                other = next(
                    r
                    for r in rows
                    if r["n"] == row["n"]
                    and r["method"] == row["method"]
                    and r["baseline"].endswith("float64")
                )
                lines.append(
                    f"| {row['n']} | {row['batch']} | {row['method']} | {row['ours_ms']} | "
                    f"{row['ratio']:.2f}× | {other['ratio']:.2f}× |"
                )
        lines.append("")
    if result.get("eigh_backward"):
        lines += [
            "**eigh backward alone vs the analytic rule** (16 × 64×64, float32)",
            "",
            "| rule | ratio |",
            "|---|---|",
        ]
        lines += [
            f"| {r['rule']} | {r['ratio_to_analytic']:.2f}× |" for r in result["eigh_backward"]
        ]
        lines.append("")
    if result.get("layers"):
        shape = tuple(result["layers"][0]["shape"])
        lines += [
            f"**(b) ZCAWhitening2d vs nn.BatchNorm2d**, {shape} float32",
            "",
            "| method | group size | train fwd+bwd | eval fwd |",
            "|---|---|---|---|",
        ]
        layers = result["layers"]
        for row in layers:
            if row["mode"] == "train":
                other = next(
                    r
                    for r in layers
                    if r["method"] == row["method"]
                    and r["group_size"] == row["group_size"]
                    and r["mode"] == "eval"
                )
                lines.append(
                    f"| {row['method']} | {row['group_size']} | {_with_target(row)} | "
                    f"{_with_target(other)} |"
                )
        lines.append("")
    if result.get("pi_over_power"):
        row = result["pi_over_power"]
        lines += [
            f"The paper's PI layer vs the `power` layer (train fwd+bwd, d={row['group_size']}): "
            f"{row['pi_ms']} ms vs {row['power_ms']} ms, {_with_target(row)}",
            "",
        ]
    if result.get("placement"):
        lines += [
            "**eigh on the device vs a host round trip** (float64)",
            "",
            "| n | batch | device ms | round trip ms | device / round trip | layers use |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['n']} | {r['batch']} | {r['device_ms']} | {r['round_trip_ms']} | "
            f"{r['device_over_round_trip']:.2f}× | {r['layers_use']} |"
            for r in result["placement"]
        ]
        lines.append("")
    if result.get("training"):
        batch = result["training"][0]["batch"]
        lines += [
            f"**(c) one SGD step, quick-preset ResNet-18 (batch {batch}, 1×28×28), "
            "ZCA at the stem vs BN**",
            "",
            "| method | group size | ZCA step ms | BN step ms | ratio |",
            "|---|---|---|---|---|",
        ]
        for row in result["training"]:
            lines.append(
                f"| {row['method']} | {row['group_size']} | {row['ours_ms']} | "
                f"{row['batchnorm_ms']} | {_with_target(row)} |"
            )
    return "\n".join(lines) + "\n"


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
    lines = [
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
    return "\n".join(lines) + "\n"


def write(result: dict[str, Any], folder: Path, stem: str = "bench_speed") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    (folder / f"{stem}.md").write_text(speed_markdown(result))
    (folder / f"{stem}_summary.md").write_text(summary_markdown(result))
    plot_speed(result, folder / f"{stem}.png")
