import math

import pytest
import torch

from lit_fed.client.serialization import encode_tensors
from lit_fed.compression import (
    SVD,
    CompressedPayload,
    Dense,
    ErrorFeedback,
    Quantize8Bit,
    TopK,
    dequantize_uint8,
    energy_rank,
    energy_schedule,
    quantize_uint8,
    svd_compress,
    svd_reconstruct,
    warmup_sparsity,
)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def sample_state(seed=0):
    g = gen(seed)
    return {
        "conv.weight": torch.randn(16, 8, 3, 3, generator=g),
        "fc.weight": torch.randn(64, 200, generator=g),
        "fc.bias": torch.randn(64, generator=g),
        "bn.num_batches_tracked": torch.tensor(7),
        "scalar": torch.tensor(0.25),
    }


ALL = [Dense(), TopK(0.9), TopK(0.99, exact=True), SVD(), Quantize8Bit(), Quantize8Bit(stochastic=True)]


@pytest.mark.parametrize("compressor", ALL, ids=repr)
def test_dense_and_low_dim_tensors_round_trip_exactly(compressor):
    state = sample_state()
    payload = compressor.compress(state, gen())
    out = compressor.decompress(payload)
    assert list(out) == list(state)
    for key in ("fc.bias", "bn.num_batches_tracked", "scalar"):  # dim() <= 1 or integer: dense, bit-exact
        assert key in payload.tensors and out[key].dtype == state[key].dtype
        assert torch.equal(out[key], state[key])
    for key, value in out.items():
        assert value.shape == state[key].shape
    if compressor.lossless:
        for key in state:
            assert torch.equal(out[key], state[key])


@pytest.mark.parametrize("compressor", ALL, ids=repr)
def test_byte_count_is_the_serialized_length(compressor):
    payload = compressor.compress(sample_state(), gen())
    encoded = encode_tensors(payload.tensors)
    assert payload.nbytes == len(encoded) == len(payload.encode())
    decoded = CompressedPayload.decode(encoded)
    for key, value in payload.tensors.items():
        assert torch.equal(decoded.tensors[key], value)
    # what the receiver decodes from the bytes is what the sender meant
    for key, value in compressor.decompress(decoded).items():
        torch.testing.assert_close(value, compressor.decompress(payload)[key], rtol=0, atol=0)


@pytest.mark.parametrize("compressor", [TopK(0.99), SVD(), Quantize8Bit()], ids=repr)
def test_lossy_compressors_send_fewer_bytes_than_dense(compressor):
    g = gen(1)
    low_rank = torch.randn(256, 8, generator=g) @ torch.randn(8, 256, generator=g)
    state = {"w": low_rank, "b": torch.randn(256, generator=g)}
    assert compressor.compress(state, gen()).nbytes < Dense().compress(state).nbytes / 3


def test_incompressible_tensor_goes_dense_never_inflates():
    state = {"w": torch.randn(20, 20, generator=gen())}  # full-rank noise: SVD factors would be larger
    payload = SVD(energy=0.999).compress(state)
    assert list(payload.tensors) == ["w"] and torch.equal(payload.tensors["w"], state["w"])


# -- top-k -------------------------------------------------------------------------------------------------


def test_topk_sampled_threshold_keeps_about_the_target_fraction():
    flat = torch.randn(1_000_000, generator=gen(3))
    compressor = TopK(sparsity=0.99, sample_fraction=0.01, tolerance=math.inf)  # no fallback: the sampled path
    payload = compressor.compress({"w": flat.view(1000, 1000)}, gen(4))
    kept = payload.tensors["w#topk.idx"].numel()
    assert compressor.stats["sampled"] == 1 and compressor.stats["fallback"] == 0
    assert abs(kept / 10_000 - 1) < 0.3  # relative sd ~10% (100 expected sampled entries above the threshold)
    values = payload.tensors["w#topk.val"]
    dropped = torch.ones(flat.numel(), dtype=torch.bool)
    dropped[payload.tensors["w#topk.idx"].long()] = False
    assert values.abs().min() >= flat[dropped].abs().max()  # kept entries are exactly those above the threshold


def test_topk_exact_keeps_exactly_k_largest():
    w = torch.randn(300, 400, generator=gen(5))
    compressor = TopK(sparsity=0.99, exact=True)
    out = compressor.decompress(compressor.compress({"w": w}))["w"]
    k = math.ceil(0.01 * w.numel())
    assert int((out != 0).sum()) == k
    expected = torch.zeros(w.numel())
    idx = w.abs().flatten().topk(k).indices
    expected[idx] = w.flatten()[idx]
    assert torch.equal(out.flatten(), expected)


