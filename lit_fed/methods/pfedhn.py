r"""pFedHN and pFedHN-PC, and the server-side hypernetwork machinery they share with FedTP.

Shamsian, Navon, Fetaya and Chechik, "Personalized Federated Learning using Hypernetworks" (ICML 2021), Alg. 1.
A server hypernetwork ``h(v_i; φ)`` maps a learned client embedding ``v_i ∈ R^{d_e}`` (``d_e = 1 + N/4``) through
an MLP ``Linear(d_e, 100) → [ReLU → Linear(100, 100)] × 3`` and one linear head per target tensor to client ``i``'s
personal weights ``θ_i``. A round, for the sampled clients ``S`` [code: ``experiments/pfedhn/trainer.py``]:

1. generate ``θ_i = h(v_i; φ)`` for all ``i ∈ S`` in **one batched forward**, keeping the graph;
2. each client loads ``θ_i`` and runs ``K`` local SGD steps (50; lr 5e-3, momentum 0.9, wd 5e-5) → ``θ̃_i``;
3. ``Δ_i = θ_i − θ̃_i`` (*sent minus trained*) and ``∇_φ = Σ_i p_i (∂θ_i/∂φ)ᵀ Δ_i`` by one
   ``autograd.grad(θ, φ, grad_outputs=p·Δ)`` — a vector–Jacobian product (Eq. 4 of the paper); SGD on ``φ``
   (lr 1e-2, momentum 0.9, wd 1e-3), gradient norm clipped at 50 [code].

The sign matters: ``Δ`` approximates ``η ∇_θ L_i``, so stepping ``φ`` along ``−Jᵀ Δ`` descends the clients' losses;
``θ̃ − θ`` would ascend them (tested). With one sampled client ``p = 1`` and this is the official update; with several,
``p_i = n_i / Σ_S n_j`` [design, as FedTP's code weights its hypernetwork gradient]. **pFedHN-PC** keeps the
classifier head a private per-client layer, never generated (``PFedHNClient(private_head=True)``).

The pieces, usable on their own:

* :class:`Hypernetwork` — a plain ``nn.Module``: ``hn(torch.tensor([0, 3]))`` returns ``{key: (2, *shape)}``.
* :func:`hypernetwork_gradients` — ``Σ_i w_i (∂θ_i/∂φ)ᵀ (θ_i − θ̃_i)``.
* :class:`HypernetworkStrategy` — a FedAvg :class:`~lit_fed.server.strategy.Strategy` that generates the sampled
  clients' tensors in ``configure_train`` (sent as ``ServerMessage.extras``), FedAvgs the shared rest, and steps ``φ``
  in its own server step from the trained tensors the clients return in ``ClientUpdate.extras``. Its hypernetwork,
  optimizer state and version round-trip through ``state_dict`` (round checkpoints resume exactly).
  :class:`PFedHN` holds the paper's defaults; :class:`~lit_fed.methods.fedtp.FedTP` is the transformer variant.
* :class:`HypernetworkClient` — a :class:`~lit_fed.client.module.FederatedClient` whose ``generated`` parameters
  are overwritten by the server's tensors each round and returned trained; ``personal`` selectors name private,
  never-generated layers (pFedHN-PC's head). :class:`PFedHNClient` is the pFedHN/pFedHN-PC client.

**Evaluating clients that never trained.** Client ``c`` is evaluated with its stored personal state (or the initial
one), the global state and what :meth:`HypernetworkStrategy.configure_evaluate` sends it: ``h(v_c; φ)`` for the
*current* ``φ`` in the message's ``extras`` — exactly what the official ``evaluate`` does for every client [code],
trained or not — which :meth:`HypernetworkClient.receive_evaluation` loads. Under Flower it travels with the evaluate
message to the node that keeps the client's private layers. A client keeps only its private layers
(:meth:`HypernetworkClient.personal_state`): the generated tensors are a function of ``φ``.
:func:`bind_hypernetwork` (what :meth:`HypernetworkStrategy.bind` runs when the loop is set up, so also before
``lit-fed validate/test`` evaluates a checkpoint) builds the hypernetwork for the client module and the number of
clients. The loop's ``global_acc`` uses the *initial* generated tensors and is not meaningful for these methods;
report the personalized accuracy, as the paper does.

Example (Python API; the YAML configs ``configs/method/pfedhn.yaml`` / ``pfedhn_pc.yaml`` wire the same)::

    client = PFedHNClient(FedAvgCNN(), optimizer=lambda p: torch.optim.SGD(p, lr=5e-3, momentum=0.9,
                                                                            weight_decay=5e-5))
    loop = FederatedLoop(client, datamodule, PFedHN(), local_steps=50,
                         trainer_kwargs={"gradient_clip_val": 50})
    loop.run()
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from typing_extensions import override

from lit_fed.client.module import FederatedClient
from lit_fed.client.payloads import ClientUpdate, ServerMessage, StateDict
from lit_fed.client.split import Head, Modules, ParameterSelector
from lit_fed.server.aggregation import Aggregator
from lit_fed.server.fedavg import FedAvg
from lit_fed.server.strategy import ServerContext, ServerStep
from lit_fed.utils.seeding import derive_seed

__all__ = [
    "Hypernetwork",
    "HypernetworkClient",
    "HypernetworkStrategy",
    "PFedHN",
    "PFedHNClient",
    "bind_hypernetwork",
    "hypernetwork_gradients",
]

# ----------------------------------------------------------------------------------------------------------------
# The hypernetwork
# ----------------------------------------------------------------------------------------------------------------


class Hypernetwork(nn.Module):
    """``h(v_i; φ)``: client embedding → MLP → one linear head per target tensor (Shamsian et al. 2021, Fig. 1).

    ``embeddings`` is an ``nn.Embedding(num_clients, d_e)``; ``mlp`` is ``Linear(d_e, hidden) → [ReLU →
    Linear(hidden, hidden)] × n_hidden`` (pFedHN: hidden 100, ``n_hidden`` 3 [code]; FedTP: 150, 3); ``heads[j]`` is
    ``Linear(hidden, numel(target j))`` whose output is reshaped to the target's shape. A plain module: usable
    outside any loop, e.g. with ``torch.func.functional_call(target, {k: w[0] for k, w in hn(ids).items()}, x)``.

    Args:
        num_clients: Number of registered clients (rows of the embedding table).
        target_shapes: The generated tensors, ``{name: shape}`` (e.g. a target model's parameter names).
        embedding_dim: ``d_e``; ``None`` means ``int(1 + num_clients / 4)`` (pFedHN's default [code]).
        hidden_dim: Width of the MLP.
        n_hidden: Number of ``ReLU → Linear(hidden, hidden)`` layers after the first linear layer.

    Raises:
        ValueError: no targets, or a non-positive size.
    """

    def __init__(
        self,
        num_clients: int,
        target_shapes: Mapping[str, Sequence[int]],
        embedding_dim: int | None = None,
        hidden_dim: int = 100,
        n_hidden: int = 3,
    ) -> None:
        super().__init__()
        if num_clients < 1:
            raise ValueError(f"Hypernetwork: num_clients must be >= 1, got {num_clients}")
        if not target_shapes:
            raise ValueError("Hypernetwork: no target tensors to generate")
        embedding_dim = int(1 + num_clients / 4) if embedding_dim is None else int(embedding_dim)
        if embedding_dim < 1 or hidden_dim < 1 or n_hidden < 0:
            raise ValueError(
                f"Hypernetwork: need embedding_dim >= 1, hidden_dim >= 1, n_hidden >= 0; got {embedding_dim}, "
                f"{hidden_dim}, {n_hidden}"
            )
        self.num_clients = num_clients
        self.embedding_dim = embedding_dim
        self.target_keys = list(target_shapes)
        self.target_shapes = {key: tuple(int(s) for s in shape) for key, shape in target_shapes.items()}
        self.embeddings = nn.Embedding(num_clients, embedding_dim)
        layers: list[nn.Module] = [nn.Linear(embedding_dim, hidden_dim)]
        for _ in range(n_hidden):
            layers += [nn.ReLU(), nn.Linear(hidden_dim, hidden_dim)]
        self.mlp = nn.Sequential(*layers)
        self.heads = nn.ModuleList(
            nn.Linear(hidden_dim, math.prod(self.target_shapes[key])) for key in self.target_keys
        )

    def forward(self, client_ids: Tensor) -> dict[str, Tensor]:
        """Every target for a batch of clients: ``{key: (B, *shape)}`` for ``client_ids`` of shape ``(B,)``."""
        features = self.mlp(self.embeddings(client_ids.view(-1)))
        return {
            key: head(features).view(-1, *self.target_shapes[key])
            for key, head in zip(self.target_keys, self.heads, strict=True)
        }


def hypernetwork_gradients(
    generated: Mapping[str, Tensor],
    trained: Mapping[str, Tensor],
    weights: Tensor,
    parameters: Sequence[nn.Parameter],
) -> list[Tensor]:
    r"""``g_φ = Σ_i w_i (∂θ_i/∂φ)ᵀ (θ_i − θ̃_i)`` as one vector–Jacobian product (pFedHN Eq. 4; FedTP's ``g_φ``).

    Args:
        generated: ``{key: (B, *shape)}`` the tensors sent to the ``B`` clients, *with* their graph to ``parameters``.
        trained: ``{key: (B, *shape)}`` the clients' trained tensors ``θ̃_i``, same keys and shapes.
        weights: ``(B,)`` client weights ``w_i`` (``p_i``, or 1 for a single client).
        parameters: ``φ``, the hypernetwork parameters to differentiate.

    Returns:
        One gradient per parameter (zeros where a parameter does not influence the outputs).

    Raises:
        KeyError: ``trained`` lacks a generated key.
        ValueError: a shape differs.
    """
    outputs, grad_outputs = [], []
    for key, value in generated.items():
        if key not in trained:
            raise KeyError(f"hypernetwork_gradients: no trained tensor for '{key}'")
        target = trained[key].to(device=value.device, dtype=value.dtype)
        if target.shape != value.shape:
            raise ValueError(
                f"hypernetwork_gradients: '{key}' was generated as {tuple(value.shape)}, trained as "
                f"{tuple(target.shape)}"
            )
        scale = weights.to(device=value.device, dtype=value.dtype).view(-1, *([1] * (value.dim() - 1)))
        outputs.append(value)
        grad_outputs.append(scale * (value.detach() - target))  # sent minus trained
    grads = torch.autograd.grad(outputs, list(parameters), grad_outputs=grad_outputs, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, parameters, strict=True)]


# ----------------------------------------------------------------------------------------------------------------
# The server strategy
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class _RoundOutputs:
    """The batched forward of a round: which clients, and their generated tensors with the graph to ``φ``."""

    round: int
    client_ids: list[int]
    outputs: dict[str, Tensor]


class HypernetworkStrategy(FedAvg):
    """Generates the sampled clients' personal tensors with a hypernetwork; FedAvg of the rest; SGD on ``φ``.

    Round protocol (Shamsian et al. 2021, Alg. 1): :meth:`configure_train` runs **one** batched forward for the
    sampled clients only (its cost scales with the sampled, not the registered, clients), keeps the graph and sends
    each client its slice in ``ServerMessage.extras``; :meth:`aggregate_train` is FedAvg over the shared keys (the
    generated tensors are personal keys and never reach the global state); the strategy's own server step
    (:meth:`hypernetwork_step`) computes ``g_φ = Σ_i p_i (∂θ_i/∂φ)ᵀ (θ_i − θ̃_i)`` from the trained tensors in
    ``ClientUpdate.extras`` (:func:`hypernetwork_gradients`), optionally clips its norm, and steps the SGD optimizer
    on ``φ``; :meth:`configure_evaluate` sends every client ``h(v_c; φ)`` for evaluation.

    The hypernetwork is built by :meth:`setup` from the client module's generated shapes and the number of clients —
    :meth:`bind` (called when the loop is set up) does this through :func:`bind_hypernetwork`. The step's metrics
    (``hn_grad_norm``, ``hn_delta_norm``, ``hn_version``) join the round's metrics through ``ServerContext.log``.

    Args:
        embedding_dim: Client-embedding size; ``None`` means ``int(1 + N/4)`` (pFedHN).
        hidden_dim: Width of the hypernetwork MLP.
        n_hidden: Hidden ``ReLU → Linear`` layers after the first.
        lr: Learning rate of the SGD step on ``φ``.
        momentum: SGD momentum on ``φ``.
        weight_decay: SGD weight decay on ``φ``.
        max_grad_norm: Clip ``‖g_φ‖`` to this (``None``: no clipping).
        weighted: Weight clients by sample count (``p_i = n_i/Σn``), in FedAvg and in ``g_φ``; else uniformly.
        aggregator: The FedAvg rule for the shared keys (a robust rule may replace the mean).
        device: Where the hypernetwork lives (``"cpu"``, ``"cuda"``, ...).
        steps: Server steps after the hypernetwork's.
    """

    supports_asynchronous: ClassVar[bool] = False  # φ steps on the batched forward of a round's sampled clients

    def __init__(
        self,
        embedding_dim: int | None = None,
        hidden_dim: int = 100,
        n_hidden: int = 3,
        lr: float = 1e-2,
        momentum: float = 0.9,
        weight_decay: float = 1e-3,
        max_grad_norm: float | None = None,
        weighted: bool = True,
        aggregator: Aggregator | None = None,
        device: str = "cpu",
        steps: Sequence[ServerStep] = (),
    ) -> None:
        super().__init__(aggregator=aggregator, weighted=weighted, steps=steps)
        if not lr > 0:
            raise ValueError(f"{type(self).__name__}: lr must be > 0, got {lr}")
        if max_grad_norm is not None and not max_grad_norm > 0:
            raise ValueError(f"{type(self).__name__}: max_grad_norm must be > 0 or None, got {max_grad_norm}")
        self.embedding_dim = embedding_dim
        self.hidden_dim = hidden_dim
        self.n_hidden = n_hidden
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.max_grad_norm = max_grad_norm
        self.device = torch.device(device)
        self.hypernetwork: Hypernetwork | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.version = 0
        self.last_metrics: dict[str, float] = {}
        self._stashed: dict[str, Any] | None = None
        self._round: _RoundOutputs | None = None
        self._update = _HypernetworkUpdate(self)

    # -- building ------------------------------------------------------------------------------------------
    def setup(self, target_shapes: Mapping[str, Sequence[int]], num_clients: int, seed: int = 0) -> Hypernetwork:
        """Builds the hypernetwork and its optimizer (once); applies a state restored before the build.

        The initialization draws from the stream ``derive_seed(seed, "hypernetwork")`` without touching the global
        RNG, so a resumed run rebuilds the same network before loading the checkpoint.

        Args:
            target_shapes: ``{state-dict key: shape}`` of the generated tensors (the client's
                :meth:`HypernetworkClient.generated_shapes`).
            num_clients: Registered clients.
            seed: The run seed.

        Raises:
            ValueError: the strategy was built or restored for other targets or another number of clients.
        """
        shapes = {key: tuple(int(s) for s in shape) for key, shape in target_shapes.items()}
        if self.hypernetwork is not None:
            self._check_spec(shapes, num_clients, "already built")
            return self.hypernetwork
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, "hypernetwork"))
            network = Hypernetwork(num_clients, shapes, self.embedding_dim, self.hidden_dim, self.n_hidden)
        self.hypernetwork = network.to(self.device)
        self.optimizer = torch.optim.SGD(
            self.hypernetwork.parameters(), lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay
        )
        if self._stashed is not None:
            stashed, self._stashed = self._stashed, None
            self.load_state_dict(stashed)
        return self.hypernetwork

    @override
    def bind(self, context: ServerContext) -> None:
        """Builds the hypernetwork for the client module and the number of clients (:func:`bind_hypernetwork`)."""
        bind_hypernetwork(context, self)

    @override
    def server_steps(self) -> list[ServerStep]:
        """The hypernetwork's step on ``φ``, then the steps given."""
        return [self._update, *self.steps]

    @override
    def configure_evaluate(self, round: int, client_ids: Sequence[int], global_state: StateDict) -> list[ServerMessage]:
        """Every client is evaluated with ``h(v_c; φ)`` for the current ``φ`` (:meth:`personal_tensors`) in extras."""
        return [
            ServerMessage(round=round, client_id=cid, state=global_state, extras=self.personal_tensors(cid))
            for cid in client_ids
        ]

    def _check_spec(self, shapes: Mapping[str, tuple[int, ...]], num_clients: int, what: str) -> None:
        assert self.hypernetwork is not None
        if self.hypernetwork.num_clients != num_clients or self.hypernetwork.target_shapes != dict(shapes):
            raise ValueError(
                f"{type(self).__name__}: the hypernetwork was {what} for {self.hypernetwork.num_clients} clients and "
                f"targets {list(self.hypernetwork.target_shapes)[:3]}..., not for {num_clients} clients and targets "
                f"{list(shapes)[:3]}..."
            )

    def _network(self) -> Hypernetwork:
        if self.hypernetwork is None:
            raise RuntimeError(
                f"{type(self).__name__}: the hypernetwork is not built. A FederatedLoop builds it in setup() "
                "(Strategy.bind); outside a loop call strategy.setup(target_shapes, num_clients)"
            )
        return self.hypernetwork

    # -- generation ----------------------------------------------------------------------------------------
    def _ids(self, client_ids: Sequence[int]) -> Tensor:
        network = self._network()
        bad = [c for c in client_ids if not 0 <= int(c) < network.num_clients]
        if bad:
            raise IndexError(f"{type(self).__name__}: client ids {bad[:5]} outside [0, {network.num_clients})")
        return torch.as_tensor([int(c) for c in client_ids], dtype=torch.long, device=self.device)

    def generate(self, client_ids: Sequence[int], *, grad: bool = False) -> dict[str, Tensor]:
        """``{key: (B, *shape)}`` for ``client_ids``, in one batched forward (with the graph if ``grad``)."""
        network = self._network()
        with torch.set_grad_enabled(grad):
            return network(self._ids(client_ids))

    def personal_tensors(self, client_id: int) -> StateDict:
        """Client ``client_id``'s generated tensors for the current ``φ``, detached, on CPU (for evaluation).

        Reuses this round's batched forward when the client was sampled and ``φ`` has not moved since.
        """
        cached = self._round
        if cached is not None and client_id in cached.client_ids:
            row = cached.client_ids.index(client_id)
            return {k: v[row].detach().to("cpu", copy=True) for k, v in cached.outputs.items()}
        return {k: v[0].to("cpu", copy=True) for k, v in self.generate([client_id]).items()}

    # -- the round -----------------------------------------------------------------------------------------
    @override
    def configure_train(self, round: int, client_ids: Sequence[int], global_state: StateDict) -> list[ServerMessage]:
        """One batched forward for the sampled clients; each message carries its client's tensors in ``extras``."""
        ids = [int(c) for c in client_ids]
        if not ids:
            self._round = None
            return []
        outputs = self.generate(ids, grad=True)
        self._round = _RoundOutputs(round=round, client_ids=ids, outputs=outputs)
        return [
            ServerMessage(
                round=round,
                client_id=cid,
                state=global_state,
                extras={k: v[row].detach().to("cpu", copy=True) for k, v in outputs.items()},
            )
            for row, cid in enumerate(ids)
        ]

    def hypernetwork_step(self, updates: Sequence[ClientUpdate]) -> dict[str, float]:
        """One SGD step on ``φ`` with ``g_φ = Σ_i p_i (∂θ_i/∂φ)ᵀ (θ_i − θ̃_i)`` over the accepted ``updates``.

        Returns:
            ``hn_grad_norm`` (before clipping) and ``hn_delta_norm`` (``Σ_i p_i ‖θ_i − θ̃_i‖``).

        Raises:
            RuntimeError: no generated tensors are pending (``configure_train`` was not called this round).
            ValueError / KeyError: an update from a client the hypernetwork did not serve, or without its tensors.
        """
        network, pending = self._network(), self._round
        if pending is None:
            raise RuntimeError(f"{type(self).__name__}: no generated tensors pending; call configure_train first")
        if not updates:
            return {}
        rows = {cid: row for row, cid in enumerate(pending.client_ids)}
        for update in updates:
            where = f"client {update.client_id}, round {update.round}"
            if update.client_id not in rows:
                raise ValueError(
                    f"{where}: the hypernetwork did not generate this client's tensors in round {pending.round}"
                )
            missing = [k for k in pending.outputs if k not in update.extras]
            if missing:
                raise KeyError(
                    f"{where}: the update lacks the trained generated tensor '{missing[0]}' in extras "
                    "(use a HypernetworkClient with a hypernetwork strategy)"
                )
        index = torch.as_tensor([rows[u.client_id] for u in updates], device=self.device)
        generated = {k: v.index_select(0, index) for k, v in pending.outputs.items()}
        trained = {k: torch.stack([u.extras[k] for u in updates]) for k in pending.outputs}
        weights = self.weights(updates).to(torch.float32)
        params = [p for p in network.parameters() if p.requires_grad]
        grads = hypernetwork_gradients(generated, trained, weights, params)
        with torch.no_grad():
            squares = sum((generated[k] - trained[k].to(self.device)).flatten(1).square().sum(1) for k in generated)
            delta_norm = float((weights.to(self.device) * squares.sqrt()).sum())  # type: ignore[union-attr]
        for param, grad in zip(params, grads, strict=True):
            param.grad = grad
        if self.max_grad_norm is not None:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm))
        else:
            grad_norm = float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))
        assert self.optimizer is not None
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.version += 1
        self._round = None
        return {"hn_grad_norm": grad_norm, "hn_delta_norm": delta_norm, "hn_version": float(self.version)}

    # -- checkpointing -------------------------------------------------------------------------------------
    @override
    def state_dict(self) -> dict[str, Any]:
        """The hypernetwork, its optimizer (momentum buffers), the version; a restored-but-unbuilt state as is."""
        if self.hypernetwork is None:
            return dict(self._stashed) if self._stashed is not None else {}
        assert self.optimizer is not None
        return {
            "version": self.version,
            "num_clients": self.hypernetwork.num_clients,
            "target_shapes": {k: list(v) for k, v in self.hypernetwork.target_shapes.items()},
            "hypernetwork": {k: v.detach().to("cpu", copy=True) for k, v in self.hypernetwork.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
        }

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores :meth:`state_dict`; before :meth:`setup` (a loop restores before binding) it is kept for then."""
        if not state:
            return
        if self.hypernetwork is None:
            self._stashed = dict(state)
            return
        shapes = {k: tuple(v) for k, v in state["target_shapes"].items()}
        self._check_spec(shapes, int(state["num_clients"]), "checkpointed")
        self.hypernetwork.load_state_dict(state["hypernetwork"])
        assert self.optimizer is not None
        self.optimizer.load_state_dict(state["optimizer"])
        self.version = int(state["version"])
        self._round = None

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(embedding_dim={self.embedding_dim}, hidden_dim={self.hidden_dim}, "
            f"n_hidden={self.n_hidden}, lr={self.lr}, momentum={self.momentum}, weight_decay={self.weight_decay}, "
            f"max_grad_norm={self.max_grad_norm}, weighted={self.weighted})"
        )


class PFedHN(HypernetworkStrategy):
    """pFedHN's server (Shamsian et al. 2021) with the official defaults [code].

    Embedding ``d_e = int(1 + N/4)``, MLP width 100 with 3 hidden layers, SGD on ``φ`` with lr 1e-2, momentum 0.9,
    weight decay 1e-3, gradient norm clipped at 50. Pair with :class:`PFedHNClient` (``private_head=True`` for
    pFedHN-PC; the official PC script uses lr 5e-2) and ``local_steps=50``.
    """

    def __init__(
        self,
        embedding_dim: int | None = None,
        hidden_dim: int = 100,
        n_hidden: int = 3,
        lr: float = 1e-2,
        momentum: float = 0.9,
        weight_decay: float = 1e-3,
        max_grad_norm: float | None = 50.0,
        weighted: bool = True,
        aggregator: Aggregator | None = None,
        device: str = "cpu",
    ) -> None:
        super().__init__(
            embedding_dim, hidden_dim, n_hidden, lr, momentum, weight_decay, max_grad_norm, weighted, aggregator, device
        )


# ----------------------------------------------------------------------------------------------------------------
# The client
# ----------------------------------------------------------------------------------------------------------------


class HypernetworkClient(FederatedClient):
    """A client whose ``generated`` parameters come from the server's hypernetwork each round.

    :meth:`receive_global` loads the shared state and then overwrites the generated parameters with the tensors in
    ``message.extras``; local training updates *all* trainable parameters; :meth:`build_update` returns the trained
    generated tensors in ``ClientUpdate.extras`` (the strategy computes ``θ_i − θ̃_i`` from them). Generated and
    ``personal`` (private) parameters are personal keys — never aggregated; the rest is shared (FedAvg; pFedHN's
    client shares nothing). For evaluation, :meth:`receive_evaluation` loads the generated tensors the strategy's
    ``configure_evaluate`` sends. Under a plain ``lightning.Trainer`` the module trains like any FederatedClient.

    Args:
        backbone: A model with timm's feature/head contract.
        generated: Selectors of the generated parameters (parameters only; buffers they select stay personal).
            ``None`` means the whole backbone (pFedHN).
        personal: Selectors of private, never-generated layers kept in the client-state store (pFedHN-PC's
            head); they take precedence over ``generated``.
        **kwargs: FederatedClient's other arguments (regularizers, optimizer, lr_scheduler, schedule).
    """

    def __init__(
        self,
        backbone: nn.Module,
        generated: Sequence[ParameterSelector] | None = None,
        personal: Sequence[ParameterSelector] = (),
        **kwargs: Any,
    ) -> None:
        selectors = [Modules(["backbone"])] if generated is None else list(generated)
        super().__init__(backbone, [*selectors, *personal], **kwargs)
        self.generated_selectors = selectors
        self.private_selectors = list(personal)
        self._generated_keys: list[str] | None = None
        self._generated_supplied = True  # standalone Lightning use: the module's own parameters are the model
        self._initial_generated: StateDict | None = None

    # -- keys ------------------------------------------------------------------------------------------
    def generated_keys(self) -> list[str]:
        """State-dict keys of the generated parameters, in ``state_dict`` order.

        Raises:
            ValueError: the selectors select no floating-point parameter.
        """
        if self._generated_keys is None:
            selected: set[str] = set()
            for selector in self.generated_selectors:
                selected |= selector.select(self)
            private: set[str] = set()
            for selector in self.private_selectors:
                private |= selector.select(self)
            params = dict(self.named_parameters())
            self._generated_keys = [
                k
                for k in self.state_dict().keys()
                if k in selected and k not in private and k in params and params[k].is_floating_point()
            ]
            if not self._generated_keys:
                raise ValueError(
                    f"{type(self).__name__}: the generated selectors {self.generated_selectors} select no parameter of "
                    f"{type(self.backbone).__name__}"
                )
        return self._generated_keys

    def initial_generated(self) -> StateDict:
        """The generated tensors as the client held them first: its initialization, captured on first use.

        A loop's ``setup`` makes that first use. They are what the client holds when the server gave it none — its
        "global model", e.g. for the loop's ``global_acc``, which is not meaningful for these methods.
        """
        if self._initial_generated is None:
            tensors = self._tensors()
            self._initial_generated = {k: tensors[k].detach().to("cpu", copy=True) for k in self.generated_keys()}
        return self._initial_generated

    def generated_shapes(self) -> dict[str, tuple[int, ...]]:
        """``{key: shape}`` of the generated parameters — what the server's hypernetwork must emit."""
        tensors = self._tensors()
        return {k: tuple(tensors[k].shape) for k in self.generated_keys()}

    # -- protocol --------------------------------------------------------------------------------------
    @override
    def personal_state(self) -> StateDict:
        """The private layers (and personal buffers) only: the generated tensors are a function of ``φ``."""
        generated = self.initial_generated().keys()  # captures the initialization before any training
        tensors = self._tensors()
        return {k: tensors[k].detach().to("cpu", copy=True) for k in self.personal_keys() if k not in generated}

    def _load_generated(self, message: ServerMessage) -> None:
        keys = self.generated_keys()
        missing = [k for k in keys if k not in message.extras]
        if missing:
            raise KeyError(
                f"client {message.client_id}, round {message.round + 1}: the server message lacks the generated tensor "
                f"'{missing[0]}' ({len(missing)} missing) — pair this client with a hypernetwork strategy "
                "(PFedHN, FedTP)"
            )
        self.load_state(
            {k: message.extras[k] for k in keys},
            what=f"generated tensors for client {message.client_id}, round {message.round + 1},",
        )
        self._generated_supplied = True

    @override
    def receive_global(self, message: ServerMessage) -> None:
        """Loads the shared state, then the generated tensors from ``message.extras``.

        Raises:
            KeyError: the message lacks a generated tensor.
        """
        super().receive_global(message)
        self._load_generated(message)

    @override
    def receive_evaluation(self, message: ServerMessage) -> None:
        """Loads the generated tensors the strategy sends for evaluation (``message.extras``).

        Raises:
            KeyError: the message lacks a generated tensor.
        """
        self._load_generated(message)

    @override
    def build_update(self, num_samples: int) -> ClientUpdate:
        """The shared state plus the trained generated tensors ``θ̃_i`` in ``extras``."""
        update = super().build_update(num_samples)
        tensors = self._tensors()
        update.extras.update({k: tensors[k].detach().to("cpu", copy=True) for k in self.generated_keys()})
        return update

    @override
    def load_personal_state(self, state: StateDict) -> None:
        """Loads the private tensors, and the initial generated ones (:meth:`initial_generated`).

        A client's model thus never depends on the client trained before it in the same worker module; until the
        server's tensors arrive (:meth:`receive_global`, :meth:`receive_evaluation`) personalized predictions are
        refused.
        """
        self._generated_supplied = False
        super().load_personal_state({**self.initial_generated(), **state})

    @override
    def predict_logits(self, x: Tensor) -> Tensor:
        """Personalized class scores; refuses when the server's generated tensors were not loaded.

        Raises:
            RuntimeError: the personal state was loaded without the hypernetwork's tensors.
        """
        if not self._generated_supplied:
            raise RuntimeError(
                f"{type(self).__name__}: personalized evaluation without the hypernetwork's generated tensors: "
                "evaluate the client with the message of the strategy's configure_evaluate(...) (the loop does, "
                "after its setup built the hypernetwork)"
            )
        return super().predict_logits(x)

    @override
    def global_logits(self, x: Tensor) -> Tensor:
        """The shared part with the initial generated tensors (not a meaningful model for these methods)."""
        return self(x)


class PFedHNClient(HypernetworkClient):
    """The pFedHN target network (Shamsian et al. 2021): every backbone parameter is generated by the server.

    With ``private_head=True`` this is **pFedHN-PC**: the classifier (``get_classifier()``) is a private
    per-client layer — trained locally, kept in the client-state store, never generated or sent.

    Args:
        backbone: The target network (e.g. :class:`~lit_fed.models.FedAvgCNN`).
        private_head: pFedHN-PC's personal classifier.
        **kwargs: FederatedClient's other arguments (regularizers, optimizer, lr_scheduler, schedule); the
            personal part is fixed by ``private_head``. pFedHN's local optimizer: SGD lr 5e-3, momentum 0.9, weight
            decay 5e-5.
    """

    def __init__(
        self,
        backbone: nn.Module,
        private_head: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            backbone, generated=[Modules(["backbone"])], personal=[Head()] if private_head else [], **kwargs
        )
        self.private_head = private_head


def bind_hypernetwork(context: ServerContext, strategy: HypernetworkStrategy) -> None:
    """Builds ``strategy``'s hypernetwork for the context's client module and number of clients.

    Idempotent. :meth:`HypernetworkStrategy.bind` calls it when a loop is set up, so evaluating a saved checkpoint
    is ``loop.setup(); loop.restore(path); loop.evaluate()`` (what ``lit-fed validate/test`` do).

    Raises:
        TypeError: the client module is not a :class:`HypernetworkClient`.
    """
    client = context.client_template
    if not isinstance(client, HypernetworkClient):
        raise TypeError(
            f"bind_hypernetwork: the client {type(client).__name__} is not a HypernetworkClient "
            "(PFedHNClient, FedTPClient)"
        )
    strategy.setup(client.generated_shapes(), context.num_clients, seed=context.seed)


class _HypernetworkUpdate(ServerStep):
    """The hypernetwork strategy's server step: one SGD step on ``φ`` (its state is the strategy's)."""

    def __init__(self, strategy: HypernetworkStrategy) -> None:
        self.strategy = strategy

    @property
    def state_key(self) -> str:
        return f"{type(self.strategy).__name__}.hypernetwork_step"

    @override
    def run(self, global_state: StateDict, updates: Sequence[ClientUpdate], context: ServerContext) -> StateDict:
        self.strategy.last_metrics = self.strategy.hypernetwork_step(updates)
        context.log(self.strategy.last_metrics)
        return global_state

    def __repr__(self) -> str:
        return self.state_key
