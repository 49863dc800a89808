"""Alignment training (recipe stages 1 and 2): adapters learn to predict the teacher's states.

Student and teacher are frozen, so their token states come from the embedding cache: the teacher
runs once per corpus, not once per step, window and epoch. Every requested window size is trained
in the same pass over each batch (one adapter, optimiser and schedule per window). A held-out
split gives validation MSE and mean cosine per epoch; each window keeps its best epoch. The run
folder holds a resumable checkpoint, so an interrupted run continues exactly where it stopped.

Training streams from the cache (:mod:`alad.alignment.streaming`): batches are formed within a buffer of at
most ``buffer_tokens`` tokens of shards, so memory does not grow with the corpus; a corpus whose
training tokens fit in the buffer is batched exactly as before streaming. Under ``torchrun`` or
``accelerate launch`` the cache build and the training are shared by the processes
(:mod:`alad.training.distributed`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from alad.adapters import ADAPTER_TYPES, AdapterConfig, AlignmentAdapter
from alad.adapters.base import DEFAULT_HIDDEN_SIZE, check_type_options, type_option_defaults
from alad.alignment.cache import EmbeddingCache, TokenEmbeddings, corpus_hash, encode_spans
from alad.alignment.pairing import AlignText, segment_texts, teacher_targets
from alad.alignment.streaming import AlignmentStream, Chunk, StreamBatch, pad_batch, token_batches
from alad.io.run_folder import claim_run_folder, remove_own_files
from alad.io.serialization import (
    ArtefactError,
    atomic_write,
    config_from_dict,
    config_to_dict,
    load_training_state,
    read_json,
    save_training_state,
    write_json_atomic,
    write_text_atomic,
)
from alad.models.encoders import MINILM, MPNET, Encoder, load_encoder, resolve_device
from alad.training import distributed
from alad.training.loop import ResumableLoop, adamw, optimizer_step, rng_state, set_rng_state
from alad.training.precision import autocast
from alad.validation import (
    check_align_inputs,
    check_finite_parameters,
    check_layer,
    check_usable_tokens,
    validate_config,
)

logger = logging.getLogger(__name__)

RUN_CONFIG = "run_config.json"
SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
CHECKPOINT_DIR = "checkpoint"
SHARD_TEXTS = 2048
"""Texts per embedding-cache shard: the unit of streaming, and of the cache build under several processes."""


@dataclass
class AlignConfig:
    """Settings of one alignment run; saved as ``run_config.json`` in the run folder."""

    student: str = field(default=MINILM, metadata={"help": "student encoder: packaged name, folder or hub id"})
    teacher: str = field(default=MPNET, metadata={"help": "teacher encoder: packaged name, folder or hub id"})
    corpus: str | None = field(
        default=None,
        metadata={"help": "text file, CoNLL, CoNLL-U or SQuAD JSON; default: the 100k-sentence corpus"},
    )
    corpus_format: str = field(
        default="auto",
        metadata={"help": "auto, text, conll2003, conllu, squad, or squad-pairs: (question, context) pair inputs"},
    )
    max_texts: int | None = field(default=2000, metadata={"help": "use the first N texts of the corpus (None: all)"})
    windows: tuple[int, ...] | None = field(
        default=None,
        metadata={"help": "odd window sizes trained together; default (1, 3, 5) or those of --init"},
    )
    hidden_size: int | None = field(
        default=None,
        metadata={
            "help": f"adapter MLP hidden width (default {DEFAULT_HIDDEN_SIZE}, which keeps 93-94% of the paper's "
            "1280's gain for a quarter of its latency; with --init, that of the adapters continued)"
        },
    )
    activation: str = field(default="gelu", metadata={"help": "adapter activation"})
    dropout: float = field(default=0.1, metadata={"help": "adapter dropout"})
    adapter_type: str | None = field(
        default=None,
        metadata={
            "help": f"adapter type, one of {', '.join(sorted(ADAPTER_TYPES))}: mlp is the paper's window MLP; "
            "attention adds one light masked self-attention block over the whole text after it, so a token can "
            "read beyond its window (e.g. question and context in QA). None: mlp, or the type of --init"
        },
    )
    attention_dim: int | None = field(
        default=None,
        metadata={
            "help": "attention adapters: width of queries, keys and values, divisible by --attention-heads "
            "(None: 128, or that of --init)"
        },
    )
    attention_heads: int | None = field(
        default=None, metadata={"help": "attention adapters: attention heads (None: 4, or those of --init)"}
    )
    init: str | None = field(
        default=None,
        metadata={"help": "continue from an adapter folder, or a run folder with w<K> adapters (stage 2)"},
    )
    student_layer: int = field(default=-1, metadata={"help": "student hidden layer to read (-1: last)"})
    teacher_layer: int = field(default=-1, metadata={"help": "teacher hidden layer to predict (-1: last)"})
    align_special_tokens: bool = field(
        default=False,
        metadata={
            "help": "also align special tokens ([CLS], [SEP], <s>, </s>) by role: before, between and after the "
            "texts; for heads that read them, e.g. QA's null answer at the first token"
        },
    )
    loss: str = field(default="mse", metadata={"help": "mse or cosine"})
    epochs: int = field(default=10, metadata={"help": "passes over the training split (the most, with --patience)"})
    patience: int | None = field(
        default=None,
        metadata={
            "help": "stop once no window's held-out cosine has improved by min_delta for this many epochs "
            "(None: run all epochs)"
        },
    )
    min_delta: float = field(default=1e-4, metadata={"help": "smallest held-out cosine gain that counts (patience)"})
    schedule: str = field(
        default="linear",
        metadata={
            "help": "linear: warm-up, then linear decay to 0 at the last epoch; plateau: warm-up over the first "
            "epoch, then constant, halved after every epoch whose held-out cosine does not improve (for --patience)"
        },
    )
    lr: float = field(default=1e-3, metadata={"help": "AdamW peak learning rate"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    warmup_ratio: float = field(default=0.1, metadata={"help": "share of steps with linear warm-up, then linear decay"})
    grad_clip: float = field(default=1.0, metadata={"help": "max gradient norm per adapter (0: off)"})
    batch_tokens: int = field(default=1024, metadata={"help": "padded tokens per batch"})
    precision: str = field(
        default="fp32",
        metadata={
            "help": "fp32, or bf16: embed the cache and run the adapter's forward pass under bfloat16 autocast "
            "(weights, optimiser and loss stay fp32; held-out cosines in fp32); 2-3x faster where the CPU has "
            "AMX/AVX512-BF16 or on a GPU, slower elsewhere"
        },
    )
    buffer_tokens: int = field(
        default=300_000,
        metadata={
            "help": "most cached tokens held in memory: training streams the cache shard by shard and shuffles "
            "within this buffer (a corpus whose training tokens fit is shuffled as a whole)"
        },
    )
    val_fraction: float = field(default=0.1, metadata={"help": "share of texts held out for validation"})
    seed: int = field(default=0, metadata={"help": "seed for split, batching, init and dropout"})
    checkpoint_every: int = field(default=50, metadata={"help": "also checkpoint every N steps (0: epoch ends only)"})
    cache_dir: str | None = field(
        default=None,
        metadata={"help": "embedding cache folder (default ~/.cache/alad/embeddings; not a run setting)"},
    )

    def __post_init__(self) -> None:
        validate_config(self)  # types, finite numbers and ranges of every field, before any work
        if self.windows is not None:
            self.windows = tuple(int(w) for w in self.windows)
            for window in self.windows:
                if window < 1 or window % 2 == 0:
                    raise ValueError(f"window sizes must be odd integers >= 1, got {window} in {self.windows}")
        if self.loss not in ("mse", "cosine"):
            raise ValueError(f"loss must be 'mse' or 'cosine', got {self.loss!r}")
        if self.epochs < 1 or self.batch_tokens < 1:
            raise ValueError("epochs and batch_tokens must be >= 1")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.schedule not in ("linear", "plateau"):
            raise ValueError(f"schedule must be linear or plateau, got {self.schedule!r}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be >= 1 or None, got {self.patience}")
        if self.max_texts is not None and self.max_texts < 2:
            raise ValueError("max_texts must be at least 2 (one to train on, one to validate)")
        options = self.adapter_options()
        if self.adapter_type is not None or self.init is None or options:
            # without --init, no type means mlp; with --init, attention options given alone mean attention
            default = "attention" if self.init is not None else "mlp"
            check_type_options(self.adapter_type or default, options)

    def adapter_options(self) -> dict[str, int]:
        """The adapter-type options set here (``attention_dim``, ``attention_heads``), without the unset ones."""
        return {name: getattr(self, name) for name in type_option_defaults() if getattr(self, name) is not None}


@dataclass
class AlignmentData:
    """Per-text student states, teacher targets on student tokens, and which tokens count."""

    student: list[torch.Tensor]  # [T, d_s] float16
    targets: list[torch.Tensor]  # [T, d_t] float16
    loss_mask: list[torch.Tensor]  # [T] bool

    def __len__(self) -> int:
        return len(self.student)

    @classmethod
    def from_embeddings(
        cls, student: TokenEmbeddings, teacher: TokenEmbeddings, specials: bool = False
    ) -> AlignmentData:
        if student.texts != teacher.texts:
            raise ValueError("student and teacher embeddings were computed on different texts")
        targets, masks = [], []
        for s_spans, t_spans, t_states in zip(student.spans, teacher.spans, teacher.states, strict=True):
            target, mask = teacher_targets(s_spans, t_spans, t_states, specials)
            targets.append(target.to(torch.float16))
            masks.append(mask)
        return cls(student=list(student.states), targets=targets, loss_mask=masks)

    def subset(self, indices: Sequence[int]) -> AlignmentData:
        return AlignmentData(
            [self.student[i] for i in indices],
            [self.targets[i] for i in indices],
            [self.loss_mask[i] for i in indices],
        )

    def collate(self, indices: Sequence[int]) -> tuple[torch.Tensor, ...]:
        """Pad a batch: student [B,T,d_s], attention mask [B,T], targets [B,T,d_t], loss mask [B,T]."""
        return pad_batch(
            [self.student[i] for i in indices], [self.targets[i] for i in indices], [self.loss_mask[i] for i in indices]
        )


def alignment_loss(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, kind: str = "mse", denominator: int | None = None
) -> torch.Tensor:
    """Mean over counted tokens of the per-token MSE (or 1 - cosine).

    ``denominator`` divides the sum instead of the number of counted tokens here: one process's share
    of a global batch divides by the global batch's count, so the shares sum to the batch's mean.
    """
    if kind == "mse":
        per_token = (pred - target).pow(2).mean(dim=-1)
    else:
        per_token = 1.0 - F.cosine_similarity(pred, target, dim=-1, eps=1e-6)
    if denominator is not None:
        return per_token[mask].sum() / max(denominator, 1)
    return per_token[mask].mean() if mask.any() else pred.sum() * 0.0


@torch.no_grad()
def evaluate_adapter(adapter: AlignmentAdapter, data: AlignmentData, batch_tokens: int = 4096) -> dict[str, float]:
    """Validation MSE and mean cosine similarity over counted tokens."""
    was_training = adapter.training
    adapter.eval()
    device = next(adapter.parameters()).device
    sq, cos, count = 0.0, 0.0, 0
    for batch in token_batches([t.shape[0] for t in data.student], batch_tokens, seed=0):
        x, attention, y, counted = (t.to(device) for t in data.collate(batch))
        pred = adapter(x, attention)
        sq += (pred - y).pow(2).mean(dim=-1)[counted].sum().item()
        cos += F.cosine_similarity(pred, y, dim=-1, eps=1e-6)[counted].sum().item()
        count += int(counted.sum())
    adapter.train(was_training)
    return {"mse": sq / max(count, 1), "cosine": cos / max(count, 1), "tokens": count}


def mean_predictor_metrics(train: AlignmentData, val: AlignmentData) -> dict[str, float]:
    """Scores of the trivial predictor that always outputs the teacher's mean training token state."""
    mean = torch.cat([t.float()[m] for t, m in zip(train.targets, train.loss_mask, strict=True)]).mean(dim=0)
    targets = torch.cat([t.float()[m] for t, m in zip(val.targets, val.loss_mask, strict=True)])
    return {
        "mse": (targets - mean).pow(2).mean().item(),
        "cosine": F.cosine_similarity(targets, mean.expand_as(targets), dim=-1, eps=1e-6).mean().item(),
    }


