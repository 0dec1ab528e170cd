"""scripts/export_weights.py: model-only weights of finished runs and their manifest."""

import json
import sys
from pathlib import Path

import pytest
import torch

from batchshaping.checkpoint import load_checkpoint
from tests.test_train import run as train_tiny

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import export_weights  # noqa: E402


def test_exported_weights_load_equal_the_run_and_the_manifest_names_their_hash(tmp_path, capsys):
    run = tmp_path / "runs" / "tiny_e2"
    summary = train_tiny(run)
    out = tmp_path / "weights"
    assert export_weights.main([str(run), "--out", str(out)]) == 0
    entry = json.loads((out / "manifest.json").read_text())["weights"][0]
    assert entry["run"] == "tiny_e2" and entry["epochs"] == 2 and entry["top1"] == summary["top1"]
    assert entry["sha256"] == export_weights.sha256(out / "tiny_e2.pt") and entry["evaluate"].startswith(
        "batchshaping eval "
    )
    exported = load_checkpoint(out / "tiny_e2.pt")
    assert not {"optimizer", "scaler", "rng"} & exported.keys()
    for k, v in load_checkpoint(run)["model"].items():  # what load_model / eval read
        assert torch.equal(exported["model"][k], v), k
    assert "wrote" in capsys.readouterr().out


def test_an_unfinished_run_is_refused(tmp_path):
    run = tmp_path / "cut"
    train_tiny(run)
    (run / "summary.json").unlink()
    with pytest.raises(SystemExit, match="has not finished"):
        export_weights.main([str(run), "--out", str(tmp_path / "w")])


def test_check_evaluates_the_exported_weights_like_eval_and_fails_when_they_differ(
    tmp_path, capsys, cifar_dir
):
    """A run trained by the CLI on CIFAR-10 in bf16, channels_last (as the paper runs): `eval` of its exported
    weights gives the run's own top-1 and MACs; a summary that says otherwise fails the check."""
    from batchshaping.cli import main as cli

    run = tmp_path / "runs" / "g_e1"
    sets = ["epochs=1", "data.train_subset=64", "data.test_subset=48", "data.batch_size=16", "precision=bf16"]
    sets += ["data.eval_batch_size=16", "threads=1"]
    argv = [
        "train",
        "--config",
        "cifar10_gated_resnet20_cpu",
        "--data-dir",
        str(cifar_dir),
        "--out",
        str(run),
    ]
    assert cli(argv + [a for s in sets for a in ("--set", s)]) == 0
    out = tmp_path / "weights"
    assert export_weights.main([str(run), "--out", str(out), "--check"]) == 0
    entry = json.loads((out / "manifest.json").read_text())["weights"][0]
    c = entry["eval_check"]
    assert c["ok"] and c["top1"] == entry["top1"] and c["macs_mean"] == entry["macs_mean"]
    assert entry["test_subset"] == 48 and c["images"] == 48  # the run's test images, and only those
    assert "batchshaping eval: agrees" in capsys.readouterr().out
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps(summary | {"top1": summary["top1"] + 0.01}))
    assert export_weights.main([str(run), "--out", str(out), "--check"]) == 1
    assert "does not reproduce the runs' numbers: g_e1" in capsys.readouterr().err


def test_the_published_weights_are_the_files_their_manifests_name():
    manifests = sorted((ROOT / "weights").glob("*/manifest.json"))
    for manifest in manifests:
        for entry in json.loads(manifest.read_text())["weights"]:
            path = ROOT / entry["file"]
            assert path.is_file(), f"{manifest} names {entry['file']}, which is missing"
            assert path.stat().st_size == entry["bytes"] and export_weights.sha256(path) == entry["sha256"]
            assert entry["eval_check"]["ok"], f"{entry['run']}: batchshaping eval did not reproduce its run"
