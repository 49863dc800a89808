"""``alad export RUN --out DIR --format onnx [--quantize int8]``: one ONNX graph per task model.

The graph is the whole deployed model, student encoder + alignment adapter (when there is one) +
task head: ``input_ids`` and ``attention_mask`` (int64, ``[batch, length]``, both axes dynamic) in,
``logits`` (``[batch, length, labels]``, or start/end for QA) out. It is written with PyTorch's
ONNX exporter (``torch.onnx.export(..., dynamo=True)``, opset 18); ``--quantize int8`` then applies
ONNX Runtime's dynamic int8 quantisation (``onnxruntime.quantization.quantize_dynamic``, int8
weights of every MatMul/Gemm, activations quantised on the fly).

The export folder holds ``model.onnx``, the tokenizer files, ``labels.json`` (task and label
names), ``export.json`` (kind, format version, the alad version that wrote it, the run's settings,
the SHA-256 of ``model.onnx``) and ``parity.json``: at export, the PyTorch model and the ONNX model
run on a sample of the run's evaluation items and their logits (maximum absolute difference over
real tokens) and predictions (argmax agreement over real tokens) are compared. The fp32 graph must
agree within :data:`FP32_ATOL` and on at least :data:`FP32_MIN_AGREEMENT` of the tokens, else the
export fails and nothing is written; the int8 graph's numbers are recorded (and a warning printed
below :data:`INT8_MIN_AGREEMENT`), since int8 changes logits by design.

:class:`OnnxTaskModel` runs an export folder with ONNX Runtime behind the interface the tasks use
(``config``, ``tokenizer``, ``max_length``, ``model(input_ids, attention_mask)``), so ``alad
predict`` and ``alad evaluate`` take an export folder like a run folder (token tasks and QA). A
folder written by another alad version or export format is refused. A run whose student is int8
(PyTorch dynamic quantisation, which ONNX cannot express) is exported from its fp32 weights and
quantised by ONNX Runtime (``--quantize int8`` is implied).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from alad.io.serialization import ArtefactError, file_sha256, read_json, write_json_atomic

logger = logging.getLogger(__name__)

EXPORT_FILE = "export.json"
EXPORT_KIND = "alad_onnx_export"
EXPORT_VERSION = 1
ONNX_FILE = "model.onnx"
LABELS_FILE = "labels.json"
PARITY_FILE = "parity.json"
OPSET = 18
FP32_ATOL = 1e-3
FP32_MIN_AGREEMENT = 0.999
INT8_MIN_AGREEMENT = 0.98
QUANTIZE = (None, "int8")
_RUN_FILES = ("finetune_config.json", "metrics.json", "model/task_config.json", "model/head.safetensors")


def _alad_version() -> str:
    from alad import __version__

    return __version__


def _require_onnx() -> None:
    missing = []
    for module in ("onnx", "onnxruntime", "onnxscript"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise ValueError(
            f"ONNX export and inference need {', '.join(missing)}: pip install onnx onnxruntime onnxscript"
        )


# ------------------------------------------------------------------------------------------ export


class _LogitsGraph(nn.Module):
    """The task model as one function of (input_ids, attention_mask), dropout off."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model.head(self.model.token_states(input_ids, attention_mask))


def check_run_complete(run: Path) -> None:
    """Refuse a run folder that is missing what an export needs (an interrupted or foreign folder)."""
    if not run.is_dir():
        raise FileNotFoundError(f"run folder not found: {run}")
    missing = [name for name in _RUN_FILES if not (run / name).is_file()]
    if not (run / "model" / "encoder" / "config.json").is_file():
        missing.append("model/encoder/config.json")
    if missing:
        raise ArtefactError(
            f"{run} is not a complete fine-tuning run (missing {', '.join(missing)}); finish it by rerunning its "
            "`alad finetune` command, then export"
        )


def _fp32_copy_of_int8(model: Any) -> Any:
    """The task model with its int8 (PyTorch dynamic) encoder replaced by the fp32 weights it was made from."""
    from transformers import AutoConfig

    from alad.compression import compression_state, get_method, record_method, save_encoder

    with tempfile.TemporaryDirectory(prefix="alad-export-") as tmp:
        save_encoder(model.encoder, model.tokenizer, tmp)
        record = compression_state(model.encoder)["record"]
        inner = record.get("source_record")
        config = AutoConfig.from_pretrained(tmp)
        if isinstance(inner, dict) and record_method(inner) not in (None, "layers"):
            encoder = get_method(record_method(inner)).load(Path(tmp), config, inner)
        else:
            from transformers import AutoModel

            encoder = AutoModel.from_pretrained(tmp, config=config)
    copy = type(model)(model.config, encoder.eval(), model.tokenizer, adapter=model.adapter, head=model.head)
    copy.metadata = model.metadata
    return copy.eval()