def load_texts(config: AlignConfig) -> list[AlignText]:
    from alad.data.readers import read_texts
    from alad.data.sources import corpus_path

    path = Path(config.corpus) if config.corpus else corpus_path()
    texts = read_texts(path, format=config.corpus_format)
    if config.max_texts is not None:
        texts = texts[: config.max_texts]
    return texts


def _init_adapters(config: AlignConfig, student_dim: int, teacher_dim: int) -> dict[int, AlignmentAdapter]:
    """Fresh adapters, or those of ``config.init`` (an adapter folder or a run folder of them)."""
    if config.init is None:
        windows = config.windows or (1, 3, 5)
        return {window: _fresh_adapter(config, window, student_dim, teacher_dim) for window in windows}
    init = Path(config.init)
    found = _saved_adapters(init)
    windows = config.windows or tuple(sorted(found))
    missing = [w for w in windows if w not in found]
    if missing:
        raise ValueError(f"--init {init} has adapters for windows {sorted(found)}, not for {missing}")
    for window in windows:
        _check_continuable(found[window].config, config, student_dim, teacher_dim)
    return {w: found[w] for w in windows}


def _fresh_adapter(config: AlignConfig, window: int, student_dim: int, teacher_dim: int) -> AlignmentAdapter:
    torch.manual_seed(config.seed * 1000 + window)
    return AlignmentAdapter(
        AdapterConfig(
            student_dim=student_dim,
            teacher_dim=teacher_dim,
            window=window,
            hidden_size=config.hidden_size or DEFAULT_HIDDEN_SIZE,
            activation=config.activation,
            dropout=config.dropout,
            adapter_type=config.adapter_type or "mlp",
            **config.adapter_options(),
        )
    )


