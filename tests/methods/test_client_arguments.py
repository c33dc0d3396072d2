"""Every method client takes FederatedClient's common arguments (``**kwargs`` or by name) from Python and the CLI.

A method client forwards ``personal``, ``regularizers``, ``optimizer``, ``lr_scheduler`` and ``schedule`` to
``FederatedClient.__init__``; jsonargparse follows the ``**kwargs`` there, so ``lit-fed fit --print_config`` still
lists and type-checks them. Options a method fixes itself (pFedHN's personal part, prompt tuning's personal part
and schedule) are neither listed nor accepted.
"""

from __future__ import annotations

import contextlib
import functools
import io

import pytest
import torch
import yaml
from helpers import sgd

import lit_fed.methods
from lit_fed import BatchNorm, FederatedClient, Head, ProximalTerm
from lit_fed.cli import build_cli
from lit_fed.client.schedule import LocalSchedule, Phase
from lit_fed.models import TinyCNN, ViT

COMMON = ("personal", "regularizers", "optimizer", "lr_scheduler", "schedule")
FIXED = {"PFedHNClient": {"personal"}, "PromptTuningClient": {"personal", "schedule"}}
"""Common arguments a method sets itself."""

METHOD_CLIENTS = sorted(
    name
    for name in lit_fed.methods.__all__
    if isinstance(getattr(lit_fed.methods, name), type) and issubclass(getattr(lit_fed.methods, name), FederatedClient)
)
TRANSFORMER_CLIENTS = {"FedTPClient", "PromptTuningClient"}
VIT = {"image_size": 8, "patch_size": 4, "in_channels": 1, "num_classes": 4, "dim": 16, "depth": 1, "heads": 2}
OWN = {"FedLoGeClient": {"sse_steps": 2}}
"""Method options that keep construction fast."""


def accepted(name: str) -> list[str]:
    return [arg for arg in COMMON if arg not in FIXED.get(name, set())]


def backbone_args(name: str) -> list[str]:
    if name in TRANSFORMER_CLIENTS:
        return [
            "--model.init_args.backbone",
            "lit_fed.models.ViT",
            *(f"--model.init_args.backbone.{k}={v}" for k, v in VIT.items()),
        ]
    return ["--model.init_args.backbone", "lit_fed.models.TinyCNN"]


def printed_model(args: list[str]) -> dict:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        build_cli(args=[*args, "--print_config"], run=False)
    return yaml.safe_load(out.getvalue())["model"]


def test_every_method_client_is_checked():
    assert len(METHOD_CLIENTS) >= 19
    assert {"GlobalTeacherClient", "HypernetworkClient", "PFedHNClient", "FedTPClient", "PromptTuningClient"} <= set(
        METHOD_CLIENTS
    )


@pytest.mark.parametrize("name", METHOD_CLIENTS)
def test_print_config_lists_the_common_arguments_with_their_defaults(name):
    model = printed_model(["--model", f"lit_fed.methods.{name}", *backbone_args(name)])
    assert model["class_path"] == f"lit_fed.methods.{name}"
    init = model["init_args"]
    defaults = {"personal": [], "regularizers": [], "optimizer": None, "lr_scheduler": None, "schedule": None}
    assert {arg: init.get(arg, "missing") for arg in accepted(name)} == {arg: defaults[arg] for arg in accepted(name)}
    assert not FIXED.get(name, set()) & set(init)


@pytest.mark.parametrize("name", METHOD_CLIENTS)
def test_the_cli_parses_and_type_checks_the_common_arguments(name):
    given = {
        "personal": "[{class_path: lit_fed.Head}]"
        if name in TRANSFORMER_CLIENTS
        else "[{class_path: lit_fed.BatchNorm}]",
        "regularizers": "[{class_path: lit_fed.ProximalTerm, init_args: {mu: 0.01}}]",
        "optimizer": "{class_path: torch.optim.SGD, init_args: {lr: 0.2}}",
        "lr_scheduler": "{class_path: torch.optim.lr_scheduler.StepLR, init_args: {step_size: 2}}",
        "schedule": "{class_path: lit_fed.LocalSchedule, init_args: {phases: [{train: shared}]}}",
    }
    base = ["--model", f"lit_fed.methods.{name}", *backbone_args(name)]
    options = [f"--model.init_args.{arg}={given[arg]}" for arg in accepted(name)]
    init = printed_model([*base, *options])["init_args"]
    assert init["regularizers"][0]["class_path"].endswith("ProximalTerm")
    assert init["optimizer"]["init_args"]["lr"] == 0.2
    assert init["lr_scheduler"]["init_args"]["step_size"] == 2
    if "personal" in accepted(name):
        assert init["personal"][0]["class_path"].endswith(("Head", "BatchNorm"))
    if "schedule" in accepted(name):
        assert init["schedule"]["init_args"]["phases"][0]["train"] == "shared"
    # typed: a value of the wrong type is refused at parse time, not passed on
    with contextlib.redirect_stderr(io.StringIO()), pytest.raises(SystemExit):
        build_cli(args=[*base, "--model.init_args.regularizers=5", "--print_config"], run=False)
    for fixed in FIXED.get(name, set()):
        with contextlib.redirect_stderr(io.StringIO()), pytest.raises(SystemExit):
            build_cli(args=[*base, f"--model.init_args.{fixed}=null", "--print_config"], run=False)


def make_backbone(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return ViT(**VIT) if name in TRANSFORMER_CLIENTS else TinyCNN(in_channels=1, num_classes=4)


@pytest.mark.parametrize("name", METHOD_CLIENTS)
def test_construction_with_the_common_arguments_as_keywords(name):
    cls = getattr(lit_fed.methods, name)
    personal = Head() if name in TRANSFORMER_CLIENTS else BatchNorm()
    given = {
        "personal": [personal],
        "regularizers": [ProximalTerm(mu=0.01)],
        "optimizer": sgd(0.2),
        "lr_scheduler": functools.partial(torch.optim.lr_scheduler.StepLR, step_size=2),
        "schedule": LocalSchedule([Phase(train="shared")]),
    }
    client = cls(make_backbone(name), **OWN.get(name, {}), **{arg: given[arg] for arg in accepted(name)})
    assert client.optimizer_factory is given["optimizer"]
    assert client.scheduler_factory is given["lr_scheduler"]
    assert len(client.regularizers) == 1 and client.regularizers[0] is given["regularizers"][0]
    if "schedule" in accepted(name):
        assert client.schedule is given["schedule"]
    if "personal" in accepted(name):
        selected = personal.select(client)
        assert selected and set(selected) <= set(client.personal_keys())
    for fixed in FIXED.get(name, set()):
        with pytest.raises(TypeError, match=fixed):
            cls(make_backbone(name), **OWN.get(name, {}), **{fixed: given[fixed]})
