"""Cityscapes loading: official layout, labelIds -> trainIds, label checks, joint transforms."""

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from batchshaping.data import DataCorruptError, DataNotFoundError
from batchshaping.data.cityscapes import (
    CITYSCAPES_CLASSES,
    LABEL_ID_TO_TRAIN_ID,
    CityscapesDataset,
    cityscapes_datasets,
    label_ids_to_train_ids,
)
from batchshaping.data.image_transforms import SegmentationEvalTransform, SegmentationTrainTransform

CITIES = {"train": ["aachen", "bochum"], "val": ["frankfurt", "lindau"]}


def planted_train_ids(h: int, w: int, seed: int) -> np.ndarray:
    """Vertical stripes of trainIds 0..18 (16 px wide, shifted per image) with an ignored bottom band."""
    cols = (np.arange(w)[None, :] // 16 + seed) % 19
    lab = np.repeat(cols, h, 0).astype(np.uint8)
    lab[-4:] = 255
    return lab


def image_for(lab: np.ndarray) -> np.ndarray:
    """An RGB image whose red channel encodes the label (10 * trainId), so alignment can be checked."""
    img = np.zeros((*lab.shape, 3), np.uint8)
    img[..., 0] = np.where(lab == 255, 250, lab.astype(np.int32) * 10)
    img[..., 1] = 100
    return img


def write_cityscapes(root: Path, h: int = 64, w: int = 128, label_ids_city: str | None = None) -> Path:
    """Tiny Cityscapes: 2 cities x 2 images per split; ``label_ids_city`` gets only *_labelIds.png files."""
    inverse = {t: i for i, t in enumerate(LABEL_ID_TO_TRAIN_ID) if t != 255}
    inverse[255] = 0
    for split, cities in CITIES.items():
        for c, city in enumerate(cities):
            for i in range(2):
                stem = f"{city}_{i:06d}_000019"
                (root / "leftImg8bit" / split / city).mkdir(parents=True, exist_ok=True)
                (root / "gtFine" / split / city).mkdir(parents=True, exist_ok=True)
                lab = planted_train_ids(h, w, 2 * c + i)
                Image.fromarray(image_for(lab)).save(
                    root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png"
                )
                gt = root / "gtFine" / split / city
                if city == label_ids_city:
                    ids = np.vectorize(inverse.get)(lab).astype(np.uint8)
                    Image.fromarray(ids).save(gt / f"{stem}_gtFine_labelIds.png")
                else:
                    Image.fromarray(lab).save(gt / f"{stem}_gtFine_labelTrainIds.png")
    return root


def test_label_id_table_is_the_official_one():
    assert len(LABEL_ID_TO_TRAIN_ID) == 34 and len(CITYSCAPES_CLASSES) == 19
    official = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12}
    official.update({26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18})
    for label_id in range(34):
        assert LABEL_ID_TO_TRAIN_ID[label_id] == official.get(label_id, 255), label_id
    ids = np.array([[7, 26, 33], [0, 29, 24]], np.uint8)
    np.testing.assert_array_equal(label_ids_to_train_ids(ids), [[0, 13, 18], [255, 255, 11]])
    with pytest.raises(DataCorruptError, match=r"outside 0..33 in 'x.png': \[34, 200\]"):
        label_ids_to_train_ids(np.array([[34, 200, 7]], np.uint8), "x.png")


def test_dataset_pairs_images_with_train_ids_or_converted_label_ids(tmp_path):
    root = write_cityscapes(tmp_path, label_ids_city="bochum")
    ds = CityscapesDataset(root, "train")
    assert len(ds) == 4 and ds.samples[2][1].endswith("bochum_000000_000019_gtFine_labelIds.png")
    for i in range(4):
        img, label = ds[i]
        np.testing.assert_array_equal(np.asarray(label), planted_train_ids(64, 128, i))
        assert img.size == (128, 64) and img.mode == "RGB"


def test_bad_label_values_and_missing_files_name_the_file(tmp_path):
    root = write_cityscapes(tmp_path)
    bad = root / "gtFine" / "train" / "aachen" / "aachen_000001_000019_gtFine_labelTrainIds.png"
    lab = planted_train_ids(64, 128, 0)
    lab[0, 0] = 19
    Image.fromarray(lab).save(bad)
    ds = CityscapesDataset(root, "train")
    ds[0]
    with pytest.raises(DataCorruptError, match=r"aachen_000001_000019_gtFine_labelTrainIds.png.*\[19\]"):
        ds[1]
    bad.unlink()
    with pytest.raises(DataNotFoundError, match=r"no label for .*aachen_000001_000019_leftImg8bit.png"):
        CityscapesDataset(root, "train")
    with pytest.raises(DataNotFoundError, match=r"gtFine/test"):
        (root / "leftImg8bit" / "test").mkdir()
        CityscapesDataset(root, "test")


def test_joint_train_transform_keeps_image_and_label_aligned():
    lab = planted_train_ids(40, 60, 0)
    img, label = Image.fromarray(image_for(lab)), Image.fromarray(lab)
    t = SegmentationTrainTransform((48, 32), scale=(1.0, 1.0), mean=(0, 0, 0), std=(1 / 255,) * 3)
    flips = set()
    for seed in range(6):
        x, y = t(img, label, random.Random(seed))
        assert x.shape == (3, 48, 32) and y.shape == (48, 32) and y.dtype == torch.uint8
        pad = x[1] == 0  # rows 40..47 are padding: mean colour in the image, ignore in the label
        assert pad[40:].all() and not pad[:40].any() and (y[40:] == 255).all()
        real = (y != 255) & ~pad
        torch.testing.assert_close(x[0][real], y[real].float() * 10)
        flips.add(bool(y[0, 0] < y[0, -1]) if y[0, 0] != y[0, -1] else None)
    assert {True, False} <= flips
    # Random scale: sizes come out right and nearly all labelled pixels still agree with the image.
    t = SegmentationTrainTransform((24, 24), scale=(0.5, 2.0), mean=(0, 0, 0), std=(1 / 255,) * 3)
    for seed in range(4):
        x, y = t(img, label, random.Random(seed))
        real = (y != 255) & (x[1] != 0)
        assert x.shape == (3, 24, 24) and ((x[0][real] - y[real].float() * 10).abs() < 1).float().mean() > 0.8


def test_eval_transform_resizes_the_image_only(tmp_path):
    root = write_cityscapes(tmp_path)
    train, val = cityscapes_datasets(root, crop=32, eval_size=(32, 64))
    x, y = val[0]
    assert x.shape == (3, 32, 64) and y.shape == (64, 128)
    assert train.transform.base_scale == 0.5  # training scales follow the evaluation resolution
    x, y = train[0]
    assert x.shape == (3, 32, 32) and y.shape == (32, 32)
    x, y = SegmentationEvalTransform(None)(*CityscapesDataset(root, "val")[0])
    assert x.shape == (3, 64, 128)
