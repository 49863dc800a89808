"""Extractive question answering (SQuAD 2.0): features, batching, span decoding and data splits.

The pipeline is the standard one for encoders with a start/end span head:

1. :func:`prepare_qa_features` tokenizes ``question + context`` pairs into overlapping windows
   (contexts are often longer than ``max_length``) and labels each window with the token span of the
   first gold answer, or with the null span ``(0, 0)`` (the first token, ``[CLS]``/``<s>``) when the
   question is unanswerable or the answer does not lie wholly inside that window.
2. :func:`collate_qa` pads a list of features into a batch of tensors.
3. :func:`decode_qa` turns per-window start/end logits back into one answer string per question plus a
   no-answer score, as the SQuAD 2.0 reference post-processing does.
4. :func:`apply_null_threshold` turns the (always non-empty) span predictions into final predictions.

No-answer score convention: ``na_score = null_score - best_span_score`` where ``null_score`` is the
smallest ``start_logit[0] + end_logit[0]`` over the question's windows and ``best_span_score`` the best
``start_logit[s] + end_logit[e]`` of a valid span over all windows. Higher means "more likely
unanswerable"; a question abstains when ``na_score > threshold``. This is the convention of
:func:`alad.evaluation.metrics.squad_v2_metrics` (``na_probs=na_scores, na_prob_thresh=threshold``), so the two
give identical scores, and ``best_f1_thresh`` from that function is a threshold for this one. The scores
are logit differences, not probabilities: pass ``na_prob_thresh=0.0`` (or a tuned threshold), not the
metric's default of 1.0, unless that default is meant.

Splits (:func:`split_squad_by_article`) move whole articles, never single questions, because the
questions of one article share its paragraphs; splitting them would leak evaluation text into training.

The training pool may add the official SQuAD 1.1 train set (:func:`merge_squad_train`, a paragraph
kept once when both files hold it) and negatives made from the pool itself
(:func:`alad.tasks.squad_negatives.make_negatives`). A second evaluation set,
:func:`squad_v1_eval_set` (the SQuAD 1.1 dev articles that are not in SQuAD 2.0 dev), is scored with
the official SQuAD 1.1 script; :func:`check_disjoint_by_article` refuses any evaluation article that
is also in training.
"""

from __future__ import annotations

import collections
import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from alad.data.readers import QAExample
from alad.evaluation.metrics import normalize_answer
from alad.tasks.base import pad_teacher_signals

__all__ = [
    "QAFeature",
    "apply_null_threshold",
    "article_of",
    "attach_soft_span_targets",
    "balanced_subset",
    "check_disjoint_by_article",
    "check_question_room",
    "check_squad_v1_scorable",
    "collate_qa",
    "decode_qa",
    "gold_answers",
    "labelled_answer_text",
    "merge_squad_train",
    "pool_summary",
    "prepare_qa_features",
    "soft_span_targets",
    "split_squad_by_article",
    "squad_v1_eval_set",
    "subsample_examples",
]

logger = logging.getLogger(__name__)

_CONTEXT = 1  # sequence id of the context in a (question, context) pair
_CHUNK = 1000  # examples tokenized per call: bounds peak memory on the full training set
NEGATIVE_SUFFIX = "-neg"  # the id of a negative made by make_negatives: the source question's id + this
MIN_CONTEXT_TOKENS = 8  # a window must hold at least this many context tokens after the longest question


@dataclass
class QAFeature:
    """One tokenized window of one question's context, with its span label.

    ``offsets[k]`` is the ``(start, end)`` character span of token ``k`` in the example's *context*
    for context tokens, and ``None`` for question, special and padding tokens, so decoding can never
    return question text. ``start_position``/``end_position`` are token indices of the gold answer;
    both are 0 (the first token, ``[CLS]``/``<s>``) for an unanswerable question or when the answer is
    not wholly inside this window.
    """

    example_index: int
    input_ids: list[int]
    attention_mask: list[int]
    token_type_ids: list[int] | None
    offsets: list[tuple[int, int] | None]
    start_position: int
    end_position: int
    soft: torch.Tensor | None = None  # [T, 2] teacher start/end logits (distillation), NaN where none


# --------------------------------------------------------------------------------------------------
# features


def _check_answers(example: QAExample) -> None:
    """Every answer must be the context at its offset: a wrong offset silently trains a wrong span."""
    for text, start in example.answers:
        found = example.context[start : start + len(text)] if start >= 0 else None
        if found != text:
            raise ValueError(
                f"question {example.id}: answer {text!r} does not match the context at answer_start={start} "
                f"(which reads {found!r})"
            )


