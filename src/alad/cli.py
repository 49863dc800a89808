"""The ``alad`` command line: thin wrappers over the same functions the Python API exposes.

Every option of a run can also come from a YAML or JSON file (``--config run.yaml``, or a run's saved
``finetune_config.json``); options given on the command line override the file, which overrides the
defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import logging
import os
import sys
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from alad.io.serialization import ArtefactError
from alad.recipes.config_files import load_run_file

logger = logging.getLogger("alad")


def _parse_value(text: str, annotation: Any, name: str) -> Any:
    """Parse one option according to its dataclass annotation; 'none' clears optional values."""
    args = typing.get_args(annotation)
    optional = type(None) in args
    if optional and text.lower() in ("none", "null", ""):
        return None
    base = next((a for a in args if a is not type(None)), annotation) if args else annotation
    if typing.get_origin(base) is tuple:
        from alad.alignment.trainer import windows_from_text

        try:
            return windows_from_text(text) if name == "windows" else tuple(int(p) for p in text.split(","))
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from err
    if base is bool:
        if text.lower() not in ("1", "0", "true", "false", "yes", "no"):
            raise argparse.ArgumentTypeError(f"--{name} takes true or false, got {text!r}")
        return text.lower() in ("1", "true", "yes")
    if base in (int, float, str):
        try:
            return base(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"--{name} takes a {base.__name__}, got {text!r}") from err
    return text


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, exclude: Sequence[str] = ()) -> None:
    """One ``--option`` per dataclass field, with its help text and default."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in exclude:
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        flag = "--" + f.name.replace("_", "-")
        parser.add_argument(
            flag,
            dest=f.name,
            default=argparse.SUPPRESS,
            metavar=f.name.upper(),
            type=lambda text, a=hints[f.name], n=f.name: _parse_value(text, a, n),
            help=f"{f.metadata.get('help', '')} (default: {_show(default)})".replace("%", "%%"),  # argparse formats %
        )


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)


def build_config(cls: type, args: argparse.Namespace) -> Any:
    """Defaults, then the ``--config`` file, then explicit command-line options."""
    names = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        from_file = load_run_file(args.config)
        if set(from_file) == {"kind", "config"} and isinstance(from_file["config"], dict):
            from_file = from_file["config"]  # a run's saved settings (finetune_config.json): run them again
        unknown = sorted(set(from_file) - names)
        if unknown:
            raise ValueError(f"{args.config}: unknown options {unknown}; known: {sorted(names)}")
        values.update({k: tuple(v) if isinstance(v, list) else v for k, v in from_file.items()})
    values.update({k: v for k, v in vars(args).items() if k in names})
    return cls(**values)


def _format_saved(format_fn: Any, data: Any, path: Path) -> str:
    """Format a saved summary or metrics file; a file missing keys is reported, not a traceback."""
    try:
        return format_fn(data)
    except (KeyError, TypeError, IndexError, AttributeError) as err:
        raise ArtefactError(
            f"{path} is incomplete or not written by this alad (missing or wrong entry {err}); rerun the "
            "command that wrote it in a new folder"
        ) from err


def _cmd_align(args: argparse.Namespace) -> int:
    from alad.alignment.trainer import SUMMARY_JSON, AlignConfig, align, format_summary

    config = build_config(AlignConfig, args)
    from alad.training import distributed

    summary = align(args.out, config, show_progress=not args.quiet, device=args.device)
    if not distributed.is_main():
        return 0  # several processes (torchrun / accelerate launch): the main one reports
    print(_format_saved(format_summary, summary, Path(args.out) / SUMMARY_JSON))
    print(f"adapters saved under {Path(args.out).resolve()}/w<K>; plot: {Path(args.out) / 'alignment_curves.png'}")
    return 0


