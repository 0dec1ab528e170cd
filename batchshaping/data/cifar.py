"""CIFAR-10 on disk: find it, check it, load it as uint8 (N, 3, 32, 32) tensors.

Three layouts are accepted under a data directory ``root`` (or ``root`` may name the folder/file itself):

(a) ``cifar-10-batches-py/`` -- the official Python pickles ``data_batch_1`` .. ``data_batch_5``,
    ``test_batch`` and ``batches.meta`` (``tar xzf cifar-10-python.tar.gz`` gives this folder);
(b) ``cifar-10-python.tar.gz`` -- the official archive, md5-checked and read without extracting;
(c) ``cifar10_train_part1.npz``, ``cifar10_train_part2.npz``, ``cifar10_test.npz`` -- HWC uint8 arrays
    under the keys ``x_train``/``y_train`` and ``x_test``/``y_test``.

Nothing is downloaded unless asked for (``download=True``, the CLI's ``--download``).
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import sys
import tarfile
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from torch import Tensor

from .errors import DataCorruptError, DataError, DataNotFoundError

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_TGZ_NAME = "cifar-10-python.tar.gz"
CIFAR10_TGZ_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_FOLDER = "cifar-10-batches-py"
NPZ_TRAIN = ("cifar10_train_part1.npz", "cifar10_train_part2.npz")
NPZ_TEST = "cifar10_test.npz"
TRAIN_SIZE = 50_000
TEST_SIZE = 10_000
ENV_VAR = "BATCHSHAPING_DATA"
DEFAULT_DATA_DIR = Path("data") / "cifar10"

_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_TEST_BATCH = "test_batch"
_META = "batches.meta"
_NUM_CLASSES = 10


@dataclass
class CifarSplits:
    """The CIFAR-10 train and test splits in memory (CPU).

    x_train: (N_train, 3, 32, 32) uint8 RGB, y_train: (N_train,) int64 in [0, 10);
    x_test:  (N_test, 3, 32, 32) uint8 RGB,  y_test:  (N_test,) int64.
    N_train = 50000 and N_test = 10000 for the real data set (N_train = 0 when loaded with train=False).
    classes: the 10 class names in label order.
    """

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    classes: list[str]


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The data directory: ``data_dir`` if given, else ``$BATCHSHAPING_DATA``, else ``./data/cifar10``."""
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser()
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    return DEFAULT_DATA_DIR