def _sample_features(model: Any, config: Any, items: list) -> list:
    from alad.tasks import get_task

    return get_task(model.config.task).features(model, items, config)


def _logits(model: Any, features: list, config: Any) -> list[torch.Tensor]:
    from alad.tasks import get_task
    from alad.tasks.base import batched_logits

    return batched_logits(model, get_task(model.config.task), features, batch_size=16)


def parity(reference: list[torch.Tensor], candidate: list[torch.Tensor], qa: bool = False) -> dict[str, Any]:
    """Largest absolute logit difference and prediction agreement over every real token of the sample:
    the argmax label per token (tagging), or the argmax start and end token per window (QA)."""
    diffs, agree, total = [], 0, 0
    for ref, cand in zip(reference, candidate, strict=True):
        diffs.append(float((ref - cand).abs().max()))
        same = ref.argmax(0) == cand.argmax(0) if qa else ref.argmax(-1) == cand.argmax(-1)
        agree += int(same.sum())
        total += int(same.numel())
    return {
        "items": len(reference),
        "compared": total,
        "max_abs_logit_diff": max(diffs) if diffs else 0.0,
        "prediction_agreement": agree / total if total else 1.0,
    }


def export_onnx(
    run_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    quantize: str | None = None,
    parity_items: int = 200,
    parity_data: str | None = None,
) -> dict[str, Any]:
    """Export the task model of a finished fine-tuning run to ``out_dir`` (a new folder); returns ``export.json``."""
    from alad.compression import is_quantized
    from alad.finetuning.trainer import load_run

    if quantize not in QUANTIZE:
        raise ValueError(f"--quantize takes int8 (or nothing for fp32), got {quantize!r}")
    if parity_items < 1:
        raise ValueError(f"--parity-items must be >= 1, got {parity_items}")
    run, out = Path(run_dir), Path(out_dir)
    check_run_complete(run)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} already exists and is not empty; choose a new --out folder for the export")
    _require_onnx()
    model, config = load_run(run)
    notes = []
    if is_quantized(model.encoder):
        model = _fp32_copy_of_int8(model)
        if quantize != "int8":
            notes.append("the student is int8 (PyTorch dynamic quantisation, not expressible in ONNX): exported from")
            notes[-1] += " its fp32 weights and quantised with ONNX Runtime"
            quantize = "int8"
    model.eval()
    run_config = config
    config = dataclasses.replace(config, max_eval=parity_items, **({"data": parity_data} if parity_data else {}))
    qa = model.config.task == "qa"
    items = _parity_items(config)
    features = _sample_features(model, config, items)
    reference = _logits(model, features, config)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        fp32_path = tmp / ("model-fp32.onnx" if quantize else ONNX_FILE)
        _torch_export(model, fp32_path)

        def compare(path: Path) -> dict[str, Any]:  # the graph at path against PyTorch on the same inputs
            return parity(reference, _logits(_session_model(model, path), features, config), qa)

        checks = {"fp32": _fp32_parity(compare(fp32_path))}
        if quantize == "int8":
            _quantize_int8(fp32_path, tmp / ONNX_FILE)
            fp32_path.unlink()
            checks["int8"] = _int8_parity(compare(tmp / ONNX_FILE))
        model.tokenizer.save_pretrained(tmp)
        write_json_atomic(tmp / LABELS_FILE, {"task": model.config.task, "labels": list(model.config.labels)})
        write_json_atomic(
            tmp / PARITY_FILE,
            {"sample": f"{len(items)} evaluation items of {config.data} ({config.eval_split})", **checks},
        )
        header = _export_header(model, run, run_config, quantize, notes, tmp / ONNX_FILE)
        write_json_atomic(tmp / EXPORT_FILE, header)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return header


def _parity_items(config) -> list:
    """The evaluation items the parity check reads (the run's data, or --parity-data)."""
    from alad.finetuning.trainer import load_splits

    try:
        return load_splits(config).eval
    except (OSError, ValueError) as err:
        raise ValueError(
            f"the parity check reads the run's evaluation data ({config.data}), which cannot be loaded "
            f"({str(err).splitlines()[0][:160]}); pass --parity-data FORMAT:PATH"
        ) from err


