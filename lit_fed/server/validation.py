"""Checks on client updates before aggregation: matching keys and shapes, finite values.

A structurally wrong update (missing/unknown key, shape or dtype mismatch) is a bug and raises an error
naming the client, round and key. A non-finite update (NaN/Inf, e.g. a diverged client) is a runtime event:
it is rejected, the reason is returned for logging, and the round goes on with the remaining clients.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lit_fed.client.payloads import ClientUpdate, StateDict


class UpdateMismatchError(ValueError):
    """A client update does not match the global state's keys or shapes."""


def check_update_structure(update: ClientUpdate, global_state: StateDict) -> None:
    """Raises :class:`UpdateMismatchError` if the update's keys/shapes differ from the global state's."""
    where = f"client {update.client_id}, round {update.round}"
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
                    f"client {update.client_id}, round {update.round}: non-finite values in '{bad}', rejected",
                )
            )
    return accepted, rejected
