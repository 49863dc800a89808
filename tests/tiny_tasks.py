"""Tiny labelled data sets for task tests, written to a folder in the real file formats.

Words come from the vocabulary of the tiny BERT fixture (conftest.py), so few tokens are [UNK]. The
NER set is learnable from word identity alone (the BERT tokenizer lowercases, so capitals carry no
signal): teacher/student/people are persons, city/river/park/house are locations.
"""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

import yaml

PERSONS = ["Teacher", "Student", "People"]
PLACES = ["City", "River", "Park", "House"]
NER_TEMPLATES = [
    "the {P} walked to the {L} in the morning .",
    "a {P} reads a book by the {L} .",
    "the {P} saw the dog in the {L} .",
    "the cat sat on the mat .",
    "{P} and {P} walked in the {L} at night .",
    "the old {L} was blue .",
    "the {P} trained a small model .",
    "birds sat on the big tree .",
]


def ner_sentences(n: int, seed: int) -> list[list[tuple[str, str]]]:
    """``n`` sentences of (word, tag) pairs with single-word B-PER / B-LOC entities."""
    rng = random.Random(seed)
    sentences = []
    for i in range(n):
        template = NER_TEMPLATES[i % len(NER_TEMPLATES)]
        pairs = []
        for slot in template.split():
            if slot == "{P}":
                pairs.append((rng.choice(PERSONS), "B-PER"))
            elif slot == "{L}":
                pairs.append((rng.choice(PLACES), "B-LOC"))
            else:
                pairs.append((slot, "O"))
        sentences.append(pairs)
    return sentences


def _conll2003_text(sentences: list[list[tuple[str, str]]]) -> str:
    lines = ["-DOCSTART- -X- -X- O", ""]
    for sentence in sentences:
        lines += [f"{word} NN B-NP {tag}" for word, tag in sentence]
        lines.append("")
    return "\n".join(lines) + "\n"


def write_ner_data(folder: Path, n_train: int = 30, n_dev: int = 12, n_test: int = 10, extra_dev_tag: str = "") -> Path:
    """``train.txt``, ``valid.txt`` and ``test.txt`` in CoNLL-2003 format; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    dev = ner_sentences(n_dev, seed=2)
    if extra_dev_tag:
        dev[0] = [(dev[0][0][0], extra_dev_tag)] + dev[0][1:]
    (folder / "train.txt").write_text(_conll2003_text(ner_sentences(n_train, seed=1)), encoding="utf-8")
    (folder / "valid.txt").write_text(_conll2003_text(dev), encoding="utf-8")
    (folder / "test.txt").write_text(_conll2003_text(ner_sentences(n_test, seed=3)), encoding="utf-8")
    return folder


UPOS = {
    "the": ("DET", "DT"),
    "a": ("DET", "DT"),
    "cat": ("NOUN", "NN"),
    "dog": ("NOUN", "NN"),
    "fox": ("NOUN", "NN"),
    "mat": ("NOUN", "NN"),
    "park": ("NOUN", "NN"),
    "river": ("NOUN", "NN"),
    "book": ("NOUN", "NN"),
    "sat": ("VERB", "VBD"),
    "ran": ("VERB", "VBD"),
    "saw": ("VERB", "VBD"),
    "walked": ("VERB", "VBD"),
    "on": ("ADP", "IN"),
    "in": ("ADP", "IN"),
    "by": ("ADP", "IN"),
    "quick": ("ADJ", "JJ"),
    "brown": ("ADJ", "JJ"),
    "lazy": ("ADJ", "JJ"),
    "old": ("ADJ", "JJ"),
    ".": ("PUNCT", "."),
}
_NOUNS = ["cat", "dog", "fox", "mat", "park", "river", "book"]


def pos_sentences(n: int, seed: int) -> list[list[str]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = [rng.choice(["the", "a"])]
        if rng.random() < 0.5:
            words.append(rng.choice(["quick", "brown", "lazy", "old"]))
        words += [rng.choice(_NOUNS[:3]), rng.choice(["sat", "ran", "saw", "walked"])]
        words += [rng.choice(["on", "in", "by"]), "the", rng.choice(_NOUNS[3:]), "."]
        out.append(words)
    return out


def _conllu_text(sentences: list[list[str]], name: str) -> str:
    lines = []
    for i, words in enumerate(sentences, start=1):
        lines += [f"# sent_id = {name}-{i}", f"# text = {' '.join(words)}"]
        for j, word in enumerate(words, start=1):
            upos, xpos = UPOS[word]
            lines.append(f"{j}\t{word}\t{word}\t{upos}\t{xpos}\t_\t0\tdep\t_\t_")
        lines.append("")
    return "\n".join(lines) + "\n"


def write_pos_data(folder: Path, n_dev: int = 30, n_test: int = 10) -> Path:
    """``*-ud-dev.conllu`` and ``*-ud-test.conllu`` (no train file, as UD English-EWT here)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "en_tiny-ud-dev.conllu").write_text(_conllu_text(pos_sentences(n_dev, 4), "dev"), encoding="utf-8")
    (folder / "en_tiny-ud-test.conllu").write_text(_conllu_text(pos_sentences(n_test, 5), "test"), encoding="utf-8")
    return folder


