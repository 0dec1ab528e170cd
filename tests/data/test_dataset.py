"""Data: tensor splits are checked once, when the data set is built, with a message that names the fix."""

import numpy as np
import pytest
import torch

from batchshaping.data import Data

X = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
Y = torch.arange(8) % 4


def test_uint8_or_unit_float_images_and_integer_labels_are_taken_as_tensors_or_arrays():
    Data((X, Y), (X.float() / 255, Y.float()), 4)
    Data((X.numpy(), Y.numpy()), None, 4)
    Data(None, [X, Y], 4)


@pytest.mark.parametrize(
    "x, y, message",
    [
        (X[0], Y, r"images x must be \(N, C, H, W\), got shape \(3, 16, 16\)"),
        (
            X.permute(0, 2, 3, 1),
            Y,
            r"images x of shape \(8, 16, 16, 3\) look channels-last \(N, H, W, C\); give x.permute",
        ),
        (X, Y[:5], r"labels y must be \(N,\), one per image, got \(5,\) for 8 images"),
        (X.float(), Y, r"float images must lie in \[0, 1\], got values in \[\d+, 255\]; give uint8"),
        (X.float() * float("nan"), Y, r"float images must lie in \[0, 1\], got values in \[nan, nan\]"),
        (X.long(), Y, r"images must be uint8 \(0-255\) or float in \[0, 1\], got torch.int64"),
        (X, Y + 0.5, r"labels y must be integer class indices, got torch.float32"),
        (X, Y + 1, r"labels must be class indices in \[0, 4\), got \[1, 4\]; num_classes counts"),
        (X, Y - 1, r"labels must be class indices in \[0, 4\), got \[-1, 2\]"),
    ],
    ids=[
        "3d",
        "channels_last",
        "labels_len",
        "float_255",
        "nan",
        "int64",
        "fraction",
        "label_k",
        "label_neg",
    ],
)
def test_bad_tensor_splits_are_refused_by_name(x, y, message):
    with pytest.raises(ValueError, match="Data.test: " + message):
        Data((X, Y), (x, y), 4)


@pytest.mark.parametrize("k", [0, 2.0, True])
def test_a_class_count_below_one_or_not_an_int_is_refused(k):
    with pytest.raises(ValueError, match="num_classes must be an int >= 1"):
        Data(None, None, k)


def test_a_split_that_is_not_a_pair_is_refused():
    with pytest.raises(ValueError, match=r"Data.train: give a pair \(x, y\) .* got 3 items"):
        Data((X, Y, Y), None, 4)


def test_loaders_pass_unchecked():
    Data(iter([(np.zeros(1), np.zeros(1))]), None, 4)  # ready batches (a DataLoader): theirs to check
