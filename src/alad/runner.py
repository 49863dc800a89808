"""The whole recipe in one command, with baselines and ablation: ``alad run CONFIG --profile quick``.

For each student-teacher pair of the config: stage 0 fine-tunes the teacher on the task (saved
once per task, data and settings under ``teachers_dir`` and reused), stage 1 aligns the student to
that teacher on unlabelled corpus text, stage 2 continues alignment on the task's training text,
and stage 3 fine-tunes in every configured mode and window. Beside them, with the same data,
budget and seed, run the baselines (the student alone, frozen + head and fully fine-tuned), the
teacher (upper bound) and a random-init adapter of the same shape trained the same way. Every stage
writes its own folder and a finished one is reused, so an interrupted run resumes stage by stage.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from alad.adapter import AdapterConfig, AlignmentAdapter
from alad.alignment import AlignConfig, align, alignment_cosine, format_summary
from alad.cache import EmbeddingCache
from alad.finetuning import (
    METRICS,
    MODEL_DIR,
    FinetuneConfig,
    finetune,
    headline,
    load_splits,
    main_metric,
    task_model_latency,
)
from alad.models import load_encoder, resolve_device
from alad.readers import TaggedSentence, question_context_pairs
from alad.run_folder import check_path_name
from alad.serialization import read_json, write_json_atomic, write_text_atomic

logger = logging.getLogger(__name__)

_FINETUNE_FIELDS = {f.name for f in dataclasses.fields(FinetuneConfig)}
_RUN_FIELDS = {
    "task",
    "pairs",
    "windows",
    "modes",
    "profiles",
    "corpus",
    "stage1",
    "stage2",
    "finetune",
    "teacher_finetune",
    "teachers_dir",
    "name",
    "description",
    "cosine_texts",
    "latency_seq_len",
}


def load_run_config(path: str | os.PathLike, profile: str, pairs: Sequence[str] | None = None) -> dict[str, Any]:
    """Read a YAML/JSON recipe and merge the chosen profile's overrides into it.

    ``pairs`` keeps only the named student-teacher pairs, looked up in the profile's list and then in
    the recipe's own, so a pair a profile leaves out (for CPU time, say) can still be run with it.
    """
    from alad.cli import load_run_file

    raw = load_run_file(path)
    unknown = sorted(set(raw) - _RUN_FIELDS - _FINETUNE_FIELDS)
    if unknown:
        raise ValueError(f"{path}: unknown keys {unknown}")
    profiles = raw.pop("profiles", {}) or {}
    if profile not in profiles:
        raise ValueError(f"{path} has no profile {profile!r}; it has {sorted(profiles)}")
    config = _merge(raw, profiles[profile])
    config["profile"] = profile
    config.setdefault("windows", [3])
    config.setdefault("modes", ["frozen", "joint", "head-only", "teacher-head"])
    if pairs is not None:
        available = {p.get("name"): p for p in (raw.get("pairs") or [])}
        available.update({p.get("name"): p for p in (config.get("pairs") or [])})
        missing = [name for name in pairs if name not in available]
        if missing:
            raise ValueError(f"{path} has no pair named {missing}; its pairs are {sorted(map(str, available))}")
        config["pairs"] = [available[name] for name in pairs]
    if not config.get("pairs"):
        raise ValueError(f"{path} names no student-teacher pairs")
    return config


def _merge(base: dict, override: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in Path(str(text)).name)[:48]


def _digest(obj: Any) -> str:
    return hashlib.blake2b(json.dumps(obj, sort_keys=True, default=str).encode(), digest_size=6).hexdigest()


def _finetune_config(config: dict, **fields: Any) -> FinetuneConfig:
    values = {k: v for k, v in config.items() if k in _FINETUNE_FIELDS}
    values.update(config.get("finetune") or {})
    values.update(fields)
    return FinetuneConfig(**values)


def resolve_student(pair: dict, models_dir: Path) -> str:
    """The student's model folder or name; ``{compress: NAME, keep_layers: [..]}`` cuts layers once."""
    student = pair["student"]
    if isinstance(student, str):
        return student
    from alad.compress import drop_layers

    keep = [int(k) for k in student["keep_layers"]]
    target = models_dir / f"{_slug(student['compress'])}-layers{''.join(map(str, keep))}"
    return str(drop_layers(student["compress"], keep, target))


