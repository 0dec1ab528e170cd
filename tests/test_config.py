from pathlib import Path

import pytest

from batchshaping.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted(ROOT.joinpath("configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_shipped_recipe_loads(path):
    cfg = load_config(path)
    assert cfg.name == path.stem


def test_paper_recipe_schedule_points_are_fractions_of_500_epochs():
    cfg = load_config(Path("configs/cifar10_gated_resnet32.yaml"))
    assert cfg.epochs == 500 and cfg.data.batch_size == 256 and cfg.optim.nesterov
    assert [round(m * cfg.epochs) for m in cfg.optim.lr_milestones] == [300, 375, 450]
    assert round(cfg.loss.bs_end * cfg.epochs) == 100 and cfg.loss.bs_weight == 0.75
    assert (round(cfg.loss.l0_start * 500), round(cfg.loss.l0_end * 500)) == (100, 300)


def test_overrides_set_nested_keys_with_types():
    cfg = load_config(
        None, ["epochs=7", "loss.l0_weight=0.01", "optim.lr_milestones=[0.5, 0.8]", "data.root=x"]
    )
    assert cfg.epochs == 7 and cfg.loss.l0_weight == 0.01 and cfg.optim.lr_milestones == [0.5, 0.8]
    assert cfg.data.root == "x"


def test_unknown_key_is_rejected_with_its_name(tmp_path):
    with pytest.raises(ConfigError, match="'loss.l0_wieght'"):
        load_config(None, ["loss.l0_wieght=0.1"])
    p = tmp_path / "bad.yaml"
    p.write_text("model: gated_resnet20\noptimizer: {lr: 0.1}\n")
    with pytest.raises(ConfigError, match="'optimizer'"):
        load_config(p)


def test_wrong_type_is_rejected_with_key_and_expected_type():
    with pytest.raises(ConfigError, match="'epochs' expects int"):
        load_config(None, ["epochs=ten"])
    with pytest.raises(ConfigError, match="'optim.nesterov' expects bool"):
        load_config(None, ["optim.nesterov=3"])


def test_choices_and_ranges_are_checked():
    with pytest.raises(ConfigError, match="loss.bs_reduction"):
        load_config(None, ["loss.bs_reduction=median"])
    with pytest.raises(ConfigError, match="loss.bs_end"):
        load_config(None, ["loss.bs_end=100"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["epochs"])
    for bad in ("0", "1.5", "-0.2"):
        with pytest.raises(ConfigError, match=r"'loss.macs_target' must be in \(0, 1\] \(a fraction of the"):
            load_config(None, [f"loss.macs_target={bad}"])
    assert load_config(None, ["loss.macs_target=0.585"]).loss.macs_target == 0.585


def test_a_mac_target_needs_a_gated_model():
    budget = "cifar10_gated_resnet32_budget"
    with pytest.raises(ConfigError, match="'loss.macs_target' needs a gated model; resnet32 has no gates"):
        load_config(budget, ["model=resnet32"])
    assert load_config(budget, ["model=resnet32", "loss.macs_target=null"]).loss.macs_target is None


@pytest.mark.parametrize(
    "text, value", [("1e-3", 1e-3), ("1e9", 1e9), ("1.0e9", 1e9), ("-2E-4", -2e-4), (".5", 0.5)]
)
def test_numbers_parse_as_people_write_them(text, value):
    assert load_config(None, [f"gate.bias_init={text}"]).gate.bias_init == value
    if value > 0:
        assert load_config(None, [f"loss.l0_weight={text}"]).loss.l0_weight == value


def test_exponent_floats_in_a_yaml_file_are_numbers(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("loss: {l0_weight: 1e-3}\noptim: {lr: 5e-2}\n")
    cfg = load_config(p)
    assert (cfg.loss.l0_weight, cfg.optim.lr) == (1e-3, 5e-2)


def test_a_key_written_twice_is_an_error_not_a_silent_replacement(tmp_path):
    recipe = tmp_path / "twice.yaml"
    recipe.write_text("loss:\n  l0_weight: 1.0e-3\nepochs: 5\nloss:\n  bs_weight: 0.5\n")
    with pytest.raises(ConfigError, match=r"twice.yaml' is not valid YAML.*key 'loss' is written twice"):
        load_config(recipe)
    recipe.write_text("loss: {l0_weight: 1.0e-3, l0_weight: 2.0e-3}\n")
    with pytest.raises(ConfigError, match="key 'l0_weight' is written twice; keep one"):
        load_config(recipe)


def test_a_key_in_the_wrong_section_suggests_its_dotted_name():
    with pytest.raises(ConfigError, match="did you mean 'optim.lr'"):
        load_config(None, ["lr=0.1"])
    with pytest.raises(ConfigError, match="did you mean 'data.batch_size'"):
        load_config(None, ["batch_size=128"])


def test_recipes_load_by_name_and_by_configs_path_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_config("cifar10_gated_resnet32_cpu").model == "gated_resnet32"
    assert load_config("configs/cifar10_resnet20.yaml").name == "cifar10_resnet20"
    with pytest.raises(ConfigError, match="cifar10_resnet20"):  # the error lists the recipes
        load_config("no_such_recipe")


def test_recipes_are_package_data():
    import batchshaping

    shipped = Path(batchshaping.__file__).parent / "configs"
    assert {p.name for p in shipped.glob("*.yaml")} == {p.name for p in CONFIGS}


@pytest.mark.parametrize("old, step", [("true", "compile"), ("false", "eager")])
def test_a_saved_config_from_before_the_step_key_loads_with_the_step_it_ran(tmp_path, old, step):
    from batchshaping.config import config_from_dict

    (tmp_path / "config.yaml").write_text(f"model: resnet20\ncompile: {old}\n")
    assert load_config(tmp_path / "config.yaml").step == step
    assert config_from_dict({"model": "resnet20", "compile": old == "true"}).step == step
    with pytest.raises(ConfigError, match="unknown config key 'compile'"):
        load_config(None, ["compile=true"])  # the command line takes today's keys


def test_every_run_folder_in_results_loads():
    """RESULTS.md's commands (compare, eval, resume) read these configs."""
    folders = sorted((ROOT / "results").rglob("config.yaml"))
    assert folders
    for path in folders:
        load_config(path)
