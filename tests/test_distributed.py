"""DDP with 2 gloo processes on CPU: batch-shaping over the global batch, and the training loop."""

import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from batchshaping.gates import GateOutput
from batchshaping.losses import BatchShapingLoss
from batchshaping.runtime import shutdown_distributed
from batchshaping.step import batch_shaping_input


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _init(rank: int, world: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    os.environ["LOCAL_RANK"] = str(rank)
    dist.init_process_group("gloo", rank=rank, world_size=world)


def _synced_bs_worker(rank: int, world: int, port: int, logits: torch.Tensor, out: str) -> None:
    _init(rank, world, port)
    local = logits.chunk(world)[rank].clone().requires_grad_()
    probs = torch.sigmoid(local)
    loss = BatchShapingLoss()(batch_shaping_input([GateOutput("g", probs, probs)], sync=True))
    loss.backward()
    torch.save({"loss": loss.detach(), "grad": local.grad}, f"{out}/rank{rank}.pt")
    shutdown_distributed()


def test_synced_batch_shaping_equals_single_process_on_the_concatenated_batch(tmp_path):
    torch.manual_seed(0)
    logits = torch.randn(16, 6)
    mp.spawn(_synced_bs_worker, args=(2, _free_port(), logits, str(tmp_path)), nprocs=2, join=True)
    full = logits.clone().requires_grad_()
    ref = BatchShapingLoss()(torch.sigmoid(full))
    ref.backward()
    parts = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for r, p in enumerate(parts):
        torch.testing.assert_close(p["loss"], ref.detach())
        # DDP averages gradients over ranks; all_gather's backward sums them, so a rank's gradient for its
        # own rows is world_size x the single-process one, and the DDP average restores it exactly.
        torch.testing.assert_close(p["grad"] / 2, full.grad.chunk(2)[r])


def _fit_worker(rank: int, world: int, port: int, out: str) -> None:
    _init(rank, world, port)
    from batchshaping.data import Data
    from batchshaping.models import GateConfig
    from batchshaping.models.cifar_resnet import CifarResNet
    from batchshaping.train import fit
    from tests.conftest import tiny_config, tiny_data

    torch.manual_seed(0)
    cfg = tiny_config(epochs=1, sync_bn=True)
    cfg.loss.bs_sync = True
    with pytest.warns(UserWarning, match="sync_bn needs CUDA"):
        fit(CifarResNet(8, 4, GateConfig()), Data(tiny_data(64, 1), tiny_data(32, 2), 4), cfg, f"{out}/run")
    shutdown_distributed()


def test_torchrun_style_training_with_two_gloo_processes_writes_only_from_rank0(tmp_path):
    mp.spawn(_fit_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["world_size"] == 2
    lines = (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    assert len(lines) == 1, "only rank 0 may log"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for k in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