def describe(path: str | Path) -> str:
    """Human-readable description of an adapter, an alignment or fine-tuning run, a compressed model or
    an ONNX export, recognised by the file each one writes."""
    path = Path(path)
    kinds = _described_kinds()
    for marker, (_, describe_kind) in kinds.items():
        if (path / marker).is_file():
            return describe_kind(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    known = ", ".join(f"{what} ({marker})" for marker, (what, _) in kinds.items())
    raise ArtefactError(f"{path} is none of what alad info describes: {known}")


def _described_kinds() -> dict[str, tuple[str, Any]]:
    """Marker file -> (what it marks, its describer), in the order they are tried."""
    from alad.adapters import CONFIG_FILE
    from alad.alignment.trainer import SUMMARY_JSON

    return {
        CONFIG_FILE: ("an adapter folder", _describe_adapter),
        SUMMARY_JSON: ("an alignment run", _describe_alignment_run),
        "metrics.json": ("a fine-tuning run", _describe_finetune_run),
        "alad_compression.json": ("a compressed model", _describe_compressed),
        "export.json": ("an ONNX export", _describe_export),
    }


def _describe_adapter(path: Path) -> str:
    from alad.adapters import AlignmentAdapter

    adapter = AlignmentAdapter.from_pretrained(path)
    cfg, meta = adapter.config, adapter.metadata
    options = cfg.describe_type()
    kind = options.pop("adapter_type")
    lines = [
        f"alignment adapter: {path}",
        f"  type: {kind}" + (f" ({', '.join(f'{k}={v}' for k, v in options.items())})" if options else ""),
        f"  window K={cfg.window}, student_dim={cfg.student_dim} -> teacher_dim={cfg.teacher_dim}, "
        f"hidden={cfg.hidden_size}, {cfg.activation}, dropout={cfg.dropout}, format v{cfg.version}",
        f"  parameters: {adapter.num_parameters():,}",
    ]
    for key in ("student", "teacher", "student_layer", "teacher_layer", "corpus", "init", "num_train", "num_val"):
        if key in meta:
            lines.append(f"  {key}: {meta[key]}")
    if meta.get("best"):
        best = meta["best"]
        lines.append(
            f"  best epoch {best['epoch']}: held-out cosine {best['val_cosine']:.4f}, MSE {best['val_mse']:.5f}"
        )
    if "mean_predictor" in meta:
        lines.append(f"  trivial mean-token predictor: cosine {meta['mean_predictor']['cosine']:.4f}")
    return "\n".join(lines)


def _describe_alignment_run(path: Path) -> str:
    from alad.alignment.trainer import SUMMARY_JSON, format_summary
    from alad.io.serialization import read_json

    summary = read_json(path / SUMMARY_JSON, "run summary")
    return f"alignment run: {path}\n\n" + _format_saved(format_summary, summary, path / SUMMARY_JSON)


def _describe_finetune_run(path: Path) -> str:
    from alad.io.serialization import read_json

    metrics = read_json(path / "metrics.json", "run metrics")
    return f"fine-tuning run: {path}\n" + _format_saved(format_metrics, metrics, path / "metrics.json")


def _describe_compressed(path: Path) -> str:
    from alad.compression import read_record

    record = read_record(path) or {}
    keys = ("method", "settings", "kept_layers", "source", "parameters_before", "parameters_after")
    lines = [f"compressed model: {path}"]
    lines += [f"  {key}: {record[key]}" for key in (*keys, "size_bytes_before", "size_bytes_after") if key in record]
    return "\n".join(lines)


def _describe_export(path: Path) -> str:
    from alad.io.serialization import read_json

    header = read_json(path / "export.json", "export header")
    keys = (
        "format",
        "quantize",
        "task",
        "labels",
        "student",
        "has_adapter",
        "adapter_type",
        "alad_version",
        "source_run",
    )
    return "\n".join([f"ONNX export: {path}"] + [f"  {k}: {header.get(k)}" for k in keys])


def _cmd_info(args: argparse.Namespace) -> int:
    print(describe(args.path))
    return 0


def _cmd_finetune(args: argparse.Namespace) -> int:
    from alad.finetuning.trainer import FinetuneConfig, finetune

    config = build_config(FinetuneConfig, args)
    if args.command == "finetune-teacher":
        model = (args.teacher_model or "").strip()
        if not model and not config.init_from:
            raise ValueError(
                "--teacher is missing or empty; name the model: a packaged name, a model folder or a hub id"
            )
        config = dataclasses.replace(config, student=model or config.student, adapter=None, teacher=None, mode="joint")
    result = finetune(args.out, config, show_progress=not args.quiet, device=args.device)
    from alad.training import distributed

    if not distributed.is_main():
        return 0  # several processes (torchrun / accelerate launch): the main one reports
    print(_format_saved(format_metrics, result, Path(args.out) / "metrics.json"))
    print(f"model saved to {Path(args.out) / 'model'}")
    return 0


def format_metrics(result: dict[str, Any]) -> str:
    """Headline metrics, parameters and (where measured) latency of one fine-tuning/evaluation."""
    from alad.tasks import get_task

    lines = [
        f"{result['task']} ({result['mode']}) on {result['split']}: "
        + ", ".join(f"{k} {v:.2f}" for k, v in result["headline"].items()),
        f"parameters: {result['params_total']:,} total, {result['params_trained']:,} trained",
    ]
    if "latency" in result:
        lines.append(
            "CPU latency (median): "
            + ", ".join(f"batch {b}: {v['median_ms']:.1f} ms" for b, v in result["latency"].items())
        )
    lines.append(get_task(result["task"]).format_details(result["metrics"]))
    v1 = result.get("squad_v1_eval")
    if v1:
        lines.append(
            f"SQuAD 1.1 dev articles not in SQuAD 2.0 dev ({v1['articles']} articles, {v1['total']} questions; "
            f"official 1.1 scoring, best non-null span): EM {v1['exact']:.2f}, F1 {v1['f1']:.2f}"
        )
    return "\n".join(lines)


def _cmd_evaluate(args: argparse.Namespace) -> int:

    from alad.export import OnnxTaskModel, load_for_inference
    from alad.export.onnx import session_latency
    from alad.finetuning.trainer import evaluate_task_model, headline, load_splits, task_model_latency
    from alad.tasks import get_task

    model, config = load_for_inference(args.run)  # a run folder, or an ONNX export folder (onnxruntime)
    config = dataclasses.replace(config, eval_split=args.split, max_eval=args.max_eval)
    if args.squad_v1_eval is not None:  # QA: the SQuAD 1.1 evaluation set too (or not), whatever the run said
        config = dataclasses.replace(config, squad_v1_eval=args.squad_v1_eval)
    splits = load_splits(config)
    task = get_task(config.task)
    task.check_inputs(model, [*splits.eval, *(x for s in splits.extra_eval.values() for x in s)], config)
    metrics = evaluate_task_model(model, splits.eval, config, show_progress=not args.quiet)
    extra = {
        name: task.evaluate_extra(name, model, items, config, show_progress=not args.quiet)
        for name, items in splits.extra_eval.items()  # QA with squad_v1_eval: the SQuAD 1.1 set too
    }
    result = {
        "task": config.task,
        "mode": config.mode,
        "split": args.split,
        "metrics": metrics,
        "headline": headline(metrics, config.task),
        "params_total": model.num_parameters(),
        "params_trained": 0,
        "latency": session_latency(model) if isinstance(model, OnnxTaskModel) else task_model_latency(model),
        **extra,
    }
    print(format_metrics(result))
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from alad.data.readers import QAExample, TaggedSentence
    from alad.export import load_for_inference
    from alad.finetuning.trainer import predict_answers, predict_tags
    from alad.tasks import words_from_text

    model, config = load_for_inference(args.run)  # a run folder, or an ONNX export folder (onnxruntime)
    if config.task == "qa":
        if not args.question or not args.context:
            raise ValueError("a QA model needs --question and --context")
        example = QAExample(
            id="q", title="", context=args.context, question=args.question, answers=[], is_impossible=True
        )
        predictions, na_scores = predict_answers(model, [example], config)
        answer = predictions["q"] if na_scores["q"] <= 0 else ""
        print(answer or "(no answer)", f"[no-answer score {na_scores['q']:.2f}]")
        return 0
    if not args.text:
        raise ValueError("pass the sentence to tag, e.g. alad predict RUN 'Angela Merkel visited Paris .'")
    words = words_from_text(args.text)
    tags = predict_tags(model, [TaggedSentence(words, ["O"] * len(words))])[0]
    print(" ".join(f"{w}/{t}" for w, t in zip(words, tags, strict=True)))
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from alad.io.run_folder import check_path_name
    from alad.recipes.report import format_results
    from alad.recipes.runner import check_recipe, load_run_config, run_recipe

    wanted = [name.strip() for name in args.pairs.split(",") if name.strip()] if args.pairs else None
    config = load_run_config(args.config, args.profile, wanted)
    check_recipe(config)  # every setting and pair name, before the output folder is touched
    if not args.out:
        check_path_name(args.profile, "profile name")
    out = args.out or f"runs/{Path(args.config).stem}-{args.profile}"
    command = f"alad run {args.config} --profile {args.profile}"
    command += (f" --pairs {args.pairs}" if args.pairs else "") + (f" --out {args.out}" if args.out else "")
    command += f" --device {args.device}" if args.device != "cpu" else ""
    command += f" --labels {args.labels}" if args.labels else ""
    command += " --report-only" if args.report_only else ""
    command += f" --jobs {args.jobs}" if args.jobs != 1 else ""
    results = run_recipe(
        config,
        out,
        show_progress=not args.quiet,
        command=command,
        device=args.device,
        labels=args.labels,
        report_only=args.report_only,
        jobs=args.jobs,
    )
    print(format_results(results))
    print(f"results: {Path(out) / 'results.md'}, {Path(out) / 'results.json'}, plots in {out}")
    return 0


def _cmd_compress(args: argparse.Namespace) -> int:
    from alad.compression import METHODS, get_method, read_record

    method = get_method(args.method)
    foreign = [
        flag
        for name, other in METHODS.items()
        if name != method.name
        for flag in _method_flags(other)
        if flag.lstrip("-").replace("-", "_") in vars(args)
    ]
    if foreign:
        raise ValueError(f"{', '.join(foreign)} does not apply to --method {method.name}")
    settings = method.validate(method.settings_from_args(args))
    path = method.run(args.model, args.out, settings)
    record = read_record(path) or {}
    before, after = record.get("parameters_before"), record.get("parameters_after")
    sizes = f" ({before:,} -> {after:,} parameters)" if isinstance(before, int) and isinstance(after, int) else ""
    print(f"{method.describe(settings, args.model, path)}{sizes}")
    return 0


def _method_flags(method: Any) -> list[str]:
    probe = argparse.ArgumentParser(add_help=False)
    method.add_arguments(probe)
    return [a.option_strings[0] for a in probe._actions]


def _cmd_export(args: argparse.Namespace) -> int:
    from alad.export import export_onnx

    if args.format != "onnx":
        raise ValueError(f"--format {args.format!r} is not supported; alad exports onnx")
    header = export_onnx(
        args.run, args.out, quantize=args.quantize, parity_items=args.parity_items, parity_data=args.parity_data
    )
    from alad.io.serialization import read_json

    checks = read_json(Path(args.out) / "parity.json", "parity check")
    line = ", ".join(
        f"{name}: max logit diff {c['max_abs_logit_diff']:.2g}, "
        f"predictions agree on {100 * c['prediction_agreement']:.2f}%"
        for name, c in checks.items()
        if isinstance(c, dict)
    )
    print(
        f"exported {args.run} ({header['task']}, {header['quantize'] or 'fp32'}) to {args.out}; "
        f"parity vs PyTorch: {line}"
    )
    for note in header.get("notes", []):
        print(f"note: {note}")
    return 0


def _add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        default="cpu",
        help="where to train: cpu, cuda, cuda:N or auto (a GPU where torch sees one); not part of the run's "
        "settings, so a run may resume elsewhere (default: cpu)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alad", description="Alignment Adapters for compressed encoders.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)
    for add_command in (
        _add_align_command,
        _add_finetune_teacher_command,
        _add_finetune_command,
        _add_evaluate_command,
        _add_predict_command,
        _add_run_command,
        _add_compress_command,
        _add_export_command,
        _add_info_command,
    ):
        add_command(sub)
    return parser


def _add_align_command(sub) -> None:
    from alad.alignment.trainer import AlignConfig

    p_align = sub.add_parser(
        "align",
        help="train alignment adapters (stage 1; stage 2 with --init)",
        description="Align a student encoder to a teacher on unlabelled text, for several window sizes at once.",
    )
    p_align.add_argument("--out", default="runs/align", help="run folder (default: runs/align)")
    p_align.add_argument("--config", help="YAML or JSON file of options (overridden by flags)")
    p_align.add_argument("--quiet", action="store_true", help="no progress bars")
    add_config_arguments(p_align, AlignConfig)
    _add_device_argument(p_align)
    p_align.set_defaults(func=_cmd_align)


def _add_finetune_teacher_command(sub) -> None:
    from alad.finetuning.trainer import FinetuneConfig

    p_teacher = sub.add_parser("finetune-teacher", help="stage 0: fine-tune the teacher on the task")
    p_teacher.add_argument(
        "--teacher", dest="teacher_model", help="teacher model name or folder (with --init-from: that run's encoder)"
    )
    p_teacher.add_argument("--out", required=True, help="run folder of the fine-tuned teacher")
    p_teacher.add_argument("--config", help="YAML or JSON file of options")
    p_teacher.add_argument("--quiet", action="store_true", help="no progress bars")
    add_config_arguments(p_teacher, FinetuneConfig, exclude=("student", "adapter", "teacher", "mode", "head_init"))
    _add_device_argument(p_teacher)
    p_teacher.set_defaults(func=_cmd_finetune)


def _add_finetune_command(sub) -> None:
    from alad.finetuning.trainer import FinetuneConfig

    p_ft = sub.add_parser("finetune", help="stage 3: fine-tune student (+ adapter) + head in a mode")
    p_ft.add_argument("--out", required=True, help="run folder")
    p_ft.add_argument("--config", help="YAML or JSON file of options")
    p_ft.add_argument("--quiet", action="store_true", help="no progress bars")
    add_config_arguments(p_ft, FinetuneConfig)
    _add_device_argument(p_ft)
    p_ft.set_defaults(func=_cmd_finetune)


def _add_evaluate_command(sub) -> None:
    p_eval = sub.add_parser("evaluate", help="metrics, per-type scores, params and latency of a run")
    p_eval.add_argument("run", help="fine-tuning run folder")
    p_eval.add_argument("--split", default="test", help="train, dev or test (default: test)")
    p_eval.add_argument("--max-eval", type=int, default=None, help="seeded subset size (default: all)")
    p_eval.add_argument(
        "--squad-v1-eval",
        default=None,
        type=lambda text: _parse_value(text, bool, "squad-v1-eval"),
        metavar="BOOL",
        help="qa: also score the SQuAD 1.1 dev articles not in SQuAD 2.0 dev (official 1.1 scoring); default: as the "
        "run was configured",
    )
    p_eval.add_argument("--quiet", action="store_true", help="no progress bars")
    p_eval.set_defaults(func=_cmd_evaluate)


def _add_predict_command(sub) -> None:
    p_pred = sub.add_parser("predict", help="tag a sentence or answer a question with a trained run")
    p_pred.add_argument("run", help="fine-tuning run folder")
    p_pred.add_argument("text", nargs="?", help="sentence to tag (words separated by spaces)")
    p_pred.add_argument("--question", help="qa: the question")
    p_pred.add_argument("--context", help="qa: the paragraph")
    p_pred.set_defaults(func=_cmd_predict)


def _add_run_command(sub) -> None:
    p_run = sub.add_parser("run", help="the whole recipe with baselines and ablation from a YAML config")
    p_run.add_argument("config", help="e.g. configs/ner_conll03.yaml")
    p_run.add_argument("--profile", default="quick", help="quick or full (default: quick)")
    p_run.add_argument("--out", help="run folder (default: runs/<config>-<profile>)")
    p_run.add_argument("--pairs", help="only these student-teacher pairs of the config, by name (comma-separated)")
    p_run.add_argument(
        "--labels",
        help="label budgets of stage 3 and the baselines, e.g. 100,300,1000,2000 or all; the teacher and the "
        "alignment are reused across budgets (default: the config's labels, else its max_train)",
    )
    p_run.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: write the results of the finished stages and rows, listing the rows not run yet",
    )
    p_run.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="train the rows of stage 3 and the baselines in this many worker processes, sharing the torch "
        "threads (2 on a 2-core CPU: one thread per row); results as with 1 up to float rounding (default: 1)",
    )
    p_run.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_device_argument(p_run)
    p_run.set_defaults(func=_cmd_run)


