"""Shared fixtures: two tiny random encoders of different tokenizer families, built locally.

* ``bert_dir``: a BERT-like model (hidden 32) with a fast WordPiece tokenizer built from a small
  vocabulary file ([PAD] [UNK] [CLS] [SEP] [MASK] + lowercase words and ``##`` pieces).
* ``roberta_dir``: a RoBERTa-like model (hidden 48) with a byte-level BPE tokenizer trained here with
  the ``tokenizers`` library (``<s> <pad> </s> <unk> <mask>``, post-processor adding ``<s> ... </s>``).

Nothing is downloaded: the hub is switched off before transformers is imported.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from tiny_tasks import save_tiny_bert

# The models here are tiny: one thread is fastest, and keeps timings steady on a shared machine.
torch.set_num_threads(1)

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_WORDS_TEXT = """
the a an and of to in on is was are were it this that with for at by from as
cat cats dog dogs fox bird birds mat sat sit runs ran run jump quick brown lazy over
play football game team fun good small big red green blue old new day night
house tree river city road music book books read write reads people student teacher
model models train trained text word words token tokens sentence long short
cafe coffee morning evening park walk walked see saw water
, . ! ? ' -
##s ##ing ##ed ##er ##ly ##ball ##est ##y ##e ##a ##o ##n ##t ##r ##d
"""
WORDS = _WORDS_TEXT.split()
BERT_VOCAB = SPECIALS + WORDS

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A cat sat on the mat in the morning.",
    "Playing football is fun for the whole team.",
    "The student reads a long book by the river.",
    "Birds were singing in the old tree at night.",
    "People walked to the park in the evening.",
    "The teacher trained a small model on short sentences.",
    "Dogs and cats are playing in the big house.",
    "She drank coffee at the café on the new road.",
    "The city was quiet, and the water was blue.",
    "A green bird saw the red fox by the road.",
    "Words and tokens are not the same thing.",
    "The music of the river is good in the morning.",
    "Every day the old dog runs to the park.",
    "This sentence is short.",
    "That long text was written for the students.",
    "The model reads words and writes tokens.",
    "A lazy cat is sitting on a blue mat.",
    "They played a game with the new team.",
    "The brown dog jumped over the small tree!",
    "Is it a good day for a walk?",
    "The teachers trained the models at night.",
    "An old man read a book in the café.",
    "Quick foxes run faster than lazy dogs.",
    "The red house stands by the green river.",
    "Football teams play a game every evening.",
    "The birds sat on the road in the city.",
    "Water runs from the big tree to the river.",
    "A student wrote a short text about music.",
    "The day was long and the night was short.",
    "Cats see well at night, dogs less so.",
    "Reading books is a good way to learn words.",
    "The morning coffee was strong and hot.",
    "New people walked in the old city.",
    "It was a quick game, and it was fun.",
    "The small bird sang to the lazy cat.",
    "A tree fell on the road in the night.",
    "The teacher saw the student in the park.",
    "Music and books are good for people.",
    "The fox ran over the green hill.",
]


def _bert_tokenizer(vocab_file: Path):
    from transformers import BertTokenizerFast

    params = inspect.signature(BertTokenizerFast.__init__).parameters
    # transformers 5 takes the vocabulary as ``vocab`` and silently ignores ``vocab_file``.
    kwargs = {"vocab": str(vocab_file)} if "vocab" in params else {"vocab_file": str(vocab_file)}
    tokenizer = BertTokenizerFast(**kwargs, do_lower_case=True)
    assert len(tokenizer) == len(BERT_VOCAB), "the vocabulary file was not read"
    return tokenizer


def _bpe_tokenizer(sentences: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(sentences, trainer)
    backend.post_processor = processors.RobertaProcessing(
        ("</s>", backend.token_to_id("</s>")),
        ("<s>", backend.token_to_id("<s>")),
        trim_offsets=True,
        add_prefix_space=False,
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        cls_token="<s>",
        sep_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
    )


@pytest.fixture(scope="session")
def sentences() -> list[str]:
    return list(SENTENCES)


@pytest.fixture(scope="session")
def bert_dir(tmp_path_factory) -> Path:
    """A tiny BERT (hidden 32, 64 positions) with a WordPiece tokenizer, saved to a folder."""
    directory = tmp_path_factory.mktemp("tiny-bert")
    vocab_file = directory / "vocab.txt"
    vocab_file.write_text("\n".join(BERT_VOCAB) + "\n", encoding="utf-8")
    return save_tiny_bert(directory, _bert_tokenizer(vocab_file))


@pytest.fixture(scope="session")
def roberta_dir(tmp_path_factory) -> Path:
    """A tiny RoBERTa (hidden 48, 50 positions, pad id 1) with a byte-level BPE tokenizer."""
    from transformers import RobertaConfig, RobertaModel

    directory = tmp_path_factory.mktemp("tiny-roberta")
    tokenizer = _bpe_tokenizer(SENTENCES * 3)
    config = RobertaConfig(
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=96,
        vocab_size=len(tokenizer),
        max_position_embeddings=50,
        type_vocab_size=1,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(1)
    RobertaModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def bert(bert_dir):
    """The tiny BERT loaded with ``load_encoder``; shared, so tests must not modify it."""
    from alad.models.encoders import load_encoder

    return load_encoder(bert_dir)


@pytest.fixture(scope="session")
def roberta(roberta_dir):
    """The tiny RoBERTa loaded with ``load_encoder``; shared, so tests must not modify it."""
    from alad.models.encoders import load_encoder

    return load_encoder(roberta_dir)
