"""The asynchronous loop: staleness-discounted updates, sequential reduction, metrics, exact resume, the CLI."""

import pytest
import torch
from helpers import ROOT, store_of

from lit_fed.cli import build_cli
from lit_fed.client.split import Head
from lit_fed.loop.asynchronous import Asynchronous, AsynchronousRounds, ClientSpeeds, Constant, Exponential, LogNormal
from lit_fed.loop.callbacks import LoopCallback
from lit_fed.loop.checkpoint import load_checkpoint
from lit_fed.loop.federated_loop import FederatedLoop
from lit_fed.methods import PartialPFL, ffgg_schedule
from lit_fed.server import FedAdam, FedAvg
from lit_fed.server.sampling import RoundParticipants
from lit_fed.utils.seeding import numpy_rng

COMMON = dict(trainer_kwargs={"accelerator": "cpu"}, loggers=[], progress=False)


class RecordingPartialPFL(PartialPFL):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.applied = []

    def staleness_update(self, global_state, update, start_state, staleness_weight):
        out = super().staleness_update(global_state, update, start_state, staleness_weight)
        self.applied.append((dict(global_state), update, dict(start_state), staleness_weight, dict(out)))
        return out


def test_stale_updates_are_discounted_by_one_over_one_plus_staleness(client_factory, datamodule_factory, tmp_path):
    """Client 0 takes 1 time unit, client 1 takes 2.5: arrivals at t = 1, 2, 2.5, 3, 4, 5 (client 1 wins the tie at
    5, dispatched earlier) with staleness 0, 0, 2, 1, 0, 2 (updates applied since each start)."""
    gamma = 0.5
    strategy = RecordingPartialPFL(server_lr=gamma)
    loop = FederatedLoop(
        client_factory(personal=[Head()]),
        datamodule_factory(num_clients=2),
        strategy,
        asynchronous=Asynchronous(concurrency=2, latency=ClientSpeeds([1.0, 2.5])),
        rounds=3,
        run_dir=tmp_path,
        eval_every=0,
        **COMMON,
    )
    initial = loop.client.shared_state()
    result = loop.run()
    taus = [0, 0, 2, 1, 0, 2]
    assert [u.client_id for _, u, _, _, _ in strategy.applied] == [0, 0, 1, 0, 0, 1]
    assert [w for *_, w, _ in strategy.applied] == [1 / (1 + t) for t in taus]
    assert [u.round for _, u, _, _, _ in strategy.applied] == [0, 1, 0, 2, 4, 3]  # start versions
    assert [h["staleness_mean"] for h in result.history] == [0.0, 1.5, 1.0]
    assert [h["staleness_max"] for h in result.history] == [0, 2, 2]
    assert [h["staleness_histogram"] for h in result.history] == [{0: 2}, {1: 1, 2: 1}, {0: 1, 2: 1}]
    assert [h["applied"] for h in result.history] == [2, 2, 2] and result.history[-1]["version"] == 6
    assert (tmp_path / "staleness.csv").read_text().splitlines() == ["staleness,count", "0,3", "1,1", "2,2"]
    # the third update by hand: client 1 started from the initial model x_0, two updates were applied since
    before, update, start, _, after = strategy.applied[2]
    for key, x0 in initial.items():
        assert torch.equal(start[key], x0)
        if x0.is_floating_point():
            by_hand = before[key].double() + gamma / 3 * (update.state[key].double() - x0.double())
            torch.testing.assert_close(after[key], by_hand.float(), rtol=0, atol=1e-7)
    # and each applied update's start state is the global state of its start version
    versions = [initial] + [out for *_, out in strategy.applied]
    for _, update, start, _, _ in strategy.applied:
        assert all(torch.equal(start[k], versions[update.round][k]) for k in start)


class ForcedSequence(FederatedLoop):
    """A synchronous loop whose round r trains exactly the client ``order[r]``."""

    def __init__(self, *args, order, **kwargs):
        super().__init__(*args, **kwargs)
        self.order = order

    def setup(self):
        super().setup()
        order = self.order
        self.stage.sampler = type("Sampler", (), {"sample": lambda self, r: RoundParticipants([order[r]], [])})()


def test_concurrency_one_without_latency_variation_is_sequential_application(
    client_factory, datamodule_factory, tmp_path
):
    rounds = 5
    async_loop = FederatedLoop(
        client_factory(personal=[Head()]),
        datamodule_factory(),
        PartialPFL(server_lr=1.0),
        asynchronous=Asynchronous(concurrency=1, latency=Constant(2.0)),
        rounds=rounds,
        run_dir=tmp_path / "async",
        **COMMON,
    )
    result = async_loop.run()
    assert [h["staleness_max"] for h in result.history] == [0] * rounds
    assert [h["virtual_time"] for h in result.history] == [2.0 * (r + 1) for r in range(rounds)]
    order = []  # the dispatch stream: uniform over the idle clients (all of them, at concurrency 1)
    for j in range(rounds):
        order.append(int(numpy_rng(0, "async_sampling", j).integers(4)))
    assert len(set(order)) > 1
    sync_loop = ForcedSequence(
        client_factory(personal=[Head()]),
        datamodule_factory(),
        FedAvg(),
        rounds=rounds,
        run_dir=tmp_path / "sync",
        order=order,
        **COMMON,
    )
    sequential = sync_loop.run()
    for key, value in sequential.global_state.items():
        torch.testing.assert_close(result.global_state[key], value, rtol=0, atol=1e-6)
    for cid in set(order):
        for key, value in store_of(sync_loop).get(cid).items():
            torch.testing.assert_close(store_of(async_loop).get(cid)[key], value, rtol=0, atol=1e-6)
    assert [h["personal_acc"] for h in result.history] == pytest.approx(
        [h["personal_acc"] for h in sequential.history], abs=1e-6
    )


