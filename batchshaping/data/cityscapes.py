"""Cityscapes fine annotations: 19 evaluation classes, ignore index 255.

Layout under ``root`` (the official ``leftImg8bit_trainvaltest.zip`` + ``gtFine_trainvaltest.zip``)::

    leftImg8bit/{train,val}/<city>/<stem>_leftImg8bit.png
    gtFine/{train,val}/<city>/<stem>_gtFine_labelTrainIds.png   (from cityscapesScripts'
                                                                   createTrainIdLabelImgs), or else
    gtFine/{train,val}/<city>/<stem>_gtFine_labelIds.png        (converted on the fly with the official
                                                                   labelId -> trainId table)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from .errors import DataCorruptError, DataError, DataNotFoundError
from .image_transforms import SegmentationEvalTransform, SegmentationTrainTransform
from .imagenet import open_rgb

IGNORE_INDEX = 255
CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)  # fmt: skip
NUM_CLASSES = len(CITYSCAPES_CLASSES)

#: labelId -> trainId for labelIds 0..33, from cityscapesScripts' ``helpers/labels.py`` (trainId 255 and
#: -1 are "ignore"; license plate, id -1, is never drawn into labelIds images).
LABEL_ID_TO_TRAIN_ID: tuple[int, ...] = (
    255,  # 0 unlabeled
    255,  # 1 ego vehicle
    255,  # 2 rectification border
    255,  # 3 out of roi
    255,  # 4 static
    255,  # 5 dynamic
    255,  # 6 ground
    0,  # 7 road
    1,  # 8 sidewalk
    255,  # 9 parking
    255,  # 10 rail track
    2,  # 11 building
    3,  # 12 wall
    4,  # 13 fence
    255,  # 14 guard rail
    255,  # 15 bridge
    255,  # 16 tunnel
    5,  # 17 pole
    255,  # 18 polegroup
    6,  # 19 traffic light
    7,  # 20 traffic sign
    8,  # 21 vegetation
    9,  # 22 terrain
    10,  # 23 sky
    11,  # 24 person
    12,  # 25 rider
    13,  # 26 car
    14,  # 27 truck
    15,  # 28 bus
    255,  # 29 caravan
    255,  # 30 trailer
    16,  # 31 train
    17,  # 32 motorcycle
    18,  # 33 bicycle
)

_IMAGE_SUFFIX = "_leftImg8bit.png"
_TRAIN_IDS_SUFFIX = "_gtFine_labelTrainIds.png"
_LABEL_IDS_SUFFIX = "_gtFine_labelIds.png"

# Lookup tables over all 256 uint8 values: conversion (invalid values -> 256 as a marker) and validity.
_ID_LUT = np.full(256, 256, dtype=np.int32)
_ID_LUT[: len(LABEL_ID_TO_TRAIN_ID)] = LABEL_ID_TO_TRAIN_ID
_TRAIN_ID_VALID = np.zeros(256, dtype=bool)
_TRAIN_ID_VALID[:NUM_CLASSES] = True
_TRAIN_ID_VALID[IGNORE_INDEX] = True


def label_ids_to_train_ids(label_ids: np.ndarray, path: str | Path | None = None) -> np.ndarray:
    """uint8 (H, W) Cityscapes labelIds -> uint8 (H, W) trainIds (0..18, 255 = ignore).

    DataCorruptError (naming ``path``) for values outside the 34 labelIds 0..33.
    """
    out = _ID_LUT[np.asarray(label_ids, dtype=np.uint8)]
    if (out == 256).any():
        bad = sorted(int(v) for v in np.unique(label_ids[out == 256]))
        where = f" in {str(path)!r}" if path is not None else ""
        raise DataCorruptError(f"labelIds outside 0..33{where}: {bad[:10]}")
    return out.astype(np.uint8)


def check_train_ids(train_ids: np.ndarray, path: str | Path | None = None) -> np.ndarray:
    """Validate uint8 (H, W) trainIds: only 0..18 and 255; DataCorruptError naming ``path`` otherwise."""
    train_ids = np.asarray(train_ids, dtype=np.uint8)
    ok = _TRAIN_ID_VALID[train_ids]
    if not ok.all():
        bad = sorted(int(v) for v in np.unique(train_ids[~ok]))
        where = f" in {str(path)!r}" if path is not None else ""
        raise DataCorruptError(
            f"label values outside the {NUM_CLASSES} Cityscapes trainIds (0..{NUM_CLASSES - 1}, "
            f"{IGNORE_INDEX} = ignore){where}: {bad[:10]}"
        )
    return train_ids


def load_train_ids(path: str | Path) -> np.ndarray:
    """A ``*_labelTrainIds.png`` (checked) or ``*_labelIds.png`` (converted) as uint8 (H, W) trainIds."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            arr = np.asarray(img)
    except (OSError, ValueError) as e:
        raise DataCorruptError(f"cannot decode label image {str(path)!r}: {e}") from None
    if arr.ndim != 2 or arr.dtype != np.uint8:
        raise DataCorruptError(
            f"label image {str(path)!r} must be a single-channel 8-bit PNG, got shape {arr.shape} {arr.dtype}"
        )
    if str(path).endswith(_LABEL_IDS_SUFFIX):
        return label_ids_to_train_ids(arr, path)
    return check_train_ids(arr, path)


