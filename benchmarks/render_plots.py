"""Re-render every committed plot from the committed data, without measuring anything.

    python benchmarks/render_plots.py

The reproduction tables' plots through ``stableeig reproduce <table> --render-only`` (and
``survival``), the benchmarks' plots from their JSON (``bench_speed``, ``bench_gradients``,
``bench_spectral``, ``bench_users``): what a change of the plot layout needs
(``bench.plotting``). The Markdown tables are rewritten by the same commands and must come
out unchanged (``git diff results/*.md`` shows nothing).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
TABLES = [  # the committed results files: (table, preset, extra options)
    ("table1", "long", []), ("table1", "quick", []), ("table1", "quick", ["--steps", "600"]),
    ("table2", "long", []), ("table2", "quick", []), ("covpool", "long", []),
    ("covpool", "quick", []), ("ablations", "quick", []),
]  # fmt: skip


def main() -> None:
    from stableeig import cli
    from stableeig.bench import gradients, spectral, speed_report, users

    for table, preset, extra in TABLES:
        argv = ["reproduce", table, "--preset", preset, *extra, "--render-only", "--quiet"]
        assert cli.main([*argv, f"--results={RESULTS}"]) == 0, argv
    for argv in (["reproduce", "spdnet", "--render-only"], ["reproduce", "wide", "--render-only"],
                 ["reproduce", "survival"]):  # fmt: skip
        assert cli.main([*argv, f"--results={RESULTS}"]) == 0, argv
    speed_report.plot_speed(_json("bench_speed"), RESULTS / "bench_speed.png")
    gradients.plot_gradients(_json("bench_gradients"), RESULTS / "bench_gradients.png")
    spectral._plot(_json("bench_spectral")["rows"], RESULTS / "bench_spectral.png")
    users.plot(_json("bench_users"), RESULTS / "bench_users.png")
    print("re-rendered every plot", file=sys.stderr)


def _json(stem: str) -> dict:  # type: ignore[type-arg]
    return json.loads((RESULTS / f"{stem}.json").read_text())


if __name__ == "__main__":
    main()
