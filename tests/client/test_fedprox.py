"""FedProx's proximal term ``μ/2 ‖w − w_g‖²`` (Li et al., MLSys 2020): value, gradient ``μ (w − w_g)``, precision."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lit_fed.client.module import FederatedClient
from lit_fed.client.payloads import ServerMessage
from lit_fed.client.regularizers import ProximalTerm
from lit_fed.client.split import Head
from lit_fed.models.cnn import MLP

MU = 0.1


def _client(mu: float = MU, **kwargs) -> FederatedClient:
    torch.manual_seed(0)
    return FederatedClient(MLP(in_features=6, num_classes=3, hidden=(5,)), regularizers=[ProximalTerm(mu)], **kwargs)


def _start_round_and_drift(
    client: FederatedClient,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Sends a global state w_g (different from the client's initial weights), then moves every parameter
    away from it as local training would. Returns (w_g for the shared keys, w − w_g for every parameter)."""
    generator = torch.Generator().manual_seed(1)
    w_g = {k: v + torch.randn(v.shape, generator=generator) for k, v in client.shared_state().items()}
    client.receive_global(ServerMessage(round=0, client_id=0, state=w_g))
    for key, param in client.named_parameters():
        if key in w_g:
            assert torch.equal(param.detach(), w_g[key])  # the global state was loaded
    drift = {}
    with torch.no_grad():
        for key, param in client.named_parameters():
            drift[key] = 0.5 * torch.randn(param.shape, generator=generator)
            param.add_(drift[key])
    return w_g, drift


def _half_mu_sq_dist(client: FederatedClient, w_g: dict[str, torch.Tensor], only_trainable: bool = False) -> float:
    """μ/2 Σ ‖w − w_g‖² over the anchored keys, in float64."""
    total = 0.0
    for key, param in client.named_parameters():
        if key in w_g and (param.requires_grad or not only_trainable):
            total += float((param.detach().double() - w_g[key].double()).pow(2).sum())
    return 0.5 * MU * total


def _zero_grads(client: FederatedClient) -> None:
    for param in client.parameters():
        param.grad = None


def test_gradient_is_mu_times_w_minus_w_global() -> None:
    client = _client()
    w_g, _ = _start_round_and_drift(client)
    assert set(w_g) == {
        "backbone.body.0.weight",
        "backbone.body.0.bias",
        "backbone.fc.weight",
        "backbone.fc.bias",
    }
    client.extra_losses(None, None)["proximal"].backward()
    for key, param in client.named_parameters():
        torch.testing.assert_close(param.grad, MU * (param.detach() - w_g[key]))


def test_value_is_half_mu_squared_distance() -> None:
    client = _client()
    w_g, drift = _start_round_and_drift(client)
    term = client.extra_losses(None, None)["proximal"]
    expected = _half_mu_sq_dist(client, w_g)
    assert term.dim() == 0
    assert term.item() == pytest.approx(expected, rel=1e-6)
    from_drift = 0.5 * MU * sum(float(d.double().pow(2).sum()) for d in drift.values())
    assert expected == pytest.approx(from_drift, rel=1e-6)


def test_term_is_zero_right_after_receiving_the_global_state() -> None:
    client = _client()
    w_g = {k: v + 1.0 for k, v in client.shared_state().items()}
    client.receive_global(ServerMessage(round=0, client_id=0, state=w_g))
    assert client.extra_losses(None, None)["proximal"].item() == 0.0


def test_anchor_is_a_copy_of_the_message() -> None:
    client = _client()
    w_g = {k: v.clone() for k, v in client.shared_state().items()}
    client.receive_global(ServerMessage(round=0, client_id=0, state=w_g))
    for tensor in w_g.values():
        tensor.add_(10.0)  # the server mutating its own copy later must not move the anchor
    assert client.extra_losses(None, None)["proximal"].item() == 0.0


def test_mu_zero_gives_zero_term_and_gradient() -> None:
    client = _client(mu=0.0)
    _start_round_and_drift(client)
    term = client.extra_losses(None, None)["proximal"]
    term.backward()
    assert term.item() == 0.0
    for param in client.parameters():
        assert torch.count_nonzero(param.grad) == 0


def test_negative_mu_raises() -> None:
    with pytest.raises(ValueError, match="-0.5"):
        ProximalTerm(-0.5)


def test_term_before_any_global_state_raises() -> None:
    with pytest.raises(RuntimeError, match="global state"):
        _client().extra_losses(None, None)


