"""Compression methods behind ``alad compress --method NAME``: one class per method, one registry.

Every method turns an encoder (a packaged name, a model folder, a hub id) into a new model folder
that :func:`alad.models.encoders.load_encoder` loads like any other, so every recipe can use it as a student.
Each folder holds ``config.json``, ``model.safetensors``, the tokenizer files and
``alad_compression.json``, the record of what was done: ``method``, ``settings``, ``source`` (and
its fingerprint), ``parameters_before`` / ``parameters_after``, ``size_bytes_before`` /
``size_bytes_after``, the SHA-256 of the weights, and whatever the method needs to load the folder
back (``load``). Methods:

- ``layers`` (:mod:`alad.compression.layer_dropping`): keep some transformer layers; a plain Hugging Face folder.
- ``quantize-int8`` (:mod:`alad.compression.quantize`): int8 dynamic quantisation of every
  ``nn.Linear`` (int8 weights with per-output-channel scales, activations quantised on the fly).
  PyTorch cannot save dynamically quantised modules in a Hugging Face folder, so the folder keeps
  the fp32 weights and the record tells ``load_encoder`` to quantise them after loading; this is
  deterministic, so the loaded model is exactly the one checked when the folder was written. The
  int8 student runs on the CPU and cannot be trained (``joint`` mode is refused).
- ``prune`` (:mod:`alad.compression.prune`): structured pruning of attention heads and
  feed-forward neurons to a stated fraction, ranked by weight magnitude (L1 norm); the pruned
  layers are really smaller, so the model is faster. Transformers 5 no longer stores pruned heads
  in a config, so the record lists the kept heads and neurons per layer and ``load_encoder`` builds
  the model with those shapes before loading the weights (a plain ``AutoModel.from_pretrained``
  of the folder fails with a shape mismatch).

Adding a method is one subclass of :class:`CompressionMethod` registered with
:func:`register_method`; the CLI, the record and the loading hooks come from here.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel

from alad.io.serialization import ArtefactError, file_sha256, read_json, write_json_atomic

logger = logging.getLogger(__name__)

RECORD_FILE = "alad_compression.json"  # the same record file the layer-dropping method has always written
KIND = "compressed-encoder"
RECORD_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
_ATTR = "_alad_compression"  # set on a loaded model: {"record": ..., "fp32_state": ... (int8 only)}

_CHECK_TEXTS = ["The quick brown fox jumps over the lazy dog.", "A cat sat on the mat."]


class CompressionMethod:
    """One way of compressing an encoder. Subclasses set ``name``/``help`` and implement the hooks."""

    name: str = ""
    help: str = ""
    kind: str = KIND

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add this method's own flags (defaults ``argparse.SUPPRESS``, so unused ones stay absent)."""

    def settings_from_args(self, args: argparse.Namespace) -> dict[str, Any]:
        """The method's settings from parsed CLI flags."""
        return {}

    def validate(self, settings: dict[str, Any]) -> dict[str, Any]:
        """Check and normalise settings before any model is loaded; ``ValueError`` names the fix."""
        return dict(settings)

    def apply(self, model: PreTrainedModel, settings: dict[str, Any]) -> tuple[PreTrainedModel, dict[str, Any]]:
        """Compress ``model`` (may modify it); returns the compressed model and what goes into the record."""
        raise NotImplementedError

    def load(self, folder: Path, config: Any, record: dict[str, Any]) -> PreTrainedModel:
        """Load a folder this method wrote (default: an ordinary Hugging Face folder)."""
        return AutoModel.from_pretrained(folder, config=config)

    def save_model(self, model: PreTrainedModel, folder: Path) -> None:
        """Write config and weights of a (loaded) model of this method into ``folder``."""
        model.save_pretrained(folder)

    def describe(self, settings: dict[str, Any], source: str, out: Path) -> str:
        """The line ``alad compress`` prints when done."""
        shown = ", ".join(f"{k} {v}" for k, v in settings.items() if k != "score")
        return f"{self.name}{' (' + shown + ')' if shown else ''} of {source}: {out}"

    def run(self, source: str | os.PathLike, out: str | os.PathLike, settings: dict[str, Any]) -> Path:
        """Compress ``source`` into the new folder ``out``; returns ``Path(out)``."""
        return write_compressed(self, source, out, settings)


METHODS: dict[str, CompressionMethod] = {}


def register_method(method: CompressionMethod) -> CompressionMethod:
    METHODS[method.name] = method
    return method


def get_method(name: str) -> CompressionMethod:
    _import_methods()
    if name not in METHODS:
        raise ValueError(f"unknown compression method {name!r}; alad knows {sorted(METHODS)}")
    return METHODS[name]


def _import_methods() -> None:
    """The built-in methods register themselves when this package is imported (see the end of the file)."""


def compress(method: str, source: str | os.PathLike, out: str | os.PathLike, **settings: Any) -> Path:
    """Compress ``source`` with ``method`` (``layers``, ``quantize-int8``, ``prune``) into ``out``."""
    chosen = get_method(method)
    return chosen.run(source, out, chosen.validate(settings))


