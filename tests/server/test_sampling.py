"""Client sampling: a seeded stream of participants per round, with simulated dropout."""

from __future__ import annotations

import re

import pytest

from lit_fed.server.sampling import ClientSampler, RoundParticipants


@pytest.mark.parametrize(
    ("num_clients", "fraction", "expected"),
    [
        (20, 0.1, 2),
        (20, 1.0, 20),
        (20, 0.5, 10),
        (20, 0.001, 1),  # tiny fractions still sample one client
        (3, 1e-9, 1),
        (10, 0.33, 3),  # 3.3 rounds to 3
        (10, 0.37, 4),  # 3.7 rounds to 4
        (1, 1.0, 1),
    ],
)
def test_clients_per_round(num_clients: int, fraction: float, expected: int) -> None:
    sampler = ClientSampler(num_clients, fraction=fraction)
    assert sampler.clients_per_round == expected
    assert len(sampler.sample(0).sampled) == expected


def test_full_participation_samples_every_client() -> None:
    assert ClientSampler(7, fraction=1.0, seed=3).sample(11).sampled == list(range(7))


def test_same_seed_and_round_give_the_same_sample() -> None:
    a = ClientSampler(50, fraction=0.2, seed=5)
    b = ClientSampler(50, fraction=0.2, seed=5)
    # Query in different orders: round t depends only on (seed, t), not on the call history.
    forward = [a.sample(t).sampled for t in range(6)]
    backward = [b.sample(t).sampled for t in reversed(range(6))][::-1]
    assert forward == backward
    assert a.sample(3) == b.sample(3)


def test_samples_are_sorted_unique_and_in_range() -> None:
    sampler = ClientSampler(30, fraction=0.3, seed=1)
    for t in range(20):
        sampled = sampler.sample(t).sampled
        assert len(sampled) == 9
        assert len(set(sampled)) == 9
        assert sampled == sorted(sampled)
        assert all(0 <= c < 30 for c in sampled)
        assert all(isinstance(c, int) for c in sampled)


def test_different_rounds_and_seeds_differ() -> None:
    sampler = ClientSampler(20, fraction=0.25, seed=0)
    rounds = [tuple(sampler.sample(t).sampled) for t in range(10)]
    # C(20, 5) = 15504 possible samples: ten rounds collide only if the round is ignored.
    assert len(set(rounds)) >= 9
    other_seed = [tuple(ClientSampler(20, fraction=0.25, seed=1).sample(t).sampled) for t in range(10)]
    assert other_seed != rounds
    # Over many rounds every client gets sampled (P(some client never sampled in 40 rounds) < 1e-3).
    assert set().union(*(sampler.sample(t).sampled for t in range(40))) == set(range(20))


def test_dropout_is_a_subset_and_reporting_is_the_rest() -> None:
    sampler = ClientSampler(40, fraction=0.5, seed=2, dropout=0.4)
    saw_dropout = False
    for t in range(10):
        participants = sampler.sample(t)
        assert set(participants.dropped) <= set(participants.sampled)
        assert participants.reporting == [c for c in participants.sampled if c not in participants.dropped]
        assert set(participants.reporting) | set(participants.dropped) == set(participants.sampled)
        assert not set(participants.reporting) & set(participants.dropped)
        saw_dropout |= bool(participants.dropped)
        assert sampler.sample(t) == participants  # deterministic
    assert saw_dropout


def test_reporting_property() -> None:
    participants = RoundParticipants(sampled=[1, 4, 6, 9], dropped=[6, 1])
    assert participants.reporting == [4, 9]


def test_no_dropout_by_default() -> None:
    sampler = ClientSampler(10, fraction=0.5, seed=0)
    for t in range(5):
        participants = sampler.sample(t)
        assert participants.dropped == []
        assert participants.reporting == participants.sampled


def test_dropout_does_not_change_who_is_sampled() -> None:
    plain = ClientSampler(25, fraction=0.4, seed=9)
    lossy = ClientSampler(25, fraction=0.4, seed=9, dropout=0.5)
    for t in range(5):
        assert plain.sample(t).sampled == lossy.sample(t).sampled


def test_dropout_rate_matches_over_many_rounds() -> None:
    sampler = ClientSampler(100, fraction=1.0, seed=4, dropout=0.3)
    dropped = sum(len(sampler.sample(t).dropped) for t in range(50))
    # 5000 Bernoulli(0.3) draws: std ≈ 0.0065, so ±0.03 is about 4.6 std.
    assert abs(dropped / 5000 - 0.3) < 0.03


@pytest.mark.parametrize("fraction", [0.0, -0.2, 1.5, 2.0])
def test_invalid_fraction_raises_naming_the_value(fraction: float) -> None:
    with pytest.raises(ValueError, match=re.escape(str(fraction))):
        ClientSampler(10, fraction=fraction)


@pytest.mark.parametrize("dropout", [1.0, -0.1, 1.25])
def test_invalid_dropout_raises_naming_the_value(dropout: float) -> None:
    with pytest.raises(ValueError, match=re.escape(str(dropout))):
        ClientSampler(10, fraction=0.5, dropout=dropout)


def test_invalid_num_clients_raises() -> None:
    with pytest.raises(ValueError, match="0"):
        ClientSampler(0)
