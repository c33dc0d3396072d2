"""FedDF (Lin et al. 2020): ensemble teacher, server-side distillation that lowers the KL and keeps the best, CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lit_fed.cli import build_cli
from lit_fed.client.payloads import ClientUpdate
from lit_fed.data import Dirichlet, FederatedDataModule, Synthetic
from lit_fed.methods import FedDF, HeldOut, distillation_kl, ensemble_logits
from lit_fed.server import FedAvg, ServerContext
from lit_fed.trainer import FederatedTrainer

ROOT = Path(__file__).resolve().parents[2]
SOURCE = Synthetic(num_classes=4, num_train=320, num_test=80, image_size=8)


def held_out_datamodule(num_clients: int = 3) -> FederatedDataModule:
    return FederatedDataModule(
        dataset=HeldOut(SOURCE, fraction=0.25),
        partitioner=Dirichlet(alpha=1.0, min_size=10),
        num_clients=num_clients,
        batch_size=16,
        seed=0,
    )


def perturbed_states(client, count: int, scale: float = 0.5) -> list[dict[str, torch.Tensor]]:
    """Clients that disagree: the template's state plus independent noise on every float tensor."""
    base = client.shared_state()
    states = []
    for k in range(count):
        generator = torch.Generator().manual_seed(100 + k)
        states.append(
            {
                key: value + scale * torch.randn(value.shape, generator=generator)
                if value.is_floating_point() and "running_var" not in key
                else value.clone()
                for key, value in base.items()
            }
        )
    return states


def updates_from(states: list[dict[str, torch.Tensor]]) -> list[ClientUpdate]:
    return [ClientUpdate(client_id=k, round=0, state=s, num_samples=10 + 5 * k) for k, s in enumerate(states)]


