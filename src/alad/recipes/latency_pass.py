"""The recipe's latency pass: every timed row of a run in one interleaved, repeated pass at the end.

By default the pass runs in a fresh Python process started for it, not in the process that trained the
teacher, aligned and evaluated. The QA quick profile's pass, at the end of a 109-minute process, timed
pair (b)'s student at 10.96 ms and the attention adapter at +21.9%; the same finished run re-invoked
(only the latency pass runs then, in a process that trained nothing) timed them at 7.61 ms and +11.9%
(results/qa_squad2-quick-amx/latency-fresh-process). A long-lived training process's state slows small
models unequally; a fresh process times the models, not that state.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

from alad.finetuning.trainer import FinetuneConfig, TaskSplits
from alad.tasks import get_task

LATENCY_DEFAULTS = {"rounds": 7, "batches": 32, "threads": None, "fresh_process": True}
LATENCY_HELP = {
    "rounds": "interleaved rounds; each row's time is the median over rounds",
    "batches": "calls per batch size in each round",
    "threads": "torch threads to time with (default: the run's)",
    "fresh_process": "time in a new process started for the pass, not the one that trained (default true)",
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
    default) the pass runs in a new Python process started for it (``python -m``, so nothing of the
    caller's script runs again there), with this process's torch threads.
    """
    settings = {**LATENCY_DEFAULTS, **(config.get("latency") or {})}
    if not any(row.get("model_dir") for row in rows):
        return {}
    if not settings["fresh_process"]:
        info = _time_rows_here(settings, template, splits.eval, rows, show_progress)
        return {**info, "fresh_process": False} if info else info
    threads = int(settings["threads"] or torch.get_num_threads())
    with tempfile.TemporaryDirectory(prefix="alad-latency-") as folder:
        job, answer = Path(folder) / "job.pkl", Path(folder) / "answer.pkl"
        job.write_bytes(pickle.dumps((settings, template, splits.eval, rows, show_progress, threads)))
        code = sys.executable, "-m", "alad.recipes.latency_pass", str(job), str(answer)
        package_root = str(Path(__file__).resolve().parents[2])  # the child imports this very alad
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
        if subprocess.run(code, env=env).returncode != 0 or not answer.is_file():
            raise RuntimeError(
                "the latency pass (a fresh process) failed: see its error above; the trained rows are kept, "
                "and latency: {fresh_process: false} in the recipe times them in this process"
            )
        info, timed = pickle.loads(answer.read_bytes())  # written by the child just now, from our own job
    for row, done in zip(rows, timed, strict=True):
        row.update({key: done[key] for key in ROW_FIELDS if key in done})
    return info


def _run_job(job: Path, answer: Path) -> None:
    """The pass in the fresh process (``python -m alad.recipes.latency_pass JOB ANSWER``)."""
    settings, template, items, rows, show_progress, threads = pickle.loads(job.read_bytes())
    _exit_with_parent()
    torch.set_num_threads(threads)
    info = _time_rows_here(settings, template, items, rows, show_progress)
    # set here, in the process that timed: the parent cannot mark a pass fresh that did not run apart
    answer.write_bytes(pickle.dumps(({**info, "fresh_process": True} if info else info, rows)))


def _exit_with_parent() -> None:
    """Stop timing when ``alad run`` is killed (this process is then handed to another parent)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="alad-latency-exit-with-parent", daemon=True).start()


def _time_rows_here(
    settings: dict, template: FinetuneConfig, items: list, rows: list[dict], show_progress: bool
) -> dict[str, Any]:
    from alad.evaluation.interleaved import interleaved_latency, real_length_batches
    from alad.evaluation.latency import compute_signature
    from alad.models.task_model import AladTaskModel

    task = get_task(template.task)
    timed = [row for row in rows if row.get("model_dir")]
    models, batches, timed_as = {}, {}, []
    for row in timed:
        model = AladTaskModel.from_pretrained(row["model_dir"]).eval()
        features = task.features(model, items, template, labelled=False)  # inputs only, no label read

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
        "eval_items": len(items),
    }


if __name__ == "__main__":
    _run_job(Path(sys.argv[1]), Path(sys.argv[2]))
