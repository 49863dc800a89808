"""Layer dropping: the simplest compression, to make a (much) weaker student from an encoder.

``drop_layers("all-MiniLM-L6-v2", [0, 1], "models/minilm-l2")`` keeps the listed transformer layers
(in the given order) and writes a new, ordinary model folder that ``AutoModel`` / ``load_encoder``
load like any other: ``config.json`` (with the new layer count), ``model.safetensors``, the
tokenizer files, the sentence-transformers pooling files when the source has them, and
``alad_compression.json`` recording what was done. Embeddings, the pooler and MPNet's
``relative_attention_bias`` (it lives in the encoder, shared by all layers) are kept unchanged.

The folder is built in a temporary sibling, reloaded and checked there (every kept layer's weights
equal those of its source layer, no weight missing on reload, outputs of the reloaded model equal
those of the in-memory cut model), and only then renamed into place.
"""

from __future__ import annotations

import logging
import operator
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel

from alad.evaluation.latency import count_parameters
from alad.io.serialization import FORMAT_VERSION, ArtefactError, check_header, file_sha256, read_json, write_json_atomic
from alad.models.encoders import model_fingerprint, resolve_model

logger = logging.getLogger(__name__)

COMPRESSION_FILE = "alad_compression.json"
KIND = "layer-dropped-encoder"
WEIGHTS_FILE = "model.safetensors"

# model_type -> (dotted path of the ModuleList of layers in the AutoModel, config attribute of the layer count)
LAYER_LAYOUT: dict[str, tuple[str, str]] = {
    "bert": ("encoder.layer", "num_hidden_layers"),
    "roberta": ("encoder.layer", "num_hidden_layers"),
    "xlm-roberta": ("encoder.layer", "num_hidden_layers"),
    "camembert": ("encoder.layer", "num_hidden_layers"),
    "electra": ("encoder.layer", "num_hidden_layers"),
    "mpnet": ("encoder.layer", "num_hidden_layers"),
    "distilbert": ("transformer.layer", "n_layers"),
}

# sentence-transformers files that stay valid after dropping layers (the hidden size is unchanged).
_SENTENCE_TRANSFORMERS_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")
_SENTENCE_TRANSFORMERS_DIRS = ("1_Pooling", "2_Normalize")

_CHECK_TEXT = "The quick brown fox jumps over the lazy dog."


def parse_layers(text: str) -> list[int]:
    """Parse a CLI layer list such as ``"0,1"`` or ``"0, 2, 4"`` into integers (order kept)."""
    parts = [p.strip() for p in str(text).split(",")]
    if not any(parts):
        raise ValueError("no layers given: pass a comma-separated list of layer indices such as 0,1")
    try:
        return [int(p) for p in parts if p]
    except ValueError as err:
        raise ValueError(f"cannot parse layer list {text!r}: expected comma-separated integers such as 0,1") from err


def _layer_layout(model: PreTrainedModel) -> tuple[Any, str, torch.nn.ModuleList]:
    """The module holding the layer list, the list's attribute name, and the list itself."""
    model_type = getattr(model.config, "model_type", "?")
    if model_type not in LAYER_LAYOUT:
        raise NotImplementedError(
            f"drop_layers does not know where the layers of a {model_type!r} model are; supported model "
            f"types: {sorted(LAYER_LAYOUT)}"
        )
    path, _ = LAYER_LAYOUT[model_type]
    *parents, attr = path.split(".")
    owner: Any = model
    for name in parents:
        owner = getattr(owner, name, None)
    layers = getattr(owner, attr, None) if owner is not None else None
    if not isinstance(layers, torch.nn.ModuleList):
        raise NotImplementedError(
            f"{type(model).__name__} ({model_type!r}) has no ModuleList at {path!r}; this model class is "
            "laid out differently from the ones drop_layers supports"
        )
    return owner, attr, layers


def validate_keep_layers(keep_layers: Sequence[int], num_layers: int) -> list[int]:
    """Check ``keep_layers`` against a model with ``num_layers`` layers; return them as a list of ints."""
    valid = f"valid layers are 0..{num_layers - 1} (the model has {num_layers})"
    if isinstance(keep_layers, str | bytes):
        raise ValueError(f"keep_layers must be a sequence of integers, not a string ({keep_layers!r}); {valid}")
    try:
        keep = [operator.index(i) for i in keep_layers]
    except TypeError as err:
        raise ValueError(f"keep_layers must be integers, got {list(keep_layers)!r}; {valid}") from err
    if any(isinstance(i, bool) for i in keep_layers):
        raise ValueError(f"keep_layers must be integers, not booleans: {list(keep_layers)!r}; {valid}")
    if not keep:
        raise ValueError(f"keep_layers is empty: keep at least one layer; {valid}")
    bad = [i for i in keep if not 0 <= i < num_layers]
    if bad:
        raise ValueError(f"keep_layers {keep} has layers out of range {bad}; {valid}")
    duplicates = sorted({i for i in keep if keep.count(i) > 1})
    if duplicates:
        raise ValueError(f"keep_layers {keep} repeats layers {duplicates}; each layer may be kept once; {valid}")
    return keep


