import pytest
import torch
import torch.nn.functional as F

from lit_fed.models import CharTransformer, ViT, check_backbone_contract, vit_cifar, vit_tiny
from lit_fed.models.vit import Attention


def tiny_vit(**kwargs) -> ViT:
    config = dict(image_size=8, patch_size=4, in_channels=1, num_classes=4, dim=16, depth=3, heads=2, dim_head=8)
    config.update(kwargs)
    return ViT(mlp_dim=32, dropout=0.0, emb_dropout=0.0, **config)


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_vit_follows_the_backbone_contract(pool):
    torch.manual_seed(0)
    model = tiny_vit(pool=pool)
    check_backbone_contract(model, torch.randn(3, 1, 8, 8))
    assert model.get_classifier() is model.head
    assert model.forward_features(torch.randn(3, 1, 8, 8)).shape == (3, 1 + 4, 16)
    model.reset_classifier(7)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 7)


def test_char_transformer_follows_the_contract_and_reads_the_last_position():
    torch.manual_seed(0)
    model = CharTransformer(vocab_size=11, seq_len=12, dim=16, depth=2, heads=2, dim_head=8, mlp_dim=32, dropout=0.0)
    tokens = torch.randint(0, 11, (3, 12))
    check_backbone_contract(model, tokens)
    assert model.num_classes == 11 and model(tokens[:, :5]).shape == (3, 11)
    features = model.forward_features(tokens)
    assert torch.equal(model.forward_head(features, pre_logits=True), features[:, -1])


def test_qkv_projections_are_addressable_fused_and_bias_free():
    model = tiny_vit(depth=3, heads=2, dim_head=8, dim=16)
    qkv = model.qkv_modules()
    assert list(qkv) == [f"blocks.{i}.attn.qkv" for i in range(3)]
    for name, module in qkv.items():
        assert model.get_submodule(name) is module
        assert module.weight.shape == (3 * 2 * 8, 16) and module.bias is None
    keys = set(model.state_dict())
    assert {f"blocks.{i}.attn.qkv.weight" for i in range(3)} <= keys


def test_attention_matches_the_textbook_computation():
    torch.manual_seed(0)
    attention = Attention(dim=12, heads=3, dim_head=4)
    x = torch.randn(2, 5, 12)
    q, k, v = attention.qkv(x).chunk(3, dim=-1)  # [q | k | v], each head-major (heads, dim_head)

    def heads(t):
        return t.view(2, 5, 3, 4).transpose(1, 2)

    weights = torch.softmax(heads(q) @ heads(k).transpose(-1, -2) / 2.0, dim=-1)
    expected = attention.proj((weights @ heads(v)).transpose(1, 2).reshape(2, 5, 12))
    torch.testing.assert_close(attention(x), expected)


def test_causal_char_transformer_ignores_later_tokens():
    torch.manual_seed(0)
    model = CharTransformer(vocab_size=7, seq_len=6, dim=8, depth=2, heads=2, dim_head=4, mlp_dim=16, causal=True)
    model.eval()
    tokens = torch.randint(0, 7, (2, 6))
    changed = tokens.clone()
    changed[:, -1] = (changed[:, -1] + 1) % 7
    torch.testing.assert_close(model.forward_features(tokens)[:, :-1], model.forward_features(changed)[:, :-1])


def test_presets():
    cifar = vit_cifar()
    assert (cifar.image_size, cifar.patch_size, cifar.dim, len(cifar.blocks), cifar.num_classes) == (32, 4, 128, 6, 10)
    assert cifar.blocks[0].attn.qkv.weight.shape == (3 * 8 * 64, 128)
    assert cifar.blocks[0].mlp[0].out_features == 256
    assert cifar(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
    tiny = vit_tiny(num_classes=10)
    assert tiny(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_bad_shapes_fail_clearly():
    with pytest.raises(ValueError, match="must divide"):
        ViT(image_size=10, patch_size=4)
    with pytest.raises(ValueError, match="8x8"):
        tiny_vit()(torch.zeros(1, 1, 16, 16))
    model = CharTransformer(vocab_size=5, seq_len=4, dim=8, depth=1, heads=1, dim_head=8, mlp_dim=8)
    with pytest.raises(ValueError, match="T<=4"):
        model(torch.zeros(1, 5, dtype=torch.long))


def test_vit_learns_a_batch():
    torch.manual_seed(0)
    model = tiny_vit()
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 4, (16,))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(30):
        loss = F.cross_entropy(model(x), y)
        first = loss.item() if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.5 * first
