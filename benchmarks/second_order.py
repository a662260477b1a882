"""Cost of one Hessian-vector product of ⟨C, logm(A)⟩ against a first-order call (issue 39.4).

Each measurement runs in a fresh process (its peak resident memory is its own), one thread:
the first-order call (forward, then backward), and the Hessian-vector product (forward,
gradient with create_graph, then the gradient of ⟨grad, E⟩), for a random SPD ``A`` with
distinct eigenvalues and for ``2I`` (every eigenvalue tied: the band of near pairs spans the
matrix). Median of ``--repeats`` timings; peak RSS above the process's RSS after import.

    python benchmarks/second_order.py [--sizes 256,512] [--repeats 3]

Writes ``results/second_order.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
from pathlib import Path

WORKER = r"""
import json, resource, sys, time
import torch
import stableeig as se
torch.set_num_threads(1)
n, kind, spectrum, repeats = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
g = torch.Generator().manual_seed(0)
if spectrum == "tied":
    A = 2 * torch.eye(n, dtype=torch.float64)
else:
    X = torch.randn(n, n, generator=g, dtype=torch.float64)
    A = X @ X.T / n + 0.5 * torch.eye(n, dtype=torch.float64)
C = torch.randn(n, n, generator=g, dtype=torch.float64)
E = torch.randn(n, n, generator=g, dtype=torch.float64)
E = (E + E.T) / 2
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
def first():
    leaf = A.clone().requires_grad_()
    (C * se.logm(leaf)).sum().backward()
def hvp():
    leaf = A.clone().requires_grad_()
    (grad,) = torch.autograd.grad((C * se.logm(leaf)).sum(), leaf, create_graph=True)
    torch.autograd.grad((grad * E).sum(), leaf)
call = first if kind == "first" else hvp
times = []
for _ in range(repeats):
    tick = time.perf_counter()
    call()
    times.append(time.perf_counter() - tick)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"times": times, "peak_mib": (peak - before) / 1024}))
"""


def measure(n: int, kind: str, spectrum: str, repeats: int) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", WORKER, str(n), kind, spectrum, str(repeats)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="256,512")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default="results/second_order.md")
    args = parser.parse_args()
    import torch

    lines = [
        "# Hessian-vector product of ⟨C, logm(A)⟩ vs a first-order call",
        "",
        f"`python benchmarks/second_order.py --sizes {args.sizes} --repeats {args.repeats}`; "
        f"{platform.processor() or platform.machine()}, 1 thread, torch {torch.__version__}, "
        "float64. Time: median of the repeats [min–max]; memory: peak RSS above the "
        "process after import.",
        "",
        "| n | spectrum | first order (s) | HVP (s) | HVP / first | first-order peak (MiB) "
        "| HVP peak (MiB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for n in (int(s) for s in args.sizes.split(",")):
        for spectrum in ("distinct", "tied"):
            first = measure(n, "first", spectrum, args.repeats)
            hvp = measure(n, "hvp", spectrum, args.repeats)
            t1, t2 = first["times"], hvp["times"]
            assert isinstance(t1, list) and isinstance(t2, list)
            m1, m2 = statistics.median(t1), statistics.median(t2)
            lines.append(
                f"| {n} | {spectrum} | {m1:.3g} [{min(t1):.3g}–{max(t1):.3g}] | "
                f"{m2:.3g} [{min(t2):.3g}–{max(t2):.3g}] | {m2 / m1:.1f}× | "
                f"{first['peak_mib']:.0f} | {hvp['peak_mib']:.0f} |"
            )
            print(lines[-1], flush=True)
    Path(args.output).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
