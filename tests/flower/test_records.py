import warnings

import pytest

pytest.importorskip("flwr")

import torch  # noqa: E402

from lit_fed.client.payloads import ClientUpdate, FeatureStatistics, ServerMessage  # noqa: E402
from lit_fed.flower.in_process import over_the_wire  # noqa: E402
from lit_fed.flower.records import (  # noqa: E402
    RAW_STYPE,
    ModelInstruction,
    NodeBookkeeping,
    evaluation_to_recorddict,
    message_to_recorddict,
    model_instruction_to_recorddict,
    read_bookkeeping,
    recorddict_to_evaluation,
    recorddict_to_message,
    recorddict_to_model_instruction,
    recorddict_to_update,
    tensor_to_array,
    update_to_recorddict,
)
from lit_fed.loop.runner import ClientEvaluation  # noqa: E402
from lit_fed.metrics.evaluation import new_accuracy, new_class_stats  # noqa: E402


def tensors():
    g = torch.Generator().manual_seed(0)
    return {
        "conv.weight": torch.randn(3, 2, 3, 3, generator=g),
        "fc.weight": torch.randn(4, 5, generator=g).t(),  # non-contiguous
        "bn.num_batches_tracked": torch.tensor(7),  # 0-dim int64
        "half": torch.randn(6, generator=g).half(),
        "bf16": torch.randn(2, 3, generator=g).bfloat16(),
        "double": torch.randn(2, generator=g, dtype=torch.float64),
        "mask": torch.tensor([True, False, True]),
        "codes": torch.tensor([-3, 100], dtype=torch.int8),
        "bytes": torch.tensor([0, 255], dtype=torch.uint8),
        "empty": torch.zeros(0, 4),
    }


def assert_same_tensors(actual, expected):
    assert list(actual) == list(expected)  # same keys in the same order
    for key, value in expected.items():
        assert actual[key].dtype == value.dtype, key
        assert actual[key].shape == value.shape, key
        assert torch.equal(actual[key], value), key


@pytest.mark.parametrize("wire", [False, True], ids=["in-memory", "protobuf"])
def test_server_message_round_trips_losslessly(wire):
    message = ServerMessage(
        round=4,
        client_id=11,
        state=tensors(),
        extras={"generated.fc": torch.randn(2, 2), "amplitude": torch.rand(1, 3, 4).bfloat16()},
        config={"lr": 0.05, "steps": 3, "flag": True, "name": "phase", "ids": [1, 2], "none": None, "nest": {"a": 1}},
        wire_nbytes=1234,
    )
    content = message_to_recorddict(message)
    back = recorddict_to_message(over_the_wire(content) if wire else content)
    assert (back.round, back.client_id, back.wire_nbytes) == (4, 11, 1234)
    assert_same_tensors(back.state, message.state)
    assert_same_tensors(back.extras, message.extras)
    assert back.config == message.config and list(back.config) == list(message.config)
    assert type(back.config["flag"]) is bool and type(back.config["steps"]) is int


def test_message_without_optional_fields_round_trips():
    message = ServerMessage(round=0, client_id=0, state={"w": torch.ones(2)})
    back = recorddict_to_message(over_the_wire(message_to_recorddict(message)))
    assert back.extras == {} and back.config == {} and back.wire_nbytes is None
    assert_same_tensors(back.state, message.state)


def test_node_bookkeeping_travels_with_the_train_instruction():
    message = ServerMessage(round=7, client_id=1, state={"w": torch.ones(2)})
    content = over_the_wire(message_to_recorddict(message, NodeBookkeeping(state_version=42, round=3, keep_from=40)))
    assert read_bookkeeping(content) == NodeBookkeeping(state_version=42, round=3, keep_from=40)
    assert recorddict_to_message(content).round == 7  # the message itself is untouched
    plain = over_the_wire(message_to_recorddict(message))  # synchronous default: everything is the round
    assert read_bookkeeping(plain) == NodeBookkeeping(state_version=7, round=7, keep_from=None)


