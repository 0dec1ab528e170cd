import json

import pytest
import torch

import batchshaping.train as train_mod
from batchshaping.checkpoint import CheckpointError, atomic_save, load_checkpoint, load_model
from batchshaping.cli import main
from batchshaping.config import ConfigError
from batchshaping.data import Data
from batchshaping.models import GateConfig, model_from_config
from batchshaping.models.cifar_resnet import CifarResNet
from batchshaping.train import TrainingDiverged, fit
from tests.conftest import killed_in_epoch, tiny_config, tiny_data


def tiny_model(seed: int = 0) -> CifarResNet:
    torch.manual_seed(seed)
    return CifarResNet(8, num_classes=4, gate=GateConfig())


def run(out, cfg=None, **kw):
    cfg = cfg or tiny_config()
    return fit(tiny_model(), Data(tiny_data(64, 1), tiny_data(32, 2), 4), cfg, out, **kw)


def test_fit_writes_logs_checkpoints_and_summary(tmp_path):
    summary = run(tmp_path)
    for key in (
        "top1",
        "macs_mean",
        "macs_dense",
        "gates_always_on",
        "gates_always_off",
        "gates_conditional",
    ):
        assert key in summary
    assert json.loads((tmp_path / "summary.json").read_text())["epochs"] == 2
    lines = [json.loads(s) for s in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2] and "train_bs" in lines[0] and "mac_ratio" in lines[1]
    assert (tmp_path / "last.pt").exists() and (tmp_path / "best.pt").exists()
    assert any((tmp_path / "tb").iterdir())
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["epoch"] == 2 and "rng" in ckpt and "optimizer" in ckpt and ckpt["config"]["model"]
    gates = summary["gates_always_on"] + summary["gates_always_off"] + summary["gates_conditional"]
    assert gates == pytest.approx(1.0)


def test_a_network_other_than_the_configs_model_is_named_by_its_class(tmp_path, capsys):
    summary = run(tmp_path / "own", tiny_config(epochs=1))  # a depth-8 CifarResNet, not gated_resnet20
    assert summary["model"] == "CifarResNet"
    assert "CifarResNet, not the registry's gated_resnet20, with recipe tiny" in capsys.readouterr().out
    with pytest.raises(CheckpointError, match="do not fit gated_resnet20"):
        load_model(tmp_path / "own" / "last.pt")
    cfg = tiny_config(epochs=1)
    zoo = fit(model_from_config(cfg, 4), Data(tiny_data(64, 1), tiny_data(32, 2), 4), cfg, tmp_path / "zoo")
    assert zoo["model"] == "gated_resnet20" == load_model(tmp_path / "zoo" / "last.pt")[1].model


def test_a_network_with_another_number_of_classes_than_the_data_is_refused_before_training(tmp_path):
    model = CifarResNet(8, num_classes=10, gate=GateConfig())
    with pytest.raises(ConfigError, match="the model gives 10 outputs per image, but the data has 4 classes"):
        fit(model, Data(tiny_data(64, 1), tiny_data(32, 2), 4), tiny_config(), tmp_path)
    assert not (tmp_path / "log.jsonl").exists()


def test_resumed_run_ends_with_the_same_metrics_as_an_uninterrupted_one(tmp_path):
    full = run(tmp_path / "full")
    with killed_in_epoch(2), pytest.raises(KeyboardInterrupt):
        run(tmp_path / "killed")
    assert load_checkpoint(tmp_path / "killed")["epoch"] == 1
    resumed = run(tmp_path / "killed", resume=True)
    for key in ("top1", "test_loss", "macs_mean", "gates_conditional"):
        assert resumed[key] == full[key], key
    a, b = load_checkpoint(tmp_path / "full"), load_checkpoint(tmp_path / "killed")
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k


