"""Batches straight from tensors that live on the training device.

CIFAR-10 is 150 MB as uint8, so the whole split is copied to the device once; every batch is then an
index, a crop/flip gather and a normalisation on the device, with no worker processes, no host-side
collation and no host synchronisation. The per-epoch order follows ``DistributedSampler``: one
permutation from ``seed + epoch`` shared by all ranks, padded (or trimmed with ``drop_last``) to a
multiple of ``world_size``, and rank r takes every world_size-th index starting at r.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .augment import _normalize, _storage_order_affine, crop_flip, draw_crop_flip, normalize_params

Batch = tuple[Tensor, Tensor]


def _epoch_generator(*key: int) -> torch.Generator:
    # SeedSequence mixes the key, so (seed, epoch) pairs never collide the way seed + epoch can.
    g = torch.Generator()
    entropy = [k % 2**64 for k in key]  # SeedSequence wants non-negative ints
    g.manual_seed(int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> 1))
    return g


class TensorLoader:
    """Iterate over normalised (x, y) batches of an in-memory image tensor, augmenting on the device.

    x: (N, C, H, W) uint8 images (floating x is taken to be in [0, 1]); y: (N,) integer labels.
    Yields x (B, C, H, W) ``dtype`` (channels_last if asked) normalised with ``mean``/``std`` and
    y (B,) int64, both on ``device``. ``train`` sets the defaults: shuffle, drop_last and augment
    (random crop with 4 zero pixels of padding + horizontal flip) are on for training and off for
    evaluation. Call :meth:`set_epoch` before each epoch (as with ``DistributedSampler``): the order and
    the augmentation are a deterministic function of (seed, epoch, rank).

    Sharding: with ``world_size`` > 1 and shuffling (training), every rank gets the same number of
    samples (the permutation is padded by wrapping around, or trimmed if ``drop_last``). Without
    shuffling (evaluation) rank r takes indices r, r + world_size, ... with no padding, so every sample
    is seen exactly once overall and the ranks' counts differ by at most one.
    """

    def __init__(
        self,
        x: Tensor | np.ndarray,
        y: Tensor | np.ndarray,
        batch_size: int,
        train: bool,
        device: torch.device | str,
        mean: Sequence[float],
        std: Sequence[float],
        shuffle: bool | None = None,
        drop_last: bool | None = None,
        augment: bool | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        channels_last: bool = False,
        dtype: torch.dtype = torch.float32,
        padding: int = 4,
    ) -> None:
        x = torch.as_tensor(x)
        y = torch.as_tensor(y)
        if x.dim() != 4 or y.dim() != 1 or len(x) != len(y):
            raise ValueError(f"expected x (N, C, H, W) and y (N,), got {tuple(x.shape)} and {tuple(y.shape)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.train = train
        self.shuffle = train if shuffle is None else shuffle
        self.drop_last = train if drop_last is None else drop_last
        self.augment = train if augment is None else augment
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.channels_last = channels_last
        self.dtype = dtype
        self.padding = padding
        self.epoch = 0
        self.num_samples = len(x)
        self.x = self._to_device(x, channels_last)
        self.y = self._to_device(y.long(), False)
        self.mean, self.std = tuple(mean), tuple(std)
        scale, shift = normalize_params(mean, std, x.dtype, dtype, self.device)
        # Built once here rather than per batch: every tensor op is a kernel launch on a GPU.
        self._affine = _storage_order_affine(scale, shift, x.shape[1:], channels_last)
        self._indices = self._shard_indices()  # cached for the unshuffled case: the same every epoch

    def _to_device(self, t: Tensor, channels_last: bool) -> Tensor:
        if channels_last:
            # Stored as (N, H, W, C) so indexing rows keeps every batch channels_last.
            t = t.permute(0, 2, 3, 1)
        t = t.contiguous()
        try:
            return t.to(self.device)
        except torch.OutOfMemoryError:
            # Too big for the device: keep it on the host; __iter__ then copies each batch over.
            return t

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order/augmentation the next iteration uses."""
        self.epoch = int(epoch)

    def _shard_indices(self) -> Tensor:
        """This rank's sample indices for the current epoch, (n_rank,) int64 on the CPU."""
        n, ws = self.num_samples, self.world_size
        if not self.shuffle:
            return torch.arange(self.rank, n, ws)
        order = torch.randperm(n, generator=_epoch_generator(self.seed, self.epoch))
        if ws > 1:
            if self.drop_last:
                order = order[: n - n % ws]
            elif n % ws:
                pad = ws - n % ws
                order = torch.cat([order, order.repeat(pad // n + 1)[:pad]])
        return order[self.rank :: ws]

    def __len__(self) -> int:
        n = len(self._indices) if not self.shuffle else self._shard_len()
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _shard_len(self) -> int:
        n, ws = self.num_samples, self.world_size
        total = n - n % ws if self.drop_last else -(-n // ws) * ws
        return total // ws

    def __iter__(self) -> Iterator[Batch]:
        idx = self._indices if not self.shuffle else self._shard_indices()
        nb = len(self)
        n_used = min(len(idx), nb * self.batch_size)
        idx = idx[:n_used]
        # One host->device copy per epoch for the indices and the augmentation parameters.
        data_dev = self.x.device
        idx = idx.to(data_dev, non_blocking=True)
        if self.augment:
            g = _epoch_generator(self.seed, self.epoch, self.rank, 1)
            top, left, flip = draw_crop_flip(n_used, self.padding, g, self.device)
        for b in range(nb):
            sl = slice(b * self.batch_size, min((b + 1) * self.batch_size, n_used))
            xb = self.x.index_select(0, idx[sl])
            yb = self.y.index_select(0, idx[sl])
            if xb.device != self.device:
                xb = xb.to(self.device, non_blocking=True)
                yb = yb.to(self.device, non_blocking=True)
            if self.channels_last:
                xb = xb.permute(0, 3, 1, 2)  # (B, H, W, C) storage -> channels_last (B, C, H, W) view
            if self.augment:
                xb = crop_flip(xb, top[sl], left[sl], flip[sl], self.padding, self.channels_last)
            yield _normalize(xb, *self._affine, self.dtype, self.channels_last), yb


class DeviceLoader:
    """Wrap any iterable of (x, y, ...) batches (e.g. a ``torch.utils.data.DataLoader``): move x and y
    to ``device`` (x as ``dtype``, channels_last if asked) and forward ``set_epoch`` to its sampler."""

    def __init__(
        self,
        loader: Iterable[Any],
        device: torch.device | str,
        channels_last: bool = False,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.loader = loader
        self.device = torch.device(device)
        self.channels_last = channels_last
        self.dtype = dtype

    def set_epoch(self, epoch: int) -> None:
        for obj in (
            self.loader,
            getattr(self.loader, "sampler", None),
            getattr(self.loader, "batch_sampler", None),
        ):
            if obj is not None and obj is not self and hasattr(obj, "set_epoch"):
                obj.set_epoch(epoch)
                return

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[Batch]:
        fmt = torch.channels_last if self.channels_last else torch.preserve_format
        for batch in self.loader:
            x, y = batch[0], batch[1]
            x = x.to(self.device, dtype=self.dtype, non_blocking=True, memory_format=fmt)
            yield x, y.to(self.device, non_blocking=True)


def as_loader(
    data: tuple[Tensor, Tensor] | Iterable[Any],
    batch_size: int,
    train: bool,
    device: torch.device | str,
    mean: Sequence[float],
    std: Sequence[float],
    **kwargs: Any,
) -> TensorLoader | DeviceLoader:
    """A loader from either ``(x, y)`` tensors/arrays (-> :class:`TensorLoader`, kwargs as there) or any
    iterable of batches such as a ``DataLoader`` (-> :class:`DeviceLoader`; it must already augment and
    normalise, so only ``channels_last``/``dtype`` of kwargs apply and batch_size/mean/std are unused)."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(hasattr(t, "shape") for t in data):
        return TensorLoader(data[0], data[1], batch_size, train, device, mean, std, **kwargs)
    extra = set(kwargs) - {"channels_last", "dtype"}
    if extra:
        raise TypeError(f"{sorted(extra)} only apply to (x, y) tensors, not to a DataLoader")
    return DeviceLoader(data, device, **kwargs)


def build_loaders(
    train_set: torch.utils.data.Dataset,
    val_set: torch.utils.data.Dataset,
    batch_size: int,
    eval_batch_size: int,
    workers: int,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool = False,
) -> tuple[torch.utils.data.DataLoader, torch.utils.data.DataLoader]:
    """DataLoaders with ``workers`` decoding processes, for data sets read from disk (ImageNet, Cityscapes).

    Training: a DistributedSampler (shuffled from ``seed``, reshuffled by ``set_epoch``, every rank its own
    shard; also with one process) and ``batch_size // world_size`` images per rank, last partial batch
    dropped. Evaluation: the whole val set in order (``fit`` evaluates on rank 0 only).
    """
    from torch.utils.data import DataLoader, DistributedSampler

    from .errors import DataError

    per_rank = batch_size // world_size
    if per_rank < 1:
        raise DataError(f"data.batch_size {batch_size} is smaller than the {world_size} processes")
    sampler = DistributedSampler(
        train_set, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True
    )
    kw: dict[str, Any] = dict(num_workers=workers, pin_memory=pin_memory, persistent_workers=workers > 0)
    train = DataLoader(train_set, per_rank, sampler=sampler, drop_last=True, **kw)
    if len(train) == 0:
        raise DataError(
            f"{len(train_set)} training images give no full batch of {per_rank} per process; "
            "lower data.batch_size"
        )
    val = DataLoader(val_set, eval_batch_size, shuffle=False, drop_last=False, **kw)
    return train, val
