"""Tests for alad.tasks: word labels on first sub-tokens, windows of whole words, decoding, label sets."""

from __future__ import annotations

import logging

import pytest

from alad.data.readers import TaggedSentence
from alad.tasks import (
    IGNORE_INDEX,
    check_labels,
    collate_token_features,
    decode_token_predictions,
    label_vocabulary,
    prepare_token_features,
    words_from_text,
)

# --------------------------------------------------------------------------------------------------
# first sub-token labelling


def test_wordpiece_label_on_first_sub_token_only(bert):
    tokenizer = bert.tokenizer
    words = ["playing", "footballs", "cats", "walked"]
    assert tokenizer.tokenize("playing") == ["play", "##ing"]
    assert tokenizer.tokenize("footballs") == ["football", "##s"]
    sentence = TaggedSentence(words, ["A", "B", "C", "A"])
    [feature] = prepare_token_features([sentence], tokenizer, {"A": 0, "B": 1, "C": 2}, max_length=64)

    tokens = tokenizer.convert_ids_to_tokens(feature.input_ids)
    assert tokens == ["[CLS]", "play", "##ing", "football", "##s", "cats", "walked", "[SEP]"]
    assert feature.first_token_of_word == [1, 3, 5, 6]
    assert feature.labels == [IGNORE_INDEX, 0, IGNORE_INDEX, 1, IGNORE_INDEX, 2, 0, IGNORE_INDEX]
    assert (feature.sentence_index, feature.word_start, feature.num_words) == (0, 0, 4)


def test_bpe_label_on_first_sub_token_only(roberta):
    tokenizer = roberta.tokenizer
    words = ["The", "quick", "fox", "footballs"]
    sentence = TaggedSentence(words, ["X", "Y", "Z", "Y"])
    [feature] = prepare_token_features([sentence], tokenizer, {"X": 0, "Y": 1, "Z": 2}, max_length=48)

    tokens = tokenizer.convert_ids_to_tokens(feature.input_ids)
    assert tokens[0] == "<s>" and tokens[-1] == "</s>"
    first = feature.first_token_of_word
    assert len(first) == 4 and all(p > 0 for p in first)
    # every word is spelled by the tokens from its first token up to the next word's first token
    bounds = first + [len(tokens) - 1]
    for i, word in enumerate(words):
        assert "".join(tokens[bounds[i] : bounds[i + 1]]).replace("Ġ", "") == word
    assert len(tokens[first[1] : first[2]]) == 2 and len(tokens[first[3] : -1]) > 1  # "quick", "footballs" split
    expected = [IGNORE_INDEX] * len(tokens)
    for position, label in zip(first, [0, 1, 2, 1], strict=True):
        expected[position] = label
    assert feature.labels == expected


def test_word_without_tokens_is_unlabelled_and_decoded_as_default(bert, caplog):
    sentence = TaggedSentence(["cat", "\u200b", "dog"], ["B-PER", "B-LOC", "O"])
    labels = ["O", "B-LOC", "B-PER"]
    with caplog.at_level(logging.WARNING, logger="alad.tasks"):
        [feature] = prepare_token_features([sentence], bert.tokenizer, {t: i for i, t in enumerate(labels)}, 64)
    assert feature.first_token_of_word == [1, -1, 2]
    assert feature.labels == [IGNORE_INDEX, 2, 0, IGNORE_INDEX]
    assert "1 words produced no token" in caplog.text
    decoded = decode_token_predictions([sentence], [feature], [[1, 2, 1, 1]], labels)
    assert decoded == [["B-PER", "O", "B-LOC"]]
    # without an 'O' label, the default falls back to the first label
    decoded = decode_token_predictions([sentence], [feature], [[0, 1, 0, 0]], ["X", "Y"])
    assert decoded == [["Y", "X", "X"]]


# --------------------------------------------------------------------------------------------------
# windows of whole words


def _long_sentence() -> TaggedSentence:
    text = "the cat sat on the mat playing football with footballs and the walked dogs by the river at night "
    words = (text + "while birds sang in the old tree").split(" ")
    return TaggedSentence(words, [f"T{i}" for i in range(len(words))])


