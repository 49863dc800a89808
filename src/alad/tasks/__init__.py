"""Tasks: one :class:`Task` object per task family, found by name with :func:`get_task`.

``pos`` and ``ner`` are :class:`~alad.tasks.tagging.TaggingTask` objects, ``qa`` a
:class:`~alad.tasks.question_answering.QATask`. The token-feature helpers of the tagging module are
re-exported here, where they always lived.
"""

from alad.tasks import question_answering as _question_answering  # noqa: F401  (registers qa)
from alad.tasks.base import TASKS, Task, batched_logits, get_task, register_task
from alad.tasks.tagging import (
    IGNORE_INDEX,
    TaggingTask,
    TokenFeature,
    check_labels,
    collate_token_features,
    decode_token_predictions,
    label_vocabulary,
    predict_tags,
    prepare_token_features,
    words_from_text,
)

__all__ = [
    "IGNORE_INDEX",
    "TASKS",
    "TaggingTask",
    "Task",
    "TokenFeature",
    "batched_logits",
    "check_labels",
    "collate_token_features",
    "decode_token_predictions",
    "get_task",
    "label_vocabulary",
    "predict_tags",
    "prepare_token_features",
    "register_task",
    "words_from_text",
]
