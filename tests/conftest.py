import logging
import warnings

import pytest
import torch

from lit_fed.client.module import FederatedClient
from lit_fed.data import Dirichlet, FederatedDataModule, Synthetic
from lit_fed.models import TinyCNN

warnings.filterwarnings("ignore", message=".*does not have many workers.*")
logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
torch.set_num_threads(1)


def make_datamodule(num_clients: int = 4, seed: int = 0, batch_size: int = 16) -> FederatedDataModule:
    return FederatedDataModule(
        dataset=Synthetic(num_classes=4, num_train=320, num_test=120, image_size=8),
        partitioner=Dirichlet(alpha=1.0, min_size=10),
        num_clients=num_clients,
        batch_size=batch_size,
        eval_batch_size=64,
        seed=seed,
    )


def make_client(seed: int = 0, **kwargs) -> FederatedClient:
    torch.manual_seed(seed)
    optimizer = kwargs.pop("optimizer", lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9))
    return FederatedClient(TinyCNN(in_channels=1, num_classes=4), optimizer=optimizer, **kwargs)


@pytest.fixture
def datamodule() -> FederatedDataModule:
    return make_datamodule()


@pytest.fixture
def client_factory():
    """``client_factory(seed=0, **FederatedClient kwargs)`` builds a TinyCNN client."""
    return make_client


@pytest.fixture
def datamodule_factory():
    """``datamodule_factory(num_clients=4, seed=0, batch_size=16)`` builds a Synthetic federated datamodule."""
    return make_datamodule
