"""The command line: documented options, argparse-style errors before any work."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

import stableeig
from stableeig.cli import build_parser, main


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found += _subparsers(sub)
    return found


def test_every_option_of_every_subcommand_has_help() -> None:
    for parser in _subparsers(build_parser()):
        for action in parser._actions:
            if action.option_strings or isinstance(action, argparse._StoreAction):
                assert action.help, f"{parser.prog} {action.dest} has no help"


def test_python_dash_m_and_version() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "stableeig", "--version"], capture_output=True, text=True
    )
    assert run.returncode == 0 and run.stdout.strip() == f"stableeig {stableeig.__version__}"
    run = subprocess.run(
        [sys.executable, "-m", "stableeig", "--help"], capture_output=True, text=True
    )
    assert run.returncode == 0 and "reproduce" in run.stdout


def test_train_options_come_from_the_run_configuration() -> None:
    text = build_parser().parse_args(["train", "--run-dir", "x"])  # defaults of RunConfig
    assert text.energy == 0.99 and text.weight_decay == 5e-4 and text.convention == "stableeig"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--run-dir", "r", "--steps", "0"], "steps: expected an integer in [1, 1e+07]"),
        (["train", "--run-dir", "r", "--steps-per-epoch", "0"], "steps_per_epoch: expected"),
        (
            ["train", "--run-dir", "r", "--batch-size", "0"],
            "batch_size: expected an integer in [2, 65536]",
        ),
        (["train", "--run-dir", "r", "--train-subset", "0"], "train_subset: expected"),
        (["train", "--run-dir", "r", "--compute-dtype", "banana"], "invalid choice: 'banana'"),
        (["train", "--run-dir", "r", "--group-size", "12"], "divisor of the stem's 64"),
        (["train", "--run-dir", "r", "--data-dir", "/nonexistent"], "expected an existing"),
        (["reproduce", "table1", "--seeds", "0"], "expected an integer in [1, 10000] (got 0)"),
        (["reproduce", "table1", "--steps", "0"], "expected an integer in [1, 10000000] (got 0)"),
        (["reproduce", "table1", "--group-sizes", "4,12"], "expected a divisor of 64 (got 12)"),
        (["reproduce", "table1", "--methods", "power,svd"], "(got svd)"),
    ],
)
def test_user_errors_exit_2_with_a_message_and_no_traceback(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_reproduce_accepts_every_method_of_every_table() -> None:
    from stableeig.bench.reproduce import TABLES

    for name in ("table1", "table2", "covpool", "spdnet"):
        methods = ",".join(TABLES[name].methods)
        args = build_parser().parse_args(["reproduce", name, "--methods", methods])
        assert tuple(args.methods) == TABLES[name].methods
