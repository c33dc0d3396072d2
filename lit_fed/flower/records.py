"""Lossless conversion between lit_fed's typed payloads and Flower's records.

Every tensor keeps its key, order, dtype, shape and bytes: dtypes NumPy knows travel as Flower's own
``numpy.ndarray`` arrays (readable by any Flower app); the others (``bfloat16``, float8) as raw little-endian bytes
with stype :data:`RAW_STYPE`. Layout of a Flower message's :class:`~flwr.app.RecordDict`:

* train instruction (:class:`~lit_fed.client.payloads.ServerMessage`): ``state`` and ``extras``
  (:class:`~flwr.app.ArrayRecord`), ``config`` (:class:`~flwr.app.ConfigRecord`), ``lit_fed`` (round, client id,
  wire size, the node's :class:`NodeBookkeeping`; config values a ConfigRecord cannot hold — ``None``, dicts,
  nested lists — as JSON).
* train reply (:class:`~lit_fed.client.payloads.ClientUpdate`): ``state``, ``extras``, ``metrics``
  (:class:`~flwr.app.MetricRecord`), optional ``label_counts`` and ``feature_stats``, ``lit_fed`` (client id,
  round, sample count, wire size).
* evaluate and feature-statistics instructions (:class:`ModelInstruction`): ``state`` (the global state),
  ``overlay`` (the strategy's personal overlay for the client) and ``lit_fed`` (round, client id); evaluate reply
  (:class:`~lit_fed.loop.runner.ClientEvaluation`): the metric states ``accuracy`` and ``class_stats`` and
  ``lit_fed`` (client id, class count); feature-statistics reply: a train reply without state.
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

from lit_fed.client.payloads import ClientUpdate, FeatureStatistics, ServerMessage, StateDict
from lit_fed.loop.runner import ClientEvaluation
from lit_fed.metrics.evaluation import new_accuracy, new_class_stats

RAW_STYPE = "lit_fed.torch.raw"
"""Serialization type of tensors NumPy cannot hold: raw little-endian bytes of the torch dtype named in ``dtype``."""

_META = "lit_fed"
_STATS_KEYS = ("means", "covariances", "counts")


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
    """How the node files a train instruction's client state (``lit_fed`` config record of the instruction).

    Attributes:
        state_version: The version the client's new personal state is kept under; its previous state is its newest
            of a lower version (synchronous rounds: the round; asynchronous mode: the dispatch index).
        round: The server's round, which client-side hooks read as ``loop.round``.
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
                f"ServerMessage.config of client {message.client_id}, round {message.round}: values {sorted(other)} "
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
    if update.label_counts is not None:
        content["label_counts"] = state_to_record({"label_counts": update.label_counts})
    if update.feature_stats is not None:
        stats = update.feature_stats
        content["feature_stats"] = state_to_record({key: getattr(stats, key) for key in _STATS_KEYS})
    return content


def recorddict_to_update(content: RecordDict) -> ClientUpdate:
    """The :class:`ClientUpdate` a train reply carries."""
    meta = _meta(content, "train reply")
    arrays = content.array_records
    label_counts = array_to_tensor(arrays["label_counts"]["label_counts"]) if "label_counts" in arrays else None
    feature_stats = None
    if "feature_stats" in arrays:
        stats = record_to_state(arrays["feature_stats"])
        feature_stats = FeatureStatistics(**{key: stats[key] for key in _STATS_KEYS})
    return ClientUpdate(
        client_id=int(meta["client_id"]),  # type: ignore[arg-type]
        round=int(meta["round"]),  # type: ignore[arg-type]
        state=record_to_state(arrays["state"]),
        num_samples=int(meta["num_samples"]),  # type: ignore[arg-type]
        metrics=dict(content.metric_records.get("metrics", MetricRecord())),  # type: ignore[arg-type]
        label_counts=label_counts,
        feature_stats=feature_stats,
        extras=record_to_state(arrays.get("extras", ArrayRecord())),
        wire_nbytes=int(meta["wire_nbytes"]) if "wire_nbytes" in meta else None,  # type: ignore[arg-type]
    )


# -- a client's model: evaluation and feature statistics --------------------------------------------------------
@dataclass
class ModelInstruction:
    """What a node needs to rebuild a client's personalized model after a round (to evaluate it or embed its data).

    Attributes:
        round: The round after which the model is taken.
        client_id: The client.
        global_state: The server's global state.
        overlay: The strategy's personal overlay for the client (hypernetwork-generated tensors), possibly empty.
        state_before: The client's personal state is its newest version below this
            (:meth:`~lit_fed.loop.federated_loop.FederatedLoop.node_state_bound`; synchronous rounds: ``round + 1``).
    """

    round: int
    client_id: int
    global_state: StateDict
    overlay: StateDict
    state_before: int


def model_instruction_to_recorddict(instruction: ModelInstruction) -> RecordDict:
    """The Flower content of an evaluate or feature-statistics instruction."""
    return RecordDict(
        {
            "state": state_to_record(instruction.global_state),
            "overlay": state_to_record(instruction.overlay),
            _META: ConfigRecord(
                {
                    "round": instruction.round,
                    "client_id": instruction.client_id,
                    "state_before": instruction.state_before,
                }
            ),
        }
    )


def recorddict_to_model_instruction(content: RecordDict) -> ModelInstruction:
    """The :class:`ModelInstruction` an evaluate or feature-statistics instruction carries."""
    meta = _meta(content, "model instruction")
    return ModelInstruction(
        round=int(meta["round"]),  # type: ignore[arg-type]
        client_id=int(meta["client_id"]),  # type: ignore[arg-type]
        global_state=record_to_state(content.array_records["state"]),
        overlay=record_to_state(content.array_records.get("overlay", ArrayRecord())),
        state_before=int(meta["state_before"]),  # type: ignore[arg-type]
    )


def evaluation_to_recorddict(evaluation: ClientEvaluation) -> RecordDict:
    """The Flower content of an evaluate reply: the client's metric states."""
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
    num_classes = int(meta["num_classes"])  # type: ignore[arg-type]
    accuracy, class_stats = new_accuracy(num_classes), new_class_stats(num_classes)
    accuracy.merge_state(record_to_state(content.array_records["accuracy"]))
    class_stats.merge_state(record_to_state(content.array_records["class_stats"]))
    return ClientEvaluation(client_id=int(meta["client_id"]), accuracy=accuracy, class_stats=class_stats)  # type: ignore[arg-type]
