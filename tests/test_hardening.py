"""One test (or a few) per item of the hardening issue: no lost files, no silent wrong data, no
evaluation on training data, no garbage saved, no undetected corruption, no writing outside the output
folder, one-line messages instead of tracebacks, and the smaller fixes (config left by a failed run,
cache folder as no setting, stale .tmp files, a lock per cache entry)."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import threading
import time
from pathlib import Path

import pytest
import torch
from tiny_tasks import write_corpus, write_ner_data, write_recipe

from alad.adapters import AdapterConfig, AlignmentAdapter
from alad.alignment import trainer as alignment_module
from alad.alignment.cache import EmbeddingCache, _key_directory, cache_key
from alad.alignment.trainer import AlignConfig, align
from alad.cli import main
from alad.data.readers import detect_format, read_texts
from alad.data.task_data import split_single_file
from alad.finetuning import trainer as finetuning_module
from alad.finetuning.trainer import FinetuneConfig, load_splits
from alad.io.file_lock import file_lock
from alad.io.run_folder import MARKER, RunFolderError, check_path_name, claim_run_folder, remove_own_files
from alad.io.serialization import ArtefactError
from alad.models.task_model import AladTaskModel


def run_cli(args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def align_args(bert_dir, roberta_dir, corpus, tmp_path, out):
    return ["align", "--student", bert_dir, "--teacher", roberta_dir, "--corpus", corpus, "--windows", "1"] + [
        "--epochs",
        "1",
        "--hidden-size",
        "8",
        "--cache-dir",
        tmp_path / "cache",
        "--out",
        out,
        "--quiet",
    ]


@pytest.fixture()
def corpus(sentences, tmp_path):
    return write_corpus(tmp_path / "corpus.txt", sentences)


# ------------------------------------------------------------------------------ 1. no lost files


def test_align_keeps_a_users_file_in_the_checkpoint_folder(bert_dir, roberta_dir, corpus, tmp_path):
    out = tmp_path / "run"
    config = AlignConfig(student=str(bert_dir), teacher=str(roberta_dir), corpus=str(corpus), windows=(1,))
    config = AlignConfig(**{**config.__dict__, "epochs": 1, "hidden_size": 8, "cache_dir": str(tmp_path / "cache")})
    assert "interrupted_at_step" in align(out, config, show_progress=False, stop_after_steps=1)
    assert json.loads((out / MARKER).read_text())["kind"] == "alignment_run"
    (out / "checkpoint" / "notes.txt").write_text("mine")
    summary = align(out, config, show_progress=False)
    assert "windows" in summary
    assert (out / "checkpoint" / "notes.txt").read_text() == "mine"  # the user's file survives
    assert not (out / "checkpoint" / "state.pt").exists()  # alad's own checkpoint is gone


def test_align_and_finetune_refuse_a_folder_that_is_not_theirs(bert_dir, roberta_dir, corpus, tmp_path):
    user = tmp_path / "user"
    user.mkdir()
    (user / "data.csv").write_text("1,2\n")
    code, _, err = run_cli(align_args(bert_dir, roberta_dir, corpus, tmp_path, user))
    assert code == 2 and "is not an alad run folder (it holds data.csv)" in err
    ner = write_ner_data(tmp_path / "ner")
    code, _, err = run_cli(
        ["finetune", "--student", bert_dir, "--data", f"conll2003:{ner}", "--epochs", "1", "--out", user, "--quiet"]
    )
    assert code == 2 and "is not an alad run folder" in err
    assert sorted(p.name for p in user.iterdir()) == ["data.csv"]


def test_an_older_run_folder_without_marker_is_still_alads(bert_dir, roberta_dir, corpus, tmp_path):
    out = tmp_path / "run"
    assert run_cli(align_args(bert_dir, roberta_dir, corpus, tmp_path, out))[0] == 0
    (out / MARKER).unlink()  # as written by an alad from before the marker
    code, output, err = run_cli(align_args(bert_dir, roberta_dir, corpus, tmp_path, out))
    assert code == 0, err
    assert "| 1 |" in output


def test_claim_and_remove_only_own_files(tmp_path):
    run = claim_run_folder(tmp_path / "run", "finetune_run")
    with pytest.raises(RunFolderError, match="holds a fine-tuning run, not an alignment run"):
        claim_run_folder(run, "alignment_run")
    (run / "sub").mkdir()
    (run / "sub" / "a.pt").write_text("alad")
    (run / "sub" / ".a.pt.x1y2z3w4.tmp").write_text("half written")
    remove_own_files(run, "sub", ["a.pt"])
    assert not (run / "sub").exists()
    foreign = tmp_path / "foreign"
    (foreign / "sub").mkdir(parents=True)
    (foreign / "sub" / "a.pt").write_text("not alad's")
    with pytest.raises(ArtefactError, match="alad deletes nothing in it"):
        remove_own_files(foreign, "sub", ["a.pt"])
    assert (foreign / "sub" / "a.pt").exists()


# ------------------------------------------------------------------- 2. format detection is certain


def test_four_word_lines_are_text_not_conll(tmp_path, caplog):
    lines = [f"we saw {i} cats" for i in range(50)]
    path = tmp_path / "four.txt"
    path.write_text("\n".join(lines) + "\n")
    assert detect_format(path) == "text"
    with caplog.at_level(logging.WARNING, logger="alad.data.readers"):
        assert read_texts(path) == lines  # 50 texts, not 1 text of first words
    assert "read as text (auto-detected: 4 words per line, but the last is no tag" in caplog.text
    tagged = tmp_path / "tagged.txt"
    tagged.write_text("\n".join(f"w{i} NN B-NP {'B-PER' if i % 2 else 'O'}" for i in range(10)) + "\n")
    assert detect_format(tagged) == "conll2003"
    named = tmp_path / "mine.conll"
    named.write_text("\n".join(lines[:5]) + "\n")
    assert detect_format(named) == "conll2003"  # the name says so


# -------------------------------------------------------------- 3. one file: disjoint train / eval


def test_a_single_file_is_split_into_disjoint_parts(tmp_path):
    folder = write_ner_data(tmp_path / "ner", n_train=40)
    config = FinetuneConfig(data=f"conll2003:{folder / 'train.txt'}", max_train=None)
    splits = load_splits(config)
    info = splits.info["single_file_split"]
    assert (info["train_items"], info["eval_items"], info["seed"]) == (36, 4, 0)
    assert (len(splits.train), len(splits.eval)) == (36, 4)
    ids = {id(s) for s in splits.train}
    assert not any(id(s) in ids for s in splits.eval)  # no item is in both
    items = list(range(30))
    train, evaluation, _ = split_single_file(items, seed=3, name="x")
    assert not set(train) & set(evaluation) and sorted(train + evaluation) == items
    assert split_single_file(items, seed=3, name="x")[1] == evaluation  # the same by seed
    with pytest.raises(ValueError, match="needs at least 2"):
        split_single_file(items[:1], seed=0, name="one.txt")


def test_single_file_finetune_states_the_split(bert_dir, tmp_path):
    folder = write_ner_data(tmp_path / "ner", n_train=20)
    out = tmp_path / "run"
    code, _, err = run_cli(
        ["finetune", "--student", bert_dir, "--data", f"conll2003:{folder / 'train.txt'}", "--epochs", "1"]
        + ["--max-train", "none", "--out", out, "--quiet"]
    )
    assert code == 0, err
    data = json.loads((out / "metrics.json").read_text())["data"]
    assert data["single_file_split"]["eval_items"] == 2 and data["train_items"] == 18


# ------------------------------------------------------------------- 4. no garbage saved, NaN stops


def test_nan_loss_stops_finetune_with_the_step_and_saves_nothing(bert_dir, tmp_path, monkeypatch):
    real = finetuning_module.training_loss
    calls = {"n": 0}

    def poisoned(*args):
        calls["n"] += 1
        loss = real(*args)
        return loss * float("nan") if calls["n"] >= 2 else loss

    monkeypatch.setattr(finetuning_module, "training_loss", poisoned)
    ner = write_ner_data(tmp_path / "ner")
    out = tmp_path / "run"
    code, _, err = run_cli(
        ["finetune", "--student", bert_dir, "--data", f"conll2003:{ner}", "--epochs", "1", "--batch-size", "4"]
        + ["--out", out, "--quiet"]
    )
    assert code == 2
    assert "the loss became nan at step 2 (epoch 1)" in err and "Lower the learning rate" in err
    assert not (out / "model").exists() and not (out / "metrics.json").exists()


def test_nan_loss_stops_align_before_any_best_adapter(bert_dir, roberta_dir, corpus, tmp_path, monkeypatch):
    real = alignment_module.alignment_loss
    monkeypatch.setattr(alignment_module, "alignment_loss", lambda *a, **k: real(*a, **k) * float("inf"))
    out = tmp_path / "run"
    code, _, err = run_cli(align_args(bert_dir, roberta_dir, corpus, tmp_path, out))
    assert code == 2 and "the loss became inf at step 1 (epoch 1)" in err and "--lr" in err
    assert not (out / "w1").exists()


def test_non_finite_settings_fail_before_any_work(tmp_path):
    for bad in ({"lr": float("inf")}, {"lr": float("nan")}, {"epochs": 0}, {"warmup_ratio": float("nan")}):
        with pytest.raises(ValueError, match="must be"):
            AlignConfig(**bad)
    for bad in ({"lr_head": float("nan")}, {"lr_encoder": float("inf")}, {"epochs": -1}, {"batch_size": 0}):
        with pytest.raises(ValueError, match="must be"):
            FinetuneConfig(**bad)


# ------------------------------------------------------------- 5. checksums of every weights file


def test_flipped_bytes_in_adapter_weights_are_detected(tmp_path):
    adapter = AlignmentAdapter(AdapterConfig(student_dim=4, teacher_dim=6, hidden_size=8))
    adapter.save_pretrained(tmp_path / "a")
    header = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert header["format_version"] == 2 and len(header["weights_sha256"]["adapter.safetensors"]) == 64
    weights = tmp_path / "a" / "adapter.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # one bit of one weight: safetensors itself loads this silently
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtefactError, match="does not match the SHA-256 recorded"):
        AlignmentAdapter.from_pretrained(tmp_path / "a")


def test_older_headers_load_only_when_they_say_so(tmp_path):
    adapter = AlignmentAdapter(AdapterConfig(student_dim=4, teacher_dim=6, hidden_size=8))
    adapter.save_pretrained(tmp_path / "a")
    path = tmp_path / "a" / "adapter_config.json"
    header = json.loads(path.read_text())
    del header["weights_sha256"]
    path.write_text(json.dumps(header))
    with pytest.raises(ArtefactError, match="records no SHA-256 for adapter.safetensors"):
        AlignmentAdapter.from_pretrained(tmp_path / "a")
    header["format_version"] = 1  # an adapter saved before checksums: its version says so
    path.write_text(json.dumps(header))
    assert AlignmentAdapter.from_pretrained(tmp_path / "a").config.window == 3


def test_task_model_checksums_cover_encoder_adapter_and_head(bert_dir, tmp_path):
    from alad.models.task_model import build_task_model

    adapter = AlignmentAdapter(AdapterConfig(student_dim=32, teacher_dim=16, hidden_size=8))
    model = build_task_model("ner", bert_dir, ("O", "B-PER"), adapter=adapter, mode="frozen")
    model.save_pretrained(tmp_path / "m")
    sums = json.loads((tmp_path / "m" / "task_config.json").read_text())["weights_sha256"]
    assert set(sums) == {"adapter/adapter.safetensors", "encoder/model.safetensors", "head.safetensors"}
    encoder = tmp_path / "m" / "encoder" / "model.safetensors"
    original = encoder.read_bytes()
    encoder.write_bytes(original[: len(original) - 7])  # truncated
    with pytest.raises(ArtefactError, match="encoder/model.safetensors cannot be read"):
        AladTaskModel.from_pretrained(tmp_path / "m")
    encoder.write_bytes(original)
    assert AladTaskModel.from_pretrained(tmp_path / "m").config.labels == ("O", "B-PER")


# ---------------------------------------------------------------- 6. nothing outside the output folder


def test_pair_named_dotdot_writes_nothing_above_out(bert_dir, sentences, tmp_path):
    import yaml

    path = write_recipe(tmp_path, bert_dir, sentences)
    recipe = yaml.safe_load(path.read_text())
    recipe["pairs"][0]["name"] = "../x"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "runs" / "out"
    code, _, err = run_cli(["run", path, "--out", out, "--quiet"])
    assert code == 2 and "pair name '../x' cannot be a folder name" in err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "x").exists()
    for good in ("minilm-l2", "pair_b.v2"):
        assert check_path_name(good, "pair name") == good
    for bad in ("..", "../x", "/abs", "a/b", "a\\b", "", ".hidden"):
        with pytest.raises(ValueError, match="pair name"):
            check_path_name(bad, "pair name")


# ------------------------------------------------------------------- 7. messages, not tracebacks


def test_read_only_output_folder_is_refused_before_work(bert_dir, roberta_dir, corpus, tmp_path, monkeypatch):
    import alad.io.run_folder as run_folder

    real_access = run_folder.os.access
    read_only = tmp_path / "ro"
    read_only.mkdir()
    monkeypatch.setattr(
        run_folder.os, "access", lambda p, mode: False if Path(p) == read_only else real_access(p, mode)
    )
    code, _, err = run_cli(align_args(bert_dir, roberta_dir, corpus, tmp_path, read_only / "run"))
    assert code == 2
    assert f"{read_only} is not writable; choose a writable --out" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(align_args(bert_dir, roberta_dir, corpus, read_only, tmp_path / "run2"))
    assert code == 2 and "choose a writable --cache-dir" in err
    assert not (tmp_path / "run2").exists()


def test_full_disk_in_finetune_is_one_line(bert_dir, tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise RuntimeError(
            "[enforce fail at inline_container.cc:626] . unexpected pos 512 vs 448\n"
            "frame #0: c10::ThrowEnforceNotMet(...)"
        )

    monkeypatch.setattr(torch, "save", full)
    ner = write_ner_data(tmp_path / "ner")
    code, _, err = run_cli(
        ["finetune", "--student", bert_dir, "--data", f"conll2003:{ner}", "--epochs", "1"]
        + ["--checkpoint-every", "1", "--out", tmp_path / "run", "--quiet"]
    )
    assert code == 2
    assert "checkpoint.pt: the disk is full or the folder is not writable" in err and "free space" in err
    assert "inline_container" not in err and len(err.strip().splitlines()) == 1


def test_enospc_and_permission_errors_become_messages(monkeypatch):
    import errno

    from alad.cli import user_error

    assert "no space left on the disk (/x/f)" in user_error(OSError(errno.ENOSPC, "No space left on device", "/x/f"))
    assert "permission denied (/x)" in user_error(PermissionError(errno.EACCES, "Permission denied", "/x"))
    assert user_error(OSError(errno.EIO, "Input/output error")) is None  # unexpected: keeps its traceback


def test_a_genuine_bug_keeps_its_traceback(monkeypatch):
    import alad.cli as cli

    def bug(args):
        raise KeyError("bug")

    monkeypatch.setattr(cli, "describe", lambda path: bug(path))
    with pytest.raises(KeyError):
        main(["info", "x"])


# --------------------------------------------------------------------------------- 8. smaller fixes


def test_a_failed_finetune_does_not_block_its_corrected_rerun(bert_dir, tmp_path, monkeypatch):
    ner = write_ner_data(tmp_path / "ner")
    bad_dev = write_ner_data(tmp_path / "ner-bad", extra_dev_tag="B-XYZ")  # a dev label unseen in training
    out = tmp_path / "run"
    base = ["finetune", "--student", bert_dir, "--epochs", "1", "--max-train", "8", "--out", out, "--quiet"]
    code, _, err = run_cli([*base, "--data", f"conll2003:{bad_dev}"])
    assert code == 2 and "B-XYZ" in err, err
    assert not out.exists()  # bad data is found before anything is written
    real = finetuning_module.training_loss
    monkeypatch.setattr(finetuning_module, "training_loss", lambda *args: real(*args) * float("nan"))
    code, _, err = run_cli([*base, "--data", f"conll2003:{ner}", "--lr-head", "5"])
    assert code == 2 and "the loss became nan at step 1" in err
    assert (out / "finetune_config.json").is_file()  # the failed run's config is left behind ...
    monkeypatch.setattr(finetuning_module, "training_loss", real)
    code, _, err = run_cli([*base, "--data", f"conll2003:{ner}"])  # ... and does not refuse the corrected rerun
    assert code == 0, err
    assert json.loads((out / "finetune_config.json").read_text())["config"]["lr_head"] == 0.001


def test_moving_the_cache_does_not_refuse_the_resume(bert_dir, roberta_dir, corpus, tmp_path):
    config = AlignConfig(
        student=str(bert_dir), teacher=str(roberta_dir), corpus=str(corpus), windows=(1,), epochs=1, hidden_size=8
    )
    out = tmp_path / "run"
    first = AlignConfig(**{**config.__dict__, "cache_dir": str(tmp_path / "cache-a")})
    assert "interrupted_at_step" in align(out, first, show_progress=False, stop_after_steps=1)
    moved = AlignConfig(**{**config.__dict__, "cache_dir": str(tmp_path / "cache-b")})
    assert "windows" in align(out, moved, show_progress=False)


def test_stale_tmp_files_of_a_killed_cache_write_are_removed(bert, tmp_path, sentences):
    cache = EmbeddingCache(tmp_path / "cache")
    cache.embed(bert, sentences[:6], show_progress=False)
    entry = _key_directory(cache.root, cache_key(bert, sentences[:6], -1))
    stale = entry / ".shard-00001.safetensors.k1ll3d_x.tmp"
    stale.write_bytes(b"half")
    cache.embed(bert, sentences[:6], show_progress=False)
    assert not stale.exists()


def test_a_cache_entry_is_built_under_a_lock(bert, tmp_path, sentences):
    cache = EmbeddingCache(tmp_path / "cache")
    entry = _key_directory(cache.root, cache_key(bert, sentences[:4], -1))
    finished = threading.Event()

    def build():
        cache.embed(bert, sentences[:4], show_progress=False)
        finished.set()

    with file_lock(entry.parent / f"{entry.name}.lock"):
        worker = threading.Thread(target=build)
        worker.start()
        time.sleep(0.5)
        assert not finished.is_set()  # waits for the other holder of the entry
    worker.join(timeout=30)
    assert finished.is_set()


# ------------------------------------------------------------------------------ 9. README against code


def test_readme_says_what_the_code_does(capsys):
    from alad.models.encoders import cache_root

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    assert "## Guarantees" in readme
    assert "split at whitespace (never" not in readme and "inside a long run without" in readme
    assert "CPU latency (batch 1 and 32) and cosine to the teacher" not in readme
    assert "reference states are embedded on the CPU" in readme
    assert EmbeddingCache().root == cache_root() / "embeddings"
    with pytest.raises(SystemExit):
        main(["align", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "embedding cache folder (default ~/.cache/alad/embeddings; not a run setting)" in help_text


def test_corrupt_weights_of_a_compressed_model_are_refused(bert_dir, tmp_path):
    from alad.compression.layer_dropping import drop_layers
    from alad.models.encoders import load_encoder

    out = drop_layers(bert_dir, [0], tmp_path / "cut")
    weights = out / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-2] ^= 0x10
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtefactError, match="do not match the SHA-256 alad recorded"):
        load_encoder(out)


def test_runtime_errors_from_inside_torch_keep_their_traceback():
    from alad.cli import user_error

    try:
        torch.zeros(2, 3) @ torch.zeros(2, 3)  # a shape bug inside torch
    except RuntimeError as err:
        assert user_error(err) is None
    assert "lower --batch-size" in user_error(RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"))
