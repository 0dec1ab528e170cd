"""Tiny run folders shared by the analysis tests, trained once per session.

gated_resnet20 / resnet20, one step on 16 random 16x16 images with 10 classes: registered models (so
load_model can rebuild them) at a fraction of the CIFAR cost. Training runs with the sparsity losses
off: the analysis only needs a real run folder, and the gates are planted afterwards (see gated_run).
"""

from pathlib import Path

import pytest
import torch

from batchshaping.checkpoint import atomic_save, load_checkpoint
from batchshaping.data import Data
from batchshaping.models import model_from_config
from batchshaping.train import fit
from tests.conftest import tiny_config, tiny_data

NUM_CLASSES = 10
CLASSES = [f"c{i}" for i in range(NUM_CLASSES)]


def data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    return tiny_data(n, seed, classes=NUM_CLASSES)


def _train(out: Path, model: str) -> Path:
    cfg = tiny_config(epochs=1, model=model, deterministic=False)  # deterministic mode imports dynamo: 3 s
    cfg.loss.bs_weight = cfg.loss.l0_weight = 0.0
    torch.manual_seed(0)
    fit(model_from_config(cfg, NUM_CLASSES), Data(data(16, 1), data(16, 2), NUM_CLASSES), cfg, out)
    return out


@pytest.fixture(scope="session")
def gated_run(tmp_path_factory) -> Path:
    """A gated_resnet20 run folder whose last.pt has planted gates: every gate of layer1.0 is closed
    (bias -20) and layer1.1's gates are made input-dependent (large weights, bias 0), so the analysis
    sees always-off, conditional and always-on gates and per-image MACs that vary."""
    out = _train(tmp_path_factory.mktemp("gated_run"), "gated_resnet20")
    ckpt = load_checkpoint(out / "last.pt")
    sd = ckpt["model"]
    sd["layer1.0.gate.fc2.bias"].fill_(-20.0)
    g = torch.Generator().manual_seed(0)
    w = sd["layer1.1.gate.fc2.weight"]
    w.copy_(torch.randn(w.shape, generator=g) * 3.0)
    sd["layer1.1.gate.fc2.bias"].zero_()
    atomic_save(ckpt, out / "last.pt")
    return out


@pytest.fixture(scope="session")
def dense_run(tmp_path_factory) -> Path:
    return _train(tmp_path_factory.mktemp("dense_run"), "resnet20")
