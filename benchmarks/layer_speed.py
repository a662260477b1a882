"""Layer speed against nn.BatchNorm2d on (128, 64, 32, 32) float32, CPU (issue-3 targets).

Train-mode forward+backward and eval forward, each as a ratio to BatchNorm2d(64) measured
interleaved in the same process (medians). Writes results/layer_speed.json and prints a
Markdown table. Run: ``python benchmarks/layer_speed.py [--repeats 10] [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

import stableeig as se

TARGETS = {
    ("loewner", 16, "train"): 1.5,
    ("loewner", 64, "train"): 2.0,
    ("power", 64, "train"): 2.5,
}
EVAL_TARGET = 1.2


def train_step(layer: nn.Module, x: torch.Tensor, upstream: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        inputs = x.detach().requires_grad_(True)
        (layer(inputs) * upstream).sum().backward()

    return run


def eval_step(layer: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        with torch.no_grad():
            layer(x)

    return run


def ratio(
    ours: Callable[[], None], reference: Callable[[], None], repeats: int
) -> tuple[float, float]:
    """Median seconds of ``ours`` and median of per-pair ratios to ``reference``."""
    ours(), reference()
    times, ratios = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        ours()
        mid = time.perf_counter()
        reference()
        end = time.perf_counter()
        times.append(mid - start)
        ratios.append((mid - start) / (end - mid))
    return statistics.median(times), statistics.median(ratios)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="tiny input, for a smoke run")
    parser.add_argument("--output", default="results/layer_speed.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    shape = (8, 64, 8, 8) if args.quick else (128, 64, 32, 32)
    g = torch.Generator().manual_seed(0)
    x, upstream = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    bn = nn.BatchNorm2d(64)
    rows = []
    cases = [(m, d) for d in (4, 16, 64) for m in ("loewner", "power")] + [
        (m, 64) for m in ("taylor", "clip", "analytic", "pi")
    ]
    for method, group_size in cases:
        layer = se.nn.ZCAWhitening2d(64, group_size=group_size, method=method)
        for mode in ("train", "eval"):
            layer.train(mode == "train"), bn.train(mode == "train")
            if mode == "train":
                seconds, r = ratio(
                    train_step(layer, x, upstream), train_step(bn, x, upstream), args.repeats
                )
            else:
                seconds, r = ratio(eval_step(layer, x), eval_step(bn, x), args.repeats)
            target = TARGETS.get(
                (method, group_size, mode), EVAL_TARGET if mode == "eval" else None
            )
            rows.append(
                {
                    "method": method,
                    "group_size": group_size,
                    "mode": mode,
                    "ms": round(seconds * 1e3, 2),
                    "ratio_to_batchnorm": round(r, 3),
                    "target": target,
                }
            )
            print(
                f"{method:8s} d={group_size:3d} {mode:5s} {seconds * 1e3:8.2f} ms  {r:5.2f}x BN"
                + (f"  (target <= {target}x)" if target else ""),
                flush=True,
            )
    result = {
        "input_shape": list(shape),
        "dtype": "float32",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu": cpu_model(),
        "repeats": args.repeats,
        "rows": rows,
    }
    if not args.quick:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
