"""Server steps: they run in order after aggregation, compose across methods and stacked configs, and checkpoint."""

import pytest
import torch
from helpers import CPU, ROOT

from lit_fed.cli import build_cli
from lit_fed.compression import CompressUpload
from lit_fed.loop import ByzantineAttack, FederatedLoop
from lit_fed.methods import CCVR, FedDF
from lit_fed.server import FedAvg, ServerStep


class Mark(ServerStep):
    """Adds ``value`` to one tensor and records the order steps ran in."""

    def __init__(self, name, order, value=1.0):
        self.name, self.order, self.value, self.calls = name, order, value, 0

    @property
    def state_key(self):
        return f"Mark.{self.name}"

    def run(self, global_state, updates, context):
        self.order.append((context.round, self.name, len(updates)))
        self.calls += 1
        key = next(k for k, v in global_state.items() if v.is_floating_point())
        return {**global_state, key: global_state[key] + self.value}

    def state_dict(self):
        return {"calls": self.calls}

    def load_state_dict(self, state):
        self.calls = state["calls"]


def test_strategy_steps_then_run_steps_in_order_each_seeing_the_previous_output(
    client_factory, datamodule_factory, tmp_path
):
    order = []
    seen = {}

    class Aggregated(FedAvg):
        def aggregate_train(self, round, updates, global_state):
            seen[round] = super().aggregate_train(round, updates, global_state)
            return seen[round]

    strategy = Aggregated(steps=[Mark("own", order, 1.0)])
    loop = FederatedLoop(
        client_factory(),
        datamodule_factory(num_clients=3),
        strategy,
        server_steps=[Mark("added", order, 10.0)],
        rounds=2,
        trainer_kwargs=CPU,
        run_dir=tmp_path,
        loggers=[],
        progress=False,
    )
    result = loop.run()
    assert order == [(0, "own", 3), (0, "added", 3), (1, "own", 3), (1, "added", 3)]
    key = next(k for k, v in seen[1].items() if v.is_floating_point())
    torch.testing.assert_close(result.global_state[key], seen[1][key] + 11.0)  # both steps, on the aggregate
    payload = loop.checkpoint_payload(1)
    assert payload["server_steps"] == {"Mark.own": {"calls": 2}, "Mark.added": {"calls": 2}}


def test_two_steps_with_one_state_key_are_refused(client_factory, datamodule_factory, tmp_path):
    loop = FederatedLoop(
        client_factory(),
        datamodule_factory(num_clients=2),
        server_steps=[Mark("x", []), Mark("x", [])],
        rounds=1,
        trainer_kwargs=CPU,
        run_dir=tmp_path,
        loggers=[],
        progress=False,
    )
    with pytest.raises(ValueError, match="state_key"):
        loop.run()


def stacked(tmp_path, *method_configs, extra=()):
    args = ["--config", str(ROOT / "configs/data/synthetic.yaml"), "--config", str(ROOT / "configs/model/tinycnn.yaml")]
    for name in method_configs:
        args += ["--config", str(ROOT / f"configs/method/{name}.yaml")]
    args += ["--data.init_args.num_clients=2", "--trainer.rounds=2", "--trainer.progress=false"]
    args += ["--trainer.logger=false", f"--trainer.run_dir={tmp_path}", *extra]
    return build_cli(args=args, run=False)


def test_fedprox_feddf_and_ccvr_compose_by_stacking_configs(tmp_path):
    """FedProx clients, FedDF's distillation after FedAvg, then CCVR after the last round — three method configs."""
    cli = stacked(
        tmp_path,
        "fedprox",
        "feddf",
        "ccvr",
        extra=[
            "--data.init_args.dataset=lit_fed.methods.HeldOut",
            "--data.init_args.dataset.init_args.source=lit_fed.data.Synthetic",
            "--data.init_args.dataset.init_args.source.init_args.num_train=160",
            "--trainer.server_steps.init_args.samples_per_class=16",  # the last step listed: CCVR
        ],
    )
    feddf, ccvr = cli.trainer.server_steps
    assert isinstance(feddf, FedDF) and isinstance(ccvr, CCVR) and ccvr.samples_per_class == 16
    assert [type(r).__name__ for r in cli.model.regularizers] == ["ProximalTerm"]
    feddf.max_steps, feddf.val_every, feddf.batch_size = 4, 2, 16
    loop = cli.trainer.build_loop(cli.model, cli.datamodule)
    result = loop.run()
    first, last = result.history
    assert "feddf_after_fidelity_kl" in first and "feddf_after_fidelity_kl" in last  # every round
    assert "ccvr_after_global_acc" in last and "ccvr_after_global_acc" not in first  # after the last round
    assert last["global_acc"] == last["ccvr_after_global_acc"]


def test_an_attack_a_compressor_and_ccvr_stack_from_three_configs(tmp_path):
    cli = stacked(
        tmp_path,
        "fedavg_byzantine",
        "topk",
        "ccvr",
        extra=["--trainer.server_steps.init_args.samples_per_class=16"],
    )
    attack, compressor = cli.trainer.round_callbacks
    assert isinstance(attack, ByzantineAttack) and isinstance(compressor, CompressUpload)
    (ccvr,) = cli.trainer.server_steps
    attack.fraction = 0.5  # one of the two clients attacks
    result = cli.trainer.build_loop(cli.model, cli.datamodule).run()
    last = result.history[-1]
    assert last["byzantine_attackers"] == 1 and last["compression_ratio_up"] > 1.5 and "ccvr_classes" in last
