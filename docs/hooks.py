"""mkdocs hooks: the gallery pages are made from ``examples/*.py`` and their committed
output (``results/examples/*.txt``, written by ``python benchmarks/gallery.py``); the plots
the pages show live in ``results/`` (committed outputs) and are copied into the built site
so that the pages' ``../results/*.png`` links resolve there; the version is the package's."""

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


ROOT = Path(__file__).resolve().parents[1]


def _version() -> str:
    text = (ROOT / "src" / "stableeig" / "__init__.py").read_text()
    return text.split('__version__ = "', 1)[1].split('"', 1)[0]


def on_config(config: Any, **_: Any) -> Any:
    config["site_name"] = f"stableeig {_version()}"
    return config


def gallery_page(script: Path) -> str:
    """A page: the example's story (its docstring), its code, what it printed."""
    source = script.read_text()
    story = source.partition('"""\n\n')[0]
    story = story.removeprefix('"""')
    title, _, rest = story.partition("\n")
    output = ROOT / "results" / "examples" / f"{script.stem}.txt"
    printed = output.read_text() if output.is_file() else "(not run: benchmarks/gallery.py)"
    return (
        f"# {title.rstrip('.')}\n\n{rest.strip()}\n\n## What it prints\n\n"
        f"```text\n{printed.rstrip()}\n```\n\n## The script\n\n"
        f"`examples/{script.name}`, run with `python examples/{script.name}`:\n\n"
        f"```python\n{source.rstrip()}\n```\n"
    )


def on_files(files: Any, config: Any, **_: Any) -> Any:
    from mkdocs.structure.files import File

    for script in sorted((ROOT / "examples").glob("*.py")):
        files.append(
            File.generated(config, f"gallery/{script.stem}.md", content=gallery_page(script))
        )
    changelog = ROOT / "CHANGELOG.md"
    files.append(File.generated(config, "changelog.md", content=changelog.read_text()))
    return files