def cut_layers(model: PreTrainedModel, keep_layers: Sequence[int]) -> PreTrainedModel:
    """Keep only ``keep_layers`` of ``model`` in place (in that order), update its config; returns ``model``.

    The kept layer modules are reused, not copied; their ``layer_idx`` attributes (used only by
    decoder caches) are renumbered to their new positions.
    """
    owner, attr, layers = _layer_layout(model)
    keep = validate_keep_layers(keep_layers, len(layers))
    kept = torch.nn.ModuleList([layers[i] for i in keep])
    for new_index, layer in enumerate(kept):
        for module in layer.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = new_index
    setattr(owner, attr, kept)
    _, count_attr = LAYER_LAYOUT[model.config.model_type]
    setattr(model.config, count_attr, len(keep))
    return model


def _settings_match(record: dict[str, Any], keep: list[int], source_fingerprint: str) -> bool:
    return record.get("kept_layers") == keep and record.get("source_fingerprint") == source_fingerprint


def _existing_output(out_dir: Path) -> dict[str, Any] | None:
    """The record of a previous compression in ``out_dir``; None when the folder is absent or empty."""
    if not out_dir.exists():
        return None
    if not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a folder; choose another output folder")
    record_path = out_dir / COMPRESSION_FILE
    if not record_path.is_file():
        if any(out_dir.iterdir()):
            raise FileExistsError(
                f"{out_dir} exists and is not the output of a previous `alad compress` (no {COMPRESSION_FILE}); "
                "refusing to write into it: choose another output folder or delete it"
            )
        return None
    record = read_json(record_path, "compression record")
    check_header(record, KIND, record_path)
    return record


def _check_reuse(out_dir: Path, record: dict[str, Any]) -> None:
    weights = out_dir / WEIGHTS_FILE
    if not (out_dir / "config.json").is_file() or not weights.is_file():
        raise ArtefactError(f"{out_dir} is an incomplete compression output; delete it and run again")
    if file_sha256(weights) != record.get("weights_sha256"):
        raise ArtefactError(f"{weights} does not match the checksum in {COMPRESSION_FILE}; delete {out_dir} and rerun")


def _copy_sentence_transformers_files(source: Path, target: Path) -> list[str]:
    copied = []
    for name in _SENTENCE_TRANSFORMERS_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, target / name)
            copied.append(name)
    for name in _SENTENCE_TRANSFORMERS_DIRS:
        if (source / name).is_dir():
            shutil.copytree(source / name, target / name)
            copied.append(name)
    return copied


def _verify_saved(
    folder: Path,
    cut: PreTrainedModel,
    source_layers: list[torch.nn.Module],
    keep: list[int],
    tokenizer,
) -> None:
    """Reload ``folder`` and check it against the in-memory cut model and the source layers."""
    reloaded, info = AutoModel.from_pretrained(folder, output_loading_info=True)
    reloaded.eval()
    problems = {
        k: list(v) for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v
    }
    if problems:
        raise RuntimeError(f"the saved compressed model does not reload cleanly: {problems}")
    _, _, layers = _layer_layout(reloaded)
    if len(layers) != len(keep) or getattr(reloaded.config, LAYER_LAYOUT[reloaded.config.model_type][1]) != len(keep):
        raise RuntimeError(f"the saved model has {len(layers)} layers, expected {len(keep)}")
    for new_index, source_index in enumerate(keep):
        saved = layers[new_index].state_dict()
        original = source_layers[source_index].state_dict()
        if saved.keys() != original.keys() or any(not torch.equal(saved[k], original[k]) for k in saved):
            raise RuntimeError(f"saved layer {new_index} differs from source layer {source_index}")
    expected = cut.state_dict()
    found = reloaded.state_dict()
    if expected.keys() != found.keys() or any(not torch.equal(expected[k], found[k]) for k in expected):
        raise RuntimeError("the reloaded model's weights differ from the in-memory cut model's")
    reloaded_tokenizer = AutoTokenizer.from_pretrained(folder)
    inputs = tokenizer(_CHECK_TEXT, return_tensors="pt")
    if reloaded_tokenizer(_CHECK_TEXT, return_tensors="pt")["input_ids"].tolist() != inputs["input_ids"].tolist():
        raise RuntimeError("the saved tokenizer tokenises differently from the source tokenizer")
    with torch.inference_mode():
        expected_out = cut(**inputs).last_hidden_state
        found_out = reloaded(**inputs).last_hidden_state
    if not torch.allclose(expected_out, found_out, atol=1e-6):
        diff = (expected_out - found_out).abs().max().item()
        raise RuntimeError(f"the reloaded model's outputs differ from the cut model's (max abs diff {diff:.3g})")


