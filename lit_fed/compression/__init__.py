"""Communication compression: compressors and the loop wrappers that apply them to any method.

Compressors (:class:`Compressor`: ``compress(tensors) -> CompressedPayload`` / ``decompress(payload)``):

* :class:`TopK` — gradient dropping (Aji & Heafield 2017): sampled percentile threshold, exact top-k fallback,
  DGC sparsity warm-up (Lin et al. 2018);
* :class:`SVD` — per-matrix truncated SVD with FedKD's rising energy threshold (Wu et al. 2022);
  :func:`svd_compress` / :func:`svd_reconstruct` / :func:`energy_schedule` are reusable on their own;
* :class:`Quantize8Bit` — 8-bit uniform quantization per tensor, optional stochastic rounding;
* :class:`Dense` — the identity (dense baseline).

Wrappers (loop callbacks, ``trainer.round_callbacks``): :class:`CompressUpload` (with error-feedback residuals
and DGC momentum correction, :class:`ErrorFeedback`) and :class:`CompressDownload`.
"""

from lit_fed.compression.base import CompressedPayload, Compressor, Dense
from lit_fed.compression.quantize import Quantize8Bit, dequantize_uint8, quantize_uint8
from lit_fed.compression.svd import SVD, as_matrix, energy_rank, energy_schedule, svd_compress, svd_reconstruct
from lit_fed.compression.topk import TopK, sampled_threshold, warmup_sparsity
from lit_fed.compression.wrappers import CompressDownload, CompressUpload, ErrorFeedback, ErrorFeedbackStep

__all__ = [
    "SVD",
    "CompressDownload",
    "CompressUpload",
    "CompressedPayload",
    "Compressor",
    "Dense",
    "ErrorFeedback",
    "ErrorFeedbackStep",
    "Quantize8Bit",
    "TopK",
    "as_matrix",
    "dequantize_uint8",
    "energy_rank",
    "energy_schedule",
    "quantize_uint8",
    "sampled_threshold",
    "svd_compress",
    "svd_reconstruct",
    "warmup_sparsity",
]
