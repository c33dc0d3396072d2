import warnings

import pytest

pytest.importorskip("flwr")

import torch  # noqa: E402

from lit_fed.client.payloads import ClientUpdate, ServerMessage  # noqa: E402
from lit_fed.flower.in_process import over_the_wire  # noqa: E402
from lit_fed.flower.records import (  # noqa: E402
    RAW_STYPE,
    NodeBookkeeping,
    evaluation_to_recorddict,
    message_to_recorddict,
    payload_to_recorddict,
    read_bookkeeping,
    read_payload_bookkeeping,
    recorddict_to_evaluation,
    recorddict_to_message,
    recorddict_to_payload,
    recorddict_to_update,
    tensor_to_array,
    update_to_recorddict,
)
from lit_fed.methods.ccvr import FeatureStatisticsTask  # noqa: E402
from lit_fed.metrics.evaluation import ClientEvaluation, new_accuracy, new_class_stats  # noqa: E402
from lit_fed.metrics.features import FeatureStatistics  # noqa: E402


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
    update = ClientUpdate(
        client_id=3,
        round=2,
        state=tensors(),
        num_samples=57,
        metrics={"train_loss": 0.4321, "fidelity_top1": 0.75, "steps": 12},
        extras={"residual.fc": torch.randn(4, generator=g).bfloat16(), "label_counts": torch.tensor([5, 0, 52])},
        wire_nbytes=999,
    )
    content = update_to_recorddict(update)
    back = recorddict_to_update(over_the_wire(content) if wire else content)
    assert (back.client_id, back.round, back.num_samples, back.wire_nbytes) == (3, 2, 57, 999)
    assert back.metrics == update.metrics and type(back.metrics["steps"]) is int
    assert_same_tensors(back.state, update.state)
    assert_same_tensors(back.extras, update.extras)


def test_update_without_extras_keeps_them_absent():
    update = ClientUpdate(client_id=0, round=0, state={"w": torch.ones(1)}, num_samples=3)
    back = recorddict_to_update(over_the_wire(update_to_recorddict(update)))
    assert back.extras == {} and back.metrics == {}
    assert back.wire_nbytes is None


def test_numpy_dtypes_travel_as_flower_numpy_arrays_and_bfloat16_as_raw_bytes():
    assert tensor_to_array(torch.ones(2)).stype == "numpy.ndarray"  # readable by any Flower app
    raw = tensor_to_array(torch.ones(2, dtype=torch.bfloat16))
    assert raw.stype == RAW_STYPE and raw.dtype == "bfloat16" and len(raw.data) == 4


def test_config_values_that_are_not_json_fail_loudly():
    message = ServerMessage(round=1, client_id=2, state={}, config={"bad": object()})
    with pytest.raises(TypeError, match="client 2, round 2"):  # round index 1 is round 2
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


def test_evaluate_instruction_carries_the_model_and_the_state_version_it_reads():
    state, extras = tensors(), {"w": torch.randn(2, 3)}
    content = message_to_recorddict(ServerMessage(3, 1, state, extras), NodeBookkeeping(state_version=9, round=3))
    wired = over_the_wire(content)
    back = recorddict_to_message(wired)
    assert (back.round, back.client_id, read_bookkeeping(wired).state_version) == (3, 1, 9)
    assert_same_tensors(back.state, state)
    assert_same_tensors(back.extras, extras)


def test_method_tasks_and_their_answers_travel_as_typed_payloads():
    g = torch.Generator().manual_seed(1)
    model = ServerMessage(4, 2, tensors(), {"x": torch.ones(1)})
    task = FeatureStatisticsTask(client_id=2, round=4, model=model)
    wired = over_the_wire(payload_to_recorddict(task, NodeBookkeeping(state_version=5, round=4)))
    back = recorddict_to_payload(wired)
    assert isinstance(back, FeatureStatisticsTask) and (back.client_id, back.round) == (2, 4)
    assert read_payload_bookkeeping(wired) == NodeBookkeeping(state_version=5, round=4)
    assert_same_tensors(back.model.state, model.state)
    stats = FeatureStatistics(
        torch.randn(3, 5, generator=g), torch.randn(3, 5, 5, generator=g), torch.tensor([4, 0, 9])
    )
    answer = recorddict_to_payload(over_the_wire(payload_to_recorddict(stats)))
    for key in ("means", "covariances", "counts"):
        assert_same_tensors({key: getattr(answer, key)}, {key: getattr(stats, key)})
    assert recorddict_to_payload(over_the_wire(payload_to_recorddict(None))) is None


def test_foreign_content_is_rejected_with_a_clear_error():
    from flwr.app import RecordDict

    with pytest.raises(ValueError, match="not a lit_fed train reply"):
        recorddict_to_update(RecordDict())
