"""mkdocs hook: the plots the pages show live in ``results/`` (committed outputs), and the API
reference is pdoc's output in ``docs/api/`` (``make docs`` builds it first); copy both into
the built site so that the pages' ``../results/*.png`` and ``api/`` links resolve there."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any


def on_post_build(config: Any, **_: Any) -> None:
    source = Path(config["config_file_path"]).parent / "results"
    target = Path(config["site_dir"]) / "results"
    target.mkdir(parents=True, exist_ok=True)
    for image in source.glob("*.png"):
        shutil.copy2(image, target / image.name)
    api = Path(config["docs_dir"]) / "api"
    if api.is_dir():
        shutil.copytree(api, Path(config["site_dir"]) / "api", dirs_exist_ok=True)
