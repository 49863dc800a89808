"""Student (+ alignment adapter) + task head, one class per task family, and the training modes.

Modes decide what trains (recipe stage 3):

- ``frozen``: the student is frozen; adapter and head train (plug-and-play deployment);
- ``joint``: student, adapter and head train;
- ``head-only``: student and adapter are frozen; only the head trains;
- ``teacher-head``: nothing trains; the task-fine-tuned teacher's own head reads the adapter output.

Without an adapter the same class is the plain baseline (``frozen`` = frozen student + head,
``joint`` = full fine-tuning) and the fine-tuned teacher itself.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from alad.adapters import AlignmentAdapter
from alad.compression import is_quantized, joint_mode_error, load_model, save_encoder
from alad.io.serialization import (
    FORMAT_VERSION,
    WEIGHTS_FORMAT_VERSION,
    WEIGHTS_SHA256,
    ArtefactError,
    check_header,
    config_from_dict,
    config_to_dict,
    load_tensors,
    read_json,
    save_tensors_atomic,
    verify_weights,
    weights_checksums,
    write_json_atomic,
)
from alad.models.encoders import load_encoder, max_input_tokens
from alad.tasks import TASKS, get_task

TASK_MODEL_KIND = "alad_task_model"
TASK_CONFIG = "task_config.json"
HEAD_WEIGHTS = "head.safetensors"
MODES = ("frozen", "joint", "head-only", "teacher-head")
FROZEN_ENCODER_MODES = ("frozen", "head-only", "teacher-head")
"""Modes whose student encoder does not train (and so runs without dropout)."""


@dataclass
class TaskModelConfig:
    """What a task model is: its task, labels, how it was built and trained."""

    task: str = field(metadata={"help": "pos, ner or qa"})
    labels: tuple[str, ...] = field(default=(), metadata={"help": "tag set for token tasks; empty for qa"})
    mode: str = field(default="joint", metadata={"help": f"one of {MODES}"})
    head_dropout: float = field(default=0.1, metadata={"help": "dropout before the head"})
    student_layer: int = field(default=-1, metadata={"help": "encoder layer the adapter/head reads"})
    source_encoder: str = field(default="", metadata={"help": "where the encoder came from (provenance)"})
    version: int = field(default=FORMAT_VERSION, metadata={"help": "format version"})

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {sorted(TASKS)}, got {self.task!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if get_task(self.task).has_labels and not self.labels:
            raise ValueError(f"a {self.task} model needs its label set")
        self.labels = tuple(self.labels)


class AladTaskModel(nn.Module):
    """Encoder, optional alignment adapter, and a linear head on every token."""

    def __init__(
        self,
        config: TaskModelConfig,
        encoder: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        adapter: AlignmentAdapter | None = None,
        head: nn.Linear | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.adapter = adapter
        width = adapter.config.teacher_dim if adapter is not None else int(encoder.config.hidden_size)
        if adapter is not None and adapter.config.student_dim != encoder.config.hidden_size:
            raise ValueError(
                f"the adapter expects student states of width {adapter.config.student_dim} but this encoder has "
                f"{encoder.config.hidden_size}: it was aligned for another student"
            )
        outputs = get_task(config.task).head_outputs(config.labels)
        if head is not None and (head.in_features, head.out_features) != (width, outputs):
            raise ValueError(
                f"the head maps {head.in_features} -> {head.out_features} but this model needs {width} -> {outputs} "
                "(teacher width and label count must match)"
            )
        self.dropout = nn.Dropout(config.head_dropout)
        self.head = head if head is not None else nn.Linear(width, outputs)
        self.metadata: dict[str, Any] = {}

    @property
    def max_length(self) -> int:
        return max_input_tokens(self.encoder, self.tokenizer)

    def token_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The states the head reads: adapter output (teacher space) or the encoder's own."""
        states = self.encoder_states(input_ids, attention_mask)
        if self.adapter is not None:
            states = self.adapter(states, attention_mask)
        return states

    def encoder_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The student's states at ``student_layer``: what the adapter (or, without one, the head) reads."""
        out = self.encoder(
            input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=self.config.student_layer != -1
        )
        layer = self.config.student_layer
        return out.last_hidden_state if layer == -1 else out.hidden_states[layer]

    def frozen_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The output of the part the mode freezes: the encoder's states in ``frozen`` mode, the adapter's
        in ``head-only`` (where the adapter is frozen too). Fixed while training: computed once per item."""
        if self.config.mode == "head-only":
            return self.token_states(input_ids, attention_mask)
        return self.encoder_states(input_ids, attention_mask)

    def states_from_frozen(self, frozen: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """:meth:`token_states` from :meth:`frozen_states`' output: the trainable adapter on top, if any."""
        if self.config.mode == "frozen" and self.adapter is not None:
            return self.adapter(frozen, attention_mask)
        return frozen

    def train(self, mode: bool = True) -> AladTaskModel:
        """Training mode for the parts that train; a frozen encoder (and in ``head-only`` mode a frozen
        adapter) stays in eval mode, without dropout: it is a fixed feature extractor, as deployed."""
        super().train(mode)
        if mode and self.config.mode in FROZEN_ENCODER_MODES:
            self.encoder.eval()
            if self.adapter is not None and self.config.mode != "frozen":
                self.adapter.eval()
        return self

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits [B, T, num_labels] (token tasks) or [B, T, 2] start/end (qa)."""
        return self.head(self.dropout(self.token_states(input_ids, attention_mask)))

    def set_mode(self, mode: str) -> None:
        """Freeze and unfreeze parameters for a training mode (see module docstring)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode in ("head-only", "teacher-head") and self.adapter is None:
            raise ValueError(f"mode {mode!r} needs an alignment adapter (pass --adapter)")
        if mode == "joint" and is_quantized(self.encoder):
            raise ValueError(joint_mode_error(self.config.source_encoder or "this encoder"))
        self.config.mode = mode
        self.encoder.requires_grad_(mode == "joint")
        if self.adapter is not None:
            self.adapter.requires_grad_(mode in ("joint", "frozen"))
        self.head.requires_grad_(mode != "teacher-head")

    def trainable_parameter_names(self) -> list[str]:
        return [name for name, p in self.named_parameters() if p.requires_grad]

    def num_parameters(self) -> int:
        from alad.evaluation.latency import count_parameters

        return count_parameters(self)  # int8-quantised weights included

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Encoder folder, adapter folder, head weights and ``task_config.json``: fully self-contained."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_encoder(self.encoder, self.tokenizer, directory / "encoder")  # int8 / pruned students keep their record
        if self.adapter is not None:
            self.adapter.save_pretrained(directory / "adapter", metadata=getattr(self.adapter, "metadata", {}))
        save_tensors_atomic(directory / HEAD_WEIGHTS, self.head.state_dict())
        write_json_atomic(
            directory / TASK_CONFIG,
            {
                "kind": TASK_MODEL_KIND,
                "format_version": WEIGHTS_FORMAT_VERSION,
                "config": config_to_dict(self.config),
                "has_adapter": self.adapter is not None,
                "metadata": self.metadata,
                WEIGHTS_SHA256: weights_checksums(directory, _weights_files(directory)),
            },
        )
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> AladTaskModel:
        directory = Path(directory)
        if not directory.is_dir():
            raise ArtefactError(f"task model folder not found: {directory}")
        header = read_json(directory / TASK_CONFIG, "task model config")
        check_header(header, TASK_MODEL_KIND, directory, versions=(FORMAT_VERSION, WEIGHTS_FORMAT_VERSION))
        config = config_from_dict(TaskModelConfig, header.get("config", {}), str(directory / TASK_CONFIG))
        recorded = header.get(WEIGHTS_SHA256) if isinstance(header.get(WEIGHTS_SHA256), dict) else {}
        verify_weights(directory, header, sorted({*recorded, *_weights_files(directory), HEAD_WEIGHTS}), TASK_CONFIG)
        try:
            encoder = load_model(directory / "encoder", AutoConfig.from_pretrained(directory / "encoder"))
            tokenizer = AutoTokenizer.from_pretrained(directory / "encoder")
        except (OSError, ValueError, RuntimeError) as err:  # e.g. truncated weights of a pre-checksum folder
            raise ArtefactError(
                f"the encoder in {directory / 'encoder'} cannot be loaded ({str(err).splitlines()[0][:200]}); "
                "the folder is corrupt or incomplete: re-create it"
            ) from err
        adapter = AlignmentAdapter.from_pretrained(directory / "adapter") if header.get("has_adapter") else None
        head_state = load_tensors(directory / HEAD_WEIGHTS, "task head")
        weight = head_state.get("weight")
        if weight is None:
            raise ArtefactError(f"{directory / HEAD_WEIGHTS} holds no head weight; the file is not an alad head")
        head = nn.Linear(weight.shape[1], weight.shape[0])
        head.load_state_dict(head_state)
        model = cls(config, encoder, tokenizer, adapter=adapter, head=head)
        model.metadata = header.get("metadata", {})
        return model.eval()