def test_personal_head_gets_no_proximal_gradient() -> None:
    client = _client(personal=[Head()])
    assert client.personal_keys() == ["backbone.fc.weight", "backbone.fc.bias"]
    w_g, drift = _start_round_and_drift(client)
    assert set(w_g) == {"backbone.body.0.weight", "backbone.body.0.bias"}
    term = client.extra_losses(None, None)["proximal"]
    term.backward()
    named = dict(client.named_parameters())
    assert named["backbone.fc.weight"].grad is None and named["backbone.fc.bias"].grad is None
    for key in w_g:
        torch.testing.assert_close(named[key].grad, MU * (named[key].detach() - w_g[key]))
    # The value counts only the shared drift.
    expected = 0.5 * MU * sum(float(drift[k].double().pow(2).sum()) for k in w_g)
    assert term.item() == pytest.approx(expected, rel=1e-6)


def test_frozen_parameters_are_not_anchored() -> None:
    client = _client()
    client.backbone.body[0].bias.requires_grad_(False)
    w_g, _ = _start_round_and_drift(client)
    term = client.extra_losses(None, None)["proximal"]
    # The frozen bias drifted too, but contributes nothing.
    assert term.item() == pytest.approx(_half_mu_sq_dist(client, w_g, only_trainable=True), rel=1e-6)
    assert term.item() < _half_mu_sq_dist(client, w_g)


def test_bf16_autocast_keeps_the_term_in_float32() -> None:
    client = _client()
    w_g, _ = _start_round_and_drift(client)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        term = client.extra_losses(None, None)["proximal"]
    assert term.dtype == torch.float32
    term.backward()
    for key, param in client.named_parameters():
        # float32-exact: a bf16 computation would be off by ~1e-2 relative.
        torch.testing.assert_close(param.grad, MU * (param.detach() - w_g[key]), rtol=1e-6, atol=1e-7)


def test_bf16_model_parameters_get_a_float32_term_and_exact_gradient() -> None:
    # A model cast to bf16 (``bf16-true``): the term is still accumulated in float32.
    client = _client()
    client.to(torch.bfloat16)
    w_g = {k: v.clone() for k, v in client.shared_state().items()}
    client.receive_global(ServerMessage(round=0, client_id=0, state=w_g))
    with torch.no_grad():
        for param in client.parameters():
            param.add_(0.5)
    term = client.extra_losses(None, None)["proximal"]
    assert term.dtype == torch.float32
    term.backward()
    for key, param in client.named_parameters():
        expected = (MU * (param.detach().float() - w_g[key].float())).to(torch.bfloat16)
        torch.testing.assert_close(param.grad, expected)


def test_training_step_adds_the_proximal_gradient_to_the_task_gradient() -> None:
    client = _client()
    w_g, _ = _start_round_and_drift(client)
    generator = torch.Generator().manual_seed(2)
    x, y = torch.randn(8, 6, generator=generator), torch.randint(0, 3, (8,), generator=generator)

    loss = client.training_step((x, y), 0)
    loss.backward()
    total = {k: p.grad.clone() for k, p in client.named_parameters()}
    _zero_grads(client)

    ce = F.cross_entropy(client(x), y)
    ce.backward()
    plain = {k: p.grad.clone() for k, p in client.named_parameters()}

    assert loss.item() == pytest.approx(ce.item() + _half_mu_sq_dist(client, w_g), rel=1e-6)
    for key, param in client.named_parameters():
        torch.testing.assert_close(total[key] - plain[key], MU * (param.detach() - w_g[key]))


def test_training_step_under_bf16_autocast_keeps_the_exact_proximal_gradient() -> None:
    client = _client()
    w_g, _ = _start_round_and_drift(client)
    generator = torch.Generator().manual_seed(3)
    x, y = torch.randn(8, 6, generator=generator), torch.randint(0, 3, (8,), generator=generator)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = client.training_step((x, y), 0)
        ce = client.compute_step((x, y)).loss
    assert loss.dtype == torch.float32
    prox = client.extra_losses(None, None)["proximal"]
    assert loss.item() == pytest.approx(ce.item() + prox.item(), rel=1e-6)
    (loss - ce).backward()  # the two (identical) task-loss graphs cancel; the proximal gradient remains
    for key, param in client.named_parameters():
        torch.testing.assert_close(param.grad, MU * (param.detach() - w_g[key]))