def _fp32_parity(check: dict[str, Any]) -> dict[str, Any]:
    """The fp32 graph must match PyTorch (logits and predictions), or nothing is written."""
    check.update(max_abs_logit_diff_allowed=FP32_ATOL, min_agreement=FP32_MIN_AGREEMENT)
    check["passed"] = check["max_abs_logit_diff"] <= FP32_ATOL and check["prediction_agreement"] >= FP32_MIN_AGREEMENT
    if not check["passed"]:
        raise RuntimeError(
            f"the exported ONNX graph does not match PyTorch (max logit diff {check['max_abs_logit_diff']:.3g} > "
            f"{FP32_ATOL} or agreement {check['prediction_agreement']:.4f} < {FP32_MIN_AGREEMENT}); nothing was written"
        )
    return check


def _int8_parity(check: dict[str, Any]) -> dict[str, Any]:
    """int8 predictions may differ a little: below the floor the export is kept, with a warning."""
    check.update(min_agreement=INT8_MIN_AGREEMENT)
    check["passed"] = check["prediction_agreement"] >= INT8_MIN_AGREEMENT
    if not check["passed"]:
        logger.warning(
            "int8 ONNX model agrees with PyTorch on %.2f%% of tokens (< %.0f%%); check its metric with alad evaluate",
            100 * check["prediction_agreement"],
            100 * INT8_MIN_AGREEMENT,
        )
    return check


def _export_header(model, run: Path, run_config, quantize: str | None, notes: list, onnx_path: Path) -> dict:
    """``export.json``: what was exported, from which run, with which shapes, and the graph's checksum."""
    return {
        "kind": EXPORT_KIND,
        "format_version": EXPORT_VERSION,
        "alad_version": _alad_version(),
        "format": "onnx",
        "opset": OPSET,
        "quantize": quantize,
        "source_run": str(run.resolve()),
        "task": model.config.task,
        "labels": list(model.config.labels),
        "mode": model.config.mode,
        "student": model.config.source_encoder,
        "student_layer": model.config.student_layer,
        "has_adapter": model.adapter is not None,
        "adapter_type": model.adapter.config.adapter_type if model.adapter is not None else None,
        "max_length": int(model.max_length),
        "params_total": int(model.num_parameters()),
        "inputs": {"input_ids": ["batch", "length"], "attention_mask": ["batch", "length"]},
        "outputs": {"logits": ["batch", "length", model.head.out_features]},
        "finetune_config": dataclasses.asdict(run_config),
        "notes": notes,
        "onnx_sha256": file_sha256(onnx_path),
    }


def _torch_export(model: Any, path: Path) -> None:
    graph = _LogitsGraph(model).eval()
    ids = torch.full((2, 8), 5, dtype=torch.long)
    ids[:, 0] = model.tokenizer.cls_token_id if model.tokenizer.cls_token_id is not None else 0
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0  # a padded row, so the masking path is part of the graph
    axes = {"input_ids": {0: "batch", 1: "length"}, "attention_mask": {0: "batch", 1: "length"}}
    with warnings.catch_warnings(), torch.no_grad(), _quiet_loggers("torch.onnx", "torch.export", "onnxscript"):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph,
            (ids, mask),
            str(path),
            input_names=["input_ids", "attention_mask"],
            output_names=["logits"],
            dynamic_axes={**axes, "logits": {0: "batch", 1: "length"}},
            opset_version=OPSET,
            dynamo=True,
            external_data=False,
            verbose=False,
        )