@pytest.mark.parametrize("wire", [False, True], ids=["in-memory", "protobuf"])
def test_client_update_round_trips_with_every_extra(wire):
    g = torch.Generator().manual_seed(1)
    stats = FeatureStatistics(
        means=torch.randn(3, 5, generator=g),
        covariances=torch.randn(3, 5, 5, generator=g, dtype=torch.float64),
        counts=torch.tensor([4, 0, 9]),
    )
    update = ClientUpdate(
        client_id=3,
        round=2,
        state=tensors(),
        num_samples=57,
        metrics={"train_loss": 0.4321, "fidelity_top1": 0.75, "steps": 12},
        label_counts=torch.tensor([5, 0, 52]),
        feature_stats=stats,
        extras={"residual.fc": torch.randn(4, generator=g).bfloat16()},
        wire_nbytes=999,
    )
    content = update_to_recorddict(update)
    back = recorddict_to_update(over_the_wire(content) if wire else content)
    assert (back.client_id, back.round, back.num_samples, back.wire_nbytes) == (3, 2, 57, 999)
    assert back.metrics == update.metrics and type(back.metrics["steps"]) is int
    assert_same_tensors(back.state, update.state)
    assert_same_tensors(back.extras, update.extras)
    assert_same_tensors({"c": back.label_counts}, {"c": update.label_counts})
    for key in ("means", "covariances", "counts"):
        assert_same_tensors({key: getattr(back.feature_stats, key)}, {key: getattr(stats, key)})


def test_update_without_extras_keeps_them_absent():
    update = ClientUpdate(client_id=0, round=0, state={"w": torch.ones(1)}, num_samples=3)
    back = recorddict_to_update(over_the_wire(update_to_recorddict(update)))
    assert back.label_counts is None and back.feature_stats is None and back.extras == {} and back.metrics == {}
    assert back.wire_nbytes is None


def test_numpy_dtypes_travel_as_flower_numpy_arrays_and_bfloat16_as_raw_bytes():
    assert tensor_to_array(torch.ones(2)).stype == "numpy.ndarray"  # readable by any Flower app
    raw = tensor_to_array(torch.ones(2, dtype=torch.bfloat16))
    assert raw.stype == RAW_STYPE and raw.dtype == "bfloat16" and len(raw.data) == 4


def test_config_values_that_are_not_json_fail_loudly():
    message = ServerMessage(round=1, client_id=2, state={}, config={"bad": object()})
    with pytest.raises(TypeError, match="client 2, round 1"):
        message_to_recorddict(message)


def test_non_scalar_metrics_fail_loudly():
    update = ClientUpdate(client_id=5, round=1, state={}, num_samples=1, metrics={"loss": torch.tensor(1.0)})
    with pytest.raises(TypeError, match="client 5, round 1"):
        update_to_recorddict(update)


def test_evaluation_round_trips_as_mergeable_metric_states():
    logits, target = torch.randn(20, 4, generator=torch.Generator().manual_seed(2)), torch.arange(20) % 4
    accuracy, stats = new_accuracy(4), new_class_stats(4)
    accuracy.update(logits, target)
    stats.update(logits, target)
    content = evaluation_to_recorddict(ClientEvaluation(client_id=6, accuracy=accuracy, class_stats=stats))
    back = recorddict_to_evaluation(over_the_wire(content))
    assert back.client_id == 6
    with warnings.catch_warnings():  # rebuilt from merged states, never updated
        warnings.simplefilter("ignore")
        assert float(back.accuracy.compute()) == float(accuracy.compute())
        assert torch.equal(back.class_stats.compute(), stats.compute())


def test_model_instruction_round_trips_with_its_personal_overlay():
    state, overlay = tensors(), {"w": torch.randn(2, 3), "marker": torch.tensor(4)}
    back = recorddict_to_model_instruction(
        over_the_wire(model_instruction_to_recorddict(ModelInstruction(3, 1, state, overlay, 9)))
    )
    assert (back.round, back.client_id, back.state_before) == (3, 1, 9)
    assert_same_tensors(back.global_state, state)
    assert_same_tensors(back.overlay, overlay)
    plain = recorddict_to_model_instruction(
        over_the_wire(model_instruction_to_recorddict(ModelInstruction(0, 2, state, {}, 1)))
    )
    assert plain.overlay == {}


def test_foreign_content_is_rejected_with_a_clear_error():
    from flwr.app import RecordDict

    with pytest.raises(ValueError, match="not a lit_fed train reply"):
        recorddict_to_update(RecordDict())
