"""Real data loaders without torchvision: Fashion-MNIST (IDX) and CIFAR-10/100 (pickle).

Search order for files: ``data_dir``, ``$STABLEEIG_DATA``, the Debian package's location
(``apt-get install dataset-fashion-mnist``), then the user cache ``~/.cache/stableeig``,
where a download goes when a network exists. Every data file is read through one
descriptor (a FIFO or device is refused, never waited on) and checked against its official
checksum before it is parsed: the bytes checked are the bytes parsed.
``fashion-mnist-subset`` is the 4,000/1,000-image subset shipped inside the package
(``bench/data``), used by the demo when the full set is absent.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import struct
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch

from .files import open_regular, own_folder, read_bytes

__all__ = [
    "ChecksumError",
    "Dataset",
    "MissingDataError",
    "augment",
    "load_cifar",
    "load_dataset",
    "load_fashion_mnist",
    "read_idx",
]

PathLike = Union[str, Path]
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
EMBEDDED = Path(__file__).parent / "data"
FASHION_URL = "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"
# Official MD5s (zalandoresearch, as torchvision lists them), then the Debian package's
# re-gzipped files.
FASHION_MD5 = {
    "train-images-idx3-ubyte.gz": (
        "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "cf8536b0aa1a6ac5fa3f23001093305c",
    ),
    "train-labels-idx1-ubyte.gz": (
        "25c81989df183df01b3e8a0aad5dffbe",
        "10bea18fdb374794d4bb42e356e600c9",
    ),
    "t10k-images-idx3-ubyte.gz": (
        "bef4ecab320f06d8554ea6380940ec79",
        "f78720b4224f21cce2f2ccf2d7a94c9a",
    ),
    "t10k-labels-idx1-ubyte.gz": (
        "bb300cfdad3c16e7a12a480ee83cd310",
        "0d30e22e447f3c33dab9ed536400ac01",
    ),
}
CIFAR = {
    "cifar10": (
        "cifar-10-python.tar.gz",
        "cifar-10-batches-py",
        "c58f30108f718f92721af3b95e74349a",
        [f"data_batch_{i}" for i in range(1, 6)],
        ["test_batch"],
        b"labels",
    ),
    "cifar100": (
        "cifar-100-python.tar.gz",
        "cifar-100-python",
        "eb9058c3a382ffc7106e4002c42a8d85",
        ["train"],
        ["test"],
        b"fine_labels",
    ),
}
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/"
# Published MD5s of the extracted batch files (as torchvision lists them): checked before
# any batch is unpickled.
CIFAR_BATCH_MD5 = {
    "cifar10": {
        "data_batch_1": "c99cafc152244af753f735de768cd75f",
        "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
        "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
        "data_batch_4": "634d18415352ddfa80567beed471001a",
        "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
        "test_batch": "40351d587109b95175f43aff81a1287e",
    },
    "cifar100": {
        "train": "16019d7e3df5f24257cddd939b257f8d",
        "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
    },
}
# What the CIFAR pickles may construct: numpy arrays and nothing else.
_CIFAR_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles a CIFAR batch: dicts, lists, bytes, numbers and numpy arrays only."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _CIFAR_GLOBALS:
            raise pickle.UnpicklingError(
                f"expected a CIFAR batch (numpy arrays, lists, bytes) (got a reference to "
                f"{module}.{name})"
            )
        return super().find_class(module, name)


class MissingDataError(FileNotFoundError):
    """The data set is not on disk and could not be downloaded."""


class ChecksumError(ValueError):
    """A data file does not match its published checksum."""


@dataclass
class Dataset:
    """Images (N, C, H, W) uint8 and labels (N,) int64, for training and test."""

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int

    @property
    def in_channels(self) -> int:
        return int(self.train_images.shape[1])


def search_path(data_dir: Optional[PathLike] = None) -> list[Path]:
    """Directories searched for data, in order."""
    candidates = [data_dir, os.environ.get("STABLEEIG_DATA"), DEBIAN_FASHION_MNIST, cache_dir()]
    return [Path(c) for c in candidates if c]


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "stableeig"


MAX_DATA_FILE = 1 << 31  # bytes: more than any of these data sets' files (CIFAR: 170 MB)


def read_data_file(path: Path, md5s: Optional[tuple[str, ...]] = None) -> bytes:
    """The bytes of one data file, read through one descriptor (a symlink is followed: the
    data are yours to place; a FIFO or device is refused at once, never waited on) and,
    with ``md5s``, checked against them: the bytes checked are the bytes parsed, so a file
    swapped between the check and the read cannot be loaded (:class:`ChecksumError`)."""
    data = read_bytes(path, MAX_DATA_FILE, single_link=False, follow_links=True)
    if md5s is not None:
        digest = hashlib.md5(data, usedforsecurity=False).hexdigest()
        if digest not in md5s:
            raise ChecksumError(f"{path}: expected MD5 {md5s[0]} (got {digest})")
    return data


def read_idx(path: PathLike, data: Optional[bytes] = None) -> torch.Tensor:
    """An IDX file (gzip or raw) of unsigned bytes as a uint8 tensor of its shape; ``data``:
    the file's bytes when already read (and verified)."""
    path = Path(path)
    data = read_data_file(path) if data is None else data
    if path.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as error:
            raise ValueError(f"{path}: expected a gzip file ({error})") from None
    magic = struct.unpack(">I", data[:4])[0]
    if magic >> 8 != 0x08:
        raise ValueError(f"{path}: expected an IDX file of unsigned bytes (got magic {magic:#x})")
    ndim = magic & 0xFF
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    payload = bytearray(data[4 + 4 * ndim :])
    expected = 1
    for size in shape:
        expected *= size
    if len(payload) != expected:
        raise ValueError(
            f"{path}: expected {expected} bytes for shape {shape} (got {len(payload)})"
        )
    return torch.frombuffer(payload, dtype=torch.uint8).reshape(shape).clone()


