"""ImageNet as an image folder: ``<root>/train/<class>/*.JPEG`` and ``<root>/val/<class>/*.JPEG``.

Classes are the sorted folder names of ``train/`` (for ILSVRC-2012 the WordNet ids n01440764 ...), so the
class indices match torchvision's ImageFolder and its pretrained models. ``val/`` must be sorted into the
same class folders (the usual ``valprep.sh`` layout). Images are decoded with Pillow and converted to RGB
(ImageNet holds a few CMYK and greyscale JPEGs).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import Tensor

from .errors import DataCorruptError, DataError, DataNotFoundError
from .image_transforms import ClassificationTransform

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def open_rgb(path: str | Path) -> Any:
    """Decode an image file to an RGB Pillow image; DataCorruptError naming the file if it cannot be read."""
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("ImageNet / Cityscapes loading needs Pillow: pip install pillow") from e
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataCorruptError(f"cannot decode image {str(path)!r}: {e}") from None


def find_classes(split_dir: str | Path) -> list[str]:
    """Sorted class folder names of ``split_dir``; DataNotFoundError if it is missing or has none."""
    d = Path(split_dir)
    if not d.is_dir():
        raise DataNotFoundError(
            f"ImageNet split folder {str(d)!r} not found; expected <root>/train/<class>/*.JPEG and "
            "<root>/val/<class>/*.JPEG (set data.root or --data-dir)"
        )
    classes = sorted(e.name for e in os.scandir(d) if e.is_dir())
    if not classes:
        raise DataNotFoundError(f"ImageNet split folder {str(d)!r} has no class folders")
    return classes


class ImageFolder:
    """(image, class index) samples of ``<split_dir>/<class>/<image>``.

    classes: the class names in index order (default: the sorted folders of ``split_dir``); every folder
    of ``split_dir`` must be one of them and hold at least one image. ``transform`` maps an RGB Pillow
    image to the returned x (default: the image itself). ``__getitem__`` -> (x, int label).
    """

    def __init__(
        self,
        split_dir: str | Path,
        classes: list[str] | None = None,
        transform: Callable[[Any], Any] | None = None,
    ) -> None:
        self.root = Path(split_dir)
        found = find_classes(self.root)
        self.classes = list(classes) if classes is not None else found
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        unknown = [c for c in found if c not in self.class_to_idx]
        if unknown:
            raise DataError(
                f"{str(self.root)!r} has class folders not in the training classes: {unknown[:5]} "
                f"({len(unknown)} in all); val/ must use train/'s class folders"
            )
        self.transform = transform
        self.samples: list[tuple[str, int]] = []
        for c in found:
            folder = self.root / c
            files = sorted(
                e.path
                for e in os.scandir(folder)
                if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS)
            )
            if not files:
                raise DataError(
                    f"class folder {str(folder)!r} holds no images ({', '.join(IMAGE_EXTENSIONS)}); "
                    "remove it or add its images"
                )
            idx = self.class_to_idx[c]
            self.samples += [(f, idx) for f in files]
        self.targets = [t for _, t in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Tensor | Any, int]:
        path, target = self.samples[i]
        img = open_rgb(path)
        return (self.transform(img) if self.transform is not None else img), target


def _check_root(root: str | Path) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise DataNotFoundError(f"ImageNet root {str(root)!r} not found (set data.root or --data-dir)")
    return root


def imagenet_datasets(
    root: str | Path, image_size: int = 224, augment: bool = True
) -> tuple[ImageFolder, ImageFolder]:
    """Train and val :class:`ImageFolder` of ``root`` with the standard transforms at ``image_size``.

    Train samples: x float32 (3, image_size, image_size) normalised with the ImageNet mean/std, y int.
    Val: resize to image_size / 0.875 and centre crop. Val classes are train's (same indices).
    """
    root = _check_root(root)
    train = ImageFolder(root / "train", transform=ClassificationTransform(image_size, True, augment))
    return train, imagenet_val_dataset(root, train.classes, image_size)


def imagenet_val_dataset(root: str | Path, classes: list[str], image_size: int = 224) -> ImageFolder:
    """The val :class:`ImageFolder` of ``root`` for known training ``classes`` (e.g. from a checkpoint),
    without reading ``train/``: evaluation needs only ``<root>/val``."""
    return ImageFolder(_check_root(root) / "val", classes, ClassificationTransform(image_size, False))
