"""Every setting checked before any work: types, finite numbers, ranges, names and combinations.

A run's config comes from flags, a YAML/JSON file or Python; a wrong value (``--lr inf``,
``epochs: "ten"``, ``windows: 3``, an empty ``student:``) must stop the command with one line that
names the option and the fix, before a model is loaded or a folder written, not train for an hour
and save garbage. :func:`validate_config` is called by the config dataclasses themselves, so the
Python API gets the same checks as the CLI. Checks that need a model (the layer to read) or data
(whether a corpus gives any usable token) live here too and run as soon as that is loaded.
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from pathlib import Path
from typing import Any

import torch

from alad.data.task_data import TASK_FORMATS as _DATA_FOR_TASK  # the data formats each task reads


class NonFiniteLossError(ValueError):
    """Training diverged: the loss (or gradient) became NaN or infinite."""


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclasses.dataclass(frozen=True)
class Range:
    """Allowed values of a number: ``low``/``high`` bounds, each inclusive unless ``*_open``."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    example: str = ""

    def holds(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.high_open else value > self.high))

    def text(self) -> str:
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        if self.high is not None:
            parts.append(f"{'<' if self.high_open else '<='} {self.high:g}")
        return " and ".join(parts) if parts else "finite"


# One rule per option name; AlignConfig and FinetuneConfig share the names they have in common.
RANGES: dict[str, Range] = {
    "epochs": Range(1, example="3"),
    "batch_size": Range(1, example="16"),
    "batch_tokens": Range(1, example="1024"),
    "buffer_tokens": Range(1, example="300000"),
    "hidden_size": Range(1, example="128"),
    "attention_dim": Range(1, example="128"),
    "attention_heads": Range(1, example="4"),
    "max_texts": Range(2, example="2000"),
    "max_train": Range(1, example="2000"),
    "max_eval": Range(1, example="1000"),
    "lr": Range(0, 10, low_open=True, example="0.001"),
    "lr_head": Range(0, 10, low_open=True, example="0.001"),
    "lr_encoder": Range(0, 10, low_open=True, example="0.0001"),
    "lr_adapter": Range(0, 10, low_open=True, example="0.001"),
    "weight_decay": Range(0, example="0.01"),
    "warmup_ratio": Range(0, 1, example="0.1"),
    "grad_clip": Range(0, example="1.0"),
    "dropout": Range(0, 1, high_open=True, example="0.1"),
    "val_fraction": Range(0, 1, low_open=True, high_open=True, example="0.1"),
    "seed": Range(0, example="0"),
    "checkpoint_every": Range(0, example="50"),
    "max_length": Range(8, example="384"),
    "doc_stride": Range(1, example="128"),
    "max_answer_length": Range(1, example="30"),
    "squad_dev_articles_to_train": Range(0, example="0"),
    "squad_negatives": Range(0, example="0.1"),
    "min_steps": Range(0, example="150"),
    "frozen_cache_mb": Range(0, example="4096"),
    "kd_weight": Range(0, 1, example="0.5"),
    "kd_temperature": Range(0, low_open=True, example="2"),
    "kd_max_texts": Range(1, example="4000"),
    "align_weight": Range(0, example="1.0"),
    "patience": Range(1, example="2"),
    "min_delta": Range(0, example="0.0001"),
}

CHOICES: dict[str, tuple[str, ...]] = {
    "activation": ("gelu", "relu", "tanh", "silu"),
    "corpus_format": ("auto", "text", "conll2003", "conllu", "squad", "squad-pairs"),
    "tag": ("upos", "xpos"),
    "schedule": ("linear", "plateau"),
    "precision": ("fp32", "bf16"),
    "squad_negative_kind": ("other_paragraph", "answer_removed"),
}
_MODEL_FIELDS = ("student", "teacher")
_MODEL_HINT = "a packaged name (all-MiniLM-L6-v2, all-mpnet-base-v2), a model folder or a hub id"


def _check_type(name: str, value: Any, annotation: Any) -> Any:
    """The value, converted where lossless (int -> float, list -> tuple); wrong types fail with the fix."""
    args = typing.get_args(annotation)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), annotation) if args else annotation
    flag = _flag(name)
    if value is None:
        if optional:
            return None
        if base is str and name in _MODEL_FIELDS:
            raise ValueError(f"{flag} is empty; name the model: {_MODEL_HINT}")
        raise ValueError(f"{flag} is empty (None); give it a value")
    if typing.get_origin(base) is tuple:
        if name == "windows" and not isinstance(value, list | tuple):
            raise ValueError(
                f"{flag} must be a list of odd window sizes such as [1, 3, 5] (on the command line 1,3,5), "
                f"got {value!r}"
            )
        integers = isinstance(value, list | tuple) and all(type(v) is int for v in value)
        if not integers:
            raise ValueError(f"{flag} must be a list of integers, got {value!r}")
        return tuple(value)
    if base is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{flag} must be true or false, got {value!r}")
        return value
    if base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{flag} must be an integer, got {value!r} ({type(value).__name__})")
        return value
    if base is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{flag} must be a number, got {value!r} ({type(value).__name__})")
        return float(value)
    if base is str:
        if isinstance(value, os.PathLike):  # a Path from Python is a path name like any other
            value = os.fspath(value)
        if not isinstance(value, str):
            raise ValueError(f"{flag} must be a text, got {value!r} ({type(value).__name__})")
        if not value.strip():
            hint = "give it a value" + (" or leave it out" if optional else "")
            hint = _MODEL_HINT if name in _MODEL_FIELDS else hint
            raise ValueError(f"{flag} is empty; {hint}")
        return value
    return value


