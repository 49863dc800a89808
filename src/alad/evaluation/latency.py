"""Honest CPU latency and parameter counts for result tables.

``measure_latency`` times any zero-argument callable: a few untimed warm-up calls (first calls pay
for lazy initialisation and cold caches), then at least ``repeats`` timed calls with
``time.perf_counter``; it reports the median (robust to the odd scheduler hiccup), the 90th
percentile and the mean. ``model_latency`` applies it to a model's forward pass in eval mode under
``torch.inference_mode``, on synthetic inputs of a fixed shape built once outside the timed region,
so tokenisation is never part of the number. Every result records the shape and the number of torch
threads it ran with: latency on a shared or differently-threaded CPU is not comparable.
"""

from __future__ import annotations

import gc
import hashlib
import inspect
import itertools
import json
import math
import platform
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

DEFAULT_SEQ_LEN = 32
"""Sequence length (tokens, special tokens included) of ``model_latency``'s synthetic inputs."""


CPU_FEATURES = (("amx_bf16", "AMX"), ("avx512_bf16", "AVX512-BF16"))
"""The /proc/cpuinfo flags that set how fast bf16 runs here, and their names in tables: two 2-core x86
machines of this project ran the same NER recipe 1.9x apart, one with AMX and one without
(results/ner_conll03-quick-amx/NOTE.md), so a timing means little without them."""


def cpu_description(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """The CPU's model name and its bf16 matrix instructions, e.g. ``Intel(R) Xeon(R) Processor (AMX,
    AVX512-BF16)``; where ``cpuinfo`` cannot be read (not Linux), the platform's processor string."""
    try:
        lines = Path(cpuinfo).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return platform.processor() or platform.machine() or "unknown CPU"
    fields = {}
    for line in lines:
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", "").split())
    found = [label for flag, label in CPU_FEATURES if flag in flags]
    name = fields.get("model name") or platform.processor() or platform.machine() or "unknown CPU"
    return f"{name} ({', '.join(found) if found else 'no ' + ' or '.join(label for _, label in CPU_FEATURES)})"


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default) of already sorted values, ``q`` in [0, 100]."""
    if not sorted_values:
        raise ValueError("no values")
    position = (len(sorted_values) - 1) * q / 100.0
    low, high = math.floor(position), math.ceil(position)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def measure_latency(
    fn: Callable[[], Any],
    warmup: int = 3,
    repeats: int = 20,
    min_seconds: float | None = None,
) -> dict[str, float | int]:
    """Time ``fn()``: ``warmup`` untimed calls, then ``repeats`` timed calls (more if ``min_seconds``).

    With ``min_seconds`` set, timed calls go on past ``repeats`` until their total time reaches it,
    which steadies the statistics of very fast functions. Returns ``median_ms``, ``p90_ms``,
    ``mean_ms``, ``min_ms``, ``max_ms`` and ``repeats`` (the number of timed calls actually made).
    Whatever ``fn`` needs (``torch.inference_mode``, synchronising an accelerator) is its own concern.
    """
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if min_seconds is not None and min_seconds < 0:
        raise ValueError(f"min_seconds must be >= 0 or None, got {min_seconds}")
    for _ in range(warmup):
        fn()
    gc.collect()  # do not let garbage from setup or warm-up be collected inside a timed call
    times: list[float] = []
    total = 0.0
    while len(times) < repeats or (min_seconds is not None and total < min_seconds):
        start = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - start
        times.append(elapsed)
        total += elapsed
    ordered = sorted(times)
    return {
        "median_ms": statistics.median(ordered) * 1e3,
        "p90_ms": _percentile(ordered, 90) * 1e3,
        "mean_ms": statistics.fmean(ordered) * 1e3,
        "min_ms": ordered[0] * 1e3,
        "max_ms": ordered[-1] * 1e3,
        "repeats": len(times),
    }


def synthetic_inputs(
    model: torch.nn.Module, batch_size: int, seq_len: int = DEFAULT_SEQ_LEN, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Random token ids (never the padding id) with a full attention mask, shaped ``[batch_size, seq_len]``.

    ``token_type_ids`` (zeros) are added only when the model's ``forward`` accepts them (BERT yes;
    DistilBERT, MPNet no). Tensors are placed on the model's device.
    """
    if batch_size < 1 or seq_len < 1:
        raise ValueError(f"batch_size and seq_len must be >= 1, got {batch_size} and {seq_len}")
    config = getattr(model, "config", None)
    vocab_size = int(getattr(config, "vocab_size", 0) or 0)
    if vocab_size < 2:
        raise ValueError("synthetic_inputs needs a model whose config has a vocab_size; pass make_inputs instead")
    pad = getattr(config, "pad_token_id", None)
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (batch_size, seq_len), generator=generator)
    if pad is not None:
        ids[ids == pad] = (pad + 1) % vocab_size
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if "token_type_ids" in inspect.signature(model.forward).parameters:
        inputs["token_type_ids"] = torch.zeros_like(ids)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    return {k: v.to(device) for k, v in inputs.items()}


