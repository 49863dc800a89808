"""What the fine-tuned teacher tells a student in stage 3, computed once and cached.

- **Soft targets** for knowledge distillation: the teacher's logits on the task's texts (labelled and
  unlabelled alike; no gold label is read), kept per word so they transfer across tokenizers, and
  cached per item under ``<cache>/soft_targets/<task>-<teacher's weights>``.
- **Hidden-state targets** for the auxiliary alignment loss: the teacher encoder's token states
  re-expressed on the student's tokens (the same character-offset pairing as alignment), read from
  the embedding cache.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from alad.alignment.cache import EmbeddingCache
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
    config: Any = None,
) -> list[torch.Tensor]:
    """The teacher's per-word logits for every item (rows of NaN for words without a token), cached per
    item under the teacher's fingerprint: a call runs the teacher only on items no earlier call saw, so
    the label budgets of one split (nested subsets, the same unlabelled rest) share one teacher pass.
    ``config`` (a fine-tuning config) gives the task's input settings, e.g. QA's window length."""
    from alad.models.task_model import AladTaskModel

    teacher_model_dir = Path(teacher_model_dir)
    settings = task.soft_target_settings(config)  # e.g. QA's window length: another length, other targets
    name = f"{task.name}-{_teacher_fingerprint(teacher_model_dir)}" + (f"-{settings}" if settings else "")
    directory = Path(root or cache_root()) / SOFT_TARGETS_DIR / name
    keys = [_item_key(item) for item in task.strip_labels(items)]
    known = _read_parts(directory)
    first = {}  # each missing key once, with the first item that has it
    for key, item in zip(keys, items, strict=True):
        if key not in known:
            first.setdefault(key, item)
    if first:
        teacher = AladTaskModel.from_pretrained(teacher_model_dir)
        soft = task.soft_targets(teacher, list(first.values()), config, show_progress=show_progress)
        _write_part(directory, list(first), soft)
        known.update(zip(first, soft, strict=True))
    return [known[key] for key in keys]


def _item_key(item: Any) -> bytes:
    """An item's identity without its labels (its repr: the words themselves, not their joined text)."""
    return hashlib.blake2b(repr(item).encode("utf-8"), digest_size=16).digest()


def _read_parts(directory: Path) -> dict[bytes, torch.Tensor]:
    """Every cached item's soft targets in ``directory``; an unreadable part is skipped (recomputed)."""
    known: dict[bytes, torch.Tensor] = {}
    for path in sorted(directory.glob("part-*.safetensors")):
        try:
            stored = load_tensors(path, "cached soft targets")
            rows = torch.split(stored["logits"], stored["lengths"].tolist())
            known.update(zip((bytes(k.tolist()) for k in stored["keys"]), rows, strict=True))
        except (KeyError, RuntimeError, ValueError) as err:  # ArtefactError is a ValueError
            logger.warning("%s cannot be read (%s); its items are recomputed", path, err)
    return known


def _write_part(directory: Path, keys: list[bytes], soft: Sequence[torch.Tensor]) -> None:
    """One file per teacher pass, named after its items, so concurrent passes over other items never clash."""
    name = hashlib.blake2b(b"".join(keys), digest_size=12).hexdigest()
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {
        "keys": torch.tensor([list(k) for k in keys], dtype=torch.uint8),
        "logits": torch.cat(list(soft)).contiguous(),
        "lengths": torch.tensor([s.shape[0] for s in soft]),
    }
    save_tensors_atomic(directory / f"part-{name}.safetensors", tensors)


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
