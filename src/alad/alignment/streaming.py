"""Alignment batches streamed from the embedding cache, holding at most a bounded buffer in memory.

The cache stores each model's token states in shards of consecutive texts (memory-mapped
safetensors). Alignment never reads a whole corpus: every epoch visits the shards in a seeded
random order, groups consecutive shards of that order into *chunks* of at most ``buffer_tokens``
training tokens, and forms length-sorted batches inside each chunk (:func:`token_batches`, seeded
by epoch and chunk), then moves on. Teacher targets on student tokens (the offset pairing) are
computed on the fly, for the texts a chunk needs, when it is loaded.

The batch plan depends only on text lengths, the seed, the epoch and the buffer, never on what was
read, so a run stopped mid-epoch resumes at the same batch of the same plan. A corpus whose training
tokens fit in one buffer forms one chunk, whose batches are exactly those alad made before streaming
(``token_batches`` over every training text, seeded by ``seed + epoch``).

Under several processes every process computes the same plan; each keeps only the rows of each
global batch it trains on (``batch[rank::world]``), so each buffer holds about 1/world of a chunk.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from alad.alignment.cache import CachedStates
from alad.alignment.pairing import pair_tokens, span_lengths, teacher_targets
from alad.training.memory import trim_heap

CHUNK_SEED_STRIDE = 1_000_003
"""Seed of chunk k's batches in epoch e: ``seed + e + k * CHUNK_SEED_STRIDE`` (chunk 0: ``seed + e``)."""


