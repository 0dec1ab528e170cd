"""Image and image+label transforms on Pillow images, without torchvision.

Classification (ImageNet, torchvision's standard recipe):

* train: random-resized-crop (area scale (0.08, 1), aspect ratio (3/4, 4/3), torchvision's 10-try
  sampler with its centre-crop fallback) to ``size`` x ``size`` + horizontal flip;
* eval: resize the shorter side to ``size / 0.875`` (256 for 224), centre crop ``size``.

Segmentation (Cityscapes, the PSPNet recipe): random scale, pad (image with the mean colour, label with
the ignore index), random crop and flip applied jointly to image and label; evaluation resizes only the
image, so the metric is computed against the full-resolution labels.

Randomness comes from Python's ``random`` module (or an explicit ``random.Random``): DataLoader seeds it
per worker (base seed + worker id), and ``fit`` seeds the main process, so workers=0 runs are reproducible.
Outputs: images as normalised float32 (3, H, W) tensors, labels as uint8 (H, W) tensors.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:  # Pillow is an optional dependency (extra "imagenet"); imported where used
    from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Eval resize / crop ratio of the standard recipe (256 / 224).
CROP_FRACTION = 0.875

Rng = Any  # the ``random`` module or a ``random.Random``


def random_resized_crop_box(
    width: int,
    height: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    rng: Rng = random,
) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop sampler: (left, top, w, h) of a crop covering a uniform fraction
    in ``scale`` of the image area with a log-uniform aspect ratio w/h in ``ratio``; after 10 failed
    draws, the largest centred crop whose ratio is clamped to ``ratio``."""
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, width - w), rng.randint(0, height - h), w, h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def resize_shorter(img: Image.Image, size: int) -> Image.Image:
    """Resize so the shorter side is ``size`` (the longer one as torchvision: int(size * long / short))."""
    from PIL import Image

    w, h = img.size
    if min(w, h) == size:
        return img
    new = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    return img.resize(new, Image.Resampling.BILINEAR)


def center_crop(img: Image.Image, size: int) -> Image.Image:
    """Centred ``size`` x ``size`` crop (torchvision's rounding); the image must be at least that large."""
    w, h = img.size
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def to_normalized_tensor(img: Image.Image, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """RGB Pillow image (W x H) -> float32 (3, H, W), (x / 255 - mean) / std."""
    x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float()
    m = torch.tensor(mean, dtype=torch.float32).mul_(255)[:, None, None]
    s = torch.tensor(std, dtype=torch.float32).mul_(255)[:, None, None]
    return x.sub_(m).div_(s)


class ClassificationTransform:
    """RGB Pillow image -> normalised float32 (3, size, size): the standard ImageNet train or eval recipe.

    ``train`` with ``augment``: random-resized-crop + flip; otherwise resize + centre crop.
    A class, not a closure, so it pickles into spawned DataLoader workers.
    """

    def __init__(
        self,
        size: int,
        train: bool,
        augment: bool = True,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        self.size, self.train, self.augment = size, train, augment
        self.scale, self.ratio, self.mean, self.std = scale, ratio, tuple(mean), tuple(std)

    def __call__(self, img: Image.Image, rng: Rng = random) -> Tensor:
        from PIL import Image

        if self.train and self.augment:
            left, top, w, h = random_resized_crop_box(*img.size, self.scale, self.ratio, rng)
            # resize with a box crops and scales in one pass (bilinear with antialiasing, as torchvision).
            img = img.resize(
                (self.size, self.size), Image.Resampling.BILINEAR, box=(left, top, left + w, top + h)
            )
            if rng.random() < 0.5:
                img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        else:
            img = center_crop(resize_shorter(img, round(self.size / CROP_FRACTION)), self.size)
        return to_normalized_tensor(img, self.mean, self.std)


class SegmentationTrainTransform:
    """Joint (image, label) augmentation: scale by ``base_scale * U(scale)``, pad to the crop (image with
    the mean colour, label with ``ignore_index``), random ``crop`` (h, w) crop, horizontal flip.

    Returns x float32 (3, crop_h, crop_w) normalised and y uint8 (crop_h, crop_w).
    """

    def __init__(
        self,
        crop: tuple[int, int],
        scale: tuple[float, float] = (0.5, 2.0),
        base_scale: float = 1.0,
        augment: bool = True,
        ignore_index: int = 255,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        self.crop, self.scale, self.base_scale, self.augment = tuple(crop), scale, base_scale, augment
        self.ignore_index, self.mean, self.std = ignore_index, tuple(mean), tuple(std)

    def __call__(self, img: Image.Image, label: Image.Image, rng: Rng = random) -> tuple[Tensor, Tensor]:
        from PIL import Image

        s = self.base_scale * (rng.uniform(*self.scale) if self.augment else 1.0)
        if s != 1.0:
            w, h = img.size
            new = (max(1, round(w * s)), max(1, round(h * s)))
            img = img.resize(new, Image.Resampling.BILINEAR)
            label = label.resize(new, Image.Resampling.NEAREST)
        x = to_normalized_tensor(img, self.mean, self.std)
        y = torch.from_numpy(np.asarray(label, dtype=np.uint8).copy())
        ch, cw = self.crop
        ph, pw = max(ch - y.shape[0], 0), max(cw - y.shape[1], 0)
        if ph or pw:  # 0 in normalised units is the mean colour
            x = F.pad(x, (0, pw, 0, ph), value=0.0)
            y = F.pad(y, (0, pw, 0, ph), value=self.ignore_index)
        h, w = y.shape
        if self.augment:
            top, left = rng.randint(0, h - ch), rng.randint(0, w - cw)
        else:
            top, left = (h - ch) // 2, (w - cw) // 2
        x, y = x[:, top : top + ch, left : left + cw], y[top : top + ch, left : left + cw]
        if self.augment and rng.random() < 0.5:
            x, y = x.flip(-1), y.flip(-1)
        return x.contiguous(), y.contiguous()


class SegmentationEvalTransform:
    """Evaluation: the image resized to ``size`` (h, w) (None: kept), the label untouched, so predictions
    are upsampled to and scored at the label's full resolution. Returns x (3, h, w), y uint8 (H, W)."""

    def __init__(
        self,
        size: tuple[int, int] | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        self.size, self.mean, self.std = (tuple(size) if size else None), tuple(mean), tuple(std)

    def __call__(self, img: Image.Image, label: Image.Image, rng: Rng = random) -> tuple[Tensor, Tensor]:
        from PIL import Image

        if self.size is not None and (img.size[1], img.size[0]) != self.size:
            img = img.resize((self.size[1], self.size[0]), Image.Resampling.BILINEAR)
        x = to_normalized_tensor(img, self.mean, self.std)
        return x, torch.from_numpy(np.asarray(label, dtype=np.uint8).copy())
