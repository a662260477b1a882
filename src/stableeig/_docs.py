"""Shared docstring sections: one ``Args:`` text filled into several public objects."""

from __future__ import annotations

from typing import Any


def fill_args(args: str, *objects: Any) -> None:
    """Replace the ``{args}`` placeholder in each object's docstring with ``args``."""
    for obj in objects:
        obj.__doc__ = (obj.__doc__ or "").replace("{args}", args)
