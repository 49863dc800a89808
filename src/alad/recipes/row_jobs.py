"""Train a recipe's rows in worker processes (``alad run --jobs N``).

Once the teacher and the alignment are done, the rows of stage 3 and the baselines are independent
fine-tuning runs, each writing its own folder. On a small CPU, one torch thread per row and rows side
by side use the cores better than every thread on one small-batch row at a time. Each worker runs
:func:`finetune` exactly as the sequential path does (same settings, data and seed; only the
thread count, and so float rounding, differs); the runner then reads the finished folders in order,
so the results are assembled the same way.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import threading
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from alad.finetuning.teacher_signals import cached_soft_targets
from alad.finetuning.trainer import METRICS, MODEL_DIR, FinetuneConfig, TaskSplits, distillation_items, finetune
from alad.tasks import get_task


@dataclass(frozen=True)
class RowJob:
    """One row to train: its run folder, settings and label budget."""

    folder: Path
    config: FinetuneConfig
    budget: int

    def cost(self) -> tuple:
        """Largest first, so the long rows do not start last: joint before frozen, distillation first."""
        return (self.config.mode == "joint", self.config.kd_weight > 0, self.budget)


_SPLITS: TaskSplits | None = None  # a worker's copy of the run's data, sent once


def _start_worker(splits: TaskSplits, threads: int) -> None:
    global _SPLITS
    _SPLITS = splits
    torch.set_num_threads(threads)
    exit_with_parent()


def exit_with_parent() -> None:
    """End this worker process when the process that started it dies (``alad run`` killed, say):
    otherwise it waits for work forever holding its memory, or trains a row on that nobody reads. A
    row it was training keeps its last checkpoint and resumes on the next run."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="alad-exit-with-parent", daemon=True).start()


def _train(job: RowJob, device: str) -> str:
    finetune(job.folder, job.config, splits=_SPLITS.with_budget(job.budget), show_progress=False, device=device)
    return job.folder.name


def _distillation_targets_once(jobs: list[RowJob], splits: TaskSplits, show_progress: bool) -> None:
    """The teacher's soft targets of every distillation row, cached here first in one teacher pass per
    teacher over the union of their items: rows started side by side would otherwise each run the
    teacher, and the budgets of one split share most items (the unlabelled rest, nested subsets)."""
    wanted: dict[tuple[str, str, str], tuple[FinetuneConfig, list]] = {}
    for job in jobs:
        if job.config.kd_weight > 0:
            task = get_task(job.config.task)
            _, items = distillation_items(task, splits.with_budget(job.budget), job.config)
            key = (job.config.task, str(job.config.teacher), task.soft_target_settings(job.config))
            wanted.setdefault(key, (job.config, []))[1].extend(items)
    for (task_name, teacher, _), (config, items) in wanted.items():
        task = get_task(task_name)
        cached_soft_targets(task, Path(teacher) / MODEL_DIR, items, show_progress=show_progress, config=config)


def run_row_jobs(
    jobs: list[RowJob], splits: TaskSplits, workers: int, device: str, show_progress: bool, label: str = ""
) -> None:
    """Train the unfinished ``jobs`` in ``workers`` processes sharing this process's torch threads.

    A failed row stops the others (their folders resume on the next run) and its error is raised here.
    """
    pending = sorted((job for job in jobs if not (job.folder / METRICS).is_file()), key=RowJob.cost, reverse=True)
    if not pending:
        return
    _distillation_targets_once(pending, splits, show_progress)
    workers = min(workers, len(pending))
    threads = max(1, torch.get_num_threads() // workers)
    context = multiprocessing.get_context("spawn")  # no fork of a process holding torch threads
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker, initargs=(splits, threads))
    try:
        futures = [pool.submit(_train, job, device) for job in pending]
        with tqdm(total=len(futures), disable=not show_progress, desc=f"{label} rows ({workers} processes)") as bar:
            remaining = set(futures)
            while remaining:
                done, remaining = wait(remaining, return_when=FIRST_COMPLETED)
                for future in done:
                    bar.set_postfix_str(future.result(), refresh=False)  # raises a row's error here
                    bar.update()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
