"""Shared fixtures (helpers live in ``tests/helpers.py``)."""

from __future__ import annotations

import os

import pytest
import torch

from helpers import ADVERSARIAL

# Two cores: one thread per xdist worker (two workers), two threads in a single process.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)

# The longest tests (torch.compile's first compilation of a layer or a whole model), started
# first, so that the two workers end together instead of one finishing them alone.
SLOW_FIRST = ("tests/nn/test_compile.py", "tests/nn/test_spd_composability.py",
              "tests/test_examples.py", "tests/test_composability.py")  # fmt: skip


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def slow(item: pytest.Item) -> bool:
        return any(item.nodeid.startswith(prefix) for prefix in SLOW_FIRST)

    items.sort(key=lambda item: not slow(item))  # stable: the order within each part kept


@pytest.fixture(params=sorted(ADVERSARIAL))
def adversarial_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)
