"""What the fine-tuned teacher tells a student in stage 3, computed once and cached.

- **Soft targets** for knowledge distillation: the teacher's logits on the task's texts (labelled and
  unlabelled alike; no gold label is read), kept per word so they transfer across tokenizers, and
  cached under ``<cache>/soft_targets`` keyed by the teacher's weights and the exact texts.
- **Hidden-state targets** for the auxiliary alignment loss: the teacher encoder's token states
  re-expressed on the student's tokens (the same character-offset pairing as alignment), read from
  the embedding cache.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from alad.alignment.cache import EmbeddingCache, corpus_hash
from alad.alignment.pairing import teacher_targets, tokenize_with_spans
from alad.io.serialization import file_sha256, load_tensors, save_tensors_atomic
from alad.models.encoders import cache_root, load_encoder
from alad.tasks import Task

logger = logging.getLogger(__name__)

SOFT_TARGETS_DIR = "soft_targets"


def _teacher_fingerprint(teacher_model_dir: Path) -> str:
    digest = hashlib.blake2b(digest_size=16)
    files = [p for p in teacher_model_dir.rglob("*") if p.is_file() and p.suffix in (".json", ".safetensors")]
    for path in sorted(files):
        digest.update(str(path.relative_to(teacher_model_dir)).encode())
        digest.update(file_sha256(path).encode())
    return digest.hexdigest()


def cached_soft_targets(
    task: Task,
    teacher_model_dir: str | Path,
    items: Sequence,
    root: str | Path | None = None,
    show_progress: bool = False,
) -> list[torch.Tensor]:
    """The teacher's per-word logits for every item (rows of NaN for words without a token), cached."""
    from alad.models.task_model import AladTaskModel

    teacher_model_dir = Path(teacher_model_dir)
    key = hashlib.blake2b(
        (task.name + _teacher_fingerprint(teacher_model_dir) + corpus_hash(task.alignment_texts(items))).encode(),
        digest_size=16,
    ).hexdigest()
    path = Path(root or cache_root()) / SOFT_TARGETS_DIR / f"{task.name}-{key}.safetensors"
    if path.is_file():
        stored = load_tensors(path, "cached soft targets")
        lengths = stored["lengths"].tolist()
        if len(lengths) == len(items):
            return list(torch.split(stored["logits"], lengths))
        logger.warning("%s does not match the texts; recomputing it", path)
    teacher = AladTaskModel.from_pretrained(teacher_model_dir)
    soft = task.soft_targets(teacher, items, show_progress=show_progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_tensors_atomic(
        path,
        {"logits": torch.cat(soft).contiguous(), "lengths": torch.tensor([s.shape[0] for s in soft])},
    )
    return soft


def attach_alignment_targets(
    task: Task,
    features: Sequence,
    items: Sequence,
    student_tokenizer,
    teacher_encoder_dir: str | Path,
    cache_dir: str | Path | None = None,
    show_progress: bool = False,
) -> int:
    """Give every feature the teacher's states on its student tokens; returns how many features got them.

    A feature whose text the teacher cannot read in one piece, or whose student tokenisation of the
    text differs from the feature's (a window of a split sentence), keeps no target and adds no loss.
    """
    texts = task.feature_texts(items, features)
    teacher = load_encoder(teacher_encoder_dir)
    teacher_spans = tokenize_with_spans(teacher.tokenizer, texts)
    student_spans = tokenize_with_spans(student_tokenizer, texts)
    usable = [
        i
        for i, (f, s, t) in enumerate(zip(features, student_spans, teacher_spans, strict=True))
        if list(f.input_ids) == list(s.input_ids) and len(t.input_ids) <= teacher.max_length
    ]
    if not usable:
        return 0
    embeddings = EmbeddingCache(cache_dir).embed(teacher, [texts[i] for i in usable], show_progress=show_progress)
    for i, spans, states in zip(usable, embeddings.spans, embeddings.states, strict=True):
        target, mask = teacher_targets(student_spans[i], spans, states)
        features[i].align_target, features[i].align_mask = target.half(), mask
    return len(usable)
