"""Alignment adapter types: a small network from student token states to a teacher's token states.

``AlignmentAdapter(config)`` builds the type named by ``config.adapter_type``;
``AlignmentAdapter.from_pretrained(folder)`` loads whichever type was saved there.

- ``"mlp"`` (:class:`WindowMLPAdapter`): the paper's adapter, an MLP over a window of K student states;
- ``"attention"`` (:class:`WindowAttentionAdapter`): the same MLP followed by one light masked
  self-attention block over the whole sequence, starting equal to its MLP.

A new type is one module defining an :class:`AlignmentAdapter` subclass decorated with
``@register_adapter("name")``, imported below so that it registers.
"""

from alad.adapters.base import (
    ADAPTER_KIND,
    ADAPTER_TYPES,
    CONFIG_FILE,
    WEIGHTS_FILE,
    AdapterConfig,
    AlignmentAdapter,
    get_adapter_class,
    register_adapter,
    window_features,
)
from alad.adapters.window_attention import WindowAttentionAdapter
from alad.adapters.window_mlp import WindowMLPAdapter

__all__ = [
    "ADAPTER_KIND",
    "ADAPTER_TYPES",
    "CONFIG_FILE",
    "WEIGHTS_FILE",
    "AdapterConfig",
    "AlignmentAdapter",
    "WindowAttentionAdapter",
    "WindowMLPAdapter",
    "get_adapter_class",
    "register_adapter",
    "window_features",
]