def _weights_files(directory: Path) -> list[str]:
    """Every weights file a task model folder holds (encoder, adapter, head), relative to it."""
    found = [p for p in directory.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".bin")]
    return sorted(p.relative_to(directory).as_posix() for p in found)


def build_task_model(
    task: str,
    student: str | os.PathLike,
    labels: tuple[str, ...] = (),
    adapter: str | os.PathLike | AlignmentAdapter | None = None,
    mode: str = "joint",
    teacher_model: AladTaskModel | None = None,
    student_layer: int = -1,
    seed: int = 0,
    head_from_teacher: bool = False,
) -> AladTaskModel:
    """A fresh task model: student encoder, optional adapter, and a head, copied from the teacher in
    teacher-head mode or with ``head_from_teacher`` (an aligned adapter speaks the teacher's space)."""
    encoder = load_encoder(student)
    if mode == "joint" and is_quantized(encoder.model):
        raise ValueError(joint_mode_error(str(student)))
    if isinstance(adapter, str | os.PathLike):
        adapter = AlignmentAdapter.from_pretrained(adapter)
    head = None
    if mode == "teacher-head" or head_from_teacher:
        if teacher_model is None:
            raise ValueError("the teacher's head needs the task-fine-tuned teacher (pass --teacher)")
        if adapter is None:
            raise ValueError(
                f"mode {mode!r} needs an alignment adapter (pass --adapter)"
                if mode == "teacher-head"
                else "head_init 'teacher' needs an alignment adapter: the teacher's head reads the teacher's space"
            )
        if adapter.config.teacher_dim != teacher_model.head.in_features:
            raise ValueError(
                f"the adapter maps to {adapter.config.teacher_dim} dimensions but the teacher's head reads "
                f"{teacher_model.head.in_features}; align the adapter to this teacher"
            )
        if teacher_model.adapter is not None:
            raise ValueError("the teacher must be a plain fine-tuned encoder, not an adapted student")
        _check_same_task(teacher_model, task, labels, "the teacher")
        head = nn.Linear(teacher_model.head.in_features, teacher_model.head.out_features)
        head.load_state_dict(teacher_model.head.state_dict())
    torch.manual_seed(seed)
    model = AladTaskModel(
        TaskModelConfig(
            task=task, labels=tuple(labels), mode=mode, student_layer=student_layer, source_encoder=str(student)
        ),
        encoder.model,
        encoder.tokenizer,
        adapter=adapter,
        head=head,
    )
    model.set_mode(mode)
    return model


def continued_task_model(directory: str | os.PathLike, task: str, labels: Sequence[str]) -> AladTaskModel:
    """A saved task model of a plain encoder, in joint mode, to be fine-tuned further (``init_from``)."""
    model = AladTaskModel.from_pretrained(directory)
    if model.adapter is not None:
        raise ValueError(f"init_from {directory} holds an adapted student; continue a plain fine-tuned encoder")
    _check_same_task(model, task, labels, f"init_from {directory}")
    model.set_mode("joint")
    return model


def _check_same_task(model: AladTaskModel, task: str, labels: Sequence[str], who: str) -> None:
    """Refuse a fine-tuned model whose task or labels differ from this run's."""
    if model.config.task != task or tuple(model.config.labels) != tuple(labels):
        raise ValueError(
            f"{who} was fine-tuned for {model.config.task} with labels {list(model.config.labels)[:10]}, "
            f"not for {task} with {list(labels)[:10]}"
        )
