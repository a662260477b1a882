"""Matplotlib set-up and saving shared by the benchmark and reproduction plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["new_figure", "save_figure"]


def new_figure(columns: int, width: float = 5.5, height: float = 4.0) -> tuple[Any, Any]:
    """A headless figure with ``columns`` axes side by side: ``(figure, axes array)``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, columns, figsize=(width * columns, height), squeeze=False)
    return figure, axes[0]


def save_figure(figure: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    from .files import atomic_write, make_dirs

    figure.tight_layout()
    make_dirs(path.parent, "plot's folder")
    try:  # rendered to a temporary file beside it, then renamed: never through a planted link
        atomic_write(path, lambda out: figure.savefig(out, dpi=110, format="png"), binary=True)
    finally:
        plt.close(figure)