class Interrupt(LoopCallback):
    def __init__(self, at_round):
        self.at_round = at_round

    def on_round_start(self, loop, round):
        if round == self.at_round:
            raise KeyboardInterrupt


def test_resume_reaches_the_same_numbers(client_factory, datamodule_factory, tmp_path):
    def make(name, seed=0, callbacks=()):
        return FederatedLoop(
            client_factory(seed=seed, personal=[Head()], schedule=ffgg_schedule(3, 1)),
            datamodule_factory(),
            PartialPFL(),
            asynchronous=Asynchronous(concurrency=2, latency=LogNormal(0.0, 1.0)),
            rounds=4,
            seed=3,
            run_dir=tmp_path / name,
            callbacks=callbacks,
            **COMMON,
        )

    full = make("full").run()
    with pytest.raises(KeyboardInterrupt):
        make("cut", callbacks=[Interrupt(2)]).run()
    ckpt = tmp_path / "cut" / "checkpoints" / "last.ckpt"
    payload = load_checkpoint(ckpt)
    assert payload["round"] == 1 and len(payload["stage"]["in_flight"]) == 2
    torch.load(ckpt, weights_only=True)  # LightningCLI's --ckpt_path reads it this way
    resumed = make("cut", seed=99).run(resume_from=ckpt)
    for key in full.global_state:
        torch.testing.assert_close(resumed.global_state[key], full.global_state[key], rtol=0, atol=0)
    for key in ("global_acc", "personal_acc", "staleness_mean", "staleness_max", "virtual_time", "version"):
        assert [h[key] for h in resumed.history] == [h[key] for h in full.history], key
    assert any(h["staleness_max"] > 0 for h in full.history)


def test_async_trainer_config_runs_through_the_cli(tmp_path):
    cli = build_cli(
        args=[
            "fit",
            "--config",
            str(ROOT / "configs/data/synthetic.yaml"),
            "--config",
            str(ROOT / "configs/model/tinycnn.yaml"),
            "--config",
            str(ROOT / "configs/method/partial_pfl_async.yaml"),
            "--trainer.rounds",
            "1",
            "--trainer.run_dir",
            str(tmp_path),
            "--trainer.progress",
            "false",
        ]
    )
    assert (
        isinstance(cli.trainer.settings.asynchronous.latency, Exponential)
        and cli.trainer.settings.asynchronous.concurrency == 4
    )
    assert isinstance(cli.trainer.build_loop(cli.model, cli.datamodule).stage, AsynchronousRounds)
    result = cli.trainer.federated_result
    assert [h["applied"] for h in result.history] == [4]
    assert all("staleness_mean" in h and "staleness_max" in h for h in result.history)
    assert result.artifacts["staleness"].exists()
    assert "staleness_mean" in (tmp_path / "logs" / "metrics.csv").read_text().splitlines()[0]


def test_bad_asynchronous_settings_raise(client_factory, datamodule_factory, tmp_path):
    def make(strategy=None, **kwargs):
        return FederatedLoop(client_factory(), datamodule_factory(), strategy, run_dir=tmp_path, **COMMON, **kwargs)

    with pytest.raises(TypeError, match="FedAdam declares no rule for one stale update"):
        make(FedAdam(), asynchronous=Asynchronous()).run()
    with pytest.raises(ValueError, match="client_fraction"):
        make(client_fraction=0.5, asynchronous=Asynchronous()).run()
    with pytest.raises(ValueError, match="concurrency 5 exceeds the 4 clients"):
        make(asynchronous=Asynchronous(concurrency=5)).run()
    assert FedAvg.supports_asynchronous and PartialPFL.supports_asynchronous and not FedAdam.supports_asynchronous
    with pytest.raises(ValueError, match="concurrency"):
        Asynchronous(concurrency=0)
    with pytest.raises(ValueError, match="mean"):
        Exponential(mean=0.0)
    assert Asynchronous(staleness_exponent=0.5).staleness_weight(3) == 0.5
    assert Asynchronous().staleness_weight(4) == 0.2


class NaNClient1(LoopCallback):
    """Client 1 uploads NaN weights; records who trained from which version."""

    def __init__(self):
        self.trained = []

    def client_update(self, worker, update, message):
        self.trained.append((update.client_id, message.round))
        if update.client_id == 1:
            key = next(iter(update.state))
            update.state[key] = torch.full_like(update.state[key], float("nan"))
        return update


def test_rejected_updates_do_not_advance_the_version(client_factory, datamodule_factory, tmp_path):
    spy = NaNClient1()
    loop = FederatedLoop(
        client_factory(),
        datamodule_factory(num_clients=3),
        FedAvg(),
        asynchronous=Asynchronous(concurrency=1, latency=Constant(1.0)),
        rounds=6,
        eval_every=0,
        run_dir=tmp_path,
        callbacks=[spy],
        **COMMON,
    )
    result = loop.run()
    rejected = sum(h["rejected"] for h in result.history)
    assert rejected == sum(c == 1 for c, _ in spy.trained) > 0
    assert loop.stage.version == 6 - rejected == sum(h["applied"] for h in result.history)
    assert len(set(spy.trained)) == len(spy.trained)  # (client, start version) never repeats
    assert all(torch.isfinite(v).all() for v in result.global_state.values() if v.is_floating_point())