def _download(url: str, target: Path) -> None:
    """Download into ``target``'s folder, the tool's own (:func:`own_folder`: no symlink,
    no other user's), through ``<name>.part`` (no link, no FIFO, truncated only once
    checked), renamed over ``target`` within that open folder."""
    if target.parent != cache_dir():
        with own_folder(cache_dir(), "download cache"):
            pass  # the cache itself is checked too
    partial = target.with_suffix(target.suffix + ".part")
    with own_folder(target.parent, "download folder") as folder:
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        descriptor = open_regular(partial, flags, "write the download", folder=folder)
        with (
            urllib.request.urlopen(url, timeout=30) as response,
            os.fdopen(descriptor, "wb") as out,
        ):
            while block := response.read(1 << 20):
                out.write(block)
        os.replace(partial.name, target.name, src_dir_fd=folder, dst_dir_fd=folder)


def _missing(
    name: str, looked: list[Path], how: str, error: Optional[Exception]
) -> MissingDataError:
    where = ", ".join(str(p) for p in looked)
    reason = f" (download failed: {error})" if error else ""
    return MissingDataError(f"{name} not found in {where}{reason}. {how}")


def load_fashion_mnist(data_dir: Optional[PathLike] = None, download: bool = True) -> Dataset:
    """Fashion-MNIST: 60,000 + 10,000 grayscale 28×28 images, 10 classes."""
    looked = search_path(data_dir)
    for directory in looked:
        for folder in (directory, directory / "fashion-mnist"):
            if all((folder / name).exists() for name in FASHION_MD5):
                return _fashion_from(folder, "fashion-mnist", check=True)
    error: Optional[Exception] = None
    if download:
        target = cache_dir() / "fashion-mnist"
        try:
            for name in FASHION_MD5:
                if not (target / name).exists():
                    _download(FASHION_URL + name, target / name)
            return _fashion_from(target, "fashion-mnist", check=True)
        except OSError as exc:
            error = exc
    raise _missing(
        "Fashion-MNIST",
        looked,
        "Install it with `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or put the "
        f"four files {', '.join(FASHION_MD5)} in a directory passed as --data-dir or "
        "$STABLEEIG_DATA.",
        error,
    )


def _fashion_from(folder: Path, name: str, check: bool) -> Dataset:
    def read(file: str) -> torch.Tensor:
        data = read_data_file(folder / file, FASHION_MD5[file] if check else None)
        return read_idx(folder / file, data)

    images = {
        split: read(f"{split}-images-idx3-ubyte.gz").unsqueeze(1) for split in ("train", "t10k")
    }
    labels = {split: read(f"{split}-labels-idx1-ubyte.gz").long() for split in ("train", "t10k")}
    return Dataset(name, images["train"], labels["train"], images["t10k"], labels["t10k"], 10)