def _add_compress_command(sub) -> None:
    from alad.compression import METHODS, _import_methods

    _import_methods()
    p_cmp = sub.add_parser(
        "compress",
        help="compress an encoder (layers, int8, pruning) into a new, loadable model folder",
        description="Write a compressed copy of an encoder with a record of what was done (alad_compression.json); "
        "every recipe loads it as a student. Methods: "
        + "; ".join(f"{name}: {method.help}" for name, method in METHODS.items()),
    )
    p_cmp.add_argument("--model", required=True, help="model name or folder")
    p_cmp.add_argument(
        "--method", default="layers", choices=sorted(METHODS), help="compression method (default: layers)"
    )
    p_cmp.add_argument("--out", required=True, help="folder of the new model")
    for method in METHODS.values():
        method.add_arguments(p_cmp)
    p_cmp.set_defaults(func=_cmd_compress)


def _add_export_command(sub) -> None:
    p_exp = sub.add_parser(
        "export",
        help="export a fine-tuned run (student + adapter + head) as one ONNX graph, with tokenizer and labels",
        description="Write RUN's task model as one ONNX graph (input_ids, attention_mask -> logits; dynamic batch and "
        "length) with its tokenizer, labels.json and a parity check against PyTorch (parity.json). alad predict and "
        "alad evaluate run the folder with onnxruntime.",
    )
    p_exp.add_argument("run", help="finished fine-tuning run folder")
    p_exp.add_argument("--out", required=True, help="new folder of the export")
    p_exp.add_argument("--format", default="onnx", help="onnx (default: onnx)")
    p_exp.add_argument("--quantize", choices=["int8"], default=None, help="int8: ONNX Runtime dynamic quantisation")
    p_exp.add_argument("--parity-items", type=int, default=200, help="evaluation items of the parity check (200)")
    p_exp.add_argument("--parity-data", default=None, help="data of the parity check (default: the run's data)")
    p_exp.set_defaults(func=_cmd_export)


