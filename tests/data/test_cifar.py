"""CIFAR-10 discovery, loading and validation: the real npz copy plus tiny fake official layouts."""

from __future__ import annotations

import hashlib
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from batchshaping.data import cifar
from batchshaping.data.cifar import (
    CIFAR10_MEAN,
    DataCorruptError,
    DataError,
    DataNotFoundError,
    check_md5,
    load_cifar10,
    md5sum,
    resolve_data_dir,
)

REAL_NPZ = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "cifar10"
BATCHES = [f"data_batch_{i}" for i in range(1, 6)]


# --- real data ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real() -> cifar.CifarSplits:
    if not (REAL_NPZ / "cifar10_test.npz").exists():
        pytest.skip(f"real CIFAR-10 npz not found at {REAL_NPZ} (shared data folder not mounted)")
    return load_cifar10(REAL_NPZ)


def test_real_npz_counts_and_mean(real: cifar.CifarSplits) -> None:
    assert real.x_train.shape == (50000, 3, 32, 32) and real.x_train.dtype == torch.uint8
    assert real.x_test.shape == (10000, 3, 32, 32) and real.x_test.dtype == torch.uint8
    assert real.y_train.dtype == torch.int64 and real.y_test.dtype == torch.int64
    assert torch.bincount(real.y_train).tolist() == [5000] * 10
    assert torch.bincount(real.y_test).tolist() == [1000] * 10
    # numpy's uint32 per-image sums are ~50x faster here than torch's integer reductions.
    per_image = real.x_train.numpy().reshape(50000, 3, -1).sum(-1, dtype=np.uint32)
    mean = per_image.sum(0, dtype=np.float64) / (50000 * 1024 * 255)
    np.testing.assert_allclose(mean, CIFAR10_MEAN, atol=1e-3)
    assert real.classes[0] == "airplane" and real.classes[9] == "truck"


# --- fake official layouts ----------------------------------------------------------------------------------


def _fake_arrays(
    seed: int = 0, n_batch: int = 3, n_test: int = 4
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per official file name: (n, 3, 32, 32) uint8 images and (n,) labels."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, n in [*((b, n_batch) for b in BATCHES), ("test_batch", n_test)]:
        out[name] = (rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, n))
    return out