def test_topk_falls_back_to_exact_when_the_sample_misleads():
    w = torch.ones(200, 500)  # all ties: the sampled threshold keeps everything
    compressor = TopK(sparsity=0.9, sample_fraction=0.01)
    payload = compressor.compress({"w": w}, gen())
    assert compressor.stats["fallback"] == 1
    assert payload.tensors["w#topk.idx"].numel() == math.ceil(0.1 * w.numel())


def test_topk_wire_format_and_index_dtype():
    payload = TopK(0.9, exact=True).compress({"small": torch.randn(10, 10), "big": torch.randn(200, 200)})
    assert payload.tensors["small#topk.idx"].dtype == torch.int8
    assert payload.tensors["big#topk.idx"].dtype == torch.int32
    assert payload.tensors["big#topk.shape"].tolist() == [200, 200]
    idx = payload.tensors["big#topk.idx"].long()
    assert bool((idx[1:] > idx[:-1]).all())  # sorted, unique


def test_dgc_warmup_schedule():
    assert [warmup_sparsity(t, 0.999, 4) for t in range(6)] == pytest.approx(
        [0.75, 0.9375, 0.984375, 0.99609375, 0.999, 0.999]
    )
    assert warmup_sparsity(0, 0.5, 4) == 0.5  # never above the target
    scheduled = TopK(0.999, warmup_rounds=4).at_round(1, 10)
    assert scheduled.sparsity == pytest.approx(0.9375) and scheduled.target_sparsity == 0.999


# -- SVD ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("energy", [0.5, 0.9, 0.95, 0.98])
def test_svd_keeps_energy_above_threshold_with_the_smallest_rank(energy):
    g = gen(6)
    matrix = torch.randn(60, 12, generator=g) @ torch.diag(torch.logspace(0, -2, 12)) @ torch.randn(12, 40, generator=g)
    u, s, v = svd_compress(matrix, energy)
    sigma = torch.linalg.svdvals(matrix.double())
    total = float((sigma**2).sum())
    k = s.numel()
    assert u.shape == (60, k) and v.shape == (40, k)
    assert float((sigma[:k] ** 2).sum()) > energy * total
    assert float((sigma[: k - 1] ** 2).sum()) <= energy * total  # k - 1 would not be enough
    torch.testing.assert_close(s.double(), sigma[:k], rtol=1e-4, atol=1e-6)
    residual = float(((matrix.double() - svd_reconstruct(u, s, v).double()) ** 2).sum())
    assert residual == pytest.approx(total - float((sigma[:k] ** 2).sum()), rel=1e-3, abs=1e-6)


def test_svd_reconstruction_is_u_diag_s_vt_and_conv_kernels_are_reshaped():
    g = gen(7)
    kernel = (torch.randn(16, 2, generator=g) @ torch.randn(2, 8 * 9, generator=g)).view(16, 8, 3, 3)
    compressor = SVD(energy=0.999)
    payload = compressor.compress({"conv": kernel})
    assert payload.tensors["conv#svd.U"].shape == (16, 2) and payload.tensors["conv#svd.V"].shape == (72, 2)
    torch.testing.assert_close(compressor.decompress(payload)["conv"], kernel, rtol=1e-4, atol=1e-5)
    u, s, v = payload.tensors["conv#svd.U"], payload.tensors["conv#svd.S"], payload.tensors["conv#svd.V"]
    torch.testing.assert_close(svd_reconstruct(u, s, v), u @ torch.diag(s) @ v.T)


def test_svd_energy_schedule_and_edge_cases():
    assert energy_schedule(0, 100) == pytest.approx(0.95)
    assert energy_schedule(50, 100) == pytest.approx(0.965)
    assert SVD().at_round(100, 100).energy == pytest.approx(0.98)
    assert SVD(energy=0.9).at_round(50, 100).energy == 0.9
    assert energy_rank(torch.zeros(5), 0.95) == 0
    assert energy_rank(torch.tensor([1.0, 1.0]), 1.0) == 2
    u, s, v = svd_compress(torch.zeros(4, 3), 0.95)
    assert s.numel() == 0 and svd_reconstruct(u, s, v).shape == (4, 3)


# -- quantization ------------------------------------------------------------------------------------------


def test_quantization_error_is_at_most_half_a_step():
    x = torch.randn(5000, generator=gen(8)) * 3 + 1
    codes, low, scale = quantize_uint8(x)
    assert codes.dtype == torch.uint8 and int(codes.min()) == 0 and int(codes.max()) == 255
    assert scale == pytest.approx((float(x.max()) - float(x.min())) / 255)
    error = (dequantize_uint8(codes, low, scale) - x).abs()
    assert float(error.max()) <= scale / 2 * (1 + 1e-4) + 1e-6
    compressor = Quantize8Bit()
    out = compressor.decompress(compressor.compress({"w": x.view(50, 100)}))["w"]
    assert float((out - x.view(50, 100)).abs().max()) <= scale / 2 * (1 + 1e-4) + 1e-6