@pytest.mark.parametrize("max_length", [6, 9, 13])
def test_long_sentence_split_into_windows_of_whole_words(bert, max_length):
    sentence = _long_sentence()
    n = len(sentence.tokens)
    label_to_id = {f"T{i}": i for i in range(n)}
    short = TaggedSentence(["a", "cat"], ["T1", "T2"])
    features = prepare_token_features([sentence, short], bert.tokenizer, label_to_id, max_length)

    long_features = [f for f in features if f.sentence_index == 0]
    assert len(long_features) > 1
    assert [f.sentence_index for f in features[-1:]] == [1] and features[-1].num_words == 2
    # windows are consecutive, non-overlapping and cover every word exactly once
    position = 0
    for feature in long_features:
        assert feature.word_start == position and feature.num_words >= 1
        assert len(feature.input_ids) <= max_length
        position += feature.num_words
        # every window is the tokenisation of its whole words, with specials at the ends
        words = sentence.tokens[feature.word_start : feature.word_start + feature.num_words]
        assert feature.input_ids == bert.tokenizer(" ".join(words))["input_ids"]
    assert position == n
    labelled = [label for f in long_features for label in f.labels if label != IGNORE_INDEX]
    assert labelled == list(range(n))  # every word labelled once, in order, with its own tag


def test_decode_joins_windows_in_order(bert):
    sentence = _long_sentence()
    labels = [f"T{i}" for i in range(len(sentence.tokens))] + ["O"]
    label_to_id = {label: i for i, label in enumerate(labels)}
    features = prepare_token_features([sentence], bert.tokenizer, label_to_id, max_length=7)
    assert len(features) >= 4
    # predict each token's gold label (ignored positions get 'O'): decoding must give the sentence back
    predicted = [[label if label != IGNORE_INDEX else label_to_id["O"] for label in f.labels] for f in features]
    assert decode_token_predictions([sentence], features, predicted, labels) == [sentence.tags]
    # a constant wrong prediction in one window only changes that window's words
    second = features[1]
    predicted[1] = [label_to_id["T0"]] * len(second.input_ids)
    decoded = decode_token_predictions([sentence], features, predicted, labels)[0]
    changed = [i for i, (a, b) in enumerate(zip(decoded, sentence.tags, strict=True)) if a != b]
    window = range(second.word_start, second.word_start + second.num_words)
    assert changed == [i for i in window if i != 0]


def test_single_word_longer_than_the_limit_raises(bert):
    sentence = TaggedSentence(["cat", "footballs"], ["O", "O"])
    with pytest.raises(ValueError, match="single word 'footballs'.*longer than the model's 3 tokens"):
        prepare_token_features([sentence], bert.tokenizer, {"O": 0}, max_length=3)


def test_empty_sentence_gives_no_feature(bert):
    features = prepare_token_features(
        [TaggedSentence([], []), TaggedSentence(["cat"], ["O"])], bert.tokenizer, {"O": 0}, 8
    )
    assert [f.sentence_index for f in features] == [1]


def test_collate_pads_ids_mask_and_labels(bert):
    sentences = [TaggedSentence(["playing", "cats"], ["A", "B"]), TaggedSentence(["dog"], ["B"])]
    features = prepare_token_features(sentences, bert.tokenizer, {"A": 0, "B": 1}, 64)
    batch = collate_token_features(features, pad_token_id=0)
    assert batch["input_ids"].shape == (2, 5)
    assert batch["input_ids"][1].tolist() == features[1].input_ids + [0, 0]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert batch["labels"].tolist() == [
        [IGNORE_INDEX, 0, IGNORE_INDEX, 1, IGNORE_INDEX],
        [IGNORE_INDEX, 1, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX],
    ]


# --------------------------------------------------------------------------------------------------
# label sets and raw text


def test_label_vocabulary_puts_o_first():
    sentences = [TaggedSentence(["a", "b"], ["I-PER", "O"]), TaggedSentence(["c", "d"], ["B-LOC", "B-PER"])]
    assert label_vocabulary(sentences) == ["O", "B-LOC", "B-PER", "I-PER"]
    assert label_vocabulary([TaggedSentence(["a", "b"], ["VERB", "ADJ"])]) == ["ADJ", "VERB"]


def test_check_labels_names_unknown_labels():
    sentences = [TaggedSentence(["a", "b", "c"], ["O", "B-MISC", "X-NEW"])]
    check_labels(sentences, ["O", "B-MISC", "X-NEW", "B-PER"], "data")  # all known: no error
    with pytest.raises(ValueError, match=r"the dev data contains labels .* \['B-MISC', 'X-NEW'\]") as err:
        check_labels(sentences, ["O", "B-PER"], "the dev data")
    assert "'O'" not in str(err.value).split("(head labels")[0]


def test_words_from_text():
    assert words_from_text("  Angela  Merkel\tvisited Paris . ") == ["Angela", "Merkel", "visited", "Paris", "."]
    for empty in ("", "   \n"):
        with pytest.raises(ValueError, match="empty"):
            words_from_text(empty)
