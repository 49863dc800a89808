"""What every alignment adapter type shares: its config, the type registry, window features, and the
base class that checks inputs, zeroes padding and saves and loads any type.

An adapter type is a subclass of :class:`AlignmentAdapter` registered under a name with
:func:`register_adapter`; it defines its layers (``__init__``) and its forward on checked inputs
(``predict``). ``AlignmentAdapter(config)`` builds the type named by ``config.adapter_type``, and
``AlignmentAdapter.from_pretrained(folder)`` loads whichever type was saved there. A header written
before adapter types existed has no ``adapter_type`` and loads as ``"mlp"``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn
from torch.nn import functional as F

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

ADAPTER_KIND = "alignment_adapter"
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter.safetensors"

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "tanh": nn.Tanh, "silu": nn.SiLU}

_REGISTRY: dict[str, type[AlignmentAdapter]] = {}
ADAPTER_TYPES = _REGISTRY.keys()
"""Names of the registered adapter types (a live view of the registry: ``sorted(ADAPTER_TYPES)``)."""


DEFAULT_HIDDEN_SIZE = 128
"""The default adapter width: on NER it keeps 93-94% of the paper's 1280's gain over the student for a
quarter of its latency (``benchmarks/results/adapter_sizes-*``)."""


@dataclass
class AdapterConfig:
    """Shape of an alignment adapter. Fields marked with ``adapter_types`` in their metadata are read
    only by those types and must keep their default for any other type."""

    student_dim: int = field(metadata={"help": "hidden size of the student encoder's token states"})
    teacher_dim: int = field(metadata={"help": "hidden size of the teacher encoder's token states"})
    window: int = field(default=3, metadata={"help": "odd number K of student tokens read per prediction"})
    hidden_size: int = field(
        default=DEFAULT_HIDDEN_SIZE, metadata={"help": "width of the MLP's hidden layer (the paper's: 1280)"}
    )
    activation: str = field(default="gelu", metadata={"help": f"one of {sorted(ACTIVATIONS)}"})
    dropout: float = field(default=0.1, metadata={"help": "dropout after the hidden activation (and in attention)"})
    adapter_type: str = field(
        default="mlp",
        metadata={
            "help": "mlp: the window MLP; attention: the window MLP followed by one residual self-attention block "
            "over the whole sequence (padding masked)"
        },
    )
    attention_dim: int = field(
        default=128,
        metadata={
            "help": "width of the attention block's queries, keys and values (divisible by attention_heads)",
            "adapter_types": ("attention",),
        },
    )
    attention_heads: int = field(
        default=4, metadata={"help": "heads of the attention block", "adapter_types": ("attention",)}
    )
    version: int = field(default=FORMAT_VERSION, metadata={"help": "format version of the saved adapter"})

    def __post_init__(self) -> None:
        for name in ("student_dim", "teacher_dim", "hidden_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"AdapterConfig.{name} must be a positive integer, got {value!r}")
        if not isinstance(self.window, int) or self.window < 1 or self.window % 2 == 0:
            raise ValueError(
                f"window must be an odd integer >= 1 (1, 3, 5, ...) so it centres on the token; got {self.window!r}"
            )
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation {self.activation!r} is not one of {sorted(ACTIVATIONS)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        check_type_options(self.adapter_type, {name: getattr(self, name) for name in type_option_defaults()})

    def describe_type(self) -> dict[str, Any]:
        """The type and the options it reads, as summaries record them: ``{"adapter_type": "mlp"}`` or
        ``{"adapter_type": "attention", "attention_dim": 128, "attention_heads": 4}``."""
        options = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if self.adapter_type in f.metadata.get("adapter_types", ())
        }
        return {"adapter_type": self.adapter_type, **options}


def type_option_defaults() -> dict[str, Any]:
    """``{field: default}`` of the config fields that only some adapter types read."""
    return {f.name: f.default for f in dataclasses.fields(AdapterConfig) if f.metadata.get("adapter_types") is not None}


def check_type_options(adapter_type: Any, options: dict[str, Any]) -> None:
    """Refuse an unknown ``adapter_type``, and type options that are not positive integers, that the type
    does not read (set away from their default) or that the type itself refuses (``check_options``)."""
    adapter_class = get_adapter_class(adapter_type)
    options = {**type_option_defaults(), **options}
    used_by = {f.name: f.metadata["adapter_types"] for f in dataclasses.fields(AdapterConfig) if f.name in options}
    defaults = type_option_defaults()
    for name, value in options.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if adapter_type not in used_by[name] and value != defaults[name]:
            readers = " or ".join(repr(t) for t in used_by[name])
            raise ValueError(
                f"{name}={value!r} is only read by adapter_type {readers}; leave it at its default "
                f"{defaults[name]!r} for adapter_type {adapter_type!r}"
            )
    adapter_class.check_options(options)


_T = TypeVar("_T", bound="AlignmentAdapter")


def register_adapter(name: str) -> Callable[[type[_T]], type[_T]]:
    """Class decorator: make an :class:`AlignmentAdapter` subclass the adapter type ``name``."""

    def register(cls: type[_T]) -> type[_T]:
        if not (isinstance(cls, type) and issubclass(cls, AlignmentAdapter)) or cls is AlignmentAdapter:
            raise TypeError(f"register_adapter({name!r}) decorates a subclass of AlignmentAdapter, not {cls!r}")
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"adapter type {name!r} is already registered by {_REGISTRY[name].__qualname__}")
        cls.adapter_type = name
        _REGISTRY[name] = cls
        return cls

    return register


def get_adapter_class(name: Any) -> type[AlignmentAdapter]:
    """The class registered as adapter type ``name``; an unknown name fails listing the known ones."""
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"adapter_type {name!r} is not one of {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def window_features(states: torch.Tensor, attention_mask: torch.Tensor, window: int) -> torch.Tensor:
    """Concatenate each token's K-neighbourhood: [B, T, d] -> [B, T, K*d], padding read as zeros."""
    states = states * attention_mask.unsqueeze(-1).to(states.dtype)
    if window == 1:
        return states
    radius = window // 2
    batch, length, dim = states.shape
    padded = F.pad(states, (0, 0, radius, radius))
    # unfold gives [B, T, d, K]; move K before d so features are ordered left neighbour first.
    return padded.unfold(1, window, 1).transpose(2, 3).reshape(batch, length, window * dim)


