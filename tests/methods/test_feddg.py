from pathlib import Path

import lightning as L
import pytest
import torch

from lit_fed.cli import build_cli
from lit_fed.client.payloads import ClientUpdate
from lit_fed.data import IID, Synthetic
from lit_fed.data.domains import DomainShiftDataModule, apply_style, parse_style
from lit_fed.methods import AmplitudeMix, FedDGClient, FedDGStrategy, amplitude_interpolate
from lit_fed.methods.feddg import (
    AMPLITUDE_KEY,
    BANK_KEY,
    REQUEST_KEY,
    amplitude_phase,
    low_frequency_amplitude,
    low_frequency_mask,
    low_frequency_window,
)
from lit_fed.models import MLP, TinyCNN

ROOT = Path(__file__).resolve().parents[2]
BETA = 0.15  # b = 4 on 28x28: a 9x9 square


def images(seed, shape=(3, 2, 28, 28)):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def test_mask_is_the_centred_square():
    mask = low_frequency_mask(28, 28, BETA)
    rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
    assert rows.tolist() == list(range(10, 19)) and cols.tolist() == list(range(10, 19))
    assert int(mask.sum()) == 81
    assert low_frequency_mask(9, 8, 0.0).nonzero().tolist() == [[4, 4]]  # b = 0: only the DC term
    with pytest.raises(ValueError, match="beta"):
        low_frequency_window(8, 8, 0.6)


def test_interpolation_preserves_phase_and_changes_only_the_low_frequency_square():
    x, other = images(0), images(1)
    lam = torch.tensor([0.3, 0.7, 1.0])
    out = amplitude_interpolate(x, amplitude_phase(other)[0], lam, BETA)
    assert out.shape == x.shape and out.dtype == x.dtype
    a_x, p_x = amplitude_phase(x)
    a_out, p_out = amplitude_phase(out)
    a_other = amplitude_phase(other)[0]
    mask = low_frequency_mask(28, 28, BETA)
    # amplitude outside M unchanged; inside M the interpolation ((1-λ) A_k + λ A_n)
    torch.testing.assert_close(a_out[..., ~mask], a_x[..., ~mask], rtol=1e-4, atol=1e-3)
    expected = (1 - lam.view(-1, 1, 1, 1)) * a_x + lam.view(-1, 1, 1, 1) * a_other
    torch.testing.assert_close(a_out[..., mask], expected[..., mask], rtol=1e-4, atol=1e-3)
    assert float((a_out[..., mask] - a_x[..., mask]).abs().max()) > 1.0  # it did change
    # phase preserved everywhere the amplitude is not negligible
    significant = (a_x > 1e-2) & (a_out > 1e-2)
    diff = torch.remainder(p_out - p_x + torch.pi, 2 * torch.pi) - torch.pi
    assert float(diff[significant].abs().max()) < 1e-3
    # the square alone, as a client shares it, gives the same result as the full spectrum
    crop = low_frequency_amplitude(other, BETA)
    assert crop.shape == (3, 2, 9, 9)
    torch.testing.assert_close(amplitude_interpolate(x, crop, lam, BETA), out)


def test_lambda_zero_returns_the_image():
    x = images(2)
    torch.testing.assert_close(amplitude_interpolate(x, amplitude_phase(images(3))[0], 0.0, BETA), x, rtol=0, atol=1e-5)


