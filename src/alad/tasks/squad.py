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
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from alad.data.readers import QAExample
from alad.evaluation.metrics import normalize_answer

__all__ = [
    "QAFeature",
    "apply_null_threshold",
    "collate_qa",
    "decode_qa",
    "gold_answers",
    "labelled_answer_text",
    "prepare_qa_features",
    "split_squad_by_article",
    "subsample_examples",
]

logger = logging.getLogger(__name__)

_CONTEXT = 1  # sequence id of the context in a (question, context) pair
_CHUNK = 1000  # examples tokenized per call: bounds peak memory on the full training set


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
    sizes leave no room for the context, or when the tokenizer does not start pairs with a special token
    (position 0 carries the no-answer label).
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("prepare_qa_features needs a fast tokenizer (offsets and sequence ids)")
    if max_question_tokens < 1 or doc_stride < 0:
        raise ValueError(f"need max_question_tokens >= 1 and doc_stride >= 0, got {max_question_tokens}, {doc_stride}")
    n_special = tokenizer.num_special_tokens_to_add(pair=True)
    room = max_length - n_special - max_question_tokens
    if room <= doc_stride:
        raise ValueError(
            f"max_length={max_length} leaves {room} context tokens after {n_special} special tokens and up to "
            f"{max_question_tokens} question tokens; that must exceed doc_stride={doc_stride}"
        )
    model_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(model_max, int) and model_max < max_length:
        logger.warning("max_length=%d exceeds the tokenizer's model_max_length=%d", max_length, model_max)
    for example in examples:
        _check_answers(example)

    features: list[QAFeature] = []
    n_cut = n_inexact = n_unlabelled = n_answerable = 0
    for lo in range(0, len(examples), _CHUNK):
        chunk = examples[lo : lo + _CHUNK]
        questions, cut = _truncate_questions([ex.question.lstrip() for ex in chunk], tokenizer, max_question_tokens)
        n_cut += cut
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
        labelled_in_example: dict[int, bool] = {}
        for w, local in enumerate(enc["overflow_to_sample_mapping"]):
            example = chunk[local]
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
            start_pos = end_pos = 0
            span = _answer_chars(example)
            if span is not None:
                start_pos, end_pos = _label_window(offsets, *span)
                labelled_in_example.setdefault(local, False)
                if end_pos:
                    labelled_in_example[local] = True
                    s, e = offsets[start_pos], offsets[end_pos]
                    assert s is not None and e is not None
                    if normalize_answer(example.context[s[0] : e[1]]) != normalize_answer(example.answers[0][0]):
                        n_inexact += 1
            features.append(
                QAFeature(
                    example_index=lo + local,
                    input_ids=list(enc["input_ids"][w]),
                    attention_mask=list(enc["attention_mask"][w]),
                    token_type_ids=list(enc["token_type_ids"][w]) if "token_type_ids" in enc else None,
                    offsets=offsets,
                    start_position=start_pos,
                    end_position=end_pos,
                )
            )
        n_answerable += len(labelled_in_example)
        n_unlabelled += sum(not v for v in labelled_in_example.values())

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
    return batch


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
    by_example: dict[int, list[int]] = {}
    for fi, f in enumerate(features):
        if not 0 <= f.example_index < len(examples):
            raise ValueError(f"feature {fi} has example_index {f.example_index}, outside the {len(examples)} examples")
        by_example.setdefault(f.example_index, []).append(fi)

    predictions: dict[str, str] = {}
    na_scores: dict[str, float] = {}
    for ei, example in enumerate(examples):
        if ei not in by_example:
            raise ValueError(f"question {example.id}: no features (were features built from these examples?)")
        null_score = float("inf")
        best_score, best_text = float("-inf"), ""
        for fi in by_example[ei]:
            f = features[fi]
            start = _as_array(start_logits[fi], len(f.input_ids), f"start_logits[{fi}]")
            end = _as_array(end_logits[fi], len(f.input_ids), f"end_logits[{fi}]")
            null_score = min(null_score, float(start[0] + end[0]))
            # context tokens with a non-empty span: zero-width tokens would give empty answers
            valid = np.array([o is not None and o[1] > o[0] for o in f.offsets], dtype=bool)
            if not valid.any():
                continue
            positions = np.flatnonzero(valid)
            starts = positions[np.argsort(-start[positions], kind="stable")[:n_best]]
            ends = positions[np.argsort(-end[positions], kind="stable")[:n_best]]
            length = ends[None, :] - starts[:, None] + 1
            scores = start[starts][:, None] + end[ends][None, :]
            scores = np.where((length >= 1) & (length <= max_answer_length), scores, -np.inf)
            i, j = np.unravel_index(int(np.argmax(scores)), scores.shape)
            if np.isfinite(scores[i, j]) and scores[i, j] > best_score:
                s_off, e_off = f.offsets[starts[i]], f.offsets[ends[j]]
                assert s_off is not None and e_off is not None
                best_score = float(scores[i, j])
                best_text = example.context[s_off[0] : e_off[1]]
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
