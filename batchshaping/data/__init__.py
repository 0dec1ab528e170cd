"""Data sets (CIFAR-10 here; ImageNet and Cityscapes in their modules), batched on-device augmentation,
loaders and the data errors of every data set."""

from .augment import (
    crop_flip,
    draw_crop_flip,
    normalize,
    normalize_params,
)
from .cifar import (
    CIFAR10_CLASSES,
    CIFAR10_MEAN,
    CIFAR10_STD,
    CifarSplits,
    check_md5,
    download_cifar10,
    load_cifar10,
    md5sum,
    resolve_data_dir,
)
from .dataset import Data
from .errors import DataCorruptError, DataError, DataNotFoundError
from .loader import DeviceLoader, TensorLoader, as_loader, build_loaders

__all__ = [
    "Data",
    "CIFAR10_CLASSES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CifarSplits",
    "DataCorruptError",
    "DataError",
    "DataNotFoundError",
    "DeviceLoader",
    "TensorLoader",
    "as_loader",
    "build_loaders",
    "check_md5",
    "crop_flip",
    "download_cifar10",
    "draw_crop_flip",
    "load_cifar10",
    "md5sum",
    "normalize",
    "normalize_params",
    "resolve_data_dir",
]