def md5sum(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """Hex md5 of a file, read in chunks so a 170 MB archive never sits in memory at once."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            h.update(chunk)
    return h.hexdigest()


def check_md5(path: str | os.PathLike[str], expected: str | None = None) -> None:
    """Raise :class:`DataCorruptError` unless ``path`` has md5 ``expected`` (default: the official one)."""
    expected = CIFAR10_TGZ_MD5 if expected is None else expected
    got = md5sum(path)
    if got != expected:
        raise DataCorruptError(
            f"{path}: md5 {got} does not match the official CIFAR-10 archive ({expected}); the file is "
            f"truncated or not {CIFAR10_TGZ_NAME}. Delete it and download it again (--download fetches "
            f"{CIFAR10_URL})."
        )


def _layout_help(root: Path) -> str:
    return (
        "Accepted layouts (put ONE of them there):\n"
        f"  (a) {root / CIFAR10_FOLDER}/ with data_batch_1..5, test_batch, batches.meta "
        f"(the extracted official archive; root may also be that folder itself);\n"
        f"  (b) {root / CIFAR10_TGZ_NAME} (the official archive, md5 {CIFAR10_TGZ_MD5}; "
        "root may also be the file itself);\n"
        f"  (c) {root / NPZ_TRAIN[0]}, {root / NPZ_TRAIN[1]} and {root / NPZ_TEST} "
        "(uint8 HWC arrays x_train/y_train, x_test/y_test).\n"
        f"Point to another folder with --data-dir DIR or ${ENV_VAR}=DIR, or pass --download "
        f"(download=True) to fetch {CIFAR10_URL} (~170 MB) into {root}."
    )


def _find_layout(root: Path) -> tuple[str, Path] | None:
    """Which layout ``root`` holds: ("folder" | "npz" | "tar", path), or None. Fastest to read first."""
    if root.is_file():
        if root.name.endswith((".tar.gz", ".tgz")):
            return "tar", root
        return None
    if not root.is_dir():
        return None
    for folder in (root, root / CIFAR10_FOLDER):
        if (folder / _TRAIN_BATCHES[0]).exists() or (folder / _META).exists():
            return "folder", folder
    if (root / NPZ_TEST).exists() or any((root / p).exists() for p in NPZ_TRAIN):
        return "npz", root
    if (root / CIFAR10_TGZ_NAME).exists():
        return "tar", root / CIFAR10_TGZ_NAME
    return None


def load_cifar10(
    root: str | os.PathLike[str],
    download: bool = False,
    *,
    check_counts: bool = True,
    train: bool = True,
) -> CifarSplits:
    """Load CIFAR-10 from ``root`` in any of the three layouts described in the module docstring.

    Returns a :class:`CifarSplits` with x_* (N, 3, 32, 32) uint8 and y_* (N,) int64 CPU tensors.
    ``download=True`` fetches the official archive into ``root`` when no layout is present (md5-checked);
    with ``download=False`` the network is never touched. ``check_counts=False`` skips the 50000/10000
    size check (for small test fixtures); shapes, dtypes and label ranges are always checked.
    ``train=False`` reads only the test split (evaluation: a fifth of the data) and leaves x_train/y_train
    empty; the npz layout then needs only its test file.
    Raises :class:`DataNotFoundError` (no layout found) or :class:`DataCorruptError` (bad file).
    """
    root = Path(root).expanduser()
    found = _find_layout(root)
    if found is None and download:
        target = root if not root.name.endswith((".tar.gz", ".tgz")) else root.parent
        found = ("tar", download_cifar10(target))
    if found is None:
        what = "does not exist" if not root.exists() else "holds none of the accepted layouts"
        raise DataNotFoundError(f"CIFAR-10 not found: {root} {what}.\n{_layout_help(root)}")
    kind, path = found
    if kind == "folder":
        return _load_folder(path, check_counts, train)
    if kind == "npz":
        return _load_npz(path, check_counts, train)
    check_md5(path)
    return _load_tar(path, check_counts, train)


def download_cifar10(root: str | os.PathLike[str], url: str = CIFAR10_URL) -> Path:
    """Download the official archive into ``root`` (kept if already there and md5-valid); returns its path."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    dest = root / CIFAR10_TGZ_NAME
    if dest.exists():
        try:
            check_md5(dest)
            return dest
        except DataCorruptError:
            print(f"{dest} is corrupt, downloading it again", file=sys.stderr)
    tmp = dest.with_name(dest.name + ".part")
    print(f"Downloading {url} -> {dest}", file=sys.stderr, flush=True)
    try:
        urllib.request.urlretrieve(url, tmp)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise DataError(
            f"Download of {url} failed ({e}). Download it by hand and put it at {dest}.\n{_layout_help(root)}"
        ) from e
    try:
        check_md5(tmp)
    except DataCorruptError:
        tmp.unlink(missing_ok=True)
        raise
    # Rename only after the md5 check so an interrupted download never looks like a valid archive.
    tmp.replace(dest)
    return dest


# --- official pickles -------------------------------------------------------------------------------------


class _SafeUnpickler(pickle.Unpickler):
    """Unpickler that only builds numpy arrays: the CIFAR pickles need nothing else, and an arbitrary
    pickle could otherwise run code."""

    _ALLOWED = {
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how Python 3 writes bytes in protocol-2 pickles
    }

    def find_class(self, module: str, name: str) -> object:
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            # The official pickles name numpy.core (numpy 1); numpy 2 moved it and warns on the old name.
            module = "numpy._core." + module.removeprefix("numpy.core.")
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR-10 pickle")
        return super().find_class(module, name)


def _unpickle(f: BinaryIO, where: str) -> dict:
    try:
        obj = _SafeUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as e:
        raise DataCorruptError(f"{where}: cannot read the CIFAR-10 pickle ({e}); the file is corrupt.") from e
    if not isinstance(obj, dict):
        raise DataCorruptError(f"{where}: expected a dict in the CIFAR-10 pickle, got {type(obj).__name__}.")
    return obj


def _batch_arrays(d: dict, where: str, expected: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Official batch dict -> (n, 3, 32, 32) uint8 images, (n,) int64 labels, validated."""
    if b"data" not in d or b"labels" not in d:
        raise DataCorruptError(f"{where}: missing b'data' or b'labels' key; not a CIFAR-10 batch.")
    data = np.asarray(d[b"data"])
    labels = np.asarray(d[b"labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataCorruptError(
            f"{where}: b'data' is {data.dtype} {data.shape}, expected uint8 (n, 3072); the file is corrupt."
        )
    _check_count(len(data), expected, where)
    # Each row is the R, G and B 32x32 planes in row-major order, i.e. already CHW.
    return data.reshape(-1, 3, 32, 32), _check_labels(labels, len(data), where)


def _check_count(n: int, expected: int | None, where: str) -> None:
    if expected is not None and n != expected:
        raise DataCorruptError(
            f"{where}: {n} images, expected {expected}; the file is truncated or not the CIFAR-10 one "
            "(replace it, or load a deliberately small set with check_counts=False)."
        )


def _check_labels(labels: np.ndarray, n: int, where: str) -> np.ndarray:
    if labels.ndim != 1 or len(labels) != n or not np.issubdtype(labels.dtype, np.integer):
        raise DataCorruptError(
            f"{where}: {labels.dtype} labels of shape {labels.shape} for {n} images; the file is corrupt."
        )
    if n and (labels.min() < 0 or labels.max() >= _NUM_CLASSES):
        raise DataCorruptError(f"{where}: labels outside [0, {_NUM_CLASSES}); the file is corrupt.")
    return labels.astype(np.int64)


def _class_names(d: dict, where: str) -> list[str]:
    names = d.get(b"label_names")
    if not isinstance(names, list) or len(names) != _NUM_CLASSES:
        raise DataCorruptError(f"{where}: b'label_names' is not a list of {_NUM_CLASSES} names.")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def _assemble(
    open_member: Callable[[str], dict], where: Callable[[str], str], check_counts: bool, with_train: bool
) -> CifarSplits:
    per_batch = TRAIN_SIZE // len(_TRAIN_BATCHES) if check_counts else None
    names = _TRAIN_BATCHES if with_train else ()
    train = [_batch_arrays(open_member(name), where(name), per_batch) for name in names]
    test = _batch_arrays(open_member(_TEST_BATCH), where(_TEST_BATCH), TEST_SIZE if check_counts else None)
    classes = _class_names(open_member(_META), where(_META))
    return _to_splits(*_concat(train), *test, classes)


def _concat(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of the training parts, one array each; empty (0, 3, 32, 32) and (0,) for none."""
    if not parts:
        return np.zeros((0, 3, 32, 32), np.uint8), np.zeros(0, np.int64)
    return np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts])


