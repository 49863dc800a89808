"""Evaluation metrics for the three downstream tasks alad reports on.

* POS tagging: token accuracy and macro-F1 over tags.
* NER: entity-level precision/recall/F1 computed exactly as ``seqeval`` does in its default
  (conlleval-compatible, non-strict) mode, so numbers are comparable with published results
  without making seqeval (and its scikit-learn dependency) a runtime requirement.
* SQuAD 2.0: a faithful re-implementation of the official ``evaluate-v2.0.py`` logic, again so
  numbers are comparable with the literature, plus the "always answer nothing" baseline that
  every QA number should be read against (about half of SQuAD 2.0 is unanswerable).
* SQuAD 1.1: the official ``evaluate-v1.1.py`` EM/F1 (every question answerable, no "no answer").

Everything here is pure Python (numpy is not even needed), deterministic and cheap.
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "compute_exact",
    "compute_f1",
    "cross_fitted_v2_metrics",
    "format_per_type_table",
    "get_entities",
    "get_tokens",
    "ner_metrics",
    "no_answer_baseline",
    "normalize_answer",
    "pos_metrics",
    "squad_v1_metrics",
    "squad_v2_metrics",
]


# --------------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------------


def _safe_div(num: float, den: float) -> float:
    """Divide, returning 0.0 on a zero denominator (seqeval/sklearn ``zero_division`` default)."""
    return num / den if den else 0.0


def _prf(tp: int, n_pred: int, n_gold: int) -> tuple[float, float, float]:
    """Precision, recall and F1 from counts; F1 = 2PR/(P+R) as seqeval computes it (0 if P+R=0)."""
    p = _safe_div(tp, n_pred)
    r = _safe_div(tp, n_gold)
    f = _safe_div(2 * p * r, p + r)
    return p, r, f


def _check_lengths(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> None:
    """Fail loudly on misaligned inputs: silently truncating would corrupt every score."""
    if len(gold) != len(pred):
        raise ValueError(f"gold has {len(gold)} sentences but pred has {len(pred)}")
    for i, (g, p) in enumerate(zip(gold, pred, strict=True)):
        if len(g) != len(p):
            raise ValueError(f"sentence {i}: gold has {len(g)} tags but pred has {len(p)}")


# --------------------------------------------------------------------------------------------------
# POS tagging
# --------------------------------------------------------------------------------------------------


def pos_metrics(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict[str, Any]:
    """Token accuracy, macro-F1 and per-label scores for token classification (POS).

    Accuracy is the usual POS headline number; macro-F1 is reported too because compression
    damage tends to hit rare tags first and accuracy hides that. Macro-F1 averages per-label F1
    over the union of labels seen in gold or pred (like sklearn ``f1_score(average="macro")``),
    with 0.0 for undefined precision/recall.

    Returns ``{"accuracy", "macro_f1", "n_tokens", "per_label": {label: {precision, recall, f1,
    support}}}``. Raises ``ValueError`` naming the first sentence whose lengths differ.
    """
    _check_lengths(gold, pred)
    tp: collections.Counter[str] = collections.Counter()
    n_gold: collections.Counter[str] = collections.Counter()
    n_pred: collections.Counter[str] = collections.Counter()
    n_tokens = 0
    for g_sent, p_sent in zip(gold, pred, strict=True):
        for g, p in zip(g_sent, p_sent, strict=True):
            n_tokens += 1
            n_gold[g] += 1
            n_pred[p] += 1
            if g == p:
                tp[g] += 1
    per_label: dict[str, dict[str, float]] = {}
    for label in sorted(set(n_gold) | set(n_pred)):
        p, r, f = _prf(tp[label], n_pred[label], n_gold[label])
        per_label[label] = {"precision": p, "recall": r, "f1": f, "support": n_gold[label]}
    macro_f1 = _safe_div(sum(v["f1"] for v in per_label.values()), len(per_label))
    return {
        "accuracy": _safe_div(sum(tp.values()), n_tokens),
        "macro_f1": macro_f1,
        "n_tokens": n_tokens,
        "per_label": per_label,
    }


# --------------------------------------------------------------------------------------------------
# NER (seqeval default mode)
# --------------------------------------------------------------------------------------------------


def _end_of_chunk(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    """Whether a chunk ended between the previous and the current token (seqeval's rules)."""
    if prev_tag in ("E", "S"):
        return True
    if prev_tag in ("B", "I") and tag in ("B", "S", "O"):
        return True
    return prev_tag != "O" and prev_tag != "." and prev_type != type_


def _start_of_chunk(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    """Whether a chunk started at the current token (seqeval's rules)."""
    if tag in ("B", "S"):
        return True
    if prev_tag in ("E", "S", "O") and tag in ("E", "I"):
        return True
    return tag != "O" and tag != "." and prev_type != type_


def get_entities(seq: Sequence[str] | Sequence[Sequence[str]]) -> list[tuple[str, int, int]]:
    """Extract ``(type, start, end)`` chunks (``end`` inclusive) exactly like seqeval's ``get_entities``.

    This mirrors seqeval's conlleval-style (non-strict) decoding, including its leniency: an
    ``I-X`` after ``O`` or after a different type starts a new chunk, a type change ends one, and
    ``E-``/``S-`` tags are honoured. A nested list is flattened with an ``O`` after each sentence,
    so chunks never cross sentence boundaries and offsets index the flattened sequence (again as
    seqeval does). Tags are read as ``tag[0]`` = chunk tag, text after the first ``-`` = type
    (``"_"`` if empty), so unusual tags decode the same odd way they do in seqeval.
    """
    if any(isinstance(s, (list, tuple)) for s in seq):
        flat: list[str] = [tok for sent in seq for tok in [*sent, "O"]]  # type: ignore[misc]
    else:
        flat = list(seq)  # type: ignore[arg-type]
    prev_tag, prev_type, begin = "O", "", 0
    chunks: list[tuple[str, int, int]] = []
    for i, chunk in enumerate([*flat, "O"]):
        tag = chunk[0]
        type_ = chunk[1:].split("-", maxsplit=1)[-1] or "_"
        if _end_of_chunk(prev_tag, tag, prev_type, type_):
            chunks.append((prev_type, begin, i - 1))
        if _start_of_chunk(prev_tag, tag, prev_type, type_):
            begin = i
        prev_tag, prev_type = tag, type_
    return chunks


def ner_metrics(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict[str, Any]:
    """Entity-level NER scores identical to seqeval's default mode (BIO/IOB2, non-strict).

    An entity counts as correct only if type, start and end all match. ``micro_*`` pool counts
    over all types (seqeval ``average="micro"``, the CoNLL headline number); ``macro_*`` is the
    unweighted mean over the sorted union of types in gold or pred (seqeval ``average="macro"``).
    ``per_type`` matches ``classification_report(output_dict=True)`` rows (with ``f1`` for
    ``f1-score``). Zero divisions give 0.0 like seqeval's default; one deliberate difference: with
    no entities at all seqeval's macro averages are NaN, ours are 0.0.
    """
    _check_lengths(gold, pred)
    gold_sets: dict[str, set[tuple[int, int]]] = collections.defaultdict(set)
    pred_sets: dict[str, set[tuple[int, int]]] = collections.defaultdict(set)
    for type_, start, end in get_entities([list(s) for s in gold]):
        gold_sets[type_].add((start, end))
    for type_, start, end in get_entities([list(s) for s in pred]):
        pred_sets[type_].add((start, end))

    per_type: dict[str, dict[str, float]] = {}
    tp_all = pred_all = gold_all = 0
    for type_ in sorted(set(gold_sets) | set(pred_sets)):
        g, p_ = gold_sets.get(type_, set()), pred_sets.get(type_, set())
        tp = len(g & p_)
        prec, rec, f1 = _prf(tp, len(p_), len(g))
        per_type[type_] = {"precision": prec, "recall": rec, "f1": f1, "support": len(g)}
        tp_all, pred_all, gold_all = tp_all + tp, pred_all + len(p_), gold_all + len(g)

    micro_p, micro_r, micro_f = _prf(tp_all, pred_all, gold_all)
    n_types = len(per_type)
    return {
        "micro_f1": micro_f,
        "micro_precision": micro_p,
        "micro_recall": micro_r,
        "macro_f1": _safe_div(sum(v["f1"] for v in per_type.values()), n_types),
        "macro_precision": _safe_div(sum(v["precision"] for v in per_type.values()), n_types),
        "macro_recall": _safe_div(sum(v["recall"] for v in per_type.values()), n_types),
        "n_gold": gold_all,
        "n_pred": pred_all,
        "n_correct": tp_all,
        "per_type": per_type,
    }


def format_per_type_table(metrics: Mapping[str, Any]) -> str:
    """Render ``ner_metrics`` (or ``pos_metrics``) output as a small markdown table, in percent.

    Per-type rows make it visible *which* entity types a compressed model loses, which the single
    micro-F1 hides. Micro/macro summary rows are appended when present.
    """
    rows = metrics.get("per_type", metrics.get("per_label"))
    if rows is None:
        raise ValueError("metrics must contain 'per_type' or 'per_label'")
    lines = ["| type | precision | recall | f1 | support |", "|---|---:|---:|---:|---:|"]
    for name, v in rows.items():
        lines.append(
            f"| {name} | {100 * v['precision']:.2f} | {100 * v['recall']:.2f} | {100 * v['f1']:.2f} | {v['support']} |"
        )
    support = sum(v["support"] for v in rows.values())
    for avg in ("micro", "macro"):
        if f"{avg}_f1" in metrics and f"{avg}_precision" in metrics:
            lines.append(
                f"| **{avg} avg** | {100 * metrics[f'{avg}_precision']:.2f} | "
                f"{100 * metrics[f'{avg}_recall']:.2f} | {100 * metrics[f'{avg}_f1']:.2f} | {support} |"
            )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# SQuAD 2.0 (official evaluate-v2.0.py logic)
# --------------------------------------------------------------------------------------------------

_ARTICLES_RE = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = frozenset(string.punctuation)
_DROP_PUNCT = str.maketrans("", "", string.punctuation)  # the same characters, removed in one pass


def normalize_answer(s: str) -> str:
    """Lower-case, drop punctuation, drop articles (a/an/the), collapse whitespace (official order)."""
    s = s.lower()
    s = s.translate(_DROP_PUNCT)
    s = _ARTICLES_RE.sub(" ", s)
    return " ".join(s.split())


def get_tokens(s: str) -> list[str]:
    """Whitespace tokens of the normalised answer ([] for the empty / no-answer string)."""
    if not s:
        return []
    return normalize_answer(s).split()


def compute_exact(a_gold: str, a_pred: str) -> int:
    """1 if the normalised strings are identical, else 0."""
    return int(normalize_answer(a_gold) == normalize_answer(a_pred))


def compute_f1(a_gold: str, a_pred: str) -> float:
    """Bag-of-tokens F1 between normalised answers.

    As in the official script, if either side has no tokens (no-answer) the score is 1 when both
    are empty and 0 otherwise, so answering an unanswerable question earns nothing.
    """
    gold_toks = get_tokens(a_gold)
    pred_toks = get_tokens(a_pred)
    common = collections.Counter(gold_toks) & collections.Counter(pred_toks)
    num_same = sum(common.values())
    if len(gold_toks) == 0 or len(pred_toks) == 0:
        return int(gold_toks == pred_toks)
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(pred_toks)
    recall = 1.0 * num_same / len(gold_toks)
    return (2 * precision * recall) / (precision + recall)


def _find_best_thresh(
    preds: Mapping[str, str],
    scores: Mapping[str, float],
    na_probs: Mapping[str, float],
    qid_to_has_ans: Mapping[str, bool],
) -> tuple[float, float]:
    """Official ``find_best_thresh``: best score over no-answer thresholds.

    Starts from "abstain on everything" (score = number of unanswerable questions, threshold 0.0),
    then walks questions in increasing na_prob order (stable sort, so ties keep ``na_probs``
    order), switching each to "answer": a HasAns question gains its raw score, a NoAns question
    loses 1 if the prediction string is non-empty. Only strict improvements move the threshold.
    """
    score, thresh = _threshold_walk(preds, scores, na_probs, qid_to_has_ans)
    return score, 0.0 if thresh is None else thresh


def _threshold_walk(
    preds: Mapping[str, str],
    scores: Mapping[str, float],
    na_probs: Mapping[str, float],
    qid_to_has_ans: Mapping[str, bool],
) -> tuple[float, float | None]:
    """:func:`_find_best_thresh`'s walk; the threshold is None where abstaining on everything is best
    (the official script says 0.0 there, which only means "abstain everywhere" for probabilities)."""
    num_no_ans = sum(1 for k in qid_to_has_ans if not qid_to_has_ans[k])
    cur_score: float = num_no_ans
    best_score: float = cur_score
    best_thresh: float | None = None
    for qid in sorted(na_probs, key=lambda k: na_probs[k]):
        if qid not in scores:
            continue
        if qid_to_has_ans[qid]:
            diff: float = scores[qid]
        else:
            diff = -1 if preds[qid] else 0
        cur_score += diff
        if cur_score > best_score:
            best_score = cur_score
            best_thresh = na_probs[qid]
    return 100.0 * best_score / len(scores), best_thresh


def _eval_subset(exact: Mapping[str, float], f1: Mapping[str, float], qids: Sequence[str]) -> dict[str, Any]:
    total = len(qids)
    return {
        "exact": 100.0 * sum(exact[k] for k in qids) / total,
        "f1": 100.0 * sum(f1[k] for k in qids) / total,
        "total": total,
    }


def _raw_scores(
    gold: Mapping[str, Sequence[str]], pred: Mapping[str, str]
) -> tuple[dict[str, float], dict[str, float]]:
    """Per question, the best EM and F1 of its prediction over its gold answers (official: answers that
    normalise to "" are dropped, and a question left with none is scored against [""])."""
    exact_raw: dict[str, float] = {}
    f1_raw: dict[str, float] = {}
    for qid, answers in gold.items():
        gold_answers = [a for a in answers if normalize_answer(a)] or [""]
        exact_raw[qid] = max(compute_exact(a, pred[qid]) for a in gold_answers)
        f1_raw[qid] = max(compute_f1(a, pred[qid]) for a in gold_answers)
    return exact_raw, f1_raw


def squad_v2_metrics(
    gold: Mapping[str, Sequence[str]],
    pred: Mapping[str, str],
    na_probs: Mapping[str, float] | None = None,
    na_prob_thresh: float = 1.0,
) -> dict[str, Any]:
    """SQuAD 2.0 scores exactly as the official ``evaluate-v2.0.py`` computes them (in percent).

    ``gold`` maps qid -> answer texts (empty list = unanswerable); ``pred`` maps qid -> predicted
    text ("" = no answer). Gold answers that normalise to "" are dropped and a question left with
    none is scored against [""], while HasAns/NoAns membership is ``bool(answers)``, both as in the
    official script. If ``na_probs`` is given, a question with ``na_prob > na_prob_thresh`` is
    treated as abstained, and ``best_exact``/``best_f1`` (+ ``_thresh``) are added.

    Deviation from the official script: a missing prediction (or missing na_prob) raises
    ``ValueError`` listing up to 5 qids, instead of printing a warning and silently scoring a
    subset; alad callers always predict every question, so a gap signals a bug. Predictions or
    na_probs for qids absent from ``gold`` are ignored, as officially.
    """
    if not gold:
        raise ValueError("gold is empty")
    missing = [q for q in gold if q not in pred]
    if missing:
        raise ValueError(f"{len(missing)} question(s) without a prediction, e.g. {missing[:5]}")
    if na_probs is not None:
        missing = [q for q in gold if q not in na_probs]
        if missing:
            raise ValueError(f"{len(missing)} question(s) without an na_prob, e.g. {missing[:5]}")

    qid_to_has_ans = {q: bool(answers) for q, answers in gold.items()}
    exact_raw, f1_raw = _raw_scores(gold, pred)
    probs = na_probs if na_probs is not None else {q: 0.0 for q in pred}

    def apply_thresh(scores: Mapping[str, float]) -> dict[str, float]:
        return {q: (float(not qid_to_has_ans[q]) if probs[q] > na_prob_thresh else s) for q, s in scores.items()}

    exact_t, f1_t = apply_thresh(exact_raw), apply_thresh(f1_raw)
    out = _eval_subset(exact_t, f1_t, list(gold))
    has_ans = [q for q, v in qid_to_has_ans.items() if v]
    no_ans = [q for q, v in qid_to_has_ans.items() if not v]
    if has_ans:
        out.update({f"HasAns_{k}": v for k, v in _eval_subset(exact_t, f1_t, has_ans).items()})
    if no_ans:
        out.update({f"NoAns_{k}": v for k, v in _eval_subset(exact_t, f1_t, no_ans).items()})
    if na_probs is not None:
        out["best_exact"], out["best_exact_thresh"] = _find_best_thresh(pred, exact_raw, na_probs, qid_to_has_ans)
        out["best_f1"], out["best_f1_thresh"] = _find_best_thresh(pred, f1_raw, na_probs, qid_to_has_ans)
    return out


def cross_fitted_v2_metrics(
    gold: Mapping[str, Sequence[str]],
    pred: Mapping[str, str],
    na_probs: Mapping[str, float],
    groups: Mapping[str, str],
    folds: int = 2,
) -> dict[str, Any]:
    """SQuAD 2.0 scores at a no-answer threshold chosen without the questions it is applied to.

    ``best_f1`` picks the threshold on the scored questions themselves, an upper bound. Here the
    groups (SQuAD articles: ``groups`` maps qid -> article) are dealt, in sorted order, into ``folds``
    folds; each fold's questions abstain where ``na_prob > t``, ``t`` being the best F1 threshold
    (official walk) on the other folds' questions, and the pooled predictions are scored with
    :func:`squad_v2_metrics`. Returns ``cv_exact``, ``cv_f1``, ``cv_HasAns_f1``, ``cv_NoAns_f1``, the
    thresholds per fold (None: abstain on everything) and ``cv_folds``; an empty dict where there are
    fewer groups than folds (nothing to hold out). ``pred`` holds every question's best span.
    """
    if folds < 2:
        raise ValueError(f"folds must be at least 2, got {folds}")
    for what, given in (("a prediction", pred), ("an na_prob", na_probs), ("a group (article)", groups)):
        missing = [q for q in gold if q not in given]
        if missing:
            raise ValueError(f"{len(missing)} question(s) without {what}, e.g. {missing[:5]}")
    names = sorted({groups[q] for q in gold})
    if len(names) < folds:
        return {}
    fold_of = {name: i % folds for i, name in enumerate(names)}
    has_ans = {q: bool(answers) for q, answers in gold.items()}
    f1_raw = _raw_scores(gold, pred)[1]
    final, thresholds = {}, []
    for k in range(folds):
        rest = [q for q in gold if fold_of[groups[q]] != k]
        _, t = _threshold_walk(
            pred, {q: f1_raw[q] for q in rest}, {q: na_probs[q] for q in rest}, {q: has_ans[q] for q in rest}
        )
        thresholds.append(t)
        for q in gold:
            if fold_of[groups[q]] == k:
                final[q] = "" if t is None or na_probs[q] > t else pred[q]
    scores = squad_v2_metrics(gold, final)
    keys = ("exact", "f1", "HasAns_f1", "NoAns_f1")
    return {**{f"cv_{k}": scores[k] for k in keys if k in scores}, "cv_thresholds": thresholds, "cv_folds": folds}


def answerability_auc(gold: Mapping[str, Sequence[str]], na_probs: Mapping[str, float]) -> float | None:
    """How well the no-answer score ranks: the probability that a random unanswerable question has a
    higher ``na_prob`` than a random answerable one (ties count half; ROC AUC, Mann-Whitney), in [0, 1].

    0.5 is no ranking (a score unrelated to answerability): near it, abstaining drops answerable
    questions about as often as unanswerable ones, whatever the threshold, and SQuAD 2.0 F1 stays near
    "always no answer" or below. None where the questions are all answerable or all unanswerable.
    """
    missing = [q for q in gold if q not in na_probs]
    if missing:
        raise ValueError(f"{len(missing)} question(s) without an na_prob, e.g. {missing[:5]}")
    ranked = sorted(gold, key=lambda q: na_probs[q])
    rank_sum, unanswerable, i = 0.0, 0, 0
    while i < len(ranked):  # average ranks (1-based) over ties
        j = i
        while j < len(ranked) and na_probs[ranked[j]] == na_probs[ranked[i]]:
            j += 1
        tied = [q for q in ranked[i:j] if not gold[q]]
        rank_sum += len(tied) * (i + 1 + j) / 2
        unanswerable += len(tied)
        i = j
    answerable = len(ranked) - unanswerable
    if not answerable or not unanswerable:
        return None
    return (rank_sum - unanswerable * (unanswerable + 1) / 2) / (unanswerable * answerable)


def no_answer_baseline(gold: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """Scores of always predicting "" (abstaining): the floor any SQuAD 2.0 model must beat.

    On SQuAD 2.0 dev this is about 50 EM/F1, so a compressed model that "scores 50" may have
    learned nothing; print this next to every QA result.
    """
    return squad_v2_metrics(gold, {q: "" for q in gold})


def _f1_v1(prediction: str, ground_truth: str) -> float:
    """Token F1 as the official SQuAD 1.1 script computes it: no special case for empty answers."""
    pred_toks = normalize_answer(prediction).split()
    gold_toks = normalize_answer(ground_truth).split()
    common = collections.Counter(pred_toks) & collections.Counter(gold_toks)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_toks)
    recall = num_same / len(gold_toks)
    return (2 * precision * recall) / (precision + recall)


def squad_v1_metrics(gold: Mapping[str, Sequence[str]], pred: Mapping[str, str]) -> dict[str, Any]:
    """SQuAD 1.1 scores exactly as the official ``evaluate-v1.1.py`` computes them (in percent).

    ``gold`` maps qid -> answer texts, at least one per question (SQuAD 1.1 has no unanswerable
    question); ``pred`` maps qid -> the predicted span. Per question the best score over its gold
    answers counts; EM compares normalised strings, F1 their tokens (an empty prediction scores 0).
    There is no "no answer" option: pass the best non-null span of every question.

    Deviation from the official script: a missing prediction raises ``ValueError`` (as in
    :func:`squad_v2_metrics`) instead of scoring 0 with a printed message; a question without a gold
    answer raises too, naming it (it belongs to SQuAD 2.0 scoring).
    """
    if not gold:
        raise ValueError("gold is empty")
    unanswerable = [q for q, answers in gold.items() if not answers]
    if unanswerable:
        raise ValueError(
            f"{len(unanswerable)} question(s) without a gold answer, e.g. {unanswerable[:5]}: SQuAD 1.1 scoring has no "
            "'no answer' option; score such questions with squad_v2_metrics"
        )
    missing = [q for q in gold if q not in pred]
    if missing:
        raise ValueError(f"{len(missing)} question(s) without a prediction, e.g. {missing[:5]}")
    exact = sum(max(compute_exact(a, pred[q]) for a in answers) for q, answers in gold.items())
    f1 = sum(max(_f1_v1(pred[q], a) for a in answers) for q, answers in gold.items())
    total = len(gold)
    return {"exact": 100.0 * exact / total, "f1": 100.0 * f1 / total, "total": total}
