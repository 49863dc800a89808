"""Unanswerable questions made from a SQuAD training pool (``squad_negatives``), one class per kind.

SQuAD 1.1 has no unanswerable question and only a few thousand of SQuAD 2.0's are at hand, so a pool
may add negatives made from its own answerable questions. :func:`make_negatives` draws the questions
(a share of the pool's answerable ones, or a number per article) and asks the chosen kind for each
one's new context; a kind that cannot make one for a question skips it, counted. Kinds:

- ``other_paragraph`` (the default): the question paired with another paragraph of its own article
  that does not hold its answer. Easy negatives: the paragraph is often about something else.
- ``answer_removed``: the question's own paragraph with every sentence that holds a gold answer
  removed, kept only where no answer remains in it. Closer to SQuAD 2.0's own unanswerable questions,
  which are written against the paragraph they are asked of: the rest of the paragraph is on topic.

Adding a kind is adding one :class:`NegativeKind` subclass to :data:`NEGATIVE_KINDS`.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from typing import Any

from alad.data.readers import QAExample
from alad.evaluation.metrics import normalize_answer
from alad.tasks.squad import NEGATIVE_SUFFIX, article_of

__all__ = ["DEFAULT_KIND", "NEGATIVE_KINDS", "AnswerRemoved", "NegativeKind", "OtherParagraph", "make_negatives"]

# a sentence ends at . ! or ? (closing quotes or brackets kept) followed by white space and a capital,
# digit or opening quote: approximate (an abbreviation such as "U.S. Army" splits too), and checked
# afterwards: a context where an answer still occurs is not used
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[A-Z0-9\"'(\[])")


def _holds_answer(normalized_context: str, answers: Sequence[str]) -> bool:
    """Whether any answer (normalised, padded with spaces) occurs as whole words in the context."""
    return any(a in normalized_context for a in answers)


def _padded_answers(ex: QAExample) -> list[str]:
    return [f" {a} " for a in (normalize_answer(text) for text, _ in ex.answers) if a]


class NegativeKind:
    """How a drawn answerable question becomes unanswerable: a new context, or None (skipped)."""

    name = ""
    rule = ""  # what the results say of these negatives
    skipped = ""  # why a question is skipped, the key of its count in the info

    def __init__(self, pool: Sequence[QAExample]) -> None:
        self.contexts: dict[str, list[str]] = {}
        for ex in pool:
            paragraphs = self.contexts.setdefault(article_of(ex), [])
            if ex.context not in paragraphs:
                paragraphs.append(ex.context)

    def eligible(self, ex: QAExample) -> bool:
        """Whether an answerable question may be drawn at all (any, by default)."""
        return True

    def context(self, ex: QAExample, rng: random.Random) -> str | None:
        raise NotImplementedError


class OtherParagraph(NegativeKind):
    name = "other_paragraph"
    rule = "each paired with another paragraph of its own article that does not hold its answer"
    skipped = "skipped_every_paragraph_holds_the_answer"

    def __init__(self, pool: Sequence[QAExample]) -> None:
        super().__init__(pool)
        self.normalized: dict[str, str] = {}  # each context normalised once

    def eligible(self, ex: QAExample) -> bool:
        return len(self.contexts[article_of(ex)]) >= 2

    def context(self, ex: QAExample, rng: random.Random) -> str | None:
        answers = _padded_answers(ex)
        others = []
        for c in self.contexts[article_of(ex)]:
            if c == ex.context:
                continue
            if c not in self.normalized:
                self.normalized[c] = f" {normalize_answer(c)} "
            if not _holds_answer(self.normalized[c], answers):
                others.append(c)
        return rng.choice(others) if others else None


class AnswerRemoved(NegativeKind):
    name = "answer_removed"
    rule = (
        "each its own paragraph with every sentence that holds a gold answer removed (sentences split at . ! ? "
        "before white space and a capital), kept only where no answer remains in it as whole normalised words"
    )
    skipped = "skipped_the_answer_remains_or_nothing_does"

    def context(self, ex: QAExample, rng: random.Random) -> str | None:
        spans = [(start, start + len(text)) for text, start in ex.answers]
        kept, begin = [], 0
        for end in [m.start() for m in _SENTENCE_END.finditer(ex.context)] + [len(ex.context)]:
            sentence = ex.context[begin:end]
            if not any(s < end and begin < e for s, e in spans):
                kept.append(sentence.strip())
            begin = end
        text = " ".join(s for s in kept if s)
        if not text or _holds_answer(f" {normalize_answer(text)} ", _padded_answers(ex)):
            return None
        return text


NEGATIVE_KINDS: dict[str, type[NegativeKind]] = {kind.name: kind for kind in (OtherParagraph, AnswerRemoved)}
DEFAULT_KIND = OtherParagraph.name


def _draw(pool: Sequence[QAExample], kind: NegativeKind, setting: float, rng: random.Random) -> tuple[list[int], str]:
    """Indices of the questions drawn (sorted) and the rule that drew them."""
    candidates: dict[str, list[int]] = {}
    for i, ex in enumerate(pool):
        if not ex.is_impossible and ex.answers:
            candidates.setdefault(article_of(ex), []).append(i)
    eligible = {a: [i for i in idx if kind.eligible(pool[i])] for a, idx in candidates.items()}
    eligible = {a: idx for a, idx in eligible.items() if idx}
    if setting >= 1:
        per_article = int(setting)
        chosen = sorted(i for idx in eligible.values() for i in rng.sample(idx, min(per_article, len(idx))))
        return chosen, f"{per_article} per article"
    everyone = [i for idx in eligible.values() for i in idx]
    wanted = round(setting * sum(len(idx) for idx in candidates.values()))
    return sorted(
        rng.sample(everyone, min(wanted, len(everyone)))
    ), f"a share of {setting:g} of the pool's answerable questions"


def make_negatives(
    pool: Sequence[QAExample], setting: float, seed: int, kind: str = DEFAULT_KIND
) -> tuple[list[QAExample], dict[str, Any]]:
    """Unanswerable questions made from the pool's answerable ones, by ``kind`` (:data:`NEGATIVE_KINDS`).

    ``setting`` 0 is off; ``0 < setting < 1`` is a share: that fraction of the pool's answerable
    questions (rounded) is drawn by seed from those the kind can use; ``setting >= 1`` (a whole number)
    draws that many questions per article. A drawn question the kind cannot make a negative of is
    skipped (counted). The negatives keep the question and its title, take ``id + "-neg"`` and are
    marked unanswerable. Returns ``(negatives, info)``; the pool itself is not changed.
    """
    if kind not in NEGATIVE_KINDS:
        raise ValueError(f"unknown squad_negative_kind {kind!r}; choose one of {', '.join(NEGATIVE_KINDS)}")
    if setting <= 0:
        return [], {"setting": 0, "made": 0, "state": "off"}
    rng = random.Random(seed + 211)
    maker = NEGATIVE_KINDS[kind](pool)
    chosen, rule = _draw(pool, maker, setting, rng)
    negatives: list[QAExample] = []
    for i in chosen:
        ex = pool[i]
        context = maker.context(ex, rng)
        if context is not None:
            negatives.append(QAExample(ex.id + NEGATIVE_SUFFIX, ex.title, context, ex.question, [], True))
    info = {
        "setting": setting,
        "state": "on",
        **({"kind": kind} if kind != DEFAULT_KIND else {}),  # the default's record stays as it was
        "rule": f"{rule}; {maker.rule}",
        "seed": seed,
        "drawn": len(chosen),
        "made": len(negatives),
        maker.skipped: len(chosen) - len(negatives),
        "articles": len({article_of(ex) for ex in negatives}),
    }
    return negatives, info
