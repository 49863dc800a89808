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
from torch.nn import functional as F
from transformers import PreTrainedTokenizerBase

from alad.data.readers import TaggedSentence
from alad.evaluation.metrics import ner_metrics, pos_metrics
from alad.tasks.base import IGNORE_INDEX, TASKS, Task, batched_logits, pad_teacher_signals, register_task

logger = logging.getLogger(__name__)


@dataclass
class TokenFeature:
    """One model input: a window of words of one sentence, with labels on first sub-tokens."""

    sentence_index: int
    word_start: int  # index of the window's first word in the sentence
    num_words: int
    input_ids: list[int]
    labels: list[int]
    first_token_of_word: list[int]  # token position of each word's first sub-token, -1 if none
    soft: torch.Tensor | None = None  # [T, L] teacher logits on first sub-tokens (distillation), else None
    align_target: torch.Tensor | None = None  # [T, d_t] teacher states on the tokens (auxiliary alignment loss)
    align_mask: torch.Tensor | None = None  # [T] bool: tokens that have a teacher state


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
    unknown = sorted({tag for s in sentences if s.tags is not None for tag in s.tags} - known)
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
                if position < 0:
                    unlabelled += 1
                elif sentence.tags is not None:  # unlabelled sentences (distillation) carry no gold tag
                    labels[position] = label_to_id[sentence.tags[start + offset]]
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
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    batch.update(pad_teacher_signals(features, "soft", "soft_targets", "soft_mask", width))
    batch.update(pad_teacher_signals(features, "align_target", "align_targets", "align_mask", width))
    return batch


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


class TaggingTask(Task):
    """Token tagging (POS, NER): one label per word on its first sub-token; word-level distillation.

    Distillation works across tokenizers because the teacher's soft targets are kept per word (its
    logits at the word's first sub-token) and placed on the student's first sub-token of that word.
    """

    has_labels = True
    supports_distillation = True

    def __init__(self, name: str, main_metric: str, columns: tuple[str, ...], metrics_fn) -> None:
        self.name, self.main_metric, self.columns = name, main_metric, columns
        self._metrics = metrics_fn

    def label_set(self, train_items, teacher) -> tuple[str, ...]:
        return tuple(teacher.config.labels) if teacher is not None else tuple(label_vocabulary(train_items))

    def check_data(self, items, labels, what) -> None:
        if items and not isinstance(items[0], TaggedSentence):
            raise ValueError(
                f"{what} is not tagged sentences (got {type(items[0]).__name__}): task {self.name} needs CoNLL or "
                "CoNLL-U data; use --task qa for SQuAD"
            )
        check_labels(items, labels, what)

    def features(self, model, items, config, labelled: bool = True) -> list[TokenFeature]:
        label_to_id = {label: i for i, label in enumerate(model.config.labels)}
        sentences = items if labelled else self.strip_labels(items)
        return prepare_token_features(sentences, model.tokenizer, label_to_id, model.max_length)

    def collate(self, model, features) -> dict[str, torch.Tensor]:
        return collate_token_features(features, model.tokenizer.pad_token_id or 0)

    def loss(self, logits, batch) -> torch.Tensor:
        labels = batch["labels"].reshape(-1)
        if not (labels != IGNORE_INDEX).any():  # a batch of unlabelled sentences (distillation only)
            return logits.sum() * 0.0
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels, ignore_index=IGNORE_INDEX)

    def soft_targets(self, teacher, items, config=None, show_progress: bool = False) -> list[torch.Tensor]:
        plain = self.strip_labels(items)
        features = self.features(teacher, plain, None, labelled=False)
        logits = batched_logits(teacher, self, features, show_progress=show_progress)
        out = [torch.full((len(s.tokens), logits[0].shape[-1]), float("nan")) for s in plain]
        for feature, values in zip(features, logits, strict=True):
            for offset, position in enumerate(feature.first_token_of_word):
                if position >= 0:
                    out[feature.sentence_index][feature.word_start + offset] = values[position]
        return out

    def attach_soft_targets(self, features, soft) -> None:
        for feature in features:
            words = soft[feature.sentence_index]
            target = torch.full((len(feature.input_ids), words.shape[-1]), float("nan"))
            for offset, position in enumerate(feature.first_token_of_word):
                if position >= 0:
                    target[position] = words[feature.word_start + offset]
            feature.soft = target

    def distillation_loss(self, logits, batch, temperature: float) -> torch.Tensor:
        mask = batch["soft_mask"]
        if not mask.any():
            return logits.sum() * 0.0
        student = F.log_softmax(logits[mask] / temperature, dim=-1)
        teacher = F.log_softmax(batch["soft_targets"][mask] / temperature, dim=-1)
        kl = F.kl_div(student, teacher, log_target=True, reduction="batchmean")
        return kl * temperature**2

    def evaluate(self, model, items, config, show_progress: bool = False) -> dict:
        self.check_data(items, model.config.labels, "the evaluation data")
        predicted = predict_tags(model, items, show_progress)
        return self._metrics([list(s.tags) for s in items], predicted)

    def headline(self, metrics) -> dict[str, float]:
        return {column: 100 * metrics[column] for column in self.columns}

    def format_details(self, metrics) -> str:
        from alad.evaluation.metrics import format_per_type_table

        return "\n" + format_per_type_table(metrics)

    def alignment_texts(self, items) -> list[str]:
        return [" ".join(s.tokens) for s in items]

    def feature_texts(self, items, features) -> list[str]:
        return [" ".join(items[f.sentence_index].tokens[f.word_start : f.word_start + f.num_words]) for f in features]

    def strip_labels(self, items) -> list[TaggedSentence]:
        return [TaggedSentence(list(s.tokens), None) for s in items]


def predict_tags(model, sentences: Sequence, show_progress: bool = False) -> list[list[str]]:
    """Word-level tags for tagged or untagged sentences (tags of the input are ignored)."""
    plain = [TaggedSentence(list(s.tokens), None) for s in sentences]
    label_to_id = {label: i for i, label in enumerate(model.config.labels)}
    features = prepare_token_features(plain, model.tokenizer, label_to_id, model.max_length)
    logits = batched_logits(model, TASKS[model.config.task], features, show_progress=show_progress)
    return decode_token_predictions(plain, features, [x.argmax(-1).tolist() for x in logits], model.config.labels)


register_task(TaggingTask("pos", "accuracy", ("accuracy", "macro_f1"), pos_metrics))
register_task(TaggingTask("ner", "micro_f1", ("micro_f1", "macro_f1"), ner_metrics))