def load_cifar(
    name: str = "cifar10",
    data_dir: Optional[PathLike] = None,
    download: bool = True,
    expected_md5: Optional[str] = None,
    batch_md5: Optional[dict[str, str]] = None,
) -> Dataset:
    """CIFAR-10 or CIFAR-100 from the standard python pickle archive (or its extraction).

    Args:
        name: ``"cifar10"`` or ``"cifar100"``.
        data_dir: searched first. Default: None.
        download: fetch the archive into the user cache when it is nowhere on disk.
        expected_md5: checksum of the archive. Default: None (the official one).
        batch_md5: checksum of each extracted batch file, checked before it is unpickled
            (also when the archive was checked). Default: None (the published ones).
    """
    archive, folder, official_md5 = CIFAR[name][:3]
    looked = search_path(data_dir)
    for directory in looked:
        if (directory / folder).is_dir():
            return _cifar_from(directory / folder, name, batch_md5)
        if (directory / archive).exists():
            return _extract_cifar(
                directory / archive, name, expected_md5 or official_md5, batch_md5
            )
    error: Optional[Exception] = None
    if download:
        target = cache_dir() / archive
        try:
            _download(CIFAR_URL + archive, target)
            return _extract_cifar(target, name, expected_md5 or official_md5, batch_md5)
        except OSError as exc:
            error = exc
    raise _missing(
        name.upper(),
        looked,
        f"Download {CIFAR_URL + archive} (MD5 {official_md5}) and put it, or its extracted "
        f"folder {folder}/, in a directory passed as --data-dir or $STABLEEIG_DATA.",
        error,
    )


def _extract_cifar(
    archive: Path, name: str, expected_md5: str, batch_md5: Optional[dict[str, str]]
) -> Dataset:
    data = read_data_file(archive, (expected_md5,))
    folder = CIFAR[name][1]
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4: refuse unsafe members
            tar.extractall(archive.parent, filter="data")
        else:  # pragma: no cover
            tar.extractall(archive.parent)
    return _cifar_from(archive.parent / folder, name, batch_md5)


def read_cifar_batch(path: Path, expected_md5: str) -> dict[bytes, object]:
    """One CIFAR batch file, checked against its MD5 and unpickled with an unpickler that
    admits only numpy arrays (:class:`ChecksumError`, ``pickle.UnpicklingError``)."""
    data = read_data_file(path, (expected_md5,))
    batch = _BatchUnpickler(io.BytesIO(data), encoding="bytes").load()
    if not isinstance(batch, dict):
        raise pickle.UnpicklingError(f"{path}: expected a dict (got {type(batch).__name__})")
    return batch


def _cifar_from(folder: Path, name: str, batch_md5: Optional[dict[str, str]]) -> Dataset:
    _, _, _, train, test, label_key = CIFAR[name]
    checksums = batch_md5 or CIFAR_BATCH_MD5[name]

    def read(files: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = [], []
        for file in files:
            batch = read_cifar_batch(folder / file, checksums[file])
            data: Any = batch[b"data"]
            raw = data.tobytes() if hasattr(data, "tobytes") else bytes(data)
            images.append(torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(-1, 3, 32, 32))
            labels.append(torch.tensor(batch[label_key], dtype=torch.long))
        return torch.cat(images), torch.cat(labels)

    train_images, train_labels = read(train)
    test_images, test_labels = read(test)
    return Dataset(
        name, train_images, train_labels, test_images, test_labels, 10 if name == "cifar10" else 100
    )


def load_dataset(name: str, data_dir: Optional[PathLike] = None, download: bool = True) -> Dataset:
    """``fashion-mnist``, ``fashion-mnist-subset`` (shipped), ``cifar10`` or ``cifar100``."""
    if name == "fashion-mnist":
        return load_fashion_mnist(data_dir, download)
    if name == "fashion-mnist-subset":
        return _fashion_from(EMBEDDED, name, check=False)
    if name in CIFAR:
        return load_cifar(name, data_dir, download)
    raise ValueError(
        "dataset: expected one of fashion-mnist, fashion-mnist-subset, cifar10, cifar100 "
        f"(got {name!r})"
    )


def augment(images: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip, batched: (N, C, H, W)."""
    N, C, H, W = images.shape
    padded = torch.nn.functional.pad(images, (padding,) * 4)
    offsets = torch.randint(0, 2 * padding + 1, (2, N), generator=generator)
    rows = (offsets[0].unsqueeze(1) + torch.arange(H)).view(N, 1, H, 1)
    cols = (offsets[1].unsqueeze(1) + torch.arange(W)).view(N, 1, 1, W)
    flip = torch.rand(N, generator=generator) < 0.5
    cols = torch.where(flip.view(N, 1, 1, 1), cols.flip(-1), cols)
    batch = torch.arange(N).view(N, 1, 1, 1)
    channel = torch.arange(C).view(1, C, 1, 1)
    return padded[batch, channel, rows, cols]
