"""FedAvg's aggregation rule (McMahan et al., AISTATS 2017): ``w ← Σ_S p_k w_k`` with ``p_k = n_k / Σ_S n_j``."""

from __future__ import annotations

import pytest
import torch

from lit_fed.client.payloads import ClientUpdate
from lit_fed.server import FedAvg
from lit_fed.server.aggregation import WeightedMean, sample_weights


def _update(client_id: int, state: dict[str, torch.Tensor], num_samples: int) -> ClientUpdate:
    return ClientUpdate(client_id=client_id, round=0, state=state, num_samples=num_samples)


def _global() -> dict[str, torch.Tensor]:
    return {
        "w": torch.zeros(2, 2),
        "b": torch.zeros(2),
        "bn.num_batches_tracked": torch.tensor(0, dtype=torch.int64),
    }


def _two_clients() -> list[ClientUpdate]:
    # Client 0 has 1 sample, client 1 has 3: p = (1/4, 3/4).
    a = {
        "w": torch.tensor([[1.0, 2.0], [3.0, 4.0]]),
        "b": torch.tensor([4.0, -8.0]),
        "bn.num_batches_tracked": torch.tensor(70, dtype=torch.int64),
    }
    b = {
        "w": torch.tensor([[5.0, -2.0], [7.0, 0.0]]),
        "b": torch.tensor([0.0, 4.0]),
        "bn.num_batches_tracked": torch.tensor(10, dtype=torch.int64),
    }
    return [_update(0, a, 1), _update(1, b, 3)]


def test_sample_weights_are_normalized_counts() -> None:
    weights = sample_weights([1, 3])
    assert weights.dtype == torch.float64
    assert weights.tolist() == [0.25, 0.75]
    assert sample_weights([2, 0, 6]).tolist() == [0.25, 0.0, 0.75]


@pytest.mark.parametrize("counts", [[], [0], [0, 0], [3, -3], [-1, 2]])
def test_sample_weights_reject_empty_or_nonpositive_total(counts: list[int]) -> None:
    with pytest.raises(ValueError):
        sample_weights(counts)


def test_fedavg_weighted_mean_is_exact() -> None:
    out = FedAvg().aggregate_train(0, _two_clients(), _global())
    # w = 1/4 * [[1, 2], [3, 4]] + 3/4 * [[5, -2], [7, 0]]
    #   = [[(1 + 15)/4, (2 - 6)/4], [(3 + 21)/4, (4 + 0)/4]]
    expected_w = torch.tensor([[4.0, -1.0], [6.0, 1.0]])
    # b = 1/4 * [4, -8] + 3/4 * [0, 4] = [1, -2 + 3]
    expected_b = torch.tensor([1.0, 1.0])
    assert torch.equal(out["w"], expected_w)
    assert torch.equal(out["b"], expected_b)
    assert out["w"].dtype == torch.float32


def test_fedavg_unweighted_mean_ignores_sample_counts() -> None:
    out = FedAvg(weighted=False).aggregate_train(0, _two_clients(), _global())
    # Plain mean: ([[1, 2], [3, 4]] + [[5, -2], [7, 0]]) / 2 and ([4, -8] + [0, 4]) / 2.
    assert torch.equal(out["w"], torch.tensor([[3.0, 0.0], [5.0, 2.0]]))
    assert torch.equal(out["b"], torch.tensor([2.0, -2.0]))


def test_integer_buffers_come_from_the_update_with_most_samples() -> None:
    updates = _two_clients()
    out = FedAvg().aggregate_train(0, updates, _global())
    # Client 1 (3 samples) reports 10; the weighted mean would be (70 + 30) / 4 = 25, the max 70.
    assert out["bn.num_batches_tracked"].dtype == torch.int64
    assert out["bn.num_batches_tracked"].item() == 10

    # Swap the counts: now client 0 has the most samples and its 70 wins.
    updates[0].num_samples, updates[1].num_samples = 3, 1
    out = FedAvg().aggregate_train(0, updates, _global())
    assert out["bn.num_batches_tracked"].item() == 70


def test_weighted_mean_keeps_the_float_dtype() -> None:
    states = [
        {"x": torch.tensor([1.0, 2.0], dtype=torch.float16)},
        {"x": torch.tensor([3.0, 6.0], dtype=torch.float16)},
    ]
    out = WeightedMean()(states, sample_weights([1, 3]))
    assert out["x"].dtype == torch.float16
    # 1/4 * [1, 2] + 3/4 * [3, 6] = [0.25 + 2.25, 0.5 + 4.5]
    assert out["x"].tolist() == [2.5, 5.0]


def test_keys_absent_from_updates_keep_the_global_value() -> None:
    global_state = {**_global(), "head.weight": torch.tensor([9.0, -9.0])}
    out = FedAvg().aggregate_train(0, _two_clients(), global_state)
    assert set(out) == set(global_state)
    assert torch.equal(out["head.weight"], torch.tensor([9.0, -9.0]))
    assert torch.equal(out["b"], torch.tensor([1.0, 1.0]))


def test_aggregate_does_not_alias_client_tensors() -> None:
    updates = _two_clients()
    out = FedAvg().aggregate_train(0, updates, _global())
    out["bn.num_batches_tracked"].add_(1)
    assert updates[1].state["bn.num_batches_tracked"].item() == 10
