"""Robust aggregation rules: hand-computed values, outlier resistance, and use inside a federated loop."""

import pytest
import torch

from lit_fed.loop.federated_loop import FederatedLoop
from lit_fed.server import FedAdam, FedAvg, WeightedMean
from lit_fed.server.robust import CenteredClipping, CoordinateMedian, Krum, TrimmedMean

UNIFORM3 = torch.full((3,), 1 / 3, dtype=torch.float64)


def states_of(rows, counts=None):
    """One state per row: a float vector ``w`` and an integer counter ``n``."""
    counts = counts if counts is not None else list(range(len(rows)))
    return [
        {"w": torch.tensor(row, dtype=torch.float32), "n": torch.tensor(c, dtype=torch.int64)}
        for row, c in zip(rows, counts, strict=True)
    ]


def uniform(n):
    return torch.full((n,), 1 / n, dtype=torch.float64)


def test_median_ignores_one_huge_outlier():
    honest = [[1.0, 2.0, 3.0], [2.0, 3.0, 1.0], [2.0, 1.0, 2.0], [3.0, 2.0, 2.0]]
    honest_median = torch.quantile(torch.tensor(honest), 0.5, dim=0)  # mean of the two middle values: [2, 2, 2]
    for magnitude in (1e3, 1e9):
        out = CoordinateMedian()(states_of([*honest, [magnitude, -magnitude, magnitude]]), uniform(5))
        assert torch.equal(out["w"], honest_median)
    assert torch.equal(CoordinateMedian()(states_of(honest), uniform(4))["w"], honest_median)
    even = CoordinateMedian()(states_of([[1.0], [2.0], [3.0], [10.0]]), uniform(4))
    assert even["w"].item() == 2.5


def test_trimmed_mean_equals_the_hand_computed_value():
    rows = [[1.0, 5.0], [2.0, -50.0], [3.0, 0.0], [4.0, 1.0], [100.0, 2.0]]
    out = TrimmedMean(beta=0.2)(states_of(rows), uniform(5))  # k = 1 per side
    assert out["w"].tolist() == [3.0, 1.0]  # mean(2, 3, 4), mean(0, 1, 2)
    assert TrimmedMean(beta=0.2).num_trimmed(5) == 1 and TrimmedMean(beta=0.25).num_trimmed(10) == 2
    plain = TrimmedMean(beta=0.0)(states_of(rows), uniform(5))
    torch.testing.assert_close(plain["w"], torch.tensor(rows).mean(0))
    with pytest.raises(ValueError, match="beta"):
        TrimmedMean(beta=0.5)


def test_krum_selects_the_honest_update_and_multi_krum_averages_the_best():
    # squared-distance scores over the n - f - 2 = 2 nearest: a 2, b 3, c 3, d 10, attacker e huge
    rows = [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [2.0, 2.0], [100.0, 100.0]]
    states = states_of(rows)
    krum = Krum(num_byzantine=1)
    torch.testing.assert_close(
        krum.scores(torch.tensor(rows, dtype=torch.float64))[:4], torch.tensor([2.0, 3, 3, 10]).double()
    )
    assert krum.select(states) == [0]
    assert Krum(1)(states, uniform(5))["w"].tolist() == [0.0, 0.0]
    multi = Krum(num_byzantine=1, multi=3)
    assert multi.select(states) == [0, 1, 2]
    torch.testing.assert_close(multi(states, uniform(5))["w"], torch.tensor([1 / 3, 1 / 3]))


def test_krum_needs_more_than_2f_plus_2_updates():
    with pytest.raises(ValueError, match=r"n=5 updates with f=2"):
        Krum(num_byzantine=2)(states_of([[0.0]] * 5), uniform(5))
    with pytest.raises(ValueError, match="multi"):
        Krum(num_byzantine=0, multi=4)(states_of([[0.0]] * 3), uniform(3))
    with pytest.raises(ValueError, match="num_byzantine"):
        Krum(num_byzantine=-1)


def test_centered_clipping_moves_at_most_tau_per_iteration_from_the_reference():
    reference = {"w": torch.tensor([1.0, -1.0]), "n": torch.tensor(0)}
    deltas = [[0.1, 0.0], [0.0, 0.1], [0.1, 0.1], [100.0, 0.0]]
    states = states_of([[r + d for r, d in zip(reference["w"].tolist(), delta, strict=True)] for delta in deltas])
    tau = 1.0
    previous = reference["w"].double()
    for iterations in range(1, 6):
        out = CenteredClipping(radius=tau, iterations=iterations)(states, uniform(4), reference=reference)
        current = out["w"].double()
        assert float((current - previous).norm()) <= tau + 1e-6
        previous = current
    one = CenteredClipping(radius=tau, iterations=1)(states, uniform(4), reference=reference)
    by_hand = reference["w"] + torch.tensor([0.1 + 0.0 + 0.1 + 1.0, 0.0 + 0.1 + 0.1 + 0.0]) / 4  # outlier clipped to τ
    torch.testing.assert_close(one["w"], by_hand)
    assert float((one["w"] - reference["w"]).norm()) < 0.4  # the mean would have moved by 25


