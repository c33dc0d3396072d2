"""FedLoGe (Xiao et al., ICLR 2024): SSE-C construction, the three-loss client, GLA-FR, the CLI contract.

Every test here checks a property that breaks when the method is implemented wrongly: the SSE-C geometry and
sparsity, that SSE-C never moves, that no gradient reaches the backbone from ψ or φ_k, which state is shared or
personal, the exact GLA-FR formulas, the absent-class mask, and resume-to-the-same-numbers through the CLI.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from helpers import client_model, store_of

from lit_fed.cli import build_cli
from lit_fed.data import Dirichlet, FederatedDataModule, Synthetic
from lit_fed.loop.callbacks import LoopCallback
from lit_fed.loop.federated_loop import FederatedLoop
from lit_fed.methods import FedLoGeClient
from lit_fed.methods.fedloge import (
    build_sse_classifier,
    dataloader_label_counts,
    etf_geometry,
    global_realign,
    mask_absent_classes,
    norm_transfer,
    simplex_etf,
    sse_loss,
)
from lit_fed.methods.fedloge.etf import refine_sparse_etf, sse_loss_and_gradient
from lit_fed.models import TinyCNN

ROOT = Path(__file__).resolve().parents[2]
CPU = {"accelerator": "cpu", "devices": 1}
FAST_SSE = {"sse_steps": 30, "sse_lr": 1e-3}  # SSE-C refinement is exercised by its own tests


def make_client(seed: int = 0, **kwargs) -> FedLoGeClient:
    torch.manual_seed(seed)
    kwargs = {**FAST_SSE, **kwargs}
    kwargs.setdefault("optimizer", lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.5))
    return FedLoGeClient(TinyCNN(in_channels=1, num_classes=4), **kwargs)


def long_tailed_datamodule(num_clients: int = 4) -> FederatedDataModule:
    """4 classes with 300, 110, 40, 15 training samples (imbalance 20) over ``num_clients`` Dirichlet(1) clients."""
    return FederatedDataModule(
        Synthetic(num_classes=4, num_train=1200, num_test=200, image_size=8),
        Dirichlet(alpha=1.0, min_size=5),
        num_clients=num_clients,
        batch_size=16,
        eval_batch_size=64,
        imbalance_ratio=20,
    )


def run_loop(client, dm, tmp_path, rounds=2, callbacks=(), **kwargs) -> FederatedLoop:
    loop = FederatedLoop(
        client,
        dm,
        rounds=rounds,
        trainer_kwargs=CPU,
        run_dir=tmp_path,
        loggers=[],
        progress=False,
        checkpoint_every=0,
        callbacks=callbacks,
        shot_thresholds=(20, 100),
        **kwargs,
    )
    loop.run()
    return loop


# -- SSE-C construction ----------------------------------------------------------------------------------------


def test_simplex_etf_has_unit_columns_and_equal_negative_cosines():
    d, c = 12, 5
    m = simplex_etf(d, c, seed=3)
    assert m.shape == (d, c) and m.dtype == torch.float64
    torch.testing.assert_close(m.norm(dim=0), torch.ones(c, dtype=torch.float64))
    gram = m.T @ m
    off_diagonal = gram[~torch.eye(c, dtype=torch.bool)]
    torch.testing.assert_close(off_diagonal, torch.full_like(off_diagonal, -1.0 / (c - 1)))
    torch.testing.assert_close(m.sum(dim=1), torch.zeros(d, dtype=torch.float64))  # centred: M 1 = 0


@pytest.mark.parametrize(("d", "c", "sparsity", "steps"), [(32, 4, 0.6, 0), (32, 4, 0.6, 40), (20, 5, 0.29, 40)])
def test_sse_sparsity_is_exactly_as_set(d, c, sparsity, steps):
    sse = build_sse_classifier(d, c, sparsity=sparsity, steps=steps, lr=1e-3, seed=0)
    num_zero = int(sparsity * d * c + 1e-9)  # floor(sparsity · d · C): 76 of 128, 29 of 100
    assert sse.weight.shape == sse.mask.shape == (c, d) and sse.bias.shape == (c,)
    assert int((sse.weight == 0).sum()) == num_zero
    assert int((~sse.mask).sum()) == num_zero
    assert bool((sse.weight[~sse.mask] == 0).all())  # the masked gradient keeps the zeroed entries at exactly 0
    assert bool((sse.weight[sse.mask] != 0).all())


def test_sse_refinement_pulls_norms_to_target_and_widens_the_smallest_angle():
    """Tolerance: |‖m_c‖ − 0.1| <= 0.015 for d=32, C=8 after 400 Adam steps (lr 3e-3).

    The fixed point sits slightly above 0.1 (observed 0.104-0.111 here): the angle term's gradient is orthogonal
    to m_c, but Adam's per-coordinate scaling leaks part of it into the radial direction. At the paper's sizes
    (d=512, C=10, the official 10k steps at lr 1e-4) the norms land within 1e-3 of 0.1 (see the slow test below).
    """
    for seed in (0, 1):
        raw = etf_geometry(build_sse_classifier(32, 8, steps=0, seed=seed).weight)
        refined = etf_geometry(build_sse_classifier(32, 8, steps=400, lr=3e-3, seed=seed).weight)
        assert bool((raw.norms > 0.3).all())  # a unit ETF column with 60% of its entries zeroed
        assert bool(((refined.norms - 0.1).abs() <= 0.015).all()), refined.norms
        assert refined.min_angle > raw.min_angle
        assert math.degrees(refined.min_angle) > 95.0  # the dense ETF's angle is arccos(-1/7) = 98.2°


def test_sse_is_deterministic_for_a_seed_and_differs_across_seeds():
    a = build_sse_classifier(16, 4, steps=20, lr=1e-3, seed=7)
    b = build_sse_classifier(16, 4, steps=20, lr=1e-3, seed=7)
    c = build_sse_classifier(16, 4, steps=20, lr=1e-3, seed=8)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)
    assert not torch.equal(a.weight, c.weight) and not torch.equal(a.mask, c.mask)
    assert not torch.equal(a.bias, c.bias)
    bound = 1 / math.sqrt(16)  # nn.Linear's default bias init, U(-1/sqrt(d), 1/sqrt(d))
    assert bool((a.bias.abs() <= bound).all())


def test_sse_loss_matches_the_formula_by_hand():
    m = torch.tensor([[1.0, 0.0, 0.5], [0.0, 2.0, 0.5]], dtype=torch.float64)  # columns = class vectors
    norms = [1.0, 2.0, math.sqrt(0.5)]
    norm_term = sum((n - 0.1) ** 2 for n in norms)
    cos = lambda i, j: float(m[:, i] @ m[:, j]) / (norms[i] * norms[j])  # noqa: E731
    nearest = [max(cos(i, j) for j in range(3) if j != i) for i in range(3)]
    angle_term = -sum(math.acos(min(max(v, -0.99999), 0.99999)) for v in nearest) / 3
    assert float(sse_loss(m, 0.1)) == pytest.approx(norm_term + angle_term, rel=1e-12)


def test_closed_form_gradient_equals_autograd():
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        keep = torch.rand(20, 5, generator=generator) > 0.6
        m = (torch.randn(20, 5, generator=generator, dtype=torch.float64) * keep).requires_grad_(True)
        sse_loss(m, 0.1).backward()
        loss, grad = sse_loss_and_gradient(m.detach().clone(), 0.1)
        torch.testing.assert_close(loss, sse_loss(m.detach(), 0.1), rtol=0, atol=1e-14)
        torch.testing.assert_close(grad, m.grad, rtol=0, atol=1e-13)


def test_refinement_equals_autograd_with_torch_adam_and_a_masked_gradient():
    """The official loop: zero_grad, loss.backward(), grad *= mask, Adam(lr).step() — reproduced to rounding."""
    keep = torch.rand(16, 4, generator=torch.Generator().manual_seed(1)) > 0.6
    start = simplex_etf(16, 4, seed=2)
    reference = (start * keep).requires_grad_(True)
    optimizer = torch.optim.Adam([reference], lr=1e-3)
    for _ in range(60):
        optimizer.zero_grad()
        sse_loss(reference, 0.1).backward()
        reference.grad.mul_(keep.double())
        optimizer.step()
    refined = refine_sparse_etf(start, keep, steps=60, lr=1e-3)
    torch.testing.assert_close(refined, reference.detach(), rtol=0, atol=1e-12)
    assert bool((refined[~keep] == 0).all())


@pytest.mark.parametrize(
    "kwargs",
    [
        {"feature_dim": 3, "num_classes": 4},
        {"num_classes": 1},
        {"sparsity": 1.0},
        {"sparsity": -0.1},
        {"steps": -1},
        {"lr": 0.0},
    ],
)
def test_sse_rejects_bad_arguments(kwargs):
    args = {"feature_dim": 8, "num_classes": 4, **kwargs}
    with pytest.raises(ValueError):
        build_sse_classifier(**args)


@pytest.mark.skipif(not os.environ.get("LIT_FED_SLOW"), reason="~10k Adam steps; set LIT_FED_SLOW=1")
def test_sse_official_defaults_reach_the_target_norm():
    geometry = etf_geometry(build_sse_classifier(512, 10, seed=0).weight)
    assert bool(((geometry.norms - 0.1).abs() < 1e-3).all())
    assert math.degrees(geometry.min_angle) > 95.0


# -- the client: losses, gradients, state --------------------------------------------------------------------


def _batch(seed: int = 0, n: int = 12):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=generator), torch.randint(0, 4, (n,), generator=generator)


def test_each_loss_term_reaches_only_its_own_parameters():
    """CE(SSE-C(f)) → backbone body only; aux_ce → ψ only; local_ce → φ_k only (checked term by term)."""
    client = make_client()
    batch = _batch()
    output = client.compute_step(batch)
    extras = client.extra_losses(batch, output)
    assert set(extras) == {"aux_ce", "local_ce"}
    psi = {f"backbone.fc.{n}" for n, _ in client.aux_head.named_parameters()}
    phi = {f"local_head.{n}" for n, _ in client.local_head.named_parameters()}
    params = dict(client.named_parameters())
    body = set(params) - psi - phi
    assert body and all(not n.startswith(("sse", "label_stats")) for n in params)  # SSE-C has no parameters
    expected = {"task": body, "aux_ce": psi, "local_ce": phi}
    for name, term in {"task": output.loss, **extras}.items():
        grads = torch.autograd.grad(term, list(params.values()), retain_graph=True, allow_unused=True)
        reached = {n for n, g in zip(params, grads, strict=True) if g is not None and bool(g.abs().sum() > 0)}
        assert reached == expected[name], name
        assert all(g is None for n, g in zip(params, grads, strict=True) if n not in expected[name]), name
    torch.testing.assert_close(output.loss, F.cross_entropy(client.sse(output.embedding), batch[1]))


def test_training_step_sums_the_three_terms():
    client = make_client()
    batch = _batch(1)
    f = client.embed(batch[0])
    expected = (
        F.cross_entropy(client.sse(f), batch[1])
        + F.cross_entropy(client.aux_head(f), batch[1])
        + F.cross_entropy(client.local_head(f), batch[1])
    )
    torch.testing.assert_close(client.training_step(batch, 0), expected)


def test_no_ssec_ablation_trains_the_backbone_through_psi():
    client = make_client(use_sse=False)
    assert client.sse is None
    batch = _batch()
    output = client.compute_step(batch)
    extras = client.extra_losses(batch, output)
    assert set(extras) == {"local_ce"}  # ψ is trained by the task loss itself
    torch.testing.assert_close(output.loss, F.cross_entropy(client.aux_head(output.embedding), batch[1]))
    params = dict(client.named_parameters())
    grads = dict(zip(params, torch.autograd.grad(output.loss, list(params.values()), allow_unused=True), strict=True))
    assert grads["backbone.fc.weight"] is not None and grads["backbone.conv.weight"] is not None
    assert grads["local_head.weight"] is None
    local = torch.autograd.grad(extras["local_ce"], list(params.values()), allow_unused=True)
    assert {n for n, g in zip(params, local, strict=True) if g is not None} == {"local_head.weight", "local_head.bias"}


def test_psi_is_shared_and_phi_and_label_counts_are_personal():
    client = make_client()
    shared, personal = set(client.shared_keys()), set(client.personal_keys())
    assert {"backbone.fc.weight", "backbone.fc.bias", "backbone.bn.running_mean"} <= shared
    assert personal == {"local_head.weight", "local_head.bias", "label_stats.counts"}
    assert not any(k.startswith("sse") for k in client.state_dict())  # SSE-C is never sent nor stored
    client.sse  # noqa: B018 - build it
    assert not any(k.startswith("sse") for k in client.state_dict())
    optimized = {id(p) for group in client.configure_optimizers().param_groups for p in group["params"]}
    assert id(client.sse.weight) not in optimized and not client.sse.weight.requires_grad
    update = client.build_update(num_samples=3)
    assert set(update.state) == shared


def test_default_optimizer_is_sgd_lr_003_momentum_05():
    torch.manual_seed(0)
    (group,) = FedLoGeClient(TinyCNN(1, 4), **FAST_SSE).configure_optimizers().param_groups
    assert group["lr"] == 0.03 and group["momentum"] == 0.5


def test_psi_cannot_be_made_personal():
    from lit_fed.client.split import Head

    with pytest.raises(ValueError, match="must be shared"):
        make_client(personal=[Head()])


class _Snapshots(LoopCallback):
    def __init__(self) -> None:
        self.stores = []

    def on_round_end(self, loop, round, metrics):
        self.stores.append({cid: store_of(loop).get(cid) for cid in range(loop.num_clients)})


class _RecordingClient(FedLoGeClient):
    """Records the local head each client starts a round with (after the loop restored its personal state)."""

    starts: dict

    def on_train_start(self) -> None:
        super().on_train_start()
        self.starts[(self.client_id, self.current_round)] = self.local_head.weight.detach().clone()


def test_training_keeps_sse_bit_identical_and_phi_persists_per_client(tmp_path):
    torch.manual_seed(0)
    client = _RecordingClient(TinyCNN(1, 4), **FAST_SSE)
    client.starts = {}
    reference = build_sse_classifier(client.feature_dim, 4, steps=FAST_SSE["sse_steps"], lr=FAST_SSE["sse_lr"])
    snapshots = _Snapshots()
    dm = long_tailed_datamodule()
    loop = run_loop(client, dm, tmp_path, rounds=2, callbacks=[snapshots])

    assert torch.equal(client.sse.weight, reference.weight) and torch.equal(client.sse.bias, reference.bias)
    assert "backbone.fc.weight" in loop.global_state  # ψ is aggregated
    assert not any(k.startswith(("local_head", "label_stats")) for k in loop.global_state)
    round0, round1 = snapshots.stores
    heads = [round1[cid]["local_head.weight"] for cid in range(4)]
    for i in range(4):
        # the head a client starts round 1 with is the one it stored after round 0 (persistence) ...
        torch.testing.assert_close(client.starts[(i, 1)], round0[i]["local_head.weight"], rtol=0, atol=0)
        assert not torch.equal(round1[i]["local_head.weight"], round0[i]["local_head.weight"])  # ... and trains
        assert torch.equal(round1[i]["label_stats.counts"], dm.client_label_counts(i))
        for j in range(i):
            assert not torch.equal(heads[i], heads[j])  # φ_k differs between clients


# -- GLA-FR ----------------------------------------------------------------------------------------------------


def test_global_realignment_gives_every_class_norm_1_7_and_keeps_directions():
    psi = torch.randn(6, 9) * torch.linspace(0.1, 3.0, 6)[:, None]  # long-tail-like norm spread
    realigned = global_realign(psi)
    torch.testing.assert_close(realigned.norm(dim=1), torch.full((6,), 1.7))
    torch.testing.assert_close(F.cosine_similarity(realigned, psi, dim=1), torch.ones(6))
    assert torch.equal(global_realign(torch.zeros(2, 3)), torch.zeros(2, 3))


def test_norm_transfer_carries_the_local_head_norms():
    psi, phi = torch.randn(5, 7, dtype=torch.float64), torch.randn(5, 7, dtype=torch.float64)
    raw = norm_transfer(psi, phi)  # the paper and the authors' code: ψ_{k,c} = ‖φ_{k,c}‖ · ψ_c
    torch.testing.assert_close(raw, phi.norm(dim=1, keepdim=True) * psi, rtol=0, atol=0)
    unit = norm_transfer(psi, phi, normalize=True)  # variant: the norms of ψ_k equal those of φ_k
    torch.testing.assert_close(unit.norm(dim=1), phi.norm(dim=1), rtol=1e-12, atol=0)
    torch.testing.assert_close(F.cosine_similarity(unit, psi, dim=1), torch.ones(5, dtype=torch.float64))
    with pytest.raises(ValueError):
        norm_transfer(psi, phi[:4])


def _perturbed_client(**kwargs) -> FedLoGeClient:
    client = make_client(**kwargs)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for head in (client.aux_head, client.local_head):
            head.weight.mul_(torch.rand(head.weight.shape[0], 1, generator=generator) * 3)  # unequal class norms
            head.bias.add_(torch.randn(head.bias.shape, generator=generator))
    return client.eval()


@pytest.mark.parametrize("normalize", [False, True])
def test_evaluation_logits_equal_the_gla_fr_formulas_by_hand(normalize):
    client = _perturbed_client(normalize_transfer=normalize)
    x, _ = _batch(2)
    with torch.no_grad():
        f = client.embed(x).double()
        psi_w, psi_b = client.aux_head.weight.double(), client.aux_head.bias.double()
        phi_w, phi_b = client.local_head.weight.double(), client.local_head.bias.double()
        psi_hat = 1.7 * psi_w / psi_w.norm(dim=1, keepdim=True)
        direction = psi_w / psi_w.norm(dim=1, keepdim=True) if normalize else psi_w
        psi_k = phi_w.norm(dim=1, keepdim=True) * direction
        torch.testing.assert_close(client.global_logits(x).double(), f @ psi_hat.T + psi_b, rtol=1e-5, atol=1e-5)
        expected = (f @ phi_w.T + phi_b) + (f @ psi_k.T + psi_b)
        torch.testing.assert_close(client.predict_logits(x).double(), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(client(x), client.predict_logits(x))
        norms = client.transferred_weight().double().norm(dim=1)
        target = phi_w.norm(dim=1) * (1.0 if normalize else psi_w.norm(dim=1))
        torch.testing.assert_close(norms, target, rtol=1e-6, atol=0)


def test_without_realignment_global_is_psi_and_personal_is_phi_plus_psi():
    client = _perturbed_client(realign=False)
    x, _ = _batch(3)
    with torch.no_grad():
        f = client.embed(x)
        torch.testing.assert_close(client.global_logits(x), client.aux_head(f))
        torch.testing.assert_close(client.predict_logits(x), client.local_head(f) + client.aux_head(f))


def test_global_classifier_sse_evaluates_through_ssec():
    client = _perturbed_client(global_classifier="sse")
    x, _ = _batch(4)
    with torch.no_grad():
        torch.testing.assert_close(client.global_logits(x), client.sse(client.embed(x)))
    with pytest.raises(ValueError):
        make_client(global_classifier="sse", use_sse=False)


def test_absent_class_masking_is_off_by_default_and_sets_minus_inf_when_on():
    x, _ = _batch(5)
    counts = torch.tensor([5, 0, 3, 0])
    off = _perturbed_client()
    off.label_stats.counts.copy_(counts)
    on = _perturbed_client(mask_absent_classes=True)
    on.label_stats.counts.copy_(counts)
    with torch.no_grad():
        plain, masked = off.predict_logits(x), on.predict_logits(x)
    assert bool(torch.isfinite(plain).all())
    assert bool(torch.isneginf(masked[:, [1, 3]]).all())
    torch.testing.assert_close(masked[:, [0, 2]], plain[:, [0, 2]])
    assert torch.equal(on.global_logits(x), off.global_logits(x))  # the global model is never masked
    on.label_stats.counts.zero_()  # a client with no recorded data is not masked at all
    assert torch.equal(on.predict_logits(x), plain)
    assert torch.equal(mask_absent_classes(plain, torch.zeros(4)), plain)


def test_masking_in_the_loop_uses_each_clients_training_counts(tmp_path):
    dm = FederatedDataModule(
        Synthetic(num_classes=4, num_train=320, num_test=120, image_size=8),
        Dirichlet(alpha=0.1, min_size=10),
        num_clients=4,
        batch_size=16,
    )
    loop = run_loop(make_client(mask_absent_classes=True), dm, tmp_path, rounds=1)
    x = dm.global_test_dataloader().dataset.images[:8]
    for cid in range(4):
        counts = dm.client_label_counts(cid)
        with client_model(loop, cid) as model, torch.no_grad():
            assert torch.equal(model.label_stats.counts, counts)
            logits = model.predict_logits(x)
        assert torch.equal(torch.isneginf(logits).all(dim=0), counts == 0)


def test_label_counts_come_from_the_dataset_without_iterating(datamodule):
    loader = datamodule.client_train_dataloader(0, 0)
    state = loader.sampler.generator.get_state()
    counts = dataloader_label_counts(loader, 4)
    assert torch.equal(counts, datamodule.client_label_counts(0))
    assert torch.equal(loader.sampler.generator.get_state(), state)  # no random numbers consumed
    pairs = [(torch.zeros(2, 1), torch.tensor([1, 3])), (torch.zeros(1, 1), torch.tensor([3]))]
    assert dataloader_label_counts(pairs, 4).tolist() == [0, 1, 0, 2]  # fallback: iterate


def test_trains_as_a_plain_lightning_module(datamodule):
    client = make_client()
    trainer = L.Trainer(max_epochs=1, limit_train_batches=3, logger=False, enable_checkpointing=False, **CPU)
    trainer.fit(client, datamodule.train_dataloader())
    pooled = sum(datamodule.client_label_counts(c) for c in range(datamodule.num_clients))
    assert torch.equal(client.label_stats.counts, pooled)


# -- the CLI contract --------------------------------------------------------------------------------------------

LONG_TAIL = [  # 300/110/40/15 samples per class → 225/82/30/11 in the client train splits: many, medium, few
    "--data.init_args.imbalance_ratio",
    "20",
    "--data.init_args.dataset.init_args.num_train",
    "1200",
]
BASE = ["--config", str(ROOT / "configs/data/synthetic.yaml"), "--config", str(ROOT / "configs/model/tinycnn.yaml")]


def cli_fit(config: str, run_dir: Path, rounds: int, *extra: str):
    args = ["fit", *BASE, "--config", str(ROOT / f"configs/method/{config}.yaml"), *LONG_TAIL]
    if config != "fedloge_no_ssec":
        args += ["--model.init_args.sse_steps", "30"]
    args += ["--trainer.rounds", str(rounds), "--trainer.run_dir", str(run_dir), "--trainer.progress", "false"]
    return build_cli(args=[*args, *extra]).trainer.federated_result


@pytest.mark.parametrize("config", ["fedloge", "fedloge_no_ssec", "fedloge_no_glafr"])
def test_config_runs_reports_shot_groups_and_resumes_to_the_same_numbers(config, tmp_path):
    full = cli_fit(config, tmp_path / "full", 2)
    assert len(full.history) == 2
    last = full.history[-1]
    for prefix in ("global_acc", "personal_acc"):
        for group in ("many", "medium", "few"):
            assert 0.0 <= last[f"{prefix}_{group}"] <= 1.0
    resumed = cli_fit(
        config, tmp_path / "resumed", 2, "--ckpt_path", str(tmp_path / "full/checkpoints/round_00001.ckpt")
    )
    keys = [k for k in last if "acc" in k or k == "train_loss"]
    assert {k: resumed.history[-1][k] for k in keys} == {k: last[k] for k in keys}
    for key, value in full.global_state.items():
        assert torch.equal(resumed.global_state[key], value), key


def parse(*configs: str):
    args = [*BASE]
    for config in configs:
        args += ["--config", str(ROOT / f"configs/{config}.yaml")]
    return build_cli(args=args, run=False)


def test_method_configs_set_the_papers_options():
    model = parse("method/fedloge").model
    assert isinstance(model, FedLoGeClient) and model.sse_classifier is None  # SSE-C is built on first use
    assert model.sse_arguments["steps"] == 10_000 and model.sse_arguments["sparsity"] == 0.6
    assert model.realign and not model.mask_absent_classes and model.global_scale == 1.7
    (group,) = model.configure_optimizers().param_groups
    assert group["lr"] == 0.03 and group["momentum"] == 0.5
    federation = parse("method/fedloge", "federation/fedloge").trainer.settings
    assert federation.client_fraction == 0.3 and federation.local_epochs == 5
    assert not parse("method/fedloge_no_ssec").model.use_sse
    assert not parse("method/fedloge_no_glafr").model.realign
    cli = parse("data/fmnist_lt")
    data = cli.datamodule
    assert data.imbalance_ratio == 100 and data.num_clients == 40 and data.partitioner.alpha == 0.5
    assert cli.trainer.settings.shot_thresholds == (200, 1000)  # many > 1000 >= medium >= 200 > few
