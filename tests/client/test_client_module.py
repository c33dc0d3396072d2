"""``FederatedClient``: standalone Lightning training and the round hooks of the federated protocol."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from lit_fed.client.module import FederatedClient
from lit_fed.client.payloads import ClientUpdate, ServerMessage
from lit_fed.client.split import Head
from lit_fed.models.cnn import MLP, TinyCNN


def _toy_data(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Linearly separable: the class is the sign of x0 + x1."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, 2, generator=generator)
    y = (x[:, 0] + x[:, 1] > 0).long()
    return x, y


def _mlp_client(**kwargs) -> FederatedClient:
    torch.manual_seed(0)
    optimizer = kwargs.pop("optimizer", lambda params: torch.optim.SGD(params, lr=0.5))
    return FederatedClient(MLP(in_features=2, num_classes=2, hidden=(8,)), optimizer=optimizer, **kwargs)


def _trainer(max_epochs: int) -> L.Trainer:
    return L.Trainer(
        max_epochs=max_epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )


pytestmark = pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no `val_dataloader`")


def _full_loss(client: FederatedClient, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return F.cross_entropy(client(x), y).item()


def test_trains_under_a_plain_lightning_trainer() -> None:
    client = _mlp_client()
    x, y = _toy_data()
    before_state = {k: v.clone() for k, v in client.state_dict().items()}
    before_loss = _full_loss(client, x, y)
    _trainer(max_epochs=5).fit(client, DataLoader(TensorDataset(x, y), batch_size=16))
    after_loss = _full_loss(client, x, y)
    assert all(not torch.equal(before_state[k], v) for k, v in client.state_dict().items())
    assert after_loss < 0.7 * before_loss
    accuracy = (client(x).argmax(1) == y).float().mean().item()
    assert accuracy > 0.9
    # The round's mean training loss is recorded for the update (20 steps over 5 epochs).
    train_loss = client.build_update(num_samples=64).metrics["train_loss"]
    assert after_loss < train_loss < before_loss * 1.05


def test_tinycnn_client_with_batchnorm_trains_and_updates_running_stats() -> None:
    torch.manual_seed(0)
    client = FederatedClient(TinyCNN(in_channels=1, num_classes=2, width=4))
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(16, 1, 6, 6, generator=generator)
    y = torch.randint(0, 2, (16,), generator=generator)
    _trainer(max_epochs=1).fit(client, DataLoader(TensorDataset(x, y), batch_size=8))
    assert client.backbone.bn.num_batches_tracked.item() == 2
    assert not torch.equal(client.backbone.bn.running_mean, torch.zeros(4))


def test_build_update_reports_the_mean_recorded_step_loss() -> None:
    client = _mlp_client()
    client.receive_global(ServerMessage(round=3, client_id=8, state=client.shared_state()))
    x, y = _toy_data()
    losses = [client.training_step((x[i : i + 16], y[i : i + 16]), i).item() for i in (0, 16)]
    update = client.build_update(num_samples=32)
    assert update.metrics["train_loss"] == pytest.approx((losses[0] + losses[1]) / 2, rel=1e-6)
    # A new round resets the accumulator.
    client.receive_global(ServerMessage(round=4, client_id=8, state=client.shared_state()))
    assert client.build_update(num_samples=32).metrics == {}


def test_receive_global_loads_the_state_and_sets_round_and_client() -> None:
    client = _mlp_client()
    state = {k: torch.full_like(v, 0.5) for k, v in client.shared_state().items()}
    client.receive_global(ServerMessage(round=6, client_id=2, state=state))
    assert client.current_round == 6 and client.client_id == 2
    for key, value in client.state_dict().items():
        assert torch.equal(value, state[key])
    # Loaded by copy: the message's tensors are not aliased.
    next(iter(state.values())).add_(1.0)
    assert all(torch.all(v == 0.5) for v in client.state_dict().values())


def test_receive_global_missing_shared_key_raises_key_error() -> None:
    client = _mlp_client()
    state = client.shared_state()
    del state["backbone.fc.bias"]
    with pytest.raises(KeyError) as err:
        client.receive_global(ServerMessage(round=2, client_id=5, state=state))
    message = str(err.value)
    assert "client 5" in message and "round 3" in message and "backbone.fc.bias" in message


def test_receive_global_wrong_shape_raises_value_error_naming_the_key() -> None:
    client = _mlp_client()
    state = client.shared_state()
    state["backbone.body.0.weight"] = torch.zeros(2, 8)  # the module expects (8, 2)
    with pytest.raises(ValueError, match=r"backbone\.body\.0\.weight") as err:
        client.receive_global(ServerMessage(round=1, client_id=3, state=state))
    assert "client 3" in str(err.value) and "round 2" in str(err.value)
    assert "(2, 8)" in str(err.value) and "(8, 2)" in str(err.value)


def test_receive_global_unknown_key_raises_key_error() -> None:
    client = _mlp_client()
    state = {**client.shared_state(), "backbone.extra": torch.zeros(1)}
    with pytest.raises(KeyError, match="backbone.extra"):
        client.receive_global(ServerMessage(round=0, client_id=0, state=state))


def test_build_update_returns_cpu_copies_of_the_shared_state() -> None:
    client = _mlp_client(personal=[Head()])
    client.receive_global(ServerMessage(round=2, client_id=7, state=client.shared_state()))
    update = client.build_update(num_samples=42)
    assert isinstance(update, ClientUpdate)
    assert (update.client_id, update.round, update.num_samples) == (7, 2, 42)
    assert list(update.state) == client.shared_keys() == ["backbone.body.0.weight", "backbone.body.0.bias"]
    module_state = client.state_dict()
    for key, value in update.state.items():
        assert value.device.type == "cpu"
        assert not value.requires_grad
        assert torch.equal(value, module_state[key])
    snapshot = {k: v.clone() for k, v in update.state.items()}
    with torch.no_grad():
        for param in client.parameters():
            param.add_(1.0)
    for key, value in update.state.items():
        assert torch.equal(value, snapshot[key])
    assert update.metrics == {}  # no training step yet


def test_personal_state_round_trip() -> None:
    client = _mlp_client(personal=[Head()])
    personal = client.personal_state()
    assert list(personal) == client.personal_keys() == ["backbone.fc.weight", "backbone.fc.bias"]
    saved = {k: v.clone() for k, v in personal.items()}
    shared_before = client.shared_state()
    with torch.no_grad():
        client.backbone.fc.weight.mul_(-3.0).add_(1.0)
        client.backbone.fc.bias.fill_(7.0)
    for key in personal:  # personal_state returned copies
        assert torch.equal(personal[key], saved[key])
    client.load_personal_state(personal)
    assert torch.equal(client.backbone.fc.weight, saved["backbone.fc.weight"])
    assert torch.equal(client.backbone.fc.bias, saved["backbone.fc.bias"])
    for key, value in client.shared_state().items():
        assert torch.equal(value, shared_before[key])


def test_load_personal_state_checks_names() -> None:
    client = _mlp_client(personal=[Head()])
    with pytest.raises(KeyError, match="personal state"):
        client.load_personal_state({"backbone.nope": torch.zeros(1)})