def test_stochastic_rounding_is_unbiased():
    x = torch.rand(200, generator=gen(9))
    draws = torch.stack([dequantize_uint8(*quantize_uint8(x, True, gen(s))) for s in range(2000)])
    scale = (float(x.max()) - float(x.min())) / 255
    assert float((draws - x).abs().max()) < scale * (1 + 1e-4)  # always one of the two neighbouring levels
    # mean of 2000 draws: sd per entry <= scale / (2 sqrt(2000)); 5 sd margin
    assert float((draws.mean(0) - x).abs().max()) < 5 * scale / (2 * math.sqrt(2000))
    deterministic_bias = (dequantize_uint8(*quantize_uint8(x)) - x).abs().mean()
    assert float((draws.mean(0) - x).abs().mean()) < float(deterministic_bias)


def test_stochastic_rounding_is_seeded():
    x = torch.randn(30, 30)
    a = Quantize8Bit(stochastic=True).compress({"w": x}, gen(1)).tensors["w#q8.q"]
    b = Quantize8Bit(stochastic=True).compress({"w": x}, gen(1)).tensors["w#q8.q"]
    assert torch.equal(a, b)


def test_constant_tensor_quantizes_exactly():
    compressor = Quantize8Bit()
    x = torch.full((10, 10), 2.5)
    assert torch.equal(compressor.decompress(compressor.compress({"w": x}))["w"], x)


# -- error feedback ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("compressor", [TopK(0.95), SVD(energy=0.8), Quantize8Bit()], ids=repr)
def test_residual_telescopes_sum_sent_equals_sum_true_minus_last_residual(compressor):
    feedback = ErrorFeedback(compressor, residual=True)
    g = gen(10)
    state, sent_sum, true_sum = None, None, None
    for _ in range(6):
        update = {"w": torch.randn(40, 50, generator=g), "b": torch.randn(50, generator=g)}
        step = feedback.step(update, state, gen())
        state = step.state
        sent_sum = step.sent if sent_sum is None else {k: sent_sum[k] + v for k, v in step.sent.items()}
        true_sum = update if true_sum is None else {k: true_sum[k] + v for k, v in update.items()}
    for key in true_sum:
        torch.testing.assert_close(sent_sum[key], true_sum[key] - state[f"residual/{key}"], rtol=1e-5, atol=1e-5)
    assert float(state["residual/w"].abs().sum()) > 0 and float(state["residual/b"].abs().sum()) == 0


def test_topk_residual_is_the_unsent_part():
    feedback = ErrorFeedback(TopK(0.9, exact=True), residual=True)
    g = torch.randn(30, 40, generator=gen(11))
    step = feedback.step({"w": g}, None)
    mask = step.sent["w"] != 0
    assert torch.equal(step.state["residual/w"], g.masked_fill(mask, 0.0))
    assert torch.equal(step.sent["w"], g.masked_fill(~mask, 0.0))


def test_dgc_momentum_correction_and_factor_masking():
    feedback = ErrorFeedback(TopK(0.9, exact=True), residual=True, momentum=0.9)
    g1, g2 = torch.randn(30, 40, generator=gen(12)), torch.randn(30, 40, generator=gen(13))
    s1 = feedback.step({"w": g1}, None)
    mask1 = s1.sent["w"] != 0
    assert torch.equal(s1.state["velocity/w"], g1.masked_fill(mask1, 0.0))
    s2 = feedback.step({"w": g2}, s1.state)
    u2 = 0.9 * s1.state["velocity/w"] + g2
    accumulated = s1.state["residual/w"] + u2
    torch.testing.assert_close(s2.sent["w"] + s2.state["residual/w"], accumulated)
    mask2 = s2.sent["w"] != 0
    torch.testing.assert_close(s2.state["velocity/w"], u2.masked_fill(mask2, 0.0))


def test_momentum_needs_residual_and_a_sparsifier():
    with pytest.raises(ValueError, match="residual"):
        ErrorFeedback(TopK(0.9), residual=False, momentum=0.9)
    with pytest.raises(ValueError, match="not a sparsifier"):
        ErrorFeedback(Quantize8Bit(), residual=True, momentum=0.9)


def test_invalid_arguments_fail_clearly():
    with pytest.raises(ValueError, match="sparsity"):
        TopK(1.0)
    with pytest.raises(ValueError, match="energy"):
        SVD(energy=1.5)
    with pytest.raises(ValueError, match="separator"):
        TopK(0.9).compress({"a#b": torch.zeros(4, 4)})
