"""Pairing student tokens with teacher targets when the two tokenizers differ.

Student and teacher may split the same text differently (MiniLM and MPNet differ in special
tokens; a BPE or SentencePiece teacher differs everywhere), so token ids or positions are never
compared. Pairing goes through character offsets into the original text:

    The target of a student token covering characters [s, e) is the mean of the teacher states
    of every teacher token whose span overlaps [s, e) (shares at least one character).

A teacher token wider than a student token (``playing`` vs ``play ##ing``) is thus the target of
each student piece; several narrower teacher pieces are averaged. Tokens with an empty span and
student tokens that no teacher token overlaps are excluded from the loss through the returned
mask: nothing is paired by position as a fallback.

Special tokens ([CLS], [SEP], <s>, </s>) cover no characters. By default they are excluded too;
with ``specials=True`` they are paired by role instead: those before the text, those between the
two texts of a pair, and those after it (``[CLS]`` with ``<s>``, ``[SEP]`` with the mean of
``</s></s>``). A head that reads a special token (QA's null answer at the first token) needs it.

Texts longer than either model accepts are split at whitespace into pieces both accept (never
truncated), so both models always see the same characters.

A text may also be a pair ``(first, second)`` (question and context in QA), encoded the way
alad's QA models read it: both sequences in one input with the tokenizer's own separators, and no
segment ids (task models take input ids and attention mask only; MPNet has no segments). Offsets
of the second sequence are shifted by ``len(first) + 1``, so both models' tokens live in one
character space and a token of one sequence never overlaps a token of the other. A pair too long
for a model is split in its second text, each piece keeping the first.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

TextPair = tuple[str, str]
AlignText = str | TextPair


@dataclass
class TokenSpans:
    """Character spans of one tokenised text; ``special`` marks tokens with no text of their own."""

    input_ids: list[int]
    offsets: torch.Tensor  # [T, 2] int64, character start/end
    special: torch.Tensor  # [T] bool

    @property
    def pairable(self) -> torch.Tensor:
        return ~self.special & (self.offsets[:, 1] > self.offsets[:, 0])

    @property
    def special_roles(self) -> torch.Tensor:
        """[T] int: 0 for a special token before any text, 2 after all text, 1 between; -1 for text tokens."""
        text = (~self.special).long()
        before = torch.cumsum(text, 0) - text
        after = text.sum() - torch.cumsum(text, 0)
        roles = torch.where(before == 0, 0, torch.where(after == 0, 2, 1))
        return torch.where(self.special, roles, -1)


def is_pair_corpus(texts: Sequence[AlignText]) -> bool:
    """True for a list of (first, second) pairs, False for plain strings; a mixture is refused."""
    kinds = {isinstance(t, tuple) for t in texts}
    if len(kinds) > 1:
        raise ValueError("the texts mix plain strings and (first, second) pairs; give one kind only")
    if kinds == {True} and any(len(t) != 2 or not all(isinstance(x, str) for x in t) for t in texts):
        raise ValueError("a text pair must be a tuple of two strings, e.g. (question, context)")
    return kinds == {True}


TOKENIZE_CHUNK = 2048
"""Texts tokenised per call: the tokenizer's Python output (offsets as tuples) stays small for any corpus."""