def _teacher_run(
    config: dict, pair: dict, teachers_dir: Path, show_progress: bool, device: str = "cpu"
) -> tuple[Path, dict]:
    """Stage 0: the task-fine-tuned teacher, shared by every run with the same task, data and settings."""
    if pair.get("teacher_run"):
        run = Path(pair["teacher_run"])
        return run, read_json(run / METRICS, "teacher metrics (pass a finished fine-tuning run)")
    settings = dict(config.get("teacher_finetune") or {})
    ft = _finetune_config(config, student=pair["teacher"], adapter=None, mode="joint", **settings)
    # Key on the settings that differ from the defaults, so a new option with a default keeps old teachers valid.
    defaults = dataclasses.asdict(FinetuneConfig())
    settings_key = {k: v for k, v in dataclasses.asdict(ft).items() if v != defaults[k]}
    run = teachers_dir / f"{config['task']}-{_slug(pair['teacher'])}-{_digest(settings_key)}"
    logger.info("stage 0: teacher %s fine-tuned on %s -> %s", pair["teacher"], config["task"], run)
    return run, finetune(run, ft, show_progress=show_progress, device=device)


def _texts_of(items: list) -> list:
    """The task's own inputs as alignment texts: sentences, or (question, context) pairs for QA.

    QA pairs are aligned as the QA model encodes them, question and context in one input: a
    context encoded alone lacks the question-conditioned states the teacher's span head reads.
    """
    if items and isinstance(items[0], TaggedSentence):
        return [" ".join(s.tokens) for s in items]
    return question_context_pairs(items)


def _row(name: str, kind: str, result: dict, task: str, model_dir: Path, latency_seq_len: int, **extra) -> dict:
    from alad.task_models import AladTaskModel

    model = AladTaskModel.from_pretrained(model_dir)
    latency = task_model_latency(model, latency_seq_len)
    return {
        "name": name,
        "kind": kind,
        "mode": result.get("mode"),
        **headline(result["metrics"], task),
        "main": headline(result["metrics"], task)[main_metric(task)],
        "params": result["params_total"],
        "params_trained": result["params_trained"],
        "latency_ms_b1": latency[1]["median_ms"],
        "latency_ms_b32": latency[32]["median_ms"],
        "train_seconds": result.get("train_seconds"),
        **({"no_answer_baseline": result["metrics"]["no_answer_baseline"]} if task == "qa" else {}),
        **extra,
    }


def machine_info(device: str = "cpu") -> str:
    """Where the numbers were measured, for the results table."""
    import platform

    trained_on = resolve_device(device)
    gpu = f"; trained on {torch.cuda.get_device_name(trained_on)}" if trained_on.type == "cuda" else ""
    return (
        f"{platform.machine()} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads; "
        f"Python {platform.python_version()}, torch {torch.__version__}{gpu}"
    )