def _load_folder(folder: Path, check_counts: bool, train: bool = True) -> CifarSplits:
    def open_member(name: str) -> dict:
        path = folder / name
        if not path.is_file():
            raise DataNotFoundError(
                f"{path} is missing: the folder {folder} must hold {', '.join(_TRAIN_BATCHES)}, "
                f"{_TEST_BATCH} and {_META}.\n{_layout_help(folder.parent)}"
            )
        with open(path, "rb") as f:
            return _unpickle(f, str(path))

    return _assemble(open_member, lambda name: str(folder / name), check_counts, train)


def _load_tar(path: Path, check_counts: bool, train: bool = True) -> CifarSplits:
    wanted = {*(_TRAIN_BATCHES if train else ()), _TEST_BATCH, _META}
    members: dict[str, dict] = {}
    try:
        # One sequential pass over the gzip stream; members are unpickled straight from it.
        with tarfile.open(path, "r:gz") as tar:
            for m in tar:
                base = m.name.rsplit("/", 1)[-1]
                if m.isfile() and base in wanted and base not in members:
                    f = tar.extractfile(m)
                    assert f is not None
                    members[base] = _unpickle(io.BytesIO(f.read()), f"{path}:{m.name}")
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise DataCorruptError(f"{path}: cannot read the archive ({e}); it is truncated or corrupt.") from e
    missing = sorted(wanted - members.keys())
    if missing:
        raise DataCorruptError(
            f"{path}: the archive lacks {', '.join(missing)}; it is not the CIFAR-10 archive."
        )
    where = f"{path}:{CIFAR10_FOLDER}/"
    return _assemble(members.__getitem__, lambda name: where + name, check_counts, train)


# --- npz --------------------------------------------------------------------------------------------------


def _read_npz(path: Path, xkey: str, ykey: str, expected: int | None) -> tuple[np.ndarray, np.ndarray]:
    """One npz file -> (n, 3, 32, 32) uint8 CHW images, (n,) int64 labels, validated."""
    if not path.is_file():
        raise DataNotFoundError(
            f"{path} is missing (the npz layout needs {', '.join(NPZ_TRAIN)} and {NPZ_TEST}).\n"
            f"{_layout_help(path.parent)}"
        )
    try:
        with np.load(path, allow_pickle=False) as z:
            x, y = z[xkey], z[ykey]
    except KeyError as e:
        raise DataCorruptError(f"{path}: no array {e} (expected keys {xkey!r} and {ykey!r}).") from e
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise DataCorruptError(f"{path}: cannot read the npz ({e}); it is truncated or corrupt.") from e
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (32, 32, 3):
        raise DataCorruptError(f"{path}: {xkey} is {x.dtype} {x.shape}, expected uint8 (n, 32, 32, 3).")
    _check_count(len(x), expected, str(path))
    y = _check_labels(y, len(x), f"{path}:{ykey}")
    return x.transpose(0, 3, 1, 2), y  # HWC -> CHW (a view; made contiguous in _to_splits)


def _load_npz(folder: Path, check_counts: bool, train: bool = True) -> CifarSplits:
    per_part = TRAIN_SIZE // len(NPZ_TRAIN) if check_counts else None
    names = NPZ_TRAIN if train else ()
    parts = [_read_npz(folder / name, "x_train", "y_train", per_part) for name in names]
    x_test, y_test = _read_npz(folder / NPZ_TEST, "x_test", "y_test", TEST_SIZE if check_counts else None)
    return _to_splits(*_concat(parts), x_test, y_test, list(CIFAR10_CLASSES))


def _to_splits(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, classes: Iterable[str]
) -> CifarSplits:
    def t(a: np.ndarray) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(a))

    return CifarSplits(t(x_train), t(y_train), t(x_test), t(y_test), list(classes))
