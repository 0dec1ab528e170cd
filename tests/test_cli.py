"""The command line as a user meets it: resume, errors, what each command prints."""

import json
import sys

import pytest
import torch

from batchshaping.checkpoint import load_checkpoint
from batchshaping.cli import main
from tests.conftest import killed_in_epoch

SMALL = ["epochs=2", "data.train_subset=256", "data.test_subset=200", "data.batch_size=64", "progress=false"]
SMALL += ["precision=fp32", "data.eval_batch_size=200"]


def sets(*items: str) -> list[str]:
    return sum((["--set", s] for s in items), [])


def test_resume_continues_a_non_default_recipe_with_its_own_config_and_data(
    tmp_path, cifar_dir, monkeypatch, capsys
):
    monkeypatch.delenv("BATCHSHAPING_DATA", raising=False)
    small = [*SMALL, "data.train_subset=128", "data.test_subset=100", "data.eval_batch_size=100"]
    recipe = ["train", "--config", "cifar10_gated_resnet32_cpu", "--data-dir", str(cifar_dir), *sets(*small)]
    assert main([*recipe, "--out", str(tmp_path / "full")]) == 0
    with killed_in_epoch(2):
        assert main([*recipe, "--out", str(tmp_path / "run")]) == 130
    assert f"batchshaping train --out {tmp_path / 'run'} --resume" in capsys.readouterr().err
    config_text = (tmp_path / "run" / "config.yaml").read_text()
    monkeypatch.chdir(tmp_path)  # neither the data folder nor the recipe is given again
    assert main(["train", "--out", "run", "--resume"]) == 0
    assert (tmp_path / "run" / "config.yaml").read_text() == config_text
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["model"] == "gated_resnet32" and summary["config"] == "cifar10_gated_resnet32_cpu"
    full, resumed = load_checkpoint(tmp_path / "full"), load_checkpoint(tmp_path / "run")
    assert all(torch.equal(v, resumed["model"][k]) for k, v in full["model"].items())  # exact resume


def test_resume_refuses_changes_and_never_writes_config(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "empty"), "--resume"]) == 2
    assert "no last.pt" in capsys.readouterr().err and not (tmp_path / "empty" / "config.yaml").exists()
    assert main(["train", "--resume"]) == 2
    assert "--resume needs --out" in capsys.readouterr().err
    assert main(["train", "--config", "cifar10_resnet20", "--out", str(tmp_path), "--resume"]) == 2
    assert "drop --config" in capsys.readouterr().err


def test_resume_with_a_run_changing_override_is_refused(tmp_path, cifar_dir, capsys):
    out = tmp_path / "run"
    args = ["train", "--data-dir", str(cifar_dir), "--out", str(out), *sets(*SMALL, "epochs=1")]
    assert main(args) == 0
    before = (out / "config.yaml").read_text()
    assert main(["train", "--out", str(out), "--resume", "--set", "loss.l0_weight=1e-3"]) == 2
    assert "loss.l0_weight would change it" in capsys.readouterr().err
    assert (out / "config.yaml").read_text() == before
    # A new run into a finished run's folder would overwrite it, also where only its results are kept.
    assert main(args) == 2 and "already holds a run (last.pt, best.pt" in capsys.readouterr().err
    for f in ("last.pt", "best.pt"):
        (out / f).unlink()
    assert main(args) == 2
    assert "already holds a run (summary.json, log.jsonl); pick another --out" in capsys.readouterr().err
    assert (out / "config.yaml").read_text() == before


