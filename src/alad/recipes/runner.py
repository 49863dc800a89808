"""The whole recipe in one command, with baselines and ablation: ``alad run CONFIG --profile quick``.

For each student-teacher pair of the config: stage 0 fine-tunes the teacher on the task (saved
once per task, data and settings under ``teachers_dir`` and reused), stage 1 aligns the student to
that teacher on unlabelled corpus text, stage 2 continues alignment on the task's training text,
and stage 3 fine-tunes in every configured mode and window. Beside them, with the same data,
budget and seed, run the baselines (the student alone, frozen + head and fully fine-tuned), the
teacher (upper bound), a random-init adapter of the same shape trained the same way, and knowledge
distillation from the same teacher (student + KD, AlAd + KD). Stage 2 reads the text of the whole
training split (never its labels); stage 3 and the baselines run once per label budget
(``labels: [100, 300, 1000, 2000]``), reusing the teacher and the alignment, which read no student
labels. Every stage writes its own folder and a finished one is reused, so an interrupted run
resumes stage by stage.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from alad.adapters import AdapterConfig, AlignmentAdapter
from alad.alignment.cache import EmbeddingCache
from alad.alignment.trainer import AlignConfig, align, alignment_cosine, format_summary
from alad.finetuning.trainer import (
    METRICS,
    MODEL_DIR,
    FinetuneConfig,
    TaskSplits,
    finetune,
    headline,
    load_splits,
    main_metric,
)
from alad.io.run_folder import check_path_name, check_run_folder, claim_run_folder
from alad.io.serialization import read_json, write_json_atomic, write_text_atomic
from alad.models.encoders import load_encoder, resolve_device
from alad.recipes.config_files import load_run_file
from alad.recipes.latency_pass import check_latency_section, time_rows
from alad.recipes.report import format_results, plot_results
from alad.recipes.row_jobs import RowJob, run_row_jobs
from alad.tasks import get_task

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
    "teacher_refine",
    "teachers_dir",
    "name",
    "description",
    "cosine_texts",
    "latency",
    "labels",
    "stage2_texts",
    "extra_texts",
    "compare_stage1",
    "kd",
    "sweep_rows",
    "stage3_compare",
    "compare_adapters",
}
SWEEP_ROWS = (
    "student-frozen",
    "student-joint",
    "random-frozen",
    "alad-frozen",
    "alad-joint",
    "student-kd-frozen",
    "student-kd-joint",
    "alad-kd-frozen",
    "alad-kd-joint",
)
TEACHER_ROW = "teacher (fine-tuned, upper bound)"


def load_run_config(path: str | os.PathLike, profile: str, pairs: Sequence[str] | None = None) -> dict[str, Any]:
    """Read a YAML/JSON recipe and merge the chosen profile's overrides into it.

    ``pairs`` keeps only the named student-teacher pairs, looked up in the profile's list and then in
    the recipe's own, so a pair a profile leaves out (for CPU time, say) can still be run with it.
    """
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


KD_FIELDS = sorted(name for name in _FINETUNE_FIELDS if name.startswith("kd_"))
KD_MODES = ("frozen", "joint")  # ``kd: {..., frozen: {kd_temperature: 1.0}}``: settings of that mode's KD rows


def _kd_overrides(config: dict, mode: str) -> dict:
    """The ``kd`` section's own settings for ``mode``'s KD rows (``kd: {frozen: {...}}``)."""
    return (config.get("kd") or {}).get(mode) or {}


def kd_settings(config: dict, mode: str) -> dict:
    """The KD settings of the recipe's KD rows in ``mode``: the ``kd`` section with that mode's
    overrides applied ({}: no KD rows)."""
    kd = {k: v for k, v in (config.get("kd") or {}).items() if k not in KD_MODES}
    return {**kd, **_kd_overrides(config, mode)} if kd else {}


def _kd_folder_suffix(config: dict, mode: str) -> str:
    """A mode's own KD settings name its KD rows' folders, so an older row is never resumed with them."""
    return "".join(f"-{k.removeprefix('kd_')}{v}" for k, v in sorted(_kd_overrides(config, mode).items()))


def check_kd_section(kd: dict) -> None:
    """``kd`` holds KD fields and, per mode, a mapping of KD fields that override them."""
    unknown = sorted(set(kd) - set(KD_FIELDS) - set(KD_MODES))
    if unknown:
        raise ValueError(f"kd has unknown options {unknown}; known: {list(KD_FIELDS)} and per mode {list(KD_MODES)}")
    for mode in KD_MODES:
        overrides = kd.get(mode, {})
        if not isinstance(overrides, dict) or set(overrides) - set(KD_FIELDS):
            raise ValueError(
                f"kd: {mode} must be a mapping of {list(KD_FIELDS)} for the {mode} KD rows, e.g. "
                f"{{kd_temperature: 1.0}}; got {overrides!r}"
            )


def _digest(obj: Any) -> str:
    return hashlib.blake2b(json.dumps(obj, sort_keys=True, default=str).encode(), digest_size=6).hexdigest()


def recipe_finetune_config(config: dict, stage3: bool = True, **fields: Any) -> FinetuneConfig:
    """Top-level settings, then (for stage 3 and the baselines, not the teacher) the ``finetune`` section.
    The top-level ``precision`` acts on alignment and stage 3, not on the teacher (``teacher_finetune``
    sets its own), so a teacher is reused whatever the run's precision."""
    values = {k: v for k, v in config.items() if k in _FINETUNE_FIELDS and (stage3 or k != "precision")}
    if stage3:
        values.update(config.get("finetune") or {})
    values.update(fields)
    if not values.get("adapter"):  # settings that act on an adapter do not apply to the student alone
        values.update(align_weight=0.0, head_init="random", lr_adapter=None)
    return FinetuneConfig(**values)