def _add_info_command(sub) -> None:
    p_info = sub.add_parser("info", help="describe an adapter, an alignment run or a fine-tuning run folder")
    p_info.add_argument("path")
    p_info.set_defaults(func=_cmd_info)


_WRITE_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS}
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def user_error(err: BaseException) -> str | None:
    """One line naming the problem and the fix for a known kind of bad input; None for anything else.

    The one place that turns errors into messages: validation and artefact errors, missing files,
    folders alad may not write, a full disk, unreadable config files.
    """
    if isinstance(err, OSError) and not isinstance(err, FileNotFoundError | FileExistsError):
        code = err.errno
        where = f" ({err.filename})" if err.filename else ""
        own = err.strerror if err.strerror and code and err.strerror != os.strerror(code) else None
        if code in _FULL_ERRNOS:
            text = own or f"no space left on the disk{where}"
            return _one_line(f"{text}; free space or choose another --out / --cache-dir")
        if code in _WRITE_ERRNOS or isinstance(err, PermissionError):
            text = own or f"permission denied{where}"
            return _one_line(f"{text}; choose a writable --out / --cache-dir or fix the folder's permissions")
        if code in (errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG):
            return _one_line(f"{own or os.strerror(code)}{where}; check the path")
        if own is None and code is not None:
            return None  # an unexpected OS error: keep the traceback
    if isinstance(err, RuntimeError) and not isinstance(err, NotImplementedError):
        text = str(err).splitlines()[0] if str(err) else type(err).__name__
        if "out of memory" in text.lower():
            return _one_line(f"{text}; lower --batch-size (finetune) or --batch-tokens (align), or use --device cpu")
        if not _raised_by_alad(err):
            return None  # a RuntimeError from inside torch or transformers is a bug to see, with its traceback
        return _one_line(text)
    return _one_line(str(err) or type(err).__name__)


