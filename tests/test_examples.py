"""Every script in examples/ runs at CI's small size and prints its comparison."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.py"))


def test_there_is_an_example_per_story() -> None:
    names = {path.stem for path in EXAMPLES}
    assert {
        "fid",
        "whitening_loss",
        "normals",
        "compile_resnet",
        "spdnet_eeg",
        "style_transfer",
        "rotations",
        "completion",
        "eigenproblems",
    } <= names


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda path: path.stem)
def test_example_runs_at_the_small_size(script: Path) -> None:
    environment = {**os.environ, "STABLEEIG_EXAMPLE_SMALL": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(script)], env=environment, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip(), "an example prints its comparison"
