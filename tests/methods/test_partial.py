"""Partially personalized FL: FFGG/FedAlt/FedSim schedules, the server step, personal-state persistence."""

import lightning as L
import pytest
import torch
from helpers import store_of

from lit_fed.client.payloads import ClientUpdate
from lit_fed.client.schedule import Phase
from lit_fed.client.split import Head
from lit_fed.loop.federated_loop import FederatedLoop
from lit_fed.methods import PartialPFL, fedalt_schedule, fedsim_schedule, ffgg_schedule, partial_schedule
from lit_fed.server.robust import CenteredClipping

HEAD = ["backbone.fc.weight", "backbone.fc.bias"]
BODY = ["backbone.conv.weight", "backbone.bn.weight", "backbone.bn.bias", "backbone.bn.running_mean"]


def run(client, dm, tmp_path, strategy=None, callbacks=(), **kwargs):
    kwargs.setdefault("rounds", 1)
    loop = FederatedLoop(
        client,
        dm,
        strategy or PartialPFL(),
        trainer_kwargs={"accelerator": "cpu", "callbacks": list(callbacks)},
        run_dir=tmp_path,
        loggers=[],
        progress=False,
        checkpoint_every=0,
        **kwargs,
    )
    return loop, loop.run()


def sgd(params):
    return torch.optim.SGD(params, lr=0.1)


def test_schedule_presets_have_the_right_phases():
    assert ffgg_schedule(3, 2).phases == [Phase("personal", steps=3), Phase("shared", steps=2)]
    assert ffgg_schedule().counts_steps and ffgg_schedule().total(1) == 6  # K_y 5, H 1
    fedalt = fedalt_schedule(personal_epochs=2)
    assert [p.train for p in fedalt.phases] == ["personal", "shared"] and fedalt.lengths(local_epochs=3) == [2, 3]
    fedsim = fedsim_schedule()
    assert [p.train for p in fedsim.phases] == ["all"] and fedsim.lengths(local_epochs=2) == [2]
    assert partial_schedule("FFGG", personal_steps=4).phases[0].steps == 4
    with pytest.raises(ValueError, match="unknown partial-PFL variant"):
        partial_schedule("fedrep")


class Snapshots(L.Callback):
    """Every client fit's state before each step and after the last one."""

    def __init__(self):
        self.fits = []

    def on_train_start(self, trainer, module):
        self.fits.append([])

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.fits[-1].append({k: v.clone() for k, v in module.state_dict().items()})

    def on_train_end(self, trainer, module):
        self.fits[-1].append({k: v.clone() for k, v in module.state_dict().items()})


def test_ffgg_trains_personal_for_k_y_steps_then_shared_for_h_steps(client_factory, datamodule_factory, tmp_path):
    k_y, h = 3, 2
    snaps = Snapshots()
    client = client_factory(personal=[Head()], schedule=ffgg_schedule(k_y, h), optimizer=sgd)
    run(client, datamodule_factory(), tmp_path, callbacks=[snaps])
    assert len(snaps.fits) == 4
    for fit in snaps.fits:
        assert len(fit) == k_y + h + 1
        for step, (before, after) in enumerate(zip(fit[:-1], fit[1:], strict=True)):
            head_moved = any(not torch.equal(before[k], after[k]) for k in HEAD)
            body_moved = [not torch.equal(before[k], after[k]) for k in BODY]
            if step < k_y:  # fine-tune y_k: x (and its BN statistics) frozen
                assert head_moved and not any(body_moved)
            else:  # H steps on x: y_k frozen
                assert not head_moved and all(body_moved)


