import pytest

from batchshaping.schedules import linear_decay, linear_ramp, step_lr


def test_batch_shaping_weight_decays_linearly_to_zero():
    assert linear_decay(0.0, 0.75, 0.2) == 0.75
    assert linear_decay(0.1, 0.75, 0.2) == pytest.approx(0.375)
    assert linear_decay(0.2, 0.75, 0.2) == 0.0 and linear_decay(0.9, 0.75, 0.2) == 0.0


def test_l0_weight_ramps_between_start_and_end():
    assert linear_ramp(0.1, 2.0, 0.2, 0.6) == 0.0
    assert linear_ramp(0.4, 2.0, 0.2, 0.6) == pytest.approx(1.0)
    assert linear_ramp(0.8, 2.0, 0.2, 0.6) == 2.0


def test_step_lr_multiplies_at_each_milestone():
    ms = [0.6, 0.75, 0.9]
    assert [step_lr(t, 0.1, ms, 0.1) for t in (0.0, 0.59, 0.6, 0.8, 0.95)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.001, 0.0001]
    )
    assert step_lr(0.05, 0.1, ms, 0.1, warmup=0.1) == pytest.approx(0.05)