def _raised_by_alad(err: BaseException) -> bool:
    """Whether ``err`` was raised by alad's own code (its last traceback frame is in this package)."""
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and Path(tb.tb_frame.f_code.co_filename).resolve().parent == Path(__file__).resolve().parent


def _one_line(text: str) -> str:
    return "; ".join(part.strip() for part in text.strip().splitlines() if part.strip())


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        _check_processes(args.command)
        return args.func(args)
    except (ValueError, OSError, ArtefactError, RuntimeError, NotImplementedError) as err:
        message = user_error(err)
        if message is None:
            raise  # not a known kind of bad input: a genuine bug keeps its traceback
        print(f"alad {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"alad {args.command}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    finally:
        from alad.training import distributed

        distributed.shutdown()


MULTI_PROCESS_COMMANDS = ("align", "finetune", "finetune-teacher")


def _check_processes(command: str) -> None:
    """Several processes (torchrun / accelerate launch) only for the commands that share the work."""
    from alad.training.distributed import env_world_size

    world = env_world_size()
    if world > 1 and command not in MULTI_PROCESS_COMMANDS:
        raise ValueError(
            f"alad {command} runs as one process, but {world} were started (WORLD_SIZE={world}); several processes "
            f"are supported by: {', '.join(MULTI_PROCESS_COMMANDS)}. Run it without torchrun / accelerate launch"
        )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
