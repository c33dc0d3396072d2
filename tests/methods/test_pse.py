"""PSE: unit properties of the adapter, the attention path, the scores and the excitation."""

import math

import pytest
import torch
from torch import nn

from lit_fed.methods.pse import (
    BackboneAdapter,
    CrossModelAttention,
    PSEClient,
    PSEStepOutput,
    channel_grad_magnitude,
    num_excited,
    score_increment,
    select_channels,
)
from lit_fed.models import MLP, FedAvgCNN, TinyCNN
from lit_fed.models.resnet import resnet8

ARCHS = ("tinycnn", "fedavgcnn", "resnet8")


def make_backbone(arch: str) -> nn.Module:
    if arch == "tinycnn":
        return TinyCNN(in_channels=1, num_classes=4, width=8)
    if arch == "fedavgcnn":  # 20x20 input: a 2x2 last-stage map of 64 channels
        return FedAvgCNN(in_channels=1, num_classes=4, hidden_dim=16, input_size=20)
    return resnet8(num_classes=4, in_channels=3, width=8)


def make_input(arch: str, batch: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    shape = {"tinycnn": (1, 8, 8), "fedavgcnn": (1, 20, 20), "resnet8": (3, 16, 16)}[arch]
    return torch.rand(batch, *shape), torch.arange(batch) % 4


def make_pse(arch: str = "tinycnn", seed: int = 0, **kwargs) -> PSEClient:
    torch.manual_seed(seed)
    return PSEClient(make_backbone(arch), **kwargs)


def randomize_(module: nn.Module, seed: int) -> None:
    """Independent random values for every float parameter and buffer (so that W_g != W_k everywhere)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):
            if tensor.is_floating_point():
                tensor.copy_(torch.randn(tensor.shape, generator=generator))


def score_key(layer: str) -> str:
    return "excitation_scores.score__" + layer.replace(".", "__")


# -- structure -------------------------------------------------------------------------------------------------------
EXPECTED = {
    # arch: (feature channels, stages, excited layers by default)
    "tinycnn": (8, ["conv"], ["conv"]),
    "fedavgcnn": (64, ["conv1", "conv2"], ["conv1.0"]),
    "resnet8": (32, ["conv1", "layer1", "layer2", "layer3"], ["conv1", "layer1.0.conv1", "layer1.0.conv2"]),
}


@pytest.mark.parametrize("arch", ARCHS)
def test_structure_split_and_global_path_match_the_backbone(arch):
    model = make_pse(arch)
    channels, stages, excited = EXPECTED[arch]
    assert model.feature_channels == channels
    assert [name for name, _ in model.conv_stages] == stages
    assert model.excited_layers == excited
    all_convs = [n for n, m in model.backbone.named_modules() if isinstance(m, nn.Conv2d)]
    assert model.scored_layers == all_convs  # scores for every conv layer, excitation only in the first stages
    backbone_keys = {f"backbone.{k}" for k in model.backbone.state_dict()}
    assert set(model.shared_keys()) == backbone_keys
    personal = set(model.personal_keys())
    assert personal == set(model.state_dict()) - backbone_keys
    for prefix in ("personal_model.", "cross_attention.", "personal_head.", "aux_head.", "excitation_scores."):
        assert any(k.startswith(prefix) for k in personal), prefix
    # the personal copy has no head of its own (PSE's heads read the pooled tokens)
    assert not any(k.startswith(("personal_model.fc.", "personal_model.fc1.")) for k in personal)
    assert model.personal_head.in_features == channels and model.aux_head.in_features == channels
    # the global copy's path (task loss, global logits) is exactly the backbone
    x, y = make_input(arch)
    model.eval()
    with torch.no_grad():
        reference = model.backbone(x)
        out = model.compute_step((x, y))
        torch.testing.assert_close(out.logits, reference)
        torch.testing.assert_close(model.global_logits(x), reference)
        assert out.global_map.shape[:2] == (len(x), channels) and out.global_map.dim() == 4
        assert model(x).shape == model.predict_logits(x).shape == (len(x), 4)
        torch.testing.assert_close(model(x), model.predict_logits(x))


def test_only_the_global_copy_is_uploaded():
    model = make_pse("resnet8")
    update = model.build_update(num_samples=7)
    assert set(update.state) == {f"backbone.{k}" for k in model.backbone.state_dict()}
    assert not any("personal" in k or "score" in k or "attention" in k or "aux" in k for k in update.state)


def test_personal_state_round_trips_including_scores():
    source, target = make_pse("tinycnn", seed=0), make_pse("tinycnn", seed=1)
    randomize_(source, seed=5)
    state = source.personal_state()
    assert score_key("conv") in state and "excitation_scores.num_updates" in state
    target.load_personal_state(state)
    for key, value in state.items():
        assert torch.equal(target.state_dict()[key], value), key


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"score": "relative"}, "score"),
        ({"rho": 1.5}, "rho"),
        ({"beta": -0.1}, "beta"),
        ({"ema": 1.0}, "ema"),
        ({"aux_weight": -1.0}, "aux_weight"),
        ({"num_heads": 3}, "num_heads"),
        ({"excited_stages": ["layer9"]}, "layer9"),
        ({"excited_stages": 0}, "excited_stages"),
    ],
)
def test_bad_options_fail_clearly(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_pse("resnet8", **kwargs)


def test_non_convolutional_backbone_is_refused():
    with pytest.raises(TypeError, match="convolutional"):
        PSEClient(MLP(in_features=16, num_classes=4))


def test_excited_stages_by_count_and_by_name():
    assert make_pse("resnet8", excited_stages=3).excited_layers == [
        "conv1",
        "layer1.0.conv1",
        "layer1.0.conv2",
        "layer2.0.conv1",
        "layer2.0.conv2",
        "layer2.0.downsample.0",
    ]
    assert make_pse("resnet8", excited_stages=["layer3"]).excited_layers == [
        "layer3.0.conv1",
        "layer3.0.conv2",
        "layer3.0.downsample.0",
    ]
    assert make_pse("fedavgcnn", excited_stages=2).excited_layers == ["conv1.0", "conv2.0"]
    off = make_pse("resnet8", excitation=False)
    assert off.excitation_scores is None and off.excited_layers == [] and off.scored_layers == []
    assert not any(k.startswith("excitation_scores") for k in off.state_dict())


def test_adapter_stages_descend_through_wrappers():
    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = resnet8(num_classes=4, width=8)

    stages = BackboneAdapter.conv_stages(Wrapper())
    assert [name for name, _ in stages] == ["model.conv1", "model.layer1", "model.layer2", "model.layer3"]
    assert stages[1][1] == ["model.layer1.0.conv1", "model.layer1.0.conv2"]


# -- attention -------------------------------------------------------------------------------------------------------
def test_cross_attention_shape_and_residual():
    torch.manual_seed(0)
    attention = CrossModelAttention(dim=8, num_heads=4)
    personal, global_ = torch.randn(2, 8, 3, 5), torch.randn(2, 8, 3, 5)
    out = attention(personal, global_)
    assert out.shape == (2, 15, 8)
    # residual on the personal tokens + LayerNorm: with the attention's output projection zeroed, out = LN(tokens)
    with torch.no_grad():
        attention.attn.out_proj.weight.zero_()
        attention.attn.out_proj.bias.zero_()
    tokens = personal.flatten(2).transpose(1, 2)
    torch.testing.assert_close(attention(personal, global_), attention.norm(tokens))
    with pytest.raises(ValueError, match="num_heads"):
        CrossModelAttention(dim=10, num_heads=4)


def _nonzero_grads(model: PSEClient, term: torch.Tensor, extra: dict[str, torch.Tensor]) -> set[str]:
    names = [n for n, p in model.named_parameters()]
    params = [p for _, p in model.named_parameters()]
    grads = torch.autograd.grad(term, params + list(extra.values()), retain_graph=True, allow_unused=True)
    named = dict(zip(names + list(extra), grads, strict=True))
    return {n for n, g in named.items() if g is not None and g.abs().sum() > 0}


@pytest.mark.parametrize("arch", ARCHS)
def test_each_loss_term_trains_only_its_own_model(arch):
    """Global CE → only the global copy; personal CE → personal model + attention + personal head (never the global
    copy nor its features); aux CE → personal model + aux head."""
    model = make_pse(arch)
    model.train()
    x, y = make_input(arch)
    out = model.compute_step((x, y))
    assert isinstance(out, PSEStepOutput)
    extras = model.extra_losses((x, y), out)
    assert set(extras) == {"personal_ce", "aux_ce"}
    probe = {"H_g": out.global_map}

    def groups(names: set[str]) -> set[str]:
        return {n.split(".")[0] for n in names}

    global_grads = _nonzero_grads(model, out.loss, probe)
    assert groups(global_grads) == {"backbone", "H_g"}
    backbone_weights = {f"backbone.{n}" for n, _ in model.backbone.named_parameters() if n.endswith("weight")}
    assert backbone_weights <= global_grads
    personal_grads = _nonzero_grads(model, extras["personal_ce"], probe)
    assert groups(personal_grads) == {"personal_model", "cross_attention", "personal_head"}
    conv_weights = {f"personal_model.{layer}.weight" for layer in model.scored_layers}
    assert conv_weights <= personal_grads  # the gradient flows through H_k into every personal conv
    assert {"cross_attention.attn.in_proj_weight", "cross_attention.attn.out_proj.weight"} <= personal_grads
    aux_grads = _nonzero_grads(model, extras["aux_ce"], probe)
    assert groups(aux_grads) == {"personal_model", "aux_head"}
    total = out.loss + sum(extras.values())
    torch.testing.assert_close(
        extras["aux_ce"],
        0.5 * nn.functional.cross_entropy(model.aux_head(model.personal_feature_map(x).mean((2, 3))), y),
    )
    assert torch.isfinite(total)


def test_attention_reads_the_global_features_and_without_attention_nothing_global_is_touched():
    x, y = make_input("tinycnn")
    for attention in (True, False):
        model = make_pse("tinycnn", attention=attention)
        model.eval()
        with torch.no_grad():
            before = model.predict_logits(x)
            for p in model.backbone.parameters():
                p.mul_(1.5).add_(0.1)
            after = model.predict_logits(x)
        assert not torch.allclose(before, after) if attention else torch.equal(before, after)
    # attention off: the personal path never calls the global copy, even in the training step
    model = make_pse("tinycnn", attention=False)
    assert model.cross_attention is None and not any(k.startswith("cross_attention") for k in model.state_dict())

    def forbidden(x):
        raise AssertionError("the global features were computed")

    model.global_feature_map = forbidden
    poisoned = PSEStepOutput(
        loss=torch.zeros(()), logits=torch.zeros(6, 4), target=y, global_map=torch.full((6, 8, 8, 8), float("nan"))
    )
    extras = model.extra_losses((x, y), poisoned)
    assert all(torch.isfinite(v) for v in extras.values())
    assert torch.isfinite(model.predict_logits(x)).all()


def test_personal_prediction_uses_the_received_feature_map_detached():
    model = make_pse("tinycnn")
    x, y = make_input("tinycnn")
    global_map = model.global_feature_map(x)
    assert global_map.requires_grad
    logits, _ = model.personal_outputs(x, global_map)
    (grad,) = torch.autograd.grad(logits.sum(), [global_map], allow_unused=True)
    assert grad is None


# -- scores ----------------------------------------------------------------------------------------------------------
def set_hand_grads(model: PSEClient, seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    grads = {}
    for layer in model.scored_layers:
        global_conv, personal_conv = model.layer_pair(layer)
        g_global = torch.randn(global_conv.weight.shape, generator=generator)
        g_personal = 1.3 * torch.randn(personal_conv.weight.shape, generator=generator)
        global_conv.weight.grad, personal_conv.weight.grad = g_global.clone(), g_personal.clone()
        grads[layer] = (g_global, g_personal)
    return grads


def reference_magnitude(grad: torch.Tensor) -> torch.Tensor:
    """mean |g| over each output channel's slice, by an explicit loop in float64."""
    return torch.stack([grad[c].double().abs().sum() / grad[c].numel() for c in range(grad.shape[0])])


@pytest.mark.parametrize("mode", ["absolute", "one_sided"])
def test_ema_update_equals_the_formula(mode):
    model = make_pse("resnet8", score=mode, ema=0.9)
    generator = torch.Generator().manual_seed(1)
    initial = {}
    for layer in model.scored_layers:
        score = model.excitation_scores.score(layer)
        score.copy_(torch.rand(score.shape, generator=generator))
        initial[layer] = score.clone().double()
    expected = dict(initial)
    for step in range(2):
        grads = set_hand_grads(model, seed=10 + step)
        model.update_scores()
        for layer, (g_global, g_personal) in grads.items():
            diff = reference_magnitude(g_global) - reference_magnitude(g_personal)
            increment = diff.abs() if mode == "absolute" else diff.clamp_min(0)
            expected[layer] = 0.9 * expected[layer] + 0.1 * increment
    for layer in model.scored_layers:
        torch.testing.assert_close(model.excitation_scores.score(layer).double(), expected[layer], rtol=1e-6, atol=1e-7)
    assert int(model.excitation_scores.num_updates) == 2


def test_one_sided_and_absolute_scores_differ_as_defined():
    a_global = torch.tensor([0.5, 0.1, 0.3, 0.0])
    a_personal = torch.tensor([0.2, 0.4, 0.3, 0.1])
    torch.testing.assert_close(score_increment(a_global, a_personal, "absolute"), torch.tensor([0.3, 0.3, 0.0, 0.1]))
    torch.testing.assert_close(score_increment(a_global, a_personal, "one_sided"), torch.tensor([0.3, 0.0, 0.0, 0.0]))
    absolute, one_sided = make_pse("tinycnn", score="absolute"), make_pse("tinycnn", score="one_sided")
    for model in (absolute, one_sided):
        set_hand_grads(model, seed=3)
        model.update_scores()
    s_abs, s_one = absolute.excitation_scores.score("conv"), one_sided.excitation_scores.score("conv")
    grads = set_hand_grads(make_pse("tinycnn"), seed=3)["conv"]
    larger_global = channel_grad_magnitude(grads[0]) >= channel_grad_magnitude(grads[1])
    assert larger_global.any() and (~larger_global).any()  # both cases occur in this draw
    torch.testing.assert_close(s_one[larger_global], s_abs[larger_global])
    assert torch.all(s_one[~larger_global] == 0) and torch.all(s_abs[~larger_global] > 0)


def test_nonfinite_gradients_skip_the_ema_update():
    model = make_pse("tinycnn")
    set_hand_grads(model, seed=0)
    model.update_scores()
    before = model.excitation_scores.score("conv").clone()
    assert before.abs().sum() > 0 and int(model.excitation_scores.num_updates) == 1
    set_hand_grads(model, seed=1)
    other = torch.tensor([1.0, float("inf")])  # e.g. a head's gradient: the grad scaler would skip this step
    model.update_scores(check=[model.backbone.conv.weight.grad, other])
    assert torch.equal(model.excitation_scores.score("conv"), before) and int(model.excitation_scores.num_updates) == 1
    model.backbone.conv.weight.grad[0, 0, 0, 0] = float("nan")
    model.update_scores()
    assert torch.equal(model.excitation_scores.score("conv"), before) and int(model.excitation_scores.num_updates) == 1


def test_inv_scale_unscales_the_gradients():
    scaled, plain = make_pse("tinycnn"), make_pse("tinycnn")
    grads = set_hand_grads(plain, seed=4)
    plain.update_scores()
    for layer, (g_global, g_personal) in grads.items():
        global_conv, personal_conv = scaled.layer_pair(layer)
        global_conv.weight.grad, personal_conv.weight.grad = g_global * 1024.0, g_personal * 1024.0
    scaled.update_scores(inv_scale=1 / 1024.0)
    torch.testing.assert_close(scaled.excitation_scores.score("conv"), plain.excitation_scores.score("conv"))


def test_missing_gradients_leave_scores_unchanged():
    model = make_pse("tinycnn")
    model.update_scores()  # no gradient at all
    assert model.excitation_scores.score("conv").abs().sum() == 0 and int(model.excitation_scores.num_updates) == 0


# -- selection and excitation ----------------------------------------------------------------------------------------
def test_num_excited_and_selection_rules():
    assert [num_excited(c, 0.3) for c in (1, 8, 10, 16, 64)] == [1, 3, 3, 5, 20]
    assert num_excited(10, 0.0) == 0 and num_excited(10, 1.0) == 10
    scores = torch.tensor([0.2, 0.9, 0.2, 0.0, 0.9, 0.4])
    indices, alpha = select_channels(scores, 0.5)
    assert indices.tolist() == [1, 4, 5]  # ties broken by the lower index
    torch.testing.assert_close(alpha, torch.tensor([1.0, 1.0, 0.4 / 0.9]))
    indices, alpha = select_channels(torch.zeros(5), 0.4)
    assert len(indices) == 2 and torch.equal(alpha, torch.zeros(2))


def reference_selection(scores: torch.Tensor, rho: float) -> tuple[list[int], list[float]]:
    values = scores.double().tolist()
    k = math.ceil(round(rho * len(values), 9))
    order = sorted(range(len(values)), key=lambda c: (-values[c], c))[:k]
    top = max(values)
    return order, [values[c] / top if top > 0 else 0.0 for c in order]


@pytest.mark.parametrize(
    ("arch", "kwargs"),
    [
        ("resnet8", {}),
        ("resnet8", {"rho": 0.5, "beta": 0.8, "excited_stages": ["layer2"]}),
        ("fedavgcnn", {}),  # conv layers with a bias
        ("fedavgcnn", {"excited_stages": 2, "rho": 1.0}),
        ("tinycnn", {"beta": 1.0}),
    ],
)
def test_excitation_changes_exactly_the_selected_channels(arch, kwargs):
    """After ``on_train_epoch_end``: W_k[c] += β α_c (W_g[c] − W_k[c]) for the top-ρ channels of each excited layer,
    and every other tensor entry of the module is bit-identical."""
    model = make_pse(arch, **kwargs)
    randomize_(model, seed=7)
    generator = torch.Generator().manual_seed(8)
    for layer in model.scored_layers:
        score = model.excitation_scores.score(layer)
        score.copy_(torch.rand(score.shape, generator=generator))
    first = model.excited_layers[0]
    tied = model.excitation_scores.score(first)
    tied[:3] = tied.max()  # ties at the top
    tied[-2:] = 0.0
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.on_train_epoch_end()
    after = model.state_dict()
    beta = kwargs.get("beta", 0.5)
    rho = kwargs.get("rho", 0.3)
    changed: dict[str, torch.Tensor] = {}
    for layer in model.excited_layers:
        indices, alpha = reference_selection(before[score_key(layer)], rho)
        recorded_indices, recorded_alpha = model.last_excitation[layer]
        assert recorded_indices.tolist() == indices
        torch.testing.assert_close(recorded_alpha.double(), torch.tensor(alpha, dtype=torch.float64))
        for suffix in ("weight", "bias"):
            key_k, key_g = f"personal_model.{layer}.{suffix}", f"backbone.{layer}.{suffix}"
            if key_k not in before:
                continue
            expected = before[key_k].double().clone()
            for c, a in zip(indices, alpha, strict=True):
                expected[c] += beta * a * (before[key_g][c].double() - before[key_k][c].double())
            changed[key_k] = expected
    assert changed, "nothing was excited"
    for key, value in after.items():
        if key in changed:
            torch.testing.assert_close(value.double(), changed[key], rtol=0, atol=1e-6)
            moved = (value != before[key]).flatten(1).any(1) if value.dim() > 1 else value != before[key]
            layer = key.removeprefix("personal_model.").rsplit(".", 1)[0]
            indices, alpha = reference_selection(before[score_key(layer)], rho)
            assert set(moved.nonzero().flatten().tolist()) == {c for c, a in zip(indices, alpha, strict=True) if a > 0}
        else:
            assert torch.equal(value, before[key]), key


def test_excitation_off_changes_nothing_at_epoch_end():
    model = make_pse("resnet8", excitation=False)
    randomize_(model, seed=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.on_train_epoch_end()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_generic_path_with_a_timm_backbone():
    pytest.importorskip("timm")
    from lit_fed.models import TimmBackbone

    torch.manual_seed(0)
    model = PSEClient(TimmBackbone("resnet10t", num_classes=4, in_channels=3))
    assert [name for name, _ in model.conv_stages] == [
        f"model.{n}" for n in ("conv1", "layer1", "layer2", "layer3", "layer4")
    ]
    assert model.excited_stage_names == ["model.conv1", "model.layer1", "model.layer2"]
    x, y = torch.rand(2, 3, 32, 32), torch.tensor([0, 1])
    output = model.compute_step((x, y))
    (output.loss + sum(model.extra_losses((x, y), output).values())).backward()
    model.update_scores()
    assert all(len(indices) > 0 for indices, _ in model.excite().values())
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model.global_logits(x), model.backbone(x))
