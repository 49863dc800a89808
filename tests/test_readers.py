"""Tests for alad.data.readers: small inline samples, plus the real shared files where present."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alad.data.readers import (
    QAExample,
    TaggedSentence,
    detect_format,
    read_conll2003,
    read_conllu,
    read_lines,
    read_squad,
    read_texts,
)
from alad.data.sources import shared_data_dir

CONLL2003 = """\
-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER

-DOCSTART- -X- -X- O

BRUSSELS NNP B-NP B-LOC
1996-08-22 CD I-NP O
"""

CONLLU = """\
# newdoc id = doc1
# sent_id = s1
# text = I don't know.
1\tI\tI\tPRON\tPRP\t_\t3\tnsubj\t_\t_
2-3\tdon't\t_\t_\t_\t_\t_\t_\t_\t_
2\tdo\tdo\tAUX\tVBP\t_\t3\taux\t_\t_
3\tn't\tnot\tPART\tRB\t_\t4\tadvmod\t_\t_
4\tknow\tknow\tVERB\tVB\t_\t0\troot\t_\tSpaceAfter=No
5\t.\t.\tPUNCT\t.\t_\t4\tpunct\t_\t_

# sent_id = s2
1\tSue\tSue\tPROPN\tNNP\t_\t2\tnsubj\t_\t_
2\tlikes\tlike\tVERB\tVBZ\t_\t0\troot\t_\t_
2.1\tlikes\tlike\tVERB\tVBZ\t_\t_\t_\t0:root\tCopyOf=2
3\ttea\ttea\tNOUN\tNN\t_\t2\tobj\t_\t_
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def squad_doc(answer_start: int = 4, version: str = "v2.0") -> dict:
    context = "The Normans gave their name to Normandy."
    qas = [
        {
            "id": "q1",
            "question": "Who gave their name to Normandy?",
            "answers": [{"text": "Normans", "answer_start": answer_start}],
        },
        {"id": "q2", "question": "What did Normandy name?", "answers": []},
    ]
    if version == "v2.0":
        qas[0]["is_impossible"] = False
        qas[1]["is_impossible"] = True
        qas[1]["plausible_answers"] = [{"text": "Normans", "answer_start": 4}]
    else:
        qas = qas[:1]
    return {
        "version": version,
        "data": [
            {"title": "Normans", "paragraphs": [{"context": context, "qas": qas}]},
            {
                "title": "Tea",
                "paragraphs": [
                    {
                        "context": "Tea is a drink.",
                        "qas": [
                            {
                                "id": "q3",
                                "question": "What is tea?",
                                "answers": [{"text": "a drink", "answer_start": 7}],
                            }
                        ],
                    }
                ],
            },
        ],
    }


# ------------------------------------------------------------------------------------------- CoNLL-2003


def test_conll2003_reads_ner_and_skips_docstart(tmp_path: Path) -> None:
    sents = read_conll2003(write(tmp_path, "a.txt", CONLL2003))
    assert sents == [
        TaggedSentence(["EU", "rejects", "German"], ["B-ORG", "O", "B-MISC"]),
        TaggedSentence(["Peter", "Blackburn"], ["B-PER", "I-PER"]),
        TaggedSentence(["BRUSSELS", "1996-08-22"], ["B-LOC", "O"]),
    ]
    pos = read_conll2003(tmp_path / "a.txt", column=1)
    assert pos[0].tags == ["NNP", "VBZ", "JJ"]


def test_conll2003_directory_reads_train(tmp_path: Path) -> None:
    write(tmp_path, "train.txt", CONLL2003)
    assert len(read_conll2003(tmp_path)) == 3
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(FileNotFoundError, match="train.txt"):
        read_conll2003(tmp_path / "empty_dir")


def test_conll2003_malformed_line_names_file_and_line(tmp_path: Path) -> None:
    bad = CONLL2003.replace("Blackburn NNP I-NP I-PER", "Blackburn I-PER")
    p = write(tmp_path, "bad.txt", bad)
    with pytest.raises(ValueError, match=r"bad\.txt:8: expected 4 .*found 2"):
        read_conll2003(p)
    with pytest.raises(ValueError, match="column=7 is out of range"):
        read_conll2003(write(tmp_path, "ok.txt", CONLL2003), column=7)