def test_teacher_is_the_mean_of_the_client_logits_by_hand(client_factory):
    client = client_factory()
    states = perturbed_states(client, 3)
    x = torch.randn(7, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    expected = torch.zeros(7, 4)
    for state in states:
        model = client_factory()
        model.load_state_dict(state)
        model.eval()
        with torch.no_grad():
            expected += model(x) / 3
    teacher = ensemble_logits(client, states, x, batch_size=3)
    torch.testing.assert_close(teacher, expected, rtol=1e-5, atol=1e-5)
    # the template is copied, never changed, and per-client models really differ
    assert all(torch.equal(v, client.state_dict()[k]) for k, v in client.shared_state().items())
    assert not torch.allclose(ensemble_logits(client, states[:1], x), teacher)


def test_distillation_kl_is_t_squared_kl_of_teacher_to_student():
    student, teacher = torch.randn(5, 4), torch.randn(5, 4)
    t = 2.0
    p_t, log_p_s = F.softmax(teacher / t, dim=1), F.log_softmax(student / t, dim=1)
    expected = t**2 * (p_t * (p_t.log() - log_p_s)).sum(dim=1).mean()
    torch.testing.assert_close(distillation_kl(student, teacher, t), expected)


def test_held_out_parts_are_disjoint_stratified_and_keep_the_normalization():
    rest, held = HeldOut(SOURCE, fraction=0.25).load(), HeldOut(SOURCE, fraction=0.25, part="held_out").load()
    full = SOURCE.load()
    assert rest.train_x.shape[0] + held.train_x.shape[0] == full.train_x.shape[0]
    counts = torch.bincount(held.train_y, minlength=4)
    assert counts.tolist() == [20, 20, 20, 20]  # 25% of 80 per class
    both = torch.cat([rest.train_x, held.train_x]).flatten(1)
    assert torch.unique(both, dim=0).shape[0] == full.train_x.shape[0]  # no image in both parts
    assert rest.mean == held.mean == full.mean and torch.equal(rest.test_x, full.test_x)
    assert HeldOut(SOURCE).counterpart() == HeldOut(SOURCE, part="held_out")


def run_server(client, strategy: FedDF, datamodule, states) -> dict[str, torch.Tensor]:
    """FedAvg of the states, then the FedDF step on it."""
    updates = updates_from(states)
    aggregated = FedAvg().aggregate_train(0, updates, client.shared_state())
    context = ServerContext(
        round=0, client_template=client, datamodule=datamodule, trainer_kwargs={"accelerator": "cpu"}
    )
    return aggregated, strategy.run(aggregated, updates, context)


def kl_on(client_factory, state, images, teacher) -> float:
    model = client_factory()
    model.load_state_dict(state)
    model.eval()
    with torch.no_grad():
        return float(distillation_kl(model(images), teacher))


def test_distillation_reduces_the_kl_to_the_ensemble_and_returns_the_best_validated_student(client_factory):
    client, dm = client_factory(), held_out_datamodule()
    strategy = FedDF(max_steps=60, batch_size=16, val_every=10, patience_steps=None, lr=3e-3)
    aggregated, distilled = run_server(client, strategy, dm, perturbed_states(client, 3))
    train_x, val_x = strategy.server_images(dm)
    assert train_x.shape[0] + val_x.shape[0] == 80 and val_x.shape[0] == 16  # the held-out part, 20% validation
    teacher = strategy.last_teacher
    before, after = (
        kl_on(client_factory, aggregated, train_x, teacher),
        kl_on(client_factory, distilled, train_x, teacher),
    )
    assert after < 0.7 * before  # on the server (distillation) data
    metrics = strategy.last_metrics
    assert metrics["feddf_after_fidelity_kl"] < metrics["feddf_before_fidelity_kl"]
    assert 0 <= metrics["feddf_after_fidelity_agreement"] <= 1 and metrics["feddf_steps"] == 60
    # the returned student is the validated best: its held-out KL is the minimum over every validation
    steps, values = zip(*strategy.last_validation, strict=True)
    assert list(steps) == [0, 10, 20, 30, 40, 50, 60]
    best = min(range(len(values)), key=values.__getitem__)
    assert metrics["feddf_best_step"] == steps[best]
    assert metrics["feddf_after_fidelity_kl"] == pytest.approx(values[best], rel=1e-4, abs=1e-6)


def test_a_distillation_that_only_hurts_keeps_the_fedavg_student(client_factory):
    client, dm = client_factory(), held_out_datamodule()
    strategy = FedDF(max_steps=20, batch_size=16, val_every=5, patience_steps=10, lr=50.0)  # lr far too large
    aggregated, distilled = run_server(client, strategy, dm, perturbed_states(client, 2))
    assert all(v > strategy.last_validation[0][1] for _, v in strategy.last_validation[1:])
    assert strategy.last_metrics["feddf_best_step"] == 0
    assert all(torch.equal(distilled[k], aggregated[k]) for k in aggregated)  # bit-identical to FedAvg
    assert strategy.last_metrics["feddf_steps"] < 20  # early stopping after 10 steps without improvement


def test_without_server_data_it_fails_with_a_clear_message(client_factory, datamodule_factory):
    client = client_factory()
    with pytest.raises(ValueError, match="unlabeled server data"):
        run_server(client, FedDF(max_steps=2), datamodule_factory(), perturbed_states(client, 2))
    with pytest.raises(ValueError, match="val_fraction"):
        FedDF(val_fraction=1.0)


def run_cli(run_dir: Path, *extra: str):
    args = ["fit", "--config", str(ROOT / "configs/data/synthetic.yaml"), "--config"]
    args += [str(ROOT / "configs/model/tinycnn.yaml"), "--config", str(ROOT / "configs/method/feddf.yaml")]
    args += ["--data.init_args.dataset", "lit_fed.methods.HeldOut"]
    args += ["--data.init_args.dataset.init_args.source", "lit_fed.data.Synthetic"]
    args += ["--data.init_args.dataset.init_args.source.init_args.num_train", "240"]
    server = "--trainer.server_steps.init_args."
    args += [f"{server}max_steps", "20", f"{server}val_every", "10", f"{server}batch_size", "16"]
    args += ["--trainer.rounds", "2", "--trainer.run_dir", str(run_dir), "--trainer.progress", "false"]
    return build_cli(args=[*args, *extra])


def test_config_runs_two_rounds_and_resumes_to_identical_numbers(tmp_path):
    cli = run_cli(tmp_path)
    (step,) = cli.trainer.server_steps
    assert isinstance(step, FedDF) and cli.trainer.round_callbacks == [] and cli.trainer.server is None
    full = cli.trainer.federated_result
    assert [h["round"] for h in full.history] == [1, 2]
    assert {"feddf_before_fidelity_kl", "feddf_after_fidelity_agreement", "feddf_steps"} <= set(full.history[-1])
    # a fresh trainer (fresh strategy), model and datamodule from the same parsed config, resumed after round 0
    fresh = cli.parser.instantiate_classes(cli.config)["fit"]
    trainer = FederatedTrainer(**fresh.trainer.as_dict())
    assert trainer.server_steps[0] is not step
    trainer.fit(fresh.model, datamodule=fresh.data, ckpt_path=str(tmp_path / "checkpoints/round_00001.ckpt"))
    resumed = trainer.federated_result
    a, b = full.history[-1], resumed.history[-1]
    assert {k: v for k, v in a.items() if not k.endswith("_seconds")} == {
        k: v for k, v in b.items() if not k.endswith("_seconds")
    }
    assert all(torch.equal(full.global_state[k], resumed.global_state[k]) for k in full.global_state)


def test_server_fit_keeps_logging_when_client_trainers_run_barebones():
    """The loop's client Trainers run in Lightning's barebones mode, which disables ``self.log``; FedDF's best-state
    selection reads the logged ``val_kl``, so its server Trainer must not inherit barebones."""
    from lit_fed.loop.settings import CLIENT_TRAINER_DEFAULTS

    assert CLIENT_TRAINER_DEFAULTS["barebones"] is True
    context = ServerContext(round=0, trainer_kwargs={**CLIENT_TRAINER_DEFAULTS, "accelerator": "cpu", "max_epochs": 1})
    kwargs = FedDF(server_data=SOURCE)._trainer_kwargs(context, callbacks=[])
    assert "barebones" not in kwargs
    assert kwargs["limit_val_batches"] == 1.0 and kwargs["accelerator"] == "cpu"