def _saved_adapters(init: Path) -> dict[int, AlignmentAdapter]:
    """The adapters of an adapter folder, or of a run folder's ``w<K>`` folders, by window."""
    if not init.is_dir():
        raise FileNotFoundError(f"--init {init} is not a folder; pass an adapter folder or an alignment run folder")
    folders = [init] if (init / "adapter_config.json").is_file() else sorted(init.glob("w*"))
    adapters = [AlignmentAdapter.from_pretrained(f) for f in folders if (f / "adapter_config.json").is_file()]
    if not adapters:
        raise ArtefactError(f"--init {init} holds no adapter (adapter_config.json, or w<K>/adapter_config.json)")
    return {adapter.config.window: adapter for adapter in adapters}


def _check_continuable(cfg: AdapterConfig, config: AlignConfig, student_dim: int, teacher_dim: int) -> None:
    """An --init adapter continues only with this pair's widths and the shape options the flags name."""
    window = cfg.window
    if (cfg.student_dim, cfg.teacher_dim) != (student_dim, teacher_dim):
        raise ValueError(
            f"--init adapter w{window} maps {cfg.student_dim} -> {cfg.teacher_dim} dims, but this student has "
            f"{student_dim} and this teacher {teacher_dim}: it was aligned for another pair"
        )
    if config.adapter_type is not None and cfg.adapter_type != config.adapter_type:
        raise ValueError(
            f"--init adapter w{window} is of type {cfg.adapter_type!r}, not --adapter-type "
            f"{config.adapter_type}; leave --adapter-type out to continue it, or align from scratch without --init"
        )
    if config.hidden_size is not None and cfg.hidden_size != config.hidden_size:
        raise ValueError(
            f"--hidden-size {config.hidden_size} does not match the --init adapter w{window} (hidden_size="
            f"{cfg.hidden_size}); leave --hidden-size out to continue that adapter"
        )
    for name, value in config.adapter_options().items():
        if getattr(cfg, name) != value:
            flag = "--" + name.replace("_", "-")
            raise ValueError(
                f"{flag} {value} does not match the --init adapter w{window} ({cfg.adapter_type!r} adapter, "
                f"{name}={getattr(cfg, name)}); leave {flag} out to continue that adapter"
            )


