"""Run folders are alad's own: claimed with a marker before anything is written, never shared.

``align``, ``finetune`` and ``alad run`` write into a run folder. Before its first write a command
claims the folder: a new or empty folder gets the marker ``.alad-run.json`` (kind and version); a
folder holding the marker of the same kind is resumed; anything else (someone's files, another
kind of run) is refused with a message, so alad never writes beside or over files it did not write.
Folders written by an alad from before the marker (``run_config.json`` / ``finetune_config.json``
of the right kind) are recognised and adopted, so older runs keep resuming.

Deleting is just as narrow: :func:`remove_own_files` removes only the files alad named (and the
half-written ``.tmp`` files its atomic writer leaves when killed), and a folder only once empty.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path

from alad.io.serialization import FORMAT_VERSION, ArtefactError, write_json_atomic

MARKER = ".alad-run.json"
KINDS = ("alignment_run", "finetune_run", "recipe_run")

# What an alad from before the marker left in a run folder of each kind: (file, test on its JSON).
_LEGACY = {
    "alignment_run": ("run_config.json", lambda d: d.get("kind") == "alignment_run"),
    "finetune_run": ("finetune_config.json", lambda d: d.get("kind") == "finetune_run"),
    "recipe_run": ("run_config.json", lambda d: "pairs" in d and "task" in d and "kind" not in d),
}
_KIND_WORDS = {"alignment_run": "an alignment run", "finetune_run": "a fine-tuning run", "recipe_run": "an alad run"}
# Names atomic_write (tempfile.mkstemp) gives its temporary files: ".<name>.<8 random characters>.tmp".
_TMP = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


class RunFolderError(FileExistsError):
    """An output folder alad may not write into (not alad's, or another kind of run)."""


def _version() -> str:
    from alad import __version__

    return __version__


def _read(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def folder_kind(path: str | os.PathLike) -> str | None:
    """The kind of alad run ``path`` holds (by its marker, else by an older alad's config), or None."""
    path = Path(path)
    marker = _read(path / MARKER) if (path / MARKER).is_file() else None
    if marker is not None and marker.get("kind") in KINDS:
        return marker["kind"]
    for kind, (name, test) in _LEGACY.items():
        data = _read(path / name) if (path / name).is_file() else None
        if data is not None and test(data):
            return kind
    return None


def _check_writable(path: Path, flag: str) -> None:
    """Refuse a folder (or, when it does not exist yet, its nearest existing parent) alad cannot write."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise RunFolderError(f"{existing} is a file, not a folder; choose another {flag}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, f"{existing} is not writable; choose a writable {flag}", str(existing))


def check_run_folder(path: str | os.PathLike, kind: str, flag: str = "--out") -> None:
    """Refuse, before any work, a folder that alad may not use for a run of ``kind``; writes nothing."""
    if kind not in KINDS:
        raise ValueError(f"unknown run kind {kind!r}; one of {KINDS}")
    path = Path(path)
    _check_writable(path, flag)
    if not path.exists():
        return
    found = folder_kind(path)
    if found == kind:
        return
    if found is not None:
        raise RunFolderError(f"{path} holds {_KIND_WORDS[found]}, not {_KIND_WORDS[kind]}; choose another {flag}")
    entries = sorted(p.name for p in path.iterdir())
    if entries:
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise RunFolderError(
            f"{path} already exists and is not an alad run folder (it holds {shown}); alad writes only into a new "
            f"or empty folder or its own run folder: choose another {flag}"
        )


def claim_run_folder(path: str | os.PathLike, kind: str, flag: str = "--out") -> Path:
    """Check ``path`` (see :func:`check_run_folder`), create it and write the marker first; returns it.

    A folder already claimed for ``kind`` is kept as it is, apart from the stale temporary files
    alad's own atomic writes left there when killed.
    """
    check_run_folder(path, kind, flag)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if not (path / MARKER).is_file():
        write_json_atomic(path / MARKER, {"kind": kind, "alad_version": _version(), "format_version": FORMAT_VERSION})
    remove_stale_tmp(path)
    return path


def is_own_folder(path: str | os.PathLike, kind: str | None = None) -> bool:
    found = folder_kind(path)
    return found is not None and (kind is None or found == kind)


def remove_stale_tmp(folder: str | os.PathLike) -> list[Path]:
    """Delete the ``.<name>.<random>.tmp`` files alad's atomic writer leaves when a write is killed."""
    folder = Path(folder)
    removed = []
    if folder.is_dir():
        for path in folder.iterdir():
            if path.is_file() and _TMP.match(path.name):
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def remove_own_files(run: str | os.PathLike, sub: str, names: Iterable[str]) -> None:
    """Delete the files ``names`` that alad wrote into ``run/sub`` and the folder itself once empty.

    Only inside a folder that is alad's own run folder: anything else in ``run/sub`` (a user's file)
    stays, and so does the folder then.
    """
    run = Path(run)
    if not is_own_folder(run):
        raise ArtefactError(f"{run} is not an alad run folder; alad deletes nothing in it")
    folder = run / sub
    if not folder.is_dir():
        return
    for name in names:
        (folder / name).unlink(missing_ok=True)
    remove_stale_tmp(folder)
    with contextlib.suppress(OSError):  # not empty: what is left there is not alad's
        folder.rmdir()


def check_path_name(name: object, what: str) -> str:
    """A name that becomes one folder name: letters, digits, ``-``, ``_``, ``.``; no path, no ``..``."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{what} {name!r} is empty or not a string; give it a name such as 'minilm-l2'")
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*", name) or ".." in name:
        raise ValueError(
            f"{what} {name!r} cannot be a folder name (it becomes a folder under the output folder); "
            "use letters, digits, '-', '_' and '.', with no '/' and no '..'"
        )
    return name


__all__ = [
    "MARKER",
    "RunFolderError",
    "check_path_name",
    "check_run_folder",
    "claim_run_folder",
    "folder_kind",
    "remove_own_files",
    "remove_stale_tmp",
]
