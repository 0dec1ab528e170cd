import pytest
import torch
from torch import nn

import batchshaping as bs
from batchshaping.gates import force_gates
from batchshaping.macs import MacCounter

REFERENCE = {  # MACs per image; He et al. layout for CIFAR, torchvision layout for ImageNet
    "resnet20": 40.55e6,
    "resnet32": 68.86e6,
    "resnet56": 125.49e6,
    "resnet110": 252.89e6,
    "resnet18": 1.814e9,
    "resnet34": 3.664e9,
    "resnet50": 4.089e9,
}


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_dense_macs_match_reference_counts(name):
    model = bs.create_model(name)
    macs = bs.dense_macs(model, bs.model_info(name).input_size)
    assert abs(macs - REFERENCE[name]) / REFERENCE[name] < 0.015


def test_projection_shortcut_resnet20_count():
    macs = bs.dense_macs(bs.create_model("resnet20", shortcut="B"), (3, 32, 32))
    assert abs(macs - 40.81e6) / 40.81e6 < 0.015


def test_conv_mac_formula_by_hand():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False), nn.Conv2d(8, 4, 1, groups=2))
    # conv1: out 8x5x5, each 3*3*3 MACs; conv2: out 4x5x5, each (8/2)*1*1 MACs
    assert bs.dense_macs(net, (3, 10, 10)) == 8 * 25 * 27 + 4 * 25 * 4


def test_all_open_gated_model_costs_dense_plus_gate_macs():
    gated = bs.create_model("gated_resnet32").eval()
    force_gates(gated, 1.0)
    macs = bs.conditional_macs(gated, torch.randn(3, 3, 32, 32))
    dense = bs.dense_macs(bs.create_model("resnet32"), (3, 32, 32))
    gates = sum(
        b.gate.fc1.in_features * 16 + 16 * b.gate.num_gates
        for b in gated.modules()
        if getattr(b, "gate", None)
    )
    assert torch.all(macs == dense + gates)
    assert bs.dense_macs(gated, (3, 32, 32), include_gates=True) == dense + gates


def test_planted_basic_block_masks_give_hand_counted_macs():
    model = bs.create_model("gated_resnet20").eval()
    counter = MacCounter(model, (3, 32, 32))
    model(torch.randn(2, 3, 32, 32))
    outs = bs.gate_outputs(model)
    planted = []
    for o in outs:
        m = torch.ones_like(o.mask)
        planted.append(o._replace(mask=m))
    # Close 4 of 16 channels of layer1.0 for image 0 only.
    planted[0].mask[0, :4] = 0
    macs = counter.conditional(planted)
    full = counter.dense + counter.gate_macs
    per_channel = 16 * 9 * 32 * 32 + 16 * 9 * 32 * 32  # conv1 output share + conv2 input share
    assert macs[1] == full and macs[0] == full - 4 * per_channel


def test_planted_bottleneck_masks_count_conv2_bilinearly():
    model = bs.create_model("gated_resnet50").eval()
    counter = MacCounter(model, (3, 64, 64))
    model(torch.randn(1, 3, 64, 64))
    outs = [o._replace(mask=torch.ones_like(o.mask)) for o in bs.gate_outputs(model)]
    outs[0].mask[0, :32] = 0  # half of conv1's 64 outputs in layer1.0
    outs[0].mask[0, 64 + 48 :] = 0  # a quarter of conv2's 64 outputs
    hw = 16 * 16
    conv1, conv2, conv3 = 64 * 64 * hw, 64 * 64 * 9 * hw, 256 * 64 * hw
    saved = conv1 * 0.5 + conv2 * (1 - 0.5 * 0.75) + conv3 * 0.25
    assert counter.conditional(outs)[0] == pytest.approx(counter.dense + counter.gate_macs - saved)


def test_gate_costs_are_the_macs_one_open_channel_adds():
    model = bs.create_model("gated_resnet20").train()
    counter = MacCounter(model, (3, 32, 32))
    model(torch.randn(4, 3, 32, 32))
    outs = bs.gate_outputs(model)
    costs = counter.gate_costs()
    assert [c.shape[0] for c in costs] == [o.probs.shape[1] for o in outs]
    torch.testing.assert_close(costs[0], torch.full((16,), 2 * 16 * 9 * 32 * 32.0))