class AlignmentAdapter(nn.Module):
    """Maps student token states [B, T, d_s] to predicted teacher token states [B, T, d_t].

    ``AlignmentAdapter(config)`` builds the registered type of ``config.adapter_type``; every type
    inherits the input checks, the zeroed output at padding, saving and loading from here.
    """

    adapter_type: ClassVar[str | None] = None
    """The registered name of this type (set by :func:`register_adapter`)."""

    def __new__(cls, config: AdapterConfig | None = None, *args: Any, **kwargs: Any) -> AlignmentAdapter:
        if cls is AlignmentAdapter:
            if not isinstance(config, AdapterConfig):
                raise TypeError(f"AlignmentAdapter(config) takes an AdapterConfig, got {config!r}")
            cls = get_adapter_class(config.adapter_type)
        return super().__new__(cls)  # copy and pickle call __new__(SubClass) without a config

    def __init__(self, config: AdapterConfig) -> None:
        super().__init__()
        if config.adapter_type != self.adapter_type:
            raise ValueError(
                f"{type(self).__name__} is the {self.adapter_type!r} adapter type, but its config has "
                f"adapter_type={config.adapter_type!r}; build it with AlignmentAdapter(config)"
            )
        self.config = config
        self.metadata: dict[str, Any] = {}

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        """Refuse type options (see :func:`check_type_options`) this type cannot use; none by default."""

    def predict(self, student_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The type's forward on checked inputs ([B, T, d_s] states, [B, T] mask): [B, T, d_t]."""
        raise NotImplementedError(f"{type(self).__name__} defines no predict()")

    def forward(self, student_states: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if student_states.dim() != 3:
            raise ValueError(f"student_states must be [batch, tokens, dim], got shape {tuple(student_states.shape)}")
        if student_states.shape[-1] != self.config.student_dim:
            raise ValueError(
                f"student states have width {student_states.shape[-1]} but this adapter expects "
                f"student_dim={self.config.student_dim}: it was aligned for another student"
            )
        if attention_mask is None:
            attention_mask = torch.ones(student_states.shape[:2], device=student_states.device)
        return self.predict(student_states, attention_mask) * attention_mask.unsqueeze(-1).to(student_states.dtype)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def save_pretrained(self, directory: str | os.PathLike, metadata: dict[str, Any] | None = None) -> Path:
        """Write ``adapter_config.json`` and ``adapter.safetensors``; metadata records provenance."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_tensors_atomic(directory / WEIGHTS_FILE, self.state_dict(), metadata={"kind": ADAPTER_KIND})
        header = {
            "kind": ADAPTER_KIND,
            "format_version": WEIGHTS_FORMAT_VERSION,
            "config": config_to_dict(self.config),
            "metadata": metadata or {},
            WEIGHTS_SHA256: weights_checksums(directory, [WEIGHTS_FILE]),
        }
        write_json_atomic(directory / CONFIG_FILE, header)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, map_location: str = "cpu") -> AlignmentAdapter:
        """Load a saved adapter of any registered type (of this type, when called on a subclass),
        refusing files of another kind, version or shape."""
        directory = Path(directory)
        if not directory.is_dir():
            raise ArtefactError(f"adapter folder not found: {directory}")
        header = read_json(directory / CONFIG_FILE, "adapter config")
        check_header(header, ADAPTER_KIND, directory, versions=(FORMAT_VERSION, WEIGHTS_FORMAT_VERSION))
        try:
            config = config_from_dict(AdapterConfig, header.get("config", {}), f"{directory / CONFIG_FILE}")
        except ArtefactError:
            raise
        except (TypeError, ValueError) as err:
            raise ArtefactError(f"{directory / CONFIG_FILE} holds an invalid adapter config: {err}") from err
        adapter_class = get_adapter_class(config.adapter_type)
        if cls is not AlignmentAdapter and adapter_class is not cls:
            raise ArtefactError(
                f"{directory} holds an adapter of type {config.adapter_type!r}, not {cls.adapter_type!r}; load it with "
                "AlignmentAdapter.from_pretrained"
            )
        verify_weights(directory, header, [WEIGHTS_FILE], CONFIG_FILE, "adapter weights")
        adapter = adapter_class(config)
        adapter.metadata = header.get("metadata", {})
        state = load_tensors(directory / WEIGHTS_FILE, "adapter weights")
        expected = {k: tuple(v.shape) for k, v in adapter.state_dict().items()}
        found = {k: tuple(v.shape) for k, v in state.items()}
        if expected != found:
            raise ArtefactError(
                f"{directory / WEIGHTS_FILE} does not match its config (adapter_type={config.adapter_type!r}, "
                f"window={config.window}, student_dim={config.student_dim}, teacher_dim={config.teacher_dim}): "
                f"expected tensors {expected}, found {found}"
            )
        adapter.load_state_dict(state)
        return adapter.to(map_location)