def run_recipe(
    config: dict,
    out_dir: str | os.PathLike,
    show_progress: bool = True,
    command: str | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Execute every stage, baseline and ablation of ``config``; write results.json, .md and plots.

    ``device`` trains (and embeds) there; latency is always measured on the CPU.
    """
    resolve_device(device)  # a wrong device fails before anything is written
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "run_config.json", config)
    task = config["task"]
    teachers_dir = Path(config.get("teachers_dir") or out.parent / "teachers")
    seq_len = int(config.get("latency_seq_len", 32))
    splits = load_splits(_finetune_config(config))
    all_rows, pairs_out = [], []
    for pair in config["pairs"]:
        rows, pair_summary = _run_pair(config, pair, out, splits, teachers_dir, seq_len, show_progress, device)
        pairs_out.append(pair_summary)
        all_rows.extend({**r, "pair": pair_summary["name"]} for r in rows)

    results = {
        "task": task,
        "profile": config["profile"],
        "config": config,
        "data": splits.info,
        "command": command or f"alad run <config> --profile {config['profile']}",
        "machine": machine_info(device),
        "pairs": pairs_out,
        "rows": all_rows,
    }
    write_json_atomic(out / "results.json", results)
    write_text_atomic(out / "results.md", format_results(results))
    plot_results(results, out)
    return results


def _run_pair(
    config: dict,
    pair: dict,
    out: Path,
    splits,
    teachers_dir: Path,
    seq_len: int,
    show_progress: bool,
    device: str = "cpu",
) -> tuple[list[dict], dict]:
    """Stages 0-3, baselines and the random-init ablation for one student-teacher pair."""
    task = config["task"]
    name = pair.get("name") or f"{_slug(str(pair['student']))}-to-{_slug(pair['teacher'])}"
    pair_dir = out / check_path_name(name, "pair name")  # never a path: '../x' would write above out
    student = resolve_student(pair, out.parent / "models")
    teacher_dir, teacher_result = _teacher_run(config, pair, teachers_dir, show_progress, device)
    teacher_encoder_dir = teacher_dir / MODEL_DIR / "encoder"
    rows = [
        _row("teacher (fine-tuned, upper bound)", "teacher", teacher_result, task, teacher_dir / MODEL_DIR, seq_len)
    ]

    def run_ft(label: str, kind: str, sub: str, adapter_dir: Path | None, mode: str, **extra) -> dict:
        ft = _finetune_config(
            config,
            student=student,
            adapter=str(adapter_dir) if adapter_dir else None,
            mode=mode,
            teacher=str(teacher_dir),
        )
        result = finetune(pair_dir / sub, ft, splits=splits, show_progress=show_progress, device=device)
        row = _row(label, kind, result, task, pair_dir / sub / MODEL_DIR, seq_len, **extra)
        rows.append(row)
        return row

    run_ft("student alone, frozen + head", "student", "student-frozen", None, "frozen")
    run_ft("student alone, full fine-tuning", "student", "student-joint", None, "joint")

    stage1 = dict(config.get("stage1") or {})
    stage2 = dict(config.get("stage2") or {})
    windows = tuple(int(w) for w in config["windows"])
    align1 = AlignConfig(
        student=student,
        teacher=str(teacher_encoder_dir),
        corpus=config.get("corpus"),
        windows=windows,
        seed=config.get("seed", 0),
        **stage1,
    )
    summary1 = align(pair_dir / "stage1", align1, show_progress=show_progress, device=device)
    print(f"[{name}] stage 1, task-independent alignment:\n{format_summary(summary1)}")
    texts = _texts_of(splits.train)
    align2 = AlignConfig(
        student=student,
        teacher=str(teacher_encoder_dir),
        windows=windows,
        init=str(pair_dir / "stage1"),
        max_texts=None,
        seed=config.get("seed", 0),
        corpus=f"task:{config['task']}:{config.get('data')}",
        **stage2,
    )
    summary2 = align(pair_dir / "stage2", align2, texts=texts, show_progress=show_progress, device=device)
    print(f"[{name}] stage 2, continual alignment on the task's text:\n{format_summary(summary2)}")

    teacher_emb = _cosine_reference(config, splits, teacher_encoder_dir, show_progress)
    for window in windows:
        adapter_dir = pair_dir / "stage2" / f"w{window}"
        random_dir = pair_dir / f"random-w{window}"
        if not (random_dir / "adapter_config.json").is_file():
            aligned = AlignmentAdapter.from_pretrained(adapter_dir)
            torch.manual_seed(config.get("seed", 0) + 7919)
            AlignmentAdapter(AdapterConfig(**dataclasses.asdict(aligned.config))).save_pretrained(
                random_dir, metadata={"random_init": True}
            )
        for mode in config["modes"]:
            row = run_ft(f"AlAd w{window}, {mode}", "alad", f"alad-w{window}-{mode}", adapter_dir, mode, window=window)
            row["cosine_to_teacher"] = _cosine(pair_dir / f"alad-w{window}-{mode}", teacher_emb)
        for mode in ("frozen", "joint"):
            if mode in config["modes"]:
                row = run_ft(
                    f"random-init adapter w{window}, {mode}",
                    "random",
                    f"random-w{window}-{mode}",
                    random_dir,
                    mode,
                    window=window,
                )
                row["cosine_to_teacher"] = _cosine(pair_dir / f"random-w{window}-{mode}", teacher_emb)
    return rows, _summarise_pair(name, student, pair["teacher"], rows, summary2, task)


def _cosine_reference(config, splits, teacher_encoder_dir: Path, show_progress: bool):
    """Teacher states on (a bounded number of) evaluation texts, for cosine-to-teacher columns."""
    texts = _texts_of(splits.eval)[: int(config.get("cosine_texts", 300))]
    teacher = load_encoder(teacher_encoder_dir)
    from alad.tokenizer_alignment import segment_texts

    segments = segment_texts(texts, [(teacher.tokenizer, teacher.max_length)])
    return EmbeddingCache().embed(teacher, segments, show_progress=show_progress)


def _cosine(run_dir: Path, teacher_emb) -> float:
    from alad.task_models import AladTaskModel

    model = AladTaskModel.from_pretrained(run_dir / MODEL_DIR)
    return alignment_cosine(model.encoder, model.tokenizer, model.adapter, teacher_emb)


def _summarise_pair(name: str, student: str, teacher: str, rows: list[dict], summary2: dict, task: str) -> dict:
    by_name = {r["name"]: r for r in rows}
    teacher_score = by_name["teacher (fine-tuned, upper bound)"]["main"]
    baseline = {
        "frozen": by_name["student alone, frozen + head"]["main"],
        "joint": by_name["student alone, full fine-tuning"]["main"],
    }
    warnings = []
    if teacher_score <= baseline["joint"]:
        warnings.append(
            f"TEACHER DOES NOT BEAT THE STUDENT: teacher {teacher_score:.2f} <= fully fine-tuned student "
            f"{baseline['joint']:.2f}; no adapter can help here"
        )
    no_answer = by_name["teacher (fine-tuned, upper bound)"].get("no_answer_baseline")
    if task == "qa" and no_answer and teacher_score <= no_answer["f1"]:
        warnings.append(
            f"TEACHER DOES NOT BEAT ALWAYS ANSWERING 'NO ANSWER': teacher F1 {teacher_score:.2f} <= "
            f"{no_answer['f1']:.2f}; it needs more training data or steps before it can teach spans"
        )
    for row in rows:
        if row["kind"] not in ("alad", "random"):
            continue
        matching = baseline["joint"] if row["mode"] == "joint" else baseline["frozen"]
        row["student_same_mode"] = matching
        gap = teacher_score - matching
        row["recovery"] = (row["main"] - matching) / gap if gap > 0 else None
        if row["mode"] == "teacher-head":
            row["share_of_teacher"] = row["main"] / teacher_score if teacher_score else None
        if row["kind"] == "alad":
            twin = by_name.get(f"random-init adapter w{row['window']}, {row['mode']}")
            row["gain_over_random"] = row["main"] - twin["main"] if twin else None
    for warning in warnings:
        logger.warning(warning)
        print(f"!!! {name}: {warning}")
    return {
        "name": name,
        "student": student,
        "teacher": teacher,
        "teacher_score": teacher_score,
        "student_scores": baseline,
        "warnings": warnings,
        "alignment_cosine": {w: r["val_cosine"] for w, r in summary2["windows"].items()},
    }


def _count(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else (f"{n / 1e3:.1f}K" if n >= 1e3 else str(n))


def format_results(results: dict) -> str:
    """Markdown: one table per pair, the metric beside params, latency, cosine and recovery."""
    task = results["task"]
    metric_cols = {
        "pos": ["accuracy", "macro_f1"],
        "ner": ["micro_f1", "macro_f1"],
        "qa": ["exact", "f1", "HasAns_f1", "NoAns_f1", "best_f1"],
    }
    cols = metric_cols[task]
    info = results["data"]
    stage1, stage2 = results["config"].get("stage1") or {}, results["config"].get("stage2") or {}
    lines = [
        f"# {task.upper()} results, profile {results['profile']}",
        "",
        f"Train: {info['train_items']} of {info['train_available']} items from `{info['train_file']}`; "
        f"evaluated on {info['eval_items']} of {info['eval_available']} from `{info['eval_file']}`.  ",
        f"Alignment: stage 1 on {stage1.get('max_texts', 'default')} corpus sentences "
        f"({stage1.get('epochs', 'default')} epochs), stage 2 on the training text ({stage2.get('epochs', 'default')} "
        f"epochs); task fine-tuning {results['config'].get('epochs')} epochs, "
        f"seed {results['config'].get('seed', 0)}.  ",
        f"Command: `{results.get('command', '')}`  ",
        f"Machine: {results.get('machine', '')}",
    ]
    if "article_split" in info:
        split = info["article_split"]
        lines.append(f"Article split (seeded): {json.dumps({k: v for k, v in split.items() if 'titles' not in k})}")
    baseline = next((r.get("no_answer_baseline") for r in results["rows"] if r.get("no_answer_baseline")), None)
    if baseline:
        lines.append(
            f"Always-no-answer baseline on this evaluation set: EM {baseline['exact']:.2f}, F1 {baseline['f1']:.2f}. "
            "F1 near it means a model that mostly answers 'no answer'; HasAns_f1 shows whether it finds spans."
        )
    for pair in results["pairs"]:
        lines += ["", f"## {pair['name']}: {pair['student']} -> {pair['teacher']}", ""]
        for warning in pair["warnings"]:
            lines += [f"**WARNING: {warning}**", ""]
        lines.append(
            "| row | " + " | ".join(cols) + " | params | trained | ms b1 | ms b32 | cos to teacher | "
            "recovery | vs random | share of teacher |"
        )
        lines.append("|---" * (len(cols) + 9) + "|")
        for row in (r for r in results["rows"] if r["pair"] == pair["name"]):

            def fmt(v, pct=False):
                if v is None:
                    return ""
                return f"{100 * v:.0f}%" if pct else (f"{v:.2f}" if isinstance(v, float) else str(v))

            lines.append(
                f"| {row['name']} | "
                + " | ".join(f"{row[c]:.2f}" for c in cols)
                + f" | {_count(row['params'])} | {_count(row['params_trained'])} | {row['latency_ms_b1']:.1f} | "
                f"{row['latency_ms_b32']:.1f} | {fmt(row.get('cosine_to_teacher'))} | "
                f"{fmt(row.get('recovery'), True)} | {fmt(row.get('gain_over_random'))} | "
                f"{fmt(row.get('share_of_teacher'), True)} |"
            )
    lines += [
        "",
        "recovery = (AlAd - student in the same mode) / (teacher - student in the same mode); "
        "vs random = AlAd minus the random-init adapter trained the same way (points); share of teacher "
        "= teacher-head score / teacher score (no task labels used for the student). Latency: CPU, median, "
        f"{results['config'].get('latency_seq_len', 32)} tokens per sequence.",
    ]
    return "\n".join(lines) + "\n"


def _short_label(row: dict) -> str:
    if row["kind"] == "teacher":
        return "teacher"
    prefix = {"student": "student", "alad": "AlAd", "random": "random"}[row["kind"]]
    return f"{prefix} {row.get('mode') or ''}".strip()


def plot_results(results: dict, out: Path) -> None:
    """Metric against parameters and against batch-1 latency: one panel per pair, one marker per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from alad.serialization import atomic_write

    metric = main_metric(results["task"])
    styles = {
        "teacher": ("*", "tab:red"),
        "student": ("s", "tab:grey"),
        "alad": ("o", "tab:blue"),
        "random": ("x", "tab:orange"),
    }
    pairs = [p["name"] for p in results["pairs"]]
    for x_key, x_label, file in (
        ("params", "parameters (millions)", "metric_vs_params.png"),
        ("latency_ms_b1", "CPU latency, batch 1 (ms)", "metric_vs_latency.png"),
    ):
        fig, axes = plt.subplots(1, len(pairs), figsize=(6 * len(pairs), 4.5), squeeze=False)
        for ax, pair in zip(axes[0], pairs, strict=True):
            for row in (r for r in results["rows"] if r["pair"] == pair):
                x = row[x_key] / 1e6 if x_key == "params" else row[x_key]
                marker, color = styles[row["kind"]]
                ax.scatter(x, row["main"], marker=marker, color=color, s=70, label=row["kind"])
                ax.annotate(_short_label(row), (x, row["main"]), textcoords="offset points", xytext=(5, 3), fontsize=7)
            handles, labels = ax.get_legend_handles_labels()
            unique = dict(zip(labels, handles, strict=True))
            ax.legend(unique.values(), unique.keys(), fontsize=8, loc="lower right")
            ax.set_xlabel(x_label)
            ax.set_ylabel(metric)
            ax.set_title(f"{results['task'].upper()} ({results['profile']}): {pair}", fontsize=10)
            ax.grid(alpha=0.3)
        fig.tight_layout()
        atomic_write(out / file, lambda tmp, f=fig: f.savefig(tmp, format="png", dpi=120))
        plt.close(fig)
