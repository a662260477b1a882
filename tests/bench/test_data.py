"""Loaders on files in the real formats, written by the tests; augmentation."""

from __future__ import annotations

import gzip
import hashlib
import pickle
import struct
import tarfile
from pathlib import Path

import pytest
import torch

from stableeig.bench import data


def write_idx(path: Path, array: torch.Tensor) -> None:
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(
        ">" + "I" * array.ndim, *array.shape
    )
    with gzip.open(path, "wb") as handle:
        handle.write(header + bytes(array.flatten().tolist()))


@pytest.fixture
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No real data anywhere: empty Debian location, cache and environment."""
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "debian")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("STABLEEIG_DATA", raising=False)
    return tmp_path


def fake_fashion(folder: Path, n_train: int = 12, n_test: int = 5) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", n_train), ("t10k", n_test)):
        write_idx(
            folder / f"{split}-images-idx3-ubyte.gz",
            torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8),
        )
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", torch.arange(n, dtype=torch.uint8) % 10)


def test_read_idx_round_trip(tmp_path: Path) -> None:
    array = torch.randint(0, 256, (3, 4, 5), dtype=torch.uint8)
    write_idx(tmp_path / "a.gz", array)
    assert torch.equal(data.read_idx(tmp_path / "a.gz"), array)
    (tmp_path / "bad.gz").write_bytes(gzip.compress(b"\x00\x00\x0c\x01\x00\x00\x00\x02xx"))
    with pytest.raises(ValueError, match="IDX file of unsigned bytes"):
        data.read_idx(tmp_path / "bad.gz")


def test_fashion_checksum_failure_and_missing_data(isolated: Path) -> None:
    fake_fashion(isolated / "mine")
    with pytest.raises(data.ChecksumError, match="expected MD5 8d4fb7e6c68d591d4c3dfef9ec88bf0d"):
        data.load_fashion_mnist(isolated / "mine", download=False)
    with pytest.raises(data.MissingDataError, match="apt-get install dataset-fashion-mnist"):
        data.load_fashion_mnist(isolated / "nowhere", download=False)


def test_fashion_format_shapes_and_labels(isolated: Path) -> None:
    fake_fashion(isolated / "mine")
    dataset = data._fashion_from(isolated / "mine", "fake", check=False)
    assert dataset.train_images.shape == (12, 1, 28, 28) and dataset.test_images.shape == (
        5,
        1,
        28,
        28,
    )
    assert dataset.train_labels.tolist() == [i % 10 for i in range(12)] and dataset.in_channels == 1


def test_embedded_subset() -> None:
    subset = data.load_dataset("fashion-mnist-subset")
    assert subset.train_images.shape == (4000, 1, 28, 28) and subset.test_labels.shape == (1000,)
    assert set(subset.train_labels.tolist()) == set(range(10))


@pytest.mark.skipif(
    not data.DEBIAN_FASHION_MNIST.exists(), reason="dataset-fashion-mnist not installed"
)
def test_real_fashion_mnist_from_debian_package() -> None:
    dataset = data.load_fashion_mnist(download=False)
    assert dataset.train_images.shape == (60000, 1, 28, 28) and dataset.test_images.shape == (
        10000,
        1,
        28,
        28,
    )
    assert torch.bincount(dataset.train_labels).tolist() == [6000] * 10


def write_cifar(root: Path, n_per_batch: int = 4) -> Path:
    """A tiny archive in the CIFAR-10 python format (a numpy ``uint8`` array under
    ``b"data"``, as the published files): 5 train batches and a test batch."""
    numpy = pytest.importorskip("numpy")
    folder = root / "build" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        images = torch.randint(0, 256, (n_per_batch, 3072), generator=g, dtype=torch.uint8)
        batch = {
            b"data": numpy.array(images.tolist(), dtype=numpy.uint8),
            b"labels": [i % 10 for i in range(n_per_batch)],
        }
        with (folder / name).open("wb") as handle:
            pickle.dump(batch, handle)
    archive = root / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    return archive


def batch_checksums(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def test_cifar_archive_checksum_extract_and_shapes(isolated: Path) -> None:
    archive = write_cifar(isolated)
    digest = hashlib.md5(archive.read_bytes()).hexdigest()
    batches = batch_checksums(isolated / "build" / "cifar-10-batches-py")
    source = isolated / "source"
    source.mkdir()
    archive.rename(source / archive.name)
    with pytest.raises(data.ChecksumError, match="expected MD5 c58f30108f718f92721af3b95e74349a"):
        data.load_cifar("cifar10", source, download=False)
    dataset = data.load_cifar(
        "cifar10", source, download=False, expected_md5=digest, batch_md5=batches
    )
    assert dataset.train_images.shape == (20, 3, 32, 32) and dataset.test_images.shape == (
        4,
        3,
        32,
        32,
    )
    assert dataset.train_labels.tolist() == [0, 1, 2, 3] * 5 and dataset.num_classes == 10
    with pytest.raises(data.ChecksumError, match="data_batch_1: expected MD5 c99cafc1"):
        data.load_cifar("cifar10", source, download=False)  # extracted, not the published files
    again = data.load_cifar("cifar10", source, download=False, batch_md5=batches)
    assert torch.equal(again.train_images, dataset.train_images)
    with pytest.raises(data.MissingDataError, match=r"cifar-10-python.tar.gz \(MD5 c58f3"):
        data.load_cifar("cifar10", isolated / "empty", download=False)


def test_augment_crops_and_flips() -> None:
    images = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).view(2, 1, 6, 6) + 1
    out = data.augment(images, torch.Generator().manual_seed(0), padding=2)
    assert out.shape == images.shape
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    for n in range(2):
        windows = [padded[n, :, r : r + 6, c : c + 6] for r in range(5) for c in range(5)]
        assert any(torch.equal(out[n], w) or torch.equal(out[n], w.flip(-1)) for w in windows)


class _Payload:
    """Unpickling this runs ``Path.touch`` on the marker: what an attacker's file does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (Path(self.marker).touch.__func__, (str(self.marker),))  # type: ignore[attr-defined]


def test_a_malicious_cifar_batch_runs_no_code(isolated: Path) -> None:
    folder = isolated / "evil" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    marker = isolated / "owned"
    for name in data.CIFAR_BATCH_MD5["cifar10"]:
        with (folder / name).open("wb") as handle:
            pickle.dump({b"data": _Payload(marker), b"labels": [0]}, handle)
    with pytest.raises(data.ChecksumError):  # the published checksums: refused unread
        data.load_cifar("cifar10", isolated / "evil", download=False)
    assert not marker.exists()
    # even a file whose checksum the caller vouches for is unpickled with numpy arrays only
    with pytest.raises(pickle.UnpicklingError, match="got a reference to"):
        data.load_cifar(
            "cifar10", isolated / "evil", download=False, batch_md5=batch_checksums(folder)
        )
    assert not marker.exists()
    # the payload is real: plain pickle runs it
    pickle.loads((folder / "test_batch").read_bytes())
    assert marker.exists()


def test_corrupt_data_under_data_dir_is_a_one_line_exit_2(
    isolated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 32: checksums are checked first and nothing executes; the command line now says
    so in one line with exit 2 (it was a ChecksumError traceback)."""
    from stableeig import cli

    fake_fashion(isolated / "mine")  # valid IDX files whose checksums are not the published
    argv = ["train", "--dataset=fashion-mnist", f"--data-dir={isolated / 'mine'}",
            f"--run-dir={isolated / 'run'}", "--quiet"]  # fmt: skip
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and err.count("\n") == 0 and "expected MD5" in err
