"""Task fine-tuning and evaluation (recipe stage 0 for the teacher, stage 3 for the student).

One loop serves POS, NER and QA, every mode, the teacher and the baselines: AdamW with separate
learning rates for the encoder and for adapter + head, linear warm-up then decay, gradient
clipping, length-bucketed batches, fixed seeds, progress bars and a resumable checkpoint. The
result is a self-contained task model folder plus ``metrics.json``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from alad.alignment import warmup_linear_decay
from alad.metrics import ner_metrics, no_answer_baseline, pos_metrics, squad_v2_metrics
from alad.models import MINILM, resolve_device
from alad.run_folder import claim_run_folder
from alad.serialization import (
    config_from_dict,
    config_to_dict,
    load_training_state,
    read_json,
    save_training_state,
    write_json_atomic,
)
from alad.task_data import DataSource, disjoint_splits, seeded_subset
from alad.task_models import MODES, AladTaskModel, build_task_model
from alad.tasks import (
    IGNORE_INDEX,
    check_labels,
    collate_token_features,
    decode_token_predictions,
    label_vocabulary,
    prepare_token_features,
)
from alad.training_loop import ResumableLoop, optimizer_step, rng_state, set_rng_state
from alad.validation import check_finetune_inputs, check_finite_parameters, validate_finetune_config

logger = logging.getLogger(__name__)

FINETUNE_CONFIG = "finetune_config.json"
METRICS = "metrics.json"
MODEL_DIR = "model"


HEAD_INITS = ("random", "teacher")


@dataclass
class FinetuneConfig:
    """Settings of one task fine-tuning run; saved as ``finetune_config.json``."""

    task: str = field(default="ner", metadata={"help": "pos, ner or qa"})
    student: str = field(default=MINILM, metadata={"help": "encoder to fine-tune: packaged name, folder or hub id"})
    adapter: str | None = field(default=None, metadata={"help": "alignment adapter folder (none: plain encoder)"})
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
    epochs: int = field(default=3, metadata={"help": "passes over the training subset"})
    batch_size: int = field(default=16, metadata={"help": "sentences (or QA windows) per batch"})
    lr_encoder: float = field(default=1e-4, metadata={"help": "peak learning rate of the encoder"})
    lr_head: float = field(default=1e-3, metadata={"help": "peak learning rate of the task head"})
    lr_adapter: float | None = field(
        default=None, metadata={"help": "peak learning rate of the adapter (None: that of the head)"}
    )
    warmup_ratio: float = field(default=0.1, metadata={"help": "share of steps with linear warm-up"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    grad_clip: float = field(default=1.0, metadata={"help": "max gradient norm (0: off)"})
    seed: int = field(default=0, metadata={"help": "seed of subsets, batching, head init and dropout"})
    checkpoint_every: int = field(default=100, metadata={"help": "checkpoint every N steps (0: epoch ends only)"})
    max_length: int = field(default=384, metadata={"help": "qa: tokens per question+context window"})
    doc_stride: int = field(default=128, metadata={"help": "qa: overlap between context windows"})
    max_answer_length: int = field(default=30, metadata={"help": "qa: longest answer span in tokens"})

    def __post_init__(self) -> None:
        if self.task not in ("pos", "ner", "qa"):
            raise ValueError(f"task must be pos, ner or qa, got {self.task!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.mode in ("head-only", "teacher-head") and not self.adapter:
            raise ValueError(f"mode {self.mode!r} needs --adapter")
        if self.mode == "teacher-head" and not self.teacher:
            raise ValueError("mode 'teacher-head' needs --teacher, the fine-tuned teacher's run folder")
        if self.head_init not in HEAD_INITS:
            raise ValueError(f"head_init must be one of {HEAD_INITS}, got {self.head_init!r}")
        if self.head_init == "teacher" and not (self.adapter and self.teacher):
            raise ValueError(
                "head_init 'teacher' needs --adapter (its output is in the teacher's space) and --teacher "
                "(whose head is copied)"
            )
        validate_finetune_config(self)  # types, finite numbers, ranges, data format against task


@dataclass
class TaskSplits:
    """Training and evaluation items of a run, and how they were chosen (written beside results)."""

    train: list
    eval: list
    info: dict[str, Any]


def load_splits(config: FinetuneConfig) -> TaskSplits:
    """Training and evaluation data as the config says, including the SQuAD article split."""
    source = DataSource.parse(config.data, tag=config.tag)
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
    if config.task == "qa" and config.squad_dev_articles_to_train:
        from alad.qa import split_squad_by_article

        train_all, eval_all, split_info = split_squad_by_article(
            train_all, eval_all, config.squad_dev_articles_to_train, config.seed
        )
        info["article_split"] = split_info
    train = seeded_subset(train_all, config.max_train, config.seed)
    evaluation = seeded_subset(eval_all, config.max_eval, config.seed + 1)
    info.update(
        {
            "train_items": len(train),
            "train_available": len(train_all),
            "eval_items": len(evaluation),
            "eval_available": len(eval_all),
        }
    )
    if not train:
        raise ValueError(f"no training items in {info['train_file']}")
    return TaskSplits(train, evaluation, info)


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


def _features(model: AladTaskModel, items: Sequence, config: FinetuneConfig) -> list:
    if model.config.task == "qa":
        from alad.qa import prepare_qa_features

        return prepare_qa_features(
            items, model.tokenizer, max_length=min(config.max_length, model.max_length), doc_stride=config.doc_stride
        )
    label_to_id = {label: i for i, label in enumerate(model.config.labels)}
    return prepare_token_features(items, model.tokenizer, label_to_id, model.max_length)


def _collate(model: AladTaskModel, features: Sequence) -> dict[str, torch.Tensor]:
    pad = model.tokenizer.pad_token_id or 0
    if model.config.task == "qa":
        from alad.qa import collate_qa

        return collate_qa(features, pad)
    return collate_token_features(features, pad)


def task_loss(model: AladTaskModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    logits = model(batch["input_ids"], batch["attention_mask"])
    if model.config.task == "qa":
        start, end = logits[..., 0], logits[..., 1]
        masked = batch["attention_mask"] == 0
        start, end = start.masked_fill(masked, -1e4), end.masked_fill(masked, -1e4)
        return (F.cross_entropy(start, batch["start_positions"]) + F.cross_entropy(end, batch["end_positions"])) / 2
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["labels"].reshape(-1), ignore_index=IGNORE_INDEX)


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
    return torch.optim.AdamW(groups, weight_decay=config.weight_decay)


def train_task_model(
    model: AladTaskModel,
    features: Sequence,
    config: FinetuneConfig,
    checkpoint_path: Path | None = None,
    show_progress: bool = True,
    stop_after_steps: int | None = None,
) -> dict[str, Any]:
    """Train the parameters the model's mode leaves trainable; resumable through ``checkpoint_path``."""
    if not model.trainable_parameter_names():
        return {"steps": 0, "final_loss": None}
    lengths = [len(f.input_ids) for f in features]
    loop = ResumableLoop(
        config.epochs,
        lambda epoch: length_bucketed_batches(lengths, config.batch_size, config.seed + epoch),
        lambda epoch, batch, step: save(epoch, batch, step),
        checkpoint_every=config.checkpoint_every,
        stop_after_steps=stop_after_steps,
        description=f"fine-tuning {model.config.task} ({model.config.mode})",
        show_progress=show_progress,
    )
    optimizer = _optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_linear_decay(loop.total_steps(), config.warmup_ratio)
    )
    losses: list[float] = []
    state = load_training_state(checkpoint_path) if checkpoint_path else None
    if state is not None:
        model.load_state_dict(state["model"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        loop.resume_at(state["epoch"], state["batch"], state["step"])
        losses = state["losses"]
        logger.info("resuming fine-tuning at epoch %d, batch %d", loop.start_epoch + 1, loop.start_batch)
    else:
        torch.manual_seed(config.seed)

    def save(epoch: int, batch: int, step: int) -> None:
        if checkpoint_path is None:
            return
        trainable = set(model.trainable_parameter_names())
        save_training_state(
            checkpoint_path,
            {
                "model": {k: v for k, v in model.state_dict().items() if k in trainable},
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": rng_state(),
                "epoch": epoch,
                "batch": batch,
                "step": step,
                "losses": losses,
            },
        )

    device = next(model.parameters()).device

    def train_step(batch_indices: list[int]) -> dict[str, str]:
        batch = _collate(model, [features[i] for i in batch_indices])
        loss = task_loss(model, {name: value.to(device) for name, value in batch.items()})
        optimizer_step(loss, optimizer, scheduler, [p for p in model.parameters() if p.requires_grad], config.grad_clip)
        losses.append(round(loss.item(), 5))
        return {"loss": f"{sum(losses[-20:]) / len(losses[-20:]):.4f}"}

    model.train()
    if not loop.run(train_step):
        return {"interrupted_at_step": loop.step}
    step = loop.step
    model.eval()
    return {"steps": step, "final_loss": sum(losses[-20:]) / max(1, len(losses[-20:])), "loss_curve": losses[::10]}


@torch.inference_mode()
def _logits(model: AladTaskModel, features: Sequence, batch_size: int = 32, show_progress: bool = False) -> list:
    model.eval()
    out: list = [None] * len(features)
    lengths = [len(f.input_ids) for f in features]
    order = sorted(range(len(features)), key=lambda i: lengths[i])
    device = next(model.parameters()).device
    for start in tqdm(range(0, len(order), batch_size), disable=not show_progress, desc="predicting"):
        indices = order[start : start + batch_size]
        batch = _collate(model, [features[i] for i in indices])
        logits = model(batch["input_ids"].to(device), batch["attention_mask"].to(device)).float().cpu()
        for row, i in enumerate(indices):
            out[i] = logits[row, : lengths[i]]
    return out


def predict_tags(model: AladTaskModel, sentences: Sequence, show_progress: bool = False) -> list[list[str]]:
    """Word-level tags for tagged or untagged sentences (tags of the input are ignored)."""
    from alad.readers import TaggedSentence

    plain = [TaggedSentence(list(s.tokens), [model.config.labels[0]] * len(s.tokens)) for s in sentences]
    label_to_id = {label: i for i, label in enumerate(model.config.labels)}
    features = prepare_token_features(plain, model.tokenizer, label_to_id, model.max_length)
    logits = _logits(model, features, show_progress=show_progress)
    return decode_token_predictions(plain, features, [x.argmax(-1).tolist() for x in logits], model.config.labels)


def predict_answers(
    model: AladTaskModel, examples: Sequence, config: FinetuneConfig, show_progress: bool = False
) -> tuple[dict[str, str], dict[str, float]]:
    """Best span text and no-answer score (null minus best span; > 0 favours no answer) per question."""
    from alad.qa import decode_qa

    features = _features(model, examples, config)
    logits = _logits(model, features, show_progress=show_progress)
    return decode_qa(
        examples,
        features,
        [x[:, 0] for x in logits],
        [x[:, 1] for x in logits],
        max_answer_length=config.max_answer_length,
    )


def evaluate_task_model(
    model: AladTaskModel, items: Sequence, config: FinetuneConfig, show_progress: bool = False
) -> dict[str, Any]:
    """The task metric(s) on ``items``: POS accuracy/macro F1, NER entity F1, or SQuAD 2.0 EM/F1."""
    if model.config.task == "qa":
        from alad.qa import apply_null_threshold

        predictions, na_scores = predict_answers(model, items, config, show_progress)
        gold = {ex.id: [text for text, _ in ex.answers] if not ex.is_impossible else [] for ex in items}
        at_zero = squad_v2_metrics(gold, apply_null_threshold(predictions, na_scores, 0.0))
        best = squad_v2_metrics(gold, predictions, na_probs=na_scores)
        return {
            **at_zero,
            **{k: v for k, v in best.items() if k.startswith("best")},
            "no_answer_baseline": no_answer_baseline(gold),
        }
    check_labels(items, model.config.labels, "the evaluation data")
    predicted = predict_tags(model, items, show_progress)
    gold = [list(s.tags) for s in items]
    return pos_metrics(gold, predicted) if model.config.task == "pos" else ner_metrics(gold, predicted)


def task_model_latency(model: AladTaskModel, seq_len: int = 32) -> dict[int, dict[str, float]]:
    """CPU latency of the whole deployed model (encoder, adapter, head) at batch 1 and 32, on fixed
    random token ids of ``seq_len`` tokens, so every row of a table is timed on the same input."""
    from alad.latency import model_latency

    vocab = model.encoder.config.vocab_size

    def make_inputs(batch: int) -> dict[str, torch.Tensor]:
        ids = torch.randint(5, vocab, (batch, seq_len), generator=torch.Generator().manual_seed(0))
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    return model_latency(model, make_inputs, batch_sizes=(1, 32))


def headline(metrics: dict[str, Any], task: str) -> dict[str, float]:
    """The numbers a results row shows, in percent."""
    if task == "pos":
        return {"accuracy": 100 * metrics["accuracy"], "macro_f1": 100 * metrics["macro_f1"]}
    if task == "ner":
        return {"micro_f1": 100 * metrics["micro_f1"], "macro_f1": 100 * metrics["macro_f1"]}
    return {
        "exact": metrics["exact"],
        "f1": metrics["f1"],
        "HasAns_f1": metrics.get("HasAns_f1", float("nan")),
        "NoAns_f1": metrics.get("NoAns_f1", float("nan")),
        "best_f1": metrics.get("best_f1", metrics["f1"]),
    }


def main_metric(task: str) -> str:
    return {"pos": "accuracy", "ner": "micro_f1", "qa": "f1"}[task]


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
    out = Path(out_dir)
    check_finetune_inputs(out, config)  # run folder, --adapter, --teacher: before any work
    # A finished run is reused and an interrupted one resumed, but only with the settings it was started
    # with: resuming another config's checkpoint would train with the old settings under the new label.
    # A config left by a run that failed before training (no checkpoint, no model) binds nothing.
    if (out / FINETUNE_CONFIG).is_file() and any((out / f).exists() for f in (METRICS, "checkpoint.pt", MODEL_DIR)):
        saved = config_from_dict(FinetuneConfig, read_json(out / FINETUNE_CONFIG, "run config")["config"], str(out))
        if saved != config:
            raise ValueError(f"{out} holds a fine-tuning run with other settings; use another --out or delete it")
    if (out / METRICS).is_file():
        return read_json(out / METRICS, "metrics")
    splits = splits or load_splits(config)
    teacher = AladTaskModel.from_pretrained(Path(config.teacher) / MODEL_DIR) if config.teacher else None
    if config.task == "qa":
        labels: tuple[str, ...] = ()
    elif teacher is not None:
        labels = tuple(teacher.config.labels)
    else:
        labels = tuple(label_vocabulary(splits.train))
    if config.task != "qa":
        check_labels(splits.train, labels, "the training data")
        check_labels(splits.eval, labels, "the evaluation data")  # fail before training, not after
    model = build_task_model(
        config.task,
        config.student,
        labels,
        adapter=config.adapter,
        mode=config.mode,
        teacher_model=teacher,
        head_from_teacher=config.head_init == "teacher",
        seed=config.seed,
    ).to(device)
    claim_run_folder(out, "finetune_run")  # the marker is the first file alad writes there
    write_json_atomic(out / FINETUNE_CONFIG, {"kind": "finetune_run", "config": config_to_dict(config)})
    started = time.perf_counter()
    training = {"steps": 0}
    if config.mode != "teacher-head":
        features = _features(model, splits.train, config)
        training = train_task_model(model, features, config, out / "checkpoint.pt", show_progress, stop_after_steps)
        if "interrupted_at_step" in training:
            return training
    train_seconds = time.perf_counter() - started
    check_finite_parameters((p for p in model.parameters() if p.requires_grad), "the task model")
    model.metadata = {"finetune": config_to_dict(config), "data": splits.info}
    model.save_pretrained(out / MODEL_DIR)
    metrics = evaluate_task_model(model, splits.eval, config, show_progress)
    result = {
        "task": config.task,
        "mode": config.mode,
        "split": config.eval_split,
        "data": splits.info,
        "headline": headline(metrics, config.task),
        "metrics": metrics,
        "params_total": model.num_parameters(),
        "params_trained": sum(p.numel() for p in model.parameters() if p.requires_grad)
        if config.mode != "teacher-head"
        else 0,
        "train_seconds": round(train_seconds, 1),
        "training": training,
    }
    write_json_atomic(out / METRICS, result)
    (out / "checkpoint.pt").unlink(missing_ok=True)
    return result


def load_run(run_dir: str | os.PathLike) -> tuple[AladTaskModel, FinetuneConfig]:
    """The trained model of a fine-tuning run folder and the config it was trained with."""
    run = Path(run_dir)
    if not (run / FINETUNE_CONFIG).is_file():
        raise FileNotFoundError(f"{run} is not a fine-tuning run folder (no {FINETUNE_CONFIG})")
    config = config_from_dict(FinetuneConfig, read_json(run / FINETUNE_CONFIG, "run config")["config"], str(run))
    return AladTaskModel.from_pretrained(run / MODEL_DIR), config
