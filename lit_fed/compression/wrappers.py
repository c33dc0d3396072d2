"""Compression wrappers around any method's upload or download: :class:`CompressUpload`, :class:`CompressDownload`.

Both are :class:`~lit_fed.loop.callbacks.LoopCallback` objects (``trainer.round_callbacks`` in a config), so they
compose with every method whose payload is a model state, without touching its client or server code:

* **upload** (:meth:`CompressUpload.client_update`): the client compresses its update ``g = w_k − w_g``
  w.r.t. the state it *received* (plus its error-feedback residual), the "server" decompresses it back into a
  full state ``w_g + ĝ`` for the unchanged strategy, and ``ClientUpdate.wire_nbytes`` is set to the exact
  serialized size of what was sent;
* **download** (:meth:`CompressDownload.server_message`): the server compresses the change of the state it
  sends w.r.t. the state that client reconstructed at its previous download, the client trains from the
  reconstruction, and ``ServerMessage.wire_nbytes`` is the serialized size.

Which parts of a payload are compressed [design, the rule this module enforces]:

* floating-point state tensors that have a reference (a key of the message's state with the same shape) are
  delta-compressed by the compressor, except those the compressor sends dense anyway (``dim() <=
  dense_max_dim``, e.g. biases), which travel as their *absolute* values so they arrive bit-exact;
* non-float state tensors (integer buffers such as ``num_batches_tracked``) and float tensors without a
  reference travel dense, as values;
* an update's integer ``extras`` (e.g. label counts) travel dense (nothing to delta-compress);
* an update's floating-point ``extras`` cannot be delta-compressed (the server holds no reference for them):
  :class:`CompressUpload` refuses them with a ``ValueError`` naming the method, unless ``dense_extras=True``, which
  sends them dense and counts them;
* a method whose shared state holds no floating-point tensor has nothing to compress: refused at setup
  (``on_round_start`` of the first round run), with a ``ValueError`` naming the method;
* a message's tensor extras (a FedDG amplitude bank, hypernetwork outputs) travel dense and are counted.

Byte accounting: the wire dictionary — the payload's records under ``state/``, plus the dense parts under the
same prefixes as :func:`lit_fed.client.serialization.update_nbytes` uses — is what would be serialized, and
``wire_nbytes = encoded_size(wire) = len(encode_tensors(wire))``. The loop's meter counts it, so ``mb_up`` /
``mb_down`` and the run's totals are the compressed sizes. Each wrapper adds to the round's metrics (in
``on_round_end``; they are in ``FederatedResult.history`` and logged to the run's loggers):
``mb_up_dense`` / ``mb_up_dense_total`` (what the dense payloads would have been) and
``compression_ratio_up`` / ``compression_ratio_up_total`` (dense bytes / sent bytes; ``_down`` for downloads) —
the loop logs them with the round — writes ``<run_dir>/compression_<direction>.json`` and prints the totals after
the last round (the loop's own summary table shows the total MB up and down).

Per-client state (residuals and DGC velocities for uploads, the clients' reconstructed states for downloads)
lives off the device in a :class:`~lit_fed.loop.state_store.ClientStateStore` owned by the wrapper (in memory by
default, or a ``DiskStateStore``) and is saved with every round checkpoint (``state_dict``), so a resumed run
continues with the same residuals and reaches the same numbers.

Put compression callbacks *last* in ``round_callbacks``: callbacks run in order, and one placed after an upload
compressor would see (and could alter) the decompressed state.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from typing_extensions import override

from lit_fed.client.payloads import ClientUpdate, ServerMessage, StateDict
from lit_fed.client.serialization import encoded_size, message_nbytes, update_nbytes
from lit_fed.compression.base import CompressedPayload, Compressor
from lit_fed.loop.callbacks import LoopCallback
from lit_fed.loop.state_store import ClientStateStore, InMemoryStateStore
from lit_fed.utils.seeding import torch_generator

if TYPE_CHECKING:
    from lit_fed.client.worker import ClientWorker
    from lit_fed.loop.federated_loop import FederatedLoop

log = logging.getLogger("lit_fed")

__all__ = ["CompressDownload", "CompressUpload", "ErrorFeedback", "ErrorFeedbackStep"]


@dataclasses.dataclass
class ErrorFeedbackStep:
    """One compression step with error feedback.

    Attributes:
        payload: What is sent.
        sent: The decompressed payload (float32): the update the receiver applies.
        state: The sender's new residual/velocity state (float32, CPU).
    """

    payload: CompressedPayload
    sent: dict[str, Tensor]
    state: StateDict


class ErrorFeedback:
    """Residual accumulation (Aji & Heafield 2017) and DGC momentum correction (Lin et al. 2018) around a compressor.

    One :meth:`step` per round and client, with ``g`` the round's update (float32):

    * plain: send ``C(g)``;
    * ``residual``: ``a = g + r``; send ``C(a)``; ``r ← a − D(C(a))`` (for top-k exactly ``a ⊙ ¬mask``);
    * ``momentum`` ``m > 0`` (DGC §3.2, needs ``residual`` and a sparsifier): ``u ← m·u + g``; ``a = r + u``;
      send ``C(a)``; ``r ← a − D(C(a))``; momentum factor masking ``u ← u ⊙ ¬mask``.

    The residual makes the sum of what is sent telescope: ``Σ_t sent_t = Σ_t g_t − r_T`` (``Σ_t u_t − r_T`` with
    momentum). [design] In federated rounds the client's round update ``w_k − w_g`` plays the role of DGC's
    gradient, and the receiver applies what it gets as is (with momentum this is momentum ``m`` on each client's
    update sequence, as DGC's worker-side momentum; the server adds no learning rate).

    Args:
        compressor: The compressor.
        residual: Keep the residual ``r``.
        momentum: DGC momentum ``m`` (0: none).

    Raises:
        ValueError: ``momentum`` outside ``[0, 1)``, or ``momentum > 0`` without ``residual`` or with a
            compressor that is not a sparsifier (no sent mask for momentum factor masking).
    """

    def __init__(self, compressor: Compressor, residual: bool = True, momentum: float = 0.0) -> None:
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if momentum > 0 and not residual:
            raise ValueError("DGC momentum correction accumulates into the residual: set residual=True")
        if momentum > 0 and type(compressor).sent_masks is Compressor.sent_masks:
            raise ValueError(
                f"DGC momentum correction masks the momentum with the sparsifier's sent mask; "
                f"{type(compressor).__name__} is not a sparsifier"
            )
        self.compressor = compressor
        self.residual = residual
        self.momentum = momentum

    def step(
        self,
        update: dict[str, Tensor],
        state: StateDict | None,
        generator: torch.Generator | None = None,
        compressor: Compressor | None = None,
        wire_dtypes: dict[str, torch.dtype] | None = None,
    ) -> ErrorFeedbackStep:
        """Compresses ``update`` (+ residual), returns what is sent and the new residual/velocity.

        Args:
            update: The round's update per name (float32).
            state: The sender's previous state from an earlier step (``None``: zeros).
            generator: Randomness for the compressor.
            compressor: The compressor for this round (e.g. ``compressor.at_round(...)``); default: the one given.
            wire_dtypes: Dtype each tensor is sent in (default float32); the cast's rounding error goes to the
                residual.
        """
        compressor = compressor or self.compressor
        state = state or {}
        accumulated: dict[str, Tensor] = {}
        velocity: dict[str, Tensor] = {}
        for name, g in update.items():
            g = g.float()
            if self.momentum > 0:
                u = state.get(f"velocity/{name}")
                u = g.clone() if u is None else u.to(g.device) * self.momentum + g
                velocity[name] = u
                g = u
            r = state.get(f"residual/{name}") if self.residual else None
            accumulated[name] = g if r is None else g + r.to(g.device)
        dtypes = wire_dtypes or {}
        wire = {name: a.to(dtypes.get(name, torch.float32)) for name, a in accumulated.items()}
        payload = compressor.compress(wire, generator)
        sent = {name: value.float() for name, value in compressor.decompress(payload).items()}
        new_state: StateDict = {}
        if self.residual:
            for name, a in accumulated.items():
                new_state[f"residual/{name}"] = (a - sent[name]).cpu()
        if self.momentum > 0:
            masks = compressor.sent_masks(payload) or {}
            for name, u in velocity.items():
                mask = masks.get(name)
                new_state[f"velocity/{name}"] = (u if mask is None else u.masked_fill(mask, 0.0)).cpu()
        return ErrorFeedbackStep(payload=payload, sent=sent, state=new_state)


def _split_state(
    state: StateDict, reference: StateDict, compressor: Compressor
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """``(deltas, dense)``: float32 deltas of the compressible keys, and the keys sent dense as values."""
    deltas: dict[str, Tensor] = {}
    dense: dict[str, Tensor] = {}
    for key, value in state.items():
        ref = reference.get(key)
        if ref is None or ref.shape != value.shape or compressor.sends_dense(value):
            dense[key] = value
        else:
            deltas[key] = value.float() - ref.float()
    return deltas, dense


def _rebuild(reference: StateDict, sent: dict[str, Tensor], dense: dict[str, Tensor], order: list[str]) -> StateDict:
    """``reference + sent`` (cast to the reference's dtype) for the compressed keys, values for the dense ones."""
    out: StateDict = {}
    for key in order:
        if key in dense:
            out[key] = dense[key]
        else:
            ref = reference[key]
            out[key] = (ref.float() + sent[key].to(ref.device)).to(ref.dtype)
    return out


class _Meter:
    """Dense-equivalent and sent bytes of one direction, per round and in total (checkpointed)."""

    def __init__(self) -> None:
        self.round_dense = self.round_sent = self.total_dense = self.total_sent = 0

    def start_round(self) -> None:
        self.round_dense = self.round_sent = 0

    def add(self, dense: int, sent: int) -> None:
        self.round_dense += dense
        self.round_sent += sent
        self.total_dense += dense
        self.total_sent += sent

    def metrics(self, direction: str) -> dict[str, float]:
        def ratio(dense: int, sent: int) -> float:
            return dense / sent if sent else float("nan")

        return {
            f"mb_{direction}_dense": self.round_dense / 1e6,
            f"mb_{direction}_dense_total": self.total_dense / 1e6,
            f"compression_ratio_{direction}": ratio(self.round_dense, self.round_sent),
            f"compression_ratio_{direction}_total": ratio(self.total_dense, self.total_sent),
        }

    def state_dict(self) -> dict[str, int]:
        return {"total_dense": self.total_dense, "total_sent": self.total_sent}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.total_dense = int(state["total_dense"])
        self.total_sent = int(state["total_sent"])


class _CompressionCallback(LoopCallback):
    """What both directions share: the round's compressor, the per-client store, metrics and checkpoints."""

    direction = "up"

    def __init__(self, compressor: Compressor, store: ClientStateStore | None) -> None:
        if not isinstance(compressor, Compressor):
            raise TypeError(f"{type(self).__name__}: compressor must be a Compressor, got {compressor!r}")
        self.compressor = compressor
        self.store: ClientStateStore = store if store is not None else InMemoryStateStore()
        self.meter = _Meter()
        self._round_compressor = compressor
        self._checked = False
        self.last_wire: dict[str, Tensor] = {}
        """The wire dictionary of the last payload handled (what is serialized; ``wire_nbytes`` is its size)."""

    def _check_setup(self, loop: FederatedLoop) -> None:
        """Refuses a method whose shared state has no floating-point tensor (nothing to delta-compress)."""
        if not any(torch.is_floating_point(v) for v in loop.global_state.values()):
            raise ValueError(
                f"{type(self).__name__}: {type(loop.client).__name__} shares no floating-point state "
                f"(shared keys: {sorted(loop.global_state)[:5]}); there is nothing to compress"
            )

    @override
    def on_round_start(self, loop: FederatedLoop, round: int) -> None:
        if not self._checked:
            self._check_setup(loop)
            self._checked = True
        self.meter.start_round()
        self._round_compressor = self.compressor.at_round(round, loop.rounds)

    def _generator(self, run: FederatedLoop | ClientWorker, round: int, client_id: int) -> torch.Generator:
        return torch_generator(run.seed, "compress", self.direction, round, client_id)

    @override
    def on_round_end(self, loop: FederatedLoop, round: int, metrics: dict[str, Any]) -> None:
        """Adds the dense-equivalent MB and compression ratios to ``metrics`` and writes a JSON summary."""
        extra = self.meter.metrics(self.direction)
        metrics.update(extra)  # the loop records and logs the round's metrics after its callbacks' on_round_end
        summary = {
            "compressor": repr(self.compressor),
            "round": round,
            f"mb_{self.direction}_sent_total": self.meter.total_sent / 1e6,
            **{k: v for k, v in extra.items() if k.endswith("_total")},
        }
        run_dir = loop.settings.run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / f"compression_{self.direction}.json").write_text(json.dumps(summary, indent=1) + "\n")
        if round == loop.rounds - 1:
            line = (
                f"{type(self).__name__}[{type(self.compressor).__name__}]: {self.meter.total_sent / 1e6:.3f} MB "
                f"{self.direction} sent vs {self.meter.total_dense / 1e6:.3f} MB dense "
                f"(compression ratio {extra[f'compression_ratio_{self.direction}_total']:.2f}x)"
            )
            log.info(line)
            if loop.settings.progress:
                from rich.console import Console

                Console().print(line)

    @override
    def state_dict(self) -> dict[str, Any]:
        # Never empty, so the loop matches saved and live callbacks even before the first round.
        return {"kind": type(self).__name__, "store": self.store.state_dict(), "meter": self.meter.state_dict()}

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != type(self).__name__:
            raise ValueError(f"{type(self).__name__}: checkpoint state belongs to a {state.get('kind')} callback")
        self.store.load_state_dict(state["store"])
        self.meter.load_state_dict(state["meter"])


class CompressUpload(_CompressionCallback):
    """Compresses every client's upload ``g = w_k − w_g`` (+ residual) (Aji & Heafield 2017; Lin et al. 2018).

    Works with any method that uploads a model state (FedAvg, FedProx, FedBN, FedPer, Ditto, ...): the strategy
    receives ``w_g + ĝ`` and is unchanged. See the module docstring for which parts are compressed and the
    refusal rule.

    Args:
        compressor: A :class:`~lit_fed.compression.base.Compressor` (``TopK``, ``SVD``, ``Quantize8Bit``, ...).
        residual: Error feedback: keep what was not sent, ``r ← a − D(C(a))`` (for top-k ``g ⊙ ¬mask``, Aji &
            Heafield 2017), per client, and add it to the next update.
        momentum: DGC momentum correction with momentum factor masking (Lin et al. 2018; needs ``residual``
            and a sparsifier); 0 disables it.
        dense_extras: Send an update's floating-point ``extras`` dense (counted) instead of refusing them.
        store: Where per-client residuals/velocities live (default: in memory, CPU). They are checkpointed.

    Raises:
        ValueError: Invalid ``momentum``; at setup, a method without floating-point shared state; at the first
            update that carries floating-point extras, unless ``dense_extras``.
    """

    direction = "up"

    def __init__(
        self,
        compressor: Compressor,
        residual: bool = False,
        momentum: float = 0.0,
        dense_extras: bool = False,
        store: ClientStateStore | None = None,
    ) -> None:
        super().__init__(compressor, store)
        self.feedback = ErrorFeedback(compressor, residual=residual, momentum=momentum)
        self.residual = residual
        self.momentum = momentum
        self.dense_extras = dense_extras

    def _side_tensors(self, worker: ClientWorker, update: ClientUpdate) -> dict[str, Tensor]:
        """The update's extras, keyed as in the dense wire format; refuses floating-point ones by default."""
        floating = sorted(k for k, v in update.extras.items() if torch.is_floating_point(v))
        if floating and not self.dense_extras:
            raise ValueError(
                f"CompressUpload: {type(worker.module).__name__} (client {update.client_id}, round {update.round}) "
                f"uploads floating-point extras {floating[:3]} besides its model state; they have no reference on the "
                "server and cannot be delta-compressed. Set dense_extras=True to send them uncompressed (counted in "
                "the bytes)."
            )
        return {f"extras/{k}": v for k, v in update.extras.items()}

    @override
    def client_update(self, worker: ClientWorker, update: ClientUpdate, message: ServerMessage) -> ClientUpdate:
        """Compresses the update against ``message.state``; returns the decompressed update with ``wire_nbytes``."""
        side = self._side_tensors(worker, update)
        compressor = self.compressor.at_round(worker.round, worker.rounds)  # where the client trains (a node, too)
        deltas, dense = _split_state(update.state, message.state, compressor)
        previous = self.store.get(update.client_id)
        step = self.feedback.step(
            deltas,
            previous,
            generator=self._generator(worker, update.round, update.client_id),
            compressor=compressor,
            wire_dtypes={key: update.state[key].dtype for key in deltas},
        )
        if step.state:
            self.store.put(update.client_id, step.state, update.round)
        wire = {f"state/{k}": v for k, v in step.payload.tensors.items()}
        wire.update({f"state/{k}": v for k, v in dense.items()})
        wire.update(side)
        self.last_wire = wire
        state = _rebuild(message.state, step.sent, dense, list(update.state))
        return dataclasses.replace(update, state=state, wire_nbytes=encoded_size(wire))

    @override
    def update_received(self, loop: FederatedLoop, update: ClientUpdate) -> None:
        """Counts the update's dense-equivalent and sent bytes on the server (where the client compressed it)."""
        if update.wire_nbytes is not None:
            self.meter.add(update_nbytes(dataclasses.replace(update, wire_nbytes=None)), update.wire_nbytes)

    @override
    def client_state(self, client_id: int) -> StateDict:
        """The client's residual (and DGC velocity), kept with its personal state on a Flower node."""
        return dict(self.store.get(client_id) or {})

    @override
    def load_client_state(self, client_id: int, state: StateDict, round: int) -> None:
        self.store.put(client_id, state, round - 1)

    def __repr__(self) -> str:
        return (
            f"CompressUpload({self.compressor!r}, residual={self.residual}, momentum={self.momentum}, "
            f"dense_extras={self.dense_extras})"
        )


class CompressDownload(_CompressionCallback):
    """Compresses what the server sends, against what each client reconstructed at its previous download.

    The server keeps, per client, the state ``ŵ_k`` the client rebuilt last time (both sides can compute it:
    decompression is deterministic). A client's first message is sent dense (full state) and becomes ``ŵ_k``;
    afterwards the server sends ``C(w_g − ŵ_k)`` and the client trains from ``ŵ_k ← ŵ_k + D(C(w_g − ŵ_k))``.
    Because the next delta is taken against the reconstruction, whatever a lossy download dropped is sent
    again later (implicit error feedback). With SVD this is FedKD's compressed download ("the server averages
    reconstructions and re-compresses"; Wu et al. 2022, §3.4). Dense keys (``dim() <= dense_max_dim``, non-float)
    and the message's tensor extras travel as values and are counted.

    Evaluation of the global model uses the server's exact global state; clients train from their
    reconstructions, and an upload compressor placed after this one compresses against them. In asynchronous mode
    every dispatch is compressed against the client's reconstruction from its previous dispatch (a client is never
    in flight twice, so that is what it holds), and its update's staleness step starts from the reconstruction it
    trained from.

    Args:
        compressor: A :class:`~lit_fed.compression.base.Compressor`.
        store: Where the per-client reconstructed states live (default: in memory, CPU). They are checkpointed.
    """

    direction = "down"

    def __init__(self, compressor: Compressor, store: ClientStateStore | None = None) -> None:
        super().__init__(compressor, store)

    @override
    def server_message(self, loop: FederatedLoop, message: ServerMessage) -> ServerMessage:
        """The message as the client rebuilds it, with ``wire_nbytes`` the size of the compressed message."""
        dense_size = message_nbytes(dataclasses.replace(message, wire_nbytes=None))
        extras = {f"extras/{k}": v for k, v in message.extras.items()}
        held = self.store.get(message.client_id)
        compatible = held is not None and all(
            key in held and held[key].shape == value.shape
            for key, value in message.state.items()
            if not self.compressor.sends_dense(value)
        )
        if not compatible:  # first contact (or the state's layout changed): the full state, dense
            reconstructed = dict(message.state)
            wire = {f"state/{k}": v for k, v in message.state.items()}
        else:
            deltas, dense = _split_state(message.state, held, self._round_compressor)  # type: ignore[arg-type]
            payload = self._round_compressor.compress(
                {key: delta.to(message.state[key].dtype) for key, delta in deltas.items()},
                self._generator(loop, message.round, message.client_id),
            )
            sent = {key: value.float() for key, value in self._round_compressor.decompress(payload).items()}
            reconstructed = _rebuild(held, sent, dense, list(message.state))  # type: ignore[arg-type]
            wire = {f"state/{k}": v for k, v in payload.tensors.items()}
            wire.update({f"state/{k}": v for k, v in dense.items()})
        wire.update(extras)
        self.last_wire = wire
        nbytes = encoded_size(wire)
        self.meter.add(dense_size, nbytes)
        held_now = {k: v for k, v in reconstructed.items() if not self.compressor.sends_dense(v)}
        self.store.put(message.client_id, held_now, message.round)
        return dataclasses.replace(message, state=reconstructed, wire_nbytes=nbytes)

    def __repr__(self) -> str:
        return f"CompressDownload({self.compressor!r})"