def test_amplitude_mix_module():
    x = images(4, (5, 1, 28, 28))
    mix = AmplitudeMix(BETA)
    assert mix(x) is x and "bank" not in mix.state_dict()  # empty bank: identity; bank never in the state
    mix.set_bank(low_frequency_amplitude(images(5, (6, 1, 28, 28)), BETA))
    out = mix(x, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and not torch.allclose(out, x)
    again = mix(x, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    with pytest.raises(ValueError, match="low-frequency square"):
        amplitude_interpolate(x, torch.ones(1, 1, 5, 5), 0.5, BETA)


def test_strategy_distributes_other_clients_amplitudes_and_checkpoints_the_bank():
    strategy = FedDGStrategy()
    state = {"w": torch.zeros(2)}
    first = strategy.configure_train(0, [0, 1, 2], state)
    assert all(m.config[REQUEST_KEY] and BANK_KEY not in m.extras for m in first)
    updates = [
        ClientUpdate(c, 0, {"w": torch.full((2,), float(c))}, 10, extras={AMPLITUDE_KEY: torch.full((2, 1, 3, 3), c)})
        for c in (0, 1)
    ]
    merged = strategy.aggregate_train(0, updates, state)
    assert torch.equal(merged["w"], torch.full((2,), 0.5))
    messages = {m.client_id: m for m in strategy.configure_train(1, [0, 1, 2], state)}
    assert messages[0].extras[BANK_KEY].unique().tolist() == [1.0]  # only the others' amplitudes
    assert messages[2].extras[BANK_KEY].shape == (4, 1, 3, 3)
    assert not messages[0].config[REQUEST_KEY] and messages[2].config[REQUEST_KEY]
    restored = FedDGStrategy()
    restored.load_state_dict(strategy.state_dict())
    assert torch.equal(restored.bank_for(2), strategy.bank_for(2))


def test_client_trains_with_a_bank_in_plain_lightning_and_uploads_amplitudes(datamodule_factory):
    dm = datamodule_factory(num_clients=2)
    torch.manual_seed(0)
    client = FedDGClient(TinyCNN(1, 4), beta=0.25, amplitudes_per_client=5, inner_lr=0.05)
    client.set_amplitude_bank(low_frequency_amplitude(images(6, (4, 1, 8, 8)), 0.25))
    client.collect_amplitudes(5)
    seen = {}
    original = client.extra_losses

    def spy(batch, output):
        extras = original(batch, output)
        seen.update({k: float(v.detach()) for k, v in extras.items()})
        return extras

    client.extra_losses = spy
    trainer = L.Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(client, train_dataloaders=dm.client_train_dataloader(0))
    assert "feddg_meta" in seen and seen["feddg_meta"] > 0
    update = client.build_update(num_samples=10)
    assert update.extras[AMPLITUDE_KEY].shape == (5, 1, 5, 5)  # b = 2 on 8x8
    assert "amplitude_mix.bank" not in client.state_dict()


@pytest.mark.parametrize("first_order", [False, True])
def test_episodic_gradient_flows_through_the_inner_step(first_order):
    torch.manual_seed(0)
    client = FedDGClient(MLP(16, 3, (8,)), inner_lr=0.1, first_order=first_order)
    x, x_aug, y = torch.randn(6, 1, 4, 4), torch.randn(6, 1, 4, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    params = dict(client.named_parameters())
    output = client.compute_step((x, y))
    total = output.loss + client.meta_test_loss(output.loss, x_aug, y)
    got = torch.autograd.grad(total, list(params.values()))

    def objective(values):
        named = dict(zip(params, values, strict=True))
        inner = torch.nn.functional.cross_entropy(torch.func.functional_call(client, named, (x,)), y)
        grads = torch.autograd.grad(inner, values, create_graph=not first_order, retain_graph=True)
        fast = {n: v - 0.1 * g for (n, v), g in zip(named.items(), grads, strict=True)}
        return inner + torch.nn.functional.cross_entropy(torch.func.functional_call(client, fast, (x_aug,)), y)

    values = [p.detach().clone().requires_grad_() for p in params.values()]
    expected = torch.autograd.grad(objective(values), values)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b)


def test_feddg_config_runs_two_rounds_via_the_cli(tmp_path):
    args = [
        "fit",
        "--config",
        str(ROOT / "configs/data/synthetic.yaml"),
        "--config",
        str(ROOT / "configs/model/tinycnn.yaml"),
        "--config",
        str(ROOT / "configs/method/feddg.yaml"),
        "--model.init_args.amplitudes_per_client",
        "4",
        "--trainer.rounds",
        "2",
        "--trainer.run_dir",
        str(tmp_path),
        "--trainer.progress",
        "false",
        "--trainer.accelerator",
        "cpu",
    ]
    cli = build_cli(args=args)
    history = cli.trainer.federated_result.history
    assert [h["round"] for h in history] == [1, 2]
    strategy = cli.trainer.server
    assert isinstance(strategy, FedDGStrategy) and sorted(strategy.bank) == [0, 1, 2, 3]
    # round 0: amplitudes uploaded (up > down); round 1: the bank is downloaded (down > up)
    assert history[0]["mb_up"] > history[0]["mb_down"] and history[1]["mb_down"] > history[1]["mb_up"]


def test_domain_shift_datamodule_restyles_clients_and_holds_out_the_test_style():
    source = Synthetic(num_classes=4, num_train=200, num_test=40, image_size=8)
    kwargs = dict(dataset=source, partitioner=IID(), num_clients=4, batch_size=8, seed=0)
    plain = DomainShiftDataModule(styles=["identity"], test_style="invert", **kwargs)
    styled = DomainShiftDataModule(styles=["identity", "invert", "gamma:2.0"], test_style="blur:1.0", **kwargs)
    plain.setup()
    styled.setup()
    loaded = source.load()
    mean, std = loaded.mean[0], loaded.std[0]
    for client in range(4):
        assert torch.equal(plain.built.labels, styled.built.labels)
        part = styled._train_slice(client)
        raw = plain.built.images[part] * std + mean
        expected = (apply_style(raw, styled.client_style(client)) - mean) / std
        torch.testing.assert_close(styled.built.images[part], expected, rtol=1e-5, atol=1e-5)
    assert [styled.client_style(c) for c in range(4)] == ["identity", "invert", "gamma:2.0", "identity"]
    # plain's test set is inverted; undo it to compare with the raw images
    raw_test = 1 - (plain.built.test_images * std + mean)
    expected_test = (apply_style(raw_test, "blur:1.0") - mean) / std
    torch.testing.assert_close(styled.built.test_images, expected_test, rtol=1e-4, atol=1e-4)
    assert parse_style("invert+contrast:0.3") == [("invert", None), ("contrast", 0.3)]
    with pytest.raises(ValueError, match="hold it out"):
        DomainShiftDataModule(styles=["identity", "invert"], test_style="invert", **kwargs)
    with pytest.raises(ValueError, match="unknown style"):
        DomainShiftDataModule(styles=["sepia"], **kwargs)
