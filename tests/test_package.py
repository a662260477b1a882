"""The package's import (issue 38.16): ``import stableeig`` and the command line's parser
and help load no torch; every public name loads on first use and is the same object an
eager import gave, whichever submodule was imported first; compiled code may touch a name
first."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize(
    "argv", [["--help"], ["--version"], ["train", "--help"], ["reproduce", "--help"],
             ["bench", "speed", "--help"]],
)  # fmt: skip
def test_the_parser_and_help_answer_without_torch(argv: list[str]) -> None:
    out = _python(
        "import sys\nfrom stableeig.cli import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO TORCH')"
    )
    assert out.strip().endswith("NO TORCH")
    assert "usage: stableeig" in out or "stableeig 0." in out


@pytest.mark.parametrize("first", ["stableeig.nn", "stableeig.eigh", "stableeig.spectral", ""])
def test_every_public_name_is_what_an_eager_import_gives(first: str) -> None:
    out = _python(
        (f"import {first}\n" if first else "") + "import stableeig as se, types\n"
        "from stableeig.eigh import eigh\n"
        "from stableeig.spectral import inv_sqrtm\n"
        "assert se.eigh is eigh and se.inv_sqrtm is inv_sqrtm\n"
        "assert isinstance(se.nn, types.ModuleType) and isinstance(se.rules, types.ModuleType)\n"
        "missing = [n for n in se.__all__ if getattr(se, n, None) is None]\n"
        "assert not missing, missing\n"
        "assert not [n for n in se.__all__ if isinstance(getattr(se, n), types.ModuleType)\n"
        "            and n not in ('nn', 'rules', 'exceptions')]\n"
        "assert set(se.__all__) <= set(dir(se))\n"
        "ns = {}\nexec('from stableeig import *', ns)\n"
        "assert ns['eigh'] is eigh\n"
        "print('ok')"
    )
    assert out.strip() == "ok"


def test_an_unknown_name_is_an_attribute_error() -> None:
    import stableeig

    with pytest.raises(AttributeError, match="no attribute 'not_a_function'"):
        stableeig.not_a_function  # noqa: B018


def test_a_compiled_function_may_touch_a_name_first() -> None:
    out = _python(
        "import torch, stableeig as se\n"
        "@torch.compile(fullgraph=True, backend='eager')\n"
        "def f(A):\n    return se.inv_sqrtm(A)\n"
        "print(float(f(4 * torch.eye(2))[0, 0]))"
    )
    assert out.strip() == "0.5"


def test_the_command_line_names_equal_their_registries() -> None:
    from stableeig import nn, rules
    from stableeig.bench import config, models

    assert tuple(models.DEPTHS) == config.DEPTHS
    assert tuple(rules.RULES) == config.RULE_NAMES
    assert tuple(nn.CONVENTIONS) == config.CONVENTIONS
