"""The sixth red-team round on the command line (issue 38): the tool touches only what is
its own. Each test fails on 0.8.1: parent components that are links, hard links truncated
before the check, foreign folders taken for runs, FIFOs and swapped files among the data,
value checks on the meta device, full disks, leftover temporaries, file modes."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import re
import stat
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from test_models_training import tiny_dataset
from test_safety import _one_line_error, _tmpfs, _train, _tree, quick_train  # noqa: F401

from stableeig import cli
from stableeig.bench import data, files, reproduce, training

# ---------------------------------------------------------------- 1. truncation after checks


@pytest.mark.parametrize("flags", ["truncate-write", "truncate-append"])
def test_a_hard_link_is_refused_before_any_truncation(tmp_path: Path, flags: str) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"x" * 1500)
    link = tmp_path / "file.part"
    os.link(victim, link)
    mode = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    if flags == "truncate-append":
        mode |= os.O_APPEND
    with pytest.raises(files.FileFault, match="hard links"):
        files.open_regular(link, mode, "write")
    assert victim.read_bytes() == b"x" * 1500


def test_the_cifar_download_never_empties_a_linked_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The reproduction of finding 1, through the command line (no network needed)."""
    cache = tmp_path / "cache"
    (cache / "stableeig").mkdir(parents=True)
    victim = tmp_path / "victim"
    victim.write_bytes(b"v" * 1500)
    os.link(victim, cache / "stableeig" / "cifar-10-python.tar.gz.part")
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.delenv("STABLEEIG_DATA", raising=False)
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "absent")
    monkeypatch.setattr(data.urllib.request, "urlopen", lambda *a, **k: io.BytesIO(b"payload"))
    argv = ["train", "--dataset=cifar10", "--steps=2", f"--run-dir={tmp_path / 'run'}", "--quiet"]
    assert cli.main(argv) == 2
    _one_line_error(capsys, "hard links")
    assert victim.read_bytes() == b"v" * 1500


# ---------------------------------------------------------------- 2. parent components


def test_a_symlinked_claims_folder_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "theirs.claim").write_text("someone's file")
    results = tmp_path / "results" / "rows.jsonl"
    results.parent.mkdir()
    results.with_name("rows.jsonl.claims").symlink_to(elsewhere)
    cell = reproduce.Cell("table1", "power", 4, 0)
    with pytest.raises(files.FileFault, match="symbolic link"), reproduce._claim(results, cell):
        pytest.fail("claimed through a link")
    assert _tree(elsewhere) == {"theirs.claim": b"someone's file"}


def test_a_claims_folder_swapped_for_a_link_while_held_redirects_nothing(tmp_path: Path) -> None:
    """Files in an own folder are opened relative to the open folder: replacing the folder
    by a link after the check cannot send the claim's creation or deletion elsewhere."""
    results = tmp_path / "rows.jsonl"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    claims = tmp_path / "rows.jsonl.claims"
    cell = reproduce.Cell("table1", "power", 4, 0)
    with reproduce._claim(results, cell) as claimed:
        assert claimed
        claims.rename(tmp_path / "moved")
        claims.symlink_to(elsewhere)
        (elsewhere / "table1_power_4_0.claim").write_text("theirs")
    assert (elsewhere / "table1_power_4_0.claim").read_text() == "theirs"
    assert not list((tmp_path / "moved").iterdir())  # our claim went from our folder


def test_an_own_folder_of_another_user_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give a folder to another user")
    folder = tmp_path / "theirs"
    folder.mkdir()
    os.chown(folder, 12345, 12345)
    with (
        pytest.raises(files.FileFault, match="owned by uid 12345"),
        files.own_folder(folder, "claims folder"),
    ):
        pytest.fail("used another user's folder")


def test_the_download_cache_must_not_be_a_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "stableeig").symlink_to(elsewhere)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(data.urllib.request, "urlopen", lambda *a, **k: io.BytesIO(b"payload"))
    for target in (data.cache_dir() / "a.tar.gz", data.cache_dir() / "fashion-mnist" / "b.gz"):
        with pytest.raises(files.FileFault, match="symbolic link"):
            data._download("https://example.invalid/x", target)
    assert not list(elsewhere.iterdir())


