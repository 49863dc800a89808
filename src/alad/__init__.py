"""alad: Alignment Adapters that make compressed transformer encoders accurate again.

A small MLP reads a window of a compressed student's token states and predicts the token states of
a larger teacher (other width, other tokenizer). Typical use::

    from alad import AlignConfig, align, AlignmentAdapter
    summary = align("runs/align", AlignConfig(student="all-MiniLM-L6-v2", teacher="all-mpnet-base-v2"))
    adapter = AlignmentAdapter.from_pretrained("runs/align/w3")
"""

from alad.adapter import AdapterConfig, AlignmentAdapter, window_features
from alad.alignment import AlignConfig, AlignmentData, align, alignment_loss, evaluate_adapter, format_summary
from alad.cache import EmbeddingCache, TokenEmbeddings, encode_spans
from alad.data_sources import conll2003_dir, corpus_path, data_cache_dir, shared_data_dir, squad_v2_dir, ud_ewt_dir
from alad.metrics import (
    compute_exact,
    compute_f1,
    get_entities,
    ner_metrics,
    no_answer_baseline,
    normalize_answer,
    pos_metrics,
    squad_v2_metrics,
)
from alad.models import Encoder, ModelNotFoundError, load_encoder, resolve_model
from alad.readers import QAExample, TaggedSentence, read_conll2003, read_conllu, read_lines, read_squad, read_texts
from alad.serialization import FORMAT_VERSION, ArtefactError
from alad.tokenizer_alignment import TokenSpans, pair_tokens, segment_texts, teacher_targets, tokenize_with_spans

__version__ = "0.1.0"

__all__ = [
    "FORMAT_VERSION",
    "AdapterConfig",
    "AlignConfig",
    "AlignmentAdapter",
    "AlignmentData",
    "ArtefactError",
    "EmbeddingCache",
    "Encoder",
    "ModelNotFoundError",
    "QAExample",
    "TaggedSentence",
    "TokenEmbeddings",
    "TokenSpans",
    "align",
    "alignment_loss",
    "compute_exact",
    "compute_f1",
    "conll2003_dir",
    "corpus_path",
    "data_cache_dir",
    "encode_spans",
    "evaluate_adapter",
    "format_summary",
    "get_entities",
    "load_encoder",
    "ner_metrics",
    "no_answer_baseline",
    "normalize_answer",
    "pair_tokens",
    "pos_metrics",
    "read_conll2003",
    "read_conllu",
    "read_lines",
    "read_squad",
    "read_texts",
    "resolve_model",
    "segment_texts",
    "shared_data_dir",
    "squad_v2_dir",
    "squad_v2_metrics",
    "teacher_targets",
    "tokenize_with_spans",
    "ud_ewt_dir",
    "window_features",
]
