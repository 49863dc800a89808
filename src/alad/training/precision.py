"""Numeric precision of training-time computations: ``fp32``, or ``bf16`` matrix products under autocast.

``bf16`` runs the matrix products of a forward pass in bfloat16 (``torch.autocast``) while weights,
gradients, optimiser state and losses stay float32, as mixed-precision training does on GPUs. On a CPU
with AMX or AVX512-BF16 (and on recent GPUs) it embeds the teacher 2-3x faster and trains the adapter
about 2x faster; elsewhere bfloat16 is emulated and slower, so alad says so once. Evaluation and
latency always run in float32, as the model is deployed.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager, nullcontext
from functools import cache

import torch

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16")


@cache
def native_bf16(device_type: str) -> bool:
    """Whether bfloat16 matrix products run in hardware on this kind of device."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type == "cpu":
        try:
            return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


@cache
def _warn_emulated(device_type: str) -> None:
    logger.warning(
        "precision bf16: this %s has no native bfloat16 matrix products, so bf16 is emulated and slower than fp32; "
        "set precision to fp32",
        device_type,
    )


def autocast(device: torch.device | str, precision: str) -> AbstractContextManager:
    """A context that runs the forward pass in ``precision`` on ``device`` (nothing to do for fp32)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return nullcontext()
    device_type = torch.device(device).type
    if not native_bf16(device_type):
        _warn_emulated(device_type)
    return torch.autocast(device_type, dtype=torch.bfloat16)