def _quantize_int8(source: Path, target: Path) -> None:
    """ONNX Runtime dynamic int8 quantisation, after its recommended pre-processing (shape inference and
    graph optimisation) where that succeeds on this graph."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with warnings.catch_warnings(), _quiet_loggers("", "root", "onnxruntime"):
        warnings.simplefilter("ignore")
        prepared = source.with_name(source.stem + "-prepared.onnx")
        try:
            from onnxruntime.quantization.shape_inference import quant_pre_process

            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)  # it dumps files into the cwd
        except Exception as err:  # pre-processing is an optimisation: quantise the graph as exported
            logger.info("quantisation pre-processing skipped (%s)", str(err).splitlines()[0][:200] if str(err) else err)
            prepared = source
        quantize_dynamic(str(prepared), str(target), weight_type=QuantType.QInt8)
        if prepared != source:
            prepared.unlink(missing_ok=True)


@contextlib.contextmanager
def _quiet_loggers(*names: str):
    """Silence the INFO/WARNING chatter of the exporter and the quantiser (errors still show)."""
    loggers = [logging.getLogger(name) if name not in ("", "root") else logging.getLogger() for name in names]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for log, level in zip(loggers, levels, strict=True):
            log.setLevel(level)


# ------------------------------------------------------------------------------------------ inference


def _session(path: Path, threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxTaskModel:
    """An exported task model run by ONNX Runtime, with the interface tasks and ``alad evaluate`` use."""

    training = False

    def __init__(self, session: Any, config: Any, tokenizer: Any, header: dict[str, Any]) -> None:
        self.session = session
        self.config = config
        self.tokenizer = tokenizer
        self.header = header
        self.max_length = int(header.get("max_length", 512))

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        feed = {
            "input_ids": np.ascontiguousarray(input_ids.cpu().numpy().astype(np.int64)),
            "attention_mask": np.ascontiguousarray(attention_mask.cpu().numpy().astype(np.int64)),
        }
        return torch.from_numpy(self.session.run(["logits"], feed)[0])

    def eval(self) -> OnnxTaskModel:
        return self

    def train(self, mode: bool = True) -> OnnxTaskModel:
        return self

    def parameters(self):
        return iter(())

    def num_parameters(self) -> int:
        return int(self.header.get("params_total", 0))

    @classmethod
    def from_folder(cls, folder: str | os.PathLike, threads: int | None = None) -> OnnxTaskModel:
        from transformers import AutoTokenizer

        from alad.models.task_model import TaskModelConfig

        folder = Path(folder)
        header = read_export_header(folder)
        _require_onnx()
        onnx_path = folder / ONNX_FILE
        if not onnx_path.is_file():
            raise ArtefactError(f"{folder} has no {ONNX_FILE}; re-export the run")
        if file_sha256(onnx_path) != header.get("onnx_sha256"):
            raise ArtefactError(f"{onnx_path} does not match the SHA-256 in {EXPORT_FILE}: corrupt; re-export the run")
        config = TaskModelConfig(
            task=header["task"],
            labels=tuple(header["labels"]),
            mode=header.get("mode", "frozen"),
            head_dropout=0.0,
            student_layer=int(header.get("student_layer", -1)),
            source_encoder=str(header.get("student", "")),
        )
        return cls(_session(onnx_path, threads), config, AutoTokenizer.from_pretrained(folder), header)


def session_latency(model: Any, batch_sizes=(1, 32), seq_len: int = 32) -> dict[int, dict[str, Any]]:
    """Latency of an :class:`OnnxTaskModel` on the same fixed random ids as ``task_model_latency``."""
    from alad.evaluation.latency import measure_latency

    vocab = len(model.tokenizer)
    results = {}
    for batch in batch_sizes:
        ids = torch.randint(5, vocab, (batch, seq_len), generator=torch.Generator().manual_seed(0))
        mask = torch.ones_like(ids)
        stats: dict[str, Any] = dict(measure_latency(lambda ids=ids, mask=mask: model(ids, mask)))
        stats.update(batch_size=batch, seq_len=seq_len, per_item_ms=stats["median_ms"] / batch)
        results[batch] = stats
    return results


def _session_model(model: Any, path: Path) -> OnnxTaskModel:
    header = {"max_length": model.max_length}
    return OnnxTaskModel(_session(path), model.config, model.tokenizer, header)


def is_export_folder(path: str | os.PathLike) -> bool:
    return (Path(path) / EXPORT_FILE).is_file()


def read_export_header(folder: Path) -> dict[str, Any]:
    header = read_json(folder / EXPORT_FILE, "export header")
    if not isinstance(header, dict) or header.get("kind") != EXPORT_KIND:
        raise ArtefactError(f"{folder / EXPORT_FILE} is not an alad ONNX export header; re-export the run")
    version, written_by = header.get("format_version"), header.get("alad_version")
    if version != EXPORT_VERSION or written_by != _alad_version():
        raise ArtefactError(
            f"{folder} was exported by alad {written_by} (export format {version}); this is alad {_alad_version()} "
            f"(format {EXPORT_VERSION}): re-export the run with this alad (alad export RUN --out DIR)"
        )
    return header


def load_for_inference(path: str | os.PathLike) -> tuple[Any, Any]:
    """``(model, FinetuneConfig)`` of a fine-tuning run folder or of an ONNX export folder."""
    from alad.finetuning.trainer import FinetuneConfig, load_run
    from alad.io.serialization import config_from_dict

    path = Path(path)
    if not is_export_folder(path):
        return load_run(path)
    model = OnnxTaskModel.from_folder(path)
    saved = model.header.get("finetune_config") or {}
    config = config_from_dict(FinetuneConfig, saved, str(path / EXPORT_FILE)) if saved else None
    if config is None:
        raise ArtefactError(f"{path / EXPORT_FILE} holds no run settings; re-export the run")
    return model, config