def model_latency(
    model: torch.nn.Module,
    make_inputs: Callable[[int], dict[str, Any]] | None = None,
    batch_sizes: Iterable[int] = (1, 32),
    seq_len: int = DEFAULT_SEQ_LEN,
    repeats: int = 20,
    warmup: int = 3,
    min_seconds: float | None = None,
) -> dict[int, dict[str, Any]]:
    """Forward-pass latency of ``model`` per batch size, in eval mode under ``torch.inference_mode``.

    ``make_inputs(batch_size)`` returns the keyword inputs of one forward call; by default they are
    :func:`synthetic_inputs` of ``seq_len`` tokens (32 unless told). Inputs are built once per batch
    size, outside the timed region. The model's train/eval mode is restored afterwards. Each entry
    holds :func:`measure_latency`'s statistics plus ``batch_size``, ``seq_len`` (read from the inputs
    where they have ``input_ids``), ``per_item_ms`` (median / batch size) and ``threads``.
    """
    if make_inputs is None:

        def make_inputs(batch_size: int) -> dict[str, Any]:
            return synthetic_inputs(model, batch_size, seq_len)

    was_training = model.training
    model.eval()
    results: dict[int, dict[str, Any]] = {}
    try:
        for batch_size in batch_sizes:
            batch_size = int(batch_size)
            inputs = make_inputs(batch_size)

            def forward(inputs: dict[str, Any] = inputs) -> None:
                with torch.inference_mode():
                    model(**inputs)

            stats: dict[str, Any] = dict(
                measure_latency(forward, warmup=warmup, repeats=repeats, min_seconds=min_seconds)
            )
            ids = inputs.get("input_ids")
            stats["batch_size"] = batch_size
            stats["seq_len"] = int(ids.shape[-1]) if isinstance(ids, torch.Tensor) else seq_len
            stats["per_item_ms"] = stats["median_ms"] / batch_size
            stats["threads"] = torch.get_num_threads()
            results[batch_size] = stats
    finally:
        model.train(was_training)
    return results


def count_parameters(*modules: torch.nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements in ``modules``, each parameter counted once.

    A parameter shared within a module or between several modules (tied embeddings, a shared
    adapter) counts once. With ``trainable_only`` only parameters with ``requires_grad`` count. The
    int8 weights of dynamically quantised linear layers count too (they are not ``nn.Parameter``s).
    """
    seen: set[int] = set()
    total = 0
    for module in modules:
        for param in module.parameters():
            if id(param) in seen or (trainable_only and not param.requires_grad):
                continue
            seen.add(id(param))
            total += param.numel()
        if not trainable_only:  # int8 dynamic-quantised linear layers keep their (frozen) weights outside parameters()
            for sub in module.modules():
                if isinstance(sub, torch.ao.nn.quantized.dynamic.Linear) and id(sub) not in seen:
                    seen.add(id(sub))
                    weight, bias = sub._weight_bias()
                    total += weight.numel() + (bias.numel() if bias is not None else 0)
    return total


# Config entries that name or label a model but do not change what its forward pass computes.
_NAMING_KEYS = {"_name_or_path", "id2label", "label2id", "transformers_version", "architectures", "finetuning_task"}


def compute_signature(model: torch.nn.Module, *extra: Any) -> str:
    """What a forward pass costs depends on, weights aside: the module tree (types, shapes, dropout,
    activations), every parameter's and buffer's shape, dtype and device, and the settings of each
    transformers config inside (attention implementation, ...) except names and labels; plus ``extra``
    (e.g. a tokenizer fingerprint, which sets the input lengths). Two models with equal signatures run
    the same kernels on the same shapes, so one latency measured on either holds for both."""
    digest = hashlib.blake2b(repr(model).encode(), digest_size=10)
    for name, tensor in itertools.chain(model.named_parameters(), model.named_buffers()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}:{tensor.device};".encode())
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "to_dict") and hasattr(config, "_attn_implementation"):
            settings = {k: v for k, v in config.to_dict().items() if k not in _NAMING_KEYS}
            settings["_attn_implementation"] = config._attn_implementation
            digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    for value in extra:
        digest.update(f"|{value}".encode())
    return digest.hexdigest()
