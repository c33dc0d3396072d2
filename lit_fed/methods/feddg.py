r"""FedDG: federated domain generalization by amplitude exchange in continuous frequency space.

Liu, Chen, Qin, Dou and Heng, "FedDG: Federated Domain Generalization on Medical Image Segmentation via Episodic
Learning in Continuous Frequency Space" (CVPR 2021).

**Amplitude exchange** (§3.2). The Fourier transform of an image, ``F(x) = A ⊙ e^{iP}``, splits
into an amplitude spectrum ``A`` (low-level "style": contrast, intensity, texture) and a phase spectrum ``P``
(high-level semantics). Clients share only (the low-frequency part of) their images' amplitude spectra; a
client ``k`` turns a local image into one styled like another client ``n``'s data by interpolating the
low-frequency amplitudes (Eq. 2)

    ``A^λ = ((1 − λ) A_k + λ A_n) ⊙ M + A_k ⊙ (1 − M)``,      ``λ ~ U(0, 1)``,

with ``M`` a centred square of the ``fftshift``-ed spectrum of half-size ``b = ⌊β · min(H, W)⌋`` (rows and
columns ``c − b … c + b``, ``c = ⌊H/2⌋``, as in the official code's ``low_freq_mutate``), and rebuilds the image
from ``(A^λ, P_k)`` by the inverse FFT (Eq. 3). Only ``M``'s region of ``A_n`` is ever used, so a client sends
just that ``(2b + 1) × (2b + 1)`` crop per channel and image: the bank costs ``C (2b + 1)²`` floats per shared
amplitude. [design] The paper samples ``λ ~ U(0, 1)``; the official code draws it from ``{0.1, …, 1.0}``; this
module follows the paper.

**Episodic learning** (§3.3). Per batch: an inner (meta-train) step on the raw images,
``θ' = θ − α ∇_θ L_inner(θ)``, and a meta-test loss on the amplitude-interpolated images through ``θ'``;
the client minimizes ``L_inner(θ) + γ L_meta(θ')`` with the gradient flowing through ``θ'`` (second order, or
first order with ``first_order=True``). [design] The paper's meta-test objective adds a boundary-oriented
contrastive term specific to segmentation; for classification ``L_meta`` is the cross-entropy of the
interpolated images. ``episodic=False`` replaces it with plain augmentation, ``L + γ CE(f_θ(x^λ), y)``.

**Protocol in lit_fed** [design]. :class:`FedDGClient` collects the low-frequency amplitudes of its first
``amplitudes_per_client`` training images (in its round's shuffled order) when the server asks for them
(``ServerMessage.config["feddg_send_amplitudes"]``) and uploads them in ``ClientUpdate.extras`` (counted
upload bytes). :class:`FedDGStrategy` wraps any strategy (FedAvg by default), keeps the bank (checkpointed)
and sends every client the *other* clients' amplitudes in ``ServerMessage.extras["feddg_bank"]`` each round
(counted download bytes; the bank is a few KB per round). The paper builds the bank before training; here the
bank fills in the rounds clients first take part, so a client trains without augmentation until some other
client has contributed (round 0 under full participation).

The augmentation is usable in any Lightning project: :func:`amplitude_interpolate` (a plain function),
:class:`AmplitudeMix` (an ``nn.Module`` batch transform holding a bank) and :func:`low_frequency_amplitude`
(to build a bank), and a :class:`FedDGClient` trains under a plain ``Trainer.fit`` with a bank set by
:meth:`FedDGClient.set_amplitude_bank`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from lit_fed.client.module import FederatedClient, StepOutput
from lit_fed.client.payloads import ClientUpdate, ServerMessage, StateDict
from lit_fed.server.fedavg import FedAvg
from lit_fed.server.strategy import ServerContext, ServerStep, Strategy

__all__ = [
    "AMPLITUDE_KEY",
    "BANK_KEY",
    "REQUEST_KEY",
    "AmplitudeMix",
    "FedDGClient",
    "FedDGStrategy",
    "amplitude_interpolate",
    "amplitude_phase",
    "low_frequency_amplitude",
    "low_frequency_half_size",
    "low_frequency_mask",
    "low_frequency_window",
]

AMPLITUDE_KEY = "feddg_amplitudes"
"""``ClientUpdate.extras`` key of a client's low-frequency amplitude crops, ``(N, C, 2b+1, 2b+1)``."""
BANK_KEY = "feddg_bank"
"""``ServerMessage.extras`` key of the other clients' amplitude crops (the distributed bank)."""
REQUEST_KEY = "feddg_send_amplitudes"
"""``ServerMessage.config`` flag: the server has no amplitudes of this client yet and asks for them."""


