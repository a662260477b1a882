"""Run every script in ``examples/`` and keep what it prints, for the docs' gallery.

    python benchmarks/gallery.py [--small]

Writes ``results/examples/<name>.txt``: the command, the machine, the seconds it took and
the script's output, exactly as printed. ``docs/hooks.py`` builds one gallery page per
example from the script and this file.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="CI's small size")
    parser.add_argument("--only", default=None, help="comma list of example names")
    args = parser.parse_args()
    import torch

    folder = ROOT / "results" / "examples"
    folder.mkdir(parents=True, exist_ok=True)
    environment = {**os.environ, "OMP_NUM_THREADS": "2"}
    if args.small:
        environment["STABLEEIG_EXAMPLE_SMALL"] = "1"
    chosen = set(args.only.split(",")) if args.only else None
    for script in sorted((ROOT / "examples").glob("*.py")):
        if chosen is not None and script.stem not in chosen:
            continue
        tick = time.perf_counter()
        done = subprocess.run(
            [sys.executable, str(script)], env=environment, capture_output=True, text=True,
            cwd=ROOT, check=False,
        )  # fmt: skip
        seconds = time.perf_counter() - tick
        small = "STABLEEIG_EXAMPLE_SMALL=1 " if args.small else ""
        header = (
            f"$ {small}python examples/{script.name}\n"
            f"# {platform.processor() or platform.machine()}, 2 threads, torch "
            f"{torch.__version__}, {seconds:.0f} s, exit {done.returncode}\n\n"
        )
        (folder / f"{script.stem}.txt").write_text(header + done.stdout)
        print(f"{script.stem}: exit {done.returncode}, {seconds:.0f} s", flush=True)
        if done.returncode:
            print(done.stderr[-2000:], file=sys.stderr)


if __name__ == "__main__":
    main()
