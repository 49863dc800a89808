"""Extractive QA (SQuAD 1.1/2.0) as a :class:`~alad.tasks.base.Task`: a start/end head on every token.

The data pipeline (windows with a document stride, span decoding, null answers, article splits)
lives in :mod:`alad.tasks.squad`; this class plugs it into fine-tuning, evaluation and the recipe.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from alad.data.readers import QAExample, question_context_pairs
from alad.evaluation.metrics import no_answer_baseline, squad_v2_metrics
from alad.tasks.base import Task, batched_logits, register_task


class QATask(Task):
    name = "qa"
    main_metric = "f1"
    columns = ("f1", "exact", "HasAns_f1", "NoAns_f1", "best_f1")
    has_labels = False

    def head_outputs(self, labels) -> int:
        return 2  # start and end logits

    def label_set(self, train_items, teacher) -> tuple[str, ...]:
        return ()

    def check_data(self, items, labels, what) -> None:
        if items and not isinstance(items[0], QAExample):
            raise ValueError(
                f"{what} is not SQuAD questions (got {type(items[0]).__name__}): task qa needs --data squad[:PATH]"
            )

    def features(self, model, items, config, labelled: bool = True) -> list:
        from alad.tasks.squad import prepare_qa_features

        max_length = min(config.max_length, model.max_length)
        return prepare_qa_features(items, model.tokenizer, max_length=max_length, doc_stride=config.doc_stride)

    def collate(self, model, features) -> dict[str, torch.Tensor]:
        from alad.tasks.squad import collate_qa

        return collate_qa(features, model.tokenizer.pad_token_id or 0)

    def loss(self, logits, batch) -> torch.Tensor:
        start, end = logits[..., 0], logits[..., 1]
        masked = batch["attention_mask"] == 0
        start, end = start.masked_fill(masked, -1e4), end.masked_fill(masked, -1e4)
        return (F.cross_entropy(start, batch["start_positions"]) + F.cross_entropy(end, batch["end_positions"])) / 2

    def predict(self, model, examples, config, show_progress: bool = False):
        """Best span text and no-answer score (null minus best span; > 0 favours no answer) per question."""
        from alad.tasks.squad import decode_qa

        features = self.features(model, examples, config)
        logits = batched_logits(model, self, features, show_progress=show_progress)
        return decode_qa(
            examples,
            features,
            [x[:, 0] for x in logits],
            [x[:, 1] for x in logits],
            max_answer_length=config.max_answer_length,
        )

    def evaluate(self, model, items, config, show_progress: bool = False) -> dict:
        from alad.tasks.squad import apply_null_threshold

        predictions, na_scores = self.predict(model, items, config, show_progress)
        gold = {ex.id: [text for text, _ in ex.answers] if not ex.is_impossible else [] for ex in items}
        at_zero = squad_v2_metrics(gold, apply_null_threshold(predictions, na_scores, 0.0))
        best = squad_v2_metrics(gold, predictions, na_probs=na_scores)
        return {
            **at_zero,
            **{k: v for k, v in best.items() if k.startswith("best")},
            "no_answer_baseline": no_answer_baseline(gold),
        }

    def headline(self, metrics) -> dict[str, float]:
        return {
            "exact": metrics["exact"],
            "f1": metrics["f1"],
            "HasAns_f1": metrics.get("HasAns_f1", float("nan")),
            "NoAns_f1": metrics.get("NoAns_f1", float("nan")),
            "best_f1": metrics.get("best_f1", metrics["f1"]),
        }

    def format_details(self, metrics) -> str:
        base = metrics["no_answer_baseline"]
        return (
            f"HasAns F1 {metrics.get('HasAns_f1', float('nan')):.2f}, NoAns F1 "
            f"{metrics.get('NoAns_f1', float('nan')):.2f}; always-no-answer baseline: EM {base['exact']:.2f}, "
            f"F1 {base['f1']:.2f}; best threshold F1 {metrics.get('best_f1', float('nan')):.2f}"
        )

    def split_pool(self, train, evaluation, config):
        if not config.squad_dev_articles_to_train:
            return train, evaluation, {}
        from alad.tasks.squad import split_squad_by_article

        train, evaluation, split_info = split_squad_by_article(
            train, evaluation, config.squad_dev_articles_to_train, config.seed
        )
        return train, evaluation, {"article_split": split_info}

    def alignment_texts(self, items) -> list[tuple[str, str]]:
        # QA pairs are aligned as the QA model encodes them, question and context in one input: a
        # context encoded alone lacks the question-conditioned states the teacher's span head reads.
        return question_context_pairs(items)

    def strip_labels(self, items) -> list[QAExample]:
        import dataclasses

        return [dataclasses.replace(ex, answers=[], is_impossible=True) for ex in items]


register_task(QATask())