def poison_epoch(monkeypatch, bad_epoch: int) -> None:
    """Make the weights NaN at the start of epoch ``bad_epoch`` (0-based)."""
    real_epoch = train_mod.train_epoch

    def poisoned(step, loader, epoch, cfg, bar=None):
        if epoch == bad_epoch:
            with torch.no_grad():
                step.model.fc.weight.fill_(float("nan"))
        return real_epoch(step, loader, epoch, cfg, bar)

    monkeypatch.setattr(train_mod, "train_epoch", poisoned)


def test_nan_loss_stops_the_run_and_names_the_last_good_checkpoint(tmp_path, monkeypatch):
    poison_epoch(monkeypatch, 1)
    with pytest.raises(TrainingDiverged, match=r"in epoch 2.*last\.pt \(after epoch 1\) holds the last good"):
        run(tmp_path)
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_divergence_in_the_first_epoch_says_no_checkpoint_exists(tmp_path, monkeypatch):
    poison_epoch(monkeypatch, 0)
    with pytest.raises(TrainingDiverged, match="no checkpoint had been written yet") as e:
        run(tmp_path)
    assert "last.pt" not in str(e.value) and not (tmp_path / "last.pt").exists()


def test_corrupt_truncated_or_foreign_checkpoint_gives_a_clear_error(tmp_path):
    good = tmp_path / "good.pt"
    atomic_save({"format": "x"}, good)
    with pytest.raises(CheckpointError, match="not a batchshaping checkpoint"):
        load_checkpoint(good)
    run(tmp_path / "run", tiny_config(epochs=1))
    data = (tmp_path / "run" / "last.pt").read_bytes()
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    assert main(["eval", str(bad)]) == 2
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="is not a checkpoint \\(a file written by torch.save: "):
        load_checkpoint(text)


def test_checkpoint_rebuilds_the_model(tmp_path):
    cfg = tiny_config(epochs=1, model="gated_resnet20")
    fit(model_from_config(cfg, 4), Data(tiny_data(32, 1), tiny_data(32, 2), 4), cfg, tmp_path)
    model, cfg2 = load_model(tmp_path / "last.pt")
    assert cfg2.model == "gated_resnet20" and model.fc.out_features == 4 and not model.training


