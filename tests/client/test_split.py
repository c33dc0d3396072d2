"""Shared/personal parameter split by module (FedPer, Arivazhagan et al. 2019; FedBN, Li et al. 2021)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lit_fed.client.module import FederatedClient
from lit_fed.client.split import BatchNorm, Head, Modules, ParameterSplit, Regex
from lit_fed.models.cnn import TinyCNN

ALL_KEYS = [
    "backbone.conv.weight",
    "backbone.bn.weight",
    "backbone.bn.bias",
    "backbone.bn.running_mean",
    "backbone.bn.running_var",
    "backbone.bn.num_batches_tracked",
    "backbone.fc.weight",
    "backbone.fc.bias",
]
HEAD = {"backbone.fc.weight", "backbone.fc.bias"}
BN = {
    "backbone.bn.weight",
    "backbone.bn.bias",
    "backbone.bn.running_mean",
    "backbone.bn.running_var",
    "backbone.bn.num_batches_tracked",
}


@pytest.fixture
def client() -> FederatedClient:
    torch.manual_seed(0)
    return FederatedClient(TinyCNN())


def test_state_keys_are_the_expected_ones(client: FederatedClient) -> None:
    assert list(client.state_dict()) == ALL_KEYS


def test_head_selects_exactly_the_classifier(client: FederatedClient) -> None:
    assert Head().select(client) == HEAD
    assert Head(backbone=None).select(client) == HEAD


def test_head_follows_get_classifier_not_names() -> None:
    class Renamed(TinyCNN):
        def __init__(self) -> None:
            super().__init__()
            self.classifier = self.fc
            del self.fc

        def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
            x = torch.flatten(self.pool(x), 1)
            return x if pre_logits else self.classifier(x)

        def get_classifier(self) -> nn.Module:
            return self.classifier

    assert Head().select(FederatedClient(Renamed())) == {
        "backbone.classifier.weight",
        "backbone.classifier.bias",
    }


def test_head_errors(client: FederatedClient) -> None:
    with pytest.raises(ValueError, match="nope"):
        Head(backbone="nope").select(client)
    with pytest.raises(TypeError, match="get_classifier"):
        Head(backbone="backbone.conv").select(client)


def test_batchnorm_selects_affine_and_running_statistics(client: FederatedClient) -> None:
    assert BatchNorm().select(client) == BN


def test_batchnorm_selects_every_bn_layer() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), nn.Sequential(nn.Conv2d(1, 1, 1), nn.BatchNorm2d(1)))
    selected = BatchNorm().select(model)
    assert {k.rsplit(".", 1)[0] for k in selected} == {"1", "2.1"}
    assert len(selected) == 10
    assert not any(k.startswith(("0.", "2.0.")) for k in selected)


def test_modules_selects_named_submodules(client: FederatedClient) -> None:
    assert Modules(["backbone.conv"]).select(client) == {"backbone.conv.weight"}
    assert Modules(["backbone.conv", "backbone.fc"]).select(client) == {"backbone.conv.weight"} | HEAD
    assert Modules(["backbone.bn"]).select(client) == BN
    with pytest.raises(ValueError, match="backbone.missing"):
        Modules(["backbone.missing"]).select(client)


def test_regex_selects_by_pattern(client: FederatedClient) -> None:
    assert Regex(r"\.bias$").select(client) == {"backbone.bn.bias", "backbone.fc.bias"}
    assert Regex(r"running_").select(client) == {"backbone.bn.running_mean", "backbone.bn.running_var"}
    with pytest.raises(ValueError, match="does_not_exist"):
        Regex("does_not_exist").select(client)


def test_union_of_selectors_in_state_dict_order(client: FederatedClient) -> None:
    split = ParameterSplit([Head(), BatchNorm()])
    assert split.personal_keys(client) == [k for k in ALL_KEYS if k in HEAD | BN]
    assert split.shared_keys(client) == ["backbone.conv.weight"]
    # Overlapping selectors are a union, not a multiset.
    overlapping = ParameterSplit([Head(), Regex(r"fc\.bias")])
    assert overlapping.personal_keys(client) == ["backbone.fc.weight", "backbone.fc.bias"]


def test_empty_split_shares_everything(client: FederatedClient) -> None:
    split = ParameterSplit()
    assert split.personal_keys(client) == []
    assert split.shared_keys(client) == ALL_KEYS


def test_invert_flips_personal_and_shared(client: FederatedClient) -> None:
    normal = ParameterSplit([Head()])
    inverted = ParameterSplit([Head()], invert=True)
    assert inverted.shared_keys(client) == normal.personal_keys(client) == ["backbone.fc.weight", "backbone.fc.bias"]
    assert inverted.personal_keys(client) == normal.shared_keys(client) == [k for k in ALL_KEYS if k not in HEAD]


@pytest.mark.parametrize(
    "selectors",
    [[], [Head()], [BatchNorm()], [Head(), BatchNorm()], [Modules(["backbone.conv"])], [Regex("weight")]],
)
@pytest.mark.parametrize("invert", [False, True])
def test_shared_and_personal_partition_the_state(client: FederatedClient, selectors, invert: bool) -> None:
    split = ParameterSplit(selectors, invert=invert)
    shared, personal = split.shared_keys(client), split.personal_keys(client)
    assert not set(shared) & set(personal)
    assert set(shared) | set(personal) == set(ALL_KEYS)
    assert len(shared) + len(personal) == len(ALL_KEYS)


def test_federated_client_split_agrees_with_the_selectors() -> None:
    client = FederatedClient(TinyCNN(), personal=[Head()])
    assert client.personal_keys() == ["backbone.fc.weight", "backbone.fc.bias"]
    assert client.shared_keys() == [k for k in ALL_KEYS if k not in HEAD]
    assert set(client.shared_state()) == set(client.shared_keys())
    assert set(client.personal_state()) == HEAD

    fedbn = FederatedClient(TinyCNN(), personal=ParameterSplit([BatchNorm()]))
    assert set(fedbn.personal_keys()) == BN
    assert fedbn.shared_keys() == ["backbone.conv.weight", "backbone.fc.weight", "backbone.fc.bias"]


def test_backbone_without_the_contract_raises_type_error() -> None:
    with pytest.raises(TypeError, match="forward_features"):
        FederatedClient(nn.Sequential(nn.Linear(2, 2)))

    class NoClassifier(nn.Module):
        def forward_features(self, x: torch.Tensor) -> torch.Tensor:
            return x

        def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
            return x

    with pytest.raises(TypeError, match="get_classifier"):
        FederatedClient(NoClassifier())
