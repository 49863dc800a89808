"""Tests for alad export: a tiny tagger (student + adapter + head) as one ONNX graph that matches PyTorch,
run by alad predict / evaluate through onnxruntime; int8 export; bad inputs refused in one line."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from tiny_tasks import write_ner_data

pytest.importorskip("onnxruntime", reason="ONNX export tests need onnxruntime (pip install onnx onnxruntime)")
pytest.importorskip("onnxscript", reason="ONNX export tests need onnxscript (torch.onnx.export with dynamo=True)")

from alad.adapters import AdapterConfig, AlignmentAdapter  # noqa: E402
from alad.cli import main  # noqa: E402
from alad.compression import compress  # noqa: E402
from alad.data.readers import TaggedSentence  # noqa: E402
from alad.export import OnnxTaskModel, export_onnx  # noqa: E402
from alad.finetuning.trainer import FinetuneConfig, finetune, load_run, predict_tags  # noqa: E402


@pytest.fixture(scope="module")
def ner_dir(tmp_path_factory):
    return write_ner_data(tmp_path_factory.mktemp("ner-data"))


def _adapted_run(folder, bert_dir, ner_dir, **options):
    torch.manual_seed(0)
    adapter = AlignmentAdapter(AdapterConfig(student_dim=32, teacher_dim=40, window=3, hidden_size=24, **options))
    if options.get("adapter_type") == "attention":  # as if aligned: the attention block acts from the start
        with torch.no_grad():
            adapter.attention_out.weight.normal_(0.0, 0.3)
    adapter.save_pretrained(folder / "adapter")
    config = FinetuneConfig(
        task="ner",
        student=str(bert_dir),
        adapter=str(folder / "adapter"),
        mode="frozen",
        data=f"conll2003:{ner_dir}",
        eval_split="dev",
        epochs=2,
        batch_size=8,
    )
    finetune(folder / "run", config, show_progress=False)
    return folder / "run"


@pytest.fixture(scope="module")
def adapted_run(bert_dir, ner_dir, tmp_path_factory):
    """A frozen-mode tagger with an adapter (32 -> 40 dims, window 3): the whole graph is exported."""
    return _adapted_run(tmp_path_factory.mktemp("export-run"), bert_dir, ner_dir)


@pytest.fixture(scope="module")
def exported(adapted_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("exports") / "fp32"
    header = export_onnx(adapted_run, out)
    return out, header


def test_export_writes_graph_tokenizer_labels_and_parity(exported, adapted_run):
    out, header = exported
    for name in ("model.onnx", "export.json", "labels.json", "parity.json", "tokenizer.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "labels.json").read_text()) == {"task": "ner", "labels": ["O", "B-LOC", "B-PER"]}
    parity = json.loads((out / "parity.json").read_text())
    assert parity["fp32"]["passed"] and parity["fp32"]["prediction_agreement"] == 1.0
    assert parity["fp32"]["max_abs_logit_diff"] < 1e-4 and parity["fp32"]["compared"] > 50
    assert header["has_adapter"] and header["quantize"] is None and header["opset"] >= 17
    assert header["adapter_type"] == "mlp"
    model, _ = load_run(adapted_run)
    assert header["params_total"] == model.num_parameters()


def test_onnx_logits_match_pytorch_at_any_batch_and_length(exported, adapted_run):
    out, _ = exported
    _check_logits_match(OnnxTaskModel.from_folder(out), load_run(adapted_run)[0])


def _check_logits_match(onnx_model, model) -> None:
    generator = torch.Generator().manual_seed(3)
    for batch, length in [(1, 3), (1, 17), (5, 9), (33, 40)]:
        ids = torch.randint(5, 60, (batch, length), generator=generator)
        mask = torch.ones_like(ids)
        if batch > 1:
            mask[1:, length // 2 :] = 0
        with torch.inference_mode():
            expected = model(ids, mask)
        found = onnx_model(ids, mask)
        assert found.shape == expected.shape
        real = mask.bool()
        assert torch.allclose(found[real], expected[real], atol=1e-4), (batch, length)


def test_export_of_a_run_with_an_attention_adapter(bert_dir, ner_dir, tmp_path, capsys):
    """The window MLP + masked self-attention adapter exports as one graph, padding masking included."""
    from alad.adapters import WindowAttentionAdapter

    run = _adapted_run(tmp_path, bert_dir, ner_dir, adapter_type="attention", attention_dim=16, attention_heads=4)
    model, _ = load_run(run)
    assert type(model.adapter) is WindowAttentionAdapter and model.adapter.attention_out.weight.abs().sum() > 0
    header = export_onnx(run, tmp_path / "onnx")
    assert header["adapter_type"] == "attention" and header["params_total"] == model.num_parameters()
    parity = json.loads((tmp_path / "onnx" / "parity.json").read_text())["fp32"]
    assert parity["passed"] and parity["prediction_agreement"] == 1.0 and parity["compared"] > 50
    assert parity["max_abs_logit_diff"] < 1e-4
    _check_logits_match(OnnxTaskModel.from_folder(tmp_path / "onnx"), model)
    assert main(["info", str(tmp_path / "onnx")]) == 0
    assert "  adapter_type: attention" in capsys.readouterr().out


def test_predict_and_evaluate_run_the_export_with_onnxruntime(exported, adapted_run, capsys):
    out, _ = exported
    sentence = "the Teacher walked to the City in the morning ."
    assert main(["predict", str(adapted_run), sentence]) == 0
    from_run = capsys.readouterr().out
    assert main(["predict", str(out), sentence]) == 0
    assert capsys.readouterr().out == from_run
    assert main(["evaluate", str(adapted_run), "--split", "dev", "--quiet"]) == 0
    run_text = capsys.readouterr().out
    assert main(["evaluate", str(out), "--split", "dev", "--quiet"]) == 0
    onnx_text = capsys.readouterr().out
    assert run_text.splitlines()[0] == onnx_text.splitlines()[0]  # the same metrics line
    assert "CPU latency" in onnx_text


def test_tags_identical_on_the_evaluation_set(exported, adapted_run, ner_dir):
    from alad.finetuning.trainer import load_splits

    out, _ = exported
    model, config = load_run(adapted_run)
    items = load_splits(config).eval
    assert predict_tags(OnnxTaskModel.from_folder(out), items) == predict_tags(model, items)


def test_int8_export(adapted_run, tmp_path, capsys):
    out = tmp_path / "int8"
    assert main(["export", str(adapted_run), "--out", str(out), "--quantize", "int8", "--parity-items", "5"]) == 0
    assert "int8" in capsys.readouterr().out
    parity = json.loads((out / "parity.json").read_text())
    assert parity["fp32"]["passed"] and 0 <= parity["int8"]["prediction_agreement"] <= 1
    assert json.loads((out / "export.json").read_text())["quantize"] == "int8"
    words = ["the", "Student", "saw", "the", "dog", "in", "the", "Park", "."]
    assert len(predict_tags(OnnxTaskModel.from_folder(out), [TaggedSentence(words, None)])[0]) == len(words)


def test_export_of_an_int8_student_run(bert_dir, ner_dir, tmp_path):
    student = compress("quantize-int8", bert_dir, tmp_path / "int8-student")
    config = FinetuneConfig(
        task="ner", student=str(student), mode="frozen", data=f"conll2003:{ner_dir}", eval_split="dev", epochs=1
    )
    finetune(tmp_path / "run", config, show_progress=False)
    header = export_onnx(tmp_path / "run", tmp_path / "out", parity_items=5)
    assert header["quantize"] == "int8" and "fp32 weights" in header["notes"][0]


def _one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith(f"alad {command}: error: ") and err.count("\n") == 1, err
    return err


def test_incomplete_run_is_refused(adapted_run, tmp_path, capsys):
    partial = tmp_path / "partial"
    shutil.copytree(adapted_run, partial)
    (partial / "metrics.json").unlink()
    assert main(["export", str(partial), "--out", str(tmp_path / "o")]) == 2
    assert "not a complete fine-tuning run (missing metrics.json)" in _one_line_error(capsys, "export")
    assert main(["export", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    assert "run folder not found" in _one_line_error(capsys, "export")
    assert not (tmp_path / "o").exists()
    assert main(["export", str(adapted_run), "--out", str(tmp_path / "o"), "--format", "tflite"]) == 2
    assert "--format 'tflite' is not supported" in _one_line_error(capsys, "export")


def test_export_into_a_used_folder_is_refused(adapted_run, tmp_path, capsys):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "notes.txt").write_text("mine")
    assert main(["export", str(adapted_run), "--out", str(tmp_path / "used")]) == 2
    assert "already exists and is not empty" in _one_line_error(capsys, "export")
    assert (tmp_path / "used" / "notes.txt").read_text() == "mine"


def test_export_from_another_alad_version_is_refused(exported, tmp_path, capsys):
    out, _ = exported
    copy = tmp_path / "old"
    shutil.copytree(out, copy)
    header = json.loads((copy / "export.json").read_text())
    (copy / "export.json").write_text(json.dumps({**header, "alad_version": "0.0.1"}))
    assert main(["predict", str(copy), "the cat sat ."]) == 2
    err = _one_line_error(capsys, "predict")
    assert "exported by alad 0.0.1" in err and "re-export the run" in err
    (copy / "export.json").write_text(json.dumps({**header, "format_version": 7}))
    assert main(["evaluate", str(copy)]) == 2
    assert "export format 7" in _one_line_error(capsys, "evaluate")
    (copy / "export.json").write_text(json.dumps(header))
    with open(copy / "model.onnx", "ab") as handle:
        handle.write(b"garbage")
    assert main(["predict", str(copy), "the cat sat ."]) == 2
    assert "does not match the SHA-256" in _one_line_error(capsys, "predict")


def test_export_of_a_pruned_student_and_of_a_qa_model(bert_dir, ner_dir, tmp_path):
    from tiny_tasks import write_qa_data

    (tmp_path / "qa-bert").mkdir()
    student = compress("prune", bert_dir, tmp_path / "pruned", fraction=0.5)
    config = FinetuneConfig(task="ner", student=str(student), data=f"conll2003:{ner_dir}", eval_split="dev", epochs=1)
    finetune(tmp_path / "ner", config, show_progress=False)
    header = export_onnx(tmp_path / "ner", tmp_path / "ner-onnx", parity_items=5)
    assert json.loads((tmp_path / "ner-onnx" / "parity.json").read_text())["fp32"]["passed"]
    assert header["params_total"] == load_run(tmp_path / "ner")[0].num_parameters()

    from tiny_tasks import save_tiny_bert
    from transformers import AutoTokenizer

    qa_bert = save_tiny_bert(tmp_path / "qa-bert", AutoTokenizer.from_pretrained(bert_dir), 1, 128)
    qa = write_qa_data(tmp_path / "qa-data")
    config = FinetuneConfig(
        task="qa", student=str(qa_bert), data=f"squad:{qa}", eval_split="dev", epochs=1, max_length=128, doc_stride=32
    )
    finetune(tmp_path / "qa", config, show_progress=False)
    export_onnx(tmp_path / "qa", tmp_path / "qa-onnx", parity_items=5)
    checks = json.loads((tmp_path / "qa-onnx" / "parity.json").read_text())["fp32"]
    assert checks["passed"] and checks["prediction_agreement"] == 1.0
    assert main(["predict", str(tmp_path / "qa-onnx"), "--question", "where?", "--context", "the cat sat ."]) == 0


def test_missing_onnx_packages_are_named(adapted_run, tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if it were not installed
    assert main(["export", str(adapted_run), "--out", str(tmp_path / "o")]) == 2
    assert "pip install onnx onnxruntime onnxscript" in _one_line_error(capsys, "export")
    assert not (tmp_path / "o").exists()
