"""Shared fixtures (helpers live in ``tests/helpers.py``)."""

from __future__ import annotations

import pytest
import torch

from helpers import ADVERSARIAL

torch.set_num_threads(2)


@pytest.fixture(params=sorted(ADVERSARIAL))
def adversarial_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)