def parse_label_budgets(text: str | Sequence | None) -> list[int | str] | None:
    """``"100,300,all"`` (or a list) as label budgets; each a positive integer or ``all``."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")] if isinstance(text, str) else list(text)
    budgets: list[int | str] = []
    for part in parts:
        if str(part).lower() == "all":
            budgets.append("all")
            continue
        try:
            value = int(part)
        except (TypeError, ValueError):
            value = 0
        if value < 1:
            raise ValueError(f"label budgets are positive integers or 'all' (e.g. 100,300,2000), got {part!r}")
        budgets.append(value)
    if not budgets:
        raise ValueError("--labels names no budget; pass e.g. 100,300,1000,2000")
    return budgets


def resolve_student(pair: dict, models_dir: Path) -> str:
    """The student's model folder or name. ``{compress: NAME, keep_layers: [..]}`` cuts layers once;
    ``{compress: NAME, method: quantize-int8 | prune, ...settings}`` applies that compression once."""
    student = pair["student"]
    if isinstance(student, str):
        return student
    spec = dict(student)
    source, method = spec.pop("compress"), spec.pop("method", "layers")
    if method == "layers":
        from alad.compression.layer_dropping import drop_layers

        keep = [int(k) for k in spec["keep_layers"]]
        target = models_dir / f"{_slug(source)}-layers{''.join(map(str, keep))}"
        return str(drop_layers(source, keep, target))
    from alad.compression import ensure_compressed

    target = models_dir / (f"{_slug(source)}-{method}" + "".join(f"-{k}{v}" for k, v in sorted(spec.items())))
    return str(ensure_compressed(method, source, target, **spec))


def _teacher_run(
    config: dict, pair: dict, teachers_dir: Path, show_progress: bool, device: str = "cpu", report_only: bool = False
) -> tuple[Path, dict]:
    """Stage 0: the task-fine-tuned teacher, shared by every run with the same task, data and settings;
    with ``teacher_refine``, that teacher fine-tuned further with those settings (e.g. a QA teacher
    taught to abstain on a share of unanswerable questions), recorded as ``refined_from``."""
    if pair.get("teacher_run"):
        run = Path(pair["teacher_run"])
        return run, read_json(run / METRICS, "teacher metrics (pass a finished fine-tuning run)")
    settings = dict(config.get("teacher_finetune") or {})
    ft = recipe_finetune_config(config, stage3=False, student=pair["teacher"], adapter=None, mode="joint", **settings)
    run = teachers_dir / f"{config['task']}-{_slug(pair['teacher'])}-{_digest(_settings_key(ft))}"
    result = _finetune_teacher(run, ft, show_progress, device, report_only)
    refine = config.get("teacher_refine")
    if not refine:
        return run, result
    settings.update(refine)
    student = str(run / MODEL_DIR / "encoder")
    ft = recipe_finetune_config(config, stage3=False, adapter=None, mode="joint", **settings)
    ft = dataclasses.replace(ft, student=student, init_from=str(run))
    key = {**_settings_key(ft), "student": run.name, "init_from": run.name}  # not the machine's paths
    refined = teachers_dir / f"{run.name}-refined-{_digest(key)}"
    first = {k: result[k] for k in ("headline", "metrics", "train_seconds", "training", "data") if k in result}
    first.update({k: v for k, v in result.items() if k.startswith("squad_v1")})
    return refined, {**_finetune_teacher(refined, ft, show_progress, device, report_only), "refined_from": first}


def _settings_key(ft: FinetuneConfig) -> dict:
    """The settings that differ from the defaults: a new option with a default keeps old teachers valid."""
    defaults = dataclasses.asdict(FinetuneConfig())
    return {k: v for k, v in dataclasses.asdict(ft).items() if v != defaults[k]}


def _finetune_teacher(run: Path, ft: FinetuneConfig, show_progress: bool, device: str, report_only: bool) -> dict:
    if report_only and not (run / METRICS).is_file():
        raise ValueError(f"the teacher {run} is not finished; run without --report-only first")
    logger.info("stage 0: teacher %s fine-tuned on %s -> %s", ft.student, ft.task, run)
    return finetune(run, ft, show_progress=show_progress, device=device)


def _row(name: str, kind: str, result: dict, task: str, model_dir: Path, timed: bool, **extra) -> dict:
    """One results row. ``timed`` rows are timed later, all together (see :func:`time_rows`)."""
    numbers = headline(result["metrics"], task)
    return {
        "name": name,
        "kind": kind,
        "mode": result.get("mode"),
        **numbers,
        "main": numbers[main_metric(task)],
        "params": result["params_total"],
        "params_trained": result["params_trained"],
        "latency_ms_b1": None,
        "latency_ms_b32": None,
        "model_dir": str(model_dir) if timed else None,
        "train_seconds": result.get("train_seconds"),
        "unlabelled_items": (result.get("training") or {}).get("unlabelled_items", 0),
        **(
            {"no_answer_baseline": result["metrics"]["no_answer_baseline"]}
            if "no_answer_baseline" in result["metrics"]
            else {}
        ),
        # QA with squad_v1_eval: the SQuAD 1.1 dev articles, official 1.1 scoring
        **(
            {"v1.1_exact": result["squad_v1_eval"]["exact"], "v1.1_f1": result["squad_v1_eval"]["f1"]}
            if "squad_v1_eval" in result
            else {}
        ),
        **extra,
    }


def machine_info(device: str = "cpu") -> str:
    """Where the numbers were measured, for the results table."""
    import platform

    from alad.evaluation.latency import cpu_description

    trained_on = resolve_device(device)
    gpu = f"; trained on {torch.cuda.get_device_name(trained_on)}" if trained_on.type == "cuda" else ""
    return (
        f"{platform.machine()} CPU: {cpu_description()}, {os.cpu_count()} cores, "
        f"{torch.get_num_threads()} torch threads; "
        f"Python {platform.python_version()}, torch {torch.__version__}{gpu}"
    )


@dataclasses.dataclass
class _Context:
    """What every step of one recipe run reads: its config, data, folders and switches."""

    config: dict
    out: Path
    splits: TaskSplits
    budgets: list[int]
    main_budget: int
    teachers_dir: Path
    show_progress: bool
    device: str
    extra_texts: list[str]
    report_only: bool = False
    jobs: int = 1
    missing: list[str] = dataclasses.field(default_factory=list)

    @property
    def task(self) -> str:
        return self.config["task"]


def check_recipe(config: dict[str, Any]) -> None:
    """Every setting of an ``alad run`` recipe, before its output folder is touched."""
    for pair in config.get("pairs") or []:
        if not isinstance(pair, dict) or "student" not in pair or "teacher" not in pair:
            raise ValueError(f"each pair needs a student and a teacher, got {pair!r}")
        if pair.get("name") is not None:
            check_path_name(pair["name"], "pair name")
        if isinstance(pair["student"], dict):
            spec = dict(pair["student"])
            if "compress" not in spec:
                raise ValueError(f"a compressed student names its source model: {{compress: NAME, ...}}, got {spec!r}")
            spec.pop("compress")
            method = spec.pop("method", "layers")
            if method != "layers":
                from alad.compression import get_method

                get_method(method).validate(spec)
    windows = config.get("windows")
    if not isinstance(windows, list | tuple) or not windows:
        raise ValueError(f"windows must be a list of odd window sizes such as [1, 3], got {windows!r}")
    for key in ("stage1", "stage2", "kd", "stage3_compare", "compare_adapters"):
        if not isinstance(config.get(key) or {}, dict):
            raise ValueError(f"{key} must be a mapping of alignment options, got {config.get(key)!r}")
    check_kd_section(config.get("kd") or {})
    check_latency_section(config.get("latency") or {})
    names = {f.name for f in dataclasses.fields(AlignConfig)}
    for adapter, options in (config.get("compare_adapters") or {}).items():
        check_path_name(str(adapter), "compare_adapters name")
        if not isinstance(options, dict) or not options or set(options) - set(ADAPTER_SHAPE_OPTIONS):
            raise ValueError(
                f"compare_adapters: {adapter!r} needs a mapping of adapter options {list(ADAPTER_SHAPE_OPTIONS)}, "
                f"e.g. {{adapter_type: attention}}; got {options!r}"
            )
        AlignConfig(windows=tuple(windows), **{**_without_shape(config.get("stage1")), **options})
    for key in ("stage1", "stage2"):
        values = dict(config.get(key) or {})
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"{key} has unknown options {unknown}; known: {sorted(names)}")
        values = stage2_options(config) if key == "stage2" else values
        AlignConfig(**{"windows": tuple(windows), **({"max_texts": None} if key == "stage2" else {}), **values})
    finetune = config.get("finetune") or {}
    if not isinstance(finetune, dict):
        raise ValueError(f"finetune must be a mapping of fine-tuning options, got {finetune!r}")
    try:
        recipe_finetune_config(config, mode="joint", adapter=None, teacher=None, head_init="random")
    except TypeError as err:
        raise ValueError(f"finetune: {err}; see alad finetune --help for the options") from err
    teacher: dict = {}
    for key in ("teacher_finetune", "teacher_refine"):  # the refine settings apply over the teacher's
        values = config.get(key) or {}
        unknown = sorted(set(values) - _FINETUNE_FIELDS) if isinstance(values, dict) else None
        if unknown is None or unknown:
            raise ValueError(f"{key} must be a mapping of fine-tuning options (alad finetune --help), got {values!r}")
        teacher.update(values)
        recipe_finetune_config(config, stage3=False, student="teacher", adapter=None, mode="joint", **teacher)
    for mode in config.get("modes") or []:
        if mode not in ("frozen", "joint", "head-only", "teacher-head"):
            raise ValueError(f"modes: {mode!r} is not one of frozen, joint, head-only, teacher-head")


def run_recipe(
    config: dict,
    out_dir: str | os.PathLike,
    show_progress: bool = True,
    command: str | None = None,
    device: str = "cpu",
    labels: str | Sequence | None = None,
    report_only: bool = False,
    jobs: int = 1,
) -> dict[str, Any]:
    """Execute every stage, baseline and ablation of ``config``; write results.json, .md and plots.

    ``labels`` (or the config's ``labels``) lists the label budgets of stage 3 and the baselines;
    default: the profile's ``max_train``. ``device`` trains (and embeds) there; latency is always
    measured on the CPU. ``report_only`` trains nothing: it reports the finished stages and rows and
    lists the rows not run yet (an interrupted or partial recipe). ``jobs`` > 1 trains the rows of
    stage 3 and the baselines in that many worker processes, sharing the torch threads.
    """
    resolve_device(device)  # a wrong device fails before anything is written
    if type(jobs) is not int or jobs < 1:
        raise ValueError(f"jobs must be a whole number >= 1 (worker processes for the rows), got {jobs!r}")
    started = time.perf_counter()
    check_recipe(config)
    check_run_folder(out_dir, "recipe_run")  # an existing folder that is not an alad recipe run is refused
    ctx = _context(config, Path(out_dir), show_progress, device, labels)
    ctx.report_only, ctx.jobs = report_only, jobs
    claim_run_folder(ctx.out, "recipe_run")
    write_json_atomic(ctx.out / "run_config.json", config)
    all_rows, pairs_out = [], []
    for pair in config["pairs"]:
        rows, pair_summary = _run_pair(ctx, pair)
        pairs_out.append(pair_summary)
        all_rows.extend({**r, "pair": pair_summary["name"]} for r in rows)
    # every row together, at the end, in a fresh process (latency_pass)
    latency = time_rows(config, recipe_finetune_config(config), ctx.splits, all_rows, show_progress)
    results = {
        "task": ctx.task,
        "profile": config["profile"],
        "config": config,
        "data": ctx.splits.info,
        "labels": ctx.budgets,
        "main_labels": ctx.main_budget,
        "command": command or f"alad run <config> --profile {config['profile']}",
        "machine": machine_info(device),
        "pairs": pairs_out,
        "rows": all_rows,
        "latency": latency,
        "missing": ctx.missing,
        "jobs": jobs,
        "wall_seconds": round(time.perf_counter() - started, 1),  # this invocation (finished stages are reused)
    }
    write_json_atomic(ctx.out / "results.json", results)
    write_text_atomic(ctx.out / "results.md", format_results(results))
    plot_results(results, ctx.out)
    return results


def _context(config: dict, out: Path, show_progress: bool, device: str, labels) -> _Context:
    """Check every setting that needs no model (budgets, KD, text files) before any work."""
    template = recipe_finetune_config(config)  # invalid stage-3 settings fail here
    for mode in KD_MODES:
        kd = kd_settings(config, mode)
        if kd:
            recipe_finetune_config(config, adapter=None, mode=mode, teacher="teacher", **kd)
    splits = load_splits(template)
    pool = len(splits.pool)
    wanted = parse_label_budgets(labels) or parse_label_budgets(config.get("labels")) or [len(splits.train)]
    budgets = sorted({pool if b == "all" else int(b) for b in wanted})
    too_big = [b for b in budgets if b > pool]
    if too_big:
        raise ValueError(
            f"label budget {too_big[0]} is larger than the training split ({pool} items in "
            f"{splits.info['train_file']}); pass budgets up to {pool}, or 'all'"
        )
    main = len(splits.train) if len(splits.train) in budgets else budgets[-1]
    extra = read_extra_texts(config["extra_texts"]) if config.get("extra_texts") else []
    stage2 = config.get("stage2_texts", "all")
    counted = type(stage2) is int and stage2 >= 1  # a number of items of the training split
    if not counted and stage2 not in ("all", "labelled") and not Path(str(stage2)).is_file():
        raise ValueError(
            f"stage2_texts must be all, labelled, a number of items or a text file; {stage2!r} is none of these"
        )
    return _Context(
        config=config,
        out=out,
        splits=splits,
        budgets=budgets,
        main_budget=main,
        teachers_dir=Path(config.get("teachers_dir") or out.parent / "teachers"),
        show_progress=show_progress,
        device=device,
        extra_texts=extra,
    )


def read_extra_texts(path: str | os.PathLike) -> list[str]:
    """A user's unlabelled text file (one text per line) for stage 2; empty or non-UTF-8 files fail."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"unlabelled-text file not found: {path}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text (byte {err.start}); convert it, e.g. iconv -t utf-8") from err
    texts = [line.strip() for line in lines if line.strip()]
    if not texts:
        raise ValueError(f"{path} holds no text; give a file with one sentence per line")
    return texts


def _run_pair(ctx: _Context, pair: dict) -> tuple[list[dict], dict]:
    """Stages 0-3, baselines, distillation and the random-init ablation for one pair, per label budget."""
    name = pair.get("name") or f"{_slug(str(pair['student']))}-to-{_slug(pair['teacher'])}"
    pair_dir = ctx.out / check_path_name(name, "pair name")  # never a path: '../x' would write above out
    clock = _Stopwatch()
    student = resolve_student(pair, ctx.out.parent / "models")
    teacher_dir, teacher_result = _teacher_run(
        ctx.config, pair, ctx.teachers_dir, ctx.show_progress, ctx.device, ctx.report_only
    )
    refined = _refined_teacher_info(teacher_result, ctx.task)
    rows = [
        _row(TEACHER_ROW, "teacher", teacher_result, ctx.task, teacher_dir / MODEL_DIR, True, labels=None, **refined)
    ]
    clock.lap("teacher")
    alignment = align_stages(ctx, pair, name, pair_dir, student, teacher_dir / MODEL_DIR / "encoder")
    teacher_emb = _cosine_reference(ctx.config, ctx.splits, teacher_dir / MODEL_DIR / "encoder", ctx.show_progress)
    clock.lap("alignment")
    runner = _RowRunner(ctx, pair_dir, student, teacher_dir, teacher_emb)
    if ctx.jobs > 1 and not ctx.report_only:  # train every row in worker processes, then score them here
        runner.planned = []
        pair_rows(ctx, runner, name, pair_dir, alignment)
        run_row_jobs(runner.planned, ctx.splits, ctx.jobs, ctx.device, ctx.show_progress, label=name)
        runner.planned = None
    rows += pair_rows(ctx, runner, name, pair_dir, alignment)
    clock.lap("rows")
    summary = _summarise_pair(name, student, pair["teacher"], rows, alignment, ctx.main_budget)
    return rows, {**summary, "wall_seconds": clock.laps}


def _refined_teacher_info(result: dict, task: str) -> dict:
    """For a teacher continued by ``teacher_refine``: its first pass and how many items the refinement read."""
    if not result.get("refined_from"):
        return {}
    return {"first_pass": _first_pass(result["refined_from"], task), "train_items": result["data"]["train_items"]}


def _first_pass(result: dict, task: str) -> dict:
    """The teacher's scores before ``teacher_refine``, with what it trained on, for the report."""
    v1, numbers = result.get("squad_v1_eval"), headline(result["metrics"], task)
    return {
        **numbers,
        "main": numbers[main_metric(task)],
        **({"v1.1_f1": v1["f1"]} if v1 else {}),
        "train_items": (result.get("data") or {}).get("train_items"),
        "train_seconds": result.get("train_seconds"),
    }


class _Stopwatch:
    """Wall-clock seconds of a pair's phases in this invocation (a phase reused from disk takes ~0 s)."""

    def __init__(self) -> None:
        self.last, self.laps = time.perf_counter(), {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self.last, 1)
        self.last = now


def pair_rows(ctx: _Context, runner: _RowRunner, name: str, pair_dir: Path, alignment: dict) -> list[dict]:
    """Every stage-3 row of one pair: teacher-head, the stage-1 comparison, the stage-3 comparison, then
    per label budget (the main one first) the student, random-init, AlAd and distillation rows."""
    rows = []
    for window in tuple(int(w) for w in ctx.config["windows"]):
        adapter_dir = alignment["adapters"][str(window)]
        random_dir = _random_adapter(ctx, pair_dir, adapter_dir, window)
        if "teacher-head" in ctx.config["modes"]:  # reads no student label: one row for every budget
            rows.append(
                runner.run(
                    f"alad-w{window}-teacher-head",
                    f"AlAd w{window}, teacher-head",
                    "alad",
                    ctx.main_budget,
                    adapter_dir,
                    "teacher-head",
                    window=window,
                    labels=0,
                )
            )
        for stage, folder in alignment["variants"].items():  # stage 1 or not: the label-free comparison
            rows.append(
                runner.run(
                    f"alad-w{window}-teacher-head",
                    f"AlAd w{window}, teacher-head, {stage}",
                    "variant",
                    ctx.main_budget,
                    folder / f"w{window}",
                    "teacher-head",
                    sub=f"compare-{_slug(stage)}",
                    window=window,
                    labels=0,
                    variant=stage,
                )
            )
        compare = ctx.config.get("stage3_compare") or {}
        if compare and compare.get("pair", name) == name:  # first: it decides the recipe's stage-3 settings
            rows += stage3_variants(runner, compare, window, adapter_dir, ctx.main_budget)
        for budget in sorted(ctx.budgets, key=lambda b: (b != ctx.main_budget, -b)):  # the main budget first
            rows += stage3_rows(ctx, runner, budget, window, adapter_dir, random_dir)
        for kind, folder in alignment.get("other_adapters", {}).items():
            rows += other_adapter_rows(ctx, runner, kind, folder / f"w{window}", window)
    return [row for row in rows if row is not None]  # None: not run yet (report_only), or only planned


def other_adapter_rows(ctx: _Context, runner: _RowRunner, kind: str, adapter_dir: Path, window: int) -> list[dict]:
    """An adapter of ``compare_adapters`` beside the recipe's: its teacher-head, frozen and joint rows at
    the main budget, timed like every main row (its latency is the point of the comparison)."""
    rows = []
    for mode in [m for m in ("teacher-head", "frozen", "joint") if m in ctx.config["modes"]]:
        budget_extra = {"labels": 0} if mode == "teacher-head" else {}
        rows.append(
            runner.run(
                f"alad-w{window}-{mode}",
                f"AlAd w{window} {kind}, {mode}",
                "alad",
                ctx.main_budget,
                adapter_dir,
                mode,
                sub=f"adapter-{kind}",
                window=window,
                adapter_kind=kind,
                **budget_extra,
            )
        )
    return rows


class _RowRunner:
    """Fine-tunes one row (a mode, an adapter or none, a label budget, extra settings) and scores it."""

    def __init__(self, ctx: _Context, pair_dir: Path, student: str, teacher_dir: Path, teacher_emb) -> None:
        self.ctx, self.pair_dir, self.student, self.teacher_dir = ctx, pair_dir, student, teacher_dir
        self.teacher_emb = teacher_emb
        self.planned: list[RowJob] | None = None  # a list: rows are only listed (for worker processes), not run

    def run(
        self,
        key: str,
        label: str,
        kind: str,
        budget: int,
        adapter_dir,
        mode: str,
        *,
        sub: str | None = None,
        settings: dict | None = None,
        **extra,
    ) -> dict:
        ctx = self.ctx
        ft = recipe_finetune_config(
            ctx.config,
            student=self.student,
            adapter=str(adapter_dir) if adapter_dir else None,
            mode=mode,
            teacher=str(self.teacher_dir),
            **(settings or {}),
        )
        folder = self.pair_dir / (sub or f"labels-{budget}") / key
        if ctx.report_only and not (folder / METRICS).is_file():
            ctx.missing.append(str(folder.relative_to(ctx.out)))
            return None
        if self.planned is not None:
            self.planned.append(RowJob(folder, ft, budget))
            return None
        splits = ctx.splits.with_budget(budget)
        result = finetune(folder, ft, splits=splits, show_progress=ctx.show_progress, device=ctx.device)
        timed = budget == ctx.main_budget and "variant" not in extra
        row = _row(label, kind, result, ctx.task, folder / MODEL_DIR, timed, **{"labels": budget, **extra})
        if adapter_dir:
            row["cosine_to_teacher"] = _cosine(folder, self.teacher_emb)
        return row


def stage3_rows(
    ctx: _Context, runner: _RowRunner, budget: int, window: int, adapter_dir: Path, random_dir: Path
) -> list[dict]:
    """The rows of one label budget: the student alone, the random-init adapter, AlAd, and KD for both."""
    kd = {mode: kd_settings(ctx.config, mode) for mode in KD_MODES}
    wanted = set(ctx.config.get("sweep_rows") or SWEEP_ROWS) if budget != ctx.main_budget else None
    plans = [
        ("student-frozen", "student alone, frozen + head", "student", None, "frozen", {}),
        ("student-joint", "student alone, full fine-tuning", "student", None, "joint", {}),
    ]
    for mode in ctx.config["modes"]:
        if mode != "teacher-head":
            plans.append((f"alad-{mode}", f"AlAd w{window}, {mode}", "alad", adapter_dir, mode, {}))
    modes = [mode for mode in ("frozen", "joint") if mode in ctx.config["modes"]]
    plans += [(f"random-{m}", f"random-init adapter w{window}, {m}", "random", random_dir, m, {}) for m in modes]
    plans += [  # distillation last: it reads the most items
        ("student-kd-frozen", "student + KD, frozen + head", "student-kd", None, "frozen", kd["frozen"]),
        ("student-kd-joint", "student + KD, full fine-tuning", "student-kd", None, "joint", kd["joint"]),
    ]
    plans += [(f"alad-kd-{m}", f"AlAd w{window} + KD, {m}", "alad-kd", adapter_dir, m, kd[m]) for m in modes]
    from alad.compression import is_quantized_folder

    int8 = is_quantized_folder(runner.student)  # int8 weights cannot train: no joint rows
    rows = []
    for key, label, kind, adapter, mode, settings in plans:
        if (wanted is not None and key not in wanted) or (kind.endswith("-kd") and not settings):
            continue
        if int8 and mode == "joint":
            continue
        window_extra = {"window": window} if adapter else {}
        folder = key.replace("alad", f"alad-w{window}").replace("random", f"random-w{window}")
        if kind.endswith("-kd"):
            folder += _kd_folder_suffix(ctx.config, mode)
        rows.append(runner.run(folder, label, kind, budget, adapter, mode, settings=settings, **window_extra))
    return [row for row in rows if row is not None]


def stage3_variants(runner: _RowRunner, compare: dict, window: int, adapter_dir: Path, budget: int) -> list[dict]:
    """Stage-3 settings side by side on the same aligned adapter (which keeps the alignment best)."""
    rows = []
    for variant, settings in (compare.get("variants") or {}).items():
        for mode in compare.get("modes", ["frozen", "joint"]):
            label = f"AlAd w{window}, {mode}, {variant}"
            rows.append(
                runner.run(
                    f"alad-w{window}-{mode}-{_slug(variant)}",
                    label,
                    "variant",
                    budget,
                    adapter_dir,
                    mode,
                    sub=f"stage3-compare-{budget}",
                    settings=dict(settings or {}),
                    window=window,
                    variant=variant,
                )
            )
    return rows


def _random_adapter(ctx: _Context, pair_dir: Path, adapter_dir: Path, window: int) -> Path:
    """An adapter of the aligned one's type and shape at a fixed random initialisation (the ablation)."""
    random_dir = pair_dir / f"random-w{window}"
    if not (random_dir / "adapter_config.json").is_file():
        aligned = AlignmentAdapter.from_pretrained(adapter_dir)
        torch.manual_seed(ctx.config.get("seed", 0) + 7919)
        AlignmentAdapter(AdapterConfig(**dataclasses.asdict(aligned.config))).save_pretrained(
            random_dir, metadata={"random_init": True}
        )
    return random_dir


def stage2_texts(ctx: _Context) -> list:
    """Stage 2's unlabelled text: the whole training split (default), the labelled subset, a number of
    its items (``order``'s first N: the labelled ones, then seeded), or a file; plus the config's
    ``extra_texts``. Labels are never read."""
    task = get_task(ctx.task)
    choice = ctx.config.get("stage2_texts", "all")
    if choice == "all":
        texts = task.alignment_texts(ctx.splits.pool)
    elif choice == "labelled":
        texts = task.alignment_texts(ctx.splits.with_budget(ctx.main_budget).train)
    elif type(choice) is int:  # N items: the labelled ones first, then the seeded order of the rest (labels unread)
        texts = task.alignment_texts([ctx.splits.pool[i] for i in sorted(ctx.splits.order[:choice])])
    else:
        texts = read_extra_texts(choice)
    return list(texts) + list(ctx.extra_texts)


ADAPTER_SHAPE_OPTIONS = ("adapter_type", "hidden_size", "attention_dim", "attention_heads")
"""Stage-1 options that stage 2 takes over unless it sets them: the adapter stage 2 continues, or (with
``compare_stage1``) aligns from scratch, is of the same type and size as stage 1's."""


def stage2_options(config: dict) -> dict:
    """The ``stage2`` alignment options, with the adapter type (and its options) of ``stage1`` where it
    names them and stage 2 does not."""
    stage1, stage2 = config.get("stage1") or {}, dict(config.get("stage2") or {})
    for key in ADAPTER_SHAPE_OPTIONS:
        if key in stage1 and key not in stage2:
            stage2[key] = stage1[key]
    return stage2


def _without_shape(options: dict | None) -> dict:
    """A stage's alignment options without the adapter's type and shape (:data:`ADAPTER_SHAPE_OPTIONS`)."""
    return {k: v for k, v in (options or {}).items() if k not in ADAPTER_SHAPE_OPTIONS}


def _finished_for_report(ctx: _Context, folder: Path, done_file: str) -> None:
    """With ``report_only``, a stage every later row needs must be finished: say which one is not."""
    if ctx.report_only and not (folder / done_file).is_file():
        raise ValueError(f"{folder} is not finished, and every later row needs it; run without --report-only first")


def align_stages(ctx: _Context, pair: dict, name: str, pair_dir: Path, student: str, teacher_encoder: Path) -> dict:
    """Stage 1 on the corpus (unless ``stage1: null``), stage 2 on the task's text, and with
    ``compare_stage1`` stage 2 from scratch too; the adapter with the better held-out cosine is used."""
    config = ctx.config
    windows = tuple(int(w) for w in config["windows"])
    common = {"student": student, "teacher": str(teacher_encoder), "windows": windows, "seed": config.get("seed", 0)}
    if "precision" in config:
        common["precision"] = config["precision"]
    summaries: dict[str, dict] = {}
    stage1 = config.get("stage1", {})
    if stage1 is not None:
        align1 = AlignConfig(corpus=config.get("corpus"), **{**common, **stage1})  # a stage's own setting wins
        summaries["stage1"] = _align_stage(ctx, pair_dir / "stage1", align1)
        print(f"[{name}] stage 1, task-independent alignment:\n{format_summary(summaries['stage1'])}")
    texts = stage2_texts(ctx)
    corpus = f"task:{ctx.task}:{config.get('data')}:{config.get('stage2_texts', 'all')}"
    stage2 = stage2_options(config)
    variants = {"stage2": str(pair_dir / "stage1") if stage1 is not None else None}
    if pair.get("compare_stage1", config.get("compare_stage1")) and stage1 is not None:  # a pair may override
        variants["stage2-scratch"] = None
    for folder, init in variants.items():
        align2 = AlignConfig(init=init, max_texts=None, corpus=corpus, **{**common, **stage2})
        summaries[folder] = _align_stage(ctx, pair_dir / folder, align2, texts)
        print(f"[{name}] {folder}, alignment on the task's text (labels unused):\n{format_summary(summaries[folder])}")
    adapters, chosen = {}, {}
    for window in map(str, windows):
        best = max(variants, key=lambda f: summaries[f]["windows"][window]["val_cosine"])
        adapters[window], chosen[window] = pair_dir / best / f"w{window}", best
    compared = {("after stage 1" if init else "from scratch"): pair_dir / folder for folder, init in variants.items()}
    others = {}
    for kind, options in (config.get("compare_adapters") or {}).items():  # another adapter, aligned the same way
        others[kind] = _align_other_adapter(ctx, pair_dir, kind, options, common, texts, corpus, summaries)
    return {
        "summaries": summaries,
        "adapters": adapters,
        "chosen": chosen,
        "variants": compared if len(compared) > 1 else {},
        "other_adapters": others,
    }


def _align_other_adapter(
    ctx: _Context, pair_dir: Path, kind: str, options: dict, common: dict, texts: list, corpus: str, summaries: dict
) -> Path:
    """Stages 1 (where the recipe has it) and 2 for an adapter of other ``options`` (``compare_adapters``:
    its shape options replace the stages' own, the rest as the recipe's); its folder of stage 2."""
    config, init = ctx.config, None
    if config.get("stage1", {}) is not None:
        folder = f"stage1-{kind}"
        align1 = AlignConfig(corpus=config.get("corpus"), **{**common, **_without_shape(config["stage1"]), **options})
        summaries[folder] = _align_stage(ctx, pair_dir / folder, align1)
        init = str(pair_dir / folder)
    folder = f"stage2-{kind}"
    stage2 = _without_shape(config.get("stage2"))
    align2 = AlignConfig(init=init, max_texts=None, corpus=corpus, **{**common, **stage2, **options})
    summaries[folder] = _align_stage(ctx, pair_dir / folder, align2, texts)
    return pair_dir / folder


def _align_stage(ctx: _Context, folder: Path, config: AlignConfig, texts: list | None = None) -> dict:
    """One alignment stage into ``folder`` (reused when finished); with ``report_only`` it must be finished."""
    _finished_for_report(ctx, folder, "summary.json")
    return align(folder, config, texts=texts, show_progress=ctx.show_progress, device=ctx.device)


def _cosine_reference(config, splits, teacher_encoder_dir: Path, show_progress: bool):
    """Teacher states on (a bounded number of) evaluation texts, for cosine-to-teacher columns."""
    texts = get_task(config["task"]).alignment_texts(splits.eval)[: int(config.get("cosine_texts", 300))]
    teacher = load_encoder(teacher_encoder_dir)
    from alad.alignment.pairing import segment_texts

    segments = segment_texts(texts, [(teacher.tokenizer, teacher.max_length)])
    return EmbeddingCache().embed(teacher, segments, show_progress=show_progress)


def _cosine(run_dir: Path, teacher_emb) -> float:
    from alad.models.task_model import AladTaskModel

    model = AladTaskModel.from_pretrained(run_dir / MODEL_DIR)
    return alignment_cosine(model.encoder, model.tokenizer, model.adapter, teacher_emb)


def _summarise_pair(name: str, student: str, teacher: str, rows: list[dict], alignment: dict, main: int) -> dict:
    """Scores relative to the student and the random-init adapter of the same mode and label budget."""
    teacher_row = next(r for r in rows if r["kind"] == "teacher")
    teacher_score = teacher_row["main"]
    students = {(r["labels"], r["mode"]): r["main"] for r in rows if r["kind"] == "student"}
    randoms = {(r["labels"], r["mode"], r.get("window")): r["main"] for r in rows if r["kind"] == "random"}
    baseline = {mode: students.get((main, mode)) for mode in ("frozen", "joint")}
    warnings = []
    if baseline["joint"] is not None and teacher_score <= baseline["joint"]:
        warnings.append(
            f"TEACHER DOES NOT BEAT THE STUDENT: teacher {teacher_score:.2f} <= fully fine-tuned student "
            f"{baseline['joint']:.2f}; no adapter can help here"
        )
    no_answer = teacher_row.get("no_answer_baseline")
    if no_answer and teacher_score <= no_answer["f1"]:
        warnings.append(
            f"TEACHER DOES NOT BEAT ALWAYS ANSWERING 'NO ANSWER': teacher F1 {teacher_score:.2f} <= "
            f"{no_answer['f1']:.2f}; it needs more training data or steps before it can teach spans"
        )
    for row in rows:
        if row["kind"] in ("teacher", "student"):
            continue
        budget = row["labels"] or main
        same_mode = "joint" if row["mode"] == "joint" else "frozen"
        matching = students.get((budget, same_mode))
        row["student_same_mode"] = matching
        gap = teacher_score - matching if matching is not None else 0
        row["recovery"] = (row["main"] - matching) / gap if gap > 0 else None
        if row["mode"] == "teacher-head":
            row["share_of_teacher"] = row["main"] / teacher_score if teacher_score else None
        if row["kind"] in ("alad", "alad-kd", "variant"):
            twin = None if row.get("adapter_kind") else randoms.get((budget, row["mode"], row.get("window")))
            row["gain_over_random"] = row["main"] - twin if twin is not None else None
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
        "alignment": _alignment_info(alignment),
        "alignment_cosine": {
            w: alignment["summaries"][alignment["chosen"][w]]["windows"][w]["val_cosine"] for w in alignment["chosen"]
        },
    }


def _alignment_info(alignment: dict) -> dict:
    """Per alignment stage: texts read, epochs run of the most allowed, held-out cosine per window."""
    info = {}
    for stage, summary in alignment["summaries"].items():
        info[stage] = {
            "num_texts": summary.get("num_texts"),
            "num_segments": summary.get("num_segments"),
            "epochs_run": summary.get("epochs_run"),
            "max_epochs": summary.get("max_epochs"),
            "patience": summary.get("patience"),
            "adapter": summary.get("adapter") or {"adapter_type": "mlp"},  # summaries before adapter types: mlp
            "val_cosine": {w: r["val_cosine"] for w, r in summary["windows"].items()},
            "best_epoch": {w: r["best_epoch"] for w, r in summary["windows"].items()},
            "mean_predictor_cosine": summary["mean_predictor"]["cosine"],
        }
    info["chosen"] = alignment["chosen"]
    return info
