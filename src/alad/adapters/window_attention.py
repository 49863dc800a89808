"""The window-attention adapter (type ``"attention"``): the window MLP, then one light residual
self-attention block over the whole sequence.

A window of K tokens cannot read across the sequence (a question's words from the context, say).
Here the MLP's prediction ``y`` is refined by attention over every real token of the sequence::

    y = mlp(windows)
    y = y + W_o · MHA(LN(y))

Queries, keys and values are projected from ``teacher_dim`` down to ``attention_dim`` (split into
``attention_heads`` heads), so the block is small. Padding is masked as keys (an additive mask),
so the output for a sequence is the same alone as padded inside a batch, and the output is zeroed at
padding like every adapter's. ``W_o`` (weight and bias) starts at zero: a fresh attention adapter
computes exactly its MLP, and attention is learnt on top. Dropout is the config's, on the attention
weights and on the block's output.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from alad.adapters.base import AdapterConfig, AlignmentAdapter, register_adapter, window_features
from alad.adapters.window_mlp import window_mlp


@register_adapter("attention")
class WindowAttentionAdapter(AlignmentAdapter):
    """The window MLP (``net.*``, as the ``"mlp"`` type) followed by one masked self-attention block."""

    def __init__(self, config: AdapterConfig) -> None:
        super().__init__(config)
        self.net = window_mlp(config)  # built first: the same seed gives the same MLP as an "mlp" adapter
        width, heads = config.teacher_dim, config.attention_heads
        self.attention_norm = nn.LayerNorm(width)
        self.attention_qkv = nn.Linear(width, 3 * config.attention_dim)
        self.attention_out = nn.Linear(config.attention_dim, width)
        nn.init.zeros_(self.attention_out.weight)
        nn.init.zeros_(self.attention_out.bias)
        self.attention_dropout = nn.Dropout(config.dropout)
        self.heads = heads

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        dim, heads = options["attention_dim"], options["attention_heads"]
        if dim % heads:
            raise ValueError(
                f"attention_dim ({dim}) must be divisible by attention_heads ({heads}): each head reads "
                f"attention_dim / attention_heads dimensions"
            )

    def predict(self, student_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        y = self.net(window_features(student_states, attention_mask, self.config.window))
        batch, length, _ = y.shape
        qkv = self.attention_qkv(self.attention_norm(y))
        # [B, T, 3 * A] -> 3 x [B, heads, T, A / heads]
        query, key, value = qkv.view(batch, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        # padded keys get the most negative score (finite, so an all-padding row gives no NaN)
        padding = 1.0 - attention_mask.to(y.dtype)
        bias = (padding * torch.finfo(y.dtype).min)[:, None, None, :]
        mixed = F.scaled_dot_product_attention(
            query, key, value, attn_mask=bias, dropout_p=self.config.dropout if self.training else 0.0
        )
        mixed = mixed.transpose(1, 2).reshape(batch, length, -1)
        return y + self.attention_dropout(self.attention_out(mixed))