def test_conll2003_only_docstart_is_empty(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="contains no text"):
        read_conll2003(write(tmp_path, "e.txt", "-DOCSTART- -X- -X- O\n\n"))


# ------------------------------------------------------------------------------------------------ CoNLL-U


def test_conllu_skips_ranges_empty_nodes_comments(tmp_path: Path) -> None:
    p = write(tmp_path, "a.conllu", CONLLU)
    upos = read_conllu(p)
    assert upos == [
        TaggedSentence(["I", "do", "n't", "know", "."], ["PRON", "AUX", "PART", "VERB", "PUNCT"]),
        TaggedSentence(["Sue", "likes", "tea"], ["PROPN", "VERB", "NOUN"]),
    ]
    xpos = read_conllu(p, tag="xpos")
    assert xpos[0].tags == ["PRP", "VBP", "RB", "VB", "."]
    with pytest.raises(ValueError, match="tag must be one of"):
        read_conllu(p, tag="deprel")


def test_conllu_malformed_line(tmp_path: Path) -> None:
    p = write(tmp_path, "bad.conllu", CONLLU.replace("3\ttea\ttea\tNOUN", "3 tea tea NOUN"))
    with pytest.raises(ValueError, match=r"bad\.conllu:15: expected 10 tab-separated"):
        read_conllu(p)
    p = write(tmp_path, "bad2.conllu", CONLLU.replace("1\tSue", "x\tSue"))
    with pytest.raises(ValueError, match=r"bad2\.conllu:12: invalid CoNLL-U word id 'x'"):
        read_conllu(p)


# -------------------------------------------------------------------------------------------------- SQuAD


def test_squad_v2(tmp_path: Path) -> None:
    p = write(tmp_path, "v2.json", json.dumps(squad_doc()))
    exs = read_squad(p)
    assert [e.id for e in exs] == ["q1", "q2", "q3"]
    assert exs[0] == QAExample(
        id="q1",
        title="Normans",
        context="The Normans gave their name to Normandy.",
        question="Who gave their name to Normandy?",
        answers=[("Normans", 4)],
        is_impossible=False,
    )
    assert exs[1].is_impossible and exs[1].answers == []  # plausible_answers are not answers
    assert exs[2].title == "Tea" and exs[2].answers == [("a drink", 7)]


def test_squad_v11_is_answerable(tmp_path: Path) -> None:
    exs = read_squad(write(tmp_path, "v1.json", json.dumps(squad_doc(version="1.1"))))
    assert [e.id for e in exs] == ["q1", "q3"]
    assert not any(e.is_impossible for e in exs)


def test_squad_offset_mismatch_names_question_and_fix(tmp_path: Path) -> None:
    p = write(tmp_path, "bad.json", json.dumps(squad_doc(answer_start=5)))
    with pytest.raises(ValueError, match=r"question q1: answer 'Normans'.*answer_start=5.*correct answer_start to 4"):
        read_squad(p)


def test_squad_invalid_json_and_structure(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"bad\.json:1: invalid JSON"):
        read_squad(write(tmp_path, "bad.json", "{not json"))
    with pytest.raises(ValueError, match="missing 'data'"):
        read_squad(write(tmp_path, "nodata.json", "{}"))
    with pytest.raises(ValueError, match="contains no text"):
        read_squad(write(tmp_path, "empty.json", '{"data": []}'))


# --------------------------------------------------------------------------------------- text and errors


def test_read_lines_strips_and_skips_blank(tmp_path: Path) -> None:
    p = write(tmp_path, "t.txt", "  first line \n\n\r\nsecond\r\n   \nthird")
    assert read_lines(p) == ["first line", "second", "third"]


def test_empty_file_errors(tmp_path: Path) -> None:
    p = write(tmp_path, "empty.txt", "\n  \n\n")
    with pytest.raises(ValueError, match="contains no text"):
        read_lines(p)
    with pytest.raises(ValueError, match="contains no text"):
        read_texts(p)
    with pytest.raises(ValueError, match="contains no text"):
        read_conllu(write(tmp_path, "e.conllu", "# only a comment\n\n"))


