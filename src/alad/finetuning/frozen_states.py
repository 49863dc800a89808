"""The frozen part's states, computed once per training item, for the modes that freeze the student.

In ``frozen`` mode the student encoder never changes and runs without dropout (see
:meth:`AladTaskModel.train`), and in ``head-only`` mode the adapter is fixed too: the states the
trainable part reads are the same in every epoch. Computing them once and padding them into each
batch gives the batches a per-step encoder pass would (up to float rounding of the padding), at a
fraction of the cost: ``min_steps`` gives a 100-label budget some 24 epochs over the same items,
and each of them ran the whole frozen encoder again.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch.nn.utils.rnn import pad_sequence

from alad.tasks.base import Task, batched_logits
from alad.training.precision import autocast

logger = logging.getLogger(__name__)

CACHED_MODES = ("frozen", "head-only")
FROZEN_STATES = "frozen_states"
"""The batch key the cached states travel under (see :func:`training_loss`)."""


def frozen_state_width(model: Any) -> int:
    """Width of :meth:`AladTaskModel.frozen_states`: the adapter's output in head-only mode, else the encoder's."""
    if model.config.mode == "head-only" and model.adapter is not None:
        return int(model.adapter.config.teacher_dim)
    return int(model.encoder.config.hidden_size)


def cache_frozen_states(
    model: Any, task: Task, features: Sequence, limit_mb: float, show_progress: bool = False, precision: str = "fp32"
) -> list[torch.Tensor] | None:
    """Per feature, the frozen part's states ``[tokens, width]`` (float32, on the CPU, computed in
    ``precision``); ``None`` when the mode trains the encoder, or when they would take more than
    ``limit_mb`` (then each step runs the frozen part itself, with the same result, more slowly)."""
    if model.config.mode not in CACHED_MODES or not features or limit_mb <= 0:
        return None
    size_mb = sum(len(f.input_ids) for f in features) * frozen_state_width(model) * 4 / 2**20
    if size_mb > limit_mb:
        logger.info("frozen states of %d items need %.0f MB > %.0f MB: not cached", len(features), size_mb, limit_mb)
        return None
    was_training = model.training
    device = next(model.parameters()).device
    try:
        with autocast(device, precision):
            return batched_logits(
                model,
                task,
                features,
                show_progress=show_progress,
                forward=model.frozen_states,
                description="frozen states",
            )
    finally:
        model.train(was_training)


def add_frozen_states(batch: dict[str, torch.Tensor], states: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    """``batch`` with the cached states of its rows, padded with zeros to its width (right padding,
    as every task's collate pads ``input_ids``: the longest item sets both widths)."""
    return {**batch, FROZEN_STATES: pad_sequence(list(states), batch_first=True)}  # each item's length: its input_ids
