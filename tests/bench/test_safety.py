"""The files the harness reads and writes (issue 19): nothing executes from data, deletion
only of runs, writes that cannot be redirected, exclusive claims and run locks, torn-line-
safe appends, faults and hostile arguments as one-line errors (exit 2, no traceback)."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from test_models_training import tiny_config, tiny_dataset

from stableeig import cli
from stableeig.bench import files, reproduce, training
from stableeig.bench.data import Dataset


class _Payload:
    """Unpickling this creates the marker file: what an attacker's checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (os.rename, (self.marker + ".src", self.marker))


def test_a_malicious_checkpoint_runs_no_code(tmp_path: Path) -> None:
    config = tiny_config(steps=2)
    run = tmp_path / "run"
    training.train_run(config, tiny_dataset(), run_dir=run)
    marker = tmp_path / "owned"
    saved = torch.load(run / "checkpoint.pt", weights_only=True)
    saved["model"] = _Payload(marker)
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):  # the fallback too
        torch.save(saved, run / name)
    Path(str(marker) + ".src").touch()
    with pytest.raises(training.CheckpointError, match="expected a readable checkpoint"):
        training.train_run(config, tiny_dataset(), run_dir=run)
    assert not marker.exists()
    torch.load(run / "checkpoint.pt", weights_only=False)  # the payload is real
    assert marker.exists()


def test_an_incomplete_checkpoint_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tiny_config(steps=2)
    training.train_run(config, tiny_dataset(), run_dir=tmp_path)
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    complete = dict(saved)
    del saved["model"]
    torch.save(saved, tmp_path / "checkpoint.pt")
    with pytest.raises(training.CheckpointError, match="expected a readable checkpoint"):
        training.train_run(config, tiny_dataset(), run_dir=tmp_path)
    assert "missing model" in capsys.readouterr().err
    # a checkpoint whose tensors do not fit the model
    saved = dict(complete, model={"conv1.weight": torch.zeros(1)})
    torch.save(saved, tmp_path / "checkpoint.pt")
    with pytest.raises(training.CheckpointError, match="does not fit this run"):
        training.train_run(config, tiny_dataset(), run_dir=tmp_path)


def test_format_1_checkpoints_still_resume(tmp_path: Path) -> None:
    config = tiny_config(steps=4)
    whole = training.train_run(config, tiny_dataset(), run_dir=tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):
        training.train_run(config, tiny_dataset(), run_dir=tmp_path / "old", interrupt_at=2)
    saved = torch.load(tmp_path / "old" / "checkpoint.pt", weights_only=True)
    del saved["format"]  # as 0.2 wrote it
    torch.save(saved, tmp_path / "old" / "checkpoint.pt")
    resumed = training.train_run(config, tiny_dataset(), run_dir=tmp_path / "old")
    assert resumed.losses == whole.losses