def _reusable(out_dir: Path, source: str, keep: list[int], fingerprint: str, overwrite: bool) -> bool:
    """True where ``out_dir`` already holds this compression (checksum checked); refuses one holding
    another unless ``overwrite``; False where there is nothing to reuse."""
    previous = _existing_output(out_dir)
    if previous is None:
        return False
    if _settings_match(previous, keep, fingerprint):
        _check_reuse(out_dir, previous)
        logger.info("reusing %s (same source and layers %s)", out_dir, keep)
        return True
    if not overwrite:
        raise FileExistsError(
            f"{out_dir} already holds a compression of {previous.get('source')!r} keeping layers "
            f"{previous.get('kept_layers')}, not of {source!r} keeping {keep}; "
            "choose another output folder, delete it, or pass overwrite=True"
        )
    return False


def drop_layers(
    model_dir_or_name: str | os.PathLike,
    keep_layers: Sequence[int],
    out_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
) -> Path:
    """Write a copy of an encoder that keeps only ``keep_layers`` (in that order) to ``out_dir``.

    ``model_dir_or_name`` is anything :func:`alad.models.encoders.resolve_model` accepts (a model folder,
    ``all-MiniLM-L6-v2``, ...). ``keep_layers`` must be unique, in range and non-empty
    (``ValueError`` otherwise, naming the valid range); model types other than BERT, RoBERTa,
    XLM-RoBERTa, CamemBERT, ELECTRA, MPNet and DistilBERT raise ``NotImplementedError``.

    An existing ``out_dir`` holding a compression of the same source weights with the same layers is
    reused as is (its weights checksum is checked). One holding another compression is refused
    unless ``overwrite``; a non-empty folder that is not a compression output is always refused.
    Returns ``Path(out_dir)``.
    """
    out_dir = Path(out_dir).expanduser()
    resolved = resolve_model(model_dir_or_name)
    config = AutoConfig.from_pretrained(resolved)
    model = AutoModel.from_pretrained(resolved, config=config).eval()
    _, _, source_list = _layer_layout(model)
    source_layers = list(source_list)
    keep = validate_keep_layers(keep_layers, len(source_layers))
    source_fingerprint = model_fingerprint(model)

    if _reusable(out_dir, str(model_dir_or_name), keep, source_fingerprint, overwrite):
        return out_dir
    tokenizer = AutoTokenizer.from_pretrained(resolved)
    params_before = count_parameters(model)
    layers_before = len(source_layers)
    cut = cut_layers(model, keep)
    params_after = count_parameters(cut)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        cut.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        copied = _copy_sentence_transformers_files(Path(resolved), tmp) if Path(resolved).is_dir() else []
        if not (tmp / WEIGHTS_FILE).is_file():
            raise RuntimeError(f"save_pretrained wrote no {WEIGHTS_FILE} in {tmp}")
        _verify_saved(tmp, cut, source_layers, keep, tokenizer)
        record = {
            "kind": KIND,
            "format_version": FORMAT_VERSION,
            "method": "drop_layers",
            "source": str(model_dir_or_name),
            "source_resolved": str(resolved),
            "source_fingerprint": source_fingerprint,
            "model_type": cut.config.model_type,
            "layers_before": layers_before,
            "layers_after": len(keep),
            "kept_layers": keep,
            "parameters_before": params_before,
            "parameters_after": params_after,
            "copied_files": copied,
            "weights_sha256": file_sha256(tmp / WEIGHTS_FILE),
        }
        write_json_atomic(tmp / COMPRESSION_FILE, record)
        _move_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info(
        "wrote %s: %s layers %s of %d, %d -> %d parameters",
        out_dir,
        model_dir_or_name,
        keep,
        layers_before,
        params_before,
        params_after,
    )
    return out_dir


def _move_into_place(tmp: Path, out_dir: Path) -> None:
    """Rename ``tmp`` onto ``out_dir``; a previous output (checked by the caller) is swapped out first."""
    if out_dir.exists() and any(out_dir.iterdir()):
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        os.replace(out_dir, old / "previous")
        try:
            os.replace(tmp, out_dir)
        except BaseException:
            os.replace(old / "previous", out_dir)
            shutil.rmtree(old, ignore_errors=True)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out_dir)  # also replaces an empty folder
