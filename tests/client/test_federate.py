"""``federate``: the federated protocol on a user's own LightningModule, without rewriting it."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lit_fed.client.module import FederationMixin, federate
from lit_fed.client.payloads import ServerMessage
from lit_fed.client.regularizers import ProximalTerm
from lit_fed.client.split import Modules

MU = 0.25


class UserModule(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class DictUserModule(UserModule):
    def training_step(self, batch, batch_idx):
        x, y = batch
        return {"loss": F.cross_entropy(self(x), y), "batch_size": len(y)}


class ManualModule(UserModule):
    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        optimizer = self.optimizers()
        optimizer.zero_grad()
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.manual_backward(loss)
        self.grads = {k: p.grad.clone() for k, p in self.named_parameters()}
        optimizer.step()


def _batch(seed: int = 0, n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=generator), torch.randint(0, 3, (n,), generator=generator)


def _federated(cls: type = UserModule, mu: float = MU, **kwargs) -> L.LightningModule:
    torch.manual_seed(0)
    return federate(cls(), regularizers=[ProximalTerm(mu)], **kwargs)


def _start_round_and_drift(module) -> dict[str, torch.Tensor]:
    """Receives the current weights as w_g, then moves every parameter by +0.3; returns w_g."""
    w_g = module.shared_state()
    module.receive_global(ServerMessage(round=0, client_id=4, state=w_g))
    with torch.no_grad():
        for param in module.parameters():
            param.add_(0.3)
    return w_g


def test_federate_returns_the_same_instance_with_both_classes() -> None:
    user = UserModule()
    net = user.net
    module = federate(user, regularizers=[ProximalTerm(MU)])
    assert module is user
    assert module.net is net
    assert isinstance(module, FederationMixin)
    assert isinstance(module, UserModule)
    assert isinstance(module, L.LightningModule)
    # Re-federating an already federated module only re-initializes the protocol.
    assert federate(module, personal=[Modules(["net.2"])]) is module
    assert module.regularizers == []
    assert module.personal_keys() == ["net.2.weight", "net.2.bias"]


def test_training_step_returns_user_loss_plus_proximal_term() -> None:
    module = _federated()
    w_g = _start_round_and_drift(module)
    x, y = _batch()
    loss = module.training_step((x, y), 0)
    user_loss = F.cross_entropy(module(x), y)
    # Every parameter moved by 0.3: the term is μ/2 · 0.09 · (number of parameters).
    num_params = sum(p.numel() for p in module.parameters())
    assert num_params == 4 * 8 + 8 + 8 * 3 + 3
    proximal = 0.5 * MU * 0.09 * num_params
    assert loss.item() == pytest.approx(user_loss.item() + proximal, rel=1e-5)

    loss.backward()
    with_term = {k: p.grad.clone() for k, p in module.named_parameters()}
    module.zero_grad()
    user_loss.backward()
    for key, param in module.named_parameters():
        torch.testing.assert_close(with_term[key] - param.grad, MU * (param.detach() - w_g[key]))


def test_dict_training_step_result_gets_the_term_and_keeps_other_entries() -> None:
    module = _federated(DictUserModule)
    _start_round_and_drift(module)
    x, y = _batch(1)
    result = module.training_step((x, y), 0)
    assert isinstance(result, dict)
    assert result["batch_size"] == 16
    num_params = sum(p.numel() for p in module.parameters())
    expected = F.cross_entropy(module(x), y).item() + 0.5 * MU * 0.09 * num_params
    assert result["loss"].item() == pytest.approx(expected, rel=1e-5)


def test_training_step_records_the_loss_for_the_update() -> None:
    module = _federated()
    _start_round_and_drift(module)
    losses = [module.training_step(_batch(seed), 0).item() for seed in (0, 1)]
    update = module.build_update(num_samples=32)
    assert update.client_id == 4 and update.round == 0
    assert update.metrics["train_loss"] == pytest.approx(sum(losses) / 2, rel=1e-6)


def test_personal_modules_set_the_personal_keys() -> None:
    module = _federated(personal=[Modules(["net.2"])])
    assert module.personal_keys() == ["net.2.weight", "net.2.bias"]
    assert module.shared_keys() == ["net.0.weight", "net.0.bias"]
    w_g = _start_round_and_drift(module)
    assert set(w_g) == {"net.0.weight", "net.0.bias"}
    # The proximal term covers the shared layer only: μ/2 · 0.09 · (4·8 + 8).
    x, y = _batch()
    loss = module.training_step((x, y), 0)
    assert loss.item() == pytest.approx(F.cross_entropy(module(x), y).item() + 0.5 * MU * 0.09 * 40, rel=1e-5)


def test_manual_optimization_gets_the_proximal_term_in_manual_backward() -> None:
    module = _federated(ManualModule)
    w_g = _start_round_and_drift(module)
    x, y = _batch(3, n=8)
    trainer = L.Trainer(
        max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False
    )
    start = {k: p.detach().clone() for k, p in module.named_parameters()}
    reference = UserModule()
    reference.load_state_dict(module.state_dict())
    F.cross_entropy(reference(x), y).backward()
    trainer.fit(module, train_dataloaders=DataLoader(TensorDataset(x, y), batch_size=8))
    for key, param in reference.named_parameters():
        torch.testing.assert_close(module.grads[key], param.grad + MU * (start[key] - w_g[key]))
    assert module._loss_steps == 1  # the loss went into the round's train_loss


def test_federated_user_module_trains_under_a_plain_trainer() -> None:
    module = _federated()
    module.receive_global(ServerMessage(round=0, client_id=0, state=module.shared_state()))
    before = {k: v.clone() for k, v in module.state_dict().items()}
    x, y = _batch(2, n=32)
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    trainer = L.Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(module, loader)
    after = module.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in before)
    # The wrapped training_step ran and recorded its loss for the round's update.
    assert module.build_update(num_samples=32).metrics["train_loss"] > 0
    assert type(module).__name__ == "FederatedUserModule"