def validate_config(config: Any) -> None:
    """Check (and normalise in place) every field of a config dataclass: type, finiteness, range, choice."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value = _check_type(f.name, getattr(config, f.name), hints[f.name])
        object.__setattr__(config, f.name, value)
        if value is None:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            rule = RANGES.get(f.name)
            example = f" (e.g. {_flag(f.name)} {rule.example})" if rule and rule.example else ""
            raise ValueError(f"{_flag(f.name)} must be a finite number, got {value}{example}")
        rule = RANGES.get(f.name)
        if rule is not None and isinstance(value, int | float) and not rule.holds(value):
            example = f", e.g. {_flag(f.name)} {rule.example}" if rule.example else ""
            raise ValueError(f"{_flag(f.name)} must be {rule.text()}, got {value}{example}")
        if f.name in CHOICES and value not in CHOICES[f.name]:
            raise ValueError(f"{_flag(f.name)} must be one of {', '.join(CHOICES[f.name])}, got {value!r}")


_SPLITS = ("train", "dev", "test")


def validate_finetune_config(config: Any) -> None:
    """The fine-tuning checks beyond single fields: data format against task, splits, QA windows."""
    validate_config(config)
    fmt = config.data.partition(":")[0].strip().lower()
    if fmt in ("conll2003", "conllu", "squad") and fmt not in _DATA_FOR_TASK.get(config.task, (fmt,)):
        wanted = " or ".join(f"{f}:PATH" for f in _DATA_FOR_TASK[config.task])
        raise ValueError(f"--task {config.task} cannot train on {fmt} data ({config.data}); pass --data {wanted}")
    if fmt != "hf":
        for name in ("train_split", "eval_split"):
            if getattr(config, name) not in _SPLITS:
                raise ValueError(f"{_flag(name)} must be train, dev or test, got {getattr(config, name)!r}")
    if config.task == "qa" and config.doc_stride >= config.max_length:
        raise ValueError(f"--doc-stride ({config.doc_stride}) must be smaller than --max-length ({config.max_length})")


def check_layer(encoder: Any, layer: int, flag: str) -> None:
    """Refuse a hidden layer the model does not have (0 = embeddings, -1 = last), naming the valid range."""
    layers = int(getattr(encoder.model.config, "num_hidden_layers", 0) or 0)
    if layers and not -(layers + 1) <= layer <= layers:
        raise ValueError(
            f"{flag} {layer} is out of range: {encoder.name} has {layers} layers; use 0..{layers} "
            f"(0: embeddings) or -1 for the last"
        )


def check_writable(path: str | os.PathLike, flag: str) -> None:
    """Refuse a folder alad would write into but cannot (read-only), before any work."""
    from alad.io.run_folder import _check_writable

    _check_writable(Path(path), flag)


def check_align_inputs(out: Path, config: Any) -> None:
    """What ``align`` can check before reading data or loading a model: its run folder, the cache folder
    and (unless the run is finished and only its summary is returned) ``--init``."""
    from alad.io.run_folder import check_run_folder
    from alad.models.encoders import cache_root

    check_run_folder(out, "alignment_run")
    check_writable(Path(config.cache_dir) if config.cache_dir else cache_root() / "embeddings", "--cache-dir")
    finished = (Path(out) / "summary.json").is_file()
    if config.init is not None and not finished and not Path(config.init).is_dir():
        raise FileNotFoundError(
            f"--init {config.init} is not a folder; pass an adapter folder or an alignment run folder"
        )


def check_finetune_inputs(out: Path, config: Any) -> None:
    """What ``finetune`` can check before loading data or models: its run folder, --adapter, --teacher."""
    from alad.io.run_folder import check_run_folder

    check_run_folder(out, "finetune_run")
    if (Path(out) / "metrics.json").is_file():
        return  # a finished run is only read back
    if config.adapter and not Path(config.adapter).is_dir():
        raise FileNotFoundError(f"adapter folder not found: --adapter {config.adapter}; pass an adapter folder (w<K>)")
    if config.init_from and not (Path(config.init_from) / "model").is_dir():
        raise FileNotFoundError(
            f"--init-from {config.init_from} is not a finished fine-tuning run (no model/ folder); pass the folder "
            "of a finished alad finetune run"
        )
    if config.teacher and not (Path(config.teacher) / "model").is_dir():
        raise FileNotFoundError(
            f"--teacher {config.teacher} is not a finished fine-tuning run (no model/ folder); run "
            "alad finetune-teacher first"
        )


def check_finite_loss(loss: torch.Tensor) -> None:
    """Refuse a NaN/inf loss before it reaches the weights."""
    if not bool(torch.isfinite(loss.detach()).all()):
        raise NonFiniteLossError(f"the loss became {loss.detach().float().mean().item()}")


def check_finite_parameters(parameters: Any, what: str = "the model") -> None:
    """Refuse to save weights that contain NaN or inf."""
    for param in parameters:
        if not bool(torch.isfinite(param.detach()).all()):
            raise NonFiniteLossError(
                f"{what} has NaN/inf weights after training; nothing was saved. Lower the learning rate "
                "(--lr, --lr-head, --lr-adapter, --lr-encoder) or set --grad-clip"
            )


def check_usable_tokens(train_tokens: int, val_tokens: int, num_texts: int) -> None:
    """Refuse a corpus whose texts give no token both models can pair (e.g. only zero-width characters)."""
    if train_tokens == 0 or val_tokens == 0:
        raise ValueError(
            f"the corpus gives no usable token ({num_texts} texts; {train_tokens} training and {val_tokens} held-out "
            "tokens that both models can pair): are the texts only zero-width, combining or control characters? "
            "Pass a corpus of real text"
        )