def _answer_chars(example: QAExample) -> tuple[int, int] | None:
    """Character span ``[start, end)`` of the first gold answer without surrounding whitespace.

    None for unanswerable questions and for questions without answers (e.g. prediction-only data):
    both get the null label.
    """
    if example.is_impossible or not example.answers:
        return None
    text, start = example.answers[0]
    stripped = text.strip()
    if not stripped:
        return None
    start += len(text) - len(text.lstrip())
    return start, start + len(stripped)


def _truncate_questions(questions: list[str], tokenizer: Any, max_question_tokens: int) -> tuple[list[str], int]:
    """Cut questions longer than ``max_question_tokens`` tokens at a token boundary (character offsets).

    Questions are cut rather than rejected because a handful of very long questions in a training set
    should not stop a run; re-tokenizing a cut string may rarely give more tokens than the cut, so cutting
    repeats until it fits.
    """
    out = list(questions)
    n_cut = 0
    enc = tokenizer(out, add_special_tokens=False, return_offsets_mapping=True)
    for i, offsets in enumerate(enc["offset_mapping"]):
        if len(offsets) <= max_question_tokens:
            continue
        n_cut += 1
        keep = max_question_tokens
        while True:
            out[i] = out[i][: offsets[keep - 1][1]].rstrip()
            offsets = tokenizer(out[i], add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
            if len(offsets) <= max_question_tokens or keep == 1:
                break
            keep -= 1
    return out, n_cut


def prepare_qa_features(
    examples: Sequence[QAExample],
    tokenizer: Any,
    max_length: int = 384,
    doc_stride: int = 128,
    max_question_tokens: int = 64,
) -> list[QAFeature]:
    """Tokenize questions with their contexts into overlapping, labelled windows (unpadded).

    ``tokenizer`` must be a fast (Rust) tokenizer: offsets and ``sequence_ids`` come from it. Each pair is
    truncated on the context only; consecutive windows of one context overlap by ``doc_stride`` tokens
    (the meaning of the tokenizers' ``stride``). Questions lose leading whitespace (as in the Hugging Face
    reference scripts) and are cut to ``max_question_tokens`` tokens, with a warning counting them, so
    every window keeps room for more than ``doc_stride`` context tokens.

    The label is the token span overlapping the first gold answer's characters (surrounding whitespace
    ignored): its first token is the one holding the answer's first character, its last the one holding
    its last character. When the answer starts or ends inside a token (``"fox"`` in ``"foxes"``) the span
    covers the whole token, a superset; such cases and answerable questions that no window can label
    are counted in an info log. Features are returned in example order, windows in context order;
    ``example_index`` indexes ``examples``.

    Raises ValueError when an answer does not match its context (naming the question id), when the
    longest question leaves no room for the context (:func:`check_question_room`), or when the tokenizer
    does not start pairs with a special token (position 0 carries the no-answer label).
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("prepare_qa_features needs a fast tokenizer (offsets and sequence ids)")
    if max_question_tokens < 1 or doc_stride < 0:
        raise ValueError(f"need max_question_tokens >= 1 and doc_stride >= 0, got {max_question_tokens}, {doc_stride}")
    check_question_room(examples, tokenizer, max_length, doc_stride, max_question_tokens)
    model_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(model_max, int) and model_max < max_length:
        logger.warning("max_length=%d exceeds the tokenizer's model_max_length=%d", max_length, model_max)
    for example in examples:
        _check_answers(example)

    features: list[QAFeature] = []
    counts = collections.Counter()
    for lo in range(0, len(examples), _CHUNK):
        chunk = examples[lo : lo + _CHUNK]
        features += _chunk_features(chunk, lo, tokenizer, max_length, doc_stride, max_question_tokens, counts)
    n_cut, n_inexact, n_unlabelled, n_answerable = (counts[k] for k in ("cut", "inexact", "unlabelled", "answerable"))
    if n_cut:
        logger.warning(
            "%d of %d questions had more than %d tokens and were cut to %d",
            n_cut,
            len(examples),
            max_question_tokens,
            max_question_tokens,
        )
    if n_inexact or n_unlabelled:
        logger.info(
            "QA labels: %d labelled windows cover more than the answer text (answer boundary inside a token); "
            "%d of %d answerable questions have no window holding the whole answer (labelled null)",
            n_inexact, n_unlabelled, n_answerable,
        )  # fmt: skip
    return features


def _chunk_features(
    chunk: Sequence[QAExample], lo: int, tokenizer, max_length: int, doc_stride: int, max_question_tokens: int, counts
) -> list[QAFeature]:
    """The windows of ``chunk`` (examples ``lo``...), tokenized together; ``counts`` gathers the questions
    cut, the labelled windows wider than their answer, and the answerable questions with no window."""
    questions, cut = _truncate_questions([ex.question.lstrip() for ex in chunk], tokenizer, max_question_tokens)
    counts["cut"] += cut
    enc = tokenizer(
        questions,
        [ex.context for ex in chunk],
        truncation="only_second",
        max_length=max_length,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding=False,
    )
    features, labelled_in_example = [], {}
    for w, local in enumerate(enc["overflow_to_sample_mapping"]):
        span = _answer_chars(chunk[local])
        feature = _window_feature(enc, w, lo + local, span)
        if span is not None:  # answerable: does this window hold the whole answer?
            labelled = feature.end_position > 0
            labelled_in_example[local] = labelled_in_example.get(local, False) or labelled
            counts["inexact"] += int(labelled and not _exact_label(feature, chunk[local]))
        features.append(feature)
    counts["answerable"] += len(labelled_in_example)
    counts["unlabelled"] += sum(not v for v in labelled_in_example.values())
    return features


def _window_feature(enc, w: int, example_index: int, span: tuple[int, int] | None) -> QAFeature:
    """Window ``w`` of a tokenized chunk as a feature labelled with the token span of the answer's
    characters ``span`` (0, 0: none, or no answer)."""
    seq_ids = enc.sequence_ids(w)
    if seq_ids[0] is not None:
        raise ValueError(
            "the tokenizer does not start a (question, context) pair with a special token; position 0 "
            "must be one ([CLS] or <s>) to carry the no-answer label"
        )
    offsets: list[tuple[int, int] | None] = [
        (int(o[0]), int(o[1])) if sid == _CONTEXT else None
        for o, sid in zip(enc["offset_mapping"][w], seq_ids, strict=True)
    ]
    start_pos, end_pos = _label_window(offsets, *span) if span is not None else (0, 0)
    return QAFeature(
        example_index=example_index,
        input_ids=list(enc["input_ids"][w]),
        attention_mask=list(enc["attention_mask"][w]),
        token_type_ids=list(enc["token_type_ids"][w]) if "token_type_ids" in enc else None,
        offsets=offsets,
        start_position=start_pos,
        end_position=end_pos,
    )


def _exact_label(feature: QAFeature, example: QAExample) -> bool:
    """Whether a labelled window's token span holds exactly the answer text (normalised)."""
    s, e = feature.offsets[feature.start_position], feature.offsets[feature.end_position]
    assert s is not None and e is not None
    return normalize_answer(example.context[s[0] : e[1]]) == normalize_answer(example.answers[0][0])


def check_question_room(
    examples: Sequence[QAExample],
    tokenizer: Any,
    max_length: int,
    doc_stride: int,
    max_question_tokens: int = 64,
    model_limit: int | None = None,
) -> None:
    """Refuse a ``max_length`` too short for the longest question of ``examples``, naming it.

    Every window holds the question (cut to ``max_question_tokens`` tokens, as
    :func:`prepare_qa_features` does), the pair's special tokens and at least
    ``max(MIN_CONTEXT_TOKENS, doc_stride + 1)`` context tokens (consecutive windows overlap by
    ``doc_stride`` tokens, so fewer could never move forward). ``model_limit``, the model's own
    maximum length when it is below ``--max-length``, is named in the message.
    """
    if not examples:
        return
    n_special = tokenizer.num_special_tokens_to_add(pair=True)
    longest, index = -1, 0
    for lo in range(0, len(examples), _CHUNK * 10):
        chunk = [ex.question.lstrip() for ex in examples[lo : lo + _CHUNK * 10]]
        for i, ids in enumerate(tokenizer(chunk, add_special_tokens=False)["input_ids"]):
            if len(ids) > longest:
                longest, index = len(ids), lo + i
    question = min(longest, max_question_tokens)
    context = max(MIN_CONTEXT_TOKENS, doc_stride + 1)
    needed = question + n_special + context
    if needed <= max_length:
        return
    example = examples[index]
    cut = f", cut to {max_question_tokens}" if longest > max_question_tokens else ""
    if model_limit is not None:
        where, fix = f"the model's maximum length {model_limit}", "use a model with more positions"
    else:
        where, fix = f"--max-length {max_length}", f"pass --max-length {needed} or more"
    raise ValueError(
        f"{where} is too short for question {example.id} ({longest} tokens{cut}: "
        f"{example.question.strip()[:80]!r}): a window needs {question} question + {n_special} special + {context} "
        f"context tokens (at least {MIN_CONTEXT_TOKENS} and more than --doc-stride {doc_stride}) = {needed}; "
        f"{fix}, or a smaller --doc-stride"
    )


def _label_window(offsets: list[tuple[int, int] | None], start_char: int, end_char: int) -> tuple[int, int]:
    """Token span of characters ``[start_char, end_char)`` in one window, or ``(0, 0)`` if not all inside.

    The span is the first and last context token overlapping the answer, so zero-width tokens and tokens
    of neighbouring words are never included. The answer is inside the window when the window's context
    begins at or before its first character and ends at or after its last.
    """
    context = [k for k, o in enumerate(offsets) if o is not None]
    if not context:
        return 0, 0
    first, last = offsets[context[0]], offsets[context[-1]]
    assert first is not None and last is not None
    if first[0] > start_char or last[1] < end_char:
        return 0, 0
    hits = [k for k in context if offsets[k][0] < end_char and offsets[k][1] > start_char]  # type: ignore[index]
    if not hits:
        return 0, 0
    return hits[0], hits[-1]


def labelled_answer_text(example: QAExample, feature: QAFeature) -> str | None:
    """The context text under a feature's label span, or None for the null label: checks labels."""
    if feature.start_position == 0 and feature.end_position == 0:
        return None
    s, e = feature.offsets[feature.start_position], feature.offsets[feature.end_position]
    if s is None or e is None:
        raise ValueError("the label span does not lie on context tokens")
    return example.context[s[0] : e[1]]


def gold_answers(examples: Sequence[QAExample]) -> dict[str, list[str]]:
    """``qid -> answer texts`` (``[]`` for unanswerable), the ``gold`` of :func:`squad_v2_metrics`."""
    return {ex.id: [] if ex.is_impossible else [text for text, _ in ex.answers] for ex in examples}


# --------------------------------------------------------------------------------------------------
# batching


def collate_qa(features: Sequence[QAFeature], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad features to the longest in the batch: model inputs plus start/end position labels.

    ``token_type_ids`` is included when the features have it (BERT-style tokenizers), padded with 0;
    padding has ``attention_mask`` 0, so it changes nothing in the model's output for real tokens.
    """
    if not features:
        raise ValueError("collate_qa got no features")
    has_types = {f.token_type_ids is not None for f in features}
    if len(has_types) > 1:
        raise ValueError("some features have token_type_ids and some do not: mixed tokenizers?")
    n, width = len(features), max(len(f.input_ids) for f in features)
    input_ids = torch.full((n, width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((n, width), dtype=torch.long)
    token_type_ids = torch.zeros((n, width), dtype=torch.long)
    for i, f in enumerate(features):
        length = len(f.input_ids)
        input_ids[i, :length] = torch.tensor(f.input_ids, dtype=torch.long)
        attention_mask[i, :length] = torch.tensor(f.attention_mask, dtype=torch.long)
        if f.token_type_ids is not None:
            token_type_ids[i, :length] = torch.tensor(f.token_type_ids, dtype=torch.long)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    if has_types == {True}:
        batch["token_type_ids"] = token_type_ids
    batch["start_positions"] = torch.tensor([f.start_position for f in features], dtype=torch.long)
    batch["end_positions"] = torch.tensor([f.end_position for f in features], dtype=torch.long)
    batch.update(pad_teacher_signals(features, "soft", "soft_targets", "soft_mask", width, per_value=True))
    return batch


# --------------------------------------------------------------------------------------------------
# distillation: the teacher's span logits per context character, so they move across tokenizers


def soft_span_targets(
    examples: Sequence[QAExample], features: Sequence[QAFeature], logits: Sequence[torch.Tensor]
) -> list[torch.Tensor]:
    """Per example a ``[len(context) + 1, 2]`` tensor of the teacher's logits (NaN where none).

    Row 0 holds the no-answer logits (position 0 of a window), averaged over the example's windows; row
    ``1 + c`` column 0 the start logit of the token that begins at character ``c``, column 1 the end
    logit of the token that ends at character ``c`` (inclusive). A character seen by several windows
    takes the window where its token has the most context on both sides (as BERT's decoding does).
    """
    out = [np.full((len(ex.context) + 1, 2), np.nan, dtype=np.float32) for ex in examples]
    best = [np.full((len(ex.context) + 1, 2), -1.0) for ex in examples]
    nulls: dict[int, list[np.ndarray]] = {}
    for feature, values in zip(features, logits, strict=True):
        values = values.float().numpy()
        nulls.setdefault(feature.example_index, []).append(values[0])
        tokens, spans, room = _context_spans(feature)
        if not len(tokens):
            continue
        target, score = out[feature.example_index], best[feature.example_index]
        for column, rows in ((0, 1 + spans[:, 0]), (1, spans[:, 1])):  # start char, end char (1 + end - 1)
            better = room > score[rows, column]
            target[rows[better], column] = values[tokens[better], column]
            score[rows[better], column] = room[better]
    for index, rows in nulls.items():
        out[index][0] = np.mean(rows, axis=0)
    return [torch.from_numpy(o) for o in out]


def attach_soft_span_targets(features: Sequence[QAFeature], soft: Sequence[torch.Tensor]) -> None:
    """Put the per-character targets of :func:`soft_span_targets` on each feature's own tokens: a token
    gets the start (end) logit of the teacher's token that starts (ends) at the same character."""
    for feature in features:
        chars = soft[feature.example_index]
        target = torch.full((len(feature.input_ids), 2), float("nan"))
        target[0] = chars[0]
        tokens, spans, _ = _context_spans(feature)
        if len(tokens):
            index = torch.from_numpy(tokens)
            target[index, 0] = chars[torch.from_numpy(1 + spans[:, 0]), 0]
            target[index, 1] = chars[torch.from_numpy(spans[:, 1]), 1]
        feature.soft = target


def _context_spans(feature: QAFeature) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions of the window's context tokens that cover characters, their ``(start, end)`` spans, and
    their room: tokens to the nearer edge of the window's context (zero-width tokens count as positions)."""
    context = [k for k, o in enumerate(feature.offsets) if o is not None]
    pairs = [(k, feature.offsets[k]) for k in context if feature.offsets[k][1] > feature.offsets[k][0]]
    tokens = np.array([k for k, _ in pairs], dtype=np.int64)
    spans = np.array([o for _, o in pairs], dtype=np.int64).reshape(-1, 2)
    room = np.minimum(tokens - context[0], context[-1] - tokens) if context else tokens
    return tokens, spans, room


# --------------------------------------------------------------------------------------------------
# decoding


def _as_array(logits: torch.Tensor | np.ndarray | Sequence[float], length: int, what: str) -> np.ndarray:
    """One feature's logits as float64 numpy, cut to the feature's length (batch padding dropped)."""
    if isinstance(logits, torch.Tensor):
        logits = logits.detach().float().cpu().numpy()
    arr = np.asarray(logits, dtype=np.float64).reshape(-1)
    if arr.shape[0] < length:
        raise ValueError(f"{what} has {arr.shape[0]} logits for a feature of {length} tokens")
    return arr[:length]


def _features_by_example(examples: Sequence[QAExample], features: Sequence[QAFeature]) -> dict[int, list[int]]:
    """Feature indices per example index; every feature's example must exist and every example have one."""
    by_example: dict[int, list[int]] = {}
    for fi, f in enumerate(features):
        if not 0 <= f.example_index < len(examples):
            raise ValueError(f"feature {fi} has example_index {f.example_index}, outside the {len(examples)} examples")
        by_example.setdefault(f.example_index, []).append(fi)
    for ei, example in enumerate(examples):
        if ei not in by_example:
            raise ValueError(f"question {example.id}: no features (were features built from these examples?)")
    return by_example


def _best_span(
    f: QAFeature, start: np.ndarray, end: np.ndarray, n_best: int, max_answer_length: int
) -> tuple[float, int, int] | None:
    """The window's best span among its ``n_best`` start and end context tokens: (score, first character,
    end character), or None where it holds no context token with text or no span fits."""
    # context tokens with a non-empty span: zero-width tokens would give empty answers
    valid = np.array([o is not None and o[1] > o[0] for o in f.offsets], dtype=bool)
    if not valid.any():
        return None
    positions = np.flatnonzero(valid)
    starts = positions[np.argsort(-start[positions], kind="stable")[:n_best]]
    ends = positions[np.argsort(-end[positions], kind="stable")[:n_best]]
    length = ends[None, :] - starts[:, None] + 1
    scores = start[starts][:, None] + end[ends][None, :]
    scores = np.where((length >= 1) & (length <= max_answer_length), scores, -np.inf)
    i, j = np.unravel_index(int(np.argmax(scores)), scores.shape)
    if not np.isfinite(scores[i, j]):
        return None
    s_off, e_off = f.offsets[starts[i]], f.offsets[ends[j]]
    assert s_off is not None and e_off is not None
    return float(scores[i, j]), s_off[0], e_off[1]


def decode_qa(
    examples: Sequence[QAExample],
    features: Sequence[QAFeature],
    start_logits: Sequence[torch.Tensor | np.ndarray],
    end_logits: Sequence[torch.Tensor | np.ndarray],
    n_best: int = 20,
    max_answer_length: int = 30,
) -> tuple[dict[str, str], dict[str, float]]:
    """SQuAD 2.0 post-processing: best answer span and no-answer score per question.

    ``start_logits[i]``/``end_logits[i]`` belong to ``features[i]`` (longer, batch-padded rows are cut to
    the feature's length). Per question, over all its windows: ``null_score`` is the *minimum* of
    ``start[0] + end[0]`` (the window most confident that an answer exists decides, as in the reference
    script); the best span maximises ``start[s] + end[e]`` over the ``n_best`` highest start and end
    logits among context tokens, with ``e >= s`` and ``e - s + 1 <= max_answer_length``.

    Returns ``(predictions, na_scores)``: the best span's context text for *every* question (even when
    the null score is higher), and ``na_score = null_score - best_span_score`` (higher = more likely
    unanswerable). Choose abstentions with :func:`apply_null_threshold` or pass ``na_probs=na_scores`` to
    :func:`alad.evaluation.metrics.squad_v2_metrics`. A question whose windows hold no context token gets ``""`` and
    ``na_score = inf``.
    """
    if len(start_logits) != len(features) or len(end_logits) != len(features):
        raise ValueError(f"{len(features)} features but {len(start_logits)} start and {len(end_logits)} end logit rows")
    if n_best < 1 or max_answer_length < 1:
        raise ValueError(f"need n_best >= 1 and max_answer_length >= 1, got {n_best}, {max_answer_length}")
    by_example = _features_by_example(examples, features)
    predictions: dict[str, str] = {}
    na_scores: dict[str, float] = {}
    for ei, example in enumerate(examples):
        null_score = float("inf")
        best_score, best_text = float("-inf"), ""
        for fi in by_example[ei]:
            f = features[fi]
            start = _as_array(start_logits[fi], len(f.input_ids), f"start_logits[{fi}]")
            end = _as_array(end_logits[fi], len(f.input_ids), f"end_logits[{fi}]")
            null_score = min(null_score, float(start[0] + end[0]))
            span = _best_span(f, start, end, n_best, max_answer_length)
            if span is not None and span[0] > best_score:
                best_score, best_text = span[0], example.context[span[1] : span[2]]
        predictions[example.id] = best_text
        na_scores[example.id] = null_score - best_score if np.isfinite(best_score) else float("inf")
    return predictions, na_scores


def apply_null_threshold(
    predictions: Mapping[str, str], na_scores: Mapping[str, float], threshold: float = 0.0
) -> dict[str, str]:
    """Final predictions: ``""`` (no answer) where ``na_score > threshold``, the span text otherwise.

    Same rule as ``squad_v2_metrics(na_probs=..., na_prob_thresh=threshold)``; 0.0 means "abstain when
    the null span scores higher than the best span".
    """
    missing = [q for q in predictions if q not in na_scores]
    if missing:
        raise ValueError(f"{len(missing)} prediction(s) without an na_score, e.g. {missing[:5]}")
    return {q: "" if na_scores[q] > threshold else text for q, text in predictions.items()}


# --------------------------------------------------------------------------------------------------
# splits


def _side_summary(examples: Sequence[QAExample]) -> dict[str, int]:
    return {
        "articles": len({ex.title for ex in examples}),
        "questions": len(examples),
        "unanswerable": sum(ex.is_impossible for ex in examples),
    }


def split_squad_by_article(
    train_examples: Sequence[QAExample],
    dev_examples: Sequence[QAExample],
    n_dev_articles_to_train: int,
    seed: int,
) -> tuple[list[QAExample], list[QAExample], dict[str, Any]]:
    """Move ``n_dev_articles_to_train`` whole dev articles into training; evaluate on the rest.

    SQuAD 2.0 train is mostly answerable and dev half unanswerable, so adding dev articles teaches a
    model to abstain; moving whole articles (by ``title``) keeps evaluation paragraphs unseen. The moved
    titles are the first ``n`` of the dev titles (in file order) shuffled with ``random.Random(seed)``.
    Returns ``(train, eval, info)``: train is ``train_examples`` then the moved dev questions, both in
    their original order; ``info`` describes the split (seed, moved and evaluation titles, articles,
    questions and unanswerable questions per side) to be written beside every result.

    Raises ValueError when ``n`` would leave no evaluation article, or when a title or question id ends
    up on both sides (e.g. train and dev share an article, or examples have no titles).
    """
    dev_titles = list(dict.fromkeys(ex.title for ex in dev_examples))
    if not 0 <= n_dev_articles_to_train < len(dev_titles):
        raise ValueError(
            f"n_dev_articles_to_train={n_dev_articles_to_train} must be in [0, {len(dev_titles) - 1}]: "
            f"the dev set has {len(dev_titles)} article(s) and at least one must stay for evaluation"
        )
    shuffled = list(dev_titles)
    random.Random(seed).shuffle(shuffled)
    moved = set(shuffled[:n_dev_articles_to_train])
    moved_dev = [ex for ex in dev_examples if ex.title in moved]
    eval_examples = [ex for ex in dev_examples if ex.title not in moved]
    train = [*train_examples, *moved_dev]

    shared = {ex.title for ex in train} & {ex.title for ex in eval_examples}
    if shared:
        raise ValueError(f"article title(s) on both sides of the split: {sorted(shared)[:5]}")
    shared_ids = {ex.id for ex in train} & {ex.id for ex in eval_examples}
    if shared_ids:
        raise ValueError(f"question id(s) on both sides of the split: {sorted(shared_ids)[:5]}")

    info: dict[str, Any] = {
        "split": "by_article",
        "seed": seed,
        "n_dev_articles_to_train": n_dev_articles_to_train,
        "moved_titles": [t for t in dev_titles if t in moved],
        "eval_titles": [t for t in dev_titles if t not in moved],
        "train": {**_side_summary(train), "from_train": len(train_examples), "from_dev": len(moved_dev)},
        "eval": _side_summary(eval_examples),
    }
    return train, eval_examples, info


def subsample_examples(examples: Sequence[QAExample], n: int, seed: int) -> list[QAExample]:
    """A seeded random sample of ``n`` questions in their original order (all of them if ``n`` >= len).

    For quick runs; note that sampled questions share paragraphs with unsampled ones, so never use it to
    separate training from evaluation data (use :func:`split_squad_by_article`).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if n >= len(examples):
        return list(examples)
    keep = sorted(random.Random(seed).sample(range(len(examples)), n))
    return [examples[i] for i in keep]


# --------------------------------------------------------------------------------------------------
# the training pool and the evaluation sets


def article_of(ex: QAExample) -> str:
    """An example's article: its title, or its context where the file gives no title."""
    return ex.title or ex.context


def pool_summary(examples: Sequence[QAExample]) -> dict[str, int]:
    """Articles, paragraphs, questions, answerable and unanswerable questions of a set."""
    unanswerable = sum(ex.is_impossible for ex in examples)
    return {
        "articles": len({article_of(ex) for ex in examples}),
        "paragraphs": len({(ex.title, ex.context) for ex in examples}),
        "questions": len(examples),
        "answerable": len(examples) - unanswerable,
        "unanswerable": unanswerable,
    }


def merge_squad_train(
    train: Sequence[QAExample], extra: Sequence[QAExample], extra_name: str = "SQuAD 1.1 train"
) -> tuple[list[QAExample], dict[str, Any]]:
    """``train`` plus the questions of ``extra`` whose paragraph is not already in ``train``.

    A paragraph is identified by (article title, context): where both files hold it (the SQuAD 2.0 train
    articles are also SQuAD 1.1 train articles), the version in ``train`` is kept, with its unanswerable
    questions, and the copy in ``extra`` is dropped whole, so no paragraph or question counts twice.
    Returns ``(train + kept, info)``; a question id on both sides after that raises ValueError.
    """
    present = {(ex.title, ex.context) for ex in train}
    kept = [ex for ex in extra if (ex.title, ex.context) not in present]
    dropped = [ex for ex in extra if (ex.title, ex.context) in present]
    clash = {ex.id for ex in train} & {ex.id for ex in kept}
    if clash:
        raise ValueError(
            f"question id(s) {sorted(clash)[:5]} are in both training files but in different paragraphs; "
            f"ids must be unique across the pool (check the {extra_name} file)"
        )
    info = {
        "file_questions": len(extra),
        "file_articles": len({article_of(ex) for ex in extra}),
        "duplicate_articles": len({article_of(ex) for ex in dropped}),
        "duplicate_paragraphs": len({(ex.title, ex.context) for ex in dropped}),
        "duplicate_questions_dropped": len(dropped),
        "added": pool_summary(kept),
        "dedupe": "by (title, context): a paragraph already in the SQuAD 2.0 train file is kept once, as it is there",
    }
    return [*train, *kept], info


def balanced_subset(
    pool: Sequence[QAExample], n: int | None, share: float, seed: int
) -> tuple[list[int], dict[str, Any]]:
    """Indices (sorted) of ``n`` pool questions of which ``round(share * n)`` are unanswerable: the
    pool's own unanswerable questions first (SQuAD 2.0's, written against their paragraph), then
    negatives made by :func:`alad.tasks.squad_negatives.make_negatives` (ids ending ``-neg``), each
    drawn by seed; the rest are answerable questions drawn by seed. Too few of either kind fails, naming the fix."""
    n = len(pool) if n is None else min(n, len(pool))
    wanted = round(share * n)
    rng = random.Random(seed + 307)
    made = [i for i, ex in enumerate(pool) if ex.is_impossible and ex.id.endswith(NEGATIVE_SUFFIX)]
    own = [i for i, ex in enumerate(pool) if ex.is_impossible and not ex.id.endswith(NEGATIVE_SUFFIX)]
    answerable = [i for i, ex in enumerate(pool) if not ex.is_impossible]
    if len(own) + len(made) < wanted or len(answerable) < n - wanted:
        raise ValueError(
            f"a subset of {n} questions with an unanswerable share of {share:g} needs {wanted} unanswerable and "
            f"{n - wanted} answerable questions; the pool has {len(own) + len(made)} and {len(answerable)}: raise "
            "squad_negatives, lower squad_unanswerable_share or max_train"
        )
    take_own = rng.sample(own, min(wanted, len(own)))
    take_made = rng.sample(made, wanted - len(take_own))
    take_answerable = rng.sample(answerable, n - wanted)
    info = {
        "share": share,
        "questions": n,
        "unanswerable_own": len(take_own),
        "unanswerable_made": len(take_made),
        "answerable": len(take_answerable),
        "rule": "the pool's own unanswerable questions first, then made negatives, then answerable ones, by seed",
    }
    return sorted(take_own + take_made + take_answerable), info


def check_squad_v1_scorable(examples: Sequence[QAExample], source: str) -> None:
    """Refuse a set for SQuAD 1.1 scoring that has unanswerable questions (a SQuAD 2.0 file, say).

    The rule: SQuAD 1.1 scoring has no "no answer" option, so every question needs a gold answer and
    must not be marked ``is_impossible``.
    """
    bad = [ex.id for ex in examples if ex.is_impossible or not ex.answers]
    if bad:
        raise ValueError(
            f"{source} cannot be scored as SQuAD 1.1: {len(bad)} of its {len(examples)} questions are unanswerable "
            f"(is_impossible or no answer; e.g. {bad[0]}), and SQuAD 1.1 scoring has no 'no answer' option; give the "
            "official SQuAD 1.1 dev file (dev-v1.1.json) there, every question answerable"
        )


def squad_v1_eval_set(
    v1_dev: Sequence[QAExample], v2_dev: Sequence[QAExample]
) -> tuple[list[QAExample], dict[str, Any]]:
    """The SQuAD 1.1 dev articles that are not in SQuAD 2.0 dev, and what was left out.

    An article is left out when its title, or any of its paragraphs' contexts, is in ``v2_dev`` (the
    whole SQuAD 2.0 dev set: held-out articles are scored there, moved ones are trained on). On the
    official files 13 of the 48 articles remain.
    """
    titles = {ex.title for ex in v2_dev if ex.title}
    paragraphs = {ex.context for ex in v2_dev}
    overlap = {article_of(ex) for ex in v1_dev if (ex.title and ex.title in titles) or ex.context in paragraphs}
    kept = [ex for ex in v1_dev if article_of(ex) not in overlap]
    info = {
        "dev_articles": len({article_of(ex) for ex in v1_dev}),
        "left_out_in_squad_v2_dev": len(overlap),
        **pool_summary(kept),
        "titles": list(dict.fromkeys(ex.title for ex in kept)),
    }
    return kept, info


def check_disjoint_by_article(train: Sequence[QAExample], eval_sets: Mapping[str, Sequence[QAExample]]) -> None:
    """Raise a one-line ValueError if any evaluation article is also in the training pool.

    An evaluation article is in training when its title (where it has one) is a training article's
    title, or when one of its paragraph contexts is a training context. The message names the
    evaluation set and the article(s).
    """
    titles = {ex.title for ex in train if ex.title}
    paragraphs = {ex.context for ex in train}
    for name, items in eval_sets.items():
        hits = (ex for ex in items if (ex.title and ex.title in titles) or ex.context in paragraphs)
        shared = list(dict.fromkeys(ex.title or ex.context[:40] for ex in hits))
        if shared:
            shown = ", ".join(repr(t) for t in shared[:5]) + (f" and {len(shared) - 5} more" if len(shared) > 5 else "")
            raise ValueError(
                f"{len(shared)} article(s) of {name} are also in the training pool (same title or paragraph): {shown}; "
                "training and evaluation must be disjoint by article: remove them from one side"
            )
