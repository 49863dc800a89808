"""Atomic, versioned persistence shared by every artefact alad writes.

Every artefact is a folder with a JSON file (config + ``kind`` + ``format_version``) next to
safetensors weights. Writes go to a temporary file in the same folder and are renamed into place,
so an interrupted run never leaves a half-written file that a later run would trust.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

FORMAT_VERSION = 1
"""Bumped whenever a saved artefact's layout changes; loaders refuse other versions."""

WEIGHTS_FORMAT_VERSION = 2
"""Header version of artefacts with weights (adapters, task models): version 2 records the SHA-256 of
every weights file (``weights_sha256``) and is checked on load; version 1 headers predate checksums."""
WEIGHTS_SHA256 = "weights_sha256"

T = TypeVar("T")


class ArtefactError(ValueError):
    """A saved artefact is missing, corrupt, of another kind, or of an unsupported version."""


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` and rename the result onto ``path`` only once it is complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    def _write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())

    atomic_write(path, _write)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    path = Path(path)
    if not path.is_file():
        raise ArtefactError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ArtefactError(f"{what} {path} is not valid JSON ({err}); it is corrupt: delete and rebuild it") from err


def _disk_error(path: str | os.PathLike, err: BaseException) -> OSError:
    """torch's and safetensors' write errors (e.g. ``inline_container.cc ... file write failed``) as one line."""
    import errno

    code = getattr(err, "errno", None) or errno.ENOSPC
    return OSError(code, f"cannot write {path}: the disk is full or the folder is not writable ({type(err).__name__})")


def save_tensors_atomic(
    path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict | None = None
) -> None:
    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    try:
        atomic_write(path, lambda tmp: save_file(contiguous, tmp, metadata=metadata))
    except SafetensorError as err:
        raise _disk_error(path, err) from err


def load_tensors(path: str | os.PathLike, what: str = "weights") -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise ArtefactError(f"{what} not found: {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ArtefactError(f"{what} {path} cannot be read ({err}); the file is corrupt or truncated") from err


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def config_to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def config_from_dict(cls: type[T], data: dict[str, Any], what: str) -> T:
    """Build a config dataclass, refusing unknown keys so a wrong file fails loudly."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ArtefactError(f"{what} has unknown fields {unknown}; it was written by another tool or version")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    return cls(**values)


def check_header(header: dict[str, Any], kind: str, path: Path, versions: tuple[int, ...] = (FORMAT_VERSION,)) -> None:
    """Refuse artefacts of another kind or format version with a message naming both."""
    if not isinstance(header, dict):
        raise ArtefactError(f"{path} holds no alad header (a JSON object); re-create it with alad")
    found_kind = header.get("kind")
    if found_kind != kind:
        raise ArtefactError(f"{path} holds a {found_kind!r}, not a {kind!r}; pass the folder of a {kind}")
    version = header.get("format_version")
    if version not in versions:
        readable = " or ".join(map(str, versions))
        raise ArtefactError(
            f"{path} has format_version {version!r}; this alad reads version {readable}. "
            "Re-create it with this version of alad"
        )


def weights_checksums(directory: str | os.PathLike, files: list[str]) -> dict[str, str]:
    """``{relative path: SHA-256}`` of weights files in ``directory``, for an artefact's JSON header."""
    return {name: file_sha256(Path(directory) / name) for name in files}


def verify_weights(
    directory: str | os.PathLike, header: dict[str, Any], files: list[str], header_file: str, what: str = "weights"
) -> None:
    """Check every weights file against the SHA-256 its header records (format version 2).

    A version-1 header predates checksums and says so by its version; any later header without a
    checksum for one of ``files`` is refused, as is a file whose bytes do not match.
    """
    directory = Path(directory)
    if header.get("format_version") == 1:
        return
    sums = header.get(WEIGHTS_SHA256)
    for name in files:
        path = directory / name
        expected = sums.get(name) if isinstance(sums, dict) else None
        if not isinstance(expected, str):
            raise ArtefactError(
                f"{directory / header_file} records no SHA-256 for {name}; the header is damaged or not alad's: "
                "re-create the folder with alad"
            )
        if not path.is_file():
            raise ArtefactError(f"{what} not found: {path}; the folder is incomplete: re-create it")
        if file_sha256(path) != expected:
            raise ArtefactError(
                f"{what} {path} cannot be read (it does not match the SHA-256 recorded in {directory / header_file}), "
                "so the file is corrupt or truncated; re-create it by rerunning the command that saved it"
            )


def save_training_state(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Atomically write a resumable training state (weights, optimiser, schedule, RNG, position)."""
    try:
        atomic_write(path, lambda tmp: torch.save(state, tmp))
    except RuntimeError as err:  # torch reports a full disk as "[enforce fail at inline_container.cc ...]"
        raise _disk_error(path, err) from err


def load_training_state(path: str | os.PathLike) -> dict[str, Any] | None:
    """The saved training state, None when there is none; a corrupt one fails with the fix."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable checkpoint gets the same advice
        raise ArtefactError(f"checkpoint {path} is corrupt ({err}); delete it to restart the run") from err