def test_centered_clipping_adaptive_radius_is_the_median_distance():
    reference = {"w": torch.zeros(2), "n": torch.tensor(0)}
    deltas = [[3.0, 0.0], [0.0, 1.0], [2.0, 0.0], [0.0, -200.0], [0.5, 0.0]]  # norms 3, 1, 2, 200, 0.5: median 2
    out = CenteredClipping(radius=None, iterations=1)(states_of(deltas), torch.full((5,), 0.2), reference=reference)
    clipped = [[2.0, 0.0], [0.0, 1.0], [2.0, 0.0], [0.0, -2.0], [0.5, 0.0]]  # each clipped to norm <= 2
    torch.testing.assert_close(out["w"], torch.tensor(clipped).mean(0))
    fixed = CenteredClipping(radius=2.0, iterations=1)(states_of(deltas), torch.full((5,), 0.2), reference=reference)
    torch.testing.assert_close(out["w"], fixed["w"])  # here the same as the fixed radius 2
    # scale-free: multiplying every delta by 1000 multiplies the aggregate by 1000 (a fixed radius would not)
    big = CenteredClipping()(states_of([[1000 * x for x in d] for d in deltas]), torch.full((5,), 0.2), reference)
    torch.testing.assert_close(big["w"], 1000 * out["w"])


def test_centered_clipping_equals_the_mean_when_all_deltas_are_within_tau():
    reference = {"w": torch.tensor([0.5, 0.5, 0.5]), "n": torch.tensor(0)}
    rows = [[0.6, 0.5, 0.4], [0.5, 0.7, 0.5], [0.4, 0.5, 0.6]]
    out = CenteredClipping(radius=10.0, iterations=3)(states_of(rows), UNIFORM3, reference=reference)
    torch.testing.assert_close(out["w"], torch.tensor(rows).mean(0))
    with pytest.raises(ValueError, match="reference"):
        CenteredClipping(1.0)(states_of(rows), UNIFORM3)
    with pytest.raises(ValueError, match="radius"):
        CenteredClipping(radius=0.0)


@pytest.mark.parametrize(
    "rule",
    [CoordinateMedian(), TrimmedMean(0.2), Krum(1, multi=2), CenteredClipping(1.0)],
    ids=lambda r: type(r).__name__,
)
def test_robust_rules_ignore_weights_and_pass_integers_from_the_heaviest_update(rule):
    rows = [[0.0, 1.0], [1.0, 2.0], [2.0, 0.0], [0.5, 0.5], [1.5, 1.5]]
    states = states_of(rows, counts=[10, 11, 12, 13, 14])
    reference = {"w": torch.zeros(2), "n": torch.tensor(0)}
    skewed = torch.tensor([0.9, 0.025, 0.025, 0.025, 0.025], dtype=torch.float64)
    a = rule(states, skewed, reference=reference)
    b = rule(states, uniform(5), reference=reference)
    assert torch.equal(a["w"], b["w"])
    assert a["n"].item() == 10 and a["n"].dtype == torch.int64
    assert list(a) == ["w", "n"]


@pytest.mark.parametrize(
    ("strategy_cls", "rule"),
    [
        (FedAvg, CoordinateMedian()),
        (FedAvg, TrimmedMean(0.25)),
        (FedAvg, Krum(0, multi=2)),
        (FedAvg, CenteredClipping(1.0, 2)),
        (FedAdam, TrimmedMean(0.25)),
    ],
    ids=lambda x: getattr(x, "__name__", type(x).__name__),
)
def test_each_rule_works_as_a_strategy_aggregator_in_a_loop(
    client_factory, datamodule_factory, tmp_path, strategy_cls, rule
):
    captured = []

    class Capture(strategy_cls):
        def aggregate_train(self, round, updates, global_state):
            captured.append(([u.state for u in updates], dict(global_state)))
            return super().aggregate_train(round, updates, global_state)

    loop = FederatedLoop(
        client_factory(),
        datamodule_factory(),
        Capture(aggregator=rule),
        rounds=2,
        trainer_kwargs={"accelerator": "cpu"},
        run_dir=tmp_path,
        loggers=[],
        progress=False,
        checkpoint_every=0,
        personalized_eval=False,
    )
    initial = loop.client.shared_state()
    result = loop.run()
    assert len(result.history) == 2 and "global_acc" in result.history[-1]
    assert not torch.equal(result.global_state["backbone.conv.weight"], initial["backbone.conv.weight"])
    assert all(torch.isfinite(v).all() for v in result.global_state.values() if v.is_floating_point())
    if strategy_cls is FedAvg:  # the last round's new state is exactly the rule applied to its updates
        states, reference = captured[-1]
        expected = rule(states, uniform(len(states)), reference=reference)
        for key, value in expected.items():
            if value.is_floating_point():
                torch.testing.assert_close(result.global_state[key], value, rtol=0, atol=0)


def test_weighted_mean_is_still_the_default():
    assert isinstance(FedAvg().aggregator, WeightedMean)
