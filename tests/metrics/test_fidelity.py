"""Fidelity metrics (Stanton et al. 2021) and weight divergence (Zhao et al. 2018): hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lit_fed.metrics.fidelity import (
    AGREEMENT_KEY,
    KL_KEY,
    DistillationFidelity,
    PredictiveKL,
    TopOneAgreement,
    predictive_kl,
    top1_agreement,
    weight_divergence,
)

STUDENT = [[2.0, 0.0, 1.0], [0.0, 1.0, 0.5], [1.0, 3.0, 0.0], [0.2, 0.1, 0.0]]
TEACHER = [[3.0, 1.0, 0.0], [0.5, 0.0, 2.0], [0.0, 2.0, 1.0], [1.0, 0.0, 0.0]]
# student top-1: 0, 1, 1, 0 — teacher top-1: 0, 2, 1, 0 → 3 of 4 agree


def softmax(values: list[float]) -> list[float]:
    exps = [math.exp(v) for v in values]
    return [e / sum(exps) for e in exps]


def hand_kl(rows: range) -> float:
    total = 0.0
    for i in rows:
        p, q = softmax(TEACHER[i]), softmax(STUDENT[i])
        total += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))
    return total / len(rows)


def test_functional_values_equal_hand_computed():
    s, t = torch.tensor(STUDENT), torch.tensor(TEACHER)
    assert top1_agreement(s, t).item() == pytest.approx(0.75)
    assert predictive_kl(s, t).item() == pytest.approx(hand_kl(range(4)), rel=1e-6)
    assert predictive_kl(t, t).item() == pytest.approx(0.0, abs=1e-7)


def test_metrics_pool_over_batches_and_merge_exactly():
    s, t = torch.tensor(STUDENT), torch.tensor(TEACHER)
    agreement, kl = TopOneAgreement(), PredictiveKL()
    agreement.update(s[:1], t[:1])  # unequal batches: a mean of batch means would be wrong
    agreement.update(s[1:], t[1:])
    kl.update(s[:1], t[:1])
    kl.update(s[1:], t[1:])
    assert agreement.compute().item() == pytest.approx(0.75)
    assert kl.compute().item() == pytest.approx(hand_kl(range(4)), rel=1e-6)
    # the server can merge two clients' states into the pooled value
    first, second = TopOneAgreement(), TopOneAgreement()
    first.update(s[:3], t[:3])
    second.update(s[3:], t[3:])
    first.merge_state(second)
    assert first.compute().item() == pytest.approx(0.75)


def test_distillation_fidelity_bundle():
    s, t = torch.tensor(STUDENT), torch.tensor(TEACHER)
    fidelity = DistillationFidelity()
    assert fidelity.compute() == {}
    batch = fidelity(s[:2], t[:2])
    assert batch[AGREEMENT_KEY].item() == pytest.approx(0.5)
    assert batch[KL_KEY].item() == pytest.approx(hand_kl(range(2)), rel=1e-6)
    fidelity.update(s[2:], t[2:])
    pooled = fidelity.compute()
    assert set(pooled) == {"fidelity_agreement", "fidelity_kl"}
    assert pooled[AGREEMENT_KEY] == pytest.approx(0.75)
    assert pooled[KL_KEY] == pytest.approx(hand_kl(range(4)), rel=1e-6)
    assert fidelity.state_dict() == {}  # nothing of it is uploaded or checkpointed with a client
    fidelity.reset()
    assert fidelity.compute() == {}
    assert DistillationFidelity(prefix="server_").keys == ("server_fidelity_agreement", "server_fidelity_kl")


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="logits"):
        top1_agreement(torch.zeros(2, 3), torch.zeros(2, 4))


def test_weight_divergence_equals_hand_computed_value():
    central = {"w": torch.tensor([3.0, 4.0]), "b": torch.tensor([0.0]), "n": torch.tensor(7)}
    fl = {"w": torch.tensor([3.0, 5.0]), "b": torch.tensor([2.0]), "n": torch.tensor(1)}
    # ‖(0, 1, 2)‖ / ‖(3, 4, 0)‖ = √5 / 5; the integer counter is skipped
    assert weight_divergence(fl, central) == pytest.approx(math.sqrt(5) / 5)
    assert weight_divergence(fl, central, keys=["w"]) == pytest.approx(1 / 5)
    assert weight_divergence(central, central) == 0.0


def test_weight_divergence_of_modules_and_errors():
    torch.manual_seed(0)
    a, b = nn.Linear(3, 2), nn.Linear(3, 2)
    pa, pb = [p.detach().double() for p in a.parameters()], [q.detach().double() for q in b.parameters()]
    expected = math.sqrt(sum(float((p - q).pow(2).sum()) for p, q in zip(pa, pb, strict=True))) / math.sqrt(
        sum(float(q.pow(2).sum()) for q in pb)
    )
    assert weight_divergence(a, b) == pytest.approx(expected, rel=1e-9)
    with pytest.raises(KeyError, match="bias"):
        weight_divergence({"weight": a.weight}, b)
    with pytest.raises(ValueError, match="shape"):
        weight_divergence({"w": torch.zeros(2)}, {"w": torch.ones(3)})
    with pytest.raises(ValueError, match="zero norm"):
        weight_divergence({"w": torch.ones(2)}, {"w": torch.zeros(2)})