QA_CONTEXTS = [
    "the cat sat on the mat in the morning .",
    "the student reads a long book by the river .",
    "people walked to the park in the evening .",
    "the old dog runs to the park every day .",
]
# (context index, question, answer text or None for unanswerable)
QA_TRAIN = [
    (0, "where was the cat ?", "on the mat"),
    (0, "when was the cat on the mat ?", "in the morning"),
    (1, "who reads a book ?", "the student"),
    (1, "where is the book read ?", "by the river"),
    (2, "where did people walk ?", "to the park"),
    (2, "when did people walk ?", "in the evening"),
    (0, "what did the dog read ?", None),
    (1, "who saw the fox ?", None),
    (2, "where did the birds sit ?", None),
    (3, "where does the old dog run ?", "to the park"),
]
# the dev set's own articles: training and evaluation are disjoint by article (alad checks it)
QA_DEV_CONTEXTS = [
    "the small dog runs to the river every night .",
    "a red bird sat on the house in the evening .",
    "the teacher reads a short book by the road .",
    "people play football in the big park at night .",
]
QA_DEV = [
    (0, "what runs to the river ?", "the small dog"),
    (1, "what sat on the house ?", "a red bird"),
    (2, "what does the teacher read ?", "a short book"),
    (3, "who sat on the tree ?", None),
    (0, "who reads music ?", None),
]

# SQuAD 1.1 (no is_impossible field): train repeats the SQuAD 2.0 train article "article0" (same title
# and context, answerable questions only, as the real files do) and adds "v1-article0" with two
# paragraphs; dev has one article of its own and one that is also in the SQuAD 2.0 dev set.
QA_V1_CONTEXTS = [
    "the old teacher walked to the city in the morning .",
    "a green fox ran over the road at night .",
    "the student saw water in the big tree .",
]
QA_V1_TRAIN = [  # (article title, context, question, answer)
    ("article0", QA_CONTEXTS[0], "where was the cat ?", "on the mat"),
    ("article0", QA_CONTEXTS[0], "when was the cat on the mat ?", "in the morning"),
    ("v1-article0", QA_V1_CONTEXTS[0], "who walked to the city ?", "the old teacher"),
    ("v1-article0", QA_V1_CONTEXTS[0], "where did the teacher walk ?", "to the city"),
    ("v1-article0", QA_V1_CONTEXTS[1], "what ran over the road ?", "a green fox"),
    ("v1-article0", QA_V1_CONTEXTS[1], "when did the fox run ?", "at night"),
]
QA_V1_DEV = [
    ("v1-dev-article0", QA_V1_CONTEXTS[2], "who saw water ?", "the student"),
    ("v1-dev-article0", QA_V1_CONTEXTS[2], "where was the water ?", "in the big tree"),
    ("dev-article1", QA_DEV_CONTEXTS[1], "what sat on the house ?", "a red bird"),
]


def _squad(questions, prefix: str, contexts=QA_CONTEXTS, title: str = "article") -> dict:
    paragraphs: dict[int, list] = {}
    for i, (ctx, question, answer) in enumerate(questions):
        context = contexts[ctx]
        qa = {"id": f"{prefix}{i}", "question": question, "answers": [], "is_impossible": answer is None}
        if answer is not None:
            qa["answers"] = [{"text": answer, "answer_start": context.index(answer)}]
        paragraphs.setdefault(ctx, []).append(qa)
    data = [
        {"title": f"{title}{ctx}", "paragraphs": [{"context": contexts[ctx], "qas": qas}]}
        for ctx, qas in sorted(paragraphs.items())
    ]
    return {"version": "v2.0", "data": data}


