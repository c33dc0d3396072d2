"""Lossless conversion between lit_fed's typed payloads and Flower's records.

Every tensor keeps its key, order, dtype, shape and bytes: dtypes NumPy knows travel as Flower's own
``numpy.ndarray`` arrays (readable by any Flower app); the others (``bfloat16``, float8) as raw little-endian bytes
with stype :data:`RAW_STYPE`. Layout of a Flower message's :class:`~flwr.app.RecordDict`:

* train instruction (:class:`~lit_fed.client.payloads.ServerMessage`): ``state`` and ``extras``
  (:class:`~flwr.app.ArrayRecord`), ``config`` (:class:`~flwr.app.ConfigRecord`), ``lit_fed`` (round, client id,
  wire size, the node's :class:`NodeBookkeeping`; config values a ConfigRecord cannot hold — ``None``, dicts,
  nested lists — as JSON).
* train reply (:class:`~lit_fed.client.payloads.ClientUpdate`): ``state``, ``extras``, ``metrics``
  (:class:`~flwr.app.MetricRecord`), ``lit_fed`` (client id, round, sample count, wire size).
* evaluate instruction: a :class:`~lit_fed.client.payloads.ServerMessage` (the client's model: global state and
  extras) laid out as a train instruction, whose bookkeeping names the personal-state version to evaluate; reply
  (:class:`~lit_fed.metrics.evaluation.ClientEvaluation`): the metric states ``accuracy`` and ``class_stats`` and
  ``lit_fed`` (client id, class count); for a user module evaluated by its own ``validation_step``, ``logged``
  (the tensors of its logged metric states) and ``lit_fed`` (client id, the rest of what it logged as JSON).
* task instruction and reply: any :class:`~lit_fed.client.payloads.Payload` (a method's
  :class:`~lit_fed.client.tasks.ClientTask`, its answer) through :mod:`lit_fed.client.codec`: its tensors in
  ``tensors`` (an ArrayRecord) and its description in ``lit_fed`` (``spec``, JSON), plus the instruction's
  bookkeeping.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from torch import Tensor

from lit_fed.client.codec import pack, spec_from_text, spec_to_text, unpack
from lit_fed.client.payloads import ClientUpdate, ServerMessage, StateDict
from lit_fed.metrics.evaluation import ClientEvaluation, new_accuracy, new_class_stats
from lit_fed.metrics.logged import LoggedMetrics

RAW_STYPE = "lit_fed.torch.raw"
"""Serialization type of tensors NumPy cannot hold: raw little-endian bytes of the torch dtype named in ``dtype``."""

_META = "lit_fed"


# -- tensors -------------------------------------------------------------------------------------------------
def tensor_to_array(tensor: Tensor) -> Array:
    """A Flower ``Array`` holding ``tensor`` exactly (NumPy serialization when NumPy has the dtype, raw otherwise)."""
    tensor = tensor.detach().cpu().contiguous()
    try:
        return Array(tensor.numpy())
    except TypeError:  # bfloat16, float8, ...: no NumPy dtype
        data = tensor.reshape(-1).view(torch.uint8).numpy().tobytes()
        return Array(
            dtype=str(tensor.dtype).removeprefix("torch."), shape=tuple(tensor.shape), stype=RAW_STYPE, data=data
        )


def array_to_tensor(array: Array) -> Tensor:
    """The tensor :func:`tensor_to_array` stored (a fresh, writable CPU tensor)."""
    if array.stype == RAW_STYPE:
        dtype = getattr(torch, array.dtype, None)
        if not isinstance(dtype, torch.dtype):
            raise TypeError(f"unknown torch dtype '{array.dtype}' in a {RAW_STYPE} array")
        if not array.data:
            return torch.empty(tuple(array.shape), dtype=dtype)
        raw = torch.frombuffer(bytearray(array.data), dtype=torch.uint8)
        return raw.view(dtype).reshape(tuple(array.shape)).clone()
    return torch.from_numpy(np.array(array.numpy(), copy=True))


def state_to_record(state: Mapping[str, Tensor]) -> ArrayRecord:
    """An ``ArrayRecord`` with one array per tensor, in the mapping's order."""
    record = ArrayRecord()
    for key, tensor in state.items():
        record[key] = tensor_to_array(tensor)
    return record


