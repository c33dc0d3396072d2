"""Functional loss twins (lit_fed.losses): hand-computed values, invariances, gradients, precision."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lit_fed.losses import (
    LipschitzAlignmentLoss,
    MOONContrastiveLoss,
    NotTrueDistillationLoss,
    SelfDistillationLoss,
    fedlsd_loss,
    fedntd_loss,
    lipschitz_constant,
    lipschitz_mse,
    moon_contrastive,
    not_true_kl,
    not_true_logits,
    scale_to_reference,
    self_distillation_kl,
    spectral_norm_power_iteration,
    transmitting_matrix,
)

STUDENT = [[2.0, 0.5, -1.0, 0.0], [0.1, 0.2, 0.3, 3.0]]
TEACHER = [[1.0, 1.5, 0.0, -0.5], [-1.0, 0.0, 2.0, 0.5]]
TARGET = [0, 3]


def softmax(values: list[float], tau: float = 1.0) -> list[float]:
    exps = [math.exp(v / tau) for v in values]
    return [e / sum(exps) for e in exps]


def kl(p: list[float], q: list[float]) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))


def hand_not_true_kl(tau: float) -> float:
    total = 0.0
    for s, t, y in zip(STUDENT, TEACHER, TARGET, strict=True):
        s_nt = [v for c, v in enumerate(s) if c != y]
        t_nt = [v for c, v in enumerate(t) if c != y]
        total += kl(softmax(t_nt, tau), softmax(s_nt, tau))
    return total / len(STUDENT)


def hand_ce() -> float:
    return sum(-math.log(softmax(s)[y]) for s, y in zip(STUDENT, TARGET, strict=True)) / len(STUDENT)


def hand_full_kl(tau: float) -> float:
    return sum(kl(softmax(t, tau), softmax(s, tau)) for s, t in zip(STUDENT, TEACHER, strict=True)) / len(STUDENT)


def tensors() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor(TARGET)


# -- not-true distillation --------------------------------------------------------------------------------
def test_not_true_logits_drop_the_true_column_in_order():
    s, _, y = tensors()
    torch.testing.assert_close(not_true_logits(s, y), torch.tensor([[0.5, -1.0, 0.0], [0.1, 0.2, 0.3]]))


@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_not_true_kl_equals_hand_computed_value(tau):
    s, t, y = tensors()
    assert not_true_kl(s, t, y, tau).item() == pytest.approx(hand_not_true_kl(tau), rel=1e-5)


def test_fedntd_loss_is_ce_plus_beta_tau_squared_kl():
    s, t, y = tensors()
    expected = hand_ce() + 0.5 * 2.0**2 * hand_not_true_kl(2.0)
    assert fedntd_loss(s, t, y, tau=2.0, beta=0.5).item() == pytest.approx(expected, rel=1e-5)
    assert NotTrueDistillationLoss(tau=2.0, beta=0.5)(s, t, y).item() == pytest.approx(expected, rel=1e-5)


def test_not_true_kl_ignores_the_true_class_logit_of_student_and_teacher():
    s, t, y = tensors()
    base = not_true_kl(s, t, y, 1.0)
    rows = torch.arange(len(y))
    for which in ("student", "teacher", "both"):
        s2, t2 = s.clone(), t.clone()
        if which in ("student", "both"):
            s2[rows, y] += torch.tensor([7.0, -3.0])
        if which in ("teacher", "both"):
            t2[rows, y] += torch.tensor([-5.0, 11.0])
        assert torch.equal(not_true_kl(s2, t2, y, 1.0), base), which
    # ... and its gradient w.r.t. the true-class logits is exactly zero.
    s_grad = s.clone().requires_grad_(True)
    not_true_kl(s_grad, t, y, 2.0).backward()
    assert torch.all(s_grad.grad[rows, y] == 0)
    assert torch.count_nonzero(s_grad.grad) > 0


def test_teacher_gets_no_gradient():
    s, t, y = tensors()
    s.requires_grad_(True)
    t.requires_grad_(True)
    (fedntd_loss(s, t, y) + fedlsd_loss(s, t, y) + self_distillation_kl(s, t)).backward()
    assert t.grad is None and s.grad is not None


# -- self-distillation (FedLSD) ----------------------------------------------------------------------------
@pytest.mark.parametrize("tau", [1.0, 3.0])
def test_self_distillation_kl_equals_hand_computed_value(tau):
    s, t, _ = tensors()
    assert self_distillation_kl(s, t, tau).item() == pytest.approx(hand_full_kl(tau), rel=1e-5)


def test_fedlsd_loss_is_weighted_ce_plus_weighted_kl():
    s, t, y = tensors()
    expected = 0.7 * hand_ce() + 0.3 * hand_full_kl(2.0)
    assert fedlsd_loss(s, t, y, tau=2.0, beta=0.3).item() == pytest.approx(expected, rel=1e-5)
    assert SelfDistillationLoss(tau=2.0, beta=0.3)(s, t, y).item() == pytest.approx(expected, rel=1e-5)
    assert self_distillation_kl(t, t).item() == pytest.approx(0.0, abs=1e-7)


def test_distillation_losses_are_float32_under_bf16_autocast():
    s, t, y = tensors()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        values = [fedntd_loss(s.bfloat16(), t.bfloat16(), y), fedlsd_loss(s.bfloat16(), t.bfloat16(), y)]
    assert all(v.dtype == torch.float32 for v in values)


def test_bad_arguments_raise():
    s, t, y = tensors()
    with pytest.raises(ValueError, match="tau"):
        not_true_kl(s, t, y, 0.0)
    with pytest.raises(ValueError, match="logits"):
        self_distillation_kl(s, t[:, :3])


# -- MOON contrastive ---------------------------------------------------------------------------------------
Z = [[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]]
Z_GLOB = [[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]]
Z_PREV = [[0.0, 0.0, 1.0], [1.0, 1.0, 1.0]]


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def hand_moon(tau: float, negatives: list[list[list[float]]]) -> float:
    total = 0.0
    for i, z in enumerate(Z):
        positive = math.exp(cosine(z, Z_GLOB[i]) / tau)
        denominator = positive + sum(math.exp(cosine(z, neg[i]) / tau) for neg in negatives)
        total += -math.log(positive / denominator)
    return total / len(Z)


@pytest.mark.parametrize("tau", [0.5, 1.0])
def test_moon_contrastive_equals_hand_computed_value(tau):
    z, z_glob, z_prev = torch.tensor(Z), torch.tensor(Z_GLOB), torch.tensor(Z_PREV)
    assert moon_contrastive(z, z_glob, z_prev, tau).item() == pytest.approx(hand_moon(tau, [Z_PREV]), rel=1e-6)
    assert MOONContrastiveLoss(tau)(z, z_glob, z_prev).item() == pytest.approx(hand_moon(tau, [Z_PREV]), rel=1e-6)
    # a buffer of several previous models: one negative each
    two = moon_contrastive(z, z_glob, [z_prev, z_glob.flip(1)], tau).item()
    assert two == pytest.approx(hand_moon(tau, [Z_PREV, [row[::-1] for row in Z_GLOB]]), rel=1e-6)


def test_moon_contrastive_is_zero_without_a_previous_model():
    z, z_glob = torch.tensor(Z), torch.tensor(Z_GLOB)
    assert moon_contrastive(z, z_glob, None).item() == 0.0
    assert moon_contrastive(z, z_glob, []).item() == 0.0


def test_moon_contrastive_gradient_reaches_only_z():
    z = torch.tensor(Z, requires_grad=True)
    z_glob = torch.tensor(Z_GLOB, requires_grad=True)
    z_prev = torch.tensor(Z_PREV, requires_grad=True)
    moon_contrastive(z, z_glob, z_prev).backward()
    assert z.grad is not None and z_glob.grad is None and z_prev.grad is None


# -- Lipschitz / spectral ---------------------------------------------------------------------------------
def test_transmitting_matrix_pools_then_averages_over_space():
    generator = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, 8, 8, generator=generator)
    b = torch.rand(2, 5, 4, 4, generator=generator)
    pooled = F.avg_pool2d(a, 2)
    expected = torch.einsum("bihw,bjhw->bij", pooled, b) / 16
    torch.testing.assert_close(transmitting_matrix(a, b), expected)


@pytest.mark.parametrize("shape", [(4, 6, 5), (6, 3)])
def test_power_iteration_matches_matrix_2_norm_on_transmitting_matrices(shape):
    generator = torch.Generator().manual_seed(1)
    if len(shape) == 3:  # non-negative (ReLU) feature maps, as FedAlign sees them
        a = torch.rand(shape[0], shape[1], 4, 4, generator=generator)
        b = torch.rand(shape[0], shape[2], 4, 4, generator=generator)
        matrix = transmitting_matrix(a, b)
    else:
        matrix = torch.rand(*shape, generator=generator)
    expected = torch.linalg.matrix_norm(matrix, 2)
    torch.testing.assert_close(spectral_norm_power_iteration(matrix, 10), expected, rtol=1e-4, atol=1e-6)


def test_power_iteration_converges_on_a_general_matrix():
    matrix = torch.randn(3, 7, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    torch.testing.assert_close(
        spectral_norm_power_iteration(matrix, 500), torch.linalg.matrix_norm(matrix, 2), rtol=1e-6, atol=1e-8
    )


def test_power_iteration_of_a_zero_matrix_is_finite():
    matrix = torch.zeros(2, 3, 3, requires_grad=True)
    sigma = spectral_norm_power_iteration(matrix)
    sigma.sum().backward()
    assert torch.isfinite(sigma).all() and torch.isfinite(matrix.grad).all()


def test_scale_to_reference_sets_the_value_and_keeps_the_gradient_direction():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    loss = (x**2).sum()  # 5
    scaled = scale_to_reference(loss, torch.tensor(2.0), mu=0.45)
    assert scaled.item() == pytest.approx(0.45 * 2.0)
    scaled.backward()
    torch.testing.assert_close(x.grad, (0.45 * 2.0 / 5.0) * 2 * x.detach())
    zero = scale_to_reference(x.sum() * 0.0, 1.0, 0.45)
    assert zero.item() == 0.0


def test_lipschitz_alignment_module_matches_the_functions():
    generator = torch.Generator().manual_seed(3)
    full_in, full_out = torch.rand(4, 8, 8, 8, generator=generator), torch.rand(4, 16, 4, 4, generator=generator)
    slice_in = full_in[:, :2]
    slice_out = torch.rand(4, 4, 4, 4, generator=generator, requires_grad=True)
    ce = torch.tensor(1.7)
    expected = scale_to_reference(
        lipschitz_mse(lipschitz_constant(slice_in, slice_out), lipschitz_constant(full_in, full_out)), ce, 0.45
    )
    value = LipschitzAlignmentLoss(mu=0.45)(slice_in, slice_out, full_in, full_out, ce)
    torch.testing.assert_close(value, expected)
    assert value.item() == pytest.approx(0.45 * 1.7, rel=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert lipschitz_constant(slice_in.bfloat16(), slice_out.bfloat16()).dtype == torch.float32
