"""The paper's Alignment Adapter (type ``"mlp"``): a small MLP from a window of K student token states
to the teacher's state of the centre token.

The adapter reads the K student states centred on each token (zero-padded at the sequence edges)
and predicts that token's teacher embedding, whose width may differ from the student's. Unlike the
published scripts, padding positions are zeroed before the window is formed, so a batch's padding
never leaks into a real token's window: the output for a sequence is the same whether it is run
alone or padded inside a batch.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from alad.adapters.base import ACTIVATIONS, AdapterConfig, AlignmentAdapter, register_adapter, window_features


def window_mlp(config: AdapterConfig) -> nn.Sequential:
    """Linear(K*d_s -> hidden), activation, dropout, Linear(hidden -> d_t): state-dict keys ``0.*`` and ``3.*``."""
    return nn.Sequential(
        nn.Linear(config.window * config.student_dim, config.hidden_size),
        ACTIVATIONS[config.activation](),
        nn.Dropout(config.dropout),
        nn.Linear(config.hidden_size, config.teacher_dim),
    )


@register_adapter("mlp")
class WindowMLPAdapter(AlignmentAdapter):
    """Each token's teacher state from the concatenated states of its K-token window."""

    def __init__(self, config: AdapterConfig) -> None:
        super().__init__(config)
        self.net = window_mlp(config)

    def predict(self, student_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # self.net's layers called as functions: the same computation as self.net(...) without four
        # module calls, which at batch 1 cost about a sixth of this small adapter's time
        first, activation, dropout, second = self.net
        hidden = F.linear(window_features(student_states, attention_mask, self.config.window), first.weight, first.bias)
        hidden = F.dropout(activation(hidden), dropout.p, self.training)
        return F.linear(hidden, second.weight, second.bias)
