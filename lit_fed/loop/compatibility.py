"""Checks, before any training, that a classification client's model accepts its data.

A model built for other data fails late and obscurely: a wrong ``in_channels`` deep inside the first fit's
convolution, a ``num_classes`` smaller than the labels as a CUDA assert or, on the CPU, an index error in the loss.
:func:`check_model_accepts_data` runs the model once on a few samples of one client and names both sides instead.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from lit_fed.client.module import FederatedClient


class ModelDataMismatch(ValueError):
    """The client model does not fit the data (input shape or number of classes)."""


def _first_batch(loaders: Iterable[Iterable[Any]]) -> Any:
    for loader in loaders:
        for batch in loader:
            return batch
    return None


def _shape(value: Any) -> str:
    return str(tuple(value.shape)) if isinstance(value, torch.Tensor) else type(value).__name__


def check_model_accepts_data(client: Any, datamodule: Any, probe_samples: int = 2) -> None:
    """Runs ``client`` on ``probe_samples`` samples of client 0 and compares its class scores with the labels.

    Only lit_fed's classification clients (:class:`~lit_fed.client.module.FederatedClient`, ``(x, y)`` batches)
    are checked; any other module's batches are its own. The global random state, the model's mode and its
    buffers are left as they were, so a checked run draws exactly what an unchecked one does.

    Raises:
        ModelDataMismatch: the forward pass fails on the data (e.g. wrong ``in_channels``), or the model has
            fewer class scores than the data has classes (``num_classes`` of the datamodule or a label seen).
    """
    if not isinstance(client, FederatedClient):
        return
    model = type(client.backbone).__name__
    with torch.random.fork_rng(devices=[]):
        batch = _first_batch([datamodule.client_test_dataloader(0), datamodule.client_train_dataloader(0, 0)])
        if not (isinstance(batch, list | tuple) and len(batch) == 2 and isinstance(batch[0], torch.Tensor)):
            return
        x, y = batch[0][:probe_samples], batch[1][:probe_samples]
        was_training = client.training
        buffers = {k: v.clone() for k, v in client.named_buffers()}
        client.eval()
        try:
            with torch.no_grad():
                scores = client(x.to(client.device))
        except Exception as error:  # any failure here is the model refusing this data
            raise ModelDataMismatch(
                f"the model ({model}) does not accept the data's inputs of shape {_shape(x)} (a batch of "
                f"{datamodule.__class__.__name__}): {str(error).splitlines()[0]}. Check the model's input "
                "settings (e.g. in_channels, image size) against the dataset"
            ) from error
        finally:
            client.train(was_training)
            for key, value in client.named_buffers():
                value.copy_(buffers[key])
    if not isinstance(scores, torch.Tensor) or scores.ndim < 1:
        return
    outputs = int(scores.shape[-1])
    labels = int(y.max()) + 1 if isinstance(y, torch.Tensor) and not y.is_floating_point() and y.numel() else 0
    declared = int(getattr(datamodule, "num_classes", 0) or 0)
    if outputs < max(declared, labels):
        have = f"num_classes={declared}" if declared >= labels else f"a label {labels - 1}"
        raise ModelDataMismatch(
            f"the model ({model}) outputs {outputs} class scores but the data ({datamodule.__class__.__name__}) has "
            f"{have}: set the model's num_classes to at least {max(declared, labels)}"
        )
