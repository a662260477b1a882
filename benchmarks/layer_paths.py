"""The group layers' two pass strategies, and the (N, C) layer against three lines of
``inv_sqrtm`` (issue 29): forward, then ``y.backward(G)``, 1 thread, medians of per-pair
ratios measured interleaved in one process.

    python benchmarks/layer_paths.py            # writes results/layer_paths.md
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from unittest import mock

import torch

import stableeig as se
from stableeig.bench.timing import environment
from stableeig.bench.users import three_lines
from stableeig.nn import statistics as group_statistics

REPEATS = 7


def step_seconds(fn, x: torch.Tensor, grad: torch.Tensor) -> float:
    x.grad = None
    start = time.perf_counter()
    fn(x).backward(grad)
    return time.perf_counter() - start


def compare(a, b, shape: tuple[int, ...]) -> tuple[float, float, float, float]:
    """(median a, median b, median b/a, max |b - a|) over interleaved pairs."""
    torch.manual_seed(0)
    x = torch.randn(shape, requires_grad=True)
    grad = torch.randn(shape)
    step_seconds(a, x, grad), step_seconds(b, x, grad)  # warm-up
    ta, tb = [], []
    for _ in range(REPEATS):
        ta.append(step_seconds(a, x, grad))
        tb.append(step_seconds(b, x, grad))
    with torch.no_grad():
        diff = (a(x) - b(x)).abs().max().item()
    ratios = [q / p for p, q in zip(ta, tb)]
    return statistics.median(ta), statistics.median(tb), statistics.median(ratios), diff


def main() -> int:
    torch.set_num_threads(1)
    lines = [
        f"CPU: {environment()['cpu']}; threads: 1; torch {torch.__version__}; "
        f"{REPEATS} interleaved pairs, medians",
        "",
        "## (N, C) embeddings: `ZCAWhitening1d` (one group) against three lines of `inv_sqrtm`",
        "",
        "| shape | three lines (s) | layer (s) | layer / three lines | max abs difference |",
        "|---|---|---|---|---|",
    ]
    for shape in ((512, 32), (512, 256), (512, 1024), (4096, 256)):
        layer = se.nn.ZCAWhitening1d(shape[1], affine=False, track_running_stats=False)
        a, b, ratio, diff = compare(three_lines, layer, shape)
        lines.append(f"| {shape} | {a:.4f} | {b:.4f} | {ratio:.2f} | {diff:.1e} |")
        print(lines[-1], flush=True)
    lines += [
        "",
        "## Pass strategy by map size: streamed passes against whole-tensor GEMMs "
        "(`ZCAWhitening2d`, training step)",
        "",
        "| shape | group size | streamed (s) | whole tensor (s) | whole / streamed | chosen |",
        "|---|---|---|---|---|---|",
    ]
    for shape, d in (
        ((512, 64), 16), ((128, 64, 2, 2), 16), ((128, 64, 3, 3), 16), ((128, 64, 4, 4), 16),
        ((128, 64, 8, 8), 16), ((128, 64, 16, 16), 16), ((128, 64, 32, 32), 16),
        ((128, 64, 32, 32), 64),
    ):  # fmt: skip
        cls = se.nn.ZCAWhitening1d if len(shape) == 2 else se.nn.ZCAWhitening2d
        layer = cls(shape[1], group_size=d)

        def streamed(x: torch.Tensor, layer: torch.nn.Module = layer) -> torch.Tensor:
            with mock.patch.object(group_statistics, "WHOLE_TENSOR_MAX_LENGTH", 0):
                return layer(x)

        def whole(x: torch.Tensor, layer: torch.nn.Module = layer) -> torch.Tensor:
            with mock.patch.object(group_statistics, "WHOLE_TENSOR_MAX_LENGTH", 1 << 40):
                return layer(x)

        a, b, ratio, _ = compare(streamed, whole, shape)
        length = 1 if len(shape) == 2 else shape[2] * shape[3]
        chosen = "whole" if length <= group_statistics.WHOLE_TENSOR_MAX_LENGTH else "streamed"
        lines.append(f"| {shape} | {d} | {a:.4f} | {b:.4f} | {ratio:.2f} | {chosen} |")
        print(lines[-1], flush=True)
    out = Path("results/layer_paths.md")
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