def test_dense_model_conditional_macs_equal_dense():
    model = bs.create_model("resnet20").eval()
    macs = bs.conditional_macs(model, torch.randn(3, 3, 32, 32))
    assert macs.shape == (3,) and torch.all(macs == bs.dense_macs(model, (3, 32, 32)))
    # counted in float64, as for gated models: a float32 sum over 10,000 test images drifts by ~1 MAC each
    dense = MacCounter(model, (3, 32, 32)).conditional([])
    assert dense.dtype == torch.float64 and dense.expand(10_000).sum().item() == 10_000 * dense.item()


def test_expected_macs_are_the_mean_of_sampled_macs_and_differentiable():
    """expected=True counts with the gate probabilities: for independent Bernoulli gates (a Bottleneck's
    conv2 is bilinear in two gates) it is the mean cost of masks sampled from them, and it has a gradient."""
    model = bs.create_model("gated_resnet50").eval()
    counter = MacCounter(model, (3, 64, 64))
    model(torch.randn(2, 3, 64, 64))
    g = torch.Generator().manual_seed(0)
    outs = [o._replace(probs=torch.rand(o.probs.shape, generator=g)) for o in bs.gate_outputs(model)]
    for o in outs:
        o.probs.requires_grad_(True)
    expected = counter.conditional(outs, expected=True)
    assert expected.dtype == torch.float64 and expected.requires_grad
    samples = torch.stack(
        [
            counter.conditional(
                [o._replace(mask=torch.bernoulli(o.probs.detach(), generator=g)) for o in outs]
            )
            for _ in range(400)
        ]
    )
    mean, sem = samples.mean(0), samples.std(0) / 400**0.5
    assert torch.all((expected.detach() - mean).abs() < 4 * sem)
    expected.sum().backward()
    assert all(o.probs.grad is not None and o.probs.grad.abs().sum() > 0 for o in outs)


class _Block(nn.Module):
    """A gated block outside the model zoo: conv1's output channels gated, as in README's example."""

    def __init__(self, gate_name: str = "gate", gated_convs: bool = True) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(4, 8, 3, padding=1), nn.Conv2d(8, 4, 3, padding=1)
        setattr(self, gate_name, bs.ChannelGate(4, 8))
        self.gate_name = gate_name
        if not gated_convs:
            self.gated_convs = None  # hides the method

    def forward(self, x):
        return x + self.conv2(self.conv1(x) * getattr(self, self.gate_name)(x)[:, :, None, None])

    def gated_convs(self, mask):
        on = mask.mean(1)
        return {"conv1": (torch.ones_like(on), on), "conv2": (on, torch.ones_like(on))}


def test_a_gated_block_of_any_network_is_counted_by_its_gated_convs():
    net = nn.Sequential(_Block(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    counter = MacCounter(net, (4, 6, 6))
    conv = 8 * 36 * 4 * 9  # conv1 and conv2 each: 8 x 4 channels, 3x3, 6x6 outputs
    assert counter.dense == 2 * conv + 4 * 3 and counter.gate_macs == 4 * 16 + 16 * 8
    force_gates(net, 0.0)
    x = torch.randn(2, 4, 6, 6)
    assert bs.conditional_macs(net, x).tolist() == [4 * 3 + counter.gate_macs] * 2  # both convs idle
    force_gates(net, None)
    net[0].gate.fc2.bias.data[:2] = 50.0  # 2 of 8 channels open for every image
    net[0].gate.fc2.bias.data[2:] = -50.0
    assert bs.conditional_macs(net, x).tolist() == [2 * conv / 4 + 4 * 3 + counter.gate_macs] * 2


def test_a_gate_that_is_not_a_blocks_gate_or_a_block_without_gated_convs_is_a_clear_error():
    with pytest.raises(ValueError, match="gating module '0.g' must be the attribute 'gate' of the block"):
        MacCounter(nn.Sequential(_Block(gate_name="g")), (4, 6, 6))
    with pytest.raises(ValueError, match="block '0' has a gate but no gated_convs\\(mask\\) method"):
        MacCounter(nn.Sequential(_Block(gated_convs=False)), (4, 6, 6))


def test_the_counter_names_an_input_the_model_does_not_take_and_keeps_the_output_shape():
    model = bs.create_model("resnet20")
    assert MacCounter(model, (3, 32, 32)).output_shape == (10,)
    with pytest.raises(
        ValueError, match=r"CifarResNet does not take images of shape \(1, 32, 32\) .*channels"
    ):
        MacCounter(model, (1, 32, 32))
