"""Checkpoints: warm starts from dense weights (ours, plain state_dicts, torchvision names)."""

import pytest
import torch

import batchshaping as bs
from batchshaping.checkpoint import CheckpointError, load_pretrained


def test_load_pretrained_accepts_only_missing_gates(tmp_path):
    torch.manual_seed(0)
    dense = bs.create_model("resnet18", num_classes=1000)
    torch.save({"module." + k: v for k, v in dense.state_dict().items()}, tmp_path / "r18.pth")
    gated = bs.create_model("gated_resnet18")
    report = load_pretrained(gated, tmp_path / "r18.pth")
    assert report["missing"] and all(".gate." in k for k in report["missing"]) and not report["skipped"]
    torch.testing.assert_close(gated.layer4[1].conv2.weight, dense.layer4[1].conv2.weight)
    # Another number of classes or another depth: errors that name the keys.
    with pytest.raises(CheckpointError, match=r"shape mismatch \(2\): fc.weight \(1000, 512\) vs \(5, 512\)"):
        load_pretrained(bs.create_model("gated_resnet18", num_classes=5), tmp_path / "r18.pth")
    with pytest.raises(CheckpointError, match=r"missing \(\d+\): layer1.2.conv1.weight"):
        load_pretrained(bs.create_model("gated_resnet34"), tmp_path / "r18.pth")
    torch.save({**dense.state_dict(), "extra.weight": torch.zeros(1)}, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match=r"unexpected \(1\): extra.weight"):
        load_pretrained(gated, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match="not found"):
        load_pretrained(gated, tmp_path / "none.pth")


def trained_dense(name: str = "resnet20") -> torch.nn.Module:
    """A dense CIFAR model with non-trivial weights and BatchNorm statistics."""
    torch.manual_seed(0)
    dense = bs.create_model(name, num_classes=10)
    with torch.no_grad():
        for m in dense.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
        dense.train()
        for _ in range(3):  # running statistics away from (0, 1)
            dense(torch.randn(16, 3, 32, 32) * 2 + 0.5)
    return dense.eval()


def save_as_run_checkpoint(model: torch.nn.Module, path, name: str) -> None:
    from batchshaping.checkpoint import TrainingState
    from batchshaping.config import load_config

    cfg = load_config(None, [f"model={name}"])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    TrainingState(model, opt, torch.amp.GradScaler("cuda", enabled=False), epoch=3).save(path, cfg, 10, None)


@pytest.mark.parametrize("source", ["run checkpoint", "state_dict"])
def test_gated_model_from_dense_weights_with_open_gates_equals_the_dense_model(tmp_path, source):
    from batchshaping.gates import force_gates

    dense = trained_dense()
    path = tmp_path / "dense.pt"
    if source == "run checkpoint":
        save_as_run_checkpoint(dense, path, "resnet20")
    else:
        torch.save(dense.state_dict(), path)
    gated = bs.create_model("gated_resnet20", num_classes=10)
    report = load_pretrained(gated, path)
    assert report["missing"] and all(".gate." in k for k in report["missing"])
    gated.eval()
    force_gates(gated, 1.0)
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(gated(x), dense(x), rtol=1e-5, atol=1e-5)


def test_dense_weights_of_another_depth_or_class_count_are_refused_by_name(tmp_path):
    torch.save(bs.create_model("resnet32").state_dict(), tmp_path / "r32.pt")
    with pytest.raises(CheckpointError, match=r"unexpected \(\d+\): layer1.3"):
        load_pretrained(bs.create_model("gated_resnet20"), tmp_path / "r32.pt")
    torch.save(bs.create_model("resnet20", num_classes=100).state_dict(), tmp_path / "r20_100.pt")
    with pytest.raises(CheckpointError, match=r"fc.weight \(100, 64\) vs \(10, 64\)"):
        load_pretrained(bs.create_model("gated_resnet20"), tmp_path / "r20_100.pt")


def test_finetune_with_zero_backbone_lr_moves_only_the_gates(tmp_path):
    from batchshaping.data import Data
    from batchshaping.train import fit
    from tests.conftest import tiny_config, tiny_data

    dense = trained_dense()
    torch.save(dense.state_dict(), tmp_path / "dense.pt")
    gated = bs.create_model("gated_resnet20", num_classes=10)
    load_pretrained(gated, tmp_path / "dense.pt")
    before = {k: v.clone() for k, v in gated.named_parameters()}
    cfg = tiny_config(epochs=1, model="gated_resnet20")
    cfg.optim.backbone_lr_factor = 0.0
    fit(gated, Data(tiny_data(64, 1, size=32, classes=10), tiny_data(32, 2, size=32, classes=10), 10), cfg)
    moved = {k for k, v in gated.named_parameters() if not torch.equal(v, before[k])}
    assert moved and all(".gate." in k for k in moved)
    assert any(k.endswith("gate.fc2.weight") for k in moved)


def test_a_checkpoint_of_a_network_other_than_its_config_names_is_refused_by_name(tmp_path):
    from batchshaping.checkpoint import FORMAT, atomic_save, load_model
    from batchshaping.cli import main
    from batchshaping.config import TrainConfig

    other = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Flatten(), torch.nn.LazyLinear(10))
    other(torch.zeros(1, 3, 8, 8))
    ckpt = {"format": FORMAT, "model": other.state_dict(), "config": TrainConfig().to_dict(), "epoch": 1}
    atomic_save(ckpt, tmp_path / "last.pt")  # what fit() writes when given its own nn.Module
    names = (
        r"do not fit gated_resnet20, the model its config names \(missing \(\d+\): conv1.weight, .*; "
        r"unexpected \(4\): 0.weight, 0.bias, 2.weight, 2.bias\)"
    )
    with pytest.raises(CheckpointError, match=names):
        load_model(tmp_path / "last.pt")
    assert main(["eval", str(tmp_path)]) == 2  # one line, no traceback
