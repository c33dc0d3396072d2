"""The wire format: exact round trips and exact byte counts."""

from __future__ import annotations

import pytest
import torch

from lit_fed.client.payloads import ClientUpdate, ServerMessage
from lit_fed.client.serialization import (
    decode_tensors,
    encode_tensors,
    encoded_size,
    message_nbytes,
    update_nbytes,
)
from lit_fed.metrics.features import FeatureStatistics


def _tensors() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "f32": torch.randn(3, 4, generator=generator),
        "f16": torch.randn(5, generator=generator).to(torch.float16),
        "bf16": torch.randn(2, 3, generator=generator).to(torch.bfloat16),
        "f64": torch.randn(2, generator=generator, dtype=torch.float64),
        "i64": torch.tensor([-(2**62), -1, 0, 2**62 + 3], dtype=torch.int64),
        "i32": torch.tensor([[-5, 7]], dtype=torch.int32),
        "u8": torch.tensor([0, 255], dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(3.25),
        "int_scalar": torch.tensor(17, dtype=torch.int64),
        "empty": torch.empty(0, 3),
        "empty_1d": torch.empty(0, dtype=torch.int64),
        "non_contiguous": torch.arange(6.0).reshape(2, 3).t(),
        "ünïcode/key": torch.tensor([1.5]),
    }


def test_round_trip_is_exact_for_every_dtype_and_shape() -> None:
    tensors = _tensors()
    decoded = decode_tensors(encode_tensors(tensors))
    assert list(decoded) == list(tensors)
    for key, original in tensors.items():
        got = decoded[key]
        assert got.dtype == original.dtype, key
        assert got.shape == original.shape, key
        assert torch.equal(got, original), key


def test_round_trip_preserves_nan_and_inf_bit_patterns() -> None:
    tensors = {"x": torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0])}
    decoded = decode_tensors(encode_tensors(tensors))["x"]
    assert torch.equal(decoded.view(torch.int32), tensors["x"].view(torch.int32))


def test_decoded_tensors_do_not_share_memory_with_the_input() -> None:
    data = encode_tensors({"x": torch.tensor([1.0, 2.0])})
    decoded = decode_tensors(data)
    decoded["x"].add_(1)
    assert torch.equal(decode_tensors(data)["x"], torch.tensor([1.0, 2.0]))


def test_encoded_size_hand_computed() -> None:
    # u32 count (4) | u16 key length (2) + "a" (1) + dtype (1) + ndim (1) + 1 × u32 shape (4) + 2 × 4 bytes.
    assert len(encode_tensors({"a": torch.tensor([1.0, 2.0])})) == 4 + (2 + 1 + 1 + 1 + 4 + 8)
    assert encoded_size({"a": torch.tensor([1.0, 2.0])}) == 21
    # 0-dim int64: no shape entries, 8 data bytes: 4 + (2 + 2 + 2 + 0 + 8).
    assert encoded_size({"ab": torch.tensor(5)}) == 18
    # empty (0, 3) float16: two shape entries, no data: 4 + (2 + 1 + 2 + 8 + 0).
    assert encoded_size({"e": torch.empty(0, 3, dtype=torch.float16)}) == 17
    assert encoded_size({}) == len(encode_tensors({})) == 4


def test_encoded_size_equals_encoded_length() -> None:
    tensors = _tensors()
    assert len(encode_tensors(tensors)) == encoded_size(tensors)
    for key, tensor in tensors.items():
        assert len(encode_tensors({key: tensor})) == encoded_size({key: tensor}), key


def test_unsupported_dtype_raises() -> None:
    with pytest.raises(TypeError, match="z"):
        encode_tensors({"z": torch.zeros(2, dtype=torch.complex64)})
    with pytest.raises(TypeError, match="z"):
        encoded_size({"z": torch.zeros(2, dtype=torch.complex64)})


def test_update_nbytes_counts_state_and_extras() -> None:
    state = {
        "fc.weight": torch.randn(4, 3),
        "fc.bias": torch.randn(4),
        "bn.num_batches_tracked": torch.tensor(2),
    }
    label_counts = torch.tensor([3, 0, 7, 1, 9], dtype=torch.int64)
    extras = {"proto": torch.randn(2, 5, dtype=torch.float16), "label_counts": label_counts}
    update = ClientUpdate(client_id=0, round=0, state=state, num_samples=10, metrics={"train_loss": 1.0}, extras=extras)
    wire = {**{f"state/{k}": v for k, v in state.items()}, **{f"extras/{k}": v for k, v in extras.items()}}
    assert update_nbytes(update) == len(encode_tensors(wire))

    # Each extra adds exactly its own record ("extras/label_counts" is 19 bytes of key; 5 int64 counts).
    bare = ClientUpdate(client_id=0, round=0, state=state, num_samples=10)
    with_counts = ClientUpdate(0, 0, state, 10, extras={"label_counts": label_counts})
    assert update_nbytes(with_counts) - update_nbytes(bare) == 2 + 19 + 2 + 4 + 5 * 8
    # Metrics are plain floats and are not counted.
    with_metrics = ClientUpdate(client_id=0, round=0, state=state, num_samples=10, metrics={"a": 1.0, "b": 2.0})
    assert update_nbytes(with_metrics) == update_nbytes(bare)


def test_message_nbytes_counts_state_and_tensor_extras() -> None:
    state = {"w": torch.randn(2, 2), "n": torch.tensor(1)}
    extras = {"gen.weight": torch.randn(3, dtype=torch.bfloat16)}
    message = ServerMessage(round=1, client_id=2, state=state, extras=extras, config={"lr": 0.1})
    wire = {**{f"state/{k}": v for k, v in state.items()}, **{f"extras/{k}": v for k, v in extras.items()}}
    assert message_nbytes(message) == len(encode_tensors(wire))
    # 4 + ("state/w": 2 + 7 + 2 + 8 + 16) + ("state/n": 2 + 7 + 2 + 0 + 8)
    #   + ("extras/gen.weight": 2 + 17 + 2 + 4 + 6)
    assert message_nbytes(message) == 4 + 35 + 19 + 31
    assert message_nbytes(ServerMessage(round=1, client_id=2, state=state)) == 4 + 35 + 19


@pytest.mark.parametrize(
    ("means_shape", "cov_shape", "counts_shape"),
    [((3, 2), (2, 2, 2), (3,)), ((2, 2), (3, 2, 2), (3,)), ((3, 2), (3, 2, 2), (4,))],
)
def test_feature_statistics_reject_mismatched_class_counts(means_shape, cov_shape, counts_shape) -> None:
    with pytest.raises(ValueError, match="class count"):
        FeatureStatistics(
            means=torch.zeros(means_shape),
            covariances=torch.zeros(cov_shape),
            counts=torch.zeros(counts_shape),
        )