def _write_official(folder: Path, arrays: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    folder.mkdir(parents=True)
    for name, (x, y) in arrays.items():
        # Official format: b'data' (n, 3072) uint8 = R, G, B planes row-major; b'labels' list of ints.
        d = {b"batch_label": name.encode(), b"data": x.reshape(len(x), -1), b"labels": y.tolist()}
        (folder / name).write_bytes(pickle.dumps(d, protocol=2))
    meta = {b"label_names": [c.encode() for c in cifar.CIFAR10_CLASSES], b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return folder


def _write_npz(folder: Path, arrays: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    folder.mkdir(parents=True)
    xs = np.concatenate([arrays[b][0] for b in BATCHES]).transpose(0, 2, 3, 1)  # CHW -> HWC as on disk
    ys = np.concatenate([arrays[b][1] for b in BATCHES]).astype(np.uint8)
    half = len(xs) // 2
    np.savez(folder / "cifar10_train_part1.npz", x_train=xs[:half], y_train=ys[:half])
    np.savez(folder / "cifar10_train_part2.npz", x_train=xs[half:], y_train=ys[half:])
    xt, yt = arrays["test_batch"]
    np.savez(folder / "cifar10_test.npz", x_test=xt.transpose(0, 2, 3, 1), y_test=yt.astype(np.uint8))
    return folder


def _write_tar(path: Path, folder: Path) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    return path


@pytest.fixture
def fake(tmp_path: Path) -> dict:
    arrays = _fake_arrays()
    folder = _write_official(tmp_path / "off" / "cifar-10-batches-py", arrays)
    tar_dir = tmp_path / "tar"
    tar_dir.mkdir()
    tgz = _write_tar(tar_dir / "cifar-10-python.tar.gz", folder)
    npz = _write_npz(tmp_path / "npz", arrays)
    x_train = torch.from_numpy(np.concatenate([arrays[b][0] for b in BATCHES]))
    y_train = torch.from_numpy(np.concatenate([arrays[b][1] for b in BATCHES]))
    x_test, y_test = (torch.from_numpy(a) for a in arrays["test_batch"])
    return dict(
        folder=folder, tgz=tgz, npz=npz, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test
    )


def _assert_same(s: cifar.CifarSplits, fake: dict) -> None:
    assert s.x_train.dtype == torch.uint8 and s.x_train.shape == (15, 3, 32, 32)
    assert s.y_train.dtype == torch.int64 and s.x_train.is_contiguous()
    assert torch.equal(s.x_train, fake["x_train"]) and torch.equal(s.y_train, fake["y_train"])
    assert torch.equal(s.x_test, fake["x_test"]) and torch.equal(s.y_test, fake["y_test"])
    assert s.classes == cifar.CIFAR10_CLASSES


def test_official_folder_tar_and_npz_agree(fake: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    _assert_same(load_cifar10(fake["folder"], check_counts=False), fake)  # the folder itself
    _assert_same(load_cifar10(fake["folder"].parent, check_counts=False), fake)  # its parent
    _assert_same(load_cifar10(fake["npz"], check_counts=False), fake)
    monkeypatch.setattr(cifar, "CIFAR10_TGZ_MD5", md5sum(fake["tgz"]))
    _assert_same(load_cifar10(fake["tgz"], check_counts=False), fake)  # the archive itself
    _assert_same(load_cifar10(fake["tgz"].parent, check_counts=False), fake)  # a folder holding it


def test_without_train_only_the_test_split_is_read_in_every_layout(
    fake: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the training files are removed: a test-only load must not need them
    for name in BATCHES:
        (fake["folder"] / name).unlink()
    for name in cifar.NPZ_TRAIN:
        (fake["npz"] / name).unlink()
    monkeypatch.setattr(cifar, "CIFAR10_TGZ_MD5", md5sum(fake["tgz"]))  # the archive keeps them: skipped
    for root in (fake["folder"], fake["npz"], fake["tgz"]):
        s = load_cifar10(root, check_counts=False, train=False)
        assert (
            s.x_train.shape == (0, 3, 32, 32) and s.y_train.shape == (0,) and s.y_train.dtype == torch.int64
        )
        assert torch.equal(s.x_test, fake["x_test"]) and torch.equal(s.y_test, fake["y_test"])
        assert s.classes == cifar.CIFAR10_CLASSES
    with pytest.raises(DataNotFoundError, match="data_batch_1 is missing"):
        load_cifar10(fake["folder"], check_counts=False)  # training still needs them


def test_tar_md5_mismatch_is_rejected(fake: dict) -> None:
    # The fake archive is not the official one, so the real md5 check must refuse it.
    with pytest.raises(DataCorruptError, match="md5"):
        load_cifar10(fake["tgz"], check_counts=False)


def test_md5sum_streams_in_chunks(tmp_path: Path) -> None:
    f = tmp_path / "blob"
    f.write_bytes(b"batch-shaping" * 1000)
    expected = hashlib.md5(f.read_bytes()).hexdigest()
    assert md5sum(f, chunk_size=7) == expected == md5sum(f)
    check_md5(f, expected)
    with pytest.raises(DataCorruptError, match=str(f)):
        check_md5(f, "0" * 32)


def test_full_size_counts_are_enforced(fake: dict) -> None:
    with pytest.raises(DataCorruptError, match=r"data_batch_1.*3 images, expected 10000"):
        load_cifar10(fake["folder"])
    with pytest.raises(DataCorruptError, match=r"cifar10_train_part1\.npz.*expected 25000"):
        load_cifar10(fake["npz"])


def test_truncated_files_give_clear_errors(fake: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    batch = fake["folder"] / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:2000])
    with pytest.raises(DataCorruptError, match="data_batch_3.*corrupt"):
        load_cifar10(fake["folder"], check_counts=False)

    part = fake["npz"] / "cifar10_train_part2.npz"
    part.write_bytes(part.read_bytes()[:3000])
    with pytest.raises(DataCorruptError, match="cifar10_train_part2.npz"):
        load_cifar10(fake["npz"], check_counts=False)

    tgz = fake["tgz"]
    tgz.write_bytes(tgz.read_bytes()[:5000])
    monkeypatch.setattr(cifar, "CIFAR10_TGZ_MD5", md5sum(tgz))  # get past the md5 to the reader
    with pytest.raises(DataCorruptError, match="truncated or corrupt"):
        load_cifar10(tgz, check_counts=False)


def test_bad_contents_are_rejected(fake: dict) -> None:
    x, _ = _fake_arrays()["data_batch_2"]
    d = {b"data": x.reshape(len(x), -1), b"labels": [0, 10, 1]}  # label 10 is out of range
    (fake["folder"] / "data_batch_2").write_bytes(pickle.dumps(d))
    with pytest.raises(DataCorruptError, match=r"data_batch_2.*labels outside"):
        load_cifar10(fake["folder"], check_counts=False)
    # A pickle that would call an arbitrary function is refused instead of executed.
    (fake["folder"] / "data_batch_2").write_bytes(pickle.dumps({b"data": os.getcwd}))
    with pytest.raises(DataCorruptError, match="not allowed"):
        load_cifar10(fake["folder"], check_counts=False)


def test_missing_data_names_layouts_and_fixes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("download=False must not touch the network")

    monkeypatch.setattr(cifar.urllib.request, "urlretrieve", no_network)
    for root in (tmp_path / "nowhere", tmp_path):
        with pytest.raises(DataNotFoundError) as err:
            load_cifar10(root)
        msg = str(err.value)
        assert isinstance(err.value, FileNotFoundError) and isinstance(err.value, DataError)
        for needle in (
            str(root),
            "cifar-10-batches-py",
            "cifar-10-python.tar.gz",
            "cifar10_train_part1.npz",
            "--download",
            "--data-dir",
            "$BATCHSHAPING_DATA",
        ):
            assert needle in msg


def test_missing_batch_file_is_named(fake: dict) -> None:
    (fake["folder"] / "test_batch").unlink()
    with pytest.raises(DataNotFoundError, match="test_batch is missing"):
        load_cifar10(fake["folder"], check_counts=False)


def test_download_fetches_checks_and_loads(
    fake: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def fake_urlretrieve(url: str, dest: Path) -> None:
        calls.append(url)
        Path(dest).write_bytes(fake["tgz"].read_bytes())

    monkeypatch.setattr(cifar.urllib.request, "urlretrieve", fake_urlretrieve)
    monkeypatch.setattr(cifar, "CIFAR10_TGZ_MD5", md5sum(fake["tgz"]))
    root = tmp_path / "fresh"
    _assert_same(load_cifar10(root, download=True, check_counts=False), fake)
    assert calls == [cifar.CIFAR10_URL] and (root / "cifar-10-python.tar.gz").is_file()
    load_cifar10(root, download=True, check_counts=False)  # already there: no second download
    assert len(calls) == 1

    monkeypatch.setattr(cifar, "CIFAR10_TGZ_MD5", "0" * 32)  # a corrupt download is refused and removed
    with pytest.raises(DataCorruptError, match="md5"):
        load_cifar10(tmp_path / "other", download=True, check_counts=False)
    assert not any((tmp_path / "other").iterdir())


def test_resolve_data_dir_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BATCHSHAPING_DATA", str(tmp_path / "env"))
    assert resolve_data_dir(str(tmp_path / "arg")) == tmp_path / "arg"
    assert resolve_data_dir(None) == tmp_path / "env"
    monkeypatch.delenv("BATCHSHAPING_DATA")
    assert resolve_data_dir(None) == Path("data") / "cifar10"
