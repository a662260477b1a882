"""Many small matrices on a GPU (issue 42): forward + backward of ``logm``, of the smallest
eigenvector (normals) and of the nearest rotation on ``B × 3×3`` (and ``logm`` on
``B × 2×2``, ``B × 4×4``), float32 input, against ``torch.linalg.eigh`` / ``torch.linalg.svd``
autograd (cuSOLVER's batched Jacobi), our LAPACK-path equivalent (``eigh_driver("lapack")``:
small matrices go to the host), the batched path eager and — for 3×3 at the largest batch —
compiled by inductor (compile time reported apart). Median of interleaved repeats with
``torch.cuda.synchronize``.
pytorch3d's ``symeig3x3`` is not installable on the lent machine (no network), so it is not
in the table. Writes ``small.md`` under ``--results`` (default ``results/gpu-<device>``);
``--device cpu --sizes 4096 --repeats 1 --no-compile --results /tmp/x`` is a smoke test.

    python benchmarks/small_gpu.py [--device cuda] [--sizes 10000,100000,1000000]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from stableeig.bench.small import STORIES, ours_under


def _seconds(call: Callable, A: torch.Tensor, G: torch.Tensor, device: str) -> float:
    leaf = A.clone().requires_grad_()
    if device == "cuda":
        torch.cuda.synchronize()
    tick = time.perf_counter()
    (G * call(leaf)).sum().backward()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - tick


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--results", default=None)
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    lines = [
        f"# Many small matrices on {name}: forward + backward, float32, compute float32",
        "",
        f"`python benchmarks/small_gpu.py`; torch {torch.__version__}. Median seconds "
        "(speed-up over `torch.linalg` autograd).",
        "",
        "| story | B × n×n | torch.linalg autograd | LAPACK path | batched, eager | "
        "batched, compiled | compiling (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    cases = [(story, count, 3) for story in STORIES for count in sizes]
    cases += [("logm", sizes[-1], 2), ("logm", sizes[-1], 4)]
    for story, count, n in cases:
        copied, ours, make = STORIES[story]
        A = make(count, n).to(args.device)
        G = torch.randn_like(copied(A))
        batched = ours_under(ours, "jacobi", torch.float32)
        methods = {"copied": copied, "lapack": ours_under(ours, "lapack", torch.float32),
                   "eager": batched}  # fmt: skip
        compiling = None
        if n == 3 and count == sizes[-1] and not args.no_compile:
            methods["compiled"] = torch.compile(batched)
            compiling = _seconds(methods["compiled"], A, G, args.device)
        samples: dict[str, list[float]] = {key: [] for key in methods}
        for _ in range(args.repeats):
            for key, call in methods.items():
                samples[key].append(_seconds(call, A, G, args.device))
        medians = {key: statistics.median(values) for key, values in samples.items()}
        cells = [f"{medians[k]:.3g} ({medians['copied'] / medians[k]:.2f}×)" for k in methods]
        cells += ["—"] * (4 - len(cells)) + ["—" if compiling is None else f"{compiling:.0f}"]
        lines.append(f"| {story} | {count:,} × {n}×{n} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    default = Path(__file__).resolve().parents[1] / "results" / f"gpu-{name.replace(' ', '-')}"
    folder = Path(args.results) if args.results else default
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "small.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {folder / 'small.md'}")


if __name__ == "__main__":
    main()
