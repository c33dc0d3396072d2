"""The bring-your-own-split recipe: the folder writer on a tiny fake Fashion-MNIST, and the one-change config."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from lit_fed.data import ClientDataModule, FashionMNIST, PFLlibFolder, dirichlet_partition, split_train_test
from lit_fed.data.datasets import IDX_FILE_STEMS
from lit_fed.data.idx import write_idx

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "bring_your_own_split"


def load_recipe():
    name = "bring_your_own_split_make_pfllib_folder"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, RECIPE / "make_pfllib_folder.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture
def fake_fmnist(tmp_path) -> FashionMNIST:
    rng = np.random.default_rng(0)
    arrays = (
        rng.integers(0, 256, (200, 28, 28), dtype=np.uint8),
        (np.arange(200) % 10).astype(np.uint8),
        rng.integers(0, 256, (50, 28, 28), dtype=np.uint8),
        (np.arange(50) % 10).astype(np.uint8),
    )
    (tmp_path / "fmnist").mkdir()
    for stem, array in zip(IDX_FILE_STEMS, arrays, strict=True):
        write_idx(tmp_path / "fmnist" / f"{stem}.gz", array)
    return FashionMNIST(root=str(tmp_path / "fmnist"), download=False)


@pytest.mark.parametrize("pickled", [False, True])
def test_make_folder_writes_every_sample_once_in_pfllib_layout(tmp_path, fake_fmnist, pickled):
    out = load_recipe().make_folder(
        tmp_path / "fed", num_clients=4, alpha=1.0, min_size=10, seed=0, pickled=pickled, source=fake_fmnist
    )
    assert sorted(p.name for p in (out / "train").iterdir()) == ["0.npz", "1.npz", "2.npz", "3.npz"]
    assert sorted(p.name for p in (out / "test").iterdir()) == ["0.npz", "1.npz", "2.npz", "3.npz"]
    config = json.loads((out / "config.json").read_text())
    assert (config["num_clients"], config["num_classes"], config["merged_test_set"]) == (4, 10, True)
    dm = ClientDataModule(PFLlibFolder(str(out), allow_pickle=pickled), normalization="none")
    assert (dm.num_clients, dm.num_classes, dm.input_shape) == (4, 10, (1, 28, 28))
    assert dm.partition_summary()["train_samples"] + dm.partition_summary()["test_samples"] == 250
    data = fake_fmnist.load()
    merged = np.concatenate([data.train_x.numpy(), data.test_x.numpy()]).reshape(250, -1)
    served = np.rint(dm.built.images.numpy().reshape(250, -1) * 255).astype(np.uint8)
    as_rows = lambda a: sorted(map(bytes, a))  # noqa: E731
    assert as_rows(served) == as_rows(merged), "every image of the merged set lands in exactly one client file"
    labels = np.concatenate([data.train_y.numpy(), data.test_y.numpy()])
    for client, part in enumerate(dirichlet_partition(labels, 4, 1.0, 0, min_size=10)):  # the recipe's split
        train, test = split_train_test(part, labels, 0.75, seed=0, client_id=client)
        assert (dm.client_num_train_samples(client), dm.client_num_test_samples(client)) == (train.size, test.size)
        np.testing.assert_array_equal(dm.client_label_counts(client).numpy(), np.bincount(labels[train], minlength=10))


def test_the_recipe_config_is_the_quickstart_with_one_change():
    quickstart = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
    recipe = yaml.safe_load((RECIPE / "pfllib_fmnist.yaml").read_text())
    assert recipe["data"] == {
        "class_path": "lit_fed.data.ClientDataModule",
        "init_args": {
            "clients": {"class_path": "lit_fed.data.PFLlibFolder", "init_args": {"root": "data/fmnist_pfllib"}},
            "batch_size": 10,
        },
    }
    assert recipe["trainer"].pop("run_dir") == "runs/bring_your_own_split"
    quickstart["trainer"].pop("run_dir")
    assert {k: v for k, v in recipe.items() if k != "data"} == {k: v for k, v in quickstart.items() if k != "data"}


@pytest.mark.parametrize(
    "configs",
    [
        [RECIPE / "pfllib_fmnist.yaml"],
        [ROOT / "configs" / "quickstart.yaml", ROOT / "configs" / "data" / "pfllib_folder.yaml"],
    ],
    ids=["recipe", "stacked"],
)
def test_lit_fed_fit_builds_the_client_datamodule(tmp_path, fake_fmnist, configs):
    from lit_fed.cli import build_cli

    out = load_recipe().make_folder(tmp_path / "fed", num_clients=3, alpha=1.0, source=fake_fmnist)
    args = [item for config in configs for item in ("--config", str(config))]
    cli = build_cli(args=[*args, "--data.clients.init_args.root", str(out)], run=False)
    data = cli.datamodule
    assert isinstance(data, ClientDataModule)
    assert data.clients == PFLlibFolder(str(out))
    assert (data.batch_size, data.num_clients, data.seed) == (10, 3, 0)
    assert data.global_test_name == "pooled client test splits"