def record_to_state(record: ArrayRecord) -> StateDict:
    """The tensors of an ``ArrayRecord``, in its order."""
    return {key: array_to_tensor(array) for key, array in record.items()}


# -- config ----------------------------------------------------------------------------------------------------
def _config_records(config: Mapping[str, Any]) -> tuple[ConfigRecord, dict[str, Any]]:
    native, other = ConfigRecord(), {}
    for key, value in config.items():
        try:
            native[key] = value
        except TypeError:
            other[key] = value
    return native, other


def _meta(content: RecordDict, what: str) -> ConfigRecord:
    if _META not in content.config_records:
        raise ValueError(f"not a lit_fed {what}: the Flower message has no '{_META}' config record")
    return content.config_records[_META]


# -- server message ------------------------------------------------------------------------------------------
@dataclass
class NodeBookkeeping:
    """Which of the client's personal-state versions an instruction uses (``lit_fed`` config record).

    Attributes:
        state_version: The client starts from its newest personal state of a version below this. A train
            instruction keeps the new state under it (synchronous rounds: the round; asynchronous mode: the
            dispatch index); an evaluate or task instruction only reads.
        round: The server's round, which client-side hooks read.
        keep_from: Versions a resume may still need start here (the node keeps them and the newest one below);
            ``None``: the node's own pruning policy.
    """

    state_version: int
    round: int
    keep_from: int | None = None


def message_to_recorddict(message: ServerMessage, bookkeeping: NodeBookkeeping | None = None) -> RecordDict:
    """The Flower content of a train instruction (``bookkeeping`` defaults to the message's round for both)."""
    config, other = _config_records(message.config)
    meta = ConfigRecord({"round": message.round, "client_id": message.client_id})
    if bookkeeping is not None:
        meta["state_version"] = bookkeeping.state_version
        meta["server_round"] = bookkeeping.round
        if bookkeeping.keep_from is not None:
            meta["keep_from"] = bookkeeping.keep_from
    if message.wire_nbytes is not None:
        meta["wire_nbytes"] = message.wire_nbytes
    if other:
        meta["config_order"] = list(message.config)
        try:
            meta["config_json"] = json.dumps(other)
        except TypeError as error:
            raise TypeError(
                f"ServerMessage.config of client {message.client_id}, round {message.round + 1}: "
                f"values {sorted(other)} "
                "are neither Flower config values nor JSON"
            ) from error
    return RecordDict(
        {
            "state": state_to_record(message.state),
            "extras": state_to_record(message.extras),
            "config": config,
            _META: meta,
        }
    )


def read_bookkeeping(content: RecordDict) -> NodeBookkeeping:
    """The :class:`NodeBookkeeping` of a train instruction."""
    meta = _meta(content, "train instruction")
    round = int(meta["round"])  # type: ignore[arg-type]
    return NodeBookkeeping(
        state_version=int(meta.get("state_version", round)),  # type: ignore[arg-type]
        round=int(meta.get("server_round", round)),  # type: ignore[arg-type]
        keep_from=int(meta["keep_from"]) if "keep_from" in meta else None,  # type: ignore[arg-type]
    )


def recorddict_to_message(content: RecordDict) -> ServerMessage:
    """The :class:`ServerMessage` a train instruction carries."""
    meta = _meta(content, "train instruction")
    config = dict(content.config_records.get("config", ConfigRecord()))
    if "config_json" in meta:
        config.update(json.loads(str(meta["config_json"])))
        config = {key: config[key] for key in meta["config_order"]}  # type: ignore[union-attr]
    return ServerMessage(
        round=int(meta["round"]),  # type: ignore[arg-type]
        client_id=int(meta["client_id"]),  # type: ignore[arg-type]
        state=record_to_state(content.array_records["state"]),
        extras=record_to_state(content.array_records.get("extras", ArrayRecord())),
        config=config,
        wire_nbytes=int(meta["wire_nbytes"]) if "wire_nbytes" in meta else None,  # type: ignore[arg-type]
    )


# -- client update -------------------------------------------------------------------------------------------
def update_to_recorddict(update: ClientUpdate) -> RecordDict:
    """The Flower content of a train reply."""
    meta = ConfigRecord({"client_id": update.client_id, "round": update.round, "num_samples": update.num_samples})
    if update.wire_nbytes is not None:
        meta["wire_nbytes"] = update.wire_nbytes
    try:
        metrics = MetricRecord(dict(update.metrics))
    except TypeError as error:
        where = f"client {update.client_id}, round {update.round}"
        raise TypeError(f"{where}: ClientUpdate.metrics must be int/float scalars") from error
    content = RecordDict(
        {
            "state": state_to_record(update.state),
            "extras": state_to_record(update.extras),
            "metrics": metrics,
            _META: meta,
        }
    )
    return content


