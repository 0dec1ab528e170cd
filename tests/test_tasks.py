"""ImageNet / Cityscapes training through the CLI, metrics on planted predictions, warm start, loaders."""

import json
import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import batchshaping as bs
from batchshaping.checkpoint import CheckpointError
from batchshaping.cli import main
from batchshaping.config import TrainConfig
from batchshaping.data.imagenet import imagenet_datasets
from batchshaping.macs import MacCounter
from batchshaping.tasks import (
    SegmentationTask,
    build_loaders,
    class_iou,
    confusion_matrix,
    evaluate_segmentation,
    load_pretrained,
    mean_iou,
    topk_accuracy,
)
from batchshaping.train import evaluate
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


class Planted(nn.Module):
    """Returns fixed logits whatever the input (x is only used for its batch size)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = nn.Parameter(logits, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits[: len(x)]


def _planted_classification() -> tuple[torch.Tensor, torch.Tensor]:
    # Rank of the target among 7 classes: 1st, 3rd, 7th, 2nd, 5th, 6th.
    target = torch.tensor([0, 1, 2, 3, 4, 5])
    logits = torch.zeros(6, 7)
    order = {0: 1, 1: 3, 2: 7, 3: 2, 4: 5, 5: 6}
    for i, rank in order.items():
        others = [c for c in range(7) if c != target[i]]
        ranking = others[: rank - 1] + [int(target[i])] + others[rank - 1 :]
        for pos, c in enumerate(ranking):
            logits[i, c] = 10.0 - pos
    return logits, target


def test_topk_accuracy_on_planted_predictions_matches_evaluate():
    logits, target = _planted_classification()
    assert topk_accuracy(logits, target, (1, 2, 3, 5, 10)) == pytest.approx([1 / 6, 2 / 6, 3 / 6, 4 / 6, 1.0])
    model = Planted(logits)
    res = evaluate(
        model, [(torch.zeros(6, 3, 2, 2), target)], MacCounter(nn.Sequential(nn.Linear(2, 2)), (1, 1, 2))
    )
    assert (res.top1, res.top5) == pytest.approx((1 / 6, 4 / 6))


def test_confusion_matrix_and_miou_on_planted_predictions():
    target = torch.tensor([[[0, 0, 1], [1, 2, 255]]])
    pred = torch.tensor([[[0, 1, 1], [1, 2, 0]]])
    cm = confusion_matrix(pred, target, 4)
    assert cm.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    iou = class_iou(cm)
    # class 0: 1 / (1 + 1), class 1: 2 / (2 + 1), class 2: 1 / 1, class 3: absent -> NaN, left out.
    assert iou[:3].tolist() == pytest.approx([0.5, 2 / 3, 1.0]) and math.isnan(iou[3])
    assert mean_iou(cm) == pytest.approx((0.5 + 2 / 3 + 1.0) / 3)
    with pytest.raises(ValueError, match="outside 0..3"):
        confusion_matrix(pred, torch.tensor([[[0, 0, 1], [1, 4, 255]]]), 4)


def test_segmentation_evaluation_and_loss_on_planted_logits():
    target = torch.tensor([[[0, 0, 1, 1], [1, 2, 255, 2]]])  # (1, 2, 4)
    pred = torch.tensor([[[0, 1, 1, 1], [1, 2, 0, 0]]])
    logits = torch.nn.functional.one_hot(pred, 3).permute(0, 3, 1, 2).float() * 5  # (1, 3, 2, 4)
    counter = MacCounter(nn.Sequential(nn.Conv2d(3, 3, 1)), (3, 2, 4))
    m = evaluate_segmentation(
        Planted(logits), [(torch.zeros(1, 3, 2, 4), target)], counter, None, 3, 255, "abc"
    )
    # cm rows: 0 -> [1, 1, 0]; 1 -> [0, 3, 0]; 2 -> [1, 0, 1]
    assert m["miou"] == pytest.approx((1 / 3 + 3 / 4 + 1 / 2) / 3)
    assert m["pixel_acc"] == pytest.approx(5 / 7)
    assert m["class_iou"] == pytest.approx({"a": 1 / 3, "b": 3 / 4, "c": 1 / 2})
    assert m["macs_mean"] == m["macs_dense"] == 3 * 3 * 8 and "top1" not in m
    # Logits at half the label's resolution are upsampled to it before scoring.
    small = torch.zeros(1, 3, 1, 2)
    small[0, 1] = 1.0
    m = evaluate_segmentation(Planted(small), [(torch.zeros(1, 3, 1, 2), target)], counter, None, 3)
    assert m["pixel_acc"] == pytest.approx(3 / 7)
    task = SegmentationTask(3)
    ce = torch.nn.functional.cross_entropy(logits, target, ignore_index=255)
    torch.testing.assert_close(task.loss(logits, target.to(torch.uint8)), ce)
    assert float(task.loss(logits, torch.full_like(target, 255))) == 0.0  # an all-ignored crop is no NaN
    assert float(task.correct(logits, target)) == pytest.approx(5 / 7)


def test_load_pretrained_accepts_only_missing_gates(tmp_path):
    torch.manual_seed(0)
    dense = bs.create_model("resnet18", num_classes=1000)
    torch.save({"module." + k: v for k, v in dense.state_dict().items()}, tmp_path / "r18.pth")
    gated = bs.create_model("gated_resnet18")
    report = load_pretrained(gated, tmp_path / "r18.pth")
    assert report["missing"] and all(".gate." in k for k in report["missing"]) and not report["skipped"]
    torch.testing.assert_close(gated.layer4[1].conv2.weight, dense.layer4[1].conv2.weight)
    # Another number of classes: the classifier is skipped and keeps its initialisation.
    assert load_pretrained(bs.create_model("gated_resnet18", num_classes=5), tmp_path / "r18.pth")[
        "skipped"
    ] == [
        "fc.weight",
        "fc.bias",
    ]
    with pytest.raises(CheckpointError, match=r"missing non-gate keys \['layer1.2.conv1.weight'"):
        load_pretrained(bs.create_model("gated_resnet34"), tmp_path / "r18.pth")
    torch.save({**dense.state_dict(), "extra.weight": torch.zeros(1)}, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match=r"unexpected keys \['extra.weight'\]"):
        load_pretrained(gated, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match="not found"):
        load_pretrained(gated, tmp_path / "none.pth")


def test_build_loaders_give_each_rank_its_own_shard(tmp_path):
    train, val = imagenet_datasets(write_imagenet(tmp_path), image_size=16)
    cfg = TrainConfig()
    cfg.data.batch_size, cfg.data.eval_batch_size, cfg.data.workers = 4, 5, 0
    seen = []
    for rank in (0, 1):
        tl, vl = build_loaders(train, val, cfg, rank, 2)
        tl.sampler.set_epoch(3)
        assert tl.batch_size == 2 and len(tl) == 3 and len(vl) == 3  # val is whole, for rank 0's evaluation
        seen.append(list(tl.sampler))
    assert not set(seen[0]) & set(seen[1]) and len(seen[0] + seen[1]) == 12
    cfg.data.workers = 1  # decoding in a worker process
    x, y = next(iter(build_loaders(train, val, cfg)[1]))
    assert x.shape == (5, 3, 16, 16) and y.tolist() == [0, 0, 0, 0, 1]


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
    assert "112 gate tensors at their initialisation" in printed and "top-5" in printed
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
    import batchshaping.tasks as tasks
    from batchshaping.config import load_config

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    os.environ["LOCAL_RANK"] = str(rank)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    real = tasks.build_loaders

    def recording(*args, **kwargs):
        train, val = real(*args, **kwargs)
        train.sampler.set_epoch(0)
        torch.save(list(train.sampler), f"{out}/shard{rank}.pt")
        return train, val

    tasks.build_loaders = recording
    sets = [f"data.root={root}", "data.image_size=32", "data.batch_size=4", "model=gated_resnet18", *COMMON]
    cfg = load_config("configs/imagenet_gated_resnet18.yaml", sets)
    tasks.run_dataset_training(cfg, out_dir=f"{out}/run")
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