def test_missing_data_folder_gives_a_clear_error(tmp_path, capsys):
    code = main(
        ["train", "--set", "epochs=1", "--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and "cifar-10-batches-py" in err


def test_cli_trains_on_real_cifar10_and_writes_summary(tmp_path, cifar_dir, capsys):
    sets = [
        "epochs=1",
        "data.train_subset=256",
        "data.test_subset=200",
        "data.batch_size=64",
        "progress=false",
    ]
    args = ["train", "--config", "configs/cifar10_gated_resnet20_cpu.yaml", "--data-dir", str(cifar_dir)]
    assert main(args + sum((["--set", s] for s in sets), []) + ["--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["model"] == "gated_resnet20" and 0 < summary["mac_ratio"] <= 1.01
    assert "top-1" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ max_time


def test_time_limit_estimates_the_next_epoch_from_recent_epochs_without_the_warm_up():
    limit = train_mod.TimeLimit("1h", eval_every=2)
    assert limit.seconds == 3600 and limit.estimate() == 0
    for seconds in (300.0, 60.0, 80.0, 60.0):  # the first epoch compiled; every second one evaluates
        limit.epoch_done(seconds)
    assert limit.estimate() == 80.0
    limit.start -= 3600 - 79  # 79 s left: an 80 s epoch does not fit
    assert not limit.next_epoch_fits()
    limit.start += 2
    assert limit.next_epoch_fits()
    assert train_mod.TimeLimit(None).next_epoch_fits()


def test_eta_pace_is_this_processs_epochs_without_the_first():
    # a resumed run's earlier pieces (other threads, another machine) do not enter the pace
    limit = train_mod.TimeLimit(None)
    assert limit.mean_epoch(300.0) == 300.0  # the first epoch alone: all there is
    limit.epoch_done(300.0)  # compilation
    assert limit.mean_epoch(60.0) == 60.0
    limit.epoch_done(60.0)
    assert limit.mean_epoch(80.0) == 70.0


def test_max_time_stops_after_a_whole_epoch_and_the_resumed_run_ends_as_an_uninterrupted_one(
    tmp_path, capsys
):
    full = run(tmp_path / "full", tiny_config(epochs=3))
    cut = run(tmp_path / "cut", tiny_config(epochs=3, max_time="0.001s"))
    out = capsys.readouterr().out
    assert cut == {"model": "CifarResNet", "config": "tiny", "epochs": 3, "stopped_after": 1}
    assert "stopped after epoch 1/3: max_time" in out
    assert f"continue with: batchshaping train --out {tmp_path / 'cut'} --resume" in out
    assert (
        load_checkpoint(tmp_path / "cut")["epoch"] == 1 and not (tmp_path / "cut" / "summary.json").exists()
    )
    resumed = run(tmp_path / "cut", tiny_config(epochs=3), resume=True)
    for key in ("top1", "test_loss", "macs_mean"):
        assert resumed[key] == full[key], key
    a, b = load_checkpoint(tmp_path / "full"), load_checkpoint(tmp_path / "cut")
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    logged = [json.loads(s)["epoch"] for s in (tmp_path / "cut" / "log.jsonl").read_text().splitlines()]
    assert logged == [1, 2, 3]
    history = [json.loads(s) for s in (tmp_path / "cut" / "history.jsonl").read_text().splitlines()]
    assert [(h["from_epoch"], h["to_epoch"], h["ended"]) for h in history] == [
        (0, 1, "max_time"),
        (1, 3, "finished"),
    ]
    assert all(h["precision"] == "fp32" and h["step"] == "eager" and "cores" in h["machine"] for h in history)


def test_max_time_may_change_on_resume_and_a_bad_duration_is_refused(tmp_path):
    from batchshaping.config import ConfigError, load_config
    from batchshaping.experiment import resume_config

    run(tmp_path, tiny_config(epochs=3, max_time="0.001s"))
    assert resume_config(tmp_path, ["max_time=2h30m"]).max_time == "2h30m"
    assert resume_config(tmp_path, ["max_time=null"]).max_time is None
    with pytest.raises(ConfigError, match="'max_time': '2 days' is not a duration; write e.g. 2h30m"):
        load_config(overrides=["max_time=2 days"])


# ------------------------------------------------------------------------------------- MAC budget


def budget_config(**kw):
    cfg = tiny_config(epochs=4, **kw)
    cfg.loss.l0_weight, cfg.loss.macs_target, cfg.loss.macs_weight = 0.0, 0.6, 20.0
    cfg.loss.l0_start, cfg.loss.l0_end = 0.0, 0.5
    return cfg


def test_the_budget_is_calibrated_in_evaluation_mode_once_its_weight_is_full_and_resumes_exactly(tmp_path):
    full = run(tmp_path / "full", budget_config())
    log = [json.loads(s) for s in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    assert [("macs_goal" in r) for r in log] == [False, True, True, True]  # from l0_end = 50% on
    for before, r in zip(log[1:-1], log[2:], strict=True):  # goal moves by half the calibration error
        expected = r["macs_goal"] - (before["macs_goal"] + 0.5 * (0.6 - r["macs_calibration_ratio"]))
        assert abs(expected) < 1e-9 or abs(r["macs_goal"] - 0.6) == pytest.approx(0.2)
    ckpt = load_checkpoint(tmp_path / "full")
    assert ckpt["macs_correction"] == pytest.approx(log[-1]["macs_goal"] - 0.6)
    run(tmp_path / "cut", budget_config(max_time="0.001s"))
    while load_checkpoint(tmp_path / "cut")["epoch"] < 3:
        run(tmp_path / "cut", budget_config(max_time="0.001s"), resume=True)
    resumed = run(tmp_path / "cut", budget_config(), resume=True)
    assert resumed["macs_mean"] == full["macs_mean"] and resumed["top1"] == full["top1"]
    assert load_checkpoint(tmp_path / "cut")["macs_correction"] == ckpt["macs_correction"]