# --------------------------------------------------------------------------------------------------
# The frequency-space augmentation (plain functions)
# ----------------------------------------------------------------------------------------------------


def low_frequency_half_size(height: int, width: int, beta: float) -> int:
    """``b = ⌊β · min(H, W)⌋``: the half-size of the low-frequency square.

    Raises:
        ValueError: ``beta`` negative, or the square ``c − b … c + b`` does not fit in ``H × W``.
    """
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    half = math.floor(beta * min(height, width))
    for size in (height, width):
        centre = size // 2
        if centre - half < 0 or centre + half >= size:
            raise ValueError(
                f"beta={beta} gives a low-frequency square of half-size {half}, larger than a {height}x{width} "
                "spectrum allows; use a smaller beta"
            )
    return half


def low_frequency_window(height: int, width: int, beta: float) -> tuple[slice, slice]:
    """Row and column slices of the centred square (side ``2b + 1``) in an ``fftshift``-ed ``H × W`` spectrum."""
    half = low_frequency_half_size(height, width, beta)
    rows, cols = height // 2, width // 2
    return slice(rows - half, rows + half + 1), slice(cols - half, cols + half + 1)


def low_frequency_mask(height: int, width: int, beta: float, device: torch.device | str | None = None) -> Tensor:
    """The mask ``M``: ``(H, W)`` bool, true on the centred low-frequency square of the shifted spectrum."""
    rows, cols = low_frequency_window(height, width, beta)
    mask = torch.zeros(height, width, dtype=torch.bool, device=device)
    mask[rows, cols] = True
    return mask


def _shifted_spectrum(images: Tensor) -> Tensor:
    return torch.fft.fftshift(torch.fft.fft2(images.float()), dim=(-2, -1))


def amplitude_phase(images: Tensor) -> tuple[Tensor, Tensor]:
    """``(A, P)``: amplitude and phase of the ``fftshift``-ed 2-D spectrum of ``(..., H, W)`` images (float32)."""
    spectrum = _shifted_spectrum(images)
    return spectrum.abs(), spectrum.angle()


def low_frequency_amplitude(images: Tensor, beta: float) -> Tensor:
    """What a client shares: the low-frequency square of its images' shifted amplitude spectra.

    Args:
        images: ``(..., C, H, W)`` images.
        beta: Relative half-size of the square.

    Returns:
        ``(..., C, 2b + 1, 2b + 1)`` float32 amplitudes.
    """
    rows, cols = low_frequency_window(images.shape[-2], images.shape[-1], beta)
    return _shifted_spectrum(images)[..., rows, cols].abs()


def amplitude_interpolate(images: Tensor, amplitude: Tensor, lam: float | Tensor, beta: float) -> Tensor:
    """FedDG's continuous frequency-space interpolation (Liu et al. 2021, Eqs. 2–3).

    ``A^λ = ((1 − λ) A_k + λ A_n) ⊙ M + A_k ⊙ (1 − M)``; the image is rebuilt from ``(A^λ, P_k)`` by the inverse
    FFT of the (un-shifted) spectrum. Outside ``M`` the spectrum is untouched, so the phase everywhere and the
    amplitude outside ``M`` are preserved; ``λ = 0`` returns the image (up to FFT round-off).

    Args:
        images: ``(..., C, H, W)`` images ``x_k`` (any float dtype; computed in float32).
        amplitude: The other domain's amplitudes ``A_n``, broadcastable to ``images``: either the full shifted
            spectra ``(..., C, H, W)`` or just their low-frequency squares ``(..., C, 2b+1, 2b+1)`` (a bank entry).
        lam: Interpolation weight ``λ`` in ``[0, 1]``: a float, or a tensor of one value per image (shape
            ``images.shape[:-3]``).
        beta: Relative half-size of the square ``M`` (``b = ⌊β · min(H, W)⌋``).

    Returns:
        The interpolated images, same shape and dtype as ``images``.

    Raises:
        ValueError: ``amplitude``'s spatial size is neither ``H × W`` nor the square's.
    """
    height, width = images.shape[-2], images.shape[-1]
    rows, cols = low_frequency_window(height, width, beta)
    side = rows.stop - rows.start
    spectrum = _shifted_spectrum(images)
    amplitude = amplitude.to(device=images.device, dtype=torch.float32)
    if amplitude.shape[-2:] == (height, width):
        amplitude = amplitude[..., rows, cols]
    elif amplitude.shape[-2:] != (side, side):
        raise ValueError(
            f"amplitude_interpolate: amplitudes of spatial size {tuple(amplitude.shape[-2:])} fit neither the "
            f"{height}x{width} images nor their {side}x{side} low-frequency square (beta={beta})"
        )
    weight = torch.as_tensor(lam, dtype=torch.float32, device=images.device)
    if weight.dim() > 0:  # one λ per image: broadcast over (C, square rows, square columns)
        weight = weight.reshape(*weight.shape, 1, 1, 1)
    local = spectrum[..., rows, cols]
    mixed = (1.0 - weight) * local.abs() + weight * amplitude
    spectrum = spectrum.clone()
    spectrum[..., rows, cols] = torch.polar(mixed, local.angle())
    rebuilt = torch.fft.ifft2(torch.fft.ifftshift(spectrum, dim=(-2, -1))).real
    return rebuilt.to(images.dtype)


