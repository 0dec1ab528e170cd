import math
from statistics import NormalDist

import numpy as np
import pytest
import scipy.stats
import torch

from batchshaping.analysis import (
    collect,
    gate_classes,
    per_class_means,
    per_layer_counts,
    rankdata,
    spearman,
)
from batchshaping.analysis.stats import (
    auc,
    class_fractions,
    extremes,
    mcnemar_exact,
    paired_accuracy,
    spearman_interval,
    split_layers,
)
from batchshaping.data import TensorLoader
from batchshaping.evaluation import evaluate, gate_class_fractions
from batchshaping.gates import force_gates, gate_modules
from batchshaping.macs import MacCounter
from batchshaping.models import GateConfig
from batchshaping.models.cifar_resnet import CifarResNet
from tests.conftest import tiny_data


def tiny_model(seed: int = 0) -> CifarResNet:
    torch.manual_seed(seed)
    return CifarResNet(8, num_classes=4, gate=GateConfig()).eval()


def loader(n: int = 24, seed: int = 3) -> TensorLoader:
    x, y = tiny_data(n, seed)
    return TensorLoader(x, y, 10, False, "cpu", [0.5] * 3, [0.25] * 3)


def test_gate_classes_use_the_papers_strict_thresholds():
    rate = [1.0, 0.995, 0.99, 0.5, 0.01, 0.005, 0.0]
    assert list(gate_classes(rate)) == [
        "always_on", "always_on", "conditional", "conditional", "conditional", "always_off", "always_off",
    ]  # fmt: skip


def test_per_layer_counts_of_a_planted_mask():
    n = 100
    mask = np.zeros((n, 7), dtype=np.uint8)
    mask[:, 0] = 1  # layer 0: always on
    mask[:50, 2] = 1  # conditional (50%)
    mask[:99, 3] = 1  # 99% is not > 99%: conditional
    mask[:1, 4] = 1  # layer 1: 1% is not < 1%: conditional; gate 5 never opens: always off
    mask[:, 6] = 1  # always on
    rate = mask.mean(0)
    assert rate[3] == pytest.approx(0.99) and rate[1] == 0.0
    counts = per_layer_counts(rate, [4, 3])
    assert counts == [
        {"always_on": 1, "always_off": 1, "conditional": 2, "total": 4},
        {"always_on": 1, "always_off": 1, "conditional": 1, "total": 3},
    ]
    assert class_fractions(counts[0]) == {"always_on": 0.25, "always_off": 0.25, "conditional": 0.5}
    with pytest.raises(ValueError, match="sum to 8"):
        per_layer_counts(rate, [4, 4])


def test_spearman_and_ranks_match_scipy_with_ties():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, 200).astype(float)  # many ties, like discrete MAC counts
    b = a + rng.normal(0, 2, 200)
    assert np.allclose(rankdata(a), scipy.stats.rankdata(a))
    assert spearman(a, b) == pytest.approx(scipy.stats.spearmanr(a, b).statistic, abs=1e-12)
    assert spearman(a, -b) == pytest.approx(scipy.stats.spearmanr(a, -b).statistic, abs=1e-12)
    assert spearman(b, np.exp(b)) == pytest.approx(1.0)  # rank-based: any monotone map gives 1
    assert math.isnan(spearman(np.ones(10), np.arange(10)))  # constant (dense model MACs)
    with pytest.raises(ValueError, match="same length"):
        spearman([1, 2], [1, 2, 3])


