"""The payload codec: exact round trips, byte counts, and refusal of what it cannot (or must not) rebuild."""

from dataclasses import dataclass

import pytest
import torch

from lit_fed.client.codec import pack, packed_nbytes, spec_from_text, spec_to_text, unpack
from lit_fed.client.payloads import ClientUpdate, Payload, ServerMessage
from lit_fed.client.serialization import encode_tensors
from lit_fed.metrics.features import FeatureStatistics


@dataclass
class Nested(Payload):
    message: ServerMessage
    numbers: tuple[float, ...]
    table: dict[int, list[str]]
    missing: object = None


def roundtrip(value):
    tensors, spec = pack(value)
    return unpack(dict(tensors), spec_from_text(spec_to_text(spec)))


def test_payloads_round_trip_exactly():
    message = ServerMessage(
        round=3,
        client_id=1,
        state={"w": torch.randn(2, 3), "n": torch.tensor(7), "h": torch.randn(4, dtype=torch.bfloat16)},
        extras={"g": torch.arange(5)},
        config={"lr": 0.1, "flag": True, "nested": {"a": [1, 2]}},
    )
    value = Nested(message, (1.5, float("nan"), float("inf")), {0: ["x"], 7: []})
    back = roundtrip(value)
    assert isinstance(back, Nested) and isinstance(back.message, ServerMessage)
    assert back.message.round == 3 and back.message.config == message.config and back.missing is None
    for key, tensor in message.state.items():
        assert back.message.state[key].dtype == tensor.dtype and torch.equal(back.message.state[key], tensor)
    assert torch.equal(back.message.extras["g"], message.extras["g"])
    assert back.numbers[0] == 1.5 and back.numbers[1] != back.numbers[1] and back.numbers[2] == float("inf")
    assert isinstance(back.numbers, tuple) and back.table == {0: ["x"], 7: []}  # int keys stay ints


def test_packed_bytes_are_those_of_the_tensors_by_path():
    stats = FeatureStatistics(torch.randn(3, 2), torch.randn(3, 2, 2), torch.arange(3))
    tensors, _ = pack(stats)
    assert sorted(tensors) == ["counts", "covariances", "means"]
    assert packed_nbytes(stats) == len(encode_tensors(tensors))
    update = ClientUpdate(0, 1, {"w": torch.zeros(2)}, 4, extras={"e": torch.ones(1)})
    assert sorted(pack(update)[0]) == ["extras/e", "state/w"]
    assert packed_nbytes(None) == 4  # an empty record: the count only


def test_unregistered_or_unknown_classes_are_refused():
    with pytest.raises(TypeError, match="not a lit_fed payload class"):
        unpack({}, ["p", "builtins:dict", []])
    with pytest.raises(TypeError, match="cannot be imported"):
        unpack({}, ["p", "no_such_module_xyz:Thing", []])
    with pytest.raises(TypeError, match="cannot send a function"):
        pack({"f": lambda: 0})
    with pytest.raises(ValueError, match="missing"):
        unpack({}, ["t", "absent"])


def test_ambiguous_paths_are_refused_not_overwritten():
    with pytest.raises(ValueError, match="share the path 'a/b'"):
        pack({"a": {"b": torch.zeros(1)}, "a/b": torch.ones(1)})
