"""Matplotlib set-up and saving shared by the benchmark and reproduction plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["new_figure", "save_figure"]


MAX_COLUMNS = 1
"""Panels per row: a figure is read at the page's width (~690 px on a desktop, ~360 px on a
phone; ``benchmarks/screenshot_docs.py``): five panels side by side (the survival plot of
0.8.1) left each ~90 px tall, and two side by side left a phone ~4 px text; one panel per
row keeps the axis labels legible at both widths."""


def new_figure(panels: int, width: float = 5.5, height: float = 4.0) -> tuple[Any, Any]:
    """A headless figure of ``panels`` axes, at most :data:`MAX_COLUMNS` per row (the rows
    as needed, unused cells hidden): ``(figure, list of axes)`` in reading order."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(panels, MAX_COLUMNS)
    rows = -(-panels // columns)
    figure, grid = plt.subplots(
        rows, columns, figsize=(width * columns, height * rows), squeeze=False
    )
    axes = list(grid.flat)
    for unused in axes[panels:]:
        unused.set_visible(False)
    return figure, axes[:panels]


def save_figure(figure: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    from .files import atomic_write, make_dirs

    figure.tight_layout()
    make_dirs(path.parent, "plot's folder")
    try:  # rendered to a temporary file beside it, then renamed: never through a planted link
        atomic_write(path, lambda out: figure.savefig(out, dpi=110, format="png"), binary=True)
    finally:
        plt.close(figure)