class SpanTable(Sequence):
    """The token spans of many texts in three flat arrays (ids, character offsets, special flags) and
    an index into them: about 13 bytes per token, where one :class:`TokenSpans` per text costs three
    Python objects (~3 KB a text), so a corpus's spans stay small next to its cached states.

    ``table[i]`` is text ``i``'s :class:`TokenSpans`; ``table[lo:hi]`` a table sharing the arrays.
    """

    def __init__(self, ids: np.ndarray, offsets: np.ndarray, special: np.ndarray, starts: np.ndarray) -> None:
        self.ids, self.offsets, self.special, self.starts = ids, offsets, special, starts

    @classmethod
    def concat(cls, tables: Sequence[SpanTable]) -> SpanTable:
        if not tables:
            return cls(np.zeros(0, np.int32), np.zeros((0, 2), np.int32), np.zeros(0, bool), np.zeros(1, np.int64))
        parts = [t.detached() for t in tables]
        shifts = np.cumsum([0] + [len(t.ids) for t in parts[:-1]])
        tails = [t.starts[1:] + shift for t, shift in zip(parts, shifts, strict=True)]
        starts = np.concatenate([parts[0].starts[:1], *tails])
        return cls(
            np.concatenate([t.ids for t in parts]),
            np.concatenate([t.offsets for t in parts]),
            np.concatenate([t.special for t in parts]),
            starts,
        )

    def detached(self) -> SpanTable:
        """This table with arrays of its own texts only, starting at 0."""
        lo, hi = int(self.starts[0]), int(self.starts[-1])
        return SpanTable(self.ids[lo:hi], self.offsets[lo:hi], self.special[lo:hi], self.starts - lo)

    def __len__(self) -> int:
        return len(self.starts) - 1

    def __getitem__(self, index):
        if isinstance(index, slice):
            lo, hi, step = index.indices(len(self))
            if step != 1:
                return [self[i] for i in range(lo, hi, step)]
            return SpanTable(self.ids, self.offsets, self.special, self.starts[lo : max(lo, hi) + 1])
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"text {index} is not in this table of {len(self)}")
        a, b = int(self.starts[index]), int(self.starts[index + 1])
        return TokenSpans(
            input_ids=self.ids[a:b].tolist(),
            offsets=torch.from_numpy(self.offsets[a:b].astype(np.int64)),
            special=torch.from_numpy(self.special[a:b].copy()),
        )

    def __iter__(self) -> Iterator[TokenSpans]:
        return (self[i] for i in range(len(self)))

    def lengths(self) -> list[int]:
        """Tokens per text."""
        return np.diff(self.starts).tolist()

    def flat_ids(self) -> list[int]:
        """Every text's token ids, one after another."""
        return self.ids[int(self.starts[0]) : int(self.starts[-1])].tolist()

    @property
    def nbytes(self) -> int:
        return self.ids.nbytes + self.offsets.nbytes + self.special.nbytes + self.starts.nbytes


def span_lengths(spans: Sequence[TokenSpans]) -> list[int]:
    """Tokens per text of a :class:`SpanTable` (without building its texts' spans) or of a list."""
    return spans.lengths() if isinstance(spans, SpanTable) else [len(s.input_ids) for s in spans]


def tokenize_with_spans(tokenizer: PreTrainedTokenizerBase, texts: Sequence[AlignText]) -> SpanTable:
    """Tokenise with special tokens and character offsets, without truncation."""
    texts = list(texts)
    pairs = is_pair_corpus(texts)
    chunks = [
        _tokenize_chunk(tokenizer, texts[start : start + TOKENIZE_CHUNK], pairs)
        for start in range(0, len(texts), TOKENIZE_CHUNK)
    ]
    return SpanTable.concat(chunks)


def _tokenize_chunk(tokenizer: PreTrainedTokenizerBase, texts: list[AlignText], pairs: bool) -> SpanTable:
    arguments = ([t[0] for t in texts], [t[1] for t in texts]) if pairs else (texts,)
    encoded = tokenizer(
        *arguments,
        add_special_tokens=True,
        truncation=False,
        return_offsets_mapping=True,
        return_special_tokens_mask=True,
        return_attention_mask=False,
        verbose=False,
    )
    chain = itertools.chain.from_iterable
    starts = np.cumsum([0] + [len(ids) for ids in encoded["input_ids"]], dtype=np.int64)
    ids = np.fromiter(chain(encoded["input_ids"]), dtype=np.int32, count=int(starts[-1]))
    offsets = np.array([pair for text in encoded["offset_mapping"] for pair in text], dtype=np.int32).reshape(-1, 2)
    special = np.fromiter(chain(encoded["special_tokens_mask"]), dtype=bool, count=int(starts[-1]))
    if pairs:  # the second text's characters come after the first's and one separator
        for index, text in enumerate(texts):
            second = np.array([sid == 1 for sid in encoded.sequence_ids(index)], dtype=bool)
            offsets[starts[index] : starts[index + 1]][second] += len(text[0]) + 1
    return SpanTable(ids, offsets, special, starts)


