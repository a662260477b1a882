"""Issue 21's long runs, in priority order, resumable cell by cell.

    python benchmarks/long_evidence.py [--threads 1] [--results results] [--only table2]

Queue (each cell skips when its row is already in the results file, so rerunning the same
command resumes; concurrent copies claim cells and run each once):

1. Table 2 on the ``long`` preset: PCA denoising after the stem (one group of 64,
   ``energy=0.99``), ``analytic``, ``pi``, ``power``, ``loewner`` and BatchNorm, 3 seeds.
2. Table 1 at d = 64: ``analytic``, ``power``, ``loewner`` to 8 seeds.
3. Table 1 at d = 32: ``analytic``, ``power``, ``loewner`` 3 seeds, ``pi`` 3 seeds.
4. Table 1 at d = 4: all four rules, 3 seeds.
5. Table 1 at d = 32: ``analytic``, ``power``, ``loewner`` to 8 seeds.

After every finished run the table, plot and survival report are rewritten from the whole
results file (``stableeig reproduce ... --render-only`` does the same without running).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from stableeig.bench import reproduce as rp
from stableeig.bench.data import load_dataset


def queue() -> list[tuple[str, rp.Cell]]:
    """(table, cell) in the order the issue asks for them."""
    cells = [("table2", c) for c in rp.table_cells("table2", 3, methods=rp.TABLE2_METHODS)]
    for size, seeds, methods in (
        (64, range(8), ("analytic", "power", "loewner")),
        (32, range(3), ("analytic", "power", "loewner")),
        (32, range(3), ("pi",)),
        (4, range(3), ("analytic", "pi", "power", "loewner")),  # item 3 before item 2's seeds
        (32, range(3, 8), ("analytic", "power", "loewner")),
    ):
        # seeds interleaved across methods, so a cut-off queue leaves balanced cells
        cells += [("table1", rp.Cell("table1", m, size, s)) for s in seeds for m in methods]
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--results", default="results")
    parser.add_argument("--only", choices=("table1", "table2"), default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    folder = Path(args.results)
    dataset = load_dataset("fashion-mnist")
    for table, cell in queue():
        if args.only and table != args.only:
            continue
        results = folder / f"{table}_long_{dataset.name}.jsonl"
        before = len(rp.read_results(results))
        rows = rp.run_cells([cell], dataset, "long", results, progress=False)
        if len(rp.read_results(results)) == before:
            continue  # already done, or another process holds it
        stem = results.with_suffix("")
        (folder / f"{stem.name}.md").write_text(rp.render_table(rows, table) + "\n")
        rp.plot(rows, table, folder / f"{stem.name}.png")
        if table == "table1":
            rp.survival_report(folder)


if __name__ == "__main__":
    main()
