from pathlib import Path

import pytest
import torch
from helpers import store_of

from lit_fed import FedAvg, FederatedLoop
from lit_fed.cli import build_cli
from lit_fed.methods import PromptTuningClient
from lit_fed.models import TimmBackbone, ViT

ROOT = Path(__file__).resolve().parents[2]


def timm_vit(seed: int = 0) -> TimmBackbone:
    torch.manual_seed(seed)
    return TimmBackbone("test_vit", num_classes=4, in_channels=1, model_kwargs={"img_size": 8, "patch_size": 4})


def make_client(head: str = "shared", num_prompts: int = 3) -> PromptTuningClient:
    return PromptTuningClient(
        timm_vit(), num_prompts=num_prompts, head=head, optimizer=lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)
    )


def test_prompts_are_inserted_after_the_class_token_and_change_the_output():
    client = make_client()
    vit = client.backbone.model
    x = torch.randn(2, 1, 8, 8)
    client.eval()
    with torch.no_grad():
        plain = vit.forward_head(vit.forward_features(x))
        prompted = client(x)
        assert client.prompted_tokens(x).shape == vit.forward_features(x).shape  # prompt outputs are dropped
        client.prompts.zero_()
        assert not torch.allclose(client(x), plain)  # zero prompts still attend: the sequence is longer
    client.prompts.data.normal_()
    assert not torch.allclose(prompted, client(x).detach())


def test_only_prompts_and_head_get_gradients():
    client = make_client()
    loss = torch.nn.functional.cross_entropy(client(torch.randn(4, 1, 8, 8)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    with_grad = {n for n, p in client.named_parameters() if p.grad is not None}
    assert with_grad == {"prompts", "backbone.model.head.weight", "backbone.model.head.bias"}
    assert {n for n, p in client.named_parameters() if p.requires_grad} == with_grad


def test_a_round_leaves_the_backbone_bit_identical_and_communicates_only_prompts_and_head(datamodule_factory, tmp_path):
    client = make_client(num_prompts=3)
    frozen_before = {k: v.clone() for k, v in client.state_dict().items() if k in set(client.frozen_keys())}
    prompts_before = client.prompts.detach().clone()
    loop = FederatedLoop(
        client, datamodule_factory(num_clients=3), FedAvg(), rounds=1, loggers=[], progress=False, run_dir=tmp_path
    )
    result = loop.run()
    assert set(result.global_state) == {"prompts", "backbone.model.head.weight", "backbone.model.head.bias"}
    assert not torch.equal(result.global_state["prompts"], prompts_before)
    state = client.state_dict()
    assert len(frozen_before) == len(state) - 3
    for key, value in frozen_before.items():
        assert torch.equal(state[key], value), key
    assert store_of(loop).get(0) is None  # nothing personal is stored
    # the reported fraction, by hand: k·d prompts + d·C + C head over every state-dict element
    total = sum(v.numel() for v in state.values())
    expected = (3 * 64 + 64 * 4 + 4) / total
    assert result.history[0]["comm_param_fraction"] == pytest.approx(expected)
    assert client.communicated_fraction() == pytest.approx(expected)


@pytest.mark.parametrize(("head", "shared", "personal"), [("frozen", 1, 0), ("personal", 1, 2)])
def test_head_modes(head, shared, personal):
    client = make_client(head=head)
    assert len(client.shared_keys()) == shared and client.shared_keys()[0] == "prompts"
    assert len(client.personal_keys()) == personal
    trainable = {n for n, p in client.named_parameters() if p.requires_grad}
    assert ("backbone.model.head.weight" in trainable) == (head != "frozen")
    client.set_trainable("all")  # phases cannot unfreeze the backbone
    assert {n for n, p in client.named_parameters() if p.requires_grad} == trainable


def test_lit_fed_vit_backbone_and_bad_backbones():
    torch.manual_seed(0)
    vit = ViT(image_size=8, patch_size=4, in_channels=1, num_classes=4, dim=16, depth=1, heads=2, dim_head=8)
    client = PromptTuningClient(vit, num_prompts=2)
    assert client(torch.randn(2, 1, 8, 8)).shape == (2, 4)
    assert client.prompts.shape == (1, 2, 16)
    with pytest.raises(TypeError, match="not a supported ViT"):
        PromptTuningClient(TimmBackbone("resnet18", num_classes=4, in_channels=1))
    with pytest.raises(ValueError, match="num_prompts"):
        PromptTuningClient(vit, num_prompts=0)


def test_config_runs_two_rounds_through_the_cli(tmp_path):
    args = [
        "fit",
        "--config",
        str(ROOT / "configs/data/synthetic.yaml"),
        "--config",
        str(ROOT / "configs/method/prompt_tuning.yaml"),
        "--model.init_args.backbone.init_args.name=test_vit",
        "--model.init_args.backbone.init_args.num_classes=4",
        "--model.init_args.backbone.init_args.in_channels=1",
        "--model.init_args.backbone.init_args.model_kwargs={img_size: 8, patch_size: 4}",
        "--model.init_args.num_prompts=4",
        "--trainer.rounds=2",
        f"--trainer.run_dir={tmp_path}",
        "--trainer.progress=false",
        "--trainer.logger=false",
    ]
    cli = build_cli(args=args)
    history = cli.trainer.federated_result.history
    assert len(history) == 2
    fraction = history[-1]["comm_param_fraction"]
    assert fraction == pytest.approx(cli.model.communicated_fraction()) and 0 < fraction < 0.01