def recorddict_to_update(content: RecordDict) -> ClientUpdate:
    """The :class:`ClientUpdate` a train reply carries."""
    meta = _meta(content, "train reply")
    arrays = content.array_records
    return ClientUpdate(
        client_id=int(meta["client_id"]),  # type: ignore[arg-type]
        round=int(meta["round"]),  # type: ignore[arg-type]
        state=record_to_state(arrays["state"]),
        num_samples=int(meta["num_samples"]),  # type: ignore[arg-type]
        metrics=dict(content.metric_records.get("metrics", MetricRecord())),  # type: ignore[arg-type]
        extras=record_to_state(arrays.get("extras", ArrayRecord())),
        wire_nbytes=int(meta["wire_nbytes"]) if "wire_nbytes" in meta else None,  # type: ignore[arg-type]
    )


# -- any payload: method tasks and their answers ---------------------------------------------------------------
def payload_to_recorddict(value: Any, bookkeeping: NodeBookkeeping | None = None) -> RecordDict:
    """The Flower content of a payload (a task, its answer, ``None``) through :mod:`lit_fed.client.codec`."""
    tensors, spec = pack(value)
    meta = ConfigRecord({"spec": spec_to_text(spec)})
    if bookkeeping is not None:
        meta["state_version"] = bookkeeping.state_version
        meta["server_round"] = bookkeeping.round
    return RecordDict({"tensors": state_to_record(tensors), _META: meta})


def recorddict_to_payload(content: RecordDict) -> Any:
    """The payload :func:`payload_to_recorddict` carried."""
    meta = _meta(content, "payload")
    tensors = record_to_state(content.array_records.get("tensors", ArrayRecord()))
    return unpack(tensors, spec_from_text(str(meta["spec"])))


def read_payload_bookkeeping(content: RecordDict) -> NodeBookkeeping:
    """The :class:`NodeBookkeeping` of a task instruction."""
    meta = _meta(content, "task instruction")
    return NodeBookkeeping(state_version=int(meta["state_version"]), round=int(meta["server_round"]))  # type: ignore[arg-type]


def evaluation_to_recorddict(evaluation: ClientEvaluation) -> RecordDict:
    """The Flower content of an evaluate reply: the client's metric states (or, for a user module, what it logged)."""
    if evaluation.logged is not None:
        tensors, spec = pack(evaluation.logged.to_payload())
        return RecordDict(
            {
                "logged": state_to_record(tensors),
                _META: ConfigRecord({"client_id": evaluation.client_id, "logged_spec": spec_to_text(spec)}),
            }
        )
    assert evaluation.accuracy is not None and evaluation.class_stats is not None
    num_classes = int(evaluation.accuracy.num_classes)  # type: ignore[arg-type]
    return RecordDict(
        {
            "accuracy": state_to_record(evaluation.accuracy.metric_state),
            "class_stats": state_to_record(evaluation.class_stats.metric_state),
            _META: ConfigRecord({"client_id": evaluation.client_id, "num_classes": num_classes}),
        }
    )


def recorddict_to_evaluation(content: RecordDict) -> ClientEvaluation:
    """The :class:`ClientEvaluation` an evaluate reply carries (metrics rebuilt from their merged states)."""
    meta = _meta(content, "evaluate reply")
    if "logged_spec" in meta:
        payload = unpack(record_to_state(content.array_records["logged"]), spec_from_text(str(meta["logged_spec"])))
        return ClientEvaluation(client_id=int(meta["client_id"]), logged=LoggedMetrics.from_payload(payload))  # type: ignore[arg-type]
    num_classes = int(meta["num_classes"])  # type: ignore[arg-type]
    accuracy, class_stats = new_accuracy(num_classes), new_class_stats(num_classes)
    accuracy.merge_state(record_to_state(content.array_records["accuracy"]))
    class_stats.merge_state(record_to_state(content.array_records["class_stats"]))
    return ClientEvaluation(client_id=int(meta["client_id"]), accuracy=accuracy, class_stats=class_stats)  # type: ignore[arg-type]