def warmup_linear_decay(total_steps: int, warmup_ratio: float):
    """LambdaLR factor: linear warm-up over ``warmup_ratio`` of the steps, then linear decay to 0."""
    warmup = max(1, int(round(total_steps * warmup_ratio)))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return factor


@dataclass
class _Trainer:
    adapter: AlignmentAdapter
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    best: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)


def _save_checkpoint(
    out: Path, trainers: dict[int, _Trainer], epoch: int, batch: int, step: int, extra: dict, world: int = 1
) -> None:
    """Every process calls this (its random state is gathered); only the main one writes."""
    states = distributed.gather(rng_state())
    if not distributed.is_main():
        return
    save_training_state(
        out / CHECKPOINT_DIR / "state.pt",
        {
            "epoch": epoch,
            "batch": batch,
            "step": step,
            "rng": states[0],
            "world_size": world,
            "rng_per_process": states,
            "extra": extra,
            "trainers": {
                w: {
                    "adapter": t.adapter.state_dict(),
                    "optimizer": t.optimizer.state_dict(),
                    "scheduler": t.scheduler.state_dict(),
                    "best": t.best,
                    "history": t.history,
                }
                for w, t in trainers.items()
            },
        },
    )


def _adapter_metadata(config: AlignConfig, trainer: _Trainer, extra: dict) -> dict:
    return {
        "student": config.student,
        "teacher": config.teacher,
        "student_layer": config.student_layer,
        "teacher_layer": config.teacher_layer,
        "corpus": config.corpus or "default corpus",
        "init": config.init,
        **extra,
        "best": trainer.best,
        "history": trainer.history,
    }


def align(
    out_dir: str | os.PathLike,
    config: AlignConfig | None = None,
    *,
    texts: Sequence[AlignText] | None = None,
    student: Encoder | None = None,
    teacher: Encoder | None = None,
    show_progress: bool = True,
    stop_after_steps: int | None = None,
    device: str | torch.device = "cpu",
    **overrides: Any,
) -> dict[str, Any]:
    """Train alignment adapters for every window size and save the best of each to ``out_dir/w<K>``.

    ``texts``, ``student`` and ``teacher`` override what the config names (already-loaded models,
    e.g. compressed in memory); ``texts`` may be (first, second) pairs, aligned as pair inputs.
    ``stop_after_steps`` ends the run early as an interruption would, leaving a checkpoint to
    resume from. ``device`` runs the models and adapters there (``cuda``, ``auto``); it is not part of
    the run's settings, so a run may resume on another device. Returns the run summary (also in
    ``summary.json``).

    Training streams from the embedding cache (:mod:`alad.alignment.streaming`): at most ``buffer_tokens``
    tokens of states are in memory at once. Started by ``torchrun`` or ``accelerate launch`` (several
    processes), every process calls this with the same arguments: each embeds its share of the cache
    shards and trains on its share of every global batch (gradients summed); only the main process
    writes into ``out_dir`` (:mod:`alad.training.distributed`).
    """
    config = dataclasses.replace(config or AlignConfig(), **overrides)
    device = resolve_device(device)  # a wrong device fails before anything is written
    ctx = distributed.setup(device)
    out = Path(out_dir)
    # run folder, cache folder, --init: before any work, and on every process (one may lack a right)
    distributed.agree(lambda: check_align_inputs(out, config))
    given = list(texts)[: config.max_texts] if texts is not None else None
    # Texts read from the config's corpus are named by the config; texts given here must match too.
    _check_same_run(out, config, corpus_hash(given) if given is not None else None)
    if (out / SUMMARY_JSON).is_file() and not (out / CHECKPOINT_DIR).exists():
        logger.info("%s already holds a finished run; returning its summary", out)
        return read_json(out / SUMMARY_JSON, "run summary")

    progress = show_progress and ctx.is_main
    data = _prepare(out, config, ctx, given, student, teacher, progress)  # texts, models, cache, split
    run = _AlignmentRun(out, config, ctx, data)
    run.resume_or_start()
    loop = run.loop(progress, stop_after_steps)
    finished = loop.run(run.train_step, run.end_epoch, run.converged)
    data.stream.release()
    if not finished:
        distributed.barrier()  # the checkpoint is written when every process returns
        return {"interrupted_at_step": loop.step}
    return run.finish()


@dataclass
class _Prepared:
    """What training reads: the texts' digest and counts, the cached states as a stream, the seeded split."""

    num_texts: int
    num_segments: int
    texts_sha256: str
    stream: AlignmentStream
    train_ids: list[int]
    val_ids: list[int]
    val_chunks: list[Chunk]
    counted: tuple[int, int]  # loss tokens of the training and held-out parts
    student_dim: int
    teacher_dim: int


