"""Copy the committed result tables into the documentation pages (README.md and
docs/*.md) between their markers.

    python benchmarks/sync_readme.py

``tests/test_validation.py`` checks that each marked section equals its file (and that each
marker appears once across the pages), so after re-rendering results
(``stableeig reproduce ... --render-only``) run this once.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = {  # README marker -> results file
    "table1 long": "results/table1_long_fashion-mnist.md",
    "table2 long": "results/table2_long_fashion-mnist.md",
    "survival": "results/table1_survival.md",
    "ablations": "results/ablations_quick_fashion-mnist.md",
    "speed summary": "results/bench_speed_summary.md",
    "spectral bench": "results/bench_spectral.md",
    "covpool quick": "results/covpool_quick_fashion-mnist.md",
    "covpool long": "results/covpool_long_fashion-mnist.md",
    "spdnet batchnorm eval": "results/spdnet_batchnorm_eval.md",
    "spd batchnorm speed": "results/bench_spd_batchnorm.md",
    "spdnet": "results/spdnet_steps1000_fashion-mnist.md",
    "wide": "results/wide_steps300_fashion-mnist.md",
    "accepts": "results/accepts.md",
    "bench eigsh": "results/bench_eigsh.md",
    "bench small": "results/bench_small.md",
    "layer paths": "results/layer_paths.md",
    "users bench": "results/bench_users.md",
}


def pages() -> list[Path]:
    """The documentation pages: the README first, then docs/*.md."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def main() -> None:
    for page in pages():
        sync(page)


def sync(readme: Path) -> None:
    text = readme.read_text()
    for marker, path in SECTIONS.items():
        start, end = f"<!-- {marker} -->\n", f"\n<!-- end {marker} -->"
        if start not in text:
            continue
        before, rest = text.split(start, 1)
        if rest.startswith(end.lstrip("\n")):  # an empty section: give it a line first
            rest = "\n" + rest
        _, after = rest.split(end, 1)
        text = before + start + (ROOT / path).read_text().strip() + end + after
    readme.write_text(text)


if __name__ == "__main__":
    main()
