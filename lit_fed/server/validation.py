"""Checks on client updates before aggregation: matching keys and shapes, finite values, no explosion.

A structurally wrong update (missing/unknown key, shape or dtype mismatch) is a bug and raises an error
naming the client, round and key. A non-finite update (NaN/Inf, e.g. a diverged client) is a runtime event:
it is rejected, the reason is returned for logging, and the round goes on with the remaining clients. So is an
exploded but finite one (:class:`ExplosionScreen`): a change ``‖w_k − w_g‖`` far larger than the others', or a
non-finite training loss.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from lit_fed.client.payloads import ClientUpdate, StateDict


class UpdateMismatchError(ValueError):
    """A client update does not match the global state's keys or shapes."""


def check_update_structure(update: ClientUpdate, global_state: StateDict) -> None:
    """Raises :class:`UpdateMismatchError` if the update's keys/shapes differ from the global state's."""
    where = f"client {update.client_id}, round {update.round + 1}"
    missing = [k for k in global_state if k not in update.state]
    unknown = [k for k in update.state if k not in global_state]
    if missing:
        raise UpdateMismatchError(f"{where}: update is missing key '{missing[0]}' ({len(missing)} missing)")
    if unknown:
        raise UpdateMismatchError(f"{where}: update has unknown key '{unknown[0]}' ({len(unknown)} unknown)")
    for key, value in update.state.items():
        expected = global_state[key]
        if value.shape != expected.shape:
            raise UpdateMismatchError(
                f"{where}: key '{key}' has shape {tuple(value.shape)}, the global state has {tuple(expected.shape)}"
            )
        if value.dtype != expected.dtype:
            raise UpdateMismatchError(
                f"{where}: key '{key}' has dtype {value.dtype}, the global state has {expected.dtype}"
            )
    if update.num_samples < 0:
        raise UpdateMismatchError(f"{where}: negative sample count {update.num_samples}")


def nonfinite_key(update: ClientUpdate) -> str | None:
    """The first key whose tensor holds NaN/Inf (state or tensor extras), or ``None``."""
    for prefix, tensors in (("", update.state), ("extras/", update.extras)):
        for key, value in tensors.items():
            if torch.is_floating_point(value) and not bool(torch.isfinite(value).all()):
                return prefix + key
    return None


def screen_updates(
    updates: Sequence[ClientUpdate], global_state: StateDict
) -> tuple[list[ClientUpdate], list[tuple[ClientUpdate, str]]]:
    """Splits updates into accepted ones and rejected (non-finite) ones with a reason.

    Raises:
        UpdateMismatchError: an update's structure does not match the global state.
    """
    accepted: list[ClientUpdate] = []
    rejected: list[tuple[ClientUpdate, str]] = []
    for update in updates:
        check_update_structure(update, global_state)
        bad = nonfinite_key(update)
        if bad is None:
            accepted.append(update)
        else:
            rejected.append(
                (
                    update,
                    f"client {update.client_id}, round {update.round + 1}: non-finite values in '{bad}', rejected",
                )
            )
    return accepted, rejected


def update_norm(update: ClientUpdate, reference: StateDict) -> float:
    """``‖w_k − w_g‖₂`` over the floating-point state tensors (float64)."""
    total = 0.0
    for key, value in update.state.items():
        if torch.is_floating_point(value) and key in reference:
            total += float((value.double() - reference[key].double()).square().sum())
    return math.sqrt(total)


class ExplosionScreen:
    """Rejects exploded updates: a non-finite training loss, or a change ``> max_ratio ×`` the typical change.

    The typical change is the lower median of the non-zero changes of the updates screened together when there are
    at least ``min_updates`` of them (a minority of exploded clients cannot move it, and a round whose honest
    changes all grow, e.g. after a server step rescaled the model, is not rejected). With fewer (one or two sampled
    clients, or asynchronous arrivals) the changes accepted most recently join the pool, so a single exploded
    client among two is still caught. The remembered changes are checkpointed (:meth:`state_dict`), so a resumed run
    screens identically.

    Args:
        max_ratio: How many times the typical change an update may move the model; ``None`` checks the loss only.
        memory: How many accepted changes are remembered.
        min_updates: From how many updates on a round's own changes define "typical".
    """

    def __init__(self, max_ratio: float | None = 20.0, memory: int = 32, min_updates: int = 3) -> None:
        self.max_ratio = max_ratio
        self.memory = memory
        self.min_updates = min_updates
        self.recent: list[float] = []

    def screen(
        self, updates: Sequence[ClientUpdate], reference: StateDict
    ) -> tuple[list[ClientUpdate], list[tuple[ClientUpdate, str]]]:
        """Splits finite updates into accepted and rejected (exploded) ones with a reason."""
        rejected: list[tuple[ClientUpdate, str]] = []
        candidates: list[tuple[ClientUpdate, float]] = []
        for update in updates:
            loss = update.metrics.get("train_loss")
            if loss is not None and not math.isfinite(float(loss)):
                rejected.append((update, f"{_where(update)}: non-finite training loss {loss}, rejected"))
            else:
                candidates.append((update, update_norm(update, reference)))
        typical = self._typical([norm for _, norm in candidates])
        accepted: list[ClientUpdate] = []
        for update, norm in candidates:
            if typical is not None and self.max_ratio is not None and norm > self.max_ratio * typical:
                rejected.append(
                    (
                        update,
                        f"{_where(update)}: exploded update (change {norm:.3g} > {self.max_ratio:g} x typical "
                        f"{typical:.3g}), rejected",
                    )
                )
            else:
                accepted.append(update)
                self.recent.append(norm)
        self.recent = self.recent[-self.memory :]
        return accepted, rejected

    def _typical(self, norms: list[float]) -> float | None:
        own = [n for n in norms if n > 0]
        pool = sorted(own if len(own) >= self.min_updates else [*own, *(n for n in self.recent if n > 0)])
        return pool[(len(pool) - 1) // 2] if pool else None

    def state_dict(self) -> dict[str, Any]:
        """The remembered changes."""
        return {"recent": list(self.recent)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores :meth:`state_dict`."""
        self.recent = [float(v) for v in state.get("recent", [])]


def _where(update: ClientUpdate) -> str:
    return f"client {update.client_id}, round {update.round + 1}"