def _prepare(
    out: Path,
    config: AlignConfig,
    ctx: distributed.Context,
    given: list[AlignText] | None,
    student: Encoder | None,
    teacher: Encoder | None,
    progress: bool,
) -> _Prepared:
    """Read the texts, load the models, build (or find) their embedding cache and split it by seed."""
    texts = given if given is not None else load_texts(config)
    texts_sha256 = corpus_hash(texts)
    if given is None:  # an interrupted run resumes only on the texts it started with
        _check_same_run(out, config, texts_sha256)
    student = student or load_encoder(config.student, ctx.device)
    teacher = teacher or load_encoder(config.teacher, ctx.device)
    check_layer(student, config.student_layer, "--student-layer")
    check_layer(teacher, config.teacher_layer, "--teacher-layer")
    segments = segment_texts(texts, [(student.tokenizer, student.max_length), (teacher.tokenizer, teacher.max_length)])
    if len(segments) < 2:
        raise ValueError(f"the corpus has {len(segments)} non-empty texts; alignment needs at least 2")
    if len(segments) != len(texts):
        logger.info("%d texts became %d segments (blank lines dropped, long texts split)", len(texts), len(segments))

    cache = EmbeddingCache(config.cache_dir and Path(config.cache_dir), shard_size=SHARD_TEXTS)
    teacher_cache = cache.build(teacher, segments, config.teacher_layer, progress, config.precision)
    student_cache = cache.build(student, segments, config.student_layer, progress, config.precision)
    stream = AlignmentStream(student_cache, teacher_cache, config.align_special_tokens, config.buffer_tokens)

    order = list(range(len(stream)))
    random.Random(config.seed).shuffle(order)
    n_val = max(1, int(round(len(order) * config.val_fraction)))
    val_ids, train_ids = sorted(order[:n_val]), sorted(order[n_val:])
    if len(train_ids) < ctx.world_size:
        raise ValueError(
            f"{len(segments)} texts ({len(train_ids)} to train on) cannot be shared by {ctx.world_size} processes: "
            f"each needs at least one training text; use at most {max(1, len(train_ids))} processes, or more texts"
        )
    counted = (sum(stream.counted[i] for i in train_ids), sum(stream.counted[i] for i in val_ids))
    check_usable_tokens(counted[0], counted[1], len(texts))
    return _Prepared(
        num_texts=len(texts),
        num_segments=len(segments),
        texts_sha256=texts_sha256,
        stream=stream,
        train_ids=train_ids,
        val_ids=val_ids,
        val_chunks=stream.eval_chunks(val_ids),
        counted=counted,
        student_dim=student_cache.hidden_size,
        teacher_dim=teacher_cache.hidden_size,
    )


