"""The recipe's latency pass: every timed row of a run in one interleaved, repeated pass at the end.

By default the pass runs in a fresh process, spawned for it, not in the process that trained the
teacher, aligned and evaluated. The QA quick profile's pass, at the end of a 109-minute process, timed
pair (b)'s student at 10.96 ms and the attention adapter at +21.9%; the same finished run re-invoked
(only the latency pass runs then, in a process that trained nothing) timed them at 7.61 ms and +11.9%
(results/qa_squad2-quick-amx/latency-fresh-process). A long-lived training process's state slows small
models unequally; a fresh process times the models, not that state.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import torch

from alad.finetuning.trainer import FinetuneConfig, TaskSplits
from alad.tasks import get_task

LATENCY_DEFAULTS = {"rounds": 7, "batches": 32, "threads": None, "fresh_process": True}
LATENCY_HELP = {
    "rounds": "interleaved rounds; each row's time is the median over rounds",
    "batches": "calls per batch size in each round",
    "threads": "torch threads to time with (default: the run's)",
    "fresh_process": "time in a process spawned for the pass, not the one that trained (default true)",
}
ROW_FIELDS = ("latency_ms_b1", "latency_ms_b32", "latency_tokens_b1")


def check_latency_section(section: Any) -> None:
    """A recipe's ``latency`` section: known keys, sensible values; one line naming the fix otherwise."""
    if not isinstance(section, dict):
        raise ValueError(f"latency must be a mapping such as {{rounds: 7, batches: 32}}, got {section!r}")
    unknown = sorted(set(section) - set(LATENCY_DEFAULTS))
    if unknown:
        known = "; ".join(f"{key}: {text}" for key, text in LATENCY_HELP.items())
        raise ValueError(f"latency has unknown keys {unknown}; known: {known}")
    for key in ("rounds", "batches", "threads"):
        value = section.get(key)
        if value is not None and (type(value) is not int or value < 1):
            raise ValueError(f"latency: {key} must be a whole number >= 1, got {value!r}")
    if type(section.get("fresh_process", True)) is not bool:
        raise ValueError(f"latency: fresh_process must be true or false, got {section['fresh_process']!r}")


def time_rows(
    config: dict, template: FinetuneConfig, splits: TaskSplits, rows: list[dict], show_progress: bool = False
) -> dict[str, Any]:
    """CPU latency of every timed row (``model_dir`` set) in one interleaved, repeated pass, on the
    evaluation set's own items at their real lengths (each model through its own tokenizer).

    Rows timed minutes apart on a shared machine compare the machine, not the models; see
    :mod:`alad.evaluation.interleaved`. Rows whose models compute the same thing on the same inputs,
    weights aside (:func:`~alad.evaluation.latency.compute_signature`: an adapter trained frozen, joint
    or with KD), are timed once and share the timing. Fills ``latency_ms_b1`` / ``latency_ms_b32``
    (medians over rounds) and returns how the pass was run, for the table. With ``fresh_process`` (the
    default) the pass runs in a process spawned for it, with this process's torch threads.
    """
    settings = {**LATENCY_DEFAULTS, **(config.get("latency") or {})}
    if not settings["fresh_process"]:
        info = _time_rows_here(settings, template, splits, rows, show_progress)
        return {**info, "fresh_process": False} if info else info
    context = multiprocessing.get_context("spawn")  # no fork of a process holding torch threads
    threads = int(settings["threads"] or torch.get_num_threads())
    with ProcessPoolExecutor(1, mp_context=context, initializer=_start_timing_process, initargs=(threads,)) as pool:
        info, timed = pool.submit(_time_rows_apart, settings, template, splits, rows, show_progress).result()
    for row, done in zip(rows, timed, strict=True):
        row.update({key: done[key] for key in ROW_FIELDS if key in done})
    return info


def _start_timing_process(threads: int) -> None:
    from alad.recipes.row_jobs import exit_with_parent

    torch.set_num_threads(threads)
    exit_with_parent()


def _time_rows_apart(
    settings: dict, template: FinetuneConfig, splits: TaskSplits, rows: list[dict], show_progress: bool
) -> tuple[dict, list[dict]]:
    """The pass in the spawned process: how it ran, and the rows with their timings."""
    info = _time_rows_here(settings, template, splits, rows, show_progress)
    # measured here, not assumed: true only when this pass runs in a process of its own
    return ({**info, "fresh_process": multiprocessing.parent_process() is not None} if info else info), rows


def _time_rows_here(
    settings: dict, template: FinetuneConfig, splits: TaskSplits, rows: list[dict], show_progress: bool
) -> dict[str, Any]:
    from alad.evaluation.interleaved import interleaved_latency, real_length_batches
    from alad.evaluation.latency import compute_signature
    from alad.models.task_model import AladTaskModel

    task = get_task(template.task)
    timed = [row for row in rows if row.get("model_dir")]
    models, batches, timed_as = {}, {}, []
    for row in timed:
        model = AladTaskModel.from_pretrained(row["model_dir"]).eval()
        features = task.features(model, splits.eval, template, labelled=False)  # inputs only, no label read

        def collate(group, model=model):
            return task.collate(model, group)

        inputs = {b: real_length_batches(features, collate, b, settings["batches"]) for b in (1, 32)}
        key = compute_signature(model, *(ids.tolist() for size in inputs.values() for ids, _ in size))
        timed_as.append(key)
        if key not in models:  # the first row of each signature is timed for all of them
            models[key], batches[key] = model, inputs
    if not models:
        return {}
    threads = torch.get_num_threads()
    if settings["threads"]:
        torch.set_num_threads(int(settings["threads"]))
    try:
        timings = interleaved_latency(models, batches, rounds=int(settings["rounds"]), show_progress=show_progress)
    finally:
        torch.set_num_threads(threads)
    for key, row in zip(timed_as, timed, strict=True):
        row["latency_ms_b1"] = timings[key][1]["median_ms"]
        row["latency_ms_b32"] = timings[key][32]["median_ms"]
        row["latency_tokens_b1"] = timings[key][1]["mean_tokens"]
    first = timings[next(iter(models))]
    return {
        "rounds": int(settings["rounds"]),
        "calls": first[1]["calls"],
        "threads": first[1]["threads"],
        "rows": len(timed),
        "models_timed": len(models),
        "eval_items": len(splits.eval),
    }
