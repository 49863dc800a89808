"""Readers for the data formats alad trains and evaluates on.

Alignment needs plain unlabelled text; the task heads need labelled data. Both come in a handful of
standard formats, read here from any path (the project's shared data, or a user's own files):

* CoNLL-2003 NER (``token POS chunk NER`` per line)      -> :func:`read_conll2003`
* CoNLL-U (Universal Dependencies)                       -> :func:`read_conllu`
* SQuAD v1.1 / v2.0 JSON                                 -> :func:`read_squad`
* plain text, one text per line                          -> :func:`read_lines`
* unlabelled text from any of the above                  -> :func:`read_texts`

Every reader fails loudly rather than guessing: a missing path raises :class:`FileNotFoundError`, a file
that cannot be decoded or parsed raises :class:`ValueError` naming the file, the line (or question id)
and what is wrong, and a file with no text at all raises :class:`ValueError` too, so that a wrong path
never silently trains on nothing.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "QAExample",
    "TaggedSentence",
    "TEXT_FORMATS",
    "detect_format",
    "read_conll2003",
    "read_conllu",
    "read_lines",
    "read_squad",
    "squad_format",
    "question_context_pairs",
    "read_texts",
]

PathLike = str | os.PathLike[str]

logger = logging.getLogger(__name__)

#: Formats accepted by :func:`read_texts` (besides ``"auto"``).
TEXT_FORMATS = ("text", "conll2003", "conllu", "squad", "squad-pairs")

_CONLL2003_DIR_FILE = "train.txt"
_DOCSTART = "-DOCSTART-"


@dataclass(frozen=True)
class TaggedSentence:
    """One sentence of a token-labelling data set: words and one label per word."""

    tokens: list[str]
    tags: list[str]


@dataclass(frozen=True)
class QAExample:
    """One extractive-QA question with its context.

    ``answers`` holds ``(text, char_start)`` pairs, validated against ``context``. ``title`` is kept so
    that callers can split by article (never by question: questions of one article share contexts).
    """

    id: str
    title: str
    context: str
    question: str
    answers: list[tuple[str, int]]
    is_impossible: bool


# --------------------------------------------------------------------------------------------------
# file access


def _existing_path(path: PathLike) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(
            f"{p}: no such file or directory. Check the path; for the project's shared data, set "
            "ALAD_SHARED_DATA to the shared 'data' folder or use alad.data.sources to locate it."
        )
    return p


def _read_text(path: PathLike) -> tuple[Path, str]:
    """Read a whole UTF-8 file (a BOM is dropped); decoding and OS errors become clear errors."""
    p = _existing_path(path)
    if p.is_dir():
        raise ValueError(f"{p}: is a directory, expected a file")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ValueError(f"{p}: cannot be read: {exc}") from exc
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ValueError(
            f"{p}:{line}: not valid UTF-8 (byte {exc.start}: {exc.reason}); convert the file to UTF-8"
        ) from exc
    return p, text


def _no_text(p: Path, what: str = "text") -> ValueError:
    return ValueError(f"{p}: contains no text ({what} expected); is this the right file?")


def _lines(text: str) -> Iterator[tuple[int, str]]:
    """(1-based line number, line without its end of line). Only ``\\n`` ends lines, as in ``wc -l``."""
    for lineno, line in enumerate(text.split("\n"), start=1):
        yield lineno, line.rstrip("\r")


def _conll2003_file(path: PathLike) -> Path:
    p = _existing_path(path)
    if p.is_dir():
        p = p / _CONLL2003_DIR_FILE
        if not p.is_file():
            raise FileNotFoundError(
                f"{p}: not found; a CoNLL-2003 directory must hold {_CONLL2003_DIR_FILE} "
                "(pass the file itself to read valid.txt or test.txt)"
            )
    return p


# --------------------------------------------------------------------------------------------------
# CoNLL-2003


def read_conll2003(path: PathLike, column: int = -1) -> list[TaggedSentence]:
    """Read CoNLL-2003 NER: one ``token POS chunk NER`` line per token, blank lines between sentences.

    ``-DOCSTART-`` lines are document separators, not sentences, and are skipped. ``column`` picks the
    label column (default: the last, NER; POS and chunk in CoNLL-2003 are automatic, not gold). Every
    token line must have as many columns as the first one, so a truncated or shifted line is reported
    (file:line) instead of being read as a wrong label. A directory reads its ``train.txt``.
    """
    p = _conll2003_file(path)
    p, text = _read_text(p)
    sentences: list[TaggedSentence] = []
    tokens: list[str] = []
    tags: list[str] = []
    ncols = 0
    first_line = 0

    def flush() -> None:
        if tokens:
            sentences.append(TaggedSentence(tokens=list(tokens), tags=list(tags)))
            tokens.clear()
            tags.clear()

    for lineno, line in _lines(text):
        fields = line.split()
        if not fields:
            flush()
            continue
        if fields[0] == _DOCSTART:
            flush()
            continue
        if not ncols:
            ncols, first_line = len(fields), lineno
            if ncols < 2:
                raise ValueError(f"{p}:{lineno}: expected a token and at least one label column, found {line!r}")
            if not -ncols <= column < ncols:
                raise ValueError(f"{p}: column={column} is out of range: lines have {ncols} columns (line {lineno})")
        elif len(fields) != ncols:
            raise ValueError(
                f"{p}:{lineno}: expected {ncols} whitespace-separated columns (as on line {first_line}), "
                f"found {len(fields)}: {line!r}"
            )
        tokens.append(fields[0])
        tags.append(fields[column])
    flush()
    if not sentences:
        raise _no_text(p, "CoNLL-2003 sentences")
    return sentences


# --------------------------------------------------------------------------------------------------
# CoNLL-U

_CONLLU_TAG_COLUMNS = {"upos": 3, "xpos": 4}


def _parse_conllu(p: Path, text: str, tag_col: int) -> list[tuple[TaggedSentence, str | None]]:
    """Sentences with their ``# text =`` comment (None when absent)."""
    out: list[tuple[TaggedSentence, str | None]] = []
    tokens: list[str] = []
    tags: list[str] = []
    sent_text: str | None = None

    for lineno, line in _lines(text):
        if not line.strip():
            if tokens:
                out.append((TaggedSentence(tokens=tokens, tags=tags), sent_text))
            tokens, tags, sent_text = [], [], None
            continue
        if line.startswith("#"):
            if line.startswith("# text ="):
                sent_text = line[len("# text =") :].strip()
            continue
        fields = line.split("\t")
        if len(fields) != 10:
            raise ValueError(f"{p}:{lineno}: expected 10 tab-separated CoNLL-U columns, found {len(fields)}: {line!r}")
        tid = fields[0]
        if "-" in tid or "." in tid:  # multiword token range (3-4) or empty node (5.1): not a word
            continue
        if not tid.isdigit():
            raise ValueError(f"{p}:{lineno}: invalid CoNLL-U word id {tid!r} (expected 1, 2, ...)")
        tokens.append(fields[1])
        tags.append(fields[tag_col])
    if tokens:
        out.append((TaggedSentence(tokens=tokens, tags=tags), sent_text))
    return out


