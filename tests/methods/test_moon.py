"""MOON (Li et al., CVPR 2021): projection head + classifier on z, contrastive loss, per-client previous model, CLI."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from helpers import store_of
from torch import nn

from lit_fed.cli import build_cli
from lit_fed.client.payloads import ServerMessage
from lit_fed.loop.callbacks import LoopCallback
from lit_fed.loop.federated_loop import FederatedLoop
from lit_fed.methods import MOONClient
from lit_fed.methods.moon import PREVIOUS_PREFIX
from lit_fed.models import TinyCNN

ROOT = Path(__file__).resolve().parents[2]
DATASET = "--data.init_args.dataset.init_args"
SMALL_DATA = [f"{DATASET}.num_train", "160", f"{DATASET}.num_test", "80"]


def make_client(seed: int = 0, **kwargs) -> MOONClient:
    torch.manual_seed(seed)
    kwargs.setdefault("optimizer", lambda params: torch.optim.SGD(params, lr=0.1))
    kwargs.setdefault("projection_dim", 16)
    return MOONClient(TinyCNN(in_channels=1, num_classes=4), **kwargs)


def batch(seed: int = 1, n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=generator), torch.randint(0, 4, (n,), generator=generator)


def shifted_state(client: MOONClient, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        k: (v + 0.3 * torch.randn(v.shape, generator=generator)) if v.is_floating_point() else v.clone()
        for k, v in client.shared_state().items()
    }


def test_architecture_projection_then_classifier_on_z():
    client = make_client(projection_dim=16)
    assert isinstance(client.backbone.get_classifier(), nn.Identity)  # the backbone's own head is removed
    assert [type(m) for m in client.projection] == [nn.Linear, nn.ReLU, nn.Linear]
    assert client.projection[0].in_features == client.projection[0].out_features == 32
    assert client.projection[2].out_features == 16
    assert (client.classifier.in_features, client.classifier.out_features) == (16, 4)
    x, _ = batch()
    z = client.projection(client.backbone.forward_head(client.backbone.forward_features(x), pre_logits=True))
    torch.testing.assert_close(client.embed(x), z)
    torch.testing.assert_close(client(x), client.classifier(z))
    assert not any(k.startswith("backbone.fc") for k in client.shared_keys())
    assert {"projection.0.weight", "classifier.weight"} <= set(client.shared_keys())


def hand_con(z: torch.Tensor, z_glob: torch.Tensor, z_prev: torch.Tensor, tau: float) -> float:
    total = 0.0
    for a, g, p in zip(z.tolist(), z_glob.tolist(), z_prev.tolist(), strict=True):

        def cos(u: list[float], v: list[float]) -> float:
            dot = sum(x * y for x, y in zip(u, v, strict=True))
            return dot / math.sqrt(sum(x * x for x in u) * sum(y * y for y in v))

        pos, neg = math.exp(cos(a, g) / tau), math.exp(cos(a, p) / tau)
        total += -math.log(pos / (pos + neg))
    return total / z.shape[0]


def test_contrastive_term_equals_hand_computed_value_and_is_zero_without_previous_model():
    client = make_client(mu=5.0, tau=0.5)
    client.receive_global(ServerMessage(round=0, client_id=0, state=shifted_state(client, 1)))
    x, y = batch()
    output = client.compute_step((x, y))
    assert client.extra_losses((x, y), output)["moon_con"].item() == 0.0  # first round: no previous model
    client.set_previous_model(shifted_state(client, 2))
    output = client.compute_step((x, y))
    term = client.extra_losses((x, y), output)["moon_con"]
    with torch.no_grad():
        z, z_glob, z_prev = client.embed(x), client.global_model(x), client.previous_model(x)
    assert term.item() == pytest.approx(5.0 * hand_con(z, z_glob, z_prev, 0.5), rel=1e-5)
    term.backward()  # frozen models receive nothing
    assert all(p.grad is None for p in client.global_model.parameters())
    assert all(p.grad is None for p in client.previous_model.parameters())


def test_previous_model_persists_per_client_and_is_its_own_model_after_its_previous_round(datamodule_factory, tmp_path):
    trained: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
    seen_previous: dict[tuple[int, int], dict[str, torch.Tensor] | None] = {}

    class RecordingMOON(MOONClient):
        def on_train_start(self) -> None:
            super().on_train_start()
            model = self.previous_model
            seen_previous[(self.current_round, self.client_id)] = (
                None if model is None else {k: v.clone() for k, v in model.state_dict().items()}
            )

    class Record(LoopCallback):
        def client_update(self, worker, update, message):
            trained[(message.round, message.client_id)] = worker.module.encoder_state()
            return update

    torch.manual_seed(0)
    client = RecordingMOON(
        TinyCNN(in_channels=1, num_classes=4), projection_dim=16, optimizer=lambda p: torch.optim.SGD(p, lr=0.1)
    )
    loop = FederatedLoop(
        client,
        datamodule_factory(num_clients=3),
        rounds=2,
        trainer_kwargs={"accelerator": "cpu", "devices": 1},
        run_dir=tmp_path,
        loggers=[],
        progress=False,
        eval_every=0,
        checkpoint_every=0,
        callbacks=[Record()],
    )
    loop.run()
    for cid in range(3):
        assert seen_previous[(0, cid)] is None  # ℓ_con = 0 in a client's first round
        previous = seen_previous[(1, cid)]
        assert previous is not None and set(previous) == set(trained[(0, cid)])
        for key, value in previous.items():
            assert torch.equal(value, trained[(0, cid)][key]), (cid, key)  # its own round-0 model, not another's
        assert not torch.equal(previous["backbone.conv.weight"], trained[(0, (cid + 1) % 3)]["backbone.conv.weight"])
        stored = store_of(loop).get(cid)
        for key, value in trained[(1, cid)].items():  # after round 1 the store holds the round-1 model, on CPU
            kept = stored[PREVIOUS_PREFIX + key]
            assert torch.equal(kept, value) and kept.device.type == "cpu"
    assert not any(k.startswith(PREVIOUS_PREFIX) for k in loop.initial_personal)


def test_personal_state_round_trip():
    client = make_client()
    assert client.personal_state() == {}  # never trained, nothing previous
    state = {PREVIOUS_PREFIX + k: v for k, v in shifted_state(client, 3).items() if not k.startswith("classifier")}
    client.load_personal_state(state)
    assert set(client.personal_state()) == set(state)
    assert torch.equal(client.previous_model.backbone.conv.weight, state[PREVIOUS_PREFIX + "backbone.conv.weight"])
    client.load_personal_state({})
    assert client.previous_model is None


def test_plain_trainer_with_global_and_previous_models_set_by_hand(datamodule_factory, tmp_path):
    client = make_client()
    client.set_global_model(shifted_state(client, 4))
    client.set_previous_model(shifted_state(client, 5))
    glob_before = {k: v.clone() for k, v in client.global_model.state_dict().items()}
    trainer = L.Trainer(
        max_epochs=1, accelerator="cpu", default_root_dir=tmp_path, enable_progress_bar=False, log_every_n_steps=5
    )
    trainer.fit(client, datamodule=datamodule_factory())
    assert float(trainer.callback_metrics["train_moon_con"]) > 0
    assert all(torch.equal(v, glob_before[k]) for k, v in client.global_model.state_dict().items())
    # after the fit, this model is what the next round would contrast against
    assert set(client.personal_state()) == {PREVIOUS_PREFIX + k for k in client.encoder_state()}


def run_cli(run_dir: Path, *extra: str) -> Any:
    args = ["fit", "--config", str(ROOT / "configs/data/synthetic.yaml"), "--config"]
    args += [str(ROOT / "configs/model/tinycnn.yaml"), "--config", str(ROOT / "configs/method/moon.yaml")]
    args += [*SMALL_DATA, "--trainer.rounds", "2", "--trainer.run_dir", str(run_dir), "--trainer.progress", "false"]
    args += ["--model.init_args.projection_dim", "32"]
    cli = build_cli(args=[*args, *extra])
    assert isinstance(cli.model, MOONClient) and cli.model.tau == 0.5
    return cli


def test_config_runs_two_rounds_and_resumes_to_identical_numbers(tmp_path):
    cli = run_cli(tmp_path)  # `lit-fed fit` with the method config: 2 rounds
    full = cli.trainer.federated_result
    assert len(full.history) == 2
    # Resume from the round-0 checkpoint with a fresh model and datamodule instantiated from the same parsed config
    # (`lit-fed fit --ckpt_path ...` without paying for a second parse).
    fresh = cli.parser.instantiate_classes(cli.config)["fit"]
    assert fresh.model is not cli.model
    cli.trainer.fit(fresh.model, datamodule=fresh.data, ckpt_path=str(tmp_path / "checkpoints/round_00001.ckpt"))
    resumed = cli.trainer.federated_result
    assert [h["round"] for h in resumed.history] == [1, 2]
    a, b = full.history[-1], resumed.history[-1]
    assert {k: v for k, v in a.items() if not k.endswith("_seconds")} == {
        k: v for k, v in b.items() if not k.endswith("_seconds")
    }
    assert all(torch.equal(full.global_state[k], resumed.global_state[k]) for k in full.global_state)