class CityscapesDataset:
    """(image, label) pairs of one split.

    ``transform(img, label)`` gets RGB and mode-"L" (trainIds) Pillow images and returns (x, y); the
    default returns them unchanged. The samples are ``(image path, label path)`` sorted by city and name.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        transform: Callable[[Any, Any], tuple[Any, Any]] | None = None,
    ) -> None:
        self.root, self.split, self.transform = Path(root), split, transform
        img_dir, gt_dir = self.root / "leftImg8bit" / split, self.root / "gtFine" / split
        for d in (img_dir, gt_dir):
            if not d.is_dir():
                raise DataNotFoundError(
                    f"Cityscapes folder {str(d)!r} not found; expected "
                    f"<root>/leftImg8bit/{{train,val}}/<city>/*{_IMAGE_SUFFIX} and "
                    f"<root>/gtFine/{{train,val}}/<city>/*{_TRAIN_IDS_SUFFIX} "
                    "(set data.root or --data-dir)"
                )
        cities = sorted(e.name for e in os.scandir(img_dir) if e.is_dir())
        self.samples: list[tuple[str, str]] = []
        for city in cities:
            for name in sorted(os.listdir(img_dir / city)):
                if not name.endswith(_IMAGE_SUFFIX):
                    continue
                stem = name[: -len(_IMAGE_SUFFIX)]
                label = gt_dir / city / f"{stem}{_TRAIN_IDS_SUFFIX}"
                if not label.is_file():
                    label = gt_dir / city / f"{stem}{_LABEL_IDS_SUFFIX}"
                if not label.is_file():
                    raise DataNotFoundError(
                        f"no label for {str(img_dir / city / name)!r}: expected "
                        f"{str(gt_dir / city / (stem + _TRAIN_IDS_SUFFIX))!r} (or *{_LABEL_IDS_SUFFIX})"
                    )
                self.samples.append((str(img_dir / city / name), str(label)))
        if not self.samples:
            raise DataError(f"Cityscapes folder {str(img_dir)!r} holds no <city>/*{_IMAGE_SUFFIX} images")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Tensor | Any, Tensor | Any]:
        from PIL import Image

        img_path, label_path = self.samples[i]
        img = open_rgb(img_path)
        label = Image.fromarray(load_train_ids(label_path))  # uint8 (H, W) -> mode "L"
        if img.size != label.size:
            raise DataCorruptError(
                f"image {img_path!r} is {img.size[0]}x{img.size[1]} but its label {label_path!r} is "
                f"{label.size[0]}x{label.size[1]}"
            )
        return self.transform(img, label) if self.transform is not None else (img, label)

    def image_size(self) -> tuple[int, int]:
        """(H, W) of the first image (Cityscapes: all 1024 x 2048), read from the header only."""
        from PIL import Image

        with Image.open(self.samples[0][0]) as img:
            return img.size[1], img.size[0]


def cityscapes_datasets(
    root: str | Path,
    crop: int | tuple[int, int] = 713,
    eval_size: tuple[int, int] | None = None,
    augment: bool = True,
    scale: tuple[float, float] = (0.5, 2.0),
) -> tuple[CityscapesDataset, CityscapesDataset]:
    """Train and val :class:`CityscapesDataset` with the joint transforms.

    Train: x float32 (3, crop_h, crop_w), y uint8 (crop_h, crop_w). The random scale ``U(scale)`` is
    relative to the evaluation resolution (``eval_size`` (H, W), None: the images' own), so objects have
    the same size in training and evaluation. Val: x (3, *eval_size), y uint8 at the label's full size.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataNotFoundError(f"Cityscapes root {str(root)!r} not found (set data.root or --data-dir)")
    crop_hw = (crop, crop) if isinstance(crop, int) else tuple(crop)
    train = CityscapesDataset(root, "train")
    val = CityscapesDataset(root, "val", SegmentationEvalTransform(eval_size))
    base = 1.0
    if eval_size is not None:
        base = eval_size[0] / train.image_size()[0]
    train.transform = SegmentationTrainTransform(crop_hw, scale, base, augment, IGNORE_INDEX)
    return train, val
