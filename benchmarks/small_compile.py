"""What compiling the batched Jacobi solver gains: its forward on 10⁵ × 3×3 float64 matrices,
eager, compiled by inductor (``torch.compile``, compile time excluded and reported apart,
with an empty inductor cache) and LAPACK; median of 5, one thread. Writes
``results/small_compile.md``.

    python benchmarks/small_compile.py
"""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp()  # a cold compile, before torch

import torch

from stableeig.small import _solve


def main() -> None:
    torch.set_num_threads(1)
    X = torch.randn(100_000, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    A = X + X.mT
    tick = time.perf_counter()
    compiled = torch.compile(_solve, dynamic=False)
    compiled(A)
    compile_seconds = time.perf_counter() - tick
    rows = []
    for name, call in (("eager", _solve), ("compiled", compiled), ("LAPACK", torch.linalg.eigh)):
        times = []
        for _ in range(5):
            tick = time.perf_counter()
            call(A)
            times.append(time.perf_counter() - tick)
        rows.append((name, statistics.median(times)))
    lapack = rows[-1][1]
    lines = [
        "# Compiling the batched Jacobi solver (10⁵ × 3×3, float64, forward, one thread)",
        "",
        f"`python benchmarks/small_compile.py`; {platform.processor() or platform.machine()}, "
        f"torch {torch.__version__}; compiling took {compile_seconds:.0f} s once (empty "
        "inductor cache).",
        "",
        "| path | median seconds | × LAPACK's speed |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {seconds:.4f} | {lapack / seconds:.2f} |" for name, seconds in rows]
    text = "\n".join(lines) + "\n"
    (Path(__file__).resolve().parents[1] / "results" / "small_compile.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