def ensure_compressed(method: str, source: str | os.PathLike, out: str | os.PathLike, **settings: Any) -> Path:
    """Like :func:`compress`, but an ``out`` already holding this very compression (same method, settings and
    source weights, weights checksum intact) is reused: what a recipe calls for a student spec such as
    ``{compress: all-MiniLM-L6-v2, method: prune, fraction: 0.5}``."""
    from alad.models.encoders import load_encoder, model_fingerprint, verify_alad_model_folder

    chosen = get_method(method)
    settings = chosen.validate(settings)
    out = Path(out).expanduser()
    if method != "layers" and out.is_dir() and (out / RECORD_FILE).is_file():
        record = read_record(out) or {}
        same = record.get("method") == method and record.get("settings") == json.loads(json.dumps(settings))
        if same and record.get("source_fingerprint") == model_fingerprint(load_encoder(source).model):
            verify_alad_model_folder(out)
            return out
        raise FileExistsError(
            f"{out} holds another compression ({record.get('method')} {record.get('settings')} of "
            f"{record.get('source')!r}); choose another folder or delete it"
        )
    return chosen.run(source, out, settings)


# ----------------------------------------------------------------------------------------- records


def read_record(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The compression record of a model folder, or None for an ordinary folder."""
    path = Path(folder) / RECORD_FILE
    if not path.is_file():
        return None
    record = read_json(path, "compression record")
    if not isinstance(record, dict):
        raise ArtefactError(f"{path} holds no compression record (a JSON object); re-create the folder")
    return record


def record_method(record: dict[str, Any] | None) -> str | None:
    if record is None:
        return None
    method = record.get("method")
    return "layers" if method == "drop_layers" else method


def is_quantized_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a local model folder that loads as an int8-quantised model."""
    folder = Path(str(path)).expanduser()
    try:
        return folder.is_dir() and record_method(read_record(folder)) == "quantize-int8"
    except (ArtefactError, OSError, ValueError):
        return False


def is_quantized(model: torch.nn.Module) -> bool:
    """Whether ``model`` holds dynamically quantised linear layers (int8 weights, no gradients)."""
    quantized = torch.ao.nn.quantized.dynamic.Linear
    return any(isinstance(m, quantized) for m in model.modules())


def joint_mode_error(student: str) -> str:
    return (
        f"student {student} is int8-quantised (dynamic quantisation), and int8 weights cannot be trained: "
        "use --mode frozen, head-only or teacher-head with it, or fine-tune the fp32 model in joint mode "
        "and quantise afterwards (alad export --quantize int8)"
    )


def load_model(folder: str | os.PathLike, config: Any, device: str | torch.device = "cpu") -> PreTrainedModel:
    """Load the model of a folder, applying its compression record (the hook of ``load_encoder``)."""
    name = str(folder)
    folder = Path(name)
    record = read_record(folder) if folder.is_dir() else None
    method_name = record_method(record)
    if record is None or method_name == "layers":
        return AutoModel.from_pretrained(name, config=config)
    _check_record_header(record, folder)
    method = get_method(method_name)
    if method_name == "quantize-int8" and torch.device(device).type != "cpu":
        raise ValueError(f"{folder} is an int8 dynamic-quantised model, which runs on the CPU only; use --device cpu")
    return method.load(folder, config, record)


def _check_record_header(record: dict[str, Any], folder: Path) -> None:
    if record.get("kind") != KIND or record.get("format_version") != RECORD_VERSION:
        raise ArtefactError(
            f"{folder / RECORD_FILE} is a {record.get('kind')!r} record of format version "
            f"{record.get('format_version')!r}; this alad reads {KIND!r} version {RECORD_VERSION}: re-create the "
            "folder with this alad's `alad compress`"
        )
    if record_method(record) not in METHODS:
        raise ArtefactError(f"{folder / RECORD_FILE} names the unknown method {record.get('method')!r}")


def save_encoder(model: PreTrainedModel, tokenizer: Any, folder: str | os.PathLike) -> None:
    """Save an encoder (with its tokenizer) so that :func:`load_model` restores it, compressed or not.

    A compressed model keeps its record (with the checksum of the weights written now), so a task
    model's ``encoder/`` folder loads back int8 or pruned as it was trained.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = getattr(model, _ATTR, None)
    if state is None:
        model.save_pretrained(folder)
    else:
        record = dict(state["record"])
        get_method(record_method(record)).save_model(model, folder)
        record["weights_sha256"] = file_sha256(folder / WEIGHTS_FILE)
        write_json_atomic(folder / RECORD_FILE, record)
    tokenizer.save_pretrained(folder)


def mark_compressed(model: PreTrainedModel, record: dict[str, Any], **extra: Any) -> PreTrainedModel:
    setattr(model, _ATTR, {"record": record, **extra})
    return model


def compression_state(model: torch.nn.Module) -> dict[str, Any] | None:
    return getattr(model, _ATTR, None)


# ------------------------------------------------------------------------------------- the driver


def model_size_bytes(model: torch.nn.Module) -> int:
    """Bytes of every weight the model holds, int8 packed weights counted at one byte each."""
    total = sum(t.numel() * t.element_size() for t in model.state_dict().values() if isinstance(t, torch.Tensor))
    for module in model.modules():
        if isinstance(module, torch.ao.nn.quantized.dynamic.Linear):
            weight, bias = module._weight_bias()
            total += weight.numel() * 1 + (bias.numel() * bias.element_size() if bias is not None else 0)
    return int(total)


def _check_output_folder(out: Path) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder; choose another --out")
    if any(out.iterdir()):
        raise FileExistsError(
            f"{out} already exists and is not empty; `alad compress` writes a new folder: choose another --out "
            "or delete it"
        )


def _outputs(model: PreTrainedModel, tokenizer: Any) -> torch.Tensor:
    inputs = tokenizer(_CHECK_TEXTS, return_tensors="pt", padding=True)
    inputs = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask")}
    with torch.inference_mode():
        return model(**inputs).last_hidden_state


def write_compressed(
    method: CompressionMethod, source: str | os.PathLike, out: str | os.PathLike, settings: dict[str, Any]
) -> Path:
    """Load ``source``, compress it, write the folder in a temporary sibling, reload it with
    ``load_encoder`` and check its outputs equal the in-memory compressed model's, then move it into place."""
    from alad.evaluation.latency import count_parameters
    from alad.models.encoders import load_encoder, model_fingerprint, resolve_model

    out = Path(out).expanduser()
    _check_output_folder(out)
    resolved = resolve_model(source)
    source_record = read_record(resolved) if Path(resolved).is_dir() else None
    if source_record is not None and record_method(source_record) not in (None, "layers"):
        if record_method(source_record) == method.name == "quantize-int8":
            raise ValueError(
                f"{source} is already int8-quantised: it has no fp32 linear layers left to quantise; pass the fp32 "
                "model folder"
            )
        if record_method(source_record) == "quantize-int8":
            raise ValueError(
                f"{source} is int8-quantised; compress the fp32 model first and quantise last ({method.name} "
                "cannot read int8 weights)"
            )
    encoder = load_encoder(source)
    model, tokenizer = encoder.model, encoder.tokenizer
    fingerprint = model_fingerprint(model)
    before = {"parameters": count_parameters(model), "size_bytes": model_size_bytes(model)}
    compressed, details = method.apply(model, settings)
    compressed.eval()
    after = {"parameters": count_parameters(compressed), "size_bytes": model_size_bytes(compressed)}
    record = {
        "kind": KIND,
        "format_version": RECORD_VERSION,
        "method": method.name,
        "settings": settings,
        "source": str(source),
        "source_resolved": str(resolved),
        "source_fingerprint": fingerprint,
        "source_record": source_record,
        "model_type": compressed.config.model_type,
        "parameters_before": before["parameters"],
        "parameters_after": after["parameters"],
        "size_bytes_before": before["size_bytes"],
        "size_bytes_after": after["size_bytes"],
        **details,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        mark_compressed(compressed, record, **_extra_state(compressed))
        save_encoder(compressed, tokenizer, tmp)
        _verify(tmp, compressed, tokenizer)
        if out.exists():
            out.rmdir()  # checked empty above
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("wrote %s (%s of %s)", out, method.name, source)
    return out


def _extra_state(compressed: PreTrainedModel) -> dict[str, Any]:
    """What a method's ``apply`` kept on the model besides the record (the fp32 weights of an int8 model)."""
    state = compression_state(compressed)
    return {k: v for k, v in (state or {}).items() if k != "record"}


def _verify(folder: Path, compressed: PreTrainedModel, tokenizer: Any) -> None:
    from alad.models.encoders import load_encoder

    reloaded = load_encoder(folder)
    expected, found = _outputs(compressed, tokenizer), _outputs(reloaded.model, reloaded.tokenizer)
    if expected.shape != found.shape or not torch.allclose(expected, found, atol=1e-5):
        diff = (expected - found).abs().max().item() if expected.shape == found.shape else float("nan")
        raise RuntimeError(f"the reloaded compressed model differs from the in-memory one (max abs diff {diff:.3g})")
    AutoConfig.from_pretrained(folder)  # the config stays an ordinary Hugging Face config
    AutoTokenizer.from_pretrained(folder)


from alad.compression import layers, prune, quantize  # noqa: E402, F401  (each registers its method)

__all__ = [
    "KIND",
    "METHODS",
    "RECORD_FILE",
    "CompressionMethod",
    "compress",
    "ensure_compressed",
    "get_method",
    "is_quantized",
    "is_quantized_folder",
    "load_model",
    "read_record",
    "register_method",
    "save_encoder",
]
