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

from __future__ import annotations

from lit_fed.utils.lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "CompressedPayload": "lit_fed.compression.base",
    "Compressor": "lit_fed.compression.base",
    "Dense": "lit_fed.compression.base",
    "Quantize8Bit": "lit_fed.compression.quantize",
    "dequantize_uint8": "lit_fed.compression.quantize",
    "quantize_uint8": "lit_fed.compression.quantize",
    "SVD": "lit_fed.compression.svd",
    "as_matrix": "lit_fed.compression.svd",
    "energy_rank": "lit_fed.compression.svd",
    "energy_schedule": "lit_fed.compression.svd",
    "svd_compress": "lit_fed.compression.svd",
    "svd_reconstruct": "lit_fed.compression.svd",
    "TopK": "lit_fed.compression.topk",
    "sampled_threshold": "lit_fed.compression.topk",
    "warmup_sparsity": "lit_fed.compression.topk",
    "CompressDownload": "lit_fed.compression.wrappers",
    "CompressUpload": "lit_fed.compression.wrappers",
    "ErrorFeedback": "lit_fed.compression.wrappers",
    "ErrorFeedbackStep": "lit_fed.compression.wrappers",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
