"""Pairing student tokens with teacher targets when the two tokenizers differ.

Student and teacher may split the same text differently (MiniLM and MPNet differ in special
tokens; a BPE or SentencePiece teacher differs everywhere), so token ids or positions are never
compared. Pairing goes through character offsets into the original text:

    The target of a student token covering characters [s, e) is the mean of the teacher states
    of every teacher token whose span overlaps [s, e) (shares at least one character).

A teacher token wider than a student token (``playing`` vs ``play ##ing``) is thus the target of
each student piece; several narrower teacher pieces are averaged. Special tokens ([CLS], <s>,
...), tokens with an empty span and student tokens that no teacher token overlaps are excluded
from the loss through the returned mask: nothing is paired by position as a fallback.

Texts longer than either model accepts are split at whitespace into pieces both accept (never
truncated), so both models always see the same characters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase


@dataclass
class TokenSpans:
    """Character spans of one tokenised text; ``special`` marks tokens with no text of their own."""

    input_ids: list[int]
    offsets: torch.Tensor  # [T, 2] int64, character start/end
    special: torch.Tensor  # [T] bool

    @property
    def pairable(self) -> torch.Tensor:
        return ~self.special & (self.offsets[:, 1] > self.offsets[:, 0])


def tokenize_with_spans(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> list[TokenSpans]:
    """Tokenise with special tokens and character offsets, without truncation."""
    encoded = tokenizer(
        list(texts),
        add_special_tokens=True,
        truncation=False,
        return_offsets_mapping=True,
        return_special_tokens_mask=True,
        return_attention_mask=False,
        verbose=False,
    )
    spans = []
    for ids, offsets, special in zip(
        encoded["input_ids"], encoded["offset_mapping"], encoded["special_tokens_mask"], strict=True
    ):
        spans.append(
            TokenSpans(
                input_ids=list(ids),
                offsets=torch.tensor(offsets, dtype=torch.long).reshape(-1, 2),
                special=torch.tensor(special, dtype=torch.bool),
            )
        )
    return spans


def pair_tokens(student: TokenSpans, teacher: TokenSpans) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the pooling matrix [T_s, T_t] (rows sum to 1 or 0) and the student loss mask [T_s]."""
    s_start, s_end = student.offsets[:, 0:1], student.offsets[:, 1:2]
    t_start, t_end = teacher.offsets[:, 0].unsqueeze(0), teacher.offsets[:, 1].unsqueeze(0)
    overlap = (s_start < t_end) & (t_start < s_end)
    overlap &= student.pairable.unsqueeze(1) & teacher.pairable.unsqueeze(0)
    counts = overlap.sum(dim=1, keepdim=True)
    pooling = overlap.float() / counts.clamp(min=1).float()
    return pooling, counts.squeeze(1) > 0


def teacher_targets(
    student: TokenSpans, teacher: TokenSpans, teacher_states: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher states re-expressed on the student's tokens, and which student tokens have one."""
    if teacher_states.shape[0] != len(teacher.input_ids):
        raise ValueError(
            f"teacher states have {teacher_states.shape[0]} rows but the teacher tokenisation has "
            f"{len(teacher.input_ids)} tokens: states and spans come from different texts or settings"
        )
    pooling, mask = pair_tokens(student, teacher)
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


def segment_texts(texts: Sequence[str], tokenizers: Sequence[tuple[PreTrainedTokenizerBase, int]]) -> list[str]:
    """Split every text that is longer than any (tokenizer, max_tokens) pair accepts; drop blanks."""

    def fits(piece: str) -> bool:
        return all(
            len(tok(piece, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]) <= limit
            for tok, limit in tokenizers
        )

    segments: list[str] = []
    for text in texts:
        text = text.strip()
        if not text:
            continue
        # Cheap bound first: every token covers at least one byte, except a word-start marker a
        # SentencePiece model may emit per word, and a few special tokens.
        if len(text.encode()) + len(text.split()) + 8 <= min(limit for _, limit in tokenizers):
            segments.append(text)
        else:
            segments.extend(split_to_fit(text, fits))
    return segments
