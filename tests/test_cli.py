"""Tests for alad.cli: every command end to end on the tiny fixture models and data."""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import re
import types

import pytest
import torch
import yaml
from safetensors.torch import load_file
from tiny_tasks import write_corpus, write_ner_data, write_qa_data, write_recipe

from alad.adapters import AdapterConfig, AlignmentAdapter
from alad.cli import main
from alad.models.encoders import load_encoder

latency_module = importlib.import_module("alad.evaluation.latency")


@pytest.fixture(autouse=True)
def _quick_latency(monkeypatch):
    """measure_latency's full garbage collection costs ~0.25 s per call in a test process; skip it."""
    monkeypatch.setattr(latency_module, "gc", types.SimpleNamespace(collect=lambda *args: 0))


def run_cli(args: list[str]) -> tuple[int, str]:
    """Exit code and stdout of ``alad ARGS`` (for module fixtures, where capsys is not available)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main([str(a) for a in args])
    return code, out.getvalue()


@pytest.fixture(scope="module")
def corpus(sentences, tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus") / "corpus.txt", sentences)


@pytest.fixture(scope="module")
def ner_dir(tmp_path_factory):
    return write_ner_data(tmp_path_factory.mktemp("cli-ner"))


@pytest.fixture(scope="module")
def align_run(bert_dir, roberta_dir, corpus, tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli-align")
    args = ["align", "--student", bert_dir, "--teacher", roberta_dir, "--corpus", corpus, "--windows", "1,3"]
    args += [
        "--epochs",
        "1",
        "--hidden-size",
        "16",
        "--cache-dir",
        folder / "cache",
        "--out",
        folder / "run",
        "--quiet",
    ]
    code, output = run_cli(args)
    return folder / "run", code, output


@pytest.fixture(scope="module")
def teacher_run(bert_dir, ner_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli-teacher") / "run"
    args = ["finetune-teacher", "--teacher", bert_dir, "--out", out, "--task", "ner", "--data", f"conll2003:{ner_dir}"]
    args += ["--epochs", "2", "--batch-size", "8", "--max-train", "none", "--lr-head", "0.01", "--quiet"]
    code, output = run_cli(args)
    return out, code, output


# --------------------------------------------------------------------------------------------------
# align and info


def test_align_prints_the_table(align_run):
    out, code, output = align_run
    assert code == 0
    assert "| window | params | cosine before | cosine after | MSE before | MSE after | best epoch |" in output
    assert re.search(r"^\| 1 \| [\d,]+ \| -?\d\.\d{4} \| -?\d\.\d{4} \|", output, re.M)
    assert re.search(r"^\| 3 \| [\d,]+ \| ", output, re.M)
    assert f"adapters saved under {out.resolve()}/w<K>" in output
    for window, student_dim in ((1, 32), (3, 32)):
        adapter = AlignmentAdapter.from_pretrained(out / f"w{window}")
        assert (adapter.config.window, adapter.config.student_dim, adapter.config.teacher_dim) == (
            window,
            student_dim,
            48,
        )
        assert adapter.config.hidden_size == 16
    saved = json.loads((out / "run_config.json").read_text())["config"]
    assert saved["windows"] == [1, 3] and saved["epochs"] == 1
    assert (out / "alignment_curves.png").is_file()


def test_info_on_adapter_and_run_folders(align_run, capsys, tmp_path):
    out, _, _ = align_run
    assert main(["info", str(out / "w3")]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"alignment adapter: {out / 'w3'}\n  type: mlp\n")
    assert "window K=3, student_dim=32 -> teacher_dim=48, hidden=16, gelu" in text
    assert f"parameters: {AlignmentAdapter.from_pretrained(out / 'w3').num_parameters():,}" in text
    assert re.search(r"best epoch 1: held-out cosine -?\d\.\d{4}", text)

    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"alignment run: {out}") and "| window | params |" in text and "| 3 |" in text

    assert main(["info", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["info", str(tmp_path)]) == 2
    assert "is none of what alad info describes: an adapter folder (adapter_config.json)" in capsys.readouterr().err


def test_align_on_squad_question_context_pairs(bert_dir, roberta_dir, tmp_path, capsys):
    """With an attention adapter, which reads across question and context."""
    squad = write_qa_data(tmp_path / "squad") / "train-v2.0.json"
    args = ["align", "--student", bert_dir, "--teacher", roberta_dir, "--corpus", squad, "--windows", "1"]
    args += ["--corpus-format", "squad-pairs", "--align-special-tokens", "true", "--epochs", "1"]
    args += ["--adapter-type", "attention", "--attention-dim", "8", "--attention-heads", "2"]
    args += ["--hidden-size", "16", "--cache-dir", tmp_path / "cache", "--out", tmp_path / "run", "--quiet"]
    code, output = run_cli(args)
    assert code == 0, output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["num_texts"] == 10  # one (question, context) pair per question
    assert summary["unpaired_student_tokens"] == 0  # [CLS]/[SEP] are paired with <s>/</s> by role
    saved = json.loads((tmp_path / "run" / "run_config.json").read_text())["config"]
    assert saved["corpus_format"] == "squad-pairs" and saved["align_special_tokens"] is True
    assert (saved["adapter_type"], saved["attention_dim"], saved["attention_heads"]) == ("attention", 8, 2)
    assert summary["adapter"] == {"adapter_type": "attention", "attention_dim": 8, "attention_heads": 2}
    assert "(attention adapters, attention_dim 8, attention_heads 2)" in output
    assert type(AlignmentAdapter.from_pretrained(tmp_path / "run" / "w1")).__name__ == "WindowAttentionAdapter"
    assert main(["info", str(tmp_path / "run" / "w1")]) == 0
    assert "\n  type: attention (attention_dim=8, attention_heads=2)\n" in capsys.readouterr().out


def test_bad_adapter_type_options_exit_2_in_one_line(tmp_path, capsys):
    for flags, message in [
        (["--adapter-type", "lstm"], "adapter_type 'lstm' is not one of attention, mlp"),
        (["--attention-dim", "64"], "attention_dim=64 is only read by adapter_type 'attention'"),
        (["--adapter-type", "attention", "--attention-dim", "10"], "attention_dim (10) must be divisible by"),
    ]:
        assert main(["align", *flags, "--out", str(tmp_path / "run"), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("alad align: error:") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()


def test_device_without_a_gpu_exits_2_before_writing(bert_dir, roberta_dir, corpus, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    args = ["align", "--student", bert_dir, "--teacher", roberta_dir, "--corpus", corpus, "--device", "cuda"]
    assert main([str(a) for a in args + ["--out", tmp_path / "run", "--quiet"]]) == 2
    assert "alad align: error: device 'cuda' was asked for" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_even_window_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["align", "--windows", "2"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --windows" in err and "window sizes must be odd integers >= 1" in err and "'2'" in err
    with pytest.raises(SystemExit) as exit_info:
        main(["align", "--epochs", "many"])
    assert exit_info.value.code == 2
    assert "--epochs takes a int, got 'many'" in capsys.readouterr().err


def test_missing_corpus_exits_2(bert_dir, roberta_dir, tmp_path, capsys):
    args = ["align", "--student", str(bert_dir), "--teacher", str(roberta_dir), "--corpus", str(tmp_path / "nope.txt")]
    assert main([*args, "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("alad align: error:") and "no such file" in err and "nope.txt" in err


def test_config_file_values_are_used_and_flags_override_them(bert_dir, roberta_dir, corpus, tmp_path, capsys):
    config = tmp_path / "run.yaml"
    values = {"student": str(bert_dir), "teacher": str(roberta_dir), "corpus": str(corpus), "windows": [1]}
    values.update({"epochs": 1, "max-texts": 30, "hidden_size": 8, "cache_dir": str(tmp_path / "cache")})
    config.write_text(yaml.safe_dump(values), encoding="utf-8")
    out = tmp_path / "run"
    assert main(["align", "--config", str(config), "--hidden-size", "12", "--out", str(out), "--quiet"]) == 0
    assert "| 1 |" in capsys.readouterr().out
    saved = json.loads((out / "run_config.json").read_text())["config"]
    assert (saved["windows"], saved["epochs"], saved["max_texts"]) == ([1], 1, 30)  # from the file
    assert saved["hidden_size"] == 12  # the flag wins over the file
    assert AlignmentAdapter.from_pretrained(out / "w1").config.hidden_size == 12
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_texts"] == 30

    config.write_text(yaml.safe_dump({**values, "learning_rate": 1}), encoding="utf-8")
    assert main(["align", "--config", str(config), "--out", str(tmp_path / "other")]) == 2
    assert "unknown options ['learning_rate']" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# compress


def test_compress(bert_dir, tmp_path, capsys):
    out = tmp_path / "cut"
    assert main(["compress", "--model", str(bert_dir), "--keep-layers", "1", "--out", str(out)]) == 0
    assert f"kept layers [1] of {bert_dir}: {out}" in capsys.readouterr().out
    encoder = load_encoder(out)
    assert encoder.model.config.num_hidden_layers == 1
    source, cut = load_file(str(bert_dir / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert len(cut) == len(source) - sum(name.startswith("encoder.layer.0.") for name in source) > 10
    for name, tensor in cut.items():
        original = name.replace("encoder.layer.0.", "encoder.layer.1.")
        assert torch.equal(tensor, source[original]), name
    assert main(["compress", "--model", str(bert_dir), "--keep-layers", "0,5", "--out", str(tmp_path / "x")]) == 2
    assert "out of range [5]" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# fine-tuning, evaluation and prediction


def test_finetune_teacher(teacher_run, bert_dir):
    out, code, output = teacher_run
    assert code == 0
    result = json.loads((out / "metrics.json").read_text())
    assert output.startswith(f"ner (joint) on dev: micro_f1 {result['headline']['micro_f1']:.2f}, macro_f1 ")
    assert f"parameters: {result['params_total']:,} total, {result['params_total']:,} trained" in output
    assert "| type | precision | recall | f1 | support |" in output
    assert f"model saved to {out / 'model'}" in output
    config = json.loads((out / "finetune_config.json").read_text())["config"]
    assert (config["student"], config["mode"], config["adapter"], config["max_train"]) == (
        str(bert_dir),
        "joint",
        None,
        None,
    )
    assert (config["epochs"], config["lr_head"]) == (2, 0.01)


def test_finetune_teacher_head_trains_nothing(teacher_run, bert_dir, ner_dir, tmp_path, capsys):
    teacher, _, _ = teacher_run
    adapter = AlignmentAdapter(AdapterConfig(student_dim=32, teacher_dim=32, hidden_size=16))
    adapter.save_pretrained(tmp_path / "adapter")
    args = ["finetune", "--student", str(bert_dir), "--adapter", str(tmp_path / "adapter"), "--teacher", str(teacher)]
    args += [
        "--mode",
        "teacher-head",
        "--task",
        "ner",
        "--data",
        f"conll2003:{ner_dir}",
        "--out",
        str(tmp_path / "run"),
    ]
    assert main([*args, "--quiet"]) == 0
    output = capsys.readouterr().out
    assert output.startswith("ner (teacher-head) on dev: micro_f1 ")
    assert re.search(r"parameters: [\d,]+ total, 0 trained", output)
    # the mode needs its adapter: a config error is reported, not a traceback
    assert main(["finetune", "--mode", "head-only", "--out", str(tmp_path / "bad")]) == 2
    assert "mode 'head-only' needs --adapter" in capsys.readouterr().err


def test_evaluate(teacher_run, capsys):
    out, _, _ = teacher_run
    assert main(["evaluate", str(out), "--split", "dev", "--quiet"]) == 0
    output = capsys.readouterr().out
    result = json.loads((out / "metrics.json").read_text())
    headline = result["headline"]
    assert output.startswith(
        f"ner (joint) on dev: micro_f1 {headline['micro_f1']:.2f}, macro_f1 {headline['macro_f1']:.2f}"
    )
    assert f"parameters: {result['params_total']:,} total, 0 trained" in output
    assert re.search(r"CPU latency \(median\): batch 1: \d+\.\d ms, batch 32: \d+\.\d ms", output)
    assert "**micro avg**" in output
    assert main(["evaluate", str(out), "--split", "test", "--max-eval", "3", "--quiet"]) == 0
    assert capsys.readouterr().out.startswith("ner (joint) on test: micro_f1 ")
    assert main(["evaluate", str(out.parent / "missing")]) == 2
    assert "is not a fine-tuning run folder" in capsys.readouterr().err
    assert main(["info", str(out)]) == 0
    info = capsys.readouterr().out
    assert info.startswith(f"fine-tuning run: {out}\nner (joint) on dev: ")
    assert f"micro_f1 {headline['micro_f1']:.2f}" in info and "**micro avg**" in info


def test_predict_tags_words(teacher_run, capsys):
    out, _, _ = teacher_run
    assert main(["predict", str(out), "the Teacher walked to the City"]) == 0
    line = capsys.readouterr().out.strip()
    pairs = [token.rsplit("/", 1) for token in line.split(" ")]
    assert [word for word, _ in pairs] == ["the", "Teacher", "walked", "to", "the", "City"]
    assert all(tag in ("O", "B-LOC", "B-PER") for _, tag in pairs)
    assert main(["predict", str(out), "   "]) == 2
    assert "the text to tag is empty" in capsys.readouterr().err
    assert main(["predict", str(out)]) == 2
    assert "pass the sentence to tag" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# the recipe


def test_run_recipe(bert_dir, sentences, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ALAD_CACHE", str(tmp_path / "cache"))
    path = write_recipe(tmp_path, bert_dir, sentences)
    out = tmp_path / "run"
    assert main(["run", str(path), "--profile", "quick", "--out", str(out), "--quiet"]) == 0
    output = capsys.readouterr().out
    assert "\n# NER results, profile quick" in "\n" + output  # after the pair warnings, if any
    assert "| AlAd w1, teacher-head |" in output and "| random-init adapter w1, joint |" in output
    assert f"results: {out / 'results.md'}, {out / 'results.json'}" in output
    assert (out / "results.md").read_text() in output
    assert len(json.loads((out / "results.json").read_text())["rows"]) == 9
    assert main(["run", str(path), "--profile", "full", "--out", str(out), "--quiet"]) == 2
    assert "has no profile 'full'" in capsys.readouterr().err


def test_a_runs_saved_finetune_config_is_a_config_file(tmp_path):
    import argparse

    from alad.cli import build_config
    from alad.finetuning.trainer import FINETUNE_CONFIG, FinetuneConfig
    from alad.io.serialization import config_to_dict

    saved = FinetuneConfig(task="qa", data="squad", max_train=12000, squad_negatives=0.05, lr_head=5e-4)
    path = tmp_path / FINETUNE_CONFIG
    path.write_text(json.dumps({"kind": "finetune_run", "config": config_to_dict(saved)}), encoding="utf-8")
    again = build_config(FinetuneConfig, argparse.Namespace(config=str(path), squad_negative_kind="answer_removed"))
    assert again == FinetuneConfig(**{**config_to_dict(saved), "squad_negative_kind": "answer_removed"})
