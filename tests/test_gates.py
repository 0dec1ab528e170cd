import gc
import weakref

import pytest
import torch

import batchshaping as bs
from batchshaping.gates import ChannelGate, straight_through_gate


def test_training_gates_are_exactly_binary_and_follow_sigmoid_probability():
    torch.manual_seed(0)
    logits = torch.tensor([[-1.0, 0.0, 2.0]]).expand(20000, 3)
    mask = straight_through_gate(logits, tau=2 / 3, noise=True)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    # P(gate on) = sigmoid(logit) whatever tau is.
    torch.testing.assert_close(mask.mean(0), torch.sigmoid(logits[0]), atol=0.015, rtol=0)


def test_straight_through_gradient_is_sigmoid_gradient_at_temperature():
    z = torch.tensor([-0.7, 0.1, 1.3], requires_grad=True)
    straight_through_gate(z, tau=0.5, noise=False).sum().backward()
    s = torch.sigmoid(z.detach() / 0.5)
    torch.testing.assert_close(z.grad, s * (1 - s) / 0.5)


def test_eval_gates_are_deterministic_thresholded_logits():
    torch.manual_seed(0)
    gate = ChannelGate(8, 5, bias_init=0.0).eval()
    x = torch.randn(6, 8, 4, 4)
    m1, m2 = gate(x), gate(x)
    assert torch.equal(m1, m2)
    assert torch.equal(m1, (gate.logits(x) > 0).float())
    probs, mask = gate.last
    torch.testing.assert_close(probs, torch.sigmoid(gate.logits(x)))


def test_initial_bias_opens_most_gates():
    gate = ChannelGate(8, 100).eval()
    assert gate(torch.randn(32, 8, 4, 4)).mean() > 0.9


def test_gradient_reaches_gating_module_parameters():
    model = bs.create_model("gated_resnet20").train()
    loss = model(torch.randn(4, 3, 32, 32)).square().mean()
    loss.backward()
    for name, gate in bs.gates.gate_modules(model):
        assert gate.fc1.weight.grad is not None and gate.fc1.weight.grad.abs().sum() > 0, name
        assert gate.fc2.bias.grad.abs().sum() > 0, name


def test_gate_outputs_in_network_order_with_shapes_and_autograd():
    model = bs.create_model("gated_resnet20").train()
    model(torch.randn(3, 3, 32, 32))
    outs = bs.gate_outputs(model)
    names = [o.name for o in outs]
    assert names[:2] == ["layer1.0.gate", "layer1.1.gate"] and names[-1] == "layer3.2.gate"
    assert [o.probs.shape[1] for o in outs] == [16] * 3 + [32] * 3 + [64] * 3
    assert all(o.probs.requires_grad and o.probs.shape == o.mask.shape == (3, o.probs.shape[1]) for o in outs)


def test_gate_outputs_are_not_kept_across_forward_passes():
    model = bs.create_model("gated_resnet20").train()
    model(torch.randn(2, 3, 32, 32))
    first = bs.gate_outputs(model)[0].probs
    ref = weakref.ref(first)
    del first
    model(torch.randn(2, 3, 32, 32))
    gc.collect()
    assert ref() is None, "the previous forward's gate outputs are still alive"
    bs.clear_gate_outputs(model)
    with pytest.raises(RuntimeError, match="forward pass"):
        bs.gate_outputs(model)


def test_gate_outputs_work_under_autocast_in_float32():
    model = bs.create_model("gated_resnet20").train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(torch.randn(4, 3, 32, 32))
    outs = bs.gate_outputs(model)
    assert all(o.probs.dtype == torch.float32 for o in outs)


def test_gate_outputs_under_torch_compile():
    torch._dynamo.reset()
    model = bs.models.cifar_resnet.CifarResNet(8, gate=bs.GateConfig()).eval()
    x = torch.randn(2, 3, 32, 32)
    compiled = torch.compile(model, backend="eager")
    out = compiled(x)
    outs = bs.gate_outputs(compiled)
    assert [o.name for o in outs] == ["layer1.0.gate", "layer2.0.gate", "layer3.0.gate"]
    eager = model(x)
    torch.testing.assert_close(out, eager)


@pytest.mark.parametrize(
    "args, named",
    [((0, 8), "in_channels"), ((16, 0), "num_gates"), ((16, 8, 0), "hidden"), ((16.0, 8), "in_channels")],
)
def test_a_gate_without_channels_gates_or_hidden_units_is_refused(args, named):
    with pytest.raises(ValueError, match=f"ChannelGate {named} must be an int >= 1"):
        ChannelGate(*args)


@pytest.mark.parametrize("shape", [(2, 8, 4, 4), (2, 16)])
def test_a_gate_given_a_tensor_of_other_channels_names_both(shape):
    with pytest.raises(ValueError, match=r"expects the \(N, 16, H, W\) tensor .* got shape \(2, "):
        ChannelGate(16, 8)(torch.rand(shape))


@pytest.mark.parametrize("value", [2.0, 0.5, "open"])
def test_gates_are_forced_only_open_or_closed(value):
    model = bs.create_model("gated_resnet20")
    with pytest.raises(ValueError, match="force_gates takes 1.0 .*, 0.0 .* or None"):
        bs.force_gates(model, value)