def pair_tokens(student: TokenSpans, teacher: TokenSpans, specials: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the pooling matrix [T_s, T_t] (rows sum to 1 or 0) and the student loss mask [T_s].

    ``specials`` also pairs special tokens by role (before, between, after the texts).
    """
    s_start, s_end = student.offsets[:, 0:1], student.offsets[:, 1:2]
    t_start, t_end = teacher.offsets[:, 0].unsqueeze(0), teacher.offsets[:, 1].unsqueeze(0)
    overlap = (s_start < t_end) & (t_start < s_end)
    overlap &= student.pairable.unsqueeze(1) & teacher.pairable.unsqueeze(0)
    if specials:
        s_role, t_role = student.special_roles.unsqueeze(1), teacher.special_roles.unsqueeze(0)
        overlap |= (s_role >= 0) & (s_role == t_role)
    counts = overlap.sum(dim=1, keepdim=True)
    pooling = overlap.float() / counts.clamp(min=1).float()
    return pooling, counts.squeeze(1) > 0


def teacher_targets(
    student: TokenSpans, teacher: TokenSpans, teacher_states: torch.Tensor, specials: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher states re-expressed on the student's tokens, and which student tokens have one."""
    if teacher_states.shape[0] != len(teacher.input_ids):
        raise ValueError(
            f"teacher states have {teacher_states.shape[0]} rows but the teacher tokenisation has "
            f"{len(teacher.input_ids)} tokens: states and spans come from different texts or settings"
        )
    pooling, mask = pair_tokens(student, teacher, specials)
    return pooling @ teacher_states.float(), mask


def split_to_fit(text: str, fits) -> list[str]:
    """Split ``text`` at whitespace near its middle until ``fits(piece)`` holds for every piece."""
    if fits(text):
        return [text]
    middle = len(text) // 2
    cut = _whitespace_near(text, middle)
    if cut <= 0 or cut >= len(text):
        cut = middle  # one unbroken run of characters: split inside it
    if cut == 0:
        raise ValueError(f"cannot split {text!r} into pieces the models accept")
    left, right = text[:cut].strip(), text[cut:].strip()
    return [piece for part in (left, right) if part for piece in split_to_fit(part, fits)]


def _whitespace_near(text: str, middle: int) -> int:
    for distance in range(len(text)):
        for position in (middle - distance, middle + distance):
            if 0 < position < len(text) and text[position].isspace():
                return position
    return -1


def segment_texts(
    texts: Sequence[AlignText], tokenizers: Sequence[tuple[PreTrainedTokenizerBase, int]]
) -> list[AlignText]:
    """Split every text that is longer than any (tokenizer, max_tokens) pair accepts; drop blanks.

    A pair keeps its first text whole and is split in its second one.
    """
    pairs = is_pair_corpus(texts)
    limit = min(limit for _, limit in tokenizers)

    def fits(first: str | None, piece: str) -> bool:
        arguments = (piece,) if first is None else (first, piece)
        return all(
            len(tok(*arguments, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]) <= max_tokens
            for tok, max_tokens in tokenizers
        )

    segments: list[AlignText] = []
    for text in texts:
        first, second = (text[0].strip(), text[1].strip()) if pairs else (None, text.strip())
        if not second or (pairs and not first):
            continue
        # Cheap bound first: every token covers at least one byte, except a word-start marker a
        # SentencePiece model may emit per word, and a few special tokens.
        size = len(second.encode()) + len(second.split())
        if first is not None:
            size += len(first.encode()) + len(first.split()) + 4
        if size + 8 <= limit:
            pieces = [second]
        else:
            if first is not None and not fits(first, "."):
                raise ValueError(
                    f"the first text of a pair is too long for the models ({limit} tokens) even alone: "
                    f"{first[:80]!r}...; shorten it"
                )
            pieces = split_to_fit(second, lambda piece, first=first: fits(first, piece))
        segments.extend(pieces if first is None else [(first, piece) for piece in pieces])
    return segments
