import pytest
import torch
from typing_extensions import override

from lit_fed.client.split import Head
from lit_fed.loop.backend import Backend, Sequential, resolve_backend
from lit_fed.loop.federated_loop import FederatedLoop
from lit_fed.loop.runner import SequentialRunner
from lit_fed.server import FedAvg
from lit_fed.trainer import FederatedTrainer

CPU = {"accelerator": "cpu", "devices": 1}


class RecordingRunner(SequentialRunner):
    """The sequential runner, remembering which clients it trained and evaluated."""

    def __init__(self, worker):
        super().__init__(worker)
        self.trained, self.evaluated = [], []

    @override
    def train(self, loop, messages):
        self.trained.append([m.client_id for m in messages])
        return super().train(loop, messages)

    @override
    def evaluate(self, loop, messages):
        self.evaluated.append([m.client_id for m in messages])
        return super().evaluate(loop, messages)


def run(client, dm, tmp_path, name, recording=False):
    loop = FederatedLoop(
        client, dm, FedAvg(), rounds=2, trainer_kwargs=CPU, run_dir=tmp_path / name, loggers=[], progress=False
    )
    if recording:
        loop.runner = RecordingRunner(loop.runner.worker)
    return loop, loop.run()


def test_the_loop_hands_client_work_to_its_runner(client_factory, datamodule_factory, tmp_path):
    loop, result = run(client_factory(personal=[Head()]), datamodule_factory(), tmp_path, "a", recording=True)
    runner = loop.runner
    _, reference = run(client_factory(personal=[Head()]), datamodule_factory(), tmp_path, "b")
    assert runner.trained == [[0, 1, 2, 3], [0, 1, 2, 3]]
    assert runner.evaluated == [[0, 1, 2, 3], [0, 1, 2, 3]]
    for key, value in reference.global_state.items():
        assert torch.equal(result.global_state[key], value)
    assert [h["personal_acc"] for h in result.history] == [h["personal_acc"] for h in reference.history]
    assert [h["mb_up"] for h in result.history] == [h["mb_up"] for h in reference.history]


def test_backends_resolve_by_name_or_instance():
    assert isinstance(resolve_backend("sequential"), Sequential)
    assert isinstance(resolve_backend(None), Sequential)
    custom = Sequential()
    assert resolve_backend(custom) is custom
    with pytest.raises(ValueError, match="unknown backend"):
        resolve_backend("threads")  # type: ignore[arg-type]


def test_trainer_runs_its_loop_through_the_backend(client_factory, datamodule_factory, tmp_path):
    seen = []

    class Spy(Backend):
        @override
        def run(self, loop, resume_from=None):
            seen.append((type(loop).__name__, resume_from))
            return loop.run(resume_from=resume_from)

    run_dir = str(tmp_path / "c")
    trainer = FederatedTrainer(rounds=1, backend=Spy(), run_dir=run_dir, progress=False, logger=False, **CPU)
    trainer.fit(client_factory(), datamodule=datamodule_factory())
    assert seen == [("FederatedLoop", None)]
    assert trainer.federated_result is not None and len(trainer.federated_result.history) == 1
