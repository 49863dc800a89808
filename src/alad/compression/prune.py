"""``alad compress --method prune``: structured pruning of attention heads and feed-forward neurons.

Each layer keeps the same number of heads, ``max(1, round(H * (1 - fraction)))``, and of
feed-forward neurons, ``max(1, round(I * (1 - fraction)))``, chosen per layer by a data-free
weight-magnitude score (the L1-norm criterion of structured magnitude pruning):

- a head's importance is the L1 norm of its rows of the query, key and value projections plus its
  columns of the attention output projection;
- a feed-forward neuron's importance is the L1 norm of its row of the intermediate projection (with
  its bias) plus its column of the output projection.

The removed rows and columns are cut out of the weight matrices, so the layers are really smaller
(unlike unstructured masks). The record lists the kept head and neuron indices per layer; loading
builds the model from the unchanged ``config.json``, cuts every layer to the recorded shapes and
loads the weights strictly. BERT-layout encoders only (BERT, MiniLM, RoBERTa, XLM-R, ELECTRA).
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModel, PreTrainedModel

from alad.compression import WEIGHTS_FILE, CompressionMethod, mark_compressed, register_method
from alad.io.serialization import ArtefactError

logger = logging.getLogger(__name__)

SUPPORTED = ("bert", "roberta", "xlm-roberta", "camembert", "electra")
PARTS = ("heads", "ffn")
SCORE = "l1-magnitude"


def check_fraction(fraction: Any) -> float:
    """A pruning fraction strictly between 0 and 1."""
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not math.isfinite(fraction):
        raise ValueError(f"the pruning fraction must be a number strictly between 0 and 1, got {fraction!r}")
    if not 0 < fraction < 1:
        raise ValueError(
            f"the pruning fraction must be strictly between 0 and 1 (the share of heads and feed-forward "
            f"neurons removed), got {fraction}; e.g. --fraction 0.5"
        )
    return float(fraction)


def _layers(model: PreTrainedModel) -> nn.ModuleList:
    model_type = getattr(model.config, "model_type", "?")
    layers = getattr(getattr(model, "encoder", None), "layer", None)
    if model_type not in SUPPORTED or not isinstance(layers, nn.ModuleList):
        raise NotImplementedError(
            f"structured pruning supports BERT-layout encoders ({', '.join(SUPPORTED)}), not {model_type!r}"
        )
    return layers


def _head_size(model: PreTrainedModel) -> int:
    return int(model.config.hidden_size // model.config.num_attention_heads)


def head_importance(layer: nn.Module, head_size: int) -> torch.Tensor:
    """L1 norm per head of its query/key/value rows and attention-output columns."""
    attention = layer.attention.self
    score = sum(
        lin.weight.detach().abs().reshape(-1, head_size, lin.weight.shape[1]).sum(dim=(1, 2))
        for lin in (attention.query, attention.key, attention.value)
    )
    out = layer.attention.output.dense.weight.detach().abs()
    return score + out.reshape(out.shape[0], -1, head_size).sum(dim=(0, 2))


def neuron_importance(layer: nn.Module) -> torch.Tensor:
    """L1 norm per feed-forward neuron of its intermediate row (with bias) and output column."""
    inner = layer.intermediate.dense
    score = inner.weight.detach().abs().sum(dim=1) + layer.output.dense.weight.detach().abs().sum(dim=0)
    return score + (inner.bias.detach().abs() if inner.bias is not None else 0)


def _slice_linear(linear: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    weight = linear.weight.detach().index_select(dim, index).clone()
    bias = linear.bias.detach().clone() if linear.bias is not None else None
    if dim == 0 and bias is not None:
        bias = bias.index_select(0, index).clone()
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    new = new.to(dtype=weight.dtype, device=weight.device)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    new.weight.requires_grad_(linear.weight.requires_grad)
    return new


def cut_layer(layer: nn.Module, heads: list[int], neurons: list[int], head_size: int) -> None:
    """Keep only ``heads`` (indices) and feed-forward ``neurons`` (indices) of one layer, in place."""
    attention = layer.attention.self
    rows = torch.tensor([h * head_size + i for h in heads for i in range(head_size)], dtype=torch.long)
    attention.query = _slice_linear(attention.query, rows, 0)
    attention.key = _slice_linear(attention.key, rows, 0)
    attention.value = _slice_linear(attention.value, rows, 0)
    attention.num_attention_heads = len(heads)
    attention.all_head_size = len(heads) * head_size
    layer.attention.output.dense = _slice_linear(layer.attention.output.dense, rows, 1)
    kept = torch.tensor(neurons, dtype=torch.long)
    layer.intermediate.dense = _slice_linear(layer.intermediate.dense, kept, 0)
    layer.output.dense = _slice_linear(layer.output.dense, kept, 1)


def apply_structure(model: PreTrainedModel, heads: list[list[int]], neurons: list[list[int]]) -> PreTrainedModel:
    layers = _layers(model)
    if len(heads) != len(layers) or len(neurons) != len(layers):
        raise ArtefactError(
            f"the pruning record describes {len(heads)} layers but the model has {len(layers)}; re-create the folder"
        )
    size = _head_size(model)
    for layer, kept_heads, kept_neurons in zip(layers, heads, neurons, strict=True):
        cut_layer(layer, list(kept_heads), list(kept_neurons), size)
    return model


def choose_structure(model: PreTrainedModel, fraction: float, parts: tuple[str, ...]) -> tuple[list, list]:
    """The kept head and neuron indices (sorted) of every layer, by L1 importance."""
    layers = _layers(model)
    size = _head_size(model)
    num_heads = int(model.config.num_attention_heads)
    heads_out, neurons_out = [], []
    for layer in layers:
        width = layer.intermediate.dense.out_features
        if "heads" in parts:
            keep = max(1, round(num_heads * (1 - fraction)))
            chosen = torch.topk(head_importance(layer, size), keep).indices
            heads_out.append(sorted(int(i) for i in chosen))
        else:
            heads_out.append(list(range(num_heads)))
        if "ffn" in parts:
            keep = max(1, round(width * (1 - fraction)))
            chosen = torch.topk(neuron_importance(layer), keep).indices
            neurons_out.append(sorted(int(i) for i in chosen))
        else:
            neurons_out.append(list(range(width)))
    return heads_out, neurons_out


def parse_parts(text: Any) -> tuple[str, ...]:
    items = [p.strip() for p in text.split(",")] if isinstance(text, str) else list(text)
    items = [p for p in items if p]
    bad = [p for p in items if p not in PARTS]
    if bad or not items:
        raise ValueError(f"--prune-parts takes heads, ffn or heads,ffn, got {text!r}")
    return tuple(p for p in PARTS if p in items)


class StructuredPruning(CompressionMethod):
    name = "prune"
    help = "structured pruning of attention heads and feed-forward neurons (--fraction F, L1-magnitude score)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--fraction",
            type=float,
            default=argparse.SUPPRESS,
            help="prune: share of attention heads and feed-forward neurons removed in every layer, in (0, 1)",
        )
        parser.add_argument(
            "--prune-parts",
            default=argparse.SUPPRESS,
            help="prune: what to prune, heads, ffn or heads,ffn (default: heads,ffn)",
        )

    def settings_from_args(self, args: argparse.Namespace) -> dict[str, Any]:
        if not hasattr(args, "fraction"):
            raise ValueError("--method prune needs --fraction, the share of heads and neurons removed, e.g. 0.5")
        return {"fraction": args.fraction, "parts": getattr(args, "prune_parts", "heads,ffn")}

    def validate(self, settings: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(settings) - {"fraction", "parts"})
        if unknown:
            raise ValueError(f"method prune takes fraction and parts, not {unknown}")
        if "fraction" not in settings:
            raise ValueError("method prune needs a fraction strictly between 0 and 1, e.g. 0.5")
        return {
            "fraction": check_fraction(settings["fraction"]),
            "parts": list(parse_parts(settings.get("parts", "heads,ffn"))),
            "score": SCORE,
        }

    def apply(self, model: PreTrainedModel, settings: dict[str, Any]) -> tuple[PreTrainedModel, dict[str, Any]]:
        heads, neurons = choose_structure(model, settings["fraction"], tuple(settings["parts"]))
        apply_structure(model, heads, neurons)
        details = {
            "kept_heads": heads,
            "kept_neurons": neurons,
            "heads_per_layer": [len(h) for h in heads],
            "heads_before": int(model.config.num_attention_heads),
            "intermediate_per_layer": [len(n) for n in neurons],
            "intermediate_before": int(model.config.intermediate_size),
            "load": {"structure": "kept_heads and kept_neurons of every layer"},
        }
        if all(len(h) == model.config.num_attention_heads for h in heads) and all(
            len(n) == model.config.intermediate_size for n in neurons
        ):
            logger.warning("fraction %s removes nothing from this model (too few heads/neurons)", settings["fraction"])
        return model, details

    def load(self, folder: Path, config: Any, record: dict[str, Any]) -> PreTrainedModel:
        heads, neurons = record.get("kept_heads"), record.get("kept_neurons")
        if not isinstance(heads, list) or not isinstance(neurons, list):
            raise ArtefactError(f"the pruning record of {folder} lists no kept heads/neurons; re-create the folder")
        model = AutoModel.from_config(config)
        apply_structure(model, heads, neurons)
        state = load_file(str(folder / WEIGHTS_FILE))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ArtefactError(
                f"{folder / WEIGHTS_FILE} does not fit the pruned structure (missing {missing[:5]}, unexpected "
                f"{unexpected[:5]}); re-create the folder"
            )
        return mark_compressed(model.eval(), record)

    def save_model(self, model: PreTrainedModel, folder: Path) -> None:
        model.config.save_pretrained(folder)
        tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})


register_method(StructuredPruning())
