"""The task interface: what fine-tuning, evaluation, distillation and the recipe ask of a task.

A task family (token tagging, extractive QA) is one :class:`Task` object that turns items into
model features, batches them, scores logits against labels, decodes predictions into the task's
metrics, and names its headline numbers. Adding a task is adding one subclass and one entry in
:data:`TASKS` (see :func:`register_task`); nothing else branches on the task's name.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

TASKS: dict[str, Task] = {}
IGNORE_INDEX = -100  # a label position the loss skips (non-first sub-tokens; windows read only for distillation)


def register_task(task: Task) -> Task:
    """Make ``task`` available by its name to configs, the CLI and the recipe."""
    TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    """The registered task called ``name``; an unknown name fails with the known ones."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; alad knows {sorted(TASKS)}")
    return TASKS[name]


class Task:
    """One task family. Subclasses implement every method; ``model`` is an ``AladTaskModel``."""

    name: str = ""
    main_metric: str = ""
    columns: tuple[str, ...] = ()  # headline numbers of a results row, main metric first
    has_labels: bool = True  # a label vocabulary (token tasks) or none (span QA)
    supports_distillation: bool = False

    def head_outputs(self, labels: Sequence[str]) -> int:
        """Logits per token: one per label (tagging), or start and end (span QA)."""
        return len(labels)

    def label_set(self, train_items: Sequence, teacher: Any | None) -> tuple[str, ...]:
        """The head's labels: the teacher's where there is one, else those of the training data."""
        raise NotImplementedError

    def check_data(self, items: Sequence, labels: Sequence[str], what: str) -> None:
        """Fail before training on items the head cannot learn or score (e.g. unknown tags)."""

    def features(self, model: Any, items: Sequence, config: Any, labelled: bool = True) -> list:
        """Model inputs for ``items``; with ``labelled=False`` no gold label is read (distillation)."""
        raise NotImplementedError

    def collate(self, model: Any, features: Sequence) -> dict[str, torch.Tensor]:
        """Pad features into a batch: ``input_ids``, ``attention_mask`` and the task's label tensors."""
        raise NotImplementedError

    def loss(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Cross-entropy of the logits against the batch's gold labels."""
        raise NotImplementedError

    def soft_targets(
        self, teacher: Any, items: Sequence, config: Any = None, show_progress: bool = False
    ) -> list[torch.Tensor]:
        """The fine-tuned teacher's logits on ``items``, in a tokenizer-independent unit (words, characters);
        ``config`` gives the input settings that :meth:`soft_target_settings` names."""
        raise NotImplementedError(f"knowledge distillation is not implemented for {self.name}")

    def soft_target_settings(self, config: Any) -> str:
        """The settings of ``config`` that change the teacher's soft targets (part of their cache key)."""
        return ""

    def attach_soft_targets(self, features: Sequence, soft: Sequence[torch.Tensor]) -> None:
        """Put each item's soft targets on the student's token positions of its features."""
        raise NotImplementedError(f"knowledge distillation is not implemented for {self.name}")

    def distillation_loss(
        self, logits: torch.Tensor, batch: dict[str, torch.Tensor], temperature: float
    ) -> torch.Tensor:
        """T^2 * KL(teacher_T || student_T), averaged over the tokens that carry soft targets."""
        raise NotImplementedError(f"knowledge distillation is not implemented for {self.name}")

    def evaluate(self, model: Any, items: Sequence, config: Any, show_progress: bool = False) -> dict[str, Any]:
        """The task's metrics of ``model`` on ``items``."""
        raise NotImplementedError

    def headline(self, metrics: dict[str, Any]) -> dict[str, float]:
        """The numbers a results row shows (percent), keyed by :attr:`columns`."""
        raise NotImplementedError

    def feature_texts(self, items: Sequence, features: Sequence) -> list:
        """The text each feature encodes, for the teacher's hidden states (auxiliary alignment loss)."""
        raise NotImplementedError(f"the auxiliary alignment loss is not implemented for {self.name}")

    def format_details(self, metrics: dict[str, Any]) -> str:
        """What ``alad evaluate`` prints below the headline (per-type table, baselines)."""
        return ""

    def split_pool(self, train: list, evaluation: list, config: Any) -> tuple[list, list, dict[str, Any]]:
        """Re-split training and evaluation items where the task needs it (e.g. SQuAD by article)."""
        return train, evaluation, {}

    def training_subset(self, pool: Sequence, config: Any) -> tuple[list[int], dict[str, Any]]:
        """Indices of the seeded ``max_train`` subset of the pool (sorted), and what to record about it."""
        from alad.data.task_data import seeded_subset

        return seeded_subset(list(range(len(pool))), config.max_train, config.seed), {}

    def check_source(self, source: Any, split: str, role: str) -> None:
        """Refuse a data file of the wrong kind for what is done with it (QA: a SQuAD 1.1 file where the
        SQuAD 2.0 scoring is asked), before it is read into items."""

    def evaluation_sets(
        self, train: list, evaluation: list, loaded_eval: list, config: Any
    ) -> tuple[dict[str, list], dict[str, Any]]:
        """Further evaluation sets by name (see :meth:`evaluate_extra`) and what to record about every
        evaluation set; ``loaded_eval`` is the evaluation split as read, before :meth:`split_pool`."""
        return {}, {}

    def check_disjoint(self, train: list, eval_sets: dict[str, list]) -> dict[str, Any]:
        """Refuse evaluation items that are also in training (QA: by article); returns what to record."""
        return {}

    def check_inputs(self, model: Any, items: Sequence, config: Any) -> None:
        """Refuse items the model cannot read with these settings (QA: a question longer than a window
        allows), before any training."""

    def evaluate_extra(
        self, name: str, model: Any, items: Sequence, config: Any, show_progress: bool = False
    ) -> dict[str, Any]:
        """The metrics of ``model`` on the extra evaluation set ``name`` (see :meth:`evaluation_sets`)."""
        raise NotImplementedError(f"task {self.name} has no evaluation set {name!r}")

    def alignment_texts(self, items: Sequence) -> list:
        """The items as alignment inputs: what the task model reads, without labels."""
        raise NotImplementedError

    def strip_labels(self, items: Sequence) -> list:
        """The items with their gold labels removed, so code reading them cannot use them."""
        raise NotImplementedError


@torch.inference_mode()
def batched_logits(
    model: Any,
    task: Task,
    features: Sequence,
    batch_size: int = 32,
    show_progress: bool = False,
    forward: Any = None,
    description: str = "predicting",
):
    """Logits of every feature (unpadded, on the CPU), batched by length; ``forward(input_ids,
    attention_mask)`` instead of the model's own gives any other per-token output (e.g. states)."""
    model.eval()
    forward = forward or model
    out: list = [None] * len(features)
    lengths = [len(f.input_ids) for f in features]
    order = sorted(range(len(features)), key=lambda i: lengths[i])
    device = next((p.device for p in model.parameters()), torch.device("cpu"))  # none: an ONNX model
    for start in tqdm(range(0, len(order), batch_size), disable=not show_progress, desc=description):
        indices = order[start : start + batch_size]
        batch = task.collate(model, [features[i] for i in indices])
        logits = forward(batch["input_ids"].to(device), batch["attention_mask"].to(device)).float().cpu()
        for row, i in enumerate(indices):
            out[i] = logits[row, : lengths[i]]
    return out


def pad_teacher_signals(
    features: Sequence, attr: str, name: str, mask_name: str, width: int, per_value: bool = False
) -> dict:
    """Pad per-token teacher signals ([T, D] per feature, NaN = none) into ``name`` with a mask of real
    rows (``per_value``: of real values, [B, W, D]); ``align_target`` carries its own ``align_mask``."""
    present = [getattr(f, attr) for f in features if getattr(f, attr) is not None]
    if not present:
        return {}
    dim = present[0].shape[-1]
    values = torch.zeros(len(features), width, dim)
    counted = torch.zeros(len(features), width, *((dim,) if per_value else ()), dtype=torch.bool)
    for row, feature in enumerate(features):
        value = getattr(feature, attr)
        if value is None:
            continue
        n = value.shape[0]
        if attr == "align_target":
            values[row, :n] = value.float()
            counted[row, :n] = feature.align_mask
        else:
            valid = ~torch.isnan(value)
            values[row, :n] = torch.nan_to_num(value.float())
            counted[row, :n] = valid if per_value else valid.all(dim=-1)
    return {name: values, mask_name: counted}