def test_fedalt_and_fedsim_phase_orders(client_factory, datamodule_factory, tmp_path):
    class Trainable(L.Callback):
        def __init__(self):
            self.per_epoch = []

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if batch_idx == 0:
                self.per_epoch.append({n for n, p in module.named_parameters() if p.requires_grad})

    everything = {n for n, _ in client_factory().named_parameters()}
    head = {"backbone.fc.weight", "backbone.fc.bias"}
    for schedule, expected in (
        (fedalt_schedule(), [head, everything - head]),
        (fedsim_schedule(), [everything]),
    ):
        spy = Trainable()
        client = client_factory(personal=[Head()], schedule=schedule)
        run(client, datamodule_factory(num_clients=2), tmp_path / str(len(expected)), callbacks=[spy], eval_every=0)
        assert spy.per_epoch == expected * 2  # two clients, same phase order


def update(cid, state, n):
    return ClientUpdate(client_id=cid, round=0, state=state, num_samples=n)


def test_server_step_is_x_plus_gamma_times_the_mean_delta():
    x = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(5)}
    rows = [[2.0, 2.0], [1.0, 4.0], [0.0, 3.0]]
    updates = [
        update(c, {"w": torch.tensor(r), "n": torch.tensor(10 + c)}, n)
        for c, (r, n) in enumerate(zip(rows, [10, 30, 60], strict=True))
    ]
    gamma = 0.5
    out = PartialPFL(server_lr=gamma).aggregate_train(0, updates, x)
    mean_delta = (torch.tensor(rows) - x["w"]).mean(0)  # unweighted: the paper's (1/n) Σ_k
    torch.testing.assert_close(out["w"], x["w"] + gamma * mean_delta)
    weighted = PartialPFL(server_lr=gamma, weighted=True).aggregate_train(0, updates, x)
    p = torch.tensor([0.1, 0.3, 0.6])
    torch.testing.assert_close(weighted["w"], x["w"] + gamma * (p[:, None] * (torch.tensor(rows) - x["w"])).sum(0))
    assert weighted["n"].item() == 12  # integers from the heaviest update
    clipped = PartialPFL(server_lr=gamma, aggregator=CenteredClipping(radius=0.5)).aggregate_train(0, updates, x)
    deltas = torch.tensor(rows) - x["w"]
    clip = deltas * torch.clamp(0.5 / deltas.norm(dim=1, keepdim=True), max=1.0)
    torch.testing.assert_close(clipped["w"], x["w"] + gamma * clip.mean(0))
    with pytest.raises(ValueError, match="server_lr"):
        PartialPFL(server_lr=0.0)


def test_async_step_scales_the_stale_delta():
    x = {"w": torch.tensor([1.0, 1.0])}
    start = {"w": torch.tensor([0.0, 0.0])}
    out = PartialPFL(server_lr=2.0).staleness_update(x, update(0, {"w": torch.tensor([0.3, -0.6])}, 1), start, 0.25)
    torch.testing.assert_close(out["w"], torch.tensor([1.0 + 2.0 * 0.25 * 0.3, 1.0 - 2.0 * 0.25 * 0.6]))


def test_personal_part_persists_per_client_and_trains(client_factory, datamodule_factory, tmp_path):
    class Heads(L.Callback):
        def __init__(self):
            self.start, self.end = {}, {}

        def on_train_start(self, trainer, module):
            self.start[(module.client_id, module.current_round)] = module.backbone.fc.weight.detach().clone()

        def on_train_end(self, trainer, module):
            self.end[(module.client_id, module.current_round)] = module.backbone.fc.weight.detach().clone()

    spy = Heads()
    client = client_factory(personal=[Head()], schedule=ffgg_schedule(5, 1))
    loop, result = run(client, datamodule_factory(), tmp_path, callbacks=[spy], rounds=3)
    for cid in range(4):
        for rnd in (1, 2):  # warm start: round r's fine-tuning starts from the head client cid ended round r-1 with
            assert torch.equal(spy.start[(cid, rnd)], spy.end[(cid, rnd - 1)])
        assert torch.equal(store_of(loop).get(cid)["backbone.fc.weight"], spy.end[(cid, 2)])
    assert not torch.equal(spy.end[(0, 2)], spy.end[(1, 2)])
    assert not set(HEAD) & set(result.global_state)
    assert result.history[-1]["personal_acc"] > 0.5  # 4 classes: chance 0.25
