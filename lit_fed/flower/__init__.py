"""Run any lit_fed method on Flower (``pip install "lit_fed[flower]"``).

* :class:`FlowerSimulation` — the ``flower-simulation`` backend (Flower's Ray-based simulation engine);
* :func:`make_client_app` / :func:`make_server_app` — a Flower ``ClientApp`` and ``ServerApp`` around a lit_fed
  loop, for real deployments with a SuperLink and SuperNodes (see ``recipes/flower_deployment``);
* :class:`InProcessRunner` — every message of a run through Flower records and the ClientApp's handlers, in this
  process (checking and debugging a method under Flower without Ray);
* :mod:`lit_fed.flower.records` — lossless conversion between lit_fed payloads and Flower records.
"""

from __future__ import annotations

from lit_fed.utils.lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "FlowerSimulation": "lit_fed.flower.backend",
    "make_client_app": "lit_fed.flower.client_app",
    "InProcessRunner": "lit_fed.flower.in_process",
    "ContextState": "lit_fed.flower.node_state",
    "DirectoryState": "lit_fed.flower.node_state",
    "NodeState": "lit_fed.flower.node_state",
    "FlowerRunner": "lit_fed.flower.server_app",
    "make_server_app": "lit_fed.flower.server_app",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
