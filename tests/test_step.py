"""The training step: weight-decay groups, the loss-weight schedule and the gate losses of TrainStep."""

import pytest
import torch

from batchshaping.macs import MacCounter
from batchshaping.models import GateConfig
from batchshaping.models.cifar_resnet import CifarResNet
from batchshaping.step import STATS, TrainStep, param_groups, schedule, sgd
from batchshaping.tasks import ClassificationTask
from tests.conftest import tiny_config


def tiny_model(seed: int = 0) -> CifarResNet:
    torch.manual_seed(seed)
    return CifarResNet(8, num_classes=4, gate=GateConfig())


def test_weight_decay_skips_bn_and_gate_parameters():
    model = tiny_model()
    decay, no_decay = param_groups(model, 5e-4, decay_bn_and_gates=False)
    decayed = {id(p) for p in decay["params"]}
    assert id(model.conv1.weight) in decayed and id(model.bn1.weight) not in decayed
    assert id(model.layer1[0].gate.fc1.weight) not in decayed


def test_macs_target_pulls_the_mean_expected_macs_towards_the_target():
    """A few steps on random data with the budget term alone (and a high lr on the gates): the expected
    MAC ratio moves from ~1 (gates start open) down towards 0.5, and the term is logged."""
    cfg = tiny_config(epochs=1)
    cfg.loss.bs_weight, cfg.loss.l0_weight = 0.0, 0.0
    cfg.loss.macs_target, cfg.loss.macs_weight, cfg.loss.l0_start = 0.5, 50.0, 0.0
    model = tiny_model()
    counter = MacCounter(model, (3, 16, 16))
    opt = sgd(model, cfg)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    step = TrainStep(model, model, opt, scaler, ClassificationTask(), counter, cfg, None)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 3, 16, 16, generator=g), torch.randint(0, 4, (16,), generator=g)
    ratio = STATS.index("train_mac_ratio")
    first = step(x, y, 0.5, 0.0, 0.0, 50.0)
    for _ in range(30):
        last = step(x, y, 0.5, 0.0, 0.0, 50.0)
    start, end = (s[ratio] / s[-1] for s in (first, last))
    assert start > 0.9 and abs(end - 0.5) < abs(start - 0.5) / 2
    assert first[STATS.index("train_macs")] > 0


def test_schedule_ramps_the_macs_weight_like_l0_and_only_with_a_target():
    cfg = tiny_config(epochs=10)
    cfg.loss.l0_start, cfg.loss.l0_end, cfg.loss.macs_weight = 0.2, 0.6, 20.0
    assert schedule(cfg, 0.5)[3] == 0.0  # no target: no term
    cfg.loss.macs_target = 0.585
    assert [schedule(cfg, t)[3] for t in (0.1, 0.4, 0.6, 0.9)] == pytest.approx([0, 10, 20, 20])


def test_the_budget_term_pulls_the_expected_macs_to_the_goal_tensor():
    """macs_term is (expected MAC ratio - goal)^2 with the goal read from a device tensor (changed in place
    by the calibration, so a compiled step sees it), and has a gradient for every gate probability."""
    cfg = tiny_config()
    cfg.loss.macs_target = 0.5
    model = tiny_model()
    counter = MacCounter(model, (3, 16, 16))
    step = TrainStep(model, model, sgd(model, cfg), None, ClassificationTask(), counter, cfg, None)
    model(torch.randn(4, 3, 16, 16))
    from batchshaping.gates import gate_outputs

    outs = [o._replace(probs=o.probs.detach().requires_grad_()) for o in gate_outputs(model)]
    ratio = counter.conditional(outs, expected=True).mean().item() / counter.dense
    assert step.macs_term(outs).item() == pytest.approx((ratio - 0.5) ** 2, rel=1e-5)
    step.macs_goal.fill_(0.4)
    loss = step.macs_term(outs)
    assert loss.item() == pytest.approx((ratio - 0.4) ** 2, rel=1e-5)
    loss.backward()
    assert all(o.probs.grad is not None and o.probs.grad.abs().sum() > 0 for o in outs)
