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
    # A new run into a finished run's folder would overwrite it.
    assert main(args) == 2 and "already holds a run" in capsys.readouterr().err


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


def test_evals_data_not_found_error_suggests_an_option_eval_has(tmp_path, capsys):
    from batchshaping.checkpoint import TrainingState, model_from_config
    from batchshaping.config import load_config

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
