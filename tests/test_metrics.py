"""Tests for alad.evaluation.metrics: POS, NER (checked against seqeval) and SQuAD 2.0 (hand-worked cases)."""

from __future__ import annotations

import math
import random

import pytest

from alad.evaluation.metrics import (
    answerability_auc,
    compute_exact,
    compute_f1,
    cross_fitted_v2_metrics,
    format_per_type_table,
    get_entities,
    get_tokens,
    ner_metrics,
    no_answer_baseline,
    normalize_answer,
    pos_metrics,
    squad_v1_metrics,
    squad_v2_metrics,
)

TOL = 1e-9

# --------------------------------------------------------------------------------------------------
# POS
# --------------------------------------------------------------------------------------------------


def test_pos_metrics_hand_worked() -> None:
    gold = [["DET", "NOUN", "VERB"], ["NOUN"]]
    pred = [["DET", "VERB", "VERB"], ["ADJ"]]
    m = pos_metrics(gold, pred)
    # 2 of 4 tokens correct.
    assert m["accuracy"] == pytest.approx(0.5, abs=TOL)
    assert m["n_tokens"] == 4
    # Labels in gold or pred: ADJ, DET, NOUN, VERB.
    # ADJ: tp0 pred1 gold0 -> F1 0; DET: 1/1/1 -> 1; NOUN: tp0 pred0 gold2 -> 0;
    # VERB: tp1 pred2 gold1 -> P=.5 R=1 F1=2/3.  macro = (0+1+0+2/3)/4 = 5/12.
    assert m["macro_f1"] == pytest.approx(5 / 12, abs=TOL)
    assert set(m["per_label"]) == {"ADJ", "DET", "NOUN", "VERB"}
    assert m["per_label"]["VERB"] == pytest.approx({"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1})
    assert m["per_label"]["ADJ"]["support"] == 0


def test_pos_metrics_length_mismatch_names_sentence() -> None:
    with pytest.raises(ValueError, match="sentence 1"):
        pos_metrics([["A"], ["A", "B"]], [["A"], ["A"]])
    with pytest.raises(ValueError, match="sentences"):
        pos_metrics([["A"]], [["A"], ["B"]])


def test_pos_metrics_matches_sklearn_random() -> None:
    skm = pytest.importorskip("sklearn.metrics")
    rng = random.Random(1234)
    labels = ["NOUN", "VERB", "ADJ", "DET", "PUNCT", "X"]
    for _ in range(30):
        gold = [[rng.choice(labels) for _ in range(rng.randint(1, 8))] for _ in range(rng.randint(1, 5))]
        pred = [[g if rng.random() < 0.6 else rng.choice(labels) for g in s] for s in gold]
        flat_g = [t for s in gold for t in s]
        flat_p = [t for s in pred for t in s]
        m = pos_metrics(gold, pred)
        assert m["accuracy"] == pytest.approx(skm.accuracy_score(flat_g, flat_p), abs=TOL)
        expected = skm.f1_score(flat_g, flat_p, average="macro", zero_division=0)
        assert m["macro_f1"] == pytest.approx(expected, abs=TOL)


# --------------------------------------------------------------------------------------------------
# NER vs seqeval
# --------------------------------------------------------------------------------------------------

try:  # test-only dependency (the "test" extra); the library itself never imports it
    from seqeval import metrics as seqeval_metrics
    from seqeval.metrics import sequence_labeling as seqeval_labeling
except ImportError:  # pragma: no cover
    seqeval_metrics = seqeval_labeling = None

needs_seqeval = pytest.mark.skipif(seqeval_metrics is None, reason="seqeval (test extra) not installed")


def _assert_matches_seqeval(gold: list[list[str]], pred: list[list[str]]) -> None:
    ours = ner_metrics(gold, pred)
    sm = seqeval_metrics
    assert ours["micro_f1"] == pytest.approx(float(sm.f1_score(gold, pred)), abs=TOL)
    assert ours["micro_precision"] == pytest.approx(float(sm.precision_score(gold, pred)), abs=TOL)
    assert ours["micro_recall"] == pytest.approx(float(sm.recall_score(gold, pred)), abs=TOL)
    for ours_key, avg_fn in [
        ("macro_f1", sm.f1_score),
        ("macro_precision", sm.precision_score),
        ("macro_recall", sm.recall_score),
    ]:
        theirs = float(avg_fn(gold, pred, average="macro"))
        if math.isnan(theirs):  # no entity anywhere: seqeval averages an empty array
            assert ours[ours_key] == 0.0
        else:
            assert ours[ours_key] == pytest.approx(theirs, abs=TOL)
    report = sm.classification_report(gold, pred, output_dict=True)
    type_rows = {k: v for k, v in report.items() if not k.endswith(" avg")}
    assert set(ours["per_type"]) == set(type_rows)
    for t, row in type_rows.items():
        mine = ours["per_type"][t]
        assert mine["precision"] == pytest.approx(float(row["precision"]), abs=TOL)
        assert mine["recall"] == pytest.approx(float(row["recall"]), abs=TOL)
        assert mine["f1"] == pytest.approx(float(row["f1-score"]), abs=TOL)
        assert mine["support"] == int(row["support"])
    assert ours["n_gold"] == int(report["micro avg"]["support"])


EDGE_CASES: list[tuple[list[list[str]], list[list[str]]]] = [
    # perfect match
    ([["B-PER", "I-PER", "O", "B-LOC"]], [["B-PER", "I-PER", "O", "B-LOC"]]),
    # boundary error and type error
    ([["B-PER", "I-PER", "O", "B-LOC"]], [["B-PER", "O", "O", "B-ORG"]]),
    # I- after O starts an entity (conlleval leniency)
    ([["O", "I-PER", "I-PER", "O"]], [["O", "B-PER", "I-PER", "O"]]),
    # I-LOC after B-PER: type change ends PER and starts LOC
    ([["B-PER", "I-LOC", "O"]], [["B-PER", "B-LOC", "O"]]),
    # B-X B-X gives two entities; B-X I-X one
    ([["B-PER", "B-PER", "O"]], [["B-PER", "I-PER", "O"]]),
    # all O / no entities anywhere (seqeval macro is NaN, ours 0.0)
    ([["O", "O"], ["O"]], [["O", "O"], ["O"]]),
    # entities only in gold / only in pred
    ([["B-MISC", "O"]], [["O", "O"]]),
    ([["O", "O"]], [["B-MISC", "I-MISC"]]),
    # empty sentences and single tokens
    ([[], ["B-ORG"], []], [[], ["B-ORG"], []]),
    # entity at end of one sentence, I- at start of the next: must not merge across sentences
    ([["O", "B-PER"], ["I-PER", "O"]], [["O", "B-PER"], ["B-PER", "O"]]),
    # IOBES tags if present
    ([["S-PER", "B-LOC", "I-LOC", "E-LOC", "O"]], [["S-PER", "B-LOC", "E-LOC", "E-LOC", "O"]]),
    ([["E-PER", "I-PER", "S-LOC", "I-LOC"]], [["B-PER", "E-PER", "S-LOC", "E-LOC"]]),
    # bare B/I tags (type "_") and types containing dashes
    ([["B", "I", "O", "B-ORG-X", "I-ORG-X"]], [["B", "O", "O", "B-ORG-X", "I-ORG"]]),
    ([["O", "I", "O", "E", "S", "I"]], [["O", "B", "O", "I", "E", "I"]]),
    # many types, macro != micro
    (
        [["B-PER", "O", "B-LOC", "I-LOC", "O", "B-ORG", "B-MISC"], ["B-PER", "I-PER"]],
        [["B-PER", "O", "B-LOC", "O", "O", "B-ORG", "B-MISC"], ["O", "B-PER"]],
    ),
]


@needs_seqeval
@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("gold,pred", EDGE_CASES)
def test_ner_edge_cases_match_seqeval(gold: list[list[str]], pred: list[list[str]]) -> None:
    _assert_matches_seqeval(gold, pred)
    _assert_matches_seqeval(pred, gold)  # swapped roles exercise the other zero divisions


@needs_seqeval
@pytest.mark.filterwarnings("ignore")
def test_get_entities_matches_seqeval_on_edge_cases() -> None:
    for gold, pred in EDGE_CASES:
        for seq in (gold, pred):
            assert get_entities(seq) == seqeval_labeling.get_entities(seq)
            for sent in seq:
                assert get_entities(sent) == seqeval_labeling.get_entities(sent)


def test_ner_hand_worked() -> None:
    gold = [["B-PER", "I-PER", "O", "B-LOC", "O", "B-ORG"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG", "O", "B-ORG"]]
    m = ner_metrics(gold, pred)
    # gold {PER(0,1), LOC(3,3), ORG(5,5)}, pred {PER(0,1), ORG(3,3), ORG(5,5)}: 2 correct of 3/3.
    assert m["micro_f1"] == pytest.approx(2 / 3, abs=TOL)
    # per-type F1: LOC 0, ORG P=1/2 R=1 -> 2/3, PER 1; macro = (0 + 2/3 + 1)/3 = 5/9.
    assert m["macro_f1"] == pytest.approx(5 / 9, abs=TOL)
    assert m["per_type"]["LOC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert list(m["per_type"]) == ["LOC", "ORG", "PER"]


def test_ner_length_mismatch_names_sentence() -> None:
    with pytest.raises(ValueError, match="sentence 2"):
        ner_metrics([["O"], ["O"], ["B-PER", "O"]], [["O"], ["O"], ["B-PER"]])


_BIO_POOL = ["O"] * 6 + [f"{p}-{t}" for p in "BI" for t in ("PER", "LOC", "ORG", "MISC")]
# IOBES tags plus bare B/I/E/S (type "_"), which seqeval also decodes
_BIOES_POOL = _BIO_POOL + [f"{p}-{t}" for p in "ES" for t in ("PER", "LOC")] + list("BIES")


def _random_corpus(rng: random.Random, pool: list[str]) -> tuple[list[list[str]], list[list[str]]]:
    gold = [[rng.choice(pool) for _ in range(rng.randint(0, 12))] for _ in range(rng.randint(1, 4))]
    pred = [[g if rng.random() < 0.65 else rng.choice(pool) for g in sent] for sent in gold]
    return gold, pred


@needs_seqeval
@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("pool,n_trials,seed", [(_BIO_POOL, 300, 20240611), (_BIOES_POOL, 60, 7)])
def test_ner_random_sequences_match_seqeval(pool: list[str], n_trials: int, seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(n_trials):
        gold, pred = _random_corpus(rng, pool)
        assert get_entities(gold) == seqeval_labeling.get_entities(gold)
        _assert_matches_seqeval(gold, pred)


def test_format_per_type_table() -> None:
    m = ner_metrics([["B-PER", "O", "B-LOC"]], [["B-PER", "O", "O"]])
    table = format_per_type_table(m)
    lines = table.splitlines()
    assert lines[0] == "| type | precision | recall | f1 | support |"
    assert "| LOC | 0.00 | 0.00 | 0.00 | 1 |" in lines
    assert "| PER | 100.00 | 100.00 | 100.00 | 1 |" in lines
    assert any(line.startswith("| **micro avg** | 100.00 | 50.00 | 66.67 | 2") for line in lines)
    assert any(line.startswith("| **macro avg**") for line in lines)
    # also works on POS output
    assert "| NOUN |" in format_per_type_table(pos_metrics([["NOUN"]], [["NOUN"]]))
    with pytest.raises(ValueError):
        format_per_type_table({"micro_f1": 1.0})


# --------------------------------------------------------------------------------------------------
# SQuAD 2.0
# --------------------------------------------------------------------------------------------------


def test_normalize_answer() -> None:
    assert normalize_answer("The  Quick, Brown fox!") == "quick brown fox"
    assert normalize_answer("An apple a day") == "apple day"
    assert normalize_answer("  Hello\tWORLD\n ") == "hello world"
    assert normalize_answer("theater another") == "theater another"  # only whole-word articles
    assert normalize_answer("A.B.C.") == "abc"  # punctuation is removed before articles
    assert normalize_answer("a-team") == "ateam"  # ... so "a-" glued to the word survives
    assert normalize_answer("The") == ""
    assert get_tokens("") == []
    assert get_tokens("The Eiffel  Tower.") == ["eiffel", "tower"]


def test_compute_exact_and_f1() -> None:
    assert compute_exact("The Broncos", "broncos!") == 1
    assert compute_exact("Denver Broncos", "Broncos") == 0
    # gold toks [quick, brown, fox] (3); pred toks [quick, brown, dog, jumps] (4); common = 2.
    # P = 2/4 = 1/2, R = 2/3, F1 = 2*(1/2)*(2/3) / (1/2 + 2/3) = (2/3) / (7/6) = 4/7.
    assert compute_f1("the quick brown fox", "quick brown dog jumps") == pytest.approx(4 / 7, abs=TOL)
    # Counter intersection respects multiplicity: gold [x, x, y], pred [x, y, y] -> common {x:1, y:1} = 2;
    # P = R = 2/3 -> F1 = 2/3.
    assert compute_f1("x x y", "x y y") == pytest.approx(2 / 3, abs=TOL)
    # no-answer handling: F1 = int(gold_toks == pred_toks) when either is empty
    assert compute_f1("", "") == 1
    assert compute_f1("", "Paris") == 0
    assert compute_f1("Paris", "") == 0
    assert compute_f1("the", "") == 1  # normalises to no tokens on both sides
    assert compute_f1("Paris", "London") == 0


def _worked_gold_pred() -> tuple[dict[str, list[str]], dict[str, str]]:
    gold = {
        "q1": ["Denver Broncos", "Broncos"],  # answerable, multiple golds
        "q2": ["the quick brown fox"],  # answerable, partial overlap
        "q3": [],  # unanswerable, correctly abstained
        "q4": [],  # unanswerable, wrongly answered
    }
    pred = {"q1": "the Broncos", "q2": "quick brown dog jumps", "q3": "", "q4": "Paris"}
    return gold, pred


def test_squad_v2_metrics_breakdown() -> None:
    gold, pred = _worked_gold_pred()
    m = squad_v2_metrics(gold, pred)
    # per question (exact, f1): q1 (1, 1) [max over golds: "broncos" == "broncos"],
    # q2 (0, 4/7), q3 (1, 1), q4 (0, 0).
    assert m["total"] == 4
    assert m["exact"] == pytest.approx(100 * 2 / 4, abs=TOL)
    assert m["f1"] == pytest.approx(100 * (1 + 4 / 7 + 1 + 0) / 4, abs=TOL)  # 64.2857...
    assert m["HasAns_total"] == 2 and m["NoAns_total"] == 2
    assert m["HasAns_exact"] == pytest.approx(50.0, abs=TOL)
    assert m["HasAns_f1"] == pytest.approx(100 * (1 + 4 / 7) / 2, abs=TOL)  # 78.5714...
    assert m["NoAns_exact"] == pytest.approx(50.0, abs=TOL)
    assert m["NoAns_f1"] == pytest.approx(50.0, abs=TOL)
    assert "best_f1" not in m  # only with na_probs


def test_squad_v2_omits_empty_subsets_and_max_over_golds() -> None:
    m = squad_v2_metrics({"a": ["Denver Broncos", "Broncos"]}, {"a": "broncos"})
    assert m == {
        "exact": 100.0,
        "f1": 100.0,
        "total": 1,
        "HasAns_exact": 100.0,
        "HasAns_f1": 100.0,
        "HasAns_total": 1,
    }
    m = squad_v2_metrics({"b": []}, {"b": "something"})
    assert m == {"exact": 0.0, "f1": 0.0, "total": 1, "NoAns_exact": 0.0, "NoAns_f1": 0.0, "NoAns_total": 1}
    # A gold answer that normalises to "" is dropped -> scored against [""], but the question
    # still counts as HasAns (official: has_ans = bool(answers)).
    m = squad_v2_metrics({"c": ["The"]}, {"c": ""})
    assert m["HasAns_exact"] == 100.0 and "NoAns_total" not in m


def test_squad_v2_na_prob_thresh() -> None:
    gold, pred = _worked_gold_pred()
    na_probs = {"q1": 0.1, "q2": 0.6, "q3": 0.9, "q4": 0.7}
    m = squad_v2_metrics(gold, pred, na_probs, na_prob_thresh=0.5)
    # na_prob > 0.5 -> abstain: q2 (HasAns) scores 0, q4 and q3 (NoAns) score 1; q1 keeps (1, 1).
    assert m["exact"] == pytest.approx(75.0, abs=TOL)
    assert m["f1"] == pytest.approx(75.0, abs=TOL)
    assert m["HasAns_f1"] == pytest.approx(50.0, abs=TOL)
    assert m["NoAns_exact"] == pytest.approx(100.0, abs=TOL)
    # default threshold 1.0: nothing exceeds it, same as no na_probs
    m1 = squad_v2_metrics(gold, pred, na_probs)
    m0 = squad_v2_metrics(gold, pred)
    assert all(m1[k] == m0[k] for k in m0)


def test_squad_v2_best_thresh_worked_example() -> None:
    gold, pred = _worked_gold_pred()
    na_probs = {"q1": 0.1, "q2": 0.6, "q3": 0.9, "q4": 0.7}
    m = squad_v2_metrics(gold, pred, na_probs)
    # Start: abstain on all -> score = #NoAns = 2, thresh 0.0. Walk by na_prob: q1, q2, q4, q3.
    # exact: q1 +1 -> 3 (best, thresh 0.1); q2 +0 -> 3 (tie, no move); q4 answered "Paris" -1 -> 2;
    #        q3 answered "" +0 -> 2.  best_exact = 100*3/4 = 75.0 at 0.1.
    # f1:    q1 +1 -> 3 (best, 0.1); q2 +4/7 -> 25/7 (best, 0.6); q4 -1 -> 18/7; q3 +0 -> 18/7.
    #        best_f1 = 100*(25/7)/4 = 2500/28 = 89.2857... at 0.6.
    assert m["best_exact"] == pytest.approx(75.0, abs=TOL)
    assert m["best_exact_thresh"] == 0.1
    assert m["best_f1"] == pytest.approx(2500 / 28, abs=TOL)
    assert m["best_f1_thresh"] == 0.6


def test_squad_v2_best_thresh_starts_from_no_answer_count_and_ties() -> None:
    # h: HasAns, wrong answer (score 0); n: NoAns, answered (-1 when switched to answering).
    gold = {"h": ["yes"], "n": []}
    pred = {"h": "no", "n": "maybe"}
    m = squad_v2_metrics(gold, pred, {"h": 0.2, "n": 0.4})
    # start 1 (one NoAns); h +0 -> 1 (not > 1); n -1 -> 0.  Best stays "abstain on all": 50.0 at 0.0.
    assert (m["best_exact"], m["best_exact_thresh"]) == (50.0, 0.0)
    assert (m["best_f1"], m["best_f1_thresh"]) == (50.0, 0.0)
    # Equal na_probs: the stable sort keeps na_probs' insertion order, which decides the result.
    gold = {"a": ["yes"], "b": []}
    pred = {"a": "yes", "b": "maybe"}
    # a first: 1 -> a +1 -> 2 (best, 0.5) -> b -1 -> 1.  best = 100*2/2 = 100 at 0.5.
    m = squad_v2_metrics(gold, pred, {"a": 0.5, "b": 0.5})
    assert (m["best_exact"], m["best_exact_thresh"]) == (100.0, 0.5)
    # b first: 1 -> b -1 -> 0 -> a +1 -> 1 (not > 1).  best = 100*1/2 = 50 at 0.0.
    m = squad_v2_metrics(gold, pred, {"b": 0.5, "a": 0.5})
    assert (m["best_exact"], m["best_exact_thresh"]) == (50.0, 0.0)


def test_squad_v2_missing_prediction_raises() -> None:
    gold = {f"q{i}": ["x"] for i in range(8)}
    pred = {"q0": "x"}
    with pytest.raises(ValueError, match="7 question") as exc:
        squad_v2_metrics(gold, pred)
    listed = [q for q in gold if f"'{q}'" in str(exc.value)]
    assert listed == ["q1", "q2", "q3", "q4", "q5"]
    with pytest.raises(ValueError, match="na_prob"):
        squad_v2_metrics({"q": ["x"]}, {"q": "x"}, na_probs={})
    with pytest.raises(ValueError):
        squad_v2_metrics({}, {})
    # extra predictions for unknown qids are ignored, as in the official script
    assert squad_v2_metrics({"q": ["x"]}, {"q": "x", "zzz": "y"})["exact"] == 100.0


def test_no_answer_baseline_fifty_fifty() -> None:
    gold = {"h1": ["Paris"], "h2": ["1066"], "n1": [], "n2": []}
    m = no_answer_baseline(gold)
    assert m["exact"] == pytest.approx(50.0, abs=TOL)
    assert m["f1"] == pytest.approx(50.0, abs=TOL)
    assert m["HasAns_exact"] == 0.0 and m["NoAns_exact"] == 100.0
    assert m["total"] == 4


# --------------------------------------------------------------------------------------------------
# SQuAD 1.1 (official evaluate-v1.1.py) on hand-made files


def _squad_file(tmp_path, name: str, version: str, qas: list[dict]) -> list:
    import json

    from alad.data.readers import read_squad

    context = "The Normans were in Normandy in the 10th and 11th centuries."
    doc = {"version": version, "data": [{"title": "Normans", "paragraphs": [{"context": context, "qas": qas}]}]}
    for qa in qas:
        for answer in qa["answers"]:
            answer["answer_start"] = context.index(answer["text"])
    path = tmp_path / name
    path.write_text(json.dumps(doc), encoding="utf-8")
    return read_squad(path)


def test_squad_v1_metrics_on_a_hand_made_v11_file(tmp_path) -> None:
    from alad.tasks.squad import gold_answers

    examples = _squad_file(
        tmp_path,
        "dev-v1.1.json",
        "1.1",
        [
            {"id": "q1", "question": "Where?", "answers": [{"text": "Normandy"}, {"text": "in Normandy"}]},
            {"id": "q2", "question": "When?", "answers": [{"text": "10th and 11th centuries"}]},
            {"id": "q3", "question": "Who?", "answers": [{"text": "The Normans"}]},
        ],
    )
    gold = gold_answers(examples)
    pred = {"q1": "in Normandy", "q2": "the 10th century", "q3": "Normandy"}
    scores = squad_v1_metrics(gold, pred)
    # q1 exact (its second answer); q2 F1: tokens [10th, century] vs [10th, and, 11th, centuries]: P 1/2, R 1/4
    f1_q2 = 2 * 0.5 * 0.25 / 0.75
    assert scores == {"exact": pytest.approx(100 / 3), "f1": pytest.approx(100 * (1 + f1_q2 + 0) / 3), "total": 3}
    assert squad_v1_metrics(gold, {q: answers[0] for q, answers in gold.items()})["exact"] == 100.0
    # the 1.1 script has no special case for empty strings: an empty prediction scores 0 everywhere
    assert squad_v1_metrics({"a": ["the"]}, {"a": ""}) == {"exact": 100.0, "f1": 0.0, "total": 1}
    assert squad_v2_metrics({"a": ["the"]}, {"a": ""})["f1"] == 100.0  # where the 2.0 script differs
    with pytest.raises(ValueError, match="without a prediction"):
        squad_v1_metrics(gold, {"q1": "x"})


def test_squad_v1_metrics_refuse_a_v20_file_with_unanswerable_questions(tmp_path) -> None:
    from alad.tasks.squad import gold_answers

    examples = _squad_file(
        tmp_path,
        "dev-v2.0.json",
        "v2.0",
        [
            {"id": "a", "question": "Where?", "answers": [{"text": "Normandy"}], "is_impossible": False},
            {"id": "b", "question": "Why?", "answers": [], "is_impossible": True},
        ],
    )
    gold = gold_answers(examples)
    v2 = squad_v2_metrics(gold, {"a": "Normandy", "b": ""})
    assert (v2["exact"], v2["HasAns_exact"], v2["NoAns_exact"]) == (100.0, 100.0, 100.0)
    with pytest.raises(ValueError, match=r"1 question\(s\) without a gold answer, e.g. \['b'\].*no 'no answer' option"):
        squad_v1_metrics(gold, {"a": "Normandy", "b": "Normandy"})


def test_cross_fitted_threshold_is_chosen_on_the_other_articles() -> None:
    # Articles A, B, C, D dealt in sorted order into folds 0 (A, C) and 1 (B, D).
    gold = {"a1": ["x"], "a2": [], "b1": ["x"], "b2": [], "c1": ["x"], "d1": []}
    pred = {"a1": "x", "a2": "y", "b1": "x", "b2": "y", "c1": "x", "d1": "z"}
    na = {"a1": -1.0, "a2": 2.0, "b1": 0.5, "b2": 3.0, "c1": 1.0, "d1": -2.0}
    groups = {q: q[0].upper() for q in gold}
    m = cross_fitted_v2_metrics(gold, pred, na, groups)
    # Fold 1's questions (b1, b2, d1) choose fold 0's threshold: start 2 (two NoAns); d1 -1 -> 1; b1 +1 -> 2
    # (not > 2); b2 -1 -> 1: abstaining on everything is best (None, not the official 0.0), so a1, a2, c1
    # abstain: 0, 1, 0. Fold 0's questions choose fold 1's: start 1; a1 +1 -> 2 (at -1); c1 +1 -> 3 (at 1);
    # a2 -1 -> 2: threshold 1, so b1 answers (1), b2 abstains (1), d1 answers "z" (0).
    assert m["cv_thresholds"] == [None, 1.0] and m["cv_folds"] == 2
    assert m["cv_f1"] == pytest.approx(50.0, abs=TOL) and m["cv_exact"] == pytest.approx(50.0, abs=TOL)
    assert m["cv_HasAns_f1"] == pytest.approx(100 / 3, abs=TOL)
    assert m["cv_NoAns_f1"] == pytest.approx(200 / 3, abs=TOL)
    # The threshold chosen on all six questions themselves (start 3; d1 -> 2, a1 -> 3, b1 -> 4, c1 -> 5 at 1,
    # a2 -> 4, b2 -> 3) scores 5 of 6: the optimistic figure this estimate avoids.
    assert squad_v2_metrics(gold, pred, na)["best_f1"] == pytest.approx(500 / 6, abs=TOL)


def test_cross_fitted_threshold_needs_as_many_articles_as_folds_and_every_article() -> None:
    gold, pred, na = {"q1": ["x"], "q2": []}, {"q1": "x", "q2": "y"}, {"q1": 0.0, "q2": 1.0}
    assert cross_fitted_v2_metrics(gold, pred, na, {"q1": "A", "q2": "A"}) == {}
    assert cross_fitted_v2_metrics(gold, pred, na, {"q1": "A", "q2": "B"}, folds=2)["cv_folds"] == 2
    with pytest.raises(ValueError, match="1 question\\(s\\) without a group"):
        cross_fitted_v2_metrics(gold, pred, na, {"q1": "A"})
    with pytest.raises(ValueError, match="folds must be at least 2"):
        cross_fitted_v2_metrics(gold, pred, na, {"q1": "A", "q2": "B"}, folds=1)


def test_answerability_auc_counts_unanswerable_questions_ranked_above_answerable_ones() -> None:
    # unanswerable q2 (2.0), q4 (0.5); answerable q1 (-1.0), q3 (2.0, tied with q2)
    gold = {"q1": ["a"], "q2": [], "q3": ["b"], "q4": []}
    na = {"q1": -1.0, "q2": 2.0, "q3": 2.0, "q4": 0.5}
    # pairs (unanswerable, answerable): q2>q1 1, q2=q3 1/2, q4>q1 1, q4<q3 0 -> 2.5 of 4
    assert answerability_auc(gold, na) == pytest.approx(0.625)
    assert answerability_auc(gold, {"q1": 0, "q2": 1, "q3": 0, "q4": 1}) == 1.0
    assert answerability_auc(gold, {"q1": 1, "q2": 0, "q3": 1, "q4": 0}) == 0.0
    assert answerability_auc(gold, dict.fromkeys(gold, 0.0)) == 0.5  # one score for all: no ranking
    assert answerability_auc({"q1": ["a"], "q3": ["b"]}, na) is None
    with pytest.raises(ValueError, match="1 question\\(s\\) without an na_prob"):
        answerability_auc(gold, {"q1": 0.0, "q2": 1.0, "q3": 0.0})
    rng = random.Random(0)  # against the pairwise count itself, with many ties
    gold = {f"q{i}": ([] if rng.random() < 0.5 else ["x"]) for i in range(300)}
    na = {q: float(rng.randint(0, 20)) for q in gold}
    pairs = [(na[u] > na[a]) + 0.5 * (na[u] == na[a]) for u in gold if not gold[u] for a in gold if gold[a]]
    assert answerability_auc(gold, na) == pytest.approx(sum(pairs) / len(pairs))
