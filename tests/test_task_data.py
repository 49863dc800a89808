"""Tests for alad.data.task_data: FORMAT:PATH data sources, split files, and seeded subsets."""

from __future__ import annotations

import json

import pytest

from alad.data.readers import QAExample, TaggedSentence
from alad.data.task_data import DataSource, seeded_subset

CONLL_TRAIN = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER
"""
CONLL_DEV = "Paris NNP B-NP B-LOC\nis VBZ B-VP O\n"
CONLL_TEST = "Bonn NNP B-NP B-LOC\n"

CONLLU = """# sent_id = {name}-1
# text = The cat sat.
1\tThe\tthe\tDET\tDT\t_\t2\tdet\t_\t_
2\tcat\tcat\tNOUN\tNN\t_\t3\tnsubj\t_\t_
3\tsat\tsit\tVERB\tVBD\t_\t0\troot\t_\tSpaceAfter=No
4\t.\t.\tPUNCT\t.\t_\t3\tpunct\t_\t_

# sent_id = {name}-2
1-2\tdon't\t_\t_\t_\t_\t_\t_\t_\t_
1\tdo\tdo\tAUX\tVBP\t_\t0\troot\t_\t_
2\tn't\tnot\tPART\tRB\t_\t1\tadvmod\t_\t_
"""


def _squad(title: str, questions: list[tuple[str, str, list[tuple[str, int]], bool]]) -> dict:
    context = "The cat sat on the mat in the morning."
    qas = [
        {
            "id": qid,
            "question": q,
            "answers": [{"text": t, "answer_start": s} for t, s in answers],
            "is_impossible": imp,
        }
        for qid, q, answers, imp in questions
    ]
    return {"version": "v2.0", "data": [{"title": title, "paragraphs": [{"context": context, "qas": qas}]}]}


@pytest.fixture
def conll_dir(tmp_path):
    folder = tmp_path / "conll2003"
    folder.mkdir()
    (folder / "train.txt").write_text(CONLL_TRAIN, encoding="utf-8")
    (folder / "valid.txt").write_text(CONLL_DEV, encoding="utf-8")
    (folder / "test.txt").write_text(CONLL_TEST, encoding="utf-8")
    return folder


@pytest.fixture
def conllu_dir(tmp_path):
    folder = tmp_path / "ud"
    folder.mkdir()
    (folder / "en_tiny-ud-dev.conllu").write_text(CONLLU.format(name="dev"), encoding="utf-8")
    (folder / "en_tiny-ud-test.conllu").write_text(CONLLU.format(name="test").replace("cat", "dog"), encoding="utf-8")
    return folder


def test_conll2003_source_maps_splits_to_files(conll_dir):
    source = DataSource.parse(f"conll2003:{conll_dir}")
    assert (source.format, source.path) == ("conll2003", conll_dir)
    assert source.split_file("train") == conll_dir / "train.txt"
    assert source.split_file("dev") == conll_dir / "valid.txt"
    assert source.split_file("test") == conll_dir / "test.txt"
    assert source.load("train") == [
        TaggedSentence(["EU", "rejects", "German"], ["B-ORG", "O", "B-MISC"]),
        TaggedSentence(["Peter", "Blackburn"], ["B-PER", "I-PER"]),
    ]
    assert source.load("dev") == [TaggedSentence(["Paris", "is"], ["B-LOC", "O"])]
    assert source.load("test") == [TaggedSentence(["Bonn"], ["B-LOC"])]
    assert source.describe("dev") == f"conll2003:{conll_dir / 'valid.txt'}"


def test_conll2003_dev_txt_is_accepted_and_format_is_case_insensitive(tmp_path):
    (tmp_path / "dev.txt").write_text(CONLL_DEV, encoding="utf-8")
    source = DataSource.parse(f" CoNLL2003 :{tmp_path}")
    assert source.format == "conll2003"
    assert source.split_file("dev") == tmp_path / "dev.txt"


def test_conllu_source_upos_and_xpos(conllu_dir):
    source = DataSource.parse(f"conllu:{conllu_dir}")
    assert source.tag == "upos"
    assert source.split_file("dev").name == "en_tiny-ud-dev.conllu"
    dev = source.load("dev")
    assert dev == [
        TaggedSentence(["The", "cat", "sat", "."], ["DET", "NOUN", "VERB", "PUNCT"]),
        TaggedSentence(["do", "n't"], ["AUX", "PART"]),
    ]
    assert source.load("test")[0].tokens == ["The", "dog", "sat", "."]
    xpos = DataSource.parse(f"conllu:{conllu_dir}", tag="xpos")
    assert xpos.load("dev")[0].tags == ["DT", "NN", "VBD", "."]


def test_missing_split_names_the_splits_there_are(conllu_dir, tmp_path):
    source = DataSource.parse(f"conllu:{conllu_dir}")
    with pytest.raises(FileNotFoundError, match=r"no train file in .*\*-ud-train\.conllu.*dev and test") as err:
        source.split_file("train")
    assert str(conllu_dir) in str(err.value)
    with pytest.raises(FileNotFoundError, match="no train file"):
        source.load("train")
    with pytest.raises(ValueError, match="unknown split 'validation'; use train, dev or test"):
        source.split_file("validation")


def test_a_single_file_serves_every_split(conllu_dir):
    file = conllu_dir / "en_tiny-ud-test.conllu"
    source = DataSource.parse(f"conllu:{file}")
    assert source.split_file("train") == file and source.split_file("dev") == file
    assert source.load("train")[0].tokens[1] == "dog"


def test_squad_source(tmp_path):
    train = _squad("Cats", [("t1", "Where did the cat sit?", [("on the mat", 12)], False)])
    dev = _squad(
        "Mats",
        [
            ("d1", "When did the cat sit?", [("in the morning", 23)], False),
            ("d2", "Who sat on the dog?", [], True),
        ],
    )
    (tmp_path / "train-v2.0.first10articles.json").write_text(json.dumps(train), encoding="utf-8")
    (tmp_path / "dev-v2.0.json").write_text(json.dumps(dev), encoding="utf-8")
    source = DataSource.parse(f"squad:{tmp_path}")
    assert source.split_file("train").name == "train-v2.0.first10articles.json"
    assert source.split_file("dev").name == "dev-v2.0.json"
    [t1] = source.load("train")
    assert isinstance(t1, QAExample) and t1.answers == [("on the mat", 12)] and t1.title == "Cats"
    d1, d2 = source.load("dev")
    assert (d1.id, d1.is_impossible, d2.id, d2.is_impossible, d2.answers) == ("d1", False, "d2", True, [])
    with pytest.raises(FileNotFoundError, match=r"no test file .*test\*\.json"):
        source.load("test")


def test_unknown_format_and_missing_folder(tmp_path):
    with pytest.raises(ValueError, match=r"unknown data format 'csv' in 'csv:.*'.*\['conll2003', 'conllu', 'squad'\]"):
        DataSource.parse(f"csv:{tmp_path}")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        DataSource.parse(f"conll2003:{tmp_path / 'nowhere'}")


# --------------------------------------------------------------------------------------------------
# seeded subsets


def test_seeded_subset_is_deterministic_and_keeps_order():
    items = [f"item{i}" for i in range(100)]
    subset = seeded_subset(items, 10, seed=3)
    assert len(subset) == 10 and len(set(subset)) == 10
    assert subset == seeded_subset(items, 10, seed=3)
    assert subset == sorted(subset, key=items.index)  # original order kept
    assert subset != items[:10]  # a shuffle, not the head of the list
    assert seeded_subset(items, 10, seed=4) != subset


def test_seeded_subset_edge_cases():
    items = list(range(5))
    assert seeded_subset(items, None, seed=0) == items
    assert seeded_subset(items, 5, seed=0) == items
    assert seeded_subset(items, 9, seed=0) == items
    assert seeded_subset(tuple(items), None, seed=0) == items  # always a new list
    assert seeded_subset(items, 1, seed=0) in [[i] for i in items]
    with pytest.raises(ValueError, match="at least one item, got n=0"):
        seeded_subset(items, 0, seed=0)


class _FakeClassLabel:
    def __init__(self, names):
        self.feature = type("Names", (), {"names": names})()


class _FakeDataset(list):
    def __init__(self, rows, features):
        super().__init__(rows)
        self.column_names = list(rows[0])
        self.features = features


def test_hub_dataset_through_datasets(monkeypatch):
    """hf:NAME@CONFIG goes through datasets.load_dataset; class ids become tag names, dev maps to validation."""
    import sys
    import types

    calls = []
    ner = _FakeDataset(
        [{"tokens": ["EU", "rejects"], "ner_tags": [1, 0]}], {"ner_tags": _FakeClassLabel(["O", "B-ORG"])}
    )
    squad = _FakeDataset(
        [
            {
                "id": "q1",
                "title": "T",
                "context": "Paris is big.",
                "question": "What?",
                "answers": {"text": ["Paris"], "answer_start": [0]},
            },
            {
                "id": "q2",
                "title": "T",
                "context": "Paris is big.",
                "question": "Who?",
                "answers": {"text": [], "answer_start": []},
            },
        ],
        {},
    )

    def load_dataset(name, config, split):
        calls.append((name, config, split))
        return squad if name == "squad_v2" else ner

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    source = DataSource.parse("hf:conll2003@default")
    sentences = source.load("dev")
    assert calls[-1] == ("conll2003", "default", "validation")
    assert sentences[0].tokens == ["EU", "rejects"] and sentences[0].tags == ["B-ORG", "O"]
    assert source.describe("test") == "hf:conll2003@default [test]"
    examples = DataSource.parse("hf:squad_v2").load("train")
    assert [(e.id, e.is_impossible, e.answers) for e in examples] == [("q1", False, [("Paris", 0)]), ("q2", True, [])]
    with pytest.raises(ValueError, match="name the hub dataset"):
        DataSource.parse("hf:")