class _AlignmentRun:
    """One run's adapters with their optimisers and schedules, where it stands, and the loop's steps:
    one training step over every window, the end of an epoch (held-out scores, best adapters kept),
    convergence, checkpoints, and the summary at the end. Only the main process writes."""

    def __init__(self, out: Path, config: AlignConfig, ctx: distributed.Context, data: _Prepared) -> None:
        self.out, self.config, self.ctx, self.data = out, config, ctx, data
        self.start = {"epoch": 0, "batch": 0, "step": 0}
        self.extra: dict[str, Any] = {}
        steps_per_epoch = len(self.plan(0))
        total_steps = sum(len(self.plan(epoch)) for epoch in range(config.epochs))
        self.trainers: dict[int, _Trainer] = {}
        for window, adapter in _init_adapters(config, data.student_dim, data.teacher_dim).items():
            adapter.to(ctx.device)
            optimizer = adamw(adapter.parameters(), lr=config.lr, weight_decay=config.weight_decay)
            trainer = self.trainers[window] = _Trainer(adapter, optimizer, None)
            trainer.scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer, _lr_factor(config, steps_per_epoch, total_steps, trainer)
            )

    def plan(self, epoch: int) -> list[StreamBatch]:
        return self.data.stream.train_batches(self.data.train_ids, self.config.batch_tokens, self.config.seed, epoch)

    def adapters(self) -> dict[int, AlignmentAdapter]:
        return {window: t.adapter for window, t in self.trainers.items()}

    # -- before the first step -----------------------------------------------------------------------

    def resume_or_start(self) -> None:
        """Continue from the checkpoint, or score the starting point; then claim the run folder."""
        checkpoint = load_training_state(self.out / CHECKPOINT_DIR / "state.pt")
        if checkpoint is not None:
            self._resume(checkpoint)
        else:
            self._start()
        if self.ctx.is_main:
            claim_run_folder(self.out, "alignment_run")  # the marker is the first file alad writes there
            record = {"kind": "alignment_run", "config": config_to_dict(self.config)}
            write_json_atomic(self.out / RUN_CONFIG, {**record, "texts_sha256": self.data.texts_sha256})

    def _resume(self, checkpoint: dict) -> None:
        out, ctx, trainers = self.out, self.ctx, self.trainers
        if set(checkpoint["trainers"]) != set(trainers):
            raise ArtefactError(
                f"checkpoint in {out} trained windows {sorted(checkpoint['trainers'])}, not {sorted(trainers)}"
            )
        saved_world = checkpoint.get("world_size", 1)
        if saved_world != ctx.world_size:
            raise ValueError(
                f"the checkpoint in {out} was written by {saved_world} process(es); resume it with {saved_world} "
                f"(now {ctx.world_size}): each process's share of every batch, and its dropout, must stay the same"
            )
        for window, saved in checkpoint["trainers"].items():
            t = trainers[window]
            t.adapter.load_state_dict(saved["adapter"])
            t.optimizer.load_state_dict(saved["optimizer"])
            t.scheduler.load_state_dict(saved["scheduler"])
            t.best, t.history = saved["best"], saved["history"]
        self.start = {key: checkpoint[key] for key in ("epoch", "batch", "step")}
        self.extra = checkpoint["extra"]
        set_rng_state(checkpoint.get("rng_per_process", [checkpoint["rng"]])[ctx.rank])
        epoch, batch, step = (self.start[key] for key in ("epoch", "batch", "step"))
        logger.info("resuming %s at epoch %d, batch %d (step %d)", out, epoch + 1, batch, step)

    def _start(self) -> None:
        data, ctx = self.data, self.ctx
        self.extra = {
            "num_texts": data.num_texts,
            "num_segments": data.num_segments,
            "num_train": len(data.train_ids),
            "num_val": len(data.val_ids),
            "train_tokens": data.counted[0],
            "val_tokens": data.counted[1],
            "unpaired_student_tokens": sum(data.stream.lengths) - sum(data.stream.counted),
            "student_dim": data.student_dim,
            "teacher_dim": data.teacher_dim,
            "mean_predictor": _streamed_mean_predictor(data.stream, data.train_ids, data.val_chunks, ctx),
        }
        self.extra["initial"] = _evaluate_streamed(self.adapters(), data.stream, data.val_chunks, ctx)
        seed = self.config.seed
        torch.manual_seed(seed if ctx.rank == 0 else seed + 7919 * ctx.rank)  # own dropout per process

    def loop(self, progress: bool, stop_after_steps: int | None) -> ResumableLoop:
        return ResumableLoop(
            self.config.epochs,
            self.plan,
            self.save_checkpoint,
            start_epoch=self.start["epoch"],
            start_batch=self.start["batch"],
            start_step=self.start["step"],
            checkpoint_every=self.config.checkpoint_every,
            stop_after_steps=stop_after_steps,
            description=f"aligning w{','.join(map(str, self.trainers))}",
            show_progress=progress,
        )

    # -- the loop's steps ----------------------------------------------------------------------------

    def train_step(self, batch: StreamBatch) -> dict[str, float]:
        """One optimiser step of every window on this batch (this process's share of it)."""
        ctx, stream = self.ctx, self.data.stream
        stream.ensure(batch.chunk.needed(ctx.rank, ctx.world_size))  # a new chunk: its shards, once
        rows = batch.ids[ctx.rank :: ctx.world_size]
        if ctx.active:
            return self._data_parallel_step(batch, rows)
        x, attention, y, counted = (t.to(ctx.device) for t in stream.collate(rows))
        losses = {}
        for window, t in self.trainers.items():
            t.adapter.train()
            with autocast(ctx.device, self.config.precision):
                loss = alignment_loss(t.adapter(x, attention), y, counted, self.config.loss)
            optimizer_step(loss, t.optimizer, t.scheduler, t.adapter.parameters(), self.config.grad_clip)
            losses[f"w{window}"] = round(loss.item(), 4)
        return losses

    def _data_parallel_step(self, batch: StreamBatch, rows: list[int]) -> dict[str, float]:
        stream, device = self.data.stream, self.ctx.device
        total = sum(stream.counted[i] for i in batch.ids)
        tensors = tuple(t.to(device) for t in stream.collate(rows)) if rows else None
        steps = []
        for t in self.trainers.values():
            t.adapter.train()
            if tensors is None:  # fewer texts in this batch than processes: this one adds nothing
                loss = torch.zeros((), device=device)
            else:
                x, attention, y, counted = tensors
                with autocast(device, self.config.precision):
                    loss = alignment_loss(t.adapter(x, attention), y, counted, self.config.loss, denominator=total)
            steps.append((loss, t.optimizer, t.scheduler, list(t.adapter.parameters())))
        # every window's gradients in one all-reduce per step
        totals = distributed.data_parallel_steps(steps, self.config.grad_clip)
        return {f"w{window}": round(loss.item(), 4) for window, loss in zip(self.trainers, totals, strict=True)}

    def end_epoch(self, epoch: int) -> None:
        """Held-out scores of every window; a window's best epoch so far is saved as its adapter."""
        for window, t in self.trainers.items():
            check_finite_parameters(t.adapter.parameters(), f"adapter w{window}")  # never saved as best
        scores = _evaluate_streamed(self.adapters(), self.data.stream, self.data.val_chunks, self.ctx)
        for window, t in self.trainers.items():
            metrics = scores[window]
            t.history.append({"epoch": epoch + 1, "val_mse": metrics["mse"], "val_cosine": metrics["cosine"]})
            if not t.best or metrics["mse"] < t.best["val_mse"]:
                t.best = {"epoch": epoch + 1, "val_mse": metrics["mse"], "val_cosine": metrics["cosine"]}
                if self.ctx.is_main:
                    t.adapter.save_pretrained(
                        self.out / f"w{window}", metadata=_adapter_metadata(self.config, t, self.extra)
                    )

    def converged(self) -> bool:
        patience = self.config.patience
        return patience is not None and all(
            stalled_epochs(t.history, self.config.min_delta) >= patience for t in self.trainers.values()
        )

    def save_checkpoint(self, epoch: int, batch: int, step: int) -> None:
        _save_checkpoint(self.out, self.trainers, epoch, batch, step, self.extra, self.ctx.world_size)

    # -- after the last epoch ------------------------------------------------------------------------

    def finish(self) -> dict[str, Any]:
        """The summary (JSON, table, curves); the checkpoint is removed once the run is complete."""
        out, config = self.out, self.config
        summary = _summarise(config, self.trainers, self.extra)
        if self.ctx.is_main:
            for window, t in self.trainers.items():  # refresh the saved metadata with the full history
                best = AlignmentAdapter.from_pretrained(out / f"w{window}")
                best.save_pretrained(out / f"w{window}", metadata=_adapter_metadata(config, t, self.extra))
            write_json_atomic(out / SUMMARY_JSON, summary)
            write_text_atomic(out / SUMMARY_MD, format_summary(summary))
            plot_history(summary, out / "alignment_curves.png")
            remove_own_files(out, CHECKPOINT_DIR, ["state.pt"])  # only what alad put there
        distributed.barrier()
        return summary


