"""Batched crop/flip/normalise against slow per-image references."""

from __future__ import annotations

import pytest
import torch

from batchshaping.data.augment import crop_flip, draw_crop_flip, normalize

CL = torch.channels_last


def _images(n: int = 24, dtype: torch.dtype = torch.uint8, h: int = 8, w: int = 7) -> torch.Tensor:
    # Values 1..255 (never 0), so any zero in an output must be padding.
    x = torch.randint(1, 256, (n, 3, h, w), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    return x.to(dtype)


def _reference(x: torch.Tensor, top: list[int], left: list[int], flip: list[bool], p: int) -> torch.Tensor:
    """Per-image loop: zero-pad, slice, optionally mirror."""
    n, c, h, w = x.shape
    out = []
    for i in range(n):
        padded = torch.zeros(c, h + 2 * p, w + 2 * p, dtype=x.dtype)
        padded[:, p : p + h, p : p + w] = x[i]
        crop = padded[:, top[i] : top[i] + h, left[i] : left[i] + w]
        out.append(crop.flip(-1) if flip[i] else crop)
    return torch.stack(out)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("in_cl, out_cl", [(False, None), (True, None), (False, True), (True, False)])
def test_crop_flip_matches_per_image_reference(dtype: torch.dtype, in_cl: bool, out_cl: bool | None) -> None:
    x = _images(dtype=dtype)
    if in_cl:
        x = x.contiguous(memory_format=CL)
    g = torch.Generator().manual_seed(0)
    top = torch.randint(0, 9, (len(x),), generator=g)
    left = torch.randint(0, 9, (len(x),), generator=g)
    top[:3], left[:3] = torch.tensor([0, 8, 4]), torch.tensor([8, 0, 4])  # extreme offsets included
    flip = torch.rand(len(x), generator=g) < 0.5
    out = crop_flip(x, top, left, flip, padding=4, channels_last=out_cl)
    ref = _reference(x, top.tolist(), left.tolist(), flip.tolist(), 4)
    assert out.shape == x.shape and out.dtype == dtype
    assert torch.equal(out, ref)
    want_cl = in_cl if out_cl is None else out_cl
    assert out.is_contiguous(memory_format=CL if want_cl else torch.contiguous_format)
    # Without a flip mask nothing is mirrored.
    assert torch.equal(
        crop_flip(x, top, left, None, 4), _reference(x, top.tolist(), left.tolist(), [False] * 24, 4)
    )


def test_centre_offset_is_identity_and_corner_shows_padding() -> None:
    x = _images()
    n = len(x)
    centre = crop_flip(x, torch.full((n,), 4), torch.full((n,), 4), None, 4)
    assert torch.equal(centre, x) and (centre != 0).all()  # no padding pixels leak in at (4, 4)
    corner = crop_flip(x, torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long), None, 4)
    assert (corner[:, :, :4, :] == 0).all() and (corner[:, :, :, :4] == 0).all()
    assert torch.equal(corner[:, :, 4:, 4:], x[:, :, :-4, :-4])


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    top, left, _ = draw_crop_flip(len(x), padding, generator)
    return crop_flip(x, top, left, None, padding)


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    _, _, flip = draw_crop_flip(len(x), 0, generator)
    zeros = torch.zeros(len(x), dtype=torch.int32)
    return crop_flip(x, zeros, zeros, flip, 0)


def test_random_crop_picks_a_valid_offset_per_image_and_is_seeded() -> None:
    x = _images(n=64)
    out = random_crop(x, padding=4, generator=torch.Generator().manual_seed(3))
    assert out.shape == x.shape and out.dtype == x.dtype
    # Every output image must be exactly one of the 81 candidate crops of its own input.
    found = []
    for i in range(len(x)):
        hits = [
            (a, b)
            for a in range(9)
            for b in range(9)
            if torch.equal(out[i], _reference(x[i : i + 1], [a], [b], [False], 4)[0])
        ]
        assert hits, f"image {i} is not a crop of its input"
        found.append(hits[0])
    assert len(set(found)) > 20  # offsets differ between images
    again = random_crop(x, padding=4, generator=torch.Generator().manual_seed(3))
    other = random_crop(x, padding=4, generator=torch.Generator().manual_seed(4))
    assert torch.equal(out, again) and not torch.equal(out, other)


def test_random_flip_flips_exactly_the_chosen_images() -> None:
    x = _images(n=200, dtype=torch.float32)
    out = random_flip(x, generator=torch.Generator().manual_seed(5))
    same = (out == x).flatten(1).all(1)
    mirrored = (out == x.flip(-1)).flatten(1).all(1)
    assert (same ^ mirrored).all()  # each image is either untouched or fully mirrored, never mixed
    assert 60 < int(mirrored.sum()) < 140  # p = 0.5
    assert torch.equal(out, random_flip(x, generator=torch.Generator().manual_seed(5)))
    # The explicit form flips exactly the masked images.
    mask = torch.arange(200) % 3 == 0
    zeros = torch.zeros(200, dtype=torch.long)
    flipped = crop_flip(x, zeros, zeros, mask, padding=0)
    assert torch.equal(flipped[mask], x[mask].flip(-1)) and torch.equal(flipped[~mask], x[~mask])


def test_random_crop_flip_is_a_crop_then_flip() -> None:
    x = _images(n=16)
    out = crop_flip(x, *draw_crop_flip(len(x), 4, torch.Generator().manual_seed(0)), padding=4)
    for i in range(len(x)):
        cands = [
            _reference(x[i : i + 1], [a], [b], [f], 4)[0]
            for a in range(9)
            for b in range(9)
            for f in (False, True)
        ]
        assert any(torch.equal(out[i], c) for c in cands)


@pytest.mark.parametrize("channels_last", [False, True])
def test_normalize_matches_formula(channels_last: bool) -> None:
    x = _images()
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    out = normalize(x, mean, std, torch.float32, channels_last=channels_last)
    ref = (x.double() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert out.is_contiguous(memory_format=CL if channels_last else torch.contiguous_format)
    # Plain max-abs checks: torch.testing's first call imports torch.distributed (seconds).
    assert (out.double() - ref).abs().max() < 1e-5
    # Floating input is taken to be in [0, 1] already.
    assert (normalize(x.float() / 255, mean, std).double() - ref).abs().max() < 1e-5
