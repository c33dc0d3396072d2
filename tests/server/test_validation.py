"""Update validation: structural mismatches raise; non-finite updates are rejected with a reason."""

from __future__ import annotations

import pytest
import torch

from lit_fed.client.payloads import ClientUpdate
from lit_fed.server.validation import (
    ExplosionScreen,
    UpdateMismatchError,
    check_update_structure,
    screen_updates,
    update_norm,
)


def _global() -> dict[str, torch.Tensor]:
    return {
        "fc.weight": torch.zeros(3, 2),
        "fc.bias": torch.zeros(3),
        "bn.num_batches_tracked": torch.tensor(0),
    }


def _good_state() -> dict[str, torch.Tensor]:
    return {
        "fc.weight": torch.ones(3, 2),
        "fc.bias": torch.ones(3),
        "bn.num_batches_tracked": torch.tensor(4),
    }


def _update(state: dict[str, torch.Tensor], client_id: int = 7, round: int = 3, **kwargs) -> ClientUpdate:
    return ClientUpdate(client_id=client_id, round=round, state=state, num_samples=10, **kwargs)


def test_matching_update_passes() -> None:
    check_update_structure(_update(_good_state()), _global())


def test_mismatch_error_is_a_value_error() -> None:
    assert issubclass(UpdateMismatchError, ValueError)


def _assert_names(err: pytest.ExceptionInfo, *parts: str) -> None:
    message = str(err.value)
    for part in parts:
        assert part in message, (part, message)


def test_missing_key_names_client_round_and_key() -> None:
    state = _good_state()
    del state["fc.bias"]
    with pytest.raises(UpdateMismatchError) as err:
        check_update_structure(_update(state), _global())
    _assert_names(err, "client 7", "round 4", "fc.bias")


def test_unknown_key_names_client_round_and_key() -> None:
    state = {**_good_state(), "extra.weight": torch.zeros(1)}
    with pytest.raises(UpdateMismatchError) as err:
        check_update_structure(_update(state, client_id=12, round=5), _global())
    _assert_names(err, "client 12", "round 6", "extra.weight")


def test_shape_mismatch_names_client_round_and_key() -> None:
    state = {**_good_state(), "fc.weight": torch.ones(2, 3)}
    with pytest.raises(UpdateMismatchError) as err:
        check_update_structure(_update(state), _global())
    _assert_names(err, "client 7", "round 4", "fc.weight", "(2, 3)", "(3, 2)")


def test_dtype_mismatch_names_client_round_and_key() -> None:
    # The module docstring: "A structurally wrong update (missing/unknown key, shape or dtype mismatch)
    # is a bug and raises an error naming the client, round and key." An integer tensor sent for a float
    # parameter (or the reverse) changes how WeightedMean treats the key, so it must be caught here.
    state = {**_good_state(), "fc.bias": torch.ones(3, dtype=torch.int64)}
    with pytest.raises(UpdateMismatchError) as err:
        check_update_structure(_update(state), _global())
    _assert_names(err, "client 7", "round 4", "fc.bias")


def test_screen_updates_raises_on_structural_mismatch() -> None:
    state = _good_state()
    del state["fc.weight"]
    with pytest.raises(UpdateMismatchError, match="client 9"):
        screen_updates([_update(_good_state(), client_id=1), _update(state, client_id=9)], _global())


def test_screen_updates_rejects_nan_and_inf() -> None:
    good_a = _update(_good_state(), client_id=0)
    nan_state = _good_state()
    nan_state["fc.weight"][1, 0] = float("nan")
    nan_update = _update(nan_state, client_id=1, round=4)
    good_b = _update(_good_state(), client_id=2)
    inf_state = _good_state()
    inf_state["fc.bias"][2] = float("-inf")
    inf_update = _update(inf_state, client_id=3, round=4)

    accepted, rejected = screen_updates([good_a, nan_update, good_b, inf_update], _global())

    assert accepted == [good_a, good_b]
    assert [update for update, _ in rejected] == [nan_update, inf_update]
    nan_reason, inf_reason = (reason for _, reason in rejected)
    for part in ("client 1", "round 5", "fc.weight"):  # round index 4 is round 5
        assert part in nan_reason
    for part in ("client 3", "round 5", "fc.bias"):
        assert part in inf_reason


def test_screen_updates_rejects_nonfinite_tensor_extras() -> None:
    bad = _update(_good_state(), client_id=5, extras={"proto": torch.tensor([1.0, float("inf")])})
    accepted, rejected = screen_updates([bad], _global())
    assert accepted == []
    assert len(rejected) == 1
    assert "client 5" in rejected[0][1] and "proto" in rejected[0][1]


def test_screen_updates_accepts_all_finite_updates() -> None:
    updates = [_update(_good_state(), client_id=i) for i in range(3)]
    accepted, rejected = screen_updates(updates, _global())
    assert accepted == updates
    assert rejected == []


def _moved(by: float, client_id: int, loss: float = 0.5) -> ClientUpdate:
    """An update whose float state is the global state plus ``by`` everywhere (change norm ``by * sqrt(9)``)."""
    state = {k: (v + by if v.is_floating_point() else v) for k, v in _global().items()}
    return _update(state, client_id=client_id, metrics={"train_loss": loss})


def test_explosion_screen_rejects_a_change_far_above_the_rounds_median() -> None:
    screen = ExplosionScreen(max_ratio=20.0)
    updates = [_moved(1.0, 0), _moved(1.5, 1), _moved(1e3, 2)]
    accepted, rejected = screen.screen(updates, _global())
    assert [u.client_id for u in accepted] == [0, 1]
    ((update, reason),) = rejected
    assert update.client_id == 2 and "exploded update (change 3e+03 > 20 x typical 4.5)" in reason
    assert screen.recent == pytest.approx([3.0, 4.5])  # only accepted changes are remembered
    assert update_norm(updates[1], _global()) == pytest.approx(4.5)


def test_explosion_screen_accepts_a_round_whose_changes_all_grew() -> None:
    screen = ExplosionScreen(max_ratio=20.0)
    screen.load_state_dict({"recent": [0.1, 0.1, 0.1]})
    accepted, rejected = screen.screen([_moved(10.0, i) for i in range(3)], _global())
    assert len(accepted) == 3 and rejected == []


def test_explosion_screen_remembers_changes_to_judge_a_round_of_two() -> None:
    screen = ExplosionScreen(max_ratio=20.0)
    screen.screen([_moved(1.0, i) for i in range(3)], _global())
    accepted, rejected = screen.screen([_moved(1.0, 0), _moved(100.0, 1)], _global())
    assert [u.client_id for u in accepted] == [0] and rejected[0][0].client_id == 1
    restored = ExplosionScreen(max_ratio=20.0)
    restored.load_state_dict(screen.state_dict())
    assert restored.recent == screen.recent


def test_explosion_screen_rejects_a_nonfinite_loss_and_can_check_only_that() -> None:
    screen = ExplosionScreen(max_ratio=None)
    accepted, rejected = screen.screen([_moved(1.0, 0), _moved(1e6, 1), _moved(1.0, 2, loss=float("nan"))], _global())
    assert [u.client_id for u in accepted] == [0, 1]
    assert "non-finite training loss nan" in rejected[0][1]