@torch.no_grad()
def _evaluate_streamed(
    adapters: dict[int, AlignmentAdapter], stream: AlignmentStream, chunks: Sequence[Chunk], ctx: distributed.Context
) -> dict[int, dict[str, float]]:
    """:func:`evaluate_adapter` of every adapter over the held-out chunks, in one pass over the cache.

    Batch ``j`` of each chunk is scored by process ``j % world``; the sums are added over processes.
    """
    modes = {w: a.training for w, a in adapters.items()}
    for adapter in adapters.values():
        adapter.eval()
    sums = {w: [0.0, 0.0, 0] for w in adapters}
    for chunk in chunks:
        mine = [b for j, b in enumerate(chunk.batches) if j % ctx.world_size == ctx.rank]
        stream.ensure([i for b in mine for i in b])
        for batch in mine:
            x, attention, y, counted = (t.to(ctx.device) for t in stream.collate(batch))
            for window, adapter in adapters.items():
                pred = adapter(x, attention)
                sums[window][0] += (pred - y).pow(2).mean(dim=-1)[counted].sum().item()
                sums[window][1] += F.cosine_similarity(pred, y, dim=-1, eps=1e-6)[counted].sum().item()
                sums[window][2] += int(counted.sum())
    for window, adapter in adapters.items():
        adapter.train(modes[window])
    windows = list(adapters)
    if ctx.active:
        flat = distributed.all_reduce_sum([v for w in windows for v in sums[w]])
        sums = {w: [flat[3 * k], flat[3 * k + 1], int(flat[3 * k + 2])] for k, w in enumerate(windows)}
    return {
        w: {"mse": sq / max(count, 1), "cosine": cos / max(count, 1), "tokens": count}
        for w, (sq, cos, count) in sums.items()
    }


def _streamed_mean_predictor(
    stream: AlignmentStream, train_ids: Sequence[int], val_chunks: Sequence[Chunk], ctx: distributed.Context
) -> dict[str, float]:
    """:func:`mean_predictor_metrics` in two passes over the cache (float64 sums), shared by the processes."""
    total, count = None, 0
    for _, members in stream.chunks(train_ids, range(stream.num_shards)):
        mine = members[ctx.rank :: ctx.world_size]
        stream.ensure(mine)
        for index in mine:
            _, target, mask = stream.item(index)
            part = target.double()[mask].sum(dim=0)
            total = part if total is None else total + part
            count += int(mask.sum())
    if total is None:
        total = torch.zeros(stream.teacher.hidden_size, dtype=torch.float64)
    if ctx.active:
        flat = distributed.all_reduce_sum([*total.tolist(), float(count)])
        total, count = torch.tensor(flat[:-1], dtype=torch.float64), int(flat[-1])
    mean = (total / max(count, 1)).float()
    sq, cos, tokens = 0.0, 0.0, 0
    for chunk in val_chunks:
        mine = sorted(i for b in chunk.batches for i in b)[ctx.rank :: ctx.world_size]
        stream.ensure(mine)
        for index in mine:
            _, target, mask = stream.item(index)
            targets = target.float()[mask]
            sq += (targets - mean).pow(2).mean(dim=-1).double().sum().item()
            cos += F.cosine_similarity(targets, mean.expand_as(targets), dim=-1, eps=1e-6).double().sum().item()
            tokens += int(mask.sum())
    if ctx.active:
        sq, cos, tokens = distributed.all_reduce_sum([sq, cos, float(tokens)])
    return {"mse": sq / max(tokens, 1), "cosine": cos / max(tokens, 1)}


def _lr_factor(config: AlignConfig, steps_per_epoch: int, total_steps: int, trainer: _Trainer):
    """The LambdaLR factor of ``config.schedule``. The plateau factor is read from the trainer's
    held-out history, which checkpoints restore, so a resumed run has the same learning rates."""
    if config.schedule == "linear":
        return warmup_linear_decay(total_steps, config.warmup_ratio)
    warmup = max(1, int(round(steps_per_epoch * config.warmup_ratio)))

    def factor(step: int) -> float:
        return min(1.0, (step + 1) / warmup) * 0.5 ** plateau_epochs(trainer.history, config.min_delta)

    return factor


def _cosine_progress(history: Sequence[dict[str, Any]], min_delta: float) -> tuple[int, int]:
    """(epochs since the held-out cosine last beat its best by more than ``min_delta``, such epochs in all)."""
    best, since, total = float("-inf"), 0, 0
    for entry in history:
        if entry["val_cosine"] > best + min_delta:
            best, since = entry["val_cosine"], 0
        else:
            since, total = since + 1, total + 1
    return since, total


def plateau_epochs(history: Sequence[dict[str, Any]], min_delta: float) -> int:
    """Epochs whose held-out cosine did not beat the best before them by more than ``min_delta``."""
    return _cosine_progress(history, min_delta)[1]


def stalled_epochs(history: Sequence[dict[str, Any]], min_delta: float) -> int:
    """Epochs since the held-out cosine last rose by more than ``min_delta`` over its best so far."""
    return _cosine_progress(history, min_delta)[0]


def _check_same_run(out: Path, config: AlignConfig, texts_sha256: str | None) -> None:
    if not (out / RUN_CONFIG).is_file():
        return
    saved = read_json(out / RUN_CONFIG, "run config")
    if texts_sha256 is not None and saved.get("texts_sha256", texts_sha256) != texts_sha256:
        raise ValueError(
            f"{out} holds a run on other texts (same settings, different corpus); use another --out, "
            "or delete the folder to start over"
        )
    previous = config_from_dict(AlignConfig, saved.get("config", {}), str(out / RUN_CONFIG))
    previous = dataclasses.replace(previous, cache_dir=config.cache_dir)  # where the cache is is no setting
    if previous != config:
        changed = [
            f.name for f in dataclasses.fields(AlignConfig) if getattr(previous, f.name) != getattr(config, f.name)
        ]
        raise ValueError(
            f"{out} holds a run with other settings ({', '.join(changed)} differ); use another --out, "
            "or delete the folder to start over"
        )


