"""Per-FedAvg (Fallah et al. 2020): FO and HF meta-steps, and one α-step of adaptation before evaluation."""

from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.plugins import MixedPrecision
from torch.utils.data import DataLoader

from lit_fed.cli import build_cli
from lit_fed.loop.federated_loop import FederatedLoop
from lit_fed.methods import PerFedAvgClient
from lit_fed.models import MLP, TinyCNN
from lit_fed.server import FedAvg

ROOT = Path(__file__).resolve().parents[2]
CPU = {"accelerator": "cpu", "devices": 1}
ALPHA, BETA = 0.4, 0.5  # large steps, so that the Hessian term is far above the tolerance


def linear_client(variant="fo", **kwargs):
    torch.manual_seed(0)
    return PerFedAvgClient(MLP(in_features=4, num_classes=3, hidden=()), variant=variant, **kwargs)


def batches(n, size=6, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(size, 4, generator=generator), torch.randint(0, 3, (size,), generator=generator)) for _ in range(n)
    ]


def fit(client, data, precision="32-true"):
    trainer = L.Trainer(
        max_epochs=1,
        precision=precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **CPU,
    )
    trainer.fit(client, train_dataloaders=DataLoader(data, batch_size=None))
    return trainer


def f(params, batch):
    weight, bias = params
    x, y = batch
    return F.cross_entropy(x @ weight.T + bias, y)


def grad(params, batch):
    params = [p.detach().requires_grad_() for p in params]
    return [g.detach() for g in torch.autograd.grad(f(params, batch), params)]


def fo_step(w, d, d2, alpha=ALPHA, beta=BETA):
    w_tilde = [p - alpha * g for p, g in zip(w, grad(w, d), strict=True)]
    g = grad(w_tilde, d2)
    return [p - beta * gi for p, gi in zip(w, g, strict=True)], g


def params_of(client):
    return [client.backbone.fc.weight.detach().clone(), client.backbone.fc.bias.detach().clone()]


