import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from batchshaping.config import TrainConfig

SHARED_CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"


@pytest.fixture
def cifar_dir() -> Path:
    if not (SHARED_CIFAR / "cifar10_test.npz").exists():
        pytest.skip(f"real CIFAR-10 not found at {SHARED_CIFAR}")
    return SHARED_CIFAR


@pytest.fixture
def one_thread():
    """Tiny tensors: one intra-op thread; several contend badly on a shared 2-core machine (10x slower)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_data(n: int, seed: int, size: int = 16, classes: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Random uint8 images whose class shifts the mean colour, so a tiny net can learn something."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    x = torch.randint(0, 160, (n, 3, size, size), generator=g) + (y * 30)[:, None, None, None]
    return x.clamp(0, 255).to(torch.uint8), y


def tiny_config(**overrides) -> TrainConfig:
    cfg = TrainConfig(name="tiny", model="gated_resnet20", epochs=2, progress=False, deterministic=True)
    cfg.data.batch_size, cfg.data.eval_batch_size = 16, 32
    cfg.optim.lr = 0.05
    cfg.loss.l0_weight, cfg.loss.l0_start, cfg.loss.l0_end = 0.01, 0.25, 0.75
    cfg.precision, cfg.channels_last = "fp32", False
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


@contextlib.contextmanager
def killed_in_epoch(n: int) -> Iterator[None]:
    """Ctrl-C (KeyboardInterrupt) at the start of epoch ``n`` (1-based) of a training inside the block, after
    epoch n - 1's checkpoint; the real epoch loop is back afterwards."""
    import batchshaping.train as train_mod

    real, calls = train_mod.train_epoch, []

    def killed(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    train_mod.train_epoch = killed
    try:
        yield
    finally:
        train_mod.train_epoch = real