# ---------------------------------------------------------------- 3. foreign folders


@pytest.mark.parametrize("foreign", ["metrics", "config+checkpoint", "marker-link", "marker-text"])
def test_foreign_folders_are_never_taken_for_runs(
    foreign: str,
    tmp_path: Path,
    quick_train: list[str],  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = tmp_path / "theirs"
    folder.mkdir()
    if foreign == "metrics":
        (folder / "metrics.jsonl").write_text('{"loss": 1}\n')
    elif foreign == "config+checkpoint":
        (folder / "config.json").write_text('{"mine": true}')
        torch.save({"weights": torch.ones(2)}, folder / "checkpoint.pt")
    elif foreign == "marker-link":
        (tmp_path / "any.txt").write_text('{"tool": "stableeig"}')
        (folder / files.RUN_MARKER).symlink_to(tmp_path / "any.txt")
        (folder / "checkpoint.pt").write_text("someone's")
    else:
        (folder / files.RUN_MARKER).write_text("my own notes")
        (folder / "config.json").write_text("mine")
    before = _tree(tmp_path)
    for extra in ((), ("--restart",)):
        assert _train(str(folder), quick_train, *extra) == 2
        _one_line_error(capsys, str(folder))
        assert _tree(tmp_path) == before
        assert not (folder / ".stableeig-run.lock").exists()


def test_a_legacy_run_is_recognised_by_its_own_checkpoint(
    tmp_path: Path,
    quick_train: list[str],  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = tmp_path / "run"
    assert _train(str(run), quick_train) == 0
    (run / files.RUN_MARKER).unlink()
    (run / "result.json").unlink()
    (run / "config.json").unlink()  # what a 0.2 run killed before its end left
    assert files._is_run(run)
    assert _train(str(run), quick_train, "--restart") == 0
    capsys.readouterr()


def test_the_legacy_fingerprint_names_every_checkpoint_field() -> None:
    assert set(files.CHECKPOINT_FIELDS) == set(training.CHECKPOINT_KEYS)


# ---------------------------------------------------------------- 4, 5. data files


def _fashion_folder(folder: Path) -> dict[str, str]:
    """The four Fashion-MNIST files of a tiny fake set; their MD5s."""
    folder.mkdir(parents=True, exist_ok=True)
    digests = {}
    for name in data.FASHION_MD5:
        count = 3
        if "images" in name:
            payload = (
                (0x803).to_bytes(4, "big")
                + b"".join(n.to_bytes(4, "big") for n in (count, 28, 28))
                + bytes(count * 784)
            )
        else:
            payload = (0x801).to_bytes(4, "big") + count.to_bytes(4, "big") + bytes([1, 2, 3])
        raw = gzip.compress(payload, mtime=0)
        (folder / name).write_bytes(raw)
        digests[name] = hashlib.md5(raw).hexdigest()
    return digests


@pytest.mark.parametrize(
    "name", ["train-labels-idx1-ubyte.gz", "cifar-10-python.tar.gz", "data_batch_1"]
)
def test_a_fifo_among_the_data_files_is_refused_at_once(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "data"
    digests = _fashion_folder(folder)  # a FIFO is refused before any checksum is looked at
    monkeypatch.setattr(data, "FASHION_MD5", {k: (v,) for k, v in digests.items()})
    if name == "data_batch_1":
        folder = folder / "cifar-10-batches-py"
        folder.mkdir()
    (folder / name).unlink(missing_ok=True)
    os.mkfifo(folder / name)
    dataset = "fashion-mnist" if name.endswith("ubyte.gz") else "cifar10"
    outcome: list[Any] = []

    def load() -> None:
        try:
            data.load_dataset(dataset, tmp_path / "data", download=False)
        except Exception as error:
            outcome.append(error)

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    worker.join(timeout=20)
    if worker.is_alive():  # unblock the hung open so that the thread ends
        with contextlib.suppress(OSError):
            os.close(os.open(folder / name, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("hung on a FIFO")
    assert outcome and isinstance(outcome[0], files.FileFault), outcome
    assert "FIFO" in str(outcome[0])


def test_the_bytes_checked_are_the_bytes_parsed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A racer swaps a verified file for a forged one after the checksum: 0.8.1 hashed one
    open and parsed another (forged labels loaded 9 times in 25); one read serves both."""
    folder = tmp_path / "data"
    digests = _fashion_folder(folder)
    monkeypatch.setattr(data, "FASHION_MD5", {k: (v,) for k, v in digests.items()})
    labels = folder / "train-labels-idx1-ubyte.gz"
    forged = gzip.compress((0x801).to_bytes(4, "big") + (3).to_bytes(4, "big") + bytes([9] * 3))
    verified = labels.read_bytes()
    real_decompress = gzip.decompress

    def swap_then_decompress(blob: bytes) -> bytes:  # the race at its worst moment: checked,
        if blob == verified:  # not yet parsed
            labels.write_bytes(forged)
        return real_decompress(blob)

    monkeypatch.setattr(data.gzip, "decompress", swap_then_decompress)
    loaded = data.load_fashion_mnist(folder, download=False)
    assert loaded.train_labels.tolist() == [1, 2, 3]
    monkeypatch.setattr(data.gzip, "decompress", real_decompress)
    with pytest.raises(data.ChecksumError, match="train-labels"):
        data.load_fashion_mnist(folder, download=False)  # the forged file, read afresh


def test_data_files_may_be_symlinks_the_user_placed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = tmp_path / "real"
    digests = _fashion_folder(real)
    monkeypatch.setattr(data, "FASHION_MD5", {k: (v,) for k, v in digests.items()})
    linked = tmp_path / "linked"
    linked.mkdir()
    for name in digests:
        (linked / name).symlink_to(real / name)
    assert data.load_fashion_mnist(linked, download=False).train_labels.tolist() == [1, 2, 3]


# ---------------------------------------------------------------- 6. the meta-device pass


def test_train_covpool_passes_its_memory_estimate(
    tmp_path: Path,
    quick_train: list[str],  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = training.RunConfig(dataset="fashion-mnist-subset", head="covpool", width=0.0625)
    assert training.activation_bytes(config, tiny_dataset()) > 0
    assert _train(str(tmp_path / "run"), quick_train, "--head=covpool") == 0
    capsys.readouterr()


# ---------------------------------------------------------------- 10, 11, 12. files


def test_a_new_run_on_a_full_disk_names_the_path_and_leaves_nothing(
    tmp_path: Path,
    quick_train: list[str],  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    with _tmpfs(tmp_path / "full", "size=4k,nr_inodes=3") as disk:
        with contextlib.suppress(OSError), (disk / "filler").open("wb") as out:
            out.write(b"\0" * (1 << 16))
        run = disk / "run"
        assert _train(str(run), quick_train) == 2
        _one_line_error(capsys, str(run))
        assert sorted(p.name for p in disk.iterdir()) == ["filler"]


def test_a_killed_writer_s_temporary_file_is_removed_a_live_one_kept(tmp_path: Path) -> None:
    target = tmp_path / "table.md"
    stale = tmp_path / ".table.md.abc123.tmp"
    stale.write_text("left by a kill")
    live = tmp_path / ".table.md.live99.tmp"
    live.write_text("being written")
    other = tmp_path / ".other.md.xyz.tmp"
    other.write_text("another file's")
    with live.open("rb") as holder:
        import fcntl

        fcntl.flock(holder.fileno(), fcntl.LOCK_EX)
        files.write_text(target, "new")
        assert live.exists() and not stale.exists() and other.exists()
    assert target.read_text() == "new"


def test_written_files_honour_the_umask_and_keep_a_replaced_mode(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        files.write_text(tmp_path / "new.md", "x")
        assert stat.S_IMODE((tmp_path / "new.md").stat().st_mode) == 0o644
        os.umask(0o077)
        files.write_text(tmp_path / "private.md", "x")
        assert stat.S_IMODE((tmp_path / "private.md").stat().st_mode) == 0o600
        (tmp_path / "shared.md").write_text("old")
        os.chmod(tmp_path / "shared.md", 0o664)
        files.write_text(tmp_path / "shared.md", "new")
        assert stat.S_IMODE((tmp_path / "shared.md").stat().st_mode) == 0o664
    finally:
        os.umask(old)


def test_concurrent_writers_of_one_name_never_lose_the_rename(tmp_path: Path) -> None:
    """Each writer holds its temporary file's lock until its rename: another writer's sweep
    of leftovers never removes a live temporary file."""
    target = tmp_path / "table.md"
    errors: list[BaseException] = []

    def write(tag: int) -> None:
        try:
            for i in range(40):
                files.write_text(target, f"{tag}:{i}\n" * 200)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=write, args=(t,)) for t in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert not list(tmp_path.glob(".table.md.*.tmp"))
    assert len(set(target.read_text().splitlines())) == 1


def test_results_rows_written_by_reproduce_are_valid_json(tmp_path: Path) -> None:
    rows = tmp_path / "rows.jsonl"
    files.append_line(rows, json.dumps({"a": 1}))
    assert json.loads(rows.read_text()) == {"a": 1}


# ---------------------------------------------------------------- 7. rows that render


def _row(table: str, **fields: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "table": table, "dataset": "fashion-mnist", "preset": "quick", "method": "power",
        "group_size": 4, "seed": 0, "variant": {}, "success": True, "test_error": 12.5,
        "failure_step": None, "failure_reason": None, "seconds": 1.0, "losses": [2.0, 1.0],
        "config": {"steps": 10, "convention": "reference"},
    }  # fmt: skip
    if table.startswith("ablation_"):
        row["variant"] = {table.removeprefix("ablation_"): 0.99}
    if table == "wide":
        row.update(group_size=128, seconds_per_step=0.01, gradient_errors=[{"power": 1e-3}])
    if table in ("table2", "covpool", "spdnet"):
        row["group_size"] = None
    row.update(fields)
    return row


def _valid_rows(table: str) -> list[dict[str, Any]]:
    methods = {"table1": ["power", "analytic"], "wide": ["power", "loewner"]}
    rows = [
        _row(table, method=m, seed=s, group_size=d)
        for m in methods.get(table, ["power", "loewner"])
        for s in range(2)
        for d in ([4, 16] if table == "table1" else [_row(table)["group_size"]])
    ]
    rows += [_row(table, method="batchnorm", group_size=None if table != "wide" else 128)]
    failed = dict(success=False, test_error=None, failure_step=3, failure_reason="NaN")
    rows += [_row(table, method="analytic" if table == "table1" else "power", seed=7, **failed)]
    return rows


HOSTILE = [None, True, -1, 0, 1e30, 10**30, 1e308, -1e308, float("nan"), float("inf"), "",
           "x|y\nz", "a" * 200, [], [1], {}, {"a": [1]}, [1e308, -1e308]]  # fmt: skip
RENDERED_TABLES = ["table1", "table2", "covpool", "spdnet", "demo", "wide", "ablation_energy"]


def _render_everything(
    table: str, rows: list[dict[str, Any]], folder: Path, plots: bool = True
) -> None:
    from stableeig.bench import wide

    if table == "wide":
        wide.render(rows, None)
        if plots:
            wide.plot(rows, folder / "w.png", {"128": 0.001})
    elif table.startswith("ablation_"):
        reproduce.render_ablations(rows)
        if plots:
            reproduce.plot_ablations(rows, folder / "a.png")
    else:
        reproduce.render_table(rows, table)
        if plots:
            reproduce.plot(rows, table, folder / "t.png")
    if table == "table1":
        (folder / "table1_x.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        if plots:
            reproduce.survival_report(folder)
        else:
            reproduce._survival_runs(rows)


def _mutants(table: str) -> list[dict[str, Any]]:
    base = _row(table)
    mutants = []
    for key in [*base, "seconds_per_step", "gradient_errors"]:
        for value in HOSTILE:
            mutants.append({**base, key: value})
    for key in ("steps",):
        mutants += [{**base, "config": {key: v}} for v in HOSTILE]
    mutants += [{**base, "variant": {"energy": v}} for v in HOSTILE]
    mutants += [{**base, "variant": v} for v in HOSTILE]
    mutants += [{k: v for k, v in base.items() if k != drop} for drop in base]
    mutants += [{**base, "success": True, "test_error": None},
                {**base, "success": False, "test_error": None, "failure_step": 10**6},
                {**base, "success": False, "test_error": 1.0}]  # fmt: skip
    return mutants


@pytest.mark.parametrize("table", RENDERED_TABLES)
def test_every_renderer_survives_every_row_the_schema_admits(
    table: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each hostile variant of a valid row is either refused by the schema (a warning, the
    line skipped) or rendered, alone and among valid rows, as tables and plots."""
    results = tmp_path / "rows.jsonl"
    mutants = _mutants(table)
    results.write_text("".join(json.dumps(m) + "\n" for m in mutants))
    admitted = reproduce.read_results(results)
    refused = capsys.readouterr().err.count("skipping a malformed row")
    assert refused + len(admitted) == len(mutants)
    assert refused > len(mutants) // 2  # the hostile values are refused, the harmless kept
    valid = _valid_rows(table)
    assert all(reproduce.row_problem(r) is None for r in valid)
    for number, row in enumerate(admitted):  # tables alone (plots: all at once, below)
        folder = tmp_path / str(number)
        folder.mkdir()
        _render_everything(table, [row], folder, plots=False)
    (tmp_path / "alone").mkdir()
    _render_everything(table, admitted, tmp_path / "alone")
    _render_everything(table, valid + admitted, tmp_path)


@pytest.mark.parametrize("table", ["table1", "table2", "covpool", "demo"])
def test_a_table_of_only_its_batchnorm_rows_renders(table: str, tmp_path: Path) -> None:
    """What a run killed after its first cells leaves: the reference rows alone."""
    rows = [_row(table, method="batchnorm", group_size=None, seed=s) for s in range(2)]
    _render_everything(table, rows, tmp_path)
    assert "batchnorm" in reproduce.render_table(rows, table)


def test_a_markdown_table_keeps_its_columns_whatever_the_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = tmp_path / "rows.jsonl"
    rows = [*_valid_rows("table2"), _row("table2", method="evil|method\n| x |")]
    results.write_text("".join(json.dumps(r) + "\n" for r in rows))
    table = reproduce.render_table(reproduce.read_results(results), "table2")
    assert "evil" not in table and "skipping a malformed row" in capsys.readouterr().err
    widths = {line.count("|") for line in table.splitlines()}
    assert len(widths) == 1


@pytest.mark.parametrize("floor", ["[1, 2]", '{"128": "fast"}', '{"x": 1}', "{", '{"128": -1}'])
def test_a_malformed_floor_file_is_ignored_with_a_warning(
    floor: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    results = tmp_path / "wide_steps300_fashion-mnist.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in _valid_rows("wide")))
    (tmp_path / "wide_floor.json").write_text(floor)
    argv = ["reproduce", "wide", "--render-only", f"--results={tmp_path}"]
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    assert "wide_floor.json: ignored" in captured.err and "| 128 | power |" in captured.out


@pytest.mark.parametrize("content", [None, "", "not json\n"])
def test_spdnet_render_only_without_rows_is_one_line(
    content: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if content is not None:
        (tmp_path / "spdnet_steps1000_fashion-mnist.jsonl").write_text(content)
    assert cli.main(["reproduce", "spdnet", "--render-only", f"--results={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "".join(err) and "error:" in err[-1]
    assert "spdnet_steps1000_fashion-mnist.jsonl" in err[-1]
    assert len(err) == 1 + (content == "not json\n")  # the torn line's warning


# ---------------------------------------------------------------- 8. checkpoint values


def _hostile_checkpoint(saved: dict[str, Any], change: str) -> None:
    group = saved["optimizer"]["param_groups"][0]
    if change == "schedule-attribute":
        saved["schedule"]["optimizer"] = "replaced"  # __dict__.update would set it
    elif change == "schedule-milestones":
        saved["schedule"]["milestones"] = {1: 1}
    elif change == "schedule-epoch":
        saved["schedule"]["last_epoch"] = 10**9
    elif change == "lr-text":
        group["lr"] = "x"
    elif change == "lr-huge":
        group["lr"] = 1e9
    elif change == "momentum":
        group["momentum"] = 5.0
    elif change == "momentum-buffer-nan":
        next(iter(saved["optimizer"]["state"].values()))["momentum_buffer"].fill_(float("nan"))
    elif change == "momentum-buffer-shape":
        next(iter(saved["optimizer"]["state"].values()))["momentum_buffer"] = torch.zeros(3)
    elif change == "metrics-tensor":
        saved["metrics"][0]["train_loss"] = torch.tensor(1.0)
    elif change == "metrics-key":
        saved["metrics"][0][7] = 1.0
    elif change == "no-losses":
        saved["losses"], saved["metrics"] = [], []
    elif change == "first-loss-nan":
        saved["first_loss"] = float("nan")
    elif change == "loss-nan":
        saved["losses"][0] = float("nan")
    elif change == "step-mid-epoch":
        saved["step"] = 3
    else:
        raise AssertionError(change)


CHANGES = [
    "schedule-attribute", "schedule-milestones", "schedule-epoch", "lr-text", "lr-huge",
    "momentum", "momentum-buffer-nan", "momentum-buffer-shape", "metrics-tensor",
    "metrics-key", "no-losses", "first-loss-nan", "loss-nan", "step-mid-epoch",
]  # fmt: skip


@pytest.mark.parametrize("change", CHANGES)
def test_a_checkpoint_with_hostile_values_is_refused(
    change: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from test_models_training import tiny_config

    config = tiny_config(steps=4)
    with pytest.raises(KeyboardInterrupt):
        training.train_run(config, tiny_dataset(), run_dir=tmp_path, interrupt_at=2)
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    fresh = training._new_state(config, tiny_dataset())
    assert training._state_problem(saved, config, fresh) is None
    _hostile_checkpoint(saved, change)
    torch.save(saved, tmp_path / "checkpoint.pt")
    (tmp_path / "checkpoint.prev.pt").unlink(missing_ok=True)
    with pytest.raises(training.CheckpointError, match="expected a readable checkpoint"):
        training.train_run(config, tiny_dataset(), run_dir=tmp_path)
    assert "cannot use" in capsys.readouterr().err


def test_a_hostile_checkpoint_falls_back_to_the_previous_one(tmp_path: Path) -> None:
    from test_models_training import tiny_config

    config = tiny_config(steps=6)
    whole = training.train_run(config, tiny_dataset(), run_dir=tmp_path / "whole")
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        training.train_run(config, tiny_dataset(), run_dir=run, interrupt_at=4)
    saved = torch.load(run / "checkpoint.pt", weights_only=True)
    _hostile_checkpoint(saved, "first-loss-nan")
    torch.save(saved, run / "checkpoint.pt")
    resumed = training.train_run(config, tiny_dataset(), run_dir=run)  # from step 2
    assert resumed.losses == whole.losses


def test_result_json_is_standard_json(
    tmp_path: Path,
    quick_train: list[str],  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert _train(str(tmp_path / "run"), quick_train) == 0
    capsys.readouterr()
    text = (tmp_path / "run" / "result.json").read_text()
    json.loads(text, parse_constant=lambda name: pytest.fail(f"non-standard {name}"))


# ---------------------------------------------------------------- 9, 13, 14. one line, exit 2


def test_an_allocation_beyond_an_address_space_limit_is_one_line(
    tmp_path: Path,
    quick_train: list[str],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Under ``ulimit -v`` torch's allocator raises ``RuntimeError`` (not ``MemoryError``):
    the real error, raised here by an allocation no address space holds."""

    def allocate(*args: Any, **kwargs: Any) -> None:
        torch.empty(1 << 60, dtype=torch.uint8)

    monkeypatch.setattr(training, "train_run", allocate)
    assert _train(str(tmp_path / "run"), quick_train) == 2
    _one_line_error(capsys, "out of memory", "--batch-size")
    assert not (tmp_path / "run" / ".stableeig-run.lock").exists()


def test_an_unexpected_exception_is_one_line_and_exit_2(
    tmp_path: Path,
    quick_train: list[str],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise KeyError("something unforeseen")

    monkeypatch.setattr(training, "train_run", broken)
    assert _train(str(tmp_path / "run"), quick_train) == 2
    _one_line_error(capsys, "KeyError", "something unforeseen", "STABLEEIG_TRACEBACK")
    monkeypatch.setenv("STABLEEIG_TRACEBACK", "1")
    with pytest.raises(KeyError):
        _train(str(tmp_path / "run2"), quick_train)


def test_a_bogus_matplotlib_backend_does_not_matter(tmp_path: Path) -> None:
    import subprocess
    import sys

    rows = _valid_rows("table1")
    (tmp_path / "table1_quick_fashion-mnist.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows)
    )
    argv = ["reproduce", "table1", "--render-only", f"--results={tmp_path}"]
    done = subprocess.run(
        [sys.executable, "-m", "stableeig", *argv],
        env={**os.environ, "MPLBACKEND": "bogus"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "table1_quick_fashion-mnist.png").stat().st_size > 0


def test_bench_refuses_an_unusable_results_path_before_measuring(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from stableeig.bench import gradients

    monkeypatch.setattr(gradients, "gradient_sweep", lambda **k: pytest.fail("measured"))
    (tmp_path / "a_file").write_text("x")
    assert cli.main(["bench", "gradients", "--quick", f"--results={tmp_path / 'a_file'}"]) == 2
    _one_line_error(capsys, "a_file", "expected a folder")
    target = tmp_path / "a_file" / "below"
    assert cli.main(["bench", "gradients", "--quick", f"--results={target}"]) == 2
    _one_line_error(capsys, "below")


@pytest.mark.parametrize(
    "argv",
    [
        ["reproduce", "table1", "--group-sizes", "٦٤"],
        ["reproduce", "table1", "--seeds", "٣"],
        ["reproduce", "table1", "--force", "--seeds", "10000000"],
        ["train", "--run-dir=x", "--steps", "１０"],
    ],
)
def test_numbers_are_ascii_and_seeds_bounded_even_with_force(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(reproduce, "table_cells", lambda *a, **k: pytest.fail("built cells"))
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == 2
    assert "error:" in capsys.readouterr().err


# ---------------------------------------------------------------- 15, 17, 18. usability


@pytest.mark.parametrize("command", ["demo", "reproduce", "train"])
def test_a_missing_extra_is_named_before_any_work(
    command: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib.abc
    import sys

    class Uninstalled(importlib.abc.MetaPathFinder):
        def find_spec(self, name: str, *args: Any) -> None:
            if name.split(".")[0] in ("matplotlib", "tqdm"):
                raise ModuleNotFoundError(name)
            return None

    for name in [n for n in sys.modules if n.split(".")[0] in ("matplotlib", "tqdm")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [Uninstalled(), *sys.meta_path])
    monkeypatch.setattr(cli, "_dataset", lambda *a, **k: pytest.fail("started work"))
    argv = {"demo": ["demo"], "reproduce": ["reproduce", "table1"],
            "train": ["train", "--run-dir=unused"]}[command]  # fmt: skip
    assert cli.main(argv) == 2
    _one_line_error(capsys, "tqdm", "pip install 'stableeig[bench]'")


def test_help_strings_say_each_default_once_and_name_the_presets(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for argv in (["train", "--help"], ["reproduce", "--help"]):
        with pytest.raises(SystemExit):
            cli.main(argv)
        text = " ".join(capsys.readouterr().out.split())
        assert re.search(r"\(default: [^)]*\) \(default:", text) is None, text
        assert "see the README" not in text
    assert "long (1,000 steps" in text and "paper (CIFAR-10" in text


def test_reproduce_reports_overall_progress_and_time_left(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def runner(cell: reproduce.Cell) -> tuple[dict[str, Any], dict[str, Any]]:
        outcome = {"success": True, "test_error": 10.0, "failure_step": None,
                   "failure_reason": None, "seconds": 0.0, "losses": [1.0]}  # fmt: skip
        return outcome, {"steps": 1}

    cells = [reproduce.Cell("table1", "power", 4, seed) for seed in range(3)]
    reproduce.run_cells(cells, tiny_dataset(), "quick", tmp_path / "r.jsonl", runner=runner)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("]")[0] for line in lines] == ["[1/3", "[2/3", "[3/3"]
    assert all("elapsed, about" in line and "left" in line for line in lines)
    assert lines[-1].endswith("about 0s left")
