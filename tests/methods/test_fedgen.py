"""FedGen (Zhu et al., ICML 2021):

Generator shape, label-share weighting, diversity, schedules, label counts, state, CLI.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from lit_fed.cli import build_cli
from lit_fed.client.payloads import ClientUpdate, ServerMessage
from lit_fed.methods import (
    FedGen,
    FedGenClient,
    Generator,
    diversity_loss,
    fedgen_schedule,
    label_weights,
    teacher_loss,
)
from lit_fed.methods import fedgen as fedgen_module
from lit_fed.methods.fedgen import GENERATOR_PREFIX, LABEL_COUNTS_KEY, LABELS_KEY
from lit_fed.models import TinyCNN
from lit_fed.server import ServerContext
from lit_fed.trainer import FederatedTrainer

ROOT = Path(__file__).resolve().parents[2]


def make_client(seed: int = 0, **kwargs) -> FedGenClient:
    torch.manual_seed(seed)
    kwargs.setdefault("optimizer", lambda params: torch.optim.SGD(params, lr=0.05))
    return FedGenClient(TinyCNN(in_channels=1, num_classes=4), **kwargs)


def client_updates(client: FedGenClient, counts: list[list[int]]) -> list[ClientUpdate]:
    updates = []
    for k, row in enumerate(counts):
        generator = torch.Generator().manual_seed(k)
        state = {
            key: v + 0.3 * torch.randn(v.shape, generator=generator) if v.is_floating_point() else v.clone()
            for key, v in client.shared_state().items()
        }
        updates.append(ClientUpdate(k, 0, state, sum(row), extras={LABEL_COUNTS_KEY: torch.tensor(row)}))
    return updates


def trained_strategy(client: FedGenClient, **kwargs) -> FedGen:
    strategy = FedGen(**{"iterations": 3, **kwargs})
    updates = client_updates(client, [[30, 0, 5, 1], [0, 20, 5, 0]])
    strategy.aggregate_train(0, updates, client.shared_state())
    strategy.train_on_updates(updates, ServerContext(round=0, client_template=client))
    return strategy


def test_generator_output_matches_the_head_input_and_rebuilds_from_its_state():
    client = make_client()
    strategy = trained_strategy(client)
    generator = strategy.generator
    assert generator is not None and generator.latent_dim == client.head().in_features == 32
    assert [type(m).__name__ for m in generator.children()] == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert generator.fc.in_features == 32 + 4 and generator.fc.out_features == 256  # eps (32) + onehot(y)
    z, eps = generator.eval()(torch.tensor([0, 1, 2, 3, 3]))
    assert z.shape == (5, 32) and eps.shape == (5, 32) and float(eps.min()) >= 0 and float(eps.max()) < 1
    rebuilt = Generator.from_state(generator.state_dict(), 4).eval()
    torch.testing.assert_close(
        rebuilt(torch.tensor([1, 2]), eps=eps[:2])[0], generator(torch.tensor([1, 2]), eps[:2])[0]
    )
    assert client.classify(z).shape == (5, 4)


def test_label_weights_are_count_shares():
    counts = torch.tensor([[30, 0, 5, 1], [0, 20, 5, 0], [10, 0, 0, 0]])
    raw = label_weights(counts, smoothing=0.0)
    assert raw.shape == (4, 3)
    torch.testing.assert_close(raw[0], torch.tensor([0.75, 0.0, 0.25], dtype=torch.float64))
    torch.testing.assert_close(raw[2], torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64))
    smoothed = label_weights(counts, smoothing=1.0)  # the code's counts start at 1
    torch.testing.assert_close(smoothed[3], torch.tensor([2 / 4, 1 / 4, 1 / 4], dtype=torch.float64))
    torch.testing.assert_close(smoothed.sum(dim=1), torch.ones(4, dtype=torch.float64))


def test_teacher_loss_weights_each_clients_cross_entropy_by_its_label_share():
    generator = torch.Generator().manual_seed(0)
    logits = [torch.randn(6, 4, generator=generator) for _ in range(3)]
    labels = torch.tensor([0, 1, 2, 3, 0, 2])
    weights = label_weights(torch.tensor([[30, 0, 5, 1], [0, 20, 5, 0], [10, 0, 0, 2]]), smoothing=0.0)
    expected = 0.0
    for k in range(3):
        for b in range(6):
            ce = -F.log_softmax(logits[k][b], dim=0)[labels[b]]
            expected += float(ce) * float(weights[labels[b], k]) / 6
    assert float(teacher_loss(logits, labels, weights)) == pytest.approx(expected, rel=1e-5)


def test_the_server_step_uses_the_label_count_shares_of_the_round(monkeypatch):
    seen = []
    original = fedgen_module.teacher_loss

    def spy(logits, labels, weights):
        seen.append(weights.clone())
        return original(logits, labels, weights)

    monkeypatch.setattr(fedgen_module, "teacher_loss", spy)
    strategy = trained_strategy(make_client(), count_smoothing=0.0)
    assert len(seen) == 3  # one per iteration
    expected = label_weights(torch.tensor([[30, 0, 5, 1], [0, 20, 5, 0]]), 0.0)
    assert all(torch.equal(w.cpu(), expected) for w in seen)
    assert strategy.labels.tolist() == [0, 1, 2, 3]


def test_diversity_loss_by_hand():
    generator = torch.Generator().manual_seed(1)
    eps, z = torch.rand(4, 3, generator=generator), torch.randn(4, 5, generator=generator)
    total = 0.0
    for i in range(4):
        for j in range(4):
            noise = float(((eps[i] - eps[j]) ** 2).mean())
            layer = float((z[i] - z[j]).abs().mean())
            total += noise * layer
    assert float(diversity_loss(eps, z)) == pytest.approx(torch.exp(torch.tensor(-total / 16)).item(), rel=1e-6)


def test_alpha_beta_schedules_and_the_client_loss_by_hand():
    for t in (0, 1, 7, 100, 1000):
        assert fedgen_schedule(t, 10.0) == max(1e-4, 10.0 * 0.98**t)
    assert fedgen_schedule(1000, 1.0) == 1e-4
    client = make_client(alpha=10.0, beta=1.0)
    strategy = trained_strategy(client)
    extras = strategy.generator_extras()
    assert LABELS_KEY in extras and any(k.startswith(GENERATOR_PREFIX) for k in extras)
    client.receive_global(ServerMessage(round=5, client_id=0, state=client.shared_state(), extras=extras))
    assert client.loss_weights() == (10.0 * 0.98**5, max(1e-4, 1.0 * 0.98**5))
    x, y = torch.randn(6, 1, 8, 8), torch.tensor([0, 1, 2, 3, 0, 1])
    output = client.compute_step((x, y))
    torch.manual_seed(3)
    losses = client.extra_losses((x, y), output)
    # the same draws by hand: noise for G(y), the sampled labels, noise for G(y_hat)
    torch.manual_seed(3)
    generator = client.generator
    with torch.no_grad():
        z_y, _ = generator(y)
        target = F.softmax(client.classify(z_y), dim=1)
        sampled = strategy.labels[torch.randint(len(strategy.labels), (6,))]
        z_hat, _ = generator(sampled)
    alpha, beta = 10.0 * 0.98**5, 0.98**5
    expected_teacher = alpha * F.cross_entropy(client.classify(z_hat), sampled)
    expected_latent = beta * (target * (target.log() - F.log_softmax(output.logits, dim=1))).sum(dim=1).mean()
    torch.testing.assert_close(losses["fedgen_teacher"], expected_teacher)
    torch.testing.assert_close(losses["fedgen_latent"], expected_latent)
    losses["fedgen_teacher"].backward()  # the generator is frozen: no gradient reaches it
    assert all(p.grad is None for p in generator.parameters())


def test_round_zero_is_plain_cross_entropy_and_label_counts_are_uploaded(datamodule_factory):
    dm = datamodule_factory(num_clients=2)
    client = make_client()
    client.receive_global(ServerMessage(round=0, client_id=1, state=client.shared_state()))
    x, y = next(iter(dm.client_train_dataloader(1)))
    assert set(client.extra_losses((x, y), client.compute_step((x, y)))) == set()
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(client, train_dataloaders=dm.client_train_dataloader(1))
    update = client.build_update(num_samples=dm.client_num_train_samples(1))
    assert torch.equal(update.extras[LABEL_COUNTS_KEY], dm.client_label_counts(1))


def test_generator_and_optimizer_state_round_trip_and_continue_identically():
    client = make_client()
    strategy = trained_strategy(client)
    restored = FedGen(iterations=3)
    restored.load_state_dict(strategy.state_dict())
    assert restored.trained_rounds == 1 and torch.equal(restored.labels, strategy.labels)
    updates = client_updates(client, [[3, 4, 5, 6], [6, 5, 4, 3]])
    for s in (strategy, restored):
        s.train_on_updates(updates, ServerContext(round=1, client_template=client))
    for key, value in strategy.generator.state_dict().items():
        assert torch.equal(value, restored.generator.state_dict()[key])
    assert restored.optimizer.param_groups[0]["lr"] == pytest.approx(3e-4 * 0.98**2)


def test_updates_without_label_counts_are_refused():
    client = make_client()
    update = ClientUpdate(0, 0, client.shared_state(), 10)
    with pytest.raises(ValueError, match="label counts"):
        FedGen().aggregate_train(0, [update], client.shared_state())


def run_cli(run_dir: Path):
    args = ["fit", "--config", str(ROOT / "configs/data/synthetic.yaml"), "--config"]
    args += [str(ROOT / "configs/model/tinycnn.yaml"), "--config", str(ROOT / "configs/method/fedgen.yaml")]
    args += ["--trainer.server.init_args.iterations", "5", "--trainer.server.init_args.hidden_dim", "32"]
    args += ["--trainer.rounds", "2", "--trainer.run_dir", str(run_dir), "--trainer.progress", "false"]
    return build_cli(args=args)


def test_config_runs_two_rounds_and_resumes_to_identical_numbers(tmp_path):
    cli = run_cli(tmp_path)
    assert isinstance(cli.model, FedGenClient)
    strategy = cli.trainer.server
    full = cli.trainer.federated_result
    first, second = full.history
    assert {"fedgen_teacher_loss", "fedgen_diversity_loss"} <= set(second)
    generator_bytes = sum(v.numel() * v.element_size() for v in strategy.generator_extras().values())
    assert (second["mb_down"] - first["mb_down"]) * 1e6 >= 4 * generator_bytes  # the generator is downloaded
    fresh = cli.parser.instantiate_classes(cli.config)["fit"]
    trainer = FederatedTrainer(**fresh.trainer.as_dict())
    assert trainer.server.generator is None  # everything comes from the checkpoint
    trainer.fit(fresh.model, datamodule=fresh.data, ckpt_path=str(tmp_path / "checkpoints/round_00001.ckpt"))
    resumed = trainer.federated_result
    a, b = full.history[-1], resumed.history[-1]
    assert {k: v for k, v in a.items() if not k.endswith("_seconds")} == {
        k: v for k, v in b.items() if not k.endswith("_seconds")
    }
    assert all(torch.equal(full.global_state[k], resumed.global_state[k]) for k in full.global_state)
    after = trainer.server.generator.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in strategy.generator.state_dict().items())