def test_missing_path_and_undecodable(tmp_path: Path) -> None:
    missing = tmp_path / "nope.txt"
    for fn in (read_lines, read_texts, read_conll2003, read_conllu, read_squad):
        with pytest.raises(FileNotFoundError, match=r"nope\.txt.*ALAD_SHARED_DATA"):
            fn(missing)
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"ok\ncaf\xe9\n")
    with pytest.raises(ValueError, match=r"latin1\.txt:2: not valid UTF-8"):
        read_lines(bad)
    with pytest.raises(ValueError, match="is a directory"):
        read_lines(tmp_path)


# ------------------------------------------------------------------------------------------- read_texts


def test_read_texts_auto_detection(tmp_path: Path) -> None:
    conll = write(tmp_path, "ner.txt", CONLL2003)
    assert detect_format(conll) == "conll2003"
    assert read_texts(conll) == ["EU rejects German", "Peter Blackburn", "BRUSSELS 1996-08-22"]

    no_docstart = write(tmp_path, "ner2.dat", CONLL2003.replace("-DOCSTART- -X- -X- O\n\n", ""))
    assert detect_format(no_docstart) == "conll2003"

    (tmp_path / "conll_dir").mkdir()
    write(tmp_path / "conll_dir", "train.txt", CONLL2003)
    assert detect_format(tmp_path / "conll_dir") == "conll2003"
    assert len(read_texts(tmp_path / "conll_dir")) == 3

    ud = write(tmp_path, "ud.conllu", CONLLU)
    assert detect_format(ud) == "conllu"
    assert read_texts(ud) == ["I don't know.", "Sue likes tea"]  # '# text =' when present, else words
    assert detect_format(write(tmp_path, "ud.txt", CONLLU)) == "conllu"

    sq = write(tmp_path, "sq.json", json.dumps(squad_doc()))
    assert detect_format(sq) == "squad"
    assert read_texts(sq) == [
        "The Normans gave their name to Normandy.",
        "Who gave their name to Normandy?",
        "What did Normandy name?",
        "Tea is a drink.",
        "What is tea?",
    ]

    assert read_texts(sq, format="squad-pairs") == [
        ("Who gave their name to Normandy?", "The Normans gave their name to Normandy."),
        ("What did Normandy name?", "The Normans gave their name to Normandy."),
        ("What is tea?", "Tea is a drink."),
    ]

    txt = write(tmp_path, "plain.txt", "Hello world.\n\nAnother sentence here, longer.\n")
    assert detect_format(txt) == "text"
    assert read_texts(txt) == ["Hello world.", "Another sentence here, longer."]
    assert read_texts(conll, format="text")[0] == "-DOCSTART- -X- -X- O"
    with pytest.raises(ValueError, match="unknown format"):
        read_texts(txt, format="csv")


# ------------------------------------------------------------------------------------- real shared data


def _shared(*parts: str) -> Path:
    root = shared_data_dir()
    if root is None:
        pytest.skip("shared data folder not found: set ALAD_SHARED_DATA or check out beside ../shared/data")
    p = root.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"shared data file not found: {p}")
    return p


@pytest.mark.parametrize(("name", "count"), [("train.txt", 14041), ("valid.txt", 3250), ("test.txt", 3453)])
def test_real_conll2003_counts(name: str, count: int) -> None:
    sents = read_conll2003(_shared("conll2003", name))
    assert len(sents) == count
    assert all(len(s.tokens) == len(s.tags) for s in sents)


@pytest.mark.parametrize(("name", "count"), [("en_ewt-ud-dev.conllu", 2001), ("en_ewt-ud-test.conllu", 2077)])
def test_real_ewt_counts(name: str, count: int) -> None:
    assert len(read_conllu(_shared("ud_english_ewt", name))) == count


def test_real_squad_dev_counts() -> None:
    exs = read_squad(_shared("squad_v2", "dev-v2.0.json"))
    assert len(exs) == 11873
    assert sum(e.is_impossible for e in exs) == 5945
    assert len({e.title for e in exs}) == 35


def test_real_corpus_lines() -> None:
    p = _shared("corpus", "nlp-corpus-sentences.txt")
    assert len(read_lines(p)) == 100_000
    assert detect_format(p) == "text"
