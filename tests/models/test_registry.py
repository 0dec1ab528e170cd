"""The registry: one documented builder per model, state_dict names pinned, model_from_config."""

import hashlib
import inspect

import pytest
import torch

import batchshaping as bs
from batchshaping import models
from batchshaping.config import TrainConfig
from batchshaping.models import registry

pytestmark = pytest.mark.usefixtures("one_thread")

# (number of state_dict entries, sha256 of the "name:shape:dtype" lines) at the default classes. Saved runs
# resume from these names: a change here means existing checkpoints no longer load.
STATE_DICTS = {
    "gated_pspnet50": (478, "68e85027fed2b436"),
    "gated_resnet110": (1088, "b8dec1a9bcc3f7c4"),
    "gated_resnet18": (186, "a04ae72bd5ba591f"),
    "gated_resnet20": (188, "4f9b92eaea5f14f1"),
    "gated_resnet32": (308, "77644fff57087f9e"),
    "gated_resnet34": (346, "d5974992f90cd7e0"),
    "gated_resnet50": (448, "044a8f67fd83afaf"),
    "gated_resnet56": (548, "a607aca229213f89"),
    "pspnet50": (350, "6ca67a4f197eaf28"),
    "resnet110": (656, "270f99dc1650497c"),
    "resnet18": (122, "d0d3740da25de418"),
    "resnet20": (116, "570a06188da0f6e4"),
    "resnet32": (188, "a1ef9aff2e6b2138"),
    "resnet34": (218, "96ed0b07f2456525"),
    "resnet50": (320, "7dee9f4277211b5e"),
    "resnet56": (332, "76609968c89190f0"),
}
FAMILY_MODULES = {"cifar": "cifar_resnet", "imagenet": "resnet", "segmentation": "pspnet"}


def meta_model(name: str) -> torch.nn.Module:
    """The model on the meta device: shapes without memory or compute (PSPNet at 512x1024 included)."""
    with torch.device("meta"):
        return bs.create_model(name)


def test_every_model_is_pinned():
    assert sorted(STATE_DICTS) == bs.list_models()


@pytest.mark.parametrize("name", bs.list_models())
def test_state_dict_names_and_shapes_are_unchanged(name):
    rows = [f"{k}:{tuple(v.shape)}:{v.dtype}" for k, v in meta_model(name).state_dict().items()]
    digest = hashlib.sha256("\n".join(rows).encode()).hexdigest()[:16]
    assert (len(rows), digest) == STATE_DICTS[name], f"{name}: state_dict names or shapes changed"


@pytest.mark.parametrize("name", ["resnet20", "gated_resnet32", "gated_resnet18", "gated_pspnet50"])
def test_state_dict_round_trips_into_a_fresh_model(name):
    torch.manual_seed(0)
    saved = bs.create_model(name, num_classes=3).state_dict()
    torch.manual_seed(1)
    model = bs.create_model(name, num_classes=3)
    model.load_state_dict(saved, strict=True)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, saved[k], rtol=0, atol=0)


def _macs(n: int) -> str:
    return f"{n / 1e9:.2f} GMACs" if n >= 1e9 else f"{n / 1e6:.2f} MMACs"


@pytest.mark.parametrize("name", bs.list_models())
def test_each_model_has_a_documented_builder_of_its_name(name):
    info = bs.model_info(name)
    builder = getattr(models, name)
    assert builder is info.builder and builder.__name__ == name
    assert builder.__module__ == f"batchshaping.models.{FAMILY_MODULES[info.family]}"
    assert inspect.signature(builder).parameters["num_classes"].default == info.num_classes
    assert ("gate" in inspect.signature(builder).parameters) is info.gated
    # The MACs the docstring states are the ones dense_macs measures at the default input.
    model = meta_model(name)
    dense = bs.dense_macs(model, info.input_size)
    gates = bs.dense_macs(model, info.input_size, include_gates=True) - dense
    doc = " ".join(builder.__doc__.split())
    c, h, w = info.input_size
    assert f"{c}x{h}x{w}" in doc and f"{info.num_classes} classes" in doc
    assert _macs(dense) in doc
    assert (f"plus {_macs(gates)} for the gating modules" in doc) is info.gated


def test_dense_builders_refuse_a_gate():
    with pytest.raises(TypeError, match="gate"):
        bs.create_model("resnet20", gate=bs.GateConfig())


def test_pretrained_is_refused_with_where_weights_are_loaded_from():
    where = r"takes no pretrained=.*batchshaping.load_model.*batchshaping.load_pretrained"
    with pytest.raises(ValueError, match=where):
        bs.create_model("resnet18", pretrained=True)


def test_gated_builders_pass_the_gate_options_on():
    model = models.gated_resnet20(num_classes=4, gate=bs.GateConfig(hidden=8, tau=0.5))
    gate = model.layer1[0].gate
    assert model.fc.out_features == 4 and (gate.fc1.out_features, gate.tau) == (8, 0.5)


def test_register_model_names_the_model_after_its_builder(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", {})

    @registry.register_model(input_size=(3, 8, 8), gated=False, family="toy", shortcut="B")
    def toy(num_classes: int = 3, **kwargs) -> torch.nn.Module:
        return torch.nn.Linear(2, num_classes)

    info = bs.model_info("toy")
    assert (info.num_classes, info.input_size, info.defaults) == (3, (3, 8, 8), {"shortcut": "B"})
    with pytest.raises(ValueError, match="registered twice"):
        registry.register_model(input_size=(3, 8, 8), gated=False, family="toy")(toy)
    with pytest.raises(TypeError, match="num_classes"):

        @registry.register_model(input_size=(3, 8, 8), gated=False, family="toy")
        def no_default(num_classes: int) -> torch.nn.Module:
            return torch.nn.Linear(2, num_classes)


def test_model_from_config_takes_the_gate_options_and_the_class_count():
    cfg = TrainConfig(model="gated_resnet20")
    cfg.gate.tau = 0.25
    model = bs.models.model_from_config(cfg, 7)
    assert model.fc.out_features == 7 and model.layer1[0].gate.tau == 0.25
    cfg.num_classes = 5
    assert bs.models.model_from_config(cfg).fc.out_features == 5  # no count given: the config's
    cfg.model, cfg.num_classes = "resnet20", None
    dense = bs.models.model_from_config(cfg)  # a dense model ignores the config's gate options
    assert dense.fc.out_features == 10 and not bs.gate_outputs(dense)
