"""Run any lit_fed method on Flower (``pip install "lit_fed[flower]"``).

* :class:`FlowerSimulation` — the ``flower-simulation`` backend (Flower's Ray-based simulation engine);
* :func:`make_client_app` / :func:`make_server_app` — a Flower ``ClientApp`` and ``ServerApp`` around a lit_fed
  loop, for real deployments with a SuperLink and SuperNodes (see ``recipes/flower_deployment``);
* :class:`InProcessRunner` — every message of a run through Flower records and the ClientApp's handlers, in this
  process (checking and debugging a method under Flower without Ray);
* :mod:`lit_fed.flower.records` — lossless conversion between lit_fed payloads and Flower records.
"""

from lit_fed.flower.backend import FlowerSimulation
from lit_fed.flower.client_app import make_client_app
from lit_fed.flower.in_process import InProcessRunner
from lit_fed.flower.node_state import ContextState, DirectoryState, NodeState
from lit_fed.flower.server_app import FlowerRunner, make_server_app

__all__ = [
    "ContextState",
    "DirectoryState",
    "FlowerRunner",
    "FlowerSimulation",
    "InProcessRunner",
    "NodeState",
    "make_client_app",
    "make_server_app",
]