class AmplitudeMix(nn.Module):
    """Batch transform: each image gets a random bank amplitude and ``λ ~ U(0, 1)`` (FedDG's augmentation).

    Usable in any Lightning project (e.g. in ``on_after_batch_transfer`` or a ``training_step``). The bank is a
    non-persistent buffer: it follows ``.to(device)`` but is not part of the ``state_dict`` (so a federated
    client never uploads or aggregates it).

    Args:
        beta: Relative half-size of the low-frequency square.
        bank: ``(N, C, 2b+1, 2b+1)`` amplitudes (:func:`low_frequency_amplitude`) or full ``(N, C, H, W)`` spectra;
            empty or ``None``: the transform is the identity.
    """

    bank: Tensor

    def __init__(self, beta: float = 0.1, bank: Tensor | None = None) -> None:
        super().__init__()
        if beta < 0:
            raise ValueError(f"AmplitudeMix: beta must be >= 0, got {beta}")
        self.beta = beta
        self.register_buffer("bank", torch.empty(0), persistent=False)
        if bank is not None:
            self.set_bank(bank)

    def set_bank(self, bank: Tensor | None) -> None:
        """Replaces the bank (``None`` or an empty tensor clears it)."""
        device = self.bank.device
        self.bank = torch.empty(0, device=device) if bank is None else bank.detach().to(device, torch.float32)

    @property
    def has_bank(self) -> bool:
        """Whether there is at least one amplitude to sample."""
        return self.bank.dim() == 4 and self.bank.shape[0] > 0

    @override
    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Interpolated ``(B, C, H, W)`` images (the images themselves when the bank is empty).

        Bank indices and ``λ`` are drawn on the CPU from ``generator`` (or the global RNG), so results do not
        depend on the device.
        """
        if not self.has_bank:
            return images
        count = images.shape[0]
        index = torch.randint(self.bank.shape[0], (count,), generator=generator, device="cpu")
        lam = torch.rand(count, generator=generator, device="cpu")
        with torch.no_grad():
            return amplitude_interpolate(
                images, self.bank[index.to(self.bank.device)], lam.to(images.device), self.beta
            )


# --------------------------------------------------------------------------------------------------
# The client
# ----------------------------------------------------------------------------------------------------


class FedDGClient(FederatedClient):
    """FedDG client (Liu et al. 2021): episodic learning on amplitude-interpolated images from a shared bank.

    Per batch, once the client holds a bank (see the module docstring for the protocol):

    * ``episodic`` (default): :meth:`extra_losses` adds ``feddg_meta = γ · CE(f_{θ'}(x^λ), y)`` with
      ``θ' = θ − α ∇_θ CE(f_θ(x), y)`` computed with ``create_graph`` (second order; ``first_order=True`` drops
      the second-order term), so the step minimizes ``L_inner(θ) + γ L_meta(θ')`` (§3.3);
    * otherwise: ``feddg_aug = γ · CE(f_θ(x^λ), y)``.

    ``x^λ`` is :class:`AmplitudeMix` applied to the batch (random bank entry and ``λ ~ U(0, 1)`` per image,
    from the global RNG that the loop seeds per client and round). Evaluation uses the plain model.

    [design] Under 16-bit mixed precision the inner gradient is taken of the unscaled loss (no grad scaler), so
    tiny gradients may underflow in the inner step; prefer ``bf16-mixed`` or 32-bit for the episodic variant.

    Args:
        backbone: The model (timm's feature/head contract).
        beta: Relative half-size of the low-frequency square (``b = ⌊β · min(H, W)⌋``). [design] Default 0.1
            (b = 2, a 5×5 square, on 28×28 images); the official code uses 0.003 on 384×384 images (b = 1).
        amplitudes_per_client: How many images' amplitudes the client shares (when the server asks).
        episodic: Episodic meta-learning (§3.3) instead of plain augmentation.
        inner_lr: The inner step size ``α``; ``None``: the optimizer's current learning rate.
        meta_weight: ``γ``, the weight of the meta-test (or augmentation) loss.
        first_order: Drop the second-order term of the episodic gradient.
        **kwargs: FederatedClient's arguments (personal, regularizers, optimizer, lr_scheduler, schedule); FedDG
            itself shares everything, and the optimizer defaults to SGD lr 0.005.

    Raises:
        ValueError: Invalid ``beta``, ``amplitudes_per_client``, ``inner_lr`` or ``meta_weight``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        beta: float = 0.1,
        amplitudes_per_client: int = 32,
        episodic: bool = True,
        inner_lr: float | None = None,
        meta_weight: float = 1.0,
        first_order: bool = False,
        **kwargs: Any,
    ) -> None:
        if amplitudes_per_client < 1:
            raise ValueError(f"FedDGClient: amplitudes_per_client must be >= 1, got {amplitudes_per_client}")
        if inner_lr is not None and inner_lr <= 0:
            raise ValueError(f"FedDGClient: inner_lr must be > 0 (or None), got {inner_lr}")
        if meta_weight < 0:
            raise ValueError(f"FedDGClient: meta_weight must be >= 0, got {meta_weight}")
        super().__init__(backbone, **kwargs)
        self.amplitude_mix = AmplitudeMix(beta)
        self.beta = beta
        self.amplitudes_per_client = amplitudes_per_client
        self.episodic = episodic
        self.inner_lr = inner_lr
        self.meta_weight = meta_weight
        self.first_order = first_order
        self._to_collect = 0
        self._collected: list[Tensor] = []

    # -- the bank ----------------------------------------------------------------------------------------
    def set_amplitude_bank(self, bank: Tensor | None) -> None:
        """Sets the amplitudes this client interpolates towards (e.g. by hand, in a plain Lightning fit)."""
        self.amplitude_mix.set_bank(bank)

    def collect_amplitudes(self, count: int) -> None:
        """Collects the low-frequency amplitudes of the next ``count`` training images for the next update."""
        self._to_collect = count
        self._collected = []

    @override
    def receive_global(self, message: ServerMessage) -> None:
        """Loads the global state, the other clients' amplitudes (if any) and the server's amplitude request."""
        super().receive_global(message)
        self.set_amplitude_bank(message.extras.get(BANK_KEY))
        self.collect_amplitudes(self.amplitudes_per_client if message.config.get(REQUEST_KEY, False) else 0)

    @override
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_start(batch, batch_idx)
        if self._to_collect > 0:
            images = batch[0][: self._to_collect].detach()
            self._collected.append(low_frequency_amplitude(images, self.beta).cpu())
            self._to_collect -= images.shape[0]

    @override
    def build_update(self, num_samples: int) -> ClientUpdate:
        """The shared state, plus this client's amplitudes in ``extras`` when the server asked for them."""
        update = super().build_update(num_samples)
        if self._collected:
            update.extras = {**update.extras, AMPLITUDE_KEY: torch.cat(self._collected)}
            self._collected = []
        return update

    # -- losses ------------------------------------------------------------------------------------------
    def _inner_step_size(self) -> float:
        if self.inner_lr is not None:
            return self.inner_lr
        if self._trainer is not None and self.trainer.optimizers:
            return float(self.trainer.optimizers[0].param_groups[0]["lr"])
        return 0.005

    def meta_test_loss(self, inner_loss: Tensor, images: Tensor, target: Tensor) -> Tensor:
        """``CE(f_{θ'}(x^λ), y)`` with ``θ' = θ − α ∇_θ L_inner`` (differentiable through ``θ'`` unless first order)."""
        named = [(name, p) for name, p in self.named_parameters() if p.requires_grad]
        grads = torch.autograd.grad(
            inner_loss,
            [p for _, p in named],
            create_graph=not self.first_order,
            retain_graph=True,
            allow_unused=True,
        )
        step = self._inner_step_size()
        fast = {name: p if g is None else p - step * g for (name, p), g in zip(named, grads, strict=True)}
        logits = torch.func.functional_call(self, fast, (images,))
        return F.cross_entropy(logits, target)

    @override
    def extra_losses(self, batch: Any, output: StepOutput | None) -> dict[str, Tensor]:
        """The regularizers' terms plus ``feddg_meta`` (episodic) or ``feddg_aug``, once a bank is held."""
        extras = super().extra_losses(batch, output)
        if output is None or not self.amplitude_mix.has_bank or self.meta_weight == 0:
            return extras
        x, y = batch[0], batch[1]
        mixed = self.amplitude_mix(x)
        if self.episodic:
            extras["feddg_meta"] = self.meta_weight * self.meta_test_loss(output.loss, mixed, y)
        else:
            extras["feddg_aug"] = self.meta_weight * F.cross_entropy(self(mixed), y)
        return extras


# --------------------------------------------------------------------------------------------------
# The server side: the amplitude bank around any strategy
# ----------------------------------------------------------------------------------------------------


class FedDGStrategy(Strategy):
    """Keeps FedDG's amplitude bank and distributes it, around any aggregation strategy (FedAvg by default).

    ``configure_train`` adds to each message the amplitudes of every *other* client in the bank
    (``extras["feddg_bank"]``, counted as downloaded bytes) and asks clients not yet in the bank for theirs
    (``config["feddg_send_amplitudes"]``); ``aggregate_train`` stores the amplitudes received in the updates'
    ``extras`` and delegates the aggregation. The bank is part of the strategy's checkpoint state.

    Args:
        inner: The aggregation strategy (``None``: :class:`~lit_fed.server.fedavg.FedAvg`); its server steps run
            first.
        steps: Server steps after ``inner``'s.
    """

    def __init__(self, inner: Strategy | None = None, steps: Sequence[ServerStep] = ()) -> None:
        super().__init__(steps)
        self.inner = inner if inner is not None else FedAvg()
        self.bank: dict[int, Tensor] = {}

    @override
    def initialize(self, global_state: StateDict) -> None:
        self.inner.initialize(global_state)

    def bank_for(self, client_id: int) -> Tensor | None:
        """The amplitudes of every client but ``client_id``, concatenated in client order (``None`` if none)."""
        others = [self.bank[c] for c in sorted(self.bank) if c != client_id]
        return torch.cat(others) if others else None

    @override
    def configure_train(self, round: int, client_ids: Sequence[int], global_state: StateDict) -> list[ServerMessage]:
        messages = []
        for message in self.inner.configure_train(round, client_ids, global_state):
            extras = dict(message.extras)
            bank = self.bank_for(message.client_id)
            if bank is not None:
                extras[BANK_KEY] = bank
            config = {**message.config, REQUEST_KEY: message.client_id not in self.bank}
            messages.append(dataclasses.replace(message, extras=extras, config=config))
        return messages

    @override
    def aggregate_train(self, round: int, updates: Sequence[ClientUpdate], global_state: StateDict) -> StateDict:
        for update in updates:
            amplitudes = update.extras.get(AMPLITUDE_KEY)
            if amplitudes is not None:
                self.bank[update.client_id] = amplitudes.detach().to("cpu", torch.float32).clone()
        return self.inner.aggregate_train(round, updates, global_state)

    @override
    def bind(self, context: ServerContext) -> None:
        self.inner.bind(context)

    @override
    def server_steps(self) -> list[ServerStep]:
        """``inner``'s steps, then the steps given."""
        return [*self.inner.server_steps(), *self.steps]

    @override
    def configure_evaluate(self, round: int, client_ids: Sequence[int], global_state: StateDict) -> list[ServerMessage]:
        return self.inner.configure_evaluate(round, client_ids, global_state)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"bank": {c: t.clone() for c, t in self.bank.items()}, "inner": self.inner.state_dict()}

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.bank = {int(c): t.clone() for c, t in state["bank"].items()}
        self.inner.load_state_dict(state["inner"])

    def __repr__(self) -> str:
        return f"FedDGStrategy(inner={self.inner!r})"