def token_batches(lengths: Sequence[int], batch_tokens: int, seed: int) -> list[list[int]]:
    """Batches of similar length under a padded-token budget, in a seeded random order."""
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)  # ties between equal lengths are broken randomly, then sorted by length
    order.sort(key=lambda i: lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        if current and lengths[index] * (len(current) + 1) > batch_tokens:
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    rng.shuffle(batches)
    return batches


def pad_batch(
    students: Sequence[torch.Tensor], targets: Sequence[torch.Tensor], masks: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, ...]:
    """Pad a batch: student [B,T,d_s], attention mask [B,T], targets [B,T,d_t], loss mask [B,T]."""
    width = max(s.shape[0] for s in students)
    d_s, d_t = students[0].shape[1], targets[0].shape[1]
    x = torch.zeros(len(students), width, d_s)
    y = torch.zeros(len(students), width, d_t)
    attention = torch.zeros(len(students), width)
    counted = torch.zeros(len(students), width, dtype=torch.bool)
    for row, (state, target, mask) in enumerate(zip(students, targets, masks, strict=True)):
        length = state.shape[0]
        x[row, :length] = state.float()
        y[row, :length] = target.float()
        attention[row, :length] = 1
        counted[row, :length] = mask
    return x, attention, y, counted


@dataclass(eq=False)
class Chunk:
    """Consecutive shards of an epoch's shard order, and the batches (corpus text indices) formed in them."""

    shards: tuple[int, ...]
    batches: list[list[int]]
    _needed: dict[tuple[int, int], frozenset[int]] = field(default_factory=dict, repr=False)

    def needed(self, rank: int = 0, world: int = 1) -> frozenset[int]:
        """The texts process ``rank`` of ``world`` reads for this chunk: its rows of every batch."""
        if (rank, world) not in self._needed:
            self._needed[(rank, world)] = frozenset(i for b in self.batches for i in b[rank::world])
        return self._needed[(rank, world)]


@dataclass(frozen=True, eq=False)
class StreamBatch:
    """One global batch: the corpus indices of its texts, and the chunk it belongs to."""

    chunk: Chunk
    ids: list[int]

    def __len__(self) -> int:
        return len(self.ids)


class AlignmentStream:
    """Student states, teacher targets on student tokens and loss masks, read from two caches on demand.

    At most ``buffer_tokens`` student tokens of texts are held at once (one cache shard's worth more
    where a single shard's needed texts exceed the buffer); ``peak_tokens``/``peak_texts`` record the
    most ever held, so tests can check the bound by counting, not timing.
    """

    def __init__(self, student: CachedStates, teacher: CachedStates, specials: bool, buffer_tokens: int) -> None:
        if student.texts != teacher.texts:
            raise ValueError("student and teacher embeddings were computed on different texts")
        if [(e["start"], e["count"]) for e in student.shards] != [(e["start"], e["count"]) for e in teacher.shards]:
            raise ValueError("student and teacher caches are sharded differently; build both with one shard size")
        if buffer_tokens < 1:
            raise ValueError(f"buffer_tokens must be >= 1, got {buffer_tokens}")
        self.student, self.teacher, self.specials = student, teacher, specials
        self.buffer_tokens = buffer_tokens
        self.lengths = span_lengths(student.spans)
        # How many tokens of each text the loss counts: from the tokenisations alone, no state needed.
        self.counted = [
            int(pair_tokens(s, t, specials)[1].sum()) for s, t in zip(student.spans, teacher.spans, strict=True)
        ]
        self.num_shards = len(student.shards)
        self._held: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self._held_tokens = 0
        self.peak_tokens = 0
        self.peak_texts = 0
        self.loads = 0  # shard reads, for tests and the benchmark

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def held_texts(self) -> int:
        return len(self._held)

    @property
    def held_tokens(self) -> int:
        return self._held_tokens

    # ---------------------------------------------------------------------------------------------
    # the plan: which texts form which batch, from lengths and seeds only

    def chunks(self, ids: Sequence[int], shard_order: Sequence[int]) -> list[tuple[tuple[int, ...], list[int]]]:
        """Group ``ids`` by shard, shards in ``shard_order``; consecutive shards form a chunk while its
        texts' tokens stay within the buffer. Returns (shards, sorted ids) per chunk."""
        by_shard: dict[int, list[int]] = {}
        for index in ids:
            by_shard.setdefault(self.student.shard_of(index), []).append(index)
        chunks: list[tuple[tuple[int, ...], list[int]]] = []
        shards: list[int] = []
        members: list[int] = []
        tokens = 0
        for shard in shard_order:
            part = by_shard.get(shard, [])
            if not part:
                continue
            size = sum(self.lengths[i] for i in part)
            if members and tokens + size > self.buffer_tokens:
                chunks.append((tuple(shards), sorted(members)))
                shards, members, tokens = [], [], 0
            shards.append(shard)
            members.extend(part)
            tokens += size
        if members:
            chunks.append((tuple(shards), sorted(members)))
        return chunks

    def train_batches(self, ids: Sequence[int], batch_tokens: int, seed: int, epoch: int) -> list[StreamBatch]:
        """The global batches of one epoch over the training texts ``ids``."""
        order = list(range(self.num_shards))
        random.Random(seed + epoch).shuffle(order)
        plan: list[StreamBatch] = []
        for k, (shards, members) in enumerate(self.chunks(ids, order)):
            local = token_batches(
                [self.lengths[i] for i in members], batch_tokens, seed + epoch + k * CHUNK_SEED_STRIDE
            )
            chunk = Chunk(shards, [[members[j] for j in batch] for batch in local])
            plan.extend(StreamBatch(chunk, batch) for batch in chunk.batches)
        return plan

    def eval_chunks(self, ids: Sequence[int], batch_tokens: int = 4096) -> list[Chunk]:
        """Held-out texts in shard order, chunked like training; batches seeded 0 (as before streaming)."""
        out = []
        for shards, members in self.chunks(ids, range(self.num_shards)):
            local = token_batches([self.lengths[i] for i in members], batch_tokens, seed=0)
            out.append(Chunk(shards, [[members[j] for j in batch] for batch in local]))
        return out

    # ---------------------------------------------------------------------------------------------
    # the buffer

    def ensure(self, ids: Sequence[int] | frozenset[int]) -> None:
        """Hold the states, targets and masks of ``ids``; drop everything else first if they would not fit."""
        missing = [i for i in ids if i not in self._held]
        if not missing:
            return
        size = sum(self.lengths[i] for i in missing)
        if self._held and self._held_tokens + size > self.buffer_tokens:
            self.release()
            missing = sorted(set(ids))
        by_shard: dict[int, list[int]] = {}
        for index in sorted(missing):
            by_shard.setdefault(self.student.shard_of(index), []).append(index)
        for shard, members in by_shard.items():
            students = self.student.read_texts(shard, members)
            teachers = self.teacher.read_texts(shard, members)
            self.loads += 1
            for index in members:
                target, mask = teacher_targets(
                    self.student.spans[index], self.teacher.spans[index], teachers[index], self.specials
                )
                self._held[index] = (students[index], target.to(torch.float16), mask)
                self._held_tokens += self.lengths[index]
            del students, teachers
            self.peak_tokens = max(self.peak_tokens, self._held_tokens)
            self.peak_texts = max(self.peak_texts, len(self._held))

    def release(self) -> None:
        self._held.clear()
        self._held_tokens = 0
        trim_heap()  # the dropped buffer's pages back to the OS, so resident memory stays flat over an epoch

    def item(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(student states, teacher targets, loss mask) of a held text."""
        if index not in self._held:
            self.ensure([index])
        return self._held[index]

    def collate(self, ids: Sequence[int]) -> tuple[torch.Tensor, ...]:
        self.ensure(ids)
        items = [self._held[i] for i in ids]
        return pad_batch([i[0] for i in items], [i[1] for i in items], [i[2] for i in items])


__all__ = ["AlignmentStream", "Chunk", "StreamBatch", "pad_batch", "token_batches"]