def test_one_fo_meta_step_equals_the_hand_computed_update():
    client = linear_client(alpha=ALPHA, beta=BETA)
    w0 = params_of(client)
    d, d2 = batches(2)
    trainer = fit(client, [d, d2])
    expected, _ = fo_step(w0, d, d2)
    assert trainer.global_step == 1
    for got, want in zip(params_of(client), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # Not the plain FedAvg step w - beta * grad f(w; D') (the gradient is taken at w~, applied to w).
    plain = [p - BETA * g for p, g in zip(w0, grad(w0, d2), strict=True)]
    assert not torch.allclose(params_of(client)[0], plain[0], atol=1e-4)


def test_one_hf_meta_step_subtracts_the_exact_hessian_vector_term():
    client = linear_client("hf", alpha=ALPHA, beta=BETA, delta=1e-3)
    w0 = params_of(client)
    d, d2, d3 = batches(3)
    fit(client, [d, d2, d3])
    fo, g = fo_step(w0, d, d2)
    _, hv = torch.autograd.functional.hvp(lambda *p: f(p, d3), tuple(w0), tuple(g))
    expected = [p + BETA * ALPHA * h for p, h in zip(fo, hv, strict=True)]
    for got, want in zip(params_of(client), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
    assert (params_of(client)[0] - fo[0]).abs().max() > 1e-2  # the Hessian term matters at these step sizes


def test_an_incomplete_group_at_epoch_end_reuses_its_last_batch():
    client = linear_client(alpha=ALPHA, beta=BETA)
    w0 = params_of(client)
    d, d2, d3 = batches(3)
    trainer = fit(client, [d, d2, d3])
    w1, _ = fo_step(w0, d, d2)
    w2, _ = fo_step(w1, d3, d3)
    assert trainer.global_step == 2
    for got, want in zip(params_of(client), w2, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("variant", ["fo", "hf"])
def test_meta_step_runs_under_bf16_mixed(variant):
    client = linear_client(variant, alpha=ALPHA, beta=BETA)
    data = batches(3)
    fit(client, data, precision="bf16-mixed")
    reference = linear_client(variant, alpha=ALPHA, beta=BETA)
    fit(reference, data)
    for got, want in zip(params_of(client), params_of(reference), strict=True):
        assert torch.isfinite(got).all() and got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=0, atol=1e-2)


@pytest.mark.parametrize("variant", ["fo", "hf"])
def test_meta_step_is_unscaled_under_a_grad_scaler(variant):
    """16-mixed with a loss scale of 1024: the meta-gradient goes through the scaler and comes out unscaled."""
    client = linear_client(variant, alpha=ALPHA, beta=BETA)
    data = batches(3)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    trainer = L.Trainer(
        max_epochs=1,
        plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **CPU,
    )
    trainer.fit(client, train_dataloaders=DataLoader(data, batch_size=None))
    assert trainer.global_step == (2 if variant == "fo" else 1) and scaler.get_scale() == 1024.0
    reference = linear_client(variant, alpha=ALPHA, beta=BETA)
    fit(reference, data)
    for got, want in zip(params_of(client), params_of(reference), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-3)


def test_personalize_takes_exactly_one_sgd_step_of_size_alpha_on_the_first_batch():
    client = linear_client(alpha=ALPHA)
    w0 = params_of(client)
    d, d2 = batches(2)
    client.eval()
    client.personalize(DataLoader([d, d2], batch_size=None))
    expected = [p - ALPHA * g for p, g in zip(w0, grad(w0, d), strict=True)]
    for got, want in zip(params_of(client), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    assert not client.training


def test_alpha_defaults_to_the_optimizer_lr_and_beta_is_the_meta_lr():
    client = linear_client(optimizer=lambda p: torch.optim.SGD(p, lr=0.03), beta=0.002)
    assert client.alpha == pytest.approx(0.03)
    optimizer = client.configure_optimizers()
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.param_groups[0]["lr"] == 0.002
    assert linear_client().alpha == 0.005  # no factory: PFLlib's lr
    with pytest.raises(ValueError, match="variant"):
        linear_client("so")


@pytest.mark.parametrize(("variant", "precision"), [("fo", "bf16-mixed"), ("hf", "32-true")])
def test_federated_run_adapts_each_client_before_evaluation(datamodule_factory, tmp_path, variant, precision):
    torch.manual_seed(0)
    client = PerFedAvgClient(TinyCNN(in_channels=1, num_classes=4), variant=variant, alpha=0.05, beta=0.1)
    loop = FederatedLoop(
        client,
        datamodule_factory(),
        FedAvg(),
        rounds=2,
        trainer_kwargs={**CPU, "precision": precision},
        run_dir=tmp_path,
        loggers=[],
        progress=False,
    )
    result = loop.run()
    last = result.history[-1]
    assert last["train_loss"] < result.history[0]["train_loss"] or last["global_acc"] > 0.25
    assert 0.0 <= last["personal_acc"] <= 1.0
    assert all(torch.isfinite(v).all() for v in result.global_state.values() if v.is_floating_point())
    # The personalized model is the global one after one α-step: evaluating without it changes the result.
    adapted = loop.evaluate()["personal_acc"]
    client.personalize = lambda loader: None
    assert loop.evaluate()["personal_acc"] != adapted


def test_perfedavg_configs_switch_the_client_class():
    for name, variant in (("perfedavg", "fo"), ("perfedavg_hf", "hf")):
        cli = build_cli(
            args=[
                "--config",
                str(ROOT / "configs/data/synthetic.yaml"),
                "--config",
                str(ROOT / "configs/model/tinycnn.yaml"),
                "--config",
                str(ROOT / f"configs/method/{name}.yaml"),
            ],
            run=False,
        )
        client = cli.model
        assert isinstance(client, PerFedAvgClient) and isinstance(client.backbone, TinyCNN)
        assert client.variant == variant and client.beta == 0.001 and client.delta == 1e-3
        assert client.alpha == pytest.approx(0.05)  # the model config's lr
        assert not client.automatic_optimization
