"""alad: Alignment Adapters that make compressed transformer encoders accurate again.

A small MLP reads a window of a compressed student's token states and predicts the token states of
a larger teacher (other width, other tokenizer). Typical use::

    from alad import AlignConfig, align, AlignmentAdapter
    summary = align("runs/align", AlignConfig(student="all-MiniLM-L6-v2", teacher="all-mpnet-base-v2"))
    adapter = AlignmentAdapter.from_pretrained("runs/align/w3")
"""

from alad.adapters import AdapterConfig, AlignmentAdapter, window_features
from alad.alignment.cache import EmbeddingCache, TokenEmbeddings, encode_spans
from alad.alignment.pairing import (
    TextPair,
    TokenSpans,
    pair_tokens,
    segment_texts,
    teacher_targets,
    tokenize_with_spans,
)
from alad.alignment.trainer import (
    AlignConfig,
    AlignmentData,
    align,
    alignment_cosine,
    alignment_loss,
    evaluate_adapter,
    format_summary,
)
from alad.compression.layer_dropping import drop_layers
from alad.data.readers import QAExample, TaggedSentence, read_conll2003, read_conllu, read_lines, read_squad, read_texts
from alad.data.sources import conll2003_dir, corpus_path, data_cache_dir, shared_data_dir, squad_v2_dir, ud_ewt_dir
from alad.data.task_data import DataSource
from alad.evaluation.latency import count_parameters, measure_latency, model_latency
from alad.evaluation.metrics import (
    compute_exact,
    compute_f1,
    get_entities,
    ner_metrics,
    no_answer_baseline,
    normalize_answer,
    pos_metrics,
    squad_v2_metrics,
)
from alad.finetuning.trainer import (
    FinetuneConfig,
    evaluate_task_model,
    finetune,
    load_run,
    predict_answers,
    predict_tags,
)
from alad.io.serialization import FORMAT_VERSION, ArtefactError
from alad.models.encoders import Encoder, ModelNotFoundError, load_encoder, resolve_model
from alad.models.task_model import MODES, AladTaskModel, TaskModelConfig, build_task_model
from alad.recipes.runner import load_run_config, run_recipe
from alad.tasks import prepare_token_features
from alad.tasks.squad import (
    QAFeature,
    apply_null_threshold,
    collate_qa,
    decode_qa,
    prepare_qa_features,
    split_squad_by_article,
)

__version__ = "0.1.0"

__all__ = [
    "FORMAT_VERSION",
    "MODES",
    "AdapterConfig",
    "AladTaskModel",
    "AlignConfig",
    "AlignmentAdapter",
    "AlignmentData",
    "ArtefactError",
    "DataSource",
    "EmbeddingCache",
    "Encoder",
    "FinetuneConfig",
    "ModelNotFoundError",
    "QAExample",
    "QAFeature",
    "TaggedSentence",
    "TaskModelConfig",
    "TokenEmbeddings",
    "TextPair",
    "TokenSpans",
    "align",
    "alignment_cosine",
    "alignment_loss",
    "apply_null_threshold",
    "build_task_model",
    "collate_qa",
    "compute_exact",
    "compute_f1",
    "conll2003_dir",
    "corpus_path",
    "count_parameters",
    "data_cache_dir",
    "decode_qa",
    "drop_layers",
    "encode_spans",
    "evaluate_adapter",
    "evaluate_task_model",
    "finetune",
    "format_summary",
    "get_entities",
    "load_encoder",
    "load_run",
    "load_run_config",
    "measure_latency",
    "model_latency",
    "ner_metrics",
    "no_answer_baseline",
    "normalize_answer",
    "pair_tokens",
    "pos_metrics",
    "predict_answers",
    "predict_tags",
    "prepare_qa_features",
    "prepare_token_features",
    "read_conll2003",
    "read_conllu",
    "read_lines",
    "read_squad",
    "read_texts",
    "resolve_model",
    "run_recipe",
    "segment_texts",
    "shared_data_dir",
    "split_squad_by_article",
    "squad_v2_dir",
    "squad_v2_metrics",
    "teacher_targets",
    "tokenize_with_spans",
    "ud_ewt_dir",
    "window_features",
]
