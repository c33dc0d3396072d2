import logging
import warnings

import pytest
import torch
from helpers import sgd, tiny_client, tiny_datamodule

from lit_fed.client.module import FederatedClient
from lit_fed.data import FederatedDataModule

warnings.filterwarnings("ignore", message=".*does not have many workers.*")
logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
torch.set_num_threads(1)


def make_client(seed: int = 0, **kwargs) -> FederatedClient:
    """A TinyCNN FederatedClient; SGD(lr 0.1, momentum 0.9) unless ``optimizer`` is given."""
    kwargs.setdefault("optimizer", sgd(0.1, momentum=0.9))
    return tiny_client(seed=seed, **kwargs)


@pytest.fixture
def datamodule() -> FederatedDataModule:
    return tiny_datamodule()


@pytest.fixture
def client_factory():
    """``client_factory(seed=0, **FederatedClient kwargs)`` builds a TinyCNN client."""
    return make_client


@pytest.fixture
def datamodule_factory():
    """``datamodule_factory(num_clients=4, seed=0, batch_size=16)`` builds a Synthetic federated datamodule."""
    return tiny_datamodule
