"""Token-level tasks (POS, NER): words to sub-token features and back.

A sentence's words are joined with single spaces and tokenised once with character offsets, so the
same code serves WordPiece, BPE and SentencePiece tokenizers. A word's label sits on its first
sub-token; the other sub-tokens are ignored (-100) by the loss and by the decoder. A sentence too
long for the model is split into consecutive windows of whole words, each within the limit, so no
word is ever cut off; predictions of the windows are joined back in order.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from alad.readers import TaggedSentence

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
TASK_FAMILIES = {"pos": "token", "ner": "token", "qa": "qa"}


@dataclass
class TokenFeature:
    """One model input: a window of words of one sentence, with labels on first sub-tokens."""

    sentence_index: int
    word_start: int  # index of the window's first word in the sentence
    num_words: int
    input_ids: list[int]
    labels: list[int]
    first_token_of_word: list[int]  # token position of each word's first sub-token, -1 if none


def label_vocabulary(sentences: Sequence[TaggedSentence]) -> list[str]:
    """Sorted tag set, with 'O' first when present so id 0 is the outside tag for NER."""
    tags = sorted({tag for sentence in sentences for tag in sentence.tags})
    if "O" in tags:
        tags.remove("O")
        tags.insert(0, "O")
    return tags


def check_labels(sentences: Sequence[TaggedSentence], labels: Sequence[str], what: str) -> None:
    """Fail on tags the head cannot predict, naming them and where they come from."""
    known = set(labels)
    unknown = sorted({tag for s in sentences for tag in s.tags} - known)
    if unknown:
        raise ValueError(
            f"{what} contains labels the model's head does not know: {unknown[:10]} (head labels: "
            f"{sorted(known)[:20]}); evaluate on data with the same tag set (e.g. UPOS vs XPOS) or retrain"
        )


def _word_spans(words: Sequence[str]) -> tuple[str, list[tuple[int, int]]]:
    spans, position = [], 0
    for word in words:
        spans.append((position, position + len(word)))
        position += len(word) + 1
    return " ".join(words), spans


def _tokenize_words(tokenizer: PreTrainedTokenizerBase, words: Sequence[str]) -> tuple[list[int], list[int], int]:
    """Token ids (with specials), the first token of each word (-1 if none), and the special count."""
    text, spans = _word_spans(words)
    encoded = tokenizer(
        text, add_special_tokens=True, return_offsets_mapping=True, return_special_tokens_mask=True, verbose=False
    )
    first = [-1] * len(words)
    word = 0
    for position, ((start, end), special) in enumerate(
        zip(encoded["offset_mapping"], encoded["special_tokens_mask"], strict=True)
    ):
        if special or end <= start:
            continue
        while word < len(words) and spans[word][1] <= start:
            word += 1
        if word < len(words) and start < spans[word][1] and first[word] == -1:
            first[word] = position
    return list(encoded["input_ids"]), first, int(sum(encoded["special_tokens_mask"]))


def _windows(tokenizer, words: Sequence[str], max_length: int) -> list[tuple[int, int]]:
    """Consecutive word ranges whose tokenisation fits ``max_length``, found by halving."""
    ids, _, _ = _tokenize_words(tokenizer, words)
    if len(ids) <= max_length:
        return [(0, len(words))]
    if len(words) == 1:
        raise ValueError(f"the single word {words[0][:40]!r}... is longer than the model's {max_length} tokens")
    middle = len(words) // 2
    left = _windows(tokenizer, words[:middle], max_length)
    right = _windows(tokenizer, words[middle:], max_length)
    return left + [(s + middle, e + middle) for s, e in right]


def prepare_token_features(
    sentences: Sequence[TaggedSentence],
    tokenizer: PreTrainedTokenizerBase,
    label_to_id: dict[str, int],
    max_length: int,
) -> list[TokenFeature]:
    """Features for every sentence; long sentences become several windows of whole words."""
    features = []
    unlabelled = 0
    for index, sentence in enumerate(sentences):
        if not sentence.tokens:
            continue
        for start, end in _windows(tokenizer, sentence.tokens, max_length):
            words = sentence.tokens[start:end]
            ids, first, _ = _tokenize_words(tokenizer, words)
            labels = [IGNORE_INDEX] * len(ids)
            for offset, position in enumerate(first):
                if position >= 0:
                    labels[position] = label_to_id[sentence.tags[start + offset]]
                else:
                    unlabelled += 1
            features.append(TokenFeature(index, start, end - start, ids, labels, first))
    if unlabelled:
        logger.warning(
            "%d words produced no token (e.g. characters the tokenizer drops); they are predicted 'O'", unlabelled
        )
    return features


def collate_token_features(features: Sequence[TokenFeature], pad_token_id: int) -> dict[str, torch.Tensor]:
    width = max(len(f.input_ids) for f in features)
    ids = torch.full((len(features), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(features), width), dtype=torch.long)
    labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
    for row, feature in enumerate(features):
        n = len(feature.input_ids)
        ids[row, :n] = torch.tensor(feature.input_ids)
        mask[row, :n] = 1
        labels[row, :n] = torch.tensor(feature.labels)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def decode_token_predictions(
    sentences: Sequence[TaggedSentence],
    features: Sequence[TokenFeature],
    predicted_ids: Sequence[Sequence[int]],
    labels: Sequence[str],
    default: str = "O",
) -> list[list[str]]:
    """Word-level tags per sentence from per-token predicted ids of every feature."""
    out = [[default if default in labels else labels[0]] * len(s.tokens) for s in sentences]
    for feature, predicted in zip(features, predicted_ids, strict=True):
        for offset, position in enumerate(feature.first_token_of_word):
            if position >= 0:
                out[feature.sentence_index][feature.word_start + offset] = labels[int(predicted[position])]
    return out


def words_from_text(text: str) -> list[str]:
    """Whitespace words of a raw sentence, for ``alad predict``; empty text is an error."""
    words = text.split()
    if not words:
        raise ValueError("the text to tag is empty; pass a sentence such as 'Angela Merkel visited Paris .'")
    return words
