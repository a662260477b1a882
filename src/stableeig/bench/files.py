"""Files the harness writes: atomic replacement, torn-line-safe appends, exclusive locks,
and run directories that are recognisable (and removable) as runs of this tool only.

Guarantees: a temporary file is created exclusively in the target's folder (never through
a planted symlink) and renamed over the target, so a kill leaves the old or the new file; a
symlink, hard link or FIFO at a name the tool writes whole (tables, plots, JSON) is
replaced, never followed or written through; a replaced file keeps its mode, a new one gets
the umask's (0666 & ~umask), and a temporary file left by a killed writer is removed by the
next write of the same name (a live writer's is locked, and kept); a file the tool appends
to, truncates, locks or reads (results rows, downloads, locks, claims, checkpoints) is
opened without following a symlink, without blocking and without truncating, and is
truncated only once it is known to be a regular file with one link, else a
:class:`FileFault` names it; a folder the tool names and creates for itself (the claims
folder, the download cache) is opened once, refused if it is a symlink or another user's,
and the files in it are opened relative to that open folder, so swapping a component for a
link afterwards redirects nothing; locks are ``fcntl`` locks held by the live process, so a
killed holder releases them and a reused pid cannot hold one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import io
import json
import os
import socket
import stat
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Callable, Optional

__all__ = [
    "RUN_FILES",
    "RUN_MARKER",
    "FileFault",
    "LockBusy",
    "acquire_lock",
    "append_line",
    "atomic_write",
    "check_appendable",
    "make_dirs",
    "open_regular",
    "own_folder",
    "read_bytes",
    "read_text",
    "release_lock",
    "remove_run",
    "run_directory",
    "write_report",
    "write_text",
]

RUN_MARKER = ".stableeig-run"
RUN_LOCK = ".stableeig-run.lock"
# Every file a run writes; --restart removes these and nothing else.
RUN_FILES = (
    RUN_MARKER,
    "checkpoint.pt",
    "checkpoint.prev.pt",
    "metrics.jsonl",
    "config.json",
    "result.json",
)


class FileFault(OSError):
    """A file the tool must read or write is unusable; the message names path and cause."""


class LockBusy(FileFault):
    """Another live process holds the lock."""


def _fault(path: Path, error: OSError, doing: str) -> FileFault:
    cause = error.strerror or type(error).__name__
    return FileFault(error.errno or errno.EIO, f"{path}: cannot {doing} ({cause})")


def open_regular(
    path: Path,
    flags: int,
    doing: str,
    mode: int = 0o666,
    folder: Optional[int] = None,
    single_link: bool = True,
    follow_links: bool = False,
) -> int:
    """``os.open`` that never follows a symlink, never blocks (a FIFO) and accepts only a
    regular file with one link (a planted hard link would make the tool write into another
    file; ``single_link=False`` for files only read): the descriptor, in blocking mode, or
    :class:`FileFault` naming the path. ``O_TRUNC`` acts only after these checks (the open
    itself never truncates: a refused hard link stays untouched). With ``folder`` (a
    descriptor of an open directory), ``path``'s name is opened in that folder;
    ``follow_links`` (reads of data the user placed) follows a symlink."""
    where: Any = path.name if folder is not None else path
    truncate = bool(flags & os.O_TRUNC)
    flags = (flags & ~os.O_TRUNC) | os.O_NONBLOCK | (0 if follow_links else os.O_NOFOLLOW)
    try:
        descriptor = os.open(where, flags, mode, dir_fd=folder)
    except OSError as error:
        if error.errno == errno.ELOOP:
            error = OSError(errno.ELOOP, "a symbolic link, refused")
        elif error.errno == errno.ENXIO:  # a FIFO with no writer, opened for writing
            error = OSError(errno.ENXIO, "a FIFO, not a regular file")
        raise _fault(path, error, doing) from None
    try:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            kind = "a FIFO" if stat.S_ISFIFO(info.st_mode) else "not a regular file"
            raise OSError(errno.EINVAL, f"{kind}, refused")
        if single_link and info.st_nlink > 1:
            raise OSError(errno.EMLINK, f"{info.st_nlink} hard links to it, refused")
        os.set_blocking(descriptor, True)
        if truncate:
            os.ftruncate(descriptor, 0)
    except OSError as error:
        os.close(descriptor)
        raise _fault(path, error, doing) from None
    return descriptor


def read_bytes(
    path: Path, limit: Optional[int] = None, single_link: bool = True, follow_links: bool = False
) -> bytes:
    """The contents of the regular file ``path`` (:func:`open_regular`'s checks), refusing
    one larger than ``limit`` bytes before reading it."""
    descriptor = open_regular(
        path, os.O_RDONLY, "read", single_link=single_link, follow_links=follow_links
    )
    with os.fdopen(descriptor, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if limit is not None and size > limit:
            raise FileFault(errno.EFBIG, f"{path}: cannot read ({size} bytes > limit {limit})")
        try:
            return handle.read()
        except OSError as error:
            raise _fault(path, error, "read") from None


def read_text(path: Path) -> str:
    """:func:`read_bytes` decoded as UTF-8 (undecodable bytes replaced)."""
    return read_bytes(path).decode("utf-8", errors="replace")


def write_text(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` atomically (:func:`atomic_write`)."""
    atomic_write(path, lambda out: out.write(text))


def write_report(folder: Path, stem: str, result: dict[str, Any], markdown: str) -> None:
    """``<stem>.json`` (the rows) and ``<stem>.md`` (their table) in ``folder``, atomically."""
    make_dirs(folder, "results folder")
    write_text(folder / f"{stem}.json", json.dumps(result, indent=1) + "\n")
    write_text(folder / f"{stem}.md", markdown)


def make_dirs(path: Path, what: str) -> None:
    """``mkdir -p``, failing as a :class:`FileFault` that names the path and the cause."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise _fault(path, error, f"create the {what}") from None


@contextlib.contextmanager
def own_folder(path: Path, what: str) -> Iterator[int]:
    """The folder ``path`` that the tool names and creates for itself, open for the ``with``
    body (its descriptor, for :func:`open_regular`'s ``folder``): created if missing (its
    parents are the user's and created as given), refused as a :class:`FileFault` if it is
    a symlink, not a directory, or owned by another user."""
    make_dirs(path.parent, f"folder of the {what}")
    try:
        os.mkdir(path)
    except FileExistsError:
        pass  # checked below, through the descriptor
    except OSError as error:
        raise _fault(path, error, f"create the {what}") from None
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.ENOTDIR) and os.path.islink(path):
            error = OSError(errno.ELOOP, "a symbolic link, refused")
        raise _fault(path, error, f"use the {what}") from None
    try:
        owner = os.fstat(descriptor).st_uid
        if owner != os.geteuid():
            raise _fault(path, OSError(errno.EPERM, f"owned by uid {owner}, refused"),
                         f"use the {what}")  # fmt: skip
        yield descriptor
    finally:
        os.close(descriptor)


def _kept_mode(path: Path) -> int:
    """The mode of the regular file at ``path``; else ``0o666 & ~umask``, what ``open``
    gives a new file (``mkstemp``'s 0600 would hide shared tables from their readers)."""
    with contextlib.suppress(OSError):
        before = os.lstat(path)
        if stat.S_ISREG(before.st_mode):
            return stat.S_IMODE(before.st_mode)
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def _remove_stale_temporaries(path: Path) -> None:
    """Remove ``.<name>.*.tmp`` beside ``path`` that no live writer holds (a writer locks its
    temporary file for its whole life; a killed writer's lock is gone)."""
    with contextlib.suppress(OSError):
        for leftover in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
            try:
                descriptor = os.open(leftover, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            except OSError:
                continue
            try:
                if stat.S_ISREG(os.fstat(descriptor).st_mode):
                    fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    os.unlink(leftover)
            except OSError:
                pass  # held by a live writer, or gone already
            finally:
                os.close(descriptor)


def _locked_temporary(path: Path) -> tuple[int, str]:
    """A new ``.<name>.XXXXXX.tmp`` beside ``path``, locked (``flock``) until it is closed, so
    that no sweep takes it for a killed writer's; a sweep that removed it between its
    creation and the lock is detected (its name no longer leads to it) and a new one made."""
    while True:
        try:
            descriptor, temporary = tempfile.mkstemp(
                dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
            )
        except OSError as error:
            raise _fault(path, error, "create a file beside") from None
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        with contextlib.suppress(OSError):
            if os.stat(temporary, follow_symlinks=False).st_ino == os.fstat(descriptor).st_ino:
                return descriptor, temporary
        os.close(descriptor)


def atomic_write(path: Path, write: Callable[[IO[Any]], object], binary: bool = False) -> None:
    """Write ``path`` through an exclusive temporary file in its folder, fsync, rename.

    A kill at any instant leaves either the old file or the new one; a failure (a full disk,
    a read-only folder) raises :class:`FileFault` and leaves no temporary file behind, and a
    killed writer's temporary file is removed by the next write. A symlink at ``path`` is
    replaced by the file, not followed. The file keeps the mode of the regular file it
    replaces; a new one gets ``0o666 & ~umask``.
    """
    _remove_stale_temporaries(path)
    descriptor, temporary = _locked_temporary(path)
    try:
        os.fchmod(descriptor, _kept_mode(path))
        with os.fdopen(descriptor, "wb" if binary else "w", closefd=False) as out:
            write(out)
            out.flush()
            os.fsync(out.fileno())
        if path.is_dir() and not path.is_symlink():
            raise IsADirectoryError(errno.EISDIR, "is a directory")
        os.replace(temporary, path)  # a symlink, hard link or FIFO there: the name is replaced
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        if isinstance(error, OSError):
            raise _fault(path, error, "write") from None
        if isinstance(error, RuntimeError) and "unexpected pos" in str(error):  # torch.save
            raise FileFault(errno.ENOSPC, f"{path}: cannot write (disk full?)") from None
        raise
    finally:
        os.close(descriptor)


def append_line(path: Path, line: str) -> None:
    """Append ``line`` + newline under an exclusive lock, fsynced before the lock goes.

    If the file ends in a torn fragment (a writer killed mid-line), a newline is written
    first, so the fragment stays one skipped line and the new row stays whole.
    """
    descriptor = open_regular(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, "append to")
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        size = os.fstat(descriptor).st_size
        prefix = b""
        if size:
            prefix = b"" if os.pread(descriptor, 1, size - 1) == b"\n" else b"\n"
        os.write(descriptor, prefix + line.encode() + b"\n")
        os.fsync(descriptor)
    except OSError as error:
        raise _fault(path, error, "append to") from None
    finally:
        os.close(descriptor)  # closing releases the lock


def acquire_lock(path: Path, what: str = "lock", folder: Optional[int] = None) -> int:
    """Take an ``fcntl`` lock on ``path`` (created if needed); returns its descriptor.

    Raises :class:`LockBusy` at once if a live process holds it. The holder's pid, host and
    start time are written into the file for people to read; who holds the lock is decided
    by the kernel, not by that text, so a killed holder frees it and a reused pid cannot.
    A failure to write that text (a full disk) removes the file and raises a
    :class:`FileFault` naming it. With ``folder`` (:func:`own_folder`), ``path``'s name is
    locked in that open folder.
    """
    where: Any = path.name if folder is not None else path
    while True:
        descriptor = open_regular(path, os.O_RDWR | os.O_CREAT, f"create the {what}", folder=folder)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 200, 0).decode(errors="replace").strip()
            os.close(descriptor)
            raise LockBusy(
                errno.EBUSY,
                f"{path}: the {what} is held by another process" + (f" ({holder})" * bool(holder)),
            ) from None
        try:  # the previous holder may have removed the file between our open and lock
            now = os.stat(where, dir_fd=folder, follow_symlinks=False)
            same = now.st_ino == os.fstat(descriptor).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(descriptor)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    try:
        os.ftruncate(descriptor, 0)
        os.write(
            descriptor, f"pid {os.getpid()} on {socket.gethostname()} since {started}".encode()
        )
    except OSError as error:
        release_lock(path, descriptor, folder)
        raise _fault(path, error, f"write the {what}") from None
    return descriptor


def release_lock(path: Path, descriptor: int, folder: Optional[int] = None) -> None:
    """Remove the lock file, then release the lock (in that order: no one can lock a file
    that is about to disappear)."""
    with contextlib.suppress(OSError):
        os.unlink(path.name if folder is not None else path, dir_fd=folder)
    os.close(descriptor)


def check_appendable(path: Path) -> None:
    """Fail now (:class:`FileFault`), not after hours of work, if rows cannot be appended
    to ``path`` (a directory, a read-only folder, a missing parent). Creates it empty."""
    os.close(open_regular(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, "append to"))


def _refuse(path: Path, why: str) -> FileFault:
    return FileFault(errno.EPERM, f"{path}: {why}")


def _protected(path: Path) -> Optional[str]:
    """Why ``path`` may never be a run directory to delete, or None."""
    if str(path) in ("", "."):
        return "refusing the current directory as a run directory"
    if path.is_symlink():
        return "refusing a symlink as a run directory"
    resolved = path.resolve()
    if resolved == Path(resolved.anchor):
        return "refusing the filesystem root as a run directory"
    if resolved == Path.home().resolve():
        return "refusing the home directory as a run directory"
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        return "refusing the current directory or one of its parents as a run directory"
    return None


@contextlib.contextmanager
def run_directory(path: Path, config: dict[str, Any], restart: bool = False) -> Iterator[None]:
    """Hold ``path`` as this process's run directory for the ``with`` body.

    Creates it (or accepts an empty folder or an earlier run of this tool), takes its lock
    (:class:`LockBusy` if another ``train`` uses it), with ``restart`` deletes the earlier
    run's files (:func:`remove_run`), and writes the run marker, so a read-only folder fails
    here, before any training. A folder holding other files and no marker is refused: the
    tool never writes its files among someone else's.
    """
    if str(path) in ("", "."):
        raise _refuse(path, "expected a run directory name (got the current directory)")
    if path.is_symlink():
        raise _refuse(path, "expected a run directory (got a symlink)")
    if path.exists() and not path.is_dir():
        raise FileFault(errno.ENOTDIR, f"{path}: expected a run directory (got a file)")
    if restart:
        _check_removable(path)  # before anything is written there, even a lock
    elif path.is_dir():
        _check_ours(path)
    created = not path.exists()
    make_dirs(path, "run directory")
    try:
        lock = acquire_lock(path / RUN_LOCK, "run directory's lock")
        try:
            if restart:
                remove_run(path, keep_folder=True)  # checks, under the lock, that it is a run
            else:
                _check_ours(path)
            text = json.dumps({"tool": "stableeig", "config": config}, indent=1) + "\n"
            atomic_write(path / RUN_MARKER, lambda out: out.write(text))
        except BaseException:
            release_lock(path / RUN_LOCK, lock)
            raise
    except FileFault:
        if created:  # e.g. a full disk: leave no folder behind
            with contextlib.suppress(OSError):
                path.rmdir()
        raise
    try:
        yield
    finally:
        release_lock(path / RUN_LOCK, lock)


def _check_ours(path: Path) -> None:
    """Refuse a folder that holds other files and is not a run."""
    if not _is_run(path):
        raise _refuse(
            path,
            "expected a new or empty directory, or a run of stableeig (got a folder with "
            f"{len(_entries(path))} entries and no {RUN_MARKER} marker)",
        )


def _entries(path: Path) -> list[str]:
    return [p.name for p in path.iterdir() if p.name != RUN_LOCK]


def _is_run(path: Path) -> bool:
    """Marked (a regular file, not a link, holding this tool's JSON), empty, or a run
    written before the marker existed (0.2: only the tool's own file names, and a checkpoint
    that is this tool's: :func:`_is_our_checkpoint`). Someone's ``metrics.jsonl`` or
    ``config.json`` alone is not a run."""
    if os.path.lexists(path / RUN_MARKER):
        return _is_our_marker(path / RUN_MARKER)
    entries = set(_entries(path))
    legacy = {f"{name}.tmp" for name in RUN_FILES}
    return not entries or (
        entries <= set(RUN_FILES) | legacy
        and any(_is_our_checkpoint(path / name) for name in ("checkpoint.pt", "checkpoint.prev.pt"))
    )


def _is_our_marker(path: Path) -> bool:
    """A regular file with one link whose JSON says ``"tool": "stableeig"``."""
    try:
        marker = json.loads(read_bytes(path, limit=1 << 20))
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("tool") == "stableeig"


# The fields every checkpoint of this tool holds (training.CHECKPOINT_KEYS, a test checks).
CHECKPOINT_FIELDS = ("config", "model", "optimizer", "schedule", "generator", "torch_rng",
                     "step", "losses", "metrics", "seconds", "first_loss")  # fmt: skip


def _is_our_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a ``torch.save`` archive whose pickle names every field of this
    tool's checkpoints: read as bytes and searched, never unpickled."""
    try:
        data = read_bytes(path, limit=1 << 31)
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            pickles = [i for i in archive.infolist() if i.filename.endswith("/data.pkl")]
            if len(pickles) != 1 or pickles[0].file_size > 1 << 26:
                return False
            text = archive.read(pickles[0])
    except (OSError, zipfile.BadZipFile, ValueError, RuntimeError, EOFError):
        return False
    return all(name.encode() in text for name in CHECKPOINT_FIELDS)


def _check_removable(path: Path) -> None:
    if not path.exists() and not path.is_symlink():
        return
    why = _protected(path)
    if why is None and not path.is_dir():
        why = "expected a run directory (got a file)"
    if why is None and not _is_run(path):
        why = f"not a stableeig run (no {RUN_MARKER} marker); delete it yourself if you mean to"
    if why is not None:
        raise _refuse(path, why)


def remove_run(path: Path, keep_folder: bool = False) -> None:
    """Delete the files a run wrote in ``path`` (:data:`RUN_FILES`), then the folder if empty.

    Refuses (:class:`FileFault`) ``''``, ``.``, the root, the home directory, the current
    directory and its parents, symlinks, files, and non-empty folders without the run
    marker. A missing ``path`` is nothing to do.
    """
    if not path.exists() and not path.is_symlink():
        return
    _check_removable(path)
    for name in RUN_FILES:
        target = path / name
        if target.is_symlink() or target.is_file():
            target.unlink()
    for leftover in [*path.glob(".*.tmp"), *path.glob("*.tmp")]:
        name = leftover.name.removesuffix(".tmp")
        if any(name == n or name.startswith(f".{n}.") for n in RUN_FILES):
            leftover.unlink()
    if not keep_folder:
        with contextlib.suppress(OSError):
            path.rmdir()  # only when nothing else is left in it