def write_qa_data(folder: Path) -> Path:
    """``train-v2.0.json`` and ``dev-v2.0.json`` in SQuAD 2.0 format, disjoint by article."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train-v2.0.json").write_text(json.dumps(_squad(QA_TRAIN, "t")), encoding="utf-8")
    dev = _squad(QA_DEV, "d", QA_DEV_CONTEXTS, "dev-article")
    (folder / "dev-v2.0.json").write_text(json.dumps(dev), encoding="utf-8")
    return folder


def squad_v1_doc(questions, prefix: str) -> dict:
    """SQuAD 1.1 JSON of ``(title, context, question, answer)`` rows: no is_impossible field."""
    articles: dict[str, dict[str, list]] = {}
    for i, (title, context, question, answer) in enumerate(questions):
        qa = {
            "id": f"{prefix}{i}",
            "question": question,
            "answers": [{"text": answer, "answer_start": context.index(answer)}],
        }
        articles.setdefault(title, {}).setdefault(context, []).append(qa)
    data = [
        {"title": title, "paragraphs": [{"context": c, "qas": qas} for c, qas in paragraphs.items()]}
        for title, paragraphs in articles.items()
    ]
    return {"version": "1.1", "data": data}


def write_squad_v1_data(folder: Path) -> Path:
    """``train-v1.1.json`` and ``dev-v1.1.json`` in SQuAD 1.1 format (see QA_V1_TRAIN, QA_V1_DEV)."""
    folder.mkdir(parents=True, exist_ok=True)
    train = squad_v1_doc(QA_V1_TRAIN, "v1t")
    # the paragraph shared with SQuAD 2.0 train keeps its question ids there, as in the real files
    for qa, qid in zip(train["data"][0]["paragraphs"][0]["qas"], ("t0", "t1"), strict=True):
        qa["id"] = qid
    (folder / "train-v1.1.json").write_text(json.dumps(train), encoding="utf-8")
    (folder / "dev-v1.1.json").write_text(json.dumps(squad_v1_doc(QA_V1_DEV, "v1d")), encoding="utf-8")
    return folder


def write_corpus(path: Path, sentences: list[str]) -> Path:
    path.write_text("\n".join(sentences) + "\n", encoding="utf-8")
    return path


MODES = ["frozen", "joint", "head-only", "teacher-head"]


def write_recipe(folder: Path, bert_dir: Path, sentences: list[str], **extra) -> Path:
    """A NER recipe for one pair (1-layer cut of the tiny BERT -> the tiny BERT), quick profile."""
    data = write_ner_data(folder / "ner")
    corpus = write_corpus(folder / "corpus.txt", sentences)
    recipe = {
        "name": "tiny ner",
        "task": "ner",
        "data": f"conll2003:{data}",
        "eval_split": "dev",
        "pairs": [
            {"name": "tiny", "student": {"compress": str(bert_dir), "keep_layers": [0]}, "teacher": str(bert_dir)}
        ],
        "corpus": str(corpus),
        "windows": [1],
        "modes": MODES,
        "batch_size": 8,
        "latency": {"rounds": 2, "batches": 3},
        "profiles": {
            "quick": {
                "stage1": {"epochs": 1, "max_texts": 20, "hidden_size": 16},
                "stage2": {"epochs": 1},
                "epochs": 1,
                "max_train": 20,
                "max_eval": 10,
                "cosine_texts": 10,
                "teachers_dir": str(folder / "teachers"),
            }
        },
        **extra,
    }
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def save_tiny_bert(directory: Path, tokenizer, num_hidden_layers: int = 2, max_position_embeddings: int = 64) -> Path:
    """A random BERT (hidden 32, 2 heads) sized to ``tokenizer``, saved with it; seeded, so reproducible."""
    import torch
    from transformers import BertConfig, BertModel

    config = BertConfig(
        hidden_size=32,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=len(tokenizer),
        max_position_embeddings=max_position_embeddings,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def load_benchmark(name: str):
    """A script of benchmarks/ as a module (they are scripts, not a package)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
