"""ImageNet and Cityscapes through the one run path (``batchshaping train`` / ``eval``), and DDP sharding."""

import json
import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import batchshaping as bs
from batchshaping.cli import main
from batchshaping.macs import MacCounter
from tests.data.test_cityscapes import write_cityscapes
from tests.data.test_imagenet import CLASSES, write_imagenet

pytestmark = pytest.mark.usefixtures("one_thread")


COMMON = [
    "epochs=1",
    "data.workers=0",
    "device=cpu",
    "precision=fp32",
    "progress=false",
    "channels_last=false",
]


def test_cli_trains_gated_resnet50_on_a_tiny_imagenet_from_dense_weights(tmp_path, capsys):
    root = write_imagenet(tmp_path / "imagenet")
    dense = bs.create_model("resnet50", num_classes=3)
    torch.save(dense.state_dict(), tmp_path / "resnet50.pth")
    out = tmp_path / "run"
    sets = [f"data.root={root}", "data.image_size=32", "data.batch_size=4", "data.eval_batch_size=6", *COMMON]
    sets.append(f"pretrained={tmp_path / 'resnet50.pth'}")
    argv = ["train", "--config", "configs/imagenet_gated_resnet50.yaml", "--out", str(out)]
    assert main(argv + [a for s in sets for a in ("--set", s)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == "gated_resnet50" and summary["epochs"] == 1
    assert 0 <= summary["top1"] <= summary["top5"] <= 1 and summary["best_top1"] == summary["top1"]
    assert summary["macs_dense"] == MacCounter(dense, (3, 32, 32)).dense  # at the 32 x 32 eval crop
    printed = capsys.readouterr().out
    # 16 gates x 7 tensors (fc1, bn weight/bias/running stats, fc2); BN fills in its own step counter.
    assert "every weight loaded, 112 gate tensors initialised" in printed and "top-5" in printed
    # `batchshaping eval` re-evaluates the checkpoint on the validation set of its config. The checkpoint
    # holds the class list, so evaluation reads only val/ (a machine with just the validation set).
    assert torch.load(out / "last.pt", weights_only=False)["class_names"] == CLASSES
    (root / "train").rename(tmp_path / "train_elsewhere")
    assert main(["eval", str(out / "last.pt")]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["top1"] == summary["top1"] and metrics["macs_dense"] == summary["macs_dense"]


def test_cli_trains_gated_pspnet50_on_a_tiny_cityscapes(tmp_path, capsys):
    root = write_cityscapes(tmp_path / "cityscapes", label_ids_city="lindau")
    out = tmp_path / "run"
    sets = [f"data.root={root}", "data.image_size=32", "data.eval_size=[32,64]", "data.batch_size=2"]
    sets += ["data.eval_batch_size=2", "sync_bn=false", *COMMON]
    argv = ["train", "--config", "configs/cityscapes_gated_pspnet50.yaml", "--out", str(out)]
    assert main(argv + [a for s in sets for a in ("--set", s)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == "gated_pspnet50" and 0 <= summary["miou"] <= 1
    assert summary["best_miou"] == summary["miou"] and 0 <= summary["pixel_acc"] <= 1
    assert list(summary["class_iou"])[:2] == ["road", "sidewalk"] and "top1" not in summary
    # MACs per image at the evaluation resolution (32 x 64), the gates' own included.
    assert summary["macs_dense"] == MacCounter(bs.create_model("pspnet50"), (3, 32, 64)).dense
    assert 0 < summary["mac_ratio"] <= 1.01
    log = [json.loads(s) for s in (out / "log.jsonl").read_text().splitlines()]
    assert 0 <= log[0]["train_acc"] <= 1 and math.isfinite(log[0]["train_loss"])
    assert "mIoU" in capsys.readouterr().out
    assert main(["eval", str(out / "last.pt")]) == 0  # the checkpoint's config names the data
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["miou"] == summary["miou"] and metrics["macs_mean"] == summary["macs_mean"]


def test_cli_bad_layouts_and_mismatches_exit_with_a_clear_error(tmp_path, capsys):
    root = write_imagenet(tmp_path / "imagenet", per_class=1)
    (root / "train" / "n02" / "n02_0.JPEG").unlink()
    argv = ["train", "--config", "configs/imagenet_gated_resnet18.yaml", "--out", str(tmp_path / "r")]
    assert main(argv + ["--set", f"data.root={root}"]) == 2
    assert "train/n02" in capsys.readouterr().err
    assert main(argv + ["--set", f"data.root={root}", "--set", "model=gated_pspnet50"]) == 2
    assert "does not fit data.dataset 'imagenet'" in capsys.readouterr().err
    cs = tmp_path / "cs"
    (cs / "leftImg8bit" / "train").mkdir(parents=True)
    argv = ["train", "--config", "configs/cityscapes_gated_pspnet50.yaml", "--out", str(tmp_path / "s")]
    assert main(argv + ["--set", f"data.root={cs}"]) == 2
    assert "gtFine/train" in capsys.readouterr().err


def _ddp_worker(rank: int, world: int, port: int, root: str, out: str) -> None:
    import batchshaping.data as data
    from batchshaping.config import load_config
    from batchshaping.experiment import train

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    os.environ["LOCAL_RANK"] = str(rank)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    real = data.build_loaders

    def recording(*args, **kwargs):
        train, val = real(*args, **kwargs)
        train.sampler.set_epoch(0)
        torch.save(list(train.sampler), f"{out}/shard{rank}.pt")
        return train, val

    data.build_loaders = recording
    sets = [f"data.root={root}", "data.image_size=32", "data.batch_size=4", "model=gated_resnet18", *COMMON]
    cfg = load_config("configs/imagenet_gated_resnet18.yaml", sets)
    train(cfg, f"{out}/run")
    dist.destroy_process_group()


def test_torchrun_style_imagenet_training_shards_the_data_per_rank(tmp_path, monkeypatch):
    for k in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    root = write_imagenet(tmp_path / "imagenet")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # fork: the children inherit the imported modules (spawn re-imports torch and friends, ~10 s here).
    mp.start_processes(_ddp_worker, (2, port, str(root), str(tmp_path)), nprocs=2, start_method="fork")
    shards = [torch.load(tmp_path / f"shard{r}.pt") for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 6 and not set(shards[0]) & set(shards[1])
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["world_size"] == 2 and "top5" in summary
    assert len((tmp_path / "run" / "log.jsonl").read_text().splitlines()) == 1
