import pytest
import torch

import batchshaping as bs
from batchshaping.gates import force_gates, gate_modules


@pytest.mark.parametrize("bad", [0, -3, 2.5])
def test_a_class_count_below_one_or_not_an_int_is_refused(bad):
    with pytest.raises(ValueError, match=f"num_classes must be a positive int .*got {bad}"):
        bs.create_model("gated_resnet20", num_classes=bad)


def test_unknown_model_error_lists_known_names():
    with pytest.raises(ValueError, match="gated_resnet32.*resnet20|resnet20"):
        bs.create_model("resnet21")


def test_registry_has_the_model_zoo():
    for depth in (20, 32, 56, 110, 18, 34, 50):
        assert f"resnet{depth}" in bs.list_models() and f"gated_resnet{depth}" in bs.list_models()


def small_input(name: str) -> tuple[int, int, int]:
    """A cheap input of the model's kind: CIFAR 32x32, ImageNet 64x64, segmentation 64x64."""
    return (3, 32, 32) if bs.model_info(name).family == "cifar" else (3, 64, 64)


@pytest.mark.parametrize("name", bs.list_models())
def test_every_model_runs_forward_and_backward_with_finite_values(name):
    torch.manual_seed(0)
    model = bs.create_model(name, num_classes=5).train()
    out = model(torch.randn(2, *small_input(name)))
    assert out.shape[:2] == (2, 5) and torch.isfinite(out).all()
    out.float().square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert bool(bs.gate_outputs(model)) == bs.model_info(name).gated


@pytest.mark.parametrize("name", bs.list_models("gated_"))
def test_gates_forced_open_compute_the_dense_function(name):
    torch.manual_seed(0)
    dense_name = name.removeprefix("gated_")
    size = small_input(name)
    dense = bs.create_model(dense_name, num_classes=7).eval()
    gated = bs.create_model(name, num_classes=7).eval()
    missing, unexpected = gated.load_state_dict(dense.state_dict(), strict=False)
    assert not unexpected and missing and all(".gate." in k for k in missing)
    force_gates(gated, 1.0)
    x = torch.randn(2, *size)
    torch.testing.assert_close(gated(x), dense(x), rtol=0, atol=0)


def test_gates_closed_reduce_blocks_to_their_shortcut_path():
    torch.manual_seed(0)
    model = bs.create_model("gated_resnet20").eval()
    force_gates(model, 0.0)
    block = model.layer1[0]
    x = torch.randn(2, 16, 32, 32)
    expected = torch.relu(block.bn2(torch.zeros(2, 16, 32, 32)) + x)
    torch.testing.assert_close(block(x), expected)


def _torchvision_state_dict(layers, bottleneck, num_classes=1000):
    """A state dict with torchvision ResNet names and shapes, built by hand (torchvision is not a dep)."""
    sd = {"conv1.weight": (64, 3, 7, 7)}

    def bn(prefix, c):
        sd.update({f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,)})
        sd.update({f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()})

    bn("bn1", 64)
    inplanes, exp = 64, 4 if bottleneck else 1
    for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers, strict=True)):
        for b in range(n):
            p = f"layer{i + 1}.{b}"
            if bottleneck:
                convs = [(planes, inplanes, 1, 1), (planes, planes, 3, 3), (planes * 4, planes, 1, 1)]
            else:
                convs = [(planes, inplanes, 3, 3), (planes, planes, 3, 3)]
            for j, shape in enumerate(convs):
                sd[f"{p}.conv{j + 1}.weight"] = shape
                bn(f"{p}.bn{j + 1}", shape[0])
            if b == 0 and (i > 0 or inplanes != planes * exp):
                sd[f"{p}.downsample.0.weight"] = (planes * exp, inplanes, 1, 1)
                bn(f"{p}.downsample.1", planes * exp)
            inplanes = planes * exp
    sd["fc.weight"], sd["fc.bias"] = (num_classes, 512 * exp), (num_classes,)
    return {
        k: torch.zeros(s, dtype=torch.long) if k.endswith("tracked") else torch.randn(s)
        for k, s in sd.items()
    }


@pytest.mark.parametrize("depth,layers,bottleneck", [(18, [2, 2, 2, 2], False), (50, [3, 4, 6, 3], True)])
def test_torchvision_state_dict_loads_and_only_gate_parameters_are_missing(depth, layers, bottleneck):
    sd = _torchvision_state_dict(layers, bottleneck)
    gated = bs.create_model(f"gated_resnet{depth}")
    missing, unexpected = gated.load_state_dict(sd, strict=False)
    assert unexpected == []
    # BatchNorm fills a missing num_batches_tracked itself, so torch does not report it as missing.
    gate_keys = {k for k in gated.state_dict() if ".gate." in k and not k.endswith("num_batches_tracked")}
    assert set(missing) == gate_keys and gate_keys
    bs.create_model(f"resnet{depth}").load_state_dict(sd, strict=True)
    torch.testing.assert_close(gated.layer1[0].conv1.weight, sd["layer1.0.conv1.weight"])


def test_bottleneck_gate_splits_into_conv1_and_conv2_halves():
    model = bs.create_model("gated_resnet50")
    block = model.layer1[0]
    assert block.gate.num_gates == 2 * block.width == 128
    assert len(gate_modules(model)) == 16


def test_cifar_depth_must_be_6n_plus_2():
    with pytest.raises(ValueError, match="6n\\+2"):
        bs.models.cifar_resnet.CifarResNet(21)