def read_conllu(path: PathLike, tag: str = "upos") -> list[TaggedSentence]:
    """Read CoNLL-U (Universal Dependencies) words with their UPOS (column 4) or XPOS (column 5) tags.

    Comment lines, multiword token ranges (``3-4``) and empty nodes (``5.1``) are skipped, so tokens are
    the syntactic words, one tag each. Any other line must have exactly 10 tab-separated columns.
    """
    if tag not in _CONLLU_TAG_COLUMNS:
        raise ValueError(f"tag must be one of {sorted(_CONLLU_TAG_COLUMNS)}, got {tag!r}")
    p, text = _read_text(path)
    sentences = [s for s, _ in _parse_conllu(p, text, _CONLLU_TAG_COLUMNS[tag])]
    if not sentences:
        raise _no_text(p, "CoNLL-U sentences")
    return sentences


# --------------------------------------------------------------------------------------------------
# SQuAD


def _load_json(p: Path, text: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{p}:{exc.lineno}: invalid JSON (column {exc.colno}): {exc.msg}") from exc


def _field(obj: object, key: str, kind: type | tuple[type, ...], p: Path, where: str) -> Any:
    """``obj[key]``, checked to be of ``kind``; a clear error names the place in the file otherwise."""
    if not isinstance(obj, dict):
        raise ValueError(f"{p}: {where}: expected a JSON object, got {type(obj).__name__} (not SQuAD JSON?)")
    if key not in obj:
        raise ValueError(f"{p}: {where}: missing {key!r} (not SQuAD JSON?)")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(f"{p}: {where}: {key!r} has the wrong type ({type(value).__name__})")
    return value


def _offset_hint(context: str, text: str, start: int) -> str:
    found: list[int] = []
    i = context.find(text) if text else -1
    while i >= 0:
        found.append(i)
        i = context.find(text, i + 1)
    if not found:
        return "the answer text does not occur in the context at all: correct the answer text"
    best = min(found, key=lambda i: abs(i - start))
    more = f" (it occurs at {found[:5]})" if len(found) > 1 else ""
    return f"fix: correct answer_start to {best}{more}"


def _answers(qa: dict[str, Any], context: str, qid: str, p: Path) -> list[tuple[str, int]]:
    answers: list[tuple[str, int]] = []
    for ans in _field(qa, "answers", list, p, f"question {qid}") if "answers" in qa else []:
        text: str = _field(ans, "text", str, p, f"question {qid}: answer")
        start: int = _field(ans, "answer_start", int, p, f"question {qid}: answer")
        found = context[start : start + len(text)]
        if start < 0 or found != text:
            raise ValueError(
                f"{p}: question {qid}: answer {text!r} does not match the context at "
                f"answer_start={start}, which reads {found!r}; {_offset_hint(context, text, start)}"
            )
        answers.append((text, start))
    return answers


def read_squad(path: PathLike) -> list[QAExample]:
    """Read SQuAD v1.1 or v2.0 JSON into one :class:`QAExample` per question.

    v1.1 has no ``is_impossible``: its questions are answerable. Each answer is checked against its
    character offset in the context, because a wrong ``answer_start`` silently trains a QA head on the
    wrong span; a mismatch raises :class:`ValueError` naming the question id and the offset to use.
    v2.0 ``plausible_answers`` of unanswerable questions are not answers and are ignored.
    """
    p, text = _read_text(path)
    doc = _load_json(p, text)
    examples: list[QAExample] = []
    for ai, article in enumerate(_field(doc, "data", list, p, "top level")):
        title = _field(article, "title", str, p, f"data[{ai}]") if "title" in article else ""
        for pi, para in enumerate(_field(article, "paragraphs", list, p, f"data[{ai}]")):
            where = f"data[{ai}].paragraphs[{pi}]"
            context: str = _field(para, "context", str, p, where)
            for qi, qa in enumerate(_field(para, "qas", list, p, where)):
                qid = str(_field(qa, "id", (str, int), p, f"{where}.qas[{qi}]"))
                examples.append(
                    QAExample(
                        id=qid,
                        title=title,
                        context=context,
                        question=_field(qa, "question", str, p, f"question {qid}"),
                        answers=_answers(qa, context, qid, p),
                        is_impossible=bool(qa.get("is_impossible", False)),
                    )
                )
    if not examples:
        raise _no_text(p, "SQuAD questions")
    return examples


def squad_format(path: PathLike) -> str:
    """``"2.0"`` when any question of a SQuAD JSON file carries ``is_impossible`` (the SQuAD 2.0 form),
    else ``"1.1"``: the content decides, not the file's ``version`` field."""
    p, text = _read_text(path)
    doc = _load_json(p, text)
    for article in _field(doc, "data", list, p, "top level"):
        for para in article.get("paragraphs", []) if isinstance(article, dict) else []:
            for qa in para.get("qas", []) if isinstance(para, dict) else []:
                if isinstance(qa, dict) and "is_impossible" in qa:
                    return "2.0"
    return "1.1"


# --------------------------------------------------------------------------------------------------
# plain text and format detection


def read_lines(path: PathLike) -> list[str]:
    """Read plain text, one text per line: lines are stripped and blank lines skipped."""
    p, text = _read_text(path)
    lines = [s for s in (line.strip() for line in text.split("\n")) if s]
    if not lines:
        raise _no_text(p, "one text per line")
    return lines


# An IOB/BIOES tag: O, or B-/I-/E-/S-/L-/U- followed by a type (PER, LOC, MISC, ...).
_TAG = re.compile(r"^(O|[BIESLU]-[A-Za-z][A-Za-z0-9_.$-]*)$")
_CONLL_NAME_HINTS = (".conll", ".iob", ".bio", ".bioes")


def _looks_like_conll2003(lines: list[str], named_conll: bool = False) -> bool:
    """True when the first non-blank line is -DOCSTART-, or every sampled line has 4 columns and either the
    last column of each is a tag (O, B-PER, I-LOC, ...) or the file's name says CoNLL. Four-word lines of
    plain text are text: their last words are not tags."""
    if not lines:
        return False
    if lines[0].startswith(_DOCSTART):
        return True
    if not all(len(line.split()) == 4 for line in lines):
        return False
    return named_conll or all(_TAG.match(line.split()[-1]) for line in lines)


def detect_format(path: PathLike) -> str:
    """Guess the format of ``path`` for :func:`read_texts`: one of :data:`TEXT_FORMATS`."""
    return detect_format_why(path)[0]


def detect_format_why(path: PathLike) -> tuple[str, str]:
    """The format of ``path`` for :func:`read_texts` and the reason, said to the user.

    A directory is CoNLL-2003 (its ``train.txt``); ``.json`` is SQuAD and ``.conllu`` is CoNLL-U;
    otherwise the first lines decide: ``-DOCSTART-``, or 4 whitespace-separated columns on each of the
    first 20 non-blank lines with a tag (``O``, ``B-PER``, ...) in the last column (or ``conll`` in the
    file name) -> CoNLL-2003; 10 tab-separated columns after ``#`` comments -> CoNLL-U; a leading ``{``
    -> SQuAD; anything else -> plain text, one text per line.
    """
    p = _existing_path(path)
    if p.is_dir():
        return "conll2003", "a folder is read as CoNLL-2003 (its train.txt)"
    suffix = p.suffix.lower()
    if suffix == ".json":
        return "squad", "the .json extension"
    if suffix == ".conllu":
        return "conllu", "the .conllu extension"
    try:
        with p.open("rb") as fh:
            head = fh.read(64 * 1024).decode("utf-8-sig", errors="replace")
    except OSError as exc:
        raise ValueError(f"{p}: cannot be read: {exc}") from exc
    if head.lstrip().startswith("{"):
        return "squad", "it starts with '{'"
    head_lines = head.split("\n")
    if len(head) == 64 * 1024:
        head_lines = head_lines[:-1]  # possibly cut in the middle
    nonblank = [line.rstrip("\r") for line in head_lines if line.strip()][:20]
    named_conll = "conll" in p.name.lower() or suffix in _CONLL_NAME_HINTS
    if _looks_like_conll2003(nonblank, named_conll):
        return "conll2003", "-DOCSTART- or 4 columns ending in a tag column"
    words = [line for line in nonblank if not line.startswith("#")]
    if words and len(words[0].split("\t")) == 10:
        return "conllu", "10 tab-separated columns"
    if nonblank and all(len(line.split()) == 4 for line in nonblank):
        return "text", "4 words per line, but the last is no tag, so not CoNLL-2003"
    return "text", "no CoNLL or SQuAD layout"


def question_context_pairs(examples: Iterable[QAExample]) -> list[tuple[str, str]]:
    """One (question, context) pair per question: the input a QA model reads, for alignment."""
    return [(ex.question, ex.context) for ex in examples]


def read_texts(path: PathLike, format: str = "auto") -> list[str] | list[tuple[str, str]]:
    """Unlabelled texts for alignment from any supported format.

    * ``"text"``: one text per line (:func:`read_lines`);
    * ``"conll2003"``: each sentence, tokens joined by single spaces (a directory reads ``train.txt``);
    * ``"conllu"``: each sentence's ``# text =`` comment, else its word forms joined by spaces;
    * ``"squad"``: each distinct context once (in file order), followed by its questions;
    * ``"squad-pairs"``: one (question, context) pair per question, as a QA model reads them (stage 2
      for QA; never auto-detected);
    * ``"auto"``: :func:`detect_format`.
    """
    if format == "auto":
        format, why = detect_format_why(path)
        logger.warning("%s: read as %s (auto-detected: %s); set the corpus format to choose another", path, format, why)
    if format == "text":
        return read_lines(path)
    if format == "conll2003":
        return [" ".join(s.tokens) for s in read_conll2003(path)]
    if format == "conllu":
        p, text = _read_text(path)
        pairs = _parse_conllu(p, text, _CONLLU_TAG_COLUMNS["upos"])
        conllu_texts = [t if t else " ".join(s.tokens) for s, t in pairs]
        if not conllu_texts:
            raise _no_text(p, "CoNLL-U sentences")
        return conllu_texts
    if format == "squad":
        texts: list[str] = []
        seen: set[str] = set()
        for ex in read_squad(path):
            if ex.context not in seen:
                seen.add(ex.context)
                texts.append(ex.context)
            texts.append(ex.question)
        return texts
    if format == "squad-pairs":
        return question_context_pairs(read_squad(path))
    raise ValueError(f"unknown format {format!r}; expected 'auto' or one of {list(TEXT_FORMATS)}")