def test_spearman_interval_covers_the_population_correlation_95_percent_of_the_time():
    rng = np.random.default_rng(1)
    r, n, trials = 0.3, 100, 400
    population = 6 / math.pi * math.asin(r / 2)  # Spearman's rho of a bivariate normal with Pearson r
    cov = [[1, r], [r, 1]]
    hits = 0
    for _ in range(trials):
        x = rng.multivariate_normal([0, 0], cov, n)
        lo, hi = spearman_interval(spearman(x[:, 0], x[:, 1]), n)
        hits += lo <= population <= hi
    assert 0.92 <= hits / trials <= 0.98
    lo, hi = spearman_interval(0.0, 10_003)  # at 0 the half-width is z * sqrt(1 / (n - 3))
    assert hi == pytest.approx(-lo) and hi == pytest.approx(math.tanh(1.959964 / 100), rel=1e-5)
    assert all(math.isnan(v) for v in spearman_interval(float("nan"), 100) + spearman_interval(0.5, 3))


def test_auc_is_mann_whitney_u_over_the_pairs_and_its_interval_covers_95_percent():
    rng = np.random.default_rng(2)
    v = rng.integers(0, 6, 300).astype(float)  # ties count half
    pos = rng.random(300) < 0.3
    want = scipy.stats.mannwhitneyu(v[pos], v[~pos]).statistic / (pos.sum() * (~pos).sum())
    assert auc(v, pos)[0] == pytest.approx(want, abs=1e-12)
    assert auc([1.0, 2.0, 3.0, 4.0], [False, False, True, True])[0] == 1.0
    assert auc([1.0, 1.0], [True, False])[0] == 0.5
    assert all(math.isnan(x) for x in auc([1.0, 2.0], [True, True]))
    shift, hits, trials = 0.5, 0, 400
    population = NormalDist().cdf(shift / math.sqrt(2))  # P(X1 > X0), X1 ~ N(shift, 1), X0 ~ N(0, 1)
    for _ in range(trials):
        values = np.concatenate([rng.normal(shift, 1, 80), rng.normal(0, 1, 120)])
        a, lo, hi = auc(values, np.arange(200) < 80)
        assert lo <= a <= hi
        hits += lo <= population <= hi
    assert 0.92 <= hits / trials <= 0.98
    with pytest.raises(ValueError, match="same length"):
        auc([1.0, 2.0], [True])


def test_mcnemar_is_scipys_exact_binomial_test_of_the_discordant_images():
    for only_a, only_b in ((0, 0), (3, 0), (5, 5), (12, 30), (180, 145), (1400, 1300)):
        want = 1.0 if only_a + only_b == 0 else scipy.stats.binomtest(only_a, only_a + only_b).pvalue
        assert mcnemar_exact(only_a, only_b) == pytest.approx(want, rel=1e-9, abs=1e-300)
    assert mcnemar_exact(10, 2) == mcnemar_exact(2, 10)
    with pytest.raises(ValueError, match=">= 0"):
        mcnemar_exact(-1, 3)


def test_paired_accuracy_counts_the_four_cells_and_its_interval_covers_95_percent():
    a = np.array([1, 1, 1, 0, 0, 1, 0, 1], bool)
    b = np.array([1, 0, 0, 1, 0, 1, 0, 1], bool)
    r = paired_accuracy(a, b)
    assert (r["n"], r["both"], r["only_a"], r["only_b"], r["neither"]) == (8, 3, 2, 1, 2)
    assert r["diff"] == pytest.approx(1 / 8) and r["low"] < 1 / 8 < r["high"]
    assert r["p"] == pytest.approx(1.0)
    # two classifiers of accuracy ~0.92 that agree on most images, A 0.4 points better: the truth is 0.004
    rng, hits, trials = np.random.default_rng(3), 0, 400
    for _ in range(trials):
        u = rng.random(5000)
        a = u < 0.92
        b = (u < 0.90) | ((u >= 0.92) & (u < 0.94))  # B misses [0.90, 0.92) and gets [0.92, 0.936) right
        b &= ~((u >= 0.936) & (u < 0.94))
        r = paired_accuracy(a, b)
        assert r["low"] <= r["diff"] <= r["high"]
        hits += r["low"] <= 0.004 <= r["high"]
    assert 0.92 <= hits / trials <= 0.98
    with pytest.raises(ValueError, match="one length"):
        paired_accuracy([True], [True, False])


