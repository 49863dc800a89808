"""The Alignment Adapter: a small MLP from a window of student token states to a teacher state.

The adapter reads the K student states centred on each token (zero-padded at the sequence edges)
and predicts that token's teacher embedding, whose width may differ from the student's. Unlike the
published scripts, padding positions are zeroed before the window is formed, so a batch's padding
never leaks into a real token's window: the output for a sequence is the same whether it is run
alone or padded inside a batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from alad.serialization import (
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

_ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "tanh": nn.Tanh, "silu": nn.SiLU}


@dataclass
class AdapterConfig:
    """Shape of an alignment adapter."""

    student_dim: int = field(metadata={"help": "hidden size of the student encoder's token states"})
    teacher_dim: int = field(metadata={"help": "hidden size of the teacher encoder's token states"})
    window: int = field(default=3, metadata={"help": "odd number K of student tokens read per prediction"})
    hidden_size: int = field(default=1280, metadata={"help": "width of the MLP's hidden layer"})
    activation: str = field(default="gelu", metadata={"help": f"one of {sorted(_ACTIVATIONS)}"})
    dropout: float = field(default=0.1, metadata={"help": "dropout after the hidden activation"})
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
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"activation {self.activation!r} is not one of {sorted(_ACTIVATIONS)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


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
    """Maps student token states [B, T, d_s] to predicted teacher token states [B, T, d_t]."""

    def __init__(self, config: AdapterConfig) -> None:
        super().__init__()
        self.config = config
        self.metadata: dict[str, Any] = {}
        self.net = nn.Sequential(
            nn.Linear(config.window * config.student_dim, config.hidden_size),
            _ACTIVATIONS[config.activation](),
            nn.Dropout(config.dropout),
            nn.Linear(config.hidden_size, config.teacher_dim),
        )

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
        features = window_features(student_states, attention_mask, self.config.window)
        return self.net(features) * attention_mask.unsqueeze(-1).to(student_states.dtype)

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
        """Load a saved adapter, refusing files of another kind, version or shape."""
        directory = Path(directory)
        if not directory.is_dir():
            raise ArtefactError(f"adapter folder not found: {directory}")
        header = read_json(directory / CONFIG_FILE, "adapter config")
        check_header(header, ADAPTER_KIND, directory, versions=(FORMAT_VERSION, WEIGHTS_FORMAT_VERSION))
        config = config_from_dict(AdapterConfig, header.get("config", {}), f"{directory / CONFIG_FILE}")
        verify_weights(directory, header, [WEIGHTS_FILE], CONFIG_FILE, "adapter weights")
        adapter = cls(config)
        adapter.metadata = header.get("metadata", {})
        state = load_tensors(directory / WEIGHTS_FILE, "adapter weights")
        expected = {k: tuple(v.shape) for k, v in adapter.state_dict().items()}
        found = {k: tuple(v.shape) for k, v in state.items()}
        if expected != found:
            raise ArtefactError(
                f"{directory / WEIGHTS_FILE} does not match its config (window={config.window}, "
                f"student_dim={config.student_dim}, teacher_dim={config.teacher_dim}): expected tensors "
                f"{expected}, found {found}"
            )
        adapter.load_state_dict(state)
        return adapter.to(map_location)