def test_a_diverged_first_epoch_is_a_one_line_error_that_names_what_exists(tmp_path, cifar_dir, capsys):
    args = ["train", "--data-dir", str(cifar_dir), "--out", str(tmp_path), *sets(*SMALL, "optim.lr=1e9")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no checkpoint had been written yet" in err and "last.pt" not in err


def test_an_out_folder_that_cannot_be_created_is_a_one_line_error(tmp_path, cifar_dir, capsys):
    (tmp_path / "file").write_text("")
    args = ["train", "--data-dir", str(cifar_dir), "--out", str(tmp_path / "file" / "run"), *sets(*SMALL)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "cannot write the run folder" in err


def test_train_says_where_it_writes_and_eval_finds_the_runs_data(tmp_path, cifar_dir, monkeypatch, capsys):
    monkeypatch.delenv("BATCHSHAPING_DATA", raising=False)
    out = tmp_path / "run"
    assert main(["train", "--data-dir", str(cifar_dir), "--out", str(out), *sets(*SMALL, "epochs=1")]) == 0
    printed = capsys.readouterr().out
    assert f"run folder {out}: gated_resnet20 (cifar10_gated_resnet20_cpu) on cpu (fp32)" in printed
    assert "ETA" in printed and f"wrote {out}/summary.json" in printed
    monkeypatch.chdir(tmp_path)  # no ./data/cifar10 here: the data folder must come from the checkpoint
    assert main(["eval", str(out / "last.pt")]) == 0
    metrics = json.loads(capsys.readouterr().out)  # on the whole test split, not the run's 200 images
    summary = json.loads((out / "summary.json").read_text())
    assert 0 <= metrics["top1"] <= metrics["top5"] <= 1 and metrics["macs_dense"] == summary["macs_dense"]


def test_resuming_a_finished_run_trains_nothing_and_writes_nothing(tmp_path, cifar_dir, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data-dir", str(cifar_dir), "--out", str(out), *sets(*SMALL, "epochs=1")]) == 0
    capsys.readouterr()

    def files() -> dict[str, tuple[int, bytes]]:
        return {
            str(p.relative_to(out)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in out.rglob("*")
            if p.is_file()
        }

    before = files()
    assert main(["train", "--out", str(out), "--resume", "--set", "threads=1"]) == 0
    said = capsys.readouterr().out
    assert f"{out} has finished (epoch 1/1, summary.json): nothing to resume, nothing written" in said
    assert "wrote" not in said and files() == before  # no new history record, summary or TensorBoard file


def test_evals_data_not_found_error_suggests_an_option_eval_has(tmp_path, capsys):
    from batchshaping.checkpoint import TrainingState
    from batchshaping.config import load_config
    from batchshaping.models import model_from_config

    cfg = load_config(None, [f"data.root={tmp_path / 'nowhere'}"])
    model = model_from_config(cfg, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    TrainingState(model, opt, torch.amp.GradScaler("cuda", enabled=False)).save(
        tmp_path / "c.pt", cfg, 10, None
    )
    assert main(["eval", str(tmp_path / "c.pt")]) == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and "--download" in err  # the run's own data folder was looked in
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    assert "--download" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["analyze", "compare"])
def test_analyze_and_compare_take_the_download_their_data_error_suggests(
    command, tmp_path, capsys, monkeypatch
):
    import batchshaping.data.cifar as cifar
    from batchshaping.checkpoint import TrainingState
    from batchshaping.config import dump_config, load_config
    from batchshaping.models import model_from_config

    cfg = load_config(None, [f"data.root={tmp_path / 'nowhere'}"])
    model = model_from_config(cfg, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    run = tmp_path / "run"
    run.mkdir()
    TrainingState(model, opt, torch.amp.GradScaler("cuda", enabled=False)).save(
        run / "last.pt", cfg, 10, None
    )
    (run / "config.yaml").write_text(dump_config(cfg))
    summary = {"model": cfg.model, "top1": 0.5, "macs_mean": 1e6, "macs_dense": 2e6}
    (run / "summary.json").write_text(json.dumps(summary))
    args = [command, str(run), "--out", str(tmp_path / "out")] + (
        ["--paired"] if command == "compare" else []
    )
    assert main(args) == 2
    assert "--download" in capsys.readouterr().err  # the hint names an option this command has

    def no_network(url, dest):
        raise OSError("no network here")

    monkeypatch.setattr(cifar.urllib.request, "urlretrieve", no_network)
    assert main([*args, "--download"]) == 2
    assert "Download of https://www.cs.toronto.edu" in capsys.readouterr().err  # it did try
    if command == "compare":
        assert main([command, str(run), "--out", str(tmp_path / "o2"), "--download"]) == 2
        assert "--download fetches the test images of --paired: add --paired" in capsys.readouterr().err


def test_help_documents_the_dotted_keys_without_markup(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert "loss.l0_weight=1e-3" in text and "optim.lr" in text and "data.batch_size" in text
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "``" not in capsys.readouterr().out


def test_a_missing_extra_is_named(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "yaml", None)  # import yaml -> ModuleNotFoundError
    assert main(["train", "--set", "epochs=1"]) == 2
    assert 'pip install "batchshaping[train]"' in capsys.readouterr().err


@pytest.mark.parametrize(
    "setting, message",
    [
        ("model=resnet1000", "unknown model 'resnet1000'; did you mean 'resnet110'"),
        ("device=gpu", "'device' must be auto, cpu, cuda or cuda:N"),
        ("loss.bs_weight=-1", "'loss.bs_weight' must be >= 0 (a negative weight rewards the opposite"),
        ("loss.l0_weight=-0.1", "'loss.l0_weight' must be >= 0"),
        ("loss.macs_weight=-2", "'loss.macs_weight' must be >= 0"),
        ("optim.lr_milestones=[0.9,0.5]", "'optim.lr_milestones' holds increasing fractions of training"),
        ("optim.lr_milestones=[0.5,0.5]", "'optim.lr_milestones' holds increasing fractions of training"),
        ("optim.lr=0", "'optim.lr' must be > 0"),
        ("optim.momentum=1", "'optim.momentum' must be in [0, 1)"),
        ("gate.tau=0", "'gate.tau' must be > 0"),
        ("loss.bs_alpha=.nan", "'loss.bs_alpha' must be > 0"),
        ("eval_every=0", "'eval_every' must be >= 1"),
        ("data.train_subset=0", "'data.train_subset' must be >= 1"),
        ("max_time=soon", "'max_time': 'soon' is not a duration"),
    ],
)
def test_a_bad_value_is_a_one_line_usage_error_before_anything_runs(tmp_path, capsys, setting, message):
    assert main(["train", "--set", setting, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("batchshaping train: error: ") and message in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_cuda_without_cuda_is_a_one_line_error(tmp_path, cifar_dir, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = ["train", "--data-dir", str(cifar_dir), "--out", str(tmp_path), *sets(*SMALL, "device=cuda")]
    assert main(args) == 2
    assert "device 'cuda' requested but this torch sees no CUDA device" in capsys.readouterr().err


def test_a_batch_larger_than_the_training_set_is_a_one_line_error(tmp_path, cifar_dir, capsys):
    args = [
        "train",
        "--data-dir",
        str(cifar_dir),
        "--out",
        str(tmp_path),
        *sets(*SMALL, "data.batch_size=512"),
    ]
    assert main(args) == 2
    assert "holds no full batch of data.batch_size=512" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args",
    [
        ["eval", "x.pt", "--batch-size", "0"],
        ["eval", "x.pt", "--max-images", "0"],
        ["analyze", "x.pt", "--out", "o", "--max-images", "-1"],
    ],
)
def test_eval_and_analyze_refuse_counts_below_one_with_a_usage_line(args, capsys):
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2 and "must be >= 1" in capsys.readouterr().err


def test_the_progress_bar_stays_out_of_a_log_file_unless_asked(monkeypatch):
    from batchshaping.config import TrainConfig
    from batchshaping.train import _progress_bar

    cfg = TrainConfig()
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert cfg.progress is None and _progress_bar(cfg, 10, 0) is None
    cfg.progress = True
    bar = _progress_bar(cfg, 10, 0)
    assert bar is not None
    bar.close()
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    cfg.progress = None
    bar = _progress_bar(cfg, 10, 0)
    assert bar is not None
    bar.close()
    cfg.progress = False
    assert _progress_bar(cfg, 10, 0) is None


def test_sigterm_ends_a_run_like_ctrl_c_and_leaves_the_handler_as_it_was(
    tmp_path, cifar_dir, monkeypatch, capsys
):
    import os
    import signal

    import batchshaping.train as train_mod

    real_epoch = train_mod.train_epoch

    def terminated_in_epoch_2(step, loader, epoch, cfg, bar=None):
        if epoch == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # what a cluster's time limit or `timeout` sends
        return real_epoch(step, loader, epoch, cfg, bar)

    monkeypatch.setattr(train_mod, "train_epoch", terminated_in_epoch_2)
    before = signal.getsignal(signal.SIGTERM)
    args = ["train", "--data-dir", str(cifar_dir), "--out", str(tmp_path), *sets(*SMALL)]
    assert main(args) == 130
    assert (
        f"interrupted; continue with: batchshaping train --out {tmp_path} --resume" in capsys.readouterr().err
    )
    assert load_checkpoint(tmp_path)["epoch"] == 1 and signal.getsignal(signal.SIGTERM) is before


@pytest.mark.parametrize(
    "setting, message",
    [
        ("precision=fp16", "precision 'fp16' needs CUDA; use --set precision=bf16 or fp32"),
        ("num_classes=3", "CIFAR-10 has 10 classes; num_classes is 3"),
    ],
)
def test_settings_that_do_not_fit_the_machine_or_data_are_one_line_errors(
    tmp_path, cifar_dir, capsys, setting, message
):
    args = ["train", "--data-dir", str(cifar_dir), "--out", str(tmp_path), *sets(*SMALL, setting)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