@pytest.fixture
def quick_train(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """``stableeig train`` arguments for a 2-step run on the tiny data set."""
    monkeypatch.setattr(cli, "_dataset", lambda *_, **__: tiny_dataset())
    return [
        "--dataset=fashion-mnist-subset",
        "--width=0.0625",
        "--steps=2",
        "--steps-per-epoch=1",
        "--batch-size=16",
        "--test-subset=16",
        "--group-size=16",
        "--quiet",
    ]


def _train(run_dir: str, options: list[str], *extra: str) -> int:
    return cli.main(["train", "--run-dir", run_dir, *options, *extra])


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_restart_removes_only_a_run_and_only_its_files(
    tmp_path: Path, quick_train: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert _train(str(run), quick_train) == 0
    assert (run / files.RUN_MARKER).is_file() and (run / "result.json").is_file()
    (run / "notes.txt").write_text("mine")  # a user's file inside a run is kept
    first = json.loads((run / "result.json").read_text())
    assert _train(str(run), quick_train, "--restart") == 0
    assert (run / "notes.txt").read_text() == "mine"
    assert json.loads((run / "result.json").read_text())["losses"] == first["losses"]
    assert not list(run.glob("*.tmp")) and not (run / ".stableeig-run.lock").exists()
    capsys.readouterr()


@pytest.mark.parametrize("kind", ["empty", "dot", "cwd-parent", "home", "foreign", "symlink"])
def test_restart_refuses_what_is_not_a_run(
    kind: str,
    tmp_path: Path,
    quick_train: list[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    work = tmp_path / "work" / "deeper"
    work.mkdir(parents=True)
    (work / "precious.txt").write_text("keep")
    (work / "checkpoint.pt").write_text("a user's own file of that name")
    home = tmp_path / "home"
    home.mkdir()
    (home / "precious.txt").write_text("keep")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    real_run = tmp_path / "run"
    real_run.mkdir()
    (real_run / files.RUN_MARKER).write_text('{"tool": "stableeig"}')
    (tmp_path / "link").symlink_to(real_run)
    target = {
        "empty": "",
        "dot": ".",
        "cwd-parent": str(tmp_path / "work"),
        "home": str(home),
        "foreign": str(work),
        "symlink": str(tmp_path / "link"),
    }[kind]
    before = _tree(tmp_path)
    assert _train(target, quick_train, "--restart") == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert _tree(tmp_path) == before


def test_protected_paths_are_refused_by_remove_run() -> None:
    for path in (Path("/"), Path.home(), Path.cwd()):
        with pytest.raises(files.FileFault, match="refusing"):
            files.remove_run(path)


def test_a_folder_with_other_files_is_never_written_into(
    tmp_path: Path, quick_train: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "config.json").write_text("my own config")
    assert _train(str(tmp_path), quick_train) == 2
    assert "no .stableeig-run marker" in capsys.readouterr().err
    assert _tree(tmp_path) == {"config.json": b"my own config"}


def test_a_legacy_run_without_marker_resumes(
    tmp_path: Path, quick_train: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert _train(str(run), quick_train) == 0
    (run / files.RUN_MARKER).unlink()  # as 0.2 left it
    assert _train(str(run), quick_train) == 0
    capsys.readouterr()


def test_planted_symlinks_are_replaced_never_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("untouched")
    run = tmp_path / "run"
    run.mkdir()
    for name in ("metrics.jsonl", "metrics.jsonl.tmp", "checkpoint.pt.tmp", "config.json.tmp"):
        (run / name).symlink_to(victim)
    training.train_run(tiny_config(steps=2), tiny_dataset(), run_dir=run)
    assert victim.read_text() == "untouched"
    assert not (run / "metrics.jsonl").is_symlink() and (run / "metrics.jsonl").is_file()
    results = tmp_path / "rows.jsonl"
    results.symlink_to(victim)
    with pytest.raises(files.FileFault, match="cannot append"):
        files.append_line(results, "{}")
    assert victim.read_text() == "untouched"


def valid_row(**fields: Any) -> dict[str, Any]:
    """A results row with every field the tables read."""
    row = {
        "table": "table1", "method": "power", "group_size": 4, "seed": 0, "success": True,
        "test_error": 12.5, "failure_step": None, "seconds": 1.0, "variant": {},
        "losses": [1.0], "config": {"steps": 10},
    }  # fmt: skip
    row.update(fields)
    return row


def test_an_append_after_a_torn_fragment_keeps_every_row(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = tmp_path / "rows.jsonl"
    files.append_line(results, json.dumps(valid_row(seed=1)))
    with results.open("a") as out:
        out.write('{"seed": 2, "tor')  # a writer killed mid-line
    files.append_line(results, json.dumps(valid_row(seed=3)))
    assert [r["seed"] for r in reproduce.read_results(results)] == [1, 3]
    assert "torn line" in capsys.readouterr().err


def _claim_worker(results: str, cells: int, start: float) -> None:
    """One process of the stress test: run_cells over every cell with a fake 5 ms run."""

    def fake_run(config: training.RunConfig, dataset: Dataset, **_: object) -> training.RunResult:
        files.append_line(Path(results + ".log"), f"{config.seed}")
        time.sleep(0.005)
        return training.RunResult(True, 1.0, None, None, 0.0, [])

    reproduce.train_run = fake_run  # type: ignore[assignment]  # this child process only
    chosen = [reproduce.Cell("table1", "power", 4, seed) for seed in range(cells)]
    time.sleep(max(0.0, start - time.time()))  # all processes start at the same instant
    with contextlib.redirect_stderr(open(os.devnull, "w")):
        reproduce.run_cells(chosen, tiny_dataset(), "quick", Path(results), progress=False)


def test_concurrent_claims_run_every_cell_exactly_once(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    processes, cells = 4, 6
    for trial in range(5):  # bounded: 5 trials x 4 processes x 6 cells
        results = str(tmp_path / f"trial{trial}.jsonl")
        start = time.time() + 0.3
        workers = [
            context.Process(target=_claim_worker, args=(results, cells, start))
            for _ in range(processes)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(30)
            assert worker.exitcode == 0
        ran = Path(results + ".log").read_text().split()
        assert sorted(ran) == [str(s) for s in range(cells)], f"trial {trial}: {ran}"
        rows = reproduce.read_results(Path(results))
        assert sorted(r["seed"] for r in rows) == list(range(cells))


def test_a_claim_is_decided_by_the_lock_not_the_file(tmp_path: Path) -> None:
    results = tmp_path / "t.jsonl"
    cell = reproduce.Cell("table1", "power", 4, 0)
    folder = results.with_name(results.name + ".claims")
    folder.mkdir()
    claim = folder / "table1_power_4_0.claim"
    for text in ("", "0", str(os.getpid()), "pid 1 on elsewhere"):  # half-written, reused pid
        claim.write_text(text)
        with reproduce._claim(results, cell) as claimed:
            assert claimed  # no live process holds the lock
    held = files.acquire_lock(claim, "claim")  # a live holder (another open file, same rules)
    try:
        with reproduce._claim(results, cell) as claimed:
            assert not claimed
    finally:
        files.release_lock(claim, held)


def test_a_busy_run_directory_is_refused(
    tmp_path: Path, quick_train: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    held = files.acquire_lock(run / ".stableeig-run.lock", "lock")
    try:
        assert _train(str(run), quick_train) == 2
    finally:
        files.release_lock(run / ".stableeig-run.lock", held)
    err = capsys.readouterr().err
    assert "held by another process (pid" in err and "Traceback" not in err
    assert not (run / "checkpoint.pt").exists()


def _one_line_error(capsys: pytest.CaptureFixture[str], *expected: str) -> None:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and err.count("\n") == 0, err
    assert "error:" in err and all(text in err for text in expected), err


def test_path_faults_are_one_line_errors(
    tmp_path: Path,
    quick_train: list[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "a_file").write_text("x")
    assert _train(str(tmp_path / "a_file"), quick_train) == 2
    _one_line_error(capsys, "a_file", "got a file")
    assert _train(str(tmp_path / "a_file" / "run"), quick_train) == 2  # parent is a file
    _one_line_error(capsys, "a_file/run", "cannot create the run directory")
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").mkdir()  # a directory where the tool writes a file
    (run / files.RUN_MARKER).write_text('{"tool": "stableeig"}')
    assert _train(str(run), quick_train) == 2
    _one_line_error(capsys, "metrics.jsonl", "cannot write")
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    # reproduce: a results path that is a directory fails before any run
    (tmp_path / "results" / "table1_quick_tiny.jsonl").mkdir(parents=True)
    monkeypatch.setattr(reproduce, "train_run", lambda *a, **k: pytest.fail("ran a cell"))
    argv = ["reproduce", "table1", "--seeds=1", "--group-sizes=4", "--methods=power"]
    assert cli.main([*argv, f"--results={tmp_path / 'results'}", "--quiet"]) == 2
    _one_line_error(capsys, "table1_quick_tiny.jsonl")
    (tmp_path / "results2").mkdir()
    (tmp_path / "results2" / "table1_quick_tiny.jsonl.claims").write_text("a file")
    assert cli.main([*argv, f"--results={tmp_path / 'results2'}", "--quiet"]) == 2
    _one_line_error(capsys, "claims")
    # nothing to render: exit 2, one line, no folder created
    assert cli.main([*argv, "--render-only", f"--results={tmp_path / 'none' / 'x'}"]) == 2
    _one_line_error(capsys, "no results file")
    assert not (tmp_path / "none").exists()


@contextlib.contextmanager
def _tmpfs(path: Path, options: str) -> Iterator[Path]:
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


def test_a_full_disk_and_a_read_only_folder_are_one_line_errors(
    tmp_path: Path, quick_train: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with _tmpfs(tmp_path / "full", "size=16k") as disk:  # the marker fits, a checkpoint not
        assert _train(str(disk / "run"), quick_train) == 2
        _one_line_error(capsys, "checkpoint.pt", "cannot write")
        assert not [p for p in (disk / "run").iterdir() if p.name.endswith(".tmp")]
    with _tmpfs(tmp_path / "ro", "ro,size=16k") as disk:  # refused before any training
        started = time.perf_counter()
        assert _train(str(disk / "run"), quick_train) == 2
        _one_line_error(capsys, "run", "Read-only file system")
        assert time.perf_counter() - started < 5


HOSTILE = {  # option -> values that must all be refused before any work
    "--threads": ["0", "-1", "99999999999999999999", "nan", "", "二"],
    "--seed": ["-1", "99999999999999999999999", "1.5", "nan", ""],
    "--steps": ["0", "-3", "10000000000", "inf"],
    "--steps-per-epoch": ["0", "99999999999"],
    "--batch-size": ["1", "100000000", "x"],
    "--train-subset": ["0", "-1"],
    "--test-subset": ["0", "1e9"],
    "--group-size": ["0", "12", "128", "-64"],
    "--n-components": ["0", "65"],
    "--num-iters": ["0", "100000"],
    "--width": ["0", "1e-9", "-1", "nan", "inf", "1e300"],
    "--eps": ["0", "-1e-4", "nan", "inf", "1e300"],
    "--lr": ["0", "-0.1", "nan", "inf", "1e300"],
    "--momentum": ["-0.1", "1", "nan"],
    "--weight-decay": ["-1", "nan", "inf"],
    "--energy": ["0", "1.5", "nan"],
    "--divergence-factor": ["0", "1", "nan", "inf"],
    "--device": ["bogus", "", "cuda:99", "gpu", "cpu:x"],
    "--dataset": ["bogus", "", "fashion_mnist"],
    "--method": ["svd", ""],
    "--norm": ["layernorm"],
    "--compute-dtype": ["float16"],
    "--convention": [""],
    "--depth": ["resnet20"],
}


@pytest.mark.parametrize(
    ("option", "value"), [(o, v) for o, values in HOSTILE.items() for v in values]
)
def test_hostile_train_arguments_exit_2_before_work(
    option: str,
    value: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(cli, "_train", lambda args: pytest.fail("started work"))
    extra = ["--norm=pca"] if option == "--n-components" else []
    extra += ["--method=power"] if option == "--num-iters" else []
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--run-dir", str(tmp_path / "r"), f"{option}={value}", *extra])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_options_that_need_another_option_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    for argv, message in [
        (["--num-iters=5", "--method=loewner"], "num_iters: expected method power or pi"),
        (["--n-components=4"], "n_components: expected norm 'pca'"),
        (["--norm=pca", "--group-size=16", "--n-components=17"], "n_components: expected"),
    ]:
        with pytest.raises(SystemExit):
            cli.main(["train", "--run-dir", "r", *argv])
        assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["reproduce", "table1", "--dataset", "bogus"],
        ["reproduce", "table1", "--dataset", ""],
        ["reproduce", "table1", "--device", "bogus"],
        ["reproduce", "table1", "--seeds", "99999999999999"],
        ["bench", "speed", "--device", "cuda:7"],
        ["demo", "--threads", "99999999999999999999"],
    ],
)
def test_hostile_reproduce_and_bench_arguments(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2 and "Traceback" not in capsys.readouterr().err


def test_progress_bars_only_on_a_terminal() -> None:
    import argparse

    assert not cli._progress(argparse.Namespace(quiet=False))  # pytest captures stderr
    assert not cli._progress(argparse.Namespace(quiet=True))


# ---- issue 32: every file the harness touches ------------------------------------------


def test_rendered_outputs_replace_a_planted_symlink(tmp_path: Path) -> None:
    """Tables, plots and JSON are written through a temporary file and renamed: a symlink
    at the name is replaced, its target untouched (``write_text`` and ``savefig`` followed
    it)."""
    from stableeig.bench import plotting

    victim = tmp_path / "victim"
    victim.write_text("untouched")
    for name in ("table.md", "plot.png"):
        (tmp_path / name).symlink_to(victim)
    files.write_text(tmp_path / "table.md", "| a |\n")
    figure, _ = plotting.new_figure(1)
    plotting.save_figure(figure, tmp_path / "plot.png")
    assert victim.read_text() == "untouched"
    assert not (tmp_path / "table.md").is_symlink() and (tmp_path / "table.md").read_text()
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"
    rows = [valid_row(seed=s) for s in range(2)]
    (tmp_path / "table1_survival.md").symlink_to(victim)
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    reproduce.survival_report(tmp_path)
    assert victim.read_text() == "untouched"


@pytest.mark.parametrize("what", ["lock", "claim", "results"])
def test_a_hard_link_is_never_written_through(tmp_path: Path, what: str) -> None:
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    target = tmp_path / f"{what}.file"
    os.link(victim, target)
    with pytest.raises(files.FileFault, match="hard links"):
        if what == "results":
            files.append_line(target, "{}")
        else:
            files.acquire_lock(target, what)
    assert victim.read_text() == "untouched"


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def test_a_fifo_is_refused_at_once_never_waited_on(tmp_path: Path) -> None:
    start = time.monotonic()
    results = _fifo(tmp_path / "rows.jsonl")
    with pytest.raises(files.FileFault, match="FIFO"):
        reproduce.read_results(results)
    with pytest.raises(files.FileFault, match="FIFO"):
        files.append_line(results, "{}")
    with pytest.raises(files.FileFault, match="FIFO"):
        files.check_appendable(results)
    run = tmp_path / "run"
    run.mkdir()
    _fifo(run / "checkpoint.pt")
    with pytest.raises(training.CheckpointError):
        training._load_checkpoint(run)
    assert time.monotonic() - start < 5


@pytest.mark.parametrize(
    "line",
    [
        "[1, 2]",
        '"x"',
        "{}",
        json.dumps({k: v for k, v in valid_row().items() if k != "seed"}),
        json.dumps(valid_row(test_error="12")),
        '{"table": "table1", "method": "power", "group_size": 4, "seed": 0, "success": true, '
        '"test_error": NaN, "failure_step": null, "seconds": 1.0}',
        json.dumps(valid_row(seed=-1)),
        json.dumps(valid_row(success="yes")),
        json.dumps(valid_row(variant=[1])),
    ],
)
def test_a_malformed_row_is_skipped_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], line: str
) -> None:
    results = tmp_path / "table1_quick_tiny.jsonl"
    results.write_text(json.dumps(valid_row()) + "\n" + line + "\n")
    rows = reproduce.read_results(results)
    assert rows == [valid_row()]
    err = capsys.readouterr().err
    assert f"{results}:2: skipping a malformed row" in err
    table = reproduce.render_table(rows, "table1")  # renders from what is left
    assert "power" in table


def test_render_only_of_an_empty_results_file_says_nothing_to_render(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_data(*args: object) -> None:
        raise AssertionError("--render-only read the data set")

    monkeypatch.setattr(cli, "_dataset", no_data)  # rendering needs the results file only
    (tmp_path / "table1_quick_fashion-mnist.jsonl").write_text("")
    argv = ["reproduce", "table1", "--render-only", f"--results={tmp_path}"]
    assert cli.main(argv) == 2
    _one_line_error(capsys, "nothing to render")


@pytest.mark.parametrize(
    ("field", "value"),
    [("config", [1]), ("format", "x"), ("step", "x"), ("seconds", "x"), ("step", 10**9),
     ("step", -3), ("losses", "x"), ("generator", [1])],
)  # fmt: skip
def test_a_checkpoint_with_wrong_field_types_is_refused(
    tmp_path: Path, field: str, value: Any
) -> None:
    config = tiny_config(steps=2)
    run = tmp_path / "run"
    training.train_run(config, tiny_dataset(), run_dir=run)
    saved = torch.load(run / "checkpoint.pt", weights_only=True)
    saved[field] = value
    (run / "checkpoint.prev.pt").unlink(missing_ok=True)
    torch.save(saved, run / "checkpoint.pt")
    with pytest.raises(training.CheckpointError, match="readable checkpoint"):
        training.train_run(config, tiny_dataset(), run_dir=run)


def test_a_checkpoint_that_decompresses_beyond_the_model_is_refused_before_loading(
    tmp_path: Path,
) -> None:
    import zipfile

    run = tmp_path / "run"
    run.mkdir()
    with zipfile.ZipFile(run / "checkpoint.pt", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data/0", b"\0" * (64 << 20))  # 64 MiB of zeros, ~64 KiB
    assert (run / "checkpoint.pt").stat().st_size < 1 << 20
    with pytest.raises(training.CheckpointError):
        training._load_checkpoint(run, limit=1 << 20)


def test_exit_codes_follow_the_documentation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """2 for a missing data set or refused input (it was 1, the failed-run code)."""
    argv = ["train", "--dataset=cifar10", f"--data-dir={tmp_path}", f"--run-dir={tmp_path / 'r'}"]
    assert cli.main(argv) == 2
    _one_line_error(capsys)
    assert not (tmp_path / "r" / ".stableeig-run.lock").exists()
    assert cli.EXIT_OK == 0 and cli.EXIT_FAILED_RUN == 1 and cli.EXIT_REFUSED == 2


def test_budgets_and_arguments_are_refused_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    start = time.monotonic()
    argv = ["reproduce", "table1", "--seeds", "1000", f"--results={tmp_path}"]
    assert cli.main(argv) == 2  # 10,000,000 was a MemoryError after ~60 s at 5.4 GB (now
    # beyond --seeds' range, refused by the parser: test_safety_round6)
    _one_line_error(capsys, "runs would be queued", "--force")
    assert cli.main(["reproduce", "ablations", "--seeds", "1000", f"--results={tmp_path}"]) == 2
    _one_line_error(capsys, "runs would be queued")
    assert time.monotonic() - start < 10 and not list(tmp_path.iterdir())
    assert cli.main(["bench", "speed", "--only", "placement", f"--results={tmp_path}"]) == 2
    _one_line_error(capsys, "needs --device cuda")
    for bad in (["--device", "cpu:99999"], ["--data-dir", ""]):
        with pytest.raises(SystemExit) as exit_info:  # argparse: usage error, code 2
            cli.main(["train", *bad, f"--run-dir={tmp_path / 'run'}"])
        assert exit_info.value.code == 2
    assert not (tmp_path / "run").exists()


def test_a_run_that_cannot_fit_in_memory_is_refused_with_the_estimate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 32: `train --batch-size 65536` asked the machine for ~13 GB and died; now the
    meta-device estimate is compared with the available memory before any work."""
    from stableeig.bench.data import load_dataset

    dataset = load_dataset("fashion-mnist-subset")
    config = training.RunConfig(dataset="fashion-mnist-subset", batch_size=64)
    small = training.activation_bytes(config, dataset)
    large = training.activation_bytes(training.RunConfig(dataset="fashion-mnist-subset",
                                                         batch_size=128), dataset)  # fmt: skip
    assert 1.8 < large / small < 2.0  # linear in the batch, plus the parameters
    argv = ["train", "--dataset=fashion-mnist-subset", "--batch-size=65536",
            f"--run-dir={tmp_path / 'run'}", "--quiet"]  # fmt: skip
    assert cli.main(argv) == 2
    _one_line_error(capsys, "GiB are available", "--force")
    assert not (tmp_path / "run").exists()


def test_the_download_part_file_is_never_written_through_a_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import io

    from stableeig.bench import data

    victim = tmp_path / "victim"
    victim.write_text("untouched")
    target = tmp_path / "archive.tar.gz"
    (tmp_path / "archive.tar.gz.part").symlink_to(victim)
    monkeypatch.setattr(data.urllib.request, "urlopen", lambda *a, **k: io.BytesIO(b"payload"))
    with pytest.raises(files.FileFault, match="symbolic link"):
        data._download("https://example.invalid/archive.tar.gz", target)
    assert victim.read_text() == "untouched"
    (tmp_path / "archive.tar.gz.part").unlink()
    data._download("https://example.invalid/archive.tar.gz", target)  # a plain download works
    assert target.read_bytes() == b"payload"


def test_spdnet_refuses_a_dataset_it_cannot_use(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["reproduce", "spdnet", "--dataset", "cifar10", "--steps", "2"]) == 2
    _one_line_error(capsys, "Fashion-MNIST")


def test_rendering_onto_a_full_disk_names_the_file_and_leaves_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 32: a full disk printed "a file: No space left on device" (no path); tables and
    plots now go through the file layer, whose error names the file."""
    rows = [valid_row(seed=s) for s in range(3)] + [valid_row(method="batchnorm", group_size=None)]
    with _tmpfs(tmp_path / "full", "size=8k") as disk:
        results = disk / "table1_long_fashion-mnist.jsonl"
        results.write_text("".join(json.dumps(r) + "\n" for r in rows))
        filler = disk / "filler"
        with contextlib.suppress(OSError), filler.open("wb") as out:
            out.write(b"\0" * (1 << 20))  # fill what is left
        argv = ["reproduce", "table1", "--preset", "long", "--render-only", f"--results={disk}"]
        assert cli.main(argv) == 2
        _one_line_error(capsys, str(disk), "No space left")
        leftovers = [p.name for p in disk.iterdir() if p.name.endswith((".tmp", ".claim", ".lock"))]
        assert not leftovers, leftovers


@pytest.mark.parametrize("table", ["table1", "table2", "covpool"])
def test_the_run_budget_counts_the_target_s_own_runs(
    table: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """The queued-run estimate is the target's cell count (it was seeds × (methods × 5 + 1)
    for every target: table2, without group sizes, was refused at a fifth of the limit)."""
    per_seed = len(reproduce.table_cells(table, 1))
    assert len(reproduce.table_cells(table, 3)) == 3 * per_seed  # linear in the seeds
    allowed = cli.MAX_QUEUED_RUNS // per_seed

    def no_runs(cells: list[reproduce.Cell], *args: object, **kwargs: object) -> list[object]:
        assert len(cells) == allowed * per_seed  # the budget admitted exactly these
        raise cli.Refused("stop before any run")

    monkeypatch.setattr(reproduce, "run_cells", no_runs)
    monkeypatch.setattr(cli, "_dataset", lambda *args: SimpleNamespace(name="fashion-mnist"))
    base = ["reproduce", table, f"--results={tmp_path}"]
    assert cli.main([*base, f"--seeds={allowed}"]) == 2
    _one_line_error(capsys, "stop before any run")
    assert cli.main([*base, f"--seeds={allowed + 1}"]) == 2
    _one_line_error(capsys, "runs would be queued", "--force")
