"""FedLoGe (Xiao et al., "FedLoGe: Joint Local and Generic Federated Learning under Long-tailed Data", ICLR 2024).

* :mod:`~lit_fed.methods.fedloge.etf` — the simplex ETF and SSE-C, the static sparse ETF classifier.
* :mod:`~lit_fed.methods.fedloge.realignment` — GLA-FR, the post-hoc global and local realignment.
* :mod:`~lit_fed.methods.fedloge.client` — :class:`FedLoGeClient`.
"""

from lit_fed.methods.fedloge.client import FedLoGeClient, LabelCounts, dataloader_label_counts, fedloge_sgd
from lit_fed.methods.fedloge.etf import (
    SSEClassifier,
    build_sse_classifier,
    cached_sse_classifier,
    etf_geometry,
    simplex_etf,
    sse_loss,
)
from lit_fed.methods.fedloge.realignment import GLOBAL_SCALE, global_realign, mask_absent_classes, norm_transfer

__all__ = [
    "GLOBAL_SCALE",
    "FedLoGeClient",
    "LabelCounts",
    "SSEClassifier",
    "build_sse_classifier",
    "cached_sse_classifier",
    "dataloader_label_counts",
    "etf_geometry",
    "fedloge_sgd",
    "global_realign",
    "mask_absent_classes",
    "norm_transfer",
    "simplex_etf",
    "sse_loss",
]
