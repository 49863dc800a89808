"""Extractive QA (SQuAD 1.1/2.0) as a :class:`~alad.tasks.base.Task`: a start/end head on every token.

The data pipeline (windows with a document stride, span decoding, null answers, article splits)
lives in :mod:`alad.tasks.squad`; this class plugs it into fine-tuning, evaluation and the recipe.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from alad.data.readers import QAExample, question_context_pairs
from alad.evaluation.metrics import (
    answerability_auc,
    cross_fitted_v2_metrics,
    no_answer_baseline,
    squad_v1_metrics,
    squad_v2_metrics,
)
from alad.tasks.base import IGNORE_INDEX, Task, batched_logits, register_task

SQUAD_V1_EVAL = "squad_v1_eval"  # the extra evaluation set and its key in metrics.json
V2_SCORING = (
    "official SQuAD 2.0 (EM/F1, HasAns/NoAns at null threshold 0; best threshold; threshold chosen on the other "
    "half of the articles, cv_), beside always-no-answer"
)
V1_SCORING = "official SQuAD 1.1 (EM/F1 of the best non-null span; no 'no answer' option)"
_SET_NAMES = {
    "evaluation": "the evaluation split",
    SQUAD_V1_EVAL: "the SQuAD 1.1 evaluation set (dev articles not in SQuAD 2.0 dev)",
}


class QATask(Task):
    name = "qa"
    main_metric = "f1"
    columns = ("f1", "exact", "HasAns_f1", "NoAns_f1", "best_f1", "cv_f1", "cv_HasAns_f1", "noans_auc")
    has_labels = False
    supports_distillation = True

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
        features = prepare_qa_features(items, model.tokenizer, max_length=max_length, doc_stride=config.doc_stride)
        if not labelled:  # distillation only: no span label, not even "no answer"
            for feature in features:
                feature.start_position = feature.end_position = IGNORE_INDEX
        return features

    def collate(self, model, features) -> dict[str, torch.Tensor]:
        from alad.tasks.squad import collate_qa

        return collate_qa(features, model.tokenizer.pad_token_id or 0)

    def loss(self, logits, batch) -> torch.Tensor:
        start, end = logits[..., 0], logits[..., 1]
        masked = batch["attention_mask"] == 0
        start, end = start.masked_fill(masked, -1e4), end.masked_fill(masked, -1e4)
        if not (batch["start_positions"] != IGNORE_INDEX).any():  # a batch of unlabelled windows (distillation)
            return logits.sum() * 0.0
        return (F.cross_entropy(start, batch["start_positions"]) + F.cross_entropy(end, batch["end_positions"])) / 2

    def soft_target_settings(self, config) -> str:
        return f"len{config.max_length}-stride{config.doc_stride}"

    def soft_targets(self, teacher, items, config=None, show_progress: bool = False) -> list[torch.Tensor]:
        """The teacher's start/end logits per context character, on windows of ``config``'s length and stride."""
        from alad.tasks.squad import soft_span_targets

        plain = self.strip_labels(items)
        features = self.features(teacher, plain, config, labelled=False)
        return soft_span_targets(plain, features, batched_logits(teacher, self, features, show_progress=show_progress))

    def attach_soft_targets(self, features, soft) -> None:
        from alad.tasks.squad import attach_soft_span_targets

        attach_soft_span_targets(features, soft)

    def distillation_loss(self, logits, batch, temperature: float) -> torch.Tensor:
        """T^2 * KL(teacher_T || student_T) of the start and of the end distribution of each window, over
        the tokens that carry a teacher logit (the no-answer position and tokens at its token boundaries)."""
        mask = batch["soft_mask"] & (batch["attention_mask"] == 1).unsqueeze(-1)
        logits = logits.float()
        total, count = logits.sum() * 0.0, 0
        for column in (0, 1):
            keep = mask[..., column]
            rows = keep.sum(dim=1) > 1  # a distribution over one position teaches nothing
            if not rows.any():
                continue
            student = F.log_softmax((logits[..., column] / temperature).masked_fill(~keep, -math.inf), dim=1)
            soft = batch["soft_targets"][..., column] / temperature
            teacher = F.log_softmax(soft.masked_fill(~keep, -math.inf), dim=1)
            kl = (teacher.exp() * (teacher - student)).masked_fill(~keep, 0.0).sum(dim=1)
            total, count = total + kl[rows].sum(), count + int(rows.sum())
        return total / max(count, 1) * temperature**2

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
        from alad.tasks.squad import apply_null_threshold, article_of

        predictions, na_scores = self.predict(model, items, config, show_progress)
        gold = {ex.id: [text for text, _ in ex.answers] if not ex.is_impossible else [] for ex in items}
        at_zero = squad_v2_metrics(gold, apply_null_threshold(predictions, na_scores, 0.0))
        best = squad_v2_metrics(gold, predictions, na_probs=na_scores)
        articles = {ex.id: article_of(ex) for ex in items}
        return {
            **at_zero,
            **{k: v for k, v in best.items() if k.startswith("best")},
            **cross_fitted_v2_metrics(gold, predictions, na_scores, articles),
            "noans_auc": answerability_auc(gold, na_scores),
            "no_answer_baseline": no_answer_baseline(gold),
        }

    def headline(self, metrics) -> dict[str, float]:
        return {
            "exact": metrics["exact"],
            "f1": metrics["f1"],
            "HasAns_f1": metrics.get("HasAns_f1", float("nan")),
            "NoAns_f1": metrics.get("NoAns_f1", float("nan")),
            "best_f1": metrics.get("best_f1", metrics["f1"]),
            "cv_f1": metrics.get("cv_f1", float("nan")),
            "cv_HasAns_f1": metrics.get("cv_HasAns_f1", float("nan")),
            "noans_auc": _or_nan(metrics.get("noans_auc")),
        }

    def format_details(self, metrics) -> str:
        base = metrics["no_answer_baseline"]
        return (
            f"HasAns F1 {metrics.get('HasAns_f1', float('nan')):.2f}, NoAns F1 "
            f"{metrics.get('NoAns_f1', float('nan')):.2f}; always-no-answer baseline: EM {base['exact']:.2f}, "
            f"F1 {base['f1']:.2f}; best threshold F1 {metrics.get('best_f1', float('nan')):.2f}; threshold chosen on "
            f"the other half of the articles: F1 {metrics.get('cv_f1', float('nan')):.2f}, HasAns F1 "
            f"{metrics.get('cv_HasAns_f1', float('nan')):.2f}; no-answer score AUC (unanswerable above answerable) "
            f"{_or_nan(metrics.get('noans_auc')):.3f}"
        )

    def check_source(self, source, split, role) -> None:
        # The rule: the evaluation split of --data is scored with the SQuAD 2.0 script, so it must be a
        # SQuAD 2.0 file, whose questions say whether they are answerable (is_impossible). A SQuAD 1.1
        # file (no is_impossible anywhere) is scored with the 1.1 script instead: --squad-v1-eval.
        if source.format != "squad":
            return
        from alad.data.readers import squad_format

        path = source.split_file(split)
        if squad_format(path) != "2.0":
            raise ValueError(
                f"{path} is a SQuAD 1.1 file (no question has an is_impossible field), but the {role} split of --data "
                "is scored with the official SQuAD 2.0 script, which needs a SQuAD 2.0 file (every question marked "
                "is_impossible true or false); pass SQuAD 2.0 files as --data, and score SQuAD 1.1 dev with "
                "--squad-v1-eval true (the official SQuAD 1.1 script)"
            )

    def split_pool(self, train, evaluation, config):
        """The training pool: the train split, plus SQuAD 1.1 train (``squad_v1_train``, each paragraph
        once), plus whole dev articles moved by seed, plus negatives (``squad_negatives``), in that order."""
        from alad.data.readers import read_squad
        from alad.data.task_data import squad_v1_file
        from alad.tasks.squad import merge_squad_train, pool_summary, split_squad_by_article
        from alad.tasks.squad_negatives import make_negatives

        info = {}
        if config.squad_v1_train:
            path = squad_v1_file(config.squad_v1, "train")
            train, merged = merge_squad_train(train, read_squad(path))
            info["squad_v1_train"] = {"file": str(path), **merged}
        if config.squad_dev_articles_to_train:
            train, evaluation, split_info = split_squad_by_article(
                train, evaluation, config.squad_dev_articles_to_train, config.seed
            )
            info["article_split"] = split_info
        negatives, negatives_info = make_negatives(
            train, config.squad_negatives, config.seed, config.squad_negative_kind
        )
        train = [*train, *negatives]
        info["squad_negatives"] = negatives_info
        info["pool"] = {**pool_summary(train), "negatives_made": len(negatives)}
        return train, evaluation, info

    def training_subset(self, pool, config):
        if config.squad_unanswerable_share is None:
            return super().training_subset(pool, config)
        from alad.tasks.squad import balanced_subset

        indices, info = balanced_subset(pool, config.max_train, config.squad_unanswerable_share, config.seed)
        return indices, {"unanswerable_share": info}

    def evaluation_sets(self, train, evaluation, loaded_eval, config):
        from alad.data.readers import read_squad
        from alad.data.task_data import seeded_subset, squad_v1_file
        from alad.tasks.squad import check_squad_v1_scorable, pool_summary, squad_v1_eval_set

        titles = list(dict.fromkeys(ex.title for ex in evaluation))
        described = {"evaluation": {**pool_summary(evaluation), "titles": titles, "scoring": V2_SCORING}}
        sets = {}
        if config.squad_v1_eval:
            path = squad_v1_file(config.squad_v1, "dev")
            v1_dev = read_squad(path)
            check_squad_v1_scorable(v1_dev, f"the SQuAD 1.1 evaluation file {path}")
            items, v1_info = squad_v1_eval_set(v1_dev, loaded_eval)
            if not items:
                raise ValueError(
                    f"every article of {path} is also in the SQuAD 2.0 evaluation split of --data: no SQuAD 1.1 "
                    "evaluation article is left; set --squad-v1-eval false"
                )
            sets[SQUAD_V1_EVAL] = seeded_subset(items, config.max_eval, config.seed + 2)
            described[SQUAD_V1_EVAL] = {
                "file": str(path),
                **v1_info,
                "evaluated": len(sets[SQUAD_V1_EVAL]),
                "scoring": V1_SCORING,
            }
        return sets, {"evaluation_sets": described}

    def check_disjoint(self, train, eval_sets):
        from alad.tasks.squad import check_disjoint_by_article

        check_disjoint_by_article(train, {_SET_NAMES.get(k, k): v for k, v in eval_sets.items()})
        return {"disjoint_by_article": "checked", "disjoint_checked": list(eval_sets)}

    def check_inputs(self, model, items, config) -> None:
        from alad.tasks.squad import check_question_room

        limit = model.max_length
        below = limit if limit < config.max_length else None
        check_question_room(items, model.tokenizer, min(config.max_length, limit), config.doc_stride, model_limit=below)

    def evaluate_extra(self, name, model, items, config, show_progress: bool = False) -> dict:
        """SQuAD 1.1 scoring: every question gets its best non-null span, never "no answer"."""
        if name != SQUAD_V1_EVAL:
            return super().evaluate_extra(name, model, items, config, show_progress)
        from alad.tasks.squad import gold_answers

        predictions, _ = self.predict(model, items, config, show_progress)  # the span, whatever the null scores
        return {
            **squad_v1_metrics(gold_answers(items), predictions),
            "articles": len({ex.title for ex in items}),
            "scoring": V1_SCORING,
        }

    def alignment_texts(self, items) -> list[tuple[str, str]]:
        # QA pairs are aligned as the QA model encodes them, question and context in one input: a
        # context encoded alone lacks the question-conditioned states the teacher's span head reads.
        return question_context_pairs(items)

    def strip_labels(self, items) -> list[QAExample]:
        import dataclasses

        return [dataclasses.replace(ex, answers=[], is_impossible=True) for ex in items]


register_task(QATask())


def _or_nan(value: float | None) -> float:
    return float("nan") if value is None else value