def _summarise(config: AlignConfig, trainers: dict[int, _Trainer], extra: dict) -> dict[str, Any]:
    return {
        "student": config.student,
        "teacher": config.teacher,
        "adapter": next(iter(trainers.values())).adapter.config.describe_type(),
        **{k: v for k, v in extra.items() if k != "initial"},
        "max_epochs": config.epochs,
        "patience": config.patience,
        "epochs_run": max(len(t.history) for t in trainers.values()),
        "windows": {
            str(w): {
                "params": t.adapter.num_parameters(),
                "val_cosine_init": extra["initial"][w]["cosine"],
                "val_mse_init": extra["initial"][w]["mse"],
                "best_epoch": t.best["epoch"],
                "val_cosine": t.best["val_cosine"],
                "val_mse": t.best["val_mse"],
                "history": t.history,
            }
            for w, t in trainers.items()
        },
    }


def format_summary(summary: dict[str, Any]) -> str:
    """A markdown table of held-out cosine before and after alignment, per window."""
    mean = summary["mean_predictor"]
    epochs = summary.get("epochs_run")
    stop = ""
    if epochs is not None:
        stop = f"; ran {epochs} of at most {summary['max_epochs']} epochs"
        if summary.get("patience"):
            stop += f" (patience {summary['patience']})"
    adapter = dict(summary.get("adapter") or {"adapter_type": "mlp"})  # written before adapter types: mlp
    kind = adapter.pop("adapter_type")
    options = ", ".join(f"{k} {v}" for k, v in adapter.items())
    lines = [
        f"Alignment of {summary['student']} -> {summary['teacher']} ({kind} adapters{', ' if options else ''}"
        f"{options}): {summary['num_train']} train / "
        f"{summary['num_val']} held-out texts ({summary['val_tokens']} held-out tokens){stop}",
        "",
        "| window | params | cosine before | cosine after | MSE before | MSE after | best epoch |",
        "|---|---|---|---|---|---|---|",
    ]
    for window, row in summary["windows"].items():
        lines.append(
            f"| {window} | {row['params']:,} | {row['val_cosine_init']:.4f} | {row['val_cosine']:.4f} | "
            f"{row['val_mse_init']:.4f} | {row['val_mse']:.4f} | {row['best_epoch']} |"
        )
    lines.append(f"| mean teacher token (trivial) | 0 | | {mean['cosine']:.4f} | | {mean['mse']:.4f} | |")
    lines.append("")
    lines.append("'before' is the adapter at initialisation; cosine and MSE are over held-out student tokens.")
    return "\n".join(lines) + "\n"


def plot_history(summary: dict[str, Any], path: Path) -> None:
    """Validation cosine per epoch for each window, against the trivial mean predictor."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for window, row in summary["windows"].items():
        epochs = [0] + [h["epoch"] for h in row["history"]]
        cosines = [row["val_cosine_init"]] + [h["val_cosine"] for h in row["history"]]
        ax.plot(epochs, cosines, marker="o", label=f"w{window}")
    ax.axhline(summary["mean_predictor"]["cosine"], color="grey", linestyle="--", label="mean teacher token")
    ax.set_xlabel("epoch")
    ax.set_ylabel("held-out mean cosine to teacher")
    ax.set_title(f"{Path(summary['student']).name} -> {Path(summary['teacher']).name}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


@torch.inference_mode()
def alignment_cosine(
    student_model, student_tokenizer, adapter: AlignmentAdapter, teacher: TokenEmbeddings, max_tokens: int = 8192
) -> float:
    """Held-out mean cosine between an adapter's output on a (possibly fine-tuned) student and cached
    teacher states, on the teacher's texts: how close a task model still is to its teacher."""
    from alad.alignment.pairing import tokenize_with_spans
    from alad.models.encoders import max_input_tokens

    student = Encoder(student_model, student_tokenizer, "student", max_input_tokens(student_model, student_tokenizer))
    spans = tokenize_with_spans(student_tokenizer, teacher.texts)
    keep = [i for i, s in enumerate(spans) if len(s.input_ids) <= student.max_length]
    states = encode_spans(student, [spans[i] for i in keep], max_tokens=max_tokens)
    targets, masks = [], []
    for i in keep:
        target, mask = teacher_targets(spans[i], teacher.spans[i], teacher.states[i])
        targets.append(target.half())
        masks.append(mask)
    return evaluate_adapter(adapter, AlignmentData(states, targets, masks))["cosine"]


def windows_from_text(text: str) -> tuple[int, ...]:
    """Parse ``"1,3,5"``; even or non-numeric sizes fail with the reason."""
    try:
        windows = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as err:
        raise ValueError(f"--windows takes odd integers separated by commas, e.g. 1,3,5; got {text!r}") from err
    if not windows or any(w < 1 or w % 2 == 0 for w in windows):
        raise ValueError(f"window sizes must be odd integers >= 1 (e.g. 1,3,5); got {text!r}")
    return windows


__all__ = [
    "AlignConfig",
    "AlignmentData",
    "align",
    "alignment_cosine",
    "alignment_loss",
    "evaluate_adapter",
    "format_summary",
    "warmup_linear_decay",
]
