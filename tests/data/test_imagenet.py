"""ImageNet image-folder dataset and the torchvision-free classification transforms."""

import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from batchshaping.data import DataError, DataNotFoundError
from batchshaping.data.image_transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ClassificationTransform,
    center_crop,
    random_resized_crop_box,
    resize_shorter,
)
from batchshaping.data.imagenet import ImageFolder, imagenet_datasets

CLASSES = ["n01", "n02", "n03"]
COLOURS = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200]])  # red, green, blue


def write_imagenet(root: Path, per_class: int = 4, size: tuple[int, int] = (48, 40)) -> Path:
    """A tiny ImageNet in the official folder layout: train/ and val/ of class folders of JPEGs (w x h
    ``size``) whose colour depends on the class, so a network can learn something."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for k, c in enumerate(CLASSES):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(per_class):
                base = COLOURS[k]
                px = np.clip(base + rng.integers(-30, 30, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
                Image.fromarray(px).save(d / f"{c}_{i}.JPEG", quality=90)
    return root


def test_image_folder_has_sorted_classes_and_decodes_greyscale_to_rgb(tmp_path):
    root = write_imagenet(tmp_path)
    Image.fromarray(np.full((30, 20), 128, np.uint8)).save(root / "train" / "n02" / "grey.jpg")
    (root / "train" / "n02" / "notes.txt").write_text("not an image")
    ds = ImageFolder(root / "train")
    assert ds.classes == CLASSES and len(ds) == 13
    assert ds.targets.count(1) == 5
    img, label = ds[ds.samples.index((str(root / "train" / "n02" / "grey.jpg"), 1))]
    assert img.mode == "RGB" and img.size == (20, 30) and label == 1


def test_datasets_give_normalised_crops_with_train_class_indices(tmp_path):
    train, val = imagenet_datasets(write_imagenet(tmp_path), image_size=32)
    x, y = train[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == 0
    xv, yv = val[len(val) - 1]
    assert xv.shape == (3, 32, 32) and yv == 2 and val.classes == train.classes
    # Class 2 is blue: the normalised blue channel is far above the red one.
    assert xv[2].mean() > 1.0 > xv[0].mean()


def test_random_resized_crop_box_stays_inside_and_respects_scale_and_ratio():
    rng = random.Random(0)
    for _ in range(200):
        left, top, w, h = random_resized_crop_box(120, 80, rng=rng)
        assert 0 <= left and left + w <= 120 and 0 <= top and top + h <= 80
        assert 0.08 * 9600 * 0.9 <= w * h  # rounding of w and h aside, at least 8% of the area
        assert 3 / 4 * 0.9 <= w / h <= 4 / 3 * 1.1
    # No draw can fit (scale > 1): torchvision's fallback, the largest centred crop with a clamped ratio.
    assert random_resized_crop_box(300, 100, scale=(2.0, 3.0), rng=rng) == (83, 0, 133, 100)
    assert random_resized_crop_box(100, 100, scale=(2.0, 3.0), rng=rng) == (0, 0, 100, 100)


def test_train_transform_flips_and_crops_deterministically_per_seed():
    px = np.zeros((40, 60, 3), np.uint8)
    px[:, :30] = 255  # left half white
    img = Image.fromarray(px)
    t = ClassificationTransform(16, train=True, scale=(1.0, 1.0), ratio=(1.5, 1.5))  # the whole image
    outs = [t(img, random.Random(s)) for s in range(8)]
    white_left = [bool(o[0, :, 0].mean() > o[0, :, -1].mean()) for o in outs]
    assert set(white_left) == {True, False}, "both flipped and unflipped outputs over 8 seeds"
    torch.testing.assert_close(t(img, random.Random(3)), outs[3])


def test_eval_transform_resizes_the_shorter_side_then_centre_crops():
    img = Image.new("RGB", (48, 40), (255, 0, 0))
    assert resize_shorter(img, 37).size == (44, 37)
    assert resize_shorter(Image.new("RGB", (40, 48)), 37).size == (37, 44)
    px = np.zeros((37, 44, 3), np.uint8)
    px[:, 6:38] = 255
    cropped = center_crop(Image.fromarray(px), 32)  # left = round((44 - 32) / 2) = 6
    assert np.asarray(cropped).min() == 255
    x = ClassificationTransform(32, train=False)(img)
    assert x.shape == (3, 32, 32)
    expected = [(c - m) / s for c, m, s in zip((1.0, 0.0, 0.0), IMAGENET_MEAN, IMAGENET_STD, strict=True)]
    torch.testing.assert_close(x.mean((1, 2)), torch.tensor(expected), atol=2e-3, rtol=0)


def test_missing_split_empty_class_and_unknown_val_class_name_the_folder(tmp_path):
    root = write_imagenet(tmp_path)
    shutil.rmtree(root / "val")
    with pytest.raises(DataNotFoundError, match=r"val"):
        imagenet_datasets(root)
    write_imagenet(tmp_path / "b")
    (tmp_path / "b" / "train" / "n04").mkdir()
    with pytest.raises(DataError, match=r"train/n04.*holds no images"):
        imagenet_datasets(tmp_path / "b")
    write_imagenet(tmp_path / "c")
    (tmp_path / "c" / "val" / "n99").mkdir()
    with pytest.raises(DataError, match=r"not in the training classes: \['n99'\]"):
        imagenet_datasets(tmp_path / "c")
    with pytest.raises(DataNotFoundError, match="nowhere"):
        imagenet_datasets(tmp_path / "nowhere")
