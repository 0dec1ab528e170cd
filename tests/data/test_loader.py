"""TensorLoader order, sharding, augmentation and batch format; the DataLoader wrapper."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from batchshaping.data.augment import normalize
from batchshaping.data.imagenet import imagenet_datasets
from batchshaping.data.loader import DeviceLoader, TensorLoader, as_loader, build_loaders
from tests.data.test_imagenet import write_imagenet

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def _data(n: int = 100, hw: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randint(0, 256, (n, 3, hw, hw), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    return x, torch.arange(n)  # label = sample index, so every batch says which samples it holds


def _loader(x: torch.Tensor, y: torch.Tensor, **kw: object) -> TensorLoader:
    kw = {"batch_size": 8, "train": True, "device": "cpu", "mean": MEAN, "std": STD, **kw}
    return TensorLoader(x, y, **kw)  # type: ignore[arg-type]


def _labels(loader: TensorLoader) -> list[int]:
    return torch.cat([yb for _, yb in loader]).tolist()


@pytest.mark.parametrize("n", [100, 101])
def test_two_rank_shards_are_disjoint_equal_and_cover(n: int) -> None:
    x, y = _data(n)
    shards = [_labels(_loader(x, y, drop_last=False, rank=r, world_size=2, seed=7)) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == (n + 1) // 2  # equal lengths (padded when n is odd)
    assert set(shards[0]) | set(shards[1]) == set(range(n))
    if n % 2 == 0:
        assert not set(shards[0]) & set(shards[1])
    else:  # exactly one sample is repeated to pad, as DistributedSampler does
        assert len(set(shards[0]) & set(shards[1])) + sum(len(s) - len(set(s)) for s in shards) == 1


def test_set_epoch_changes_order_deterministically() -> None:
    x, y = _data()
    a = _loader(x, y, seed=1)
    e0, e0_again = _labels(a), _labels(a)
    a.set_epoch(1)
    e1 = _labels(a)
    b = _loader(x, y, seed=1)
    b.set_epoch(1)
    assert e0 == e0_again and e1 == _labels(b) and e0 != e1
    assert e0 != _labels(_loader(x, y, seed=2))
    assert len(e0) == 96 and len(set(e0)) == 96  # drop_last (train default): 12 full batches of 8
    assert len(a) == 12


def test_eval_loader_yields_all_samples_in_order_unaugmented() -> None:
    x, y = _data(101)
    ev = _loader(x, y, train=False)
    assert not ev.shuffle and not ev.augment and not ev.drop_last and len(ev) == 13
    xs, ys = zip(*ev, strict=True)
    assert torch.equal(torch.cat(ys), y)
    assert torch.equal(torch.cat(xs), normalize(x, MEAN, STD))
    # Two eval ranks: every sample exactly once in total, no padding.
    parts = [_labels(_loader(x, y, train=False, rank=r, world_size=2)) for r in (0, 1)]
    assert sorted(parts[0] + parts[1]) == list(range(101))


@pytest.mark.parametrize("channels_last", [False, True])
def test_batch_format(channels_last: bool) -> None:
    x, y = _data(20)
    tr = _loader(x, y, batch_size=6, channels_last=channels_last, dtype=torch.float64)
    batches = list(tr)
    assert len(batches) == len(tr) == 3
    for xb, yb in batches:
        assert xb.shape == (6, 3, 8, 8) and xb.dtype == torch.float64 and yb.dtype == torch.int64
        assert xb.is_contiguous(
            memory_format=torch.channels_last if channels_last else torch.contiguous_format
        )
    # The layout changes nothing but the strides: same seed gives the same values.
    plain = list(_loader(x, y, batch_size=6, dtype=torch.float64))
    for (a, ya), (b, yb) in zip(plain, batches, strict=True):
        assert torch.equal(a, b) and torch.equal(ya, yb)


def test_train_batches_are_crops_and_flips_of_their_own_samples() -> None:
    x, y = _data(24)
    xb, yb = next(iter(_loader(x, y, batch_size=24)))
    # Padding is black (uint8 zero) before normalising, as in torchvision's CIFAR recipe.
    xp = normalize(torch.nn.functional.pad(x, (4, 4, 4, 4), value=0), MEAN, STD)
    n_changed = 0
    for img, i in zip(xb, yb.tolist(), strict=True):
        cands = [xp[i, :, a : a + 8, b : b + 8] for a in range(9) for b in range(9)]
        cands += [c.flip(-1) for c in cands]
        assert any(torch.allclose(img, c) for c in cands), f"sample {i} is not a crop/flip of itself"
        n_changed += not torch.allclose(img, cands[40])  # 40 = centre crop, unflipped
    assert n_changed > 12


def test_as_loader_accepts_tensors_and_dataloaders() -> None:
    x, y = _data(40)
    assert isinstance(as_loader((x, y), 8, True, "cpu", MEAN, STD, seed=3), TensorLoader)
    ds = TensorDataset(normalize(x, MEAN, STD), y)
    sampler = DistributedSampler(ds, num_replicas=2, rank=1, shuffle=True, seed=0)
    wrapped = as_loader(
        DataLoader(ds, batch_size=8, sampler=sampler), 8, True, "cpu", MEAN, STD, channels_last=True
    )
    assert isinstance(wrapped, DeviceLoader) and len(wrapped) == 3
    first = torch.cat([yb for _, yb in wrapped])
    wrapped.set_epoch(1)  # forwarded to the DistributedSampler
    assert sampler.epoch == 1 and torch.cat([yb for _, yb in wrapped]).tolist() != first.tolist()
    xb, _ = next(iter(wrapped))
    assert xb.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(TypeError):
        as_loader(DataLoader(ds), 8, True, "cpu", MEAN, STD, seed=1)


def test_build_loaders_give_each_rank_its_own_shard(tmp_path):
    train, val = imagenet_datasets(write_imagenet(tmp_path), image_size=16)
    seen = []
    for rank in (0, 1):
        tl, vl = build_loaders(train, val, 4, 5, 0, 0, rank, 2)
        tl.sampler.set_epoch(3)
        assert tl.batch_size == 2 and len(tl) == 3 and len(vl) == 3  # val is whole, for rank 0's evaluation
        seen.append(list(tl.sampler))
    assert not set(seen[0]) & set(seen[1]) and len(seen[0] + seen[1]) == 12
    x, y = next(iter(build_loaders(train, val, 4, 5, workers=1)[1]))  # decoding in a worker process
    assert x.shape == (5, 3, 16, 16) and y.tolist() == [0, 0, 0, 0, 1]