def test_per_class_means_by_hand():
    got = per_class_means([1, 2, 3, 4, 10], [0, 0, 1, 1, 3], 4)
    assert got[:2].tolist() == [1.5, 3.5] and math.isnan(got[2]) and got[3] == 10


def test_extremes_break_ties_by_the_tiebreak_then_by_index():
    macs = [5, 7, 7, 1, 1, 3, 7]
    most, fewest = extremes(macs, 3)
    assert most.tolist() == [1, 2, 6] and fewest.tolist() == [3, 4, 5]
    entropy = [0, 0.1, 0.9, 0.5, 0.2, 0, 0.5]
    most, fewest = extremes(macs, 3, tiebreak=entropy)
    assert most.tolist() == [2, 6, 1] and fewest.tolist() == [4, 3, 5]


@pytest.mark.parametrize("value", [1.0, 0.0])
def test_forced_gates_are_all_always_on_or_all_always_off(value):
    model = tiny_model()
    counter = MacCounter(model, (3, 16, 16))
    force_gates(model, value)
    res = collect(model, loader(), counter)
    force_gates(model, None)
    want = "always_on" if value else "always_off"
    counts = per_layer_counts(res.on_rate, res.layer_sizes)
    assert all(c[want] == c["total"] for c in counts) and len(counts) == 3
    assert set(gate_classes(res.on_rate)) == {want}
    gated = sum(counter.layers[f"{n.removesuffix('.gate')}.conv{i}"] for n in res.layer_names for i in (1, 2))
    expected = counter.dense + counter.gate_macs - (0 if value else gated)
    assert res.num_images == 24 and np.all(res.macs == expected)
    # The histograms count every (image, gate) probability once.
    assert res.prob_hist.sum(1).tolist() == [24 * s for s in res.layer_sizes]


def test_per_image_records_add_up_to_the_evaluation_metrics():
    model = tiny_model(1)
    with torch.no_grad():  # spread the gate logits around 0 so the gates are input-dependent
        for _, gate in gate_modules(model):
            gate.fc2.weight.normal_(0, 2.0)
            gate.fc2.bias.normal_(0, 0.5)
    counter = MacCounter(model, (3, 16, 16))
    res = collect(model, loader(40), counter)
    ev = evaluate(model, loader(40), counter)
    assert ev["images"] == len(res.correct) == 40
    assert res.correct.mean() == ev["top1"] and res.top5_correct / 40 == ev["top5"]
    assert res.macs.mean() == pytest.approx(ev["macs_mean"]) and res.loss.mean() == pytest.approx(
        ev["test_loss"]
    )
    assert gate_class_fractions(torch.from_numpy(res.on_rate)) == pytest.approx(
        {k: ev[k] for k in ("gates_always_on", "gates_always_off", "gates_conditional", "gate_on_rate_mean")}
    )
    assert np.ptp(res.macs) > 0  # the planted gates do vary per image
    on_rates = split_layers(res.on_rate, res.layer_sizes)
    assert [len(r) for r in on_rates] == res.layer_sizes


def test_per_image_predictions_break_ties_as_the_top1_metric_does():
    # every image's logits tie between classes 3 and 7 (bf16 logits tie often); the label is one of them
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 10))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.copy_(torch.tensor([0, 0, 0, 1.0, 0, 0, 0, 1.0, 0, 0]))
    x, _ = tiny_data(20, 3)
    y = torch.tensor([3, 7] * 10)
    data = TensorLoader(x, y, 10, False, "cpu", [0.5] * 3, [0.25] * 3)
    counter = MacCounter(model, (3, 16, 16))
    res, ev = collect(model, data, counter), evaluate(model, data, counter)
    assert res.correct.mean() == ev["top1"] == 0.5
    tied = model(torch.zeros(1, 3, 16, 16))
    assert {int(tied.argmax(1)), int(res.pred[0])} == {3, 7}  # argmax would have disagreed with the metric
