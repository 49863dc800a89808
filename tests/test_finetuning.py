"""Tests for alad.finetuning.trainer: tiny end-to-end runs for NER, POS and QA, reuse, resume, modes and errors."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from safetensors.torch import load_file
from tiny_tasks import (
    QA_DEV,
    QA_V1_DEV,
    QA_V1_TRAIN,
    save_tiny_bert,
    write_ner_data,
    write_pos_data,
    write_qa_data,
    write_squad_v1_data,
)

# ``alad.finetuning.trainer`` is also the name of the function the package exports: patch the module itself.
import alad.finetuning.trainer as finetune_module
from alad.adapters import AdapterConfig, AlignmentAdapter
from alad.data.readers import TaggedSentence
from alad.finetuning.trainer import (
    FINETUNE_CONFIG,
    METRICS,
    MODEL_DIR,
    FinetuneConfig,
    evaluate_task_model,
    finetune,
    length_bucketed_batches,
    load_run,
    load_splits,
    predict_tags,
)

RESULT_KEYS = {
    "task",
    "mode",
    "split",
    "data",
    "headline",
    "metrics",
    "params_total",
    "params_trained",
    "train_seconds",
    "training",
}


@pytest.fixture(scope="module")
def ner_dir(tmp_path_factory):
    return write_ner_data(tmp_path_factory.mktemp("ner-data"))


@pytest.fixture(scope="module")
def ner_config(bert_dir, ner_dir) -> FinetuneConfig:
    return FinetuneConfig(
        task="ner",
        student=str(bert_dir),
        data=f"conll2003:{ner_dir}",
        eval_split="dev",
        epochs=2,
        batch_size=8,
        max_train=None,
    )


@pytest.fixture(scope="module")
def ner_run(ner_config, tmp_path_factory):
    """One finished NER run (joint fine-tuning of the tiny BERT), shared by the tests that only read it."""
    out = tmp_path_factory.mktemp("ner-run")
    return out, finetune(out, ner_config, show_progress=False)


def _weights(path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


# --------------------------------------------------------------------------------------------------
# a finished run


def test_ner_run_writes_model_and_metrics(ner_run, ner_config):
    out, result = ner_run
    assert set(result) == RESULT_KEYS
    assert (result["task"], result["mode"], result["split"]) == ("ner", "joint", "dev")
    assert set(result["headline"]) == {"micro_f1", "macro_f1"}
    assert result["headline"]["micro_f1"] == pytest.approx(100 * result["metrics"]["micro_f1"])
    assert 0.0 <= result["metrics"]["micro_f1"] <= 1.0
    assert set(result["metrics"]["per_type"]) <= {"PER", "LOC"}
    assert result["data"]["train_items"] == 30 and result["data"]["eval_items"] == 12
    assert result["data"]["eval_file"].endswith("valid.txt")
    assert result["training"]["steps"] == 2 * math.ceil(30 / 8)
    assert result["params_trained"] == result["params_total"] > 0  # joint: everything trains

    assert json.loads((out / METRICS).read_text()) == json.loads(json.dumps(result))
    saved = json.loads((out / FINETUNE_CONFIG).read_text())["config"]
    assert saved["task"] == "ner" and saved["epochs"] == 2
    assert (out / MODEL_DIR / "head.safetensors").is_file() and (out / MODEL_DIR / "encoder" / "config.json").is_file()
    assert not (out / "checkpoint.pt").exists()

    model, config = load_run(out)
    assert config == ner_config
    assert model.config.labels == ("O", "B-LOC", "B-PER") and model.adapter is None
    # the saved model reproduces the reported metrics
    assert evaluate_task_model(model, load_splits(config).eval, config) == result["metrics"]


def test_finished_run_is_reused_without_training(ner_run, ner_config, monkeypatch):
    out, result = ner_run

    def refuse(*args, **kwargs):
        raise AssertionError("a finished run must not train again")

    monkeypatch.setattr(finetune_module, "train_task_model", refuse)
    monkeypatch.setattr(finetune_module, "build_task_model", refuse)
    before = (out / MODEL_DIR / "head.safetensors").stat().st_mtime_ns
    assert finetune(out, ner_config, show_progress=False) == json.loads(json.dumps(result))
    assert (out / MODEL_DIR / "head.safetensors").stat().st_mtime_ns == before


def test_other_settings_in_a_finished_folder_raise(ner_run, ner_config):
    out, _ = ner_run
    with pytest.raises(ValueError, match="holds a fine-tuning run with other settings"):
        finetune(out, dataclasses.replace(ner_config, epochs=3), show_progress=False)
    with pytest.raises(ValueError, match="other settings"):
        finetune(out, ner_config, show_progress=False, lr_head=0.5)  # overrides count too


def test_training_loss_falls_on_a_learnable_set(ner_config, tmp_path):
    config = dataclasses.replace(ner_config, epochs=6, lr_head=1e-2, lr_encoder=1e-3, eval_split="train")
    result = finetune(tmp_path / "run", config, show_progress=False)
    training = result["training"]
    assert training["steps"] == 24
    first = training["loss_curve"][0]
    assert first > 0.9  # about ln(3) at initialisation
    assert training["final_loss"] < 0.5 * first
    # on its own training sentences the model finds entities; always predicting 'O' scores 0
    assert result["metrics"]["n_gold"] == sum(tag != "O" for s in load_splits(config).train for tag in s.tags)
    assert result["metrics"]["micro_f1"] > 0.6


# --------------------------------------------------------------------------------------------------
# interruption and resumption


@pytest.mark.parametrize("stop", [3, 5])
def test_interrupted_run_resumes_to_the_same_weights(ner_run, ner_config, tmp_path, stop):
    reference, reference_result = ner_run
    out = tmp_path / "run"
    interrupted = finetune(out, ner_config, show_progress=False, stop_after_steps=stop)
    assert interrupted == {"interrupted_at_step": stop}
    assert (out / "checkpoint.pt").is_file() and not (out / METRICS).exists()

    resumed = finetune(out, ner_config, show_progress=False)
    assert resumed["training"] == reference_result["training"]
    assert resumed["metrics"] == reference_result["metrics"]
    for part in ("head.safetensors", "encoder/model.safetensors"):
        a, b = _weights(reference / MODEL_DIR / part), _weights(out / MODEL_DIR / part)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), part
    assert not (out / "checkpoint.pt").exists()


def test_device_is_not_a_setting_and_auto_means_cpu_without_a_gpu(ner_run, ner_config, tmp_path):
    reference, reference_result = ner_run
    if torch.cuda.is_available():
        pytest.skip("auto picks the GPU here; test_cuda_training_matches_cpu covers it")
    result = finetune(tmp_path / "run", ner_config, show_progress=False, device="auto")
    assert result["metrics"] == reference_result["metrics"]
    # the finished run is reused whatever device is asked for next
    assert finetune(tmp_path / "run", ner_config, show_progress=False, device="cpu") == result


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the device machine)")
def test_cuda_training_matches_cpu(ner_run, ner_config, tmp_path):
    _, reference_result = ner_run
    result = finetune(tmp_path / "run", ner_config, show_progress=False, device="cuda")
    assert result["training"]["steps"] == reference_result["training"]["steps"]
    # same data, seed and schedule; kernels differ, so losses agree closely rather than bit for bit
    assert result["training"]["final_loss"] == pytest.approx(reference_result["training"]["final_loss"], rel=0.05)
    model, _ = load_run(tmp_path / "run")
    assert next(model.parameters()).device.type == "cpu"  # saved weights reload on the CPU


def test_interrupted_run_refuses_other_settings(ner_config, tmp_path):
    out = tmp_path / "run"
    finetune(out, ner_config, show_progress=False, stop_after_steps=2)
    with pytest.raises(ValueError, match="other settings"):
        finetune(out, dataclasses.replace(ner_config, lr_head=0.5), show_progress=False)
    assert (out / "checkpoint.pt").is_file()  # left as it was, to resume with the right settings


# --------------------------------------------------------------------------------------------------
# data and label errors


def test_unknown_evaluation_label_raises_naming_it(bert_dir, tmp_path):
    data = write_ner_data(tmp_path / "data", n_train=8, n_dev=3, extra_dev_tag="B-MISC")
    config = FinetuneConfig(
        task="ner", student=str(bert_dir), data=f"conll2003:{data}", eval_split="dev", epochs=1, batch_size=8
    )
    with pytest.raises(ValueError, match=r"evaluation data contains labels .*\['B-MISC'\]"):
        finetune(tmp_path / "run", config, show_progress=False)


def test_config_validation():
    with pytest.raises(ValueError, match="mode 'head-only' needs --adapter"):
        FinetuneConfig(mode="head-only")
    with pytest.raises(ValueError, match="needs --teacher"):
        FinetuneConfig(mode="teacher-head", adapter="somewhere")
    with pytest.raises(ValueError, match="task must be one of"):
        FinetuneConfig(task="chunk")
    with pytest.raises(ValueError, match="mode must be one of"):
        FinetuneConfig(mode="lora")
    with pytest.raises(ValueError, match="head_init must be one of"):
        FinetuneConfig(head_init="zeros")
    with pytest.raises(ValueError, match="head_init 'teacher' needs --adapter"):
        FinetuneConfig(head_init="teacher", teacher="runs/t")


def test_unanswerable_share_and_init_from_validation():
    with pytest.raises(ValueError, match="share between 0 and 1"):
        FinetuneConfig(task="qa", data="squad", squad_unanswerable_share=1.0)
    with pytest.raises(ValueError, match="--squad-unanswerable-share and --squad-v1 are for --task qa"):
        FinetuneConfig(squad_unanswerable_share=0.5)
    with pytest.raises(ValueError, match="--squad-negative-kind, .* are for --task qa"):
        FinetuneConfig(squad_negative_kind="answer_removed")
    with pytest.raises(ValueError, match="--squad-negative-kind must be one of other_paragraph, answer_removed"):
        FinetuneConfig(task="qa", data="squad", squad_negative_kind="swapped")
    with pytest.raises(ValueError, match="init_from continues a fine-tuned plain encoder in joint mode"):
        FinetuneConfig(init_from="runs/t", adapter="somewhere", mode="frozen")
    assert FinetuneConfig(init_from="runs/t").student == "runs/t/model/encoder"  # the run's own encoder
    with pytest.raises(ValueError, match="--init-from trains runs/t/model/encoder further; leave --student out"):
        FinetuneConfig(init_from="runs/t", student="other-model")


def test_init_from_continues_a_finished_run(ner_run, ner_config, tmp_path, monkeypatch):
    """The continued model starts from the run's encoder and head (not a fresh head), in joint mode."""
    out, _ = ner_run
    seen = {}

    def record(model, features, config, *args, **kwargs):
        seen["head"] = model.head.weight.detach().clone()
        seen["mode"], seen["trainable"] = model.config.mode, model.trainable_parameter_names()
        return {"steps": 0}

    monkeypatch.setattr(finetune_module, "train_task_model", record)
    config = dataclasses.replace(ner_config, init_from=str(out), student=str(out / MODEL_DIR / "encoder"))
    finetune(tmp_path / "more", config, show_progress=False)
    assert torch.equal(seen["head"], _weights(out / MODEL_DIR / "head.safetensors")["weight"])
    assert seen["mode"] == "joint" and any(n.startswith("encoder.") for n in seen["trainable"])
    # another task's run, or a folder that is not a finished run, is refused before any training
    with pytest.raises(FileNotFoundError, match="--init-from .* is not a finished fine-tuning run"):
        nothing = dataclasses.replace(config, init_from=str(tmp_path), student=str(tmp_path / MODEL_DIR / "encoder"))
        finetune(tmp_path / "none", nothing, show_progress=False)
    ud = write_pos_data(tmp_path / "ud")
    pos = dataclasses.replace(config, task="pos", data=f"conllu:{ud}", train_split="dev", eval_split="test")
    with pytest.raises(ValueError, match="was fine-tuned for ner with labels"):
        finetune(tmp_path / "pos", pos, show_progress=False)


def test_length_bucketed_batches():
    lengths = [5, 30, 7, 12, 30, 6, 8, 29, 11, 5, 31, 10, 9]
    batches = length_bucketed_batches(lengths, 3, seed=0)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all(1 <= len(b) <= 3 for b in batches) and sum(len(b) == 3 for b in batches) == 4
    assert length_bucketed_batches(lengths, 3, seed=0) == batches
    # within one chunk, batches hold neighbours in length order: their length ranges never interleave
    ranges = sorted((min(lengths[i] for i in b), max(lengths[i] for i in b)) for b in batches)
    assert all(high <= next_low for (_, high), (next_low, _) in zip(ranges, ranges[1:], strict=False))
    assert ranges[-1] == (31, 31) and ranges[-2] == (29, 30)


# --------------------------------------------------------------------------------------------------
# modes


@pytest.fixture(scope="module")
def teacher_run(roberta_dir, ner_dir, tmp_path_factory):
    """A fine-tuned RoBERTa teacher (hidden 48) on the NER data."""
    out = tmp_path_factory.mktemp("teacher")
    config = FinetuneConfig(
        task="ner", student=str(roberta_dir), data=f"conll2003:{ner_dir}", epochs=1, batch_size=8, max_train=None
    )
    finetune(out, config, show_progress=False)
    return out


def test_teacher_head_mode_trains_nothing(ner_config, teacher_run, tmp_path, monkeypatch):
    adapter_dir = AlignmentAdapter(AdapterConfig(student_dim=32, teacher_dim=48, hidden_size=16)).save_pretrained(
        tmp_path / "adapter"
    )
    monkeypatch.setattr(finetune_module, "train_task_model", lambda *a, **k: pytest.fail("teacher-head trains"))
    config = dataclasses.replace(ner_config, mode="teacher-head", adapter=str(adapter_dir), teacher=str(teacher_run))
    result = finetune(tmp_path / "run", config, show_progress=False)
    assert result["params_trained"] == 0 and result["training"] == {"steps": 0}
    assert result["mode"] == "teacher-head"
    teacher, _ = load_run(teacher_run)
    model, _ = load_run(tmp_path / "run")
    assert model.config.labels == teacher.config.labels
    assert torch.equal(model.head.weight, teacher.head.weight) and torch.equal(model.head.bias, teacher.head.bias)
    adapter = AlignmentAdapter.from_pretrained(adapter_dir)
    assert all(torch.equal(v, adapter.state_dict()[k]) for k, v in model.adapter.state_dict().items())
    assert result["params_total"] == model.num_parameters()


@pytest.mark.parametrize(("mode", "adapter_type"), [("head-only", "mlp"), ("frozen", "mlp"), ("frozen", "attention")])
def test_frozen_parts_stay_unchanged(ner_config, bert_dir, tmp_path, mode, adapter_type):
    torch.manual_seed(0)
    options = {"attention_dim": 8, "attention_heads": 2} if adapter_type == "attention" else {}
    shape = AdapterConfig(student_dim=32, teacher_dim=24, hidden_size=16, adapter_type=adapter_type, **options)
    adapter = AlignmentAdapter(shape)
    adapter.save_pretrained(tmp_path / "adapter")
    config = dataclasses.replace(ner_config, mode=mode, adapter=str(tmp_path / "adapter"), epochs=1)
    result = finetune(tmp_path / "run", config, show_progress=False)
    assert result["training"]["steps"] == 4
    model, _ = load_run(tmp_path / "run")
    trained = sum(p.numel() for p in model.head.parameters())
    if mode == "frozen":
        trained += adapter.num_parameters()
    assert result["params_trained"] == trained

    original, saved = (
        _weights(bert_dir / "model.safetensors"),
        _weights(tmp_path / "run/model/encoder/model.safetensors"),
    )
    assert saved.keys() == original.keys()
    assert all(torch.equal(v, original[k]) for k, v in saved.items())
    adapter_same = all(torch.equal(v, adapter.state_dict()[k]) for k, v in model.adapter.state_dict().items())
    assert adapter_same == (mode == "head-only")
    assert type(model.adapter) is type(adapter) and model.adapter.config == adapter.config
    if adapter_type == "attention":  # the attention block trained too, away from its zero output projection
        assert model.adapter.attention_out.weight.abs().sum() > 0
        assert evaluate_task_model(model, load_splits(config).eval, config) == result["metrics"]  # reloaded as run


# --------------------------------------------------------------------------------------------------
# POS and QA


def test_pos_run_on_conllu(bert_dir, tmp_path):
    data = write_pos_data(tmp_path / "ud")
    config = FinetuneConfig(
        task="pos",
        student=str(bert_dir),
        data=f"conllu:{data}",
        train_split="dev",
        eval_split="test",
        epochs=2,
        batch_size=8,
        max_train=None,
    )
    result = finetune(tmp_path / "run", config, show_progress=False)
    assert set(result) == RESULT_KEYS
    assert set(result["headline"]) == {"accuracy", "macro_f1"}
    assert result["data"]["train_file"].endswith("en_tiny-ud-dev.conllu")
    assert result["data"]["eval_file"].endswith("en_tiny-ud-test.conllu")
    test_tokens = sum(len(s.tokens) for s in load_splits(config).eval)
    assert result["metrics"]["n_tokens"] == test_tokens
    assert result["headline"]["accuracy"] == pytest.approx(100 * result["metrics"]["accuracy"])
    model, _ = load_run(tmp_path / "run")
    assert model.config.labels == ("ADJ", "ADP", "DET", "NOUN", "PUNCT", "VERB")
    tags = predict_tags(model, [TaggedSentence(["the", "cat", "sat"], ["X", "X", "X"])])
    assert len(tags) == 1 and len(tags[0]) == 3 and set(tags[0]) <= set(model.config.labels)


@pytest.fixture(scope="module")
def qa_bert_dir(bert_dir, tmp_path_factory):
    """The fixture BERT's tokenizer on a model with 128 positions: QA windows need room for the question."""
    from transformers import AutoTokenizer

    directory = tmp_path_factory.mktemp("qa-bert")
    tokenizer = AutoTokenizer.from_pretrained(bert_dir)
    return save_tiny_bert(directory, tokenizer, num_hidden_layers=1, max_position_embeddings=128)


def test_qa_run_reports_squad_v2_metrics(qa_bert_dir, tmp_path):
    data = write_qa_data(tmp_path / "squad")
    config = FinetuneConfig(
        task="qa",
        student=str(qa_bert_dir),
        data=f"squad:{data}",
        eval_split="dev",
        epochs=2,
        batch_size=8,
        max_train=None,
        max_length=128,
        doc_stride=32,
    )
    result = finetune(tmp_path / "run", config, show_progress=False)
    assert set(result) == RESULT_KEYS
    metrics = result["metrics"]
    for key in ("exact", "f1", "HasAns_exact", "HasAns_f1", "NoAns_exact", "NoAns_f1", "best_exact", "best_f1"):
        assert key in metrics and 0.0 <= metrics[key] <= 100.0, key
    n_unanswerable = sum(answer is None for _, _, answer in QA_DEV)
    assert (metrics["total"], metrics["HasAns_total"], metrics["NoAns_total"]) == (5, 3, 2)
    baseline = metrics["no_answer_baseline"]
    assert baseline["exact"] == baseline["f1"] == pytest.approx(100 * n_unanswerable / len(QA_DEV))
    assert (baseline["HasAns_f1"], baseline["NoAns_f1"]) == (0.0, 100.0)
    headline = {"exact", "f1", "HasAns_f1", "NoAns_f1", "best_f1", "cv_f1", "cv_HasAns_f1", "noans_auc"}
    assert set(result["headline"]) == headline
    # whether the no-answer score ranks the 2 unanswerable dev questions above the 3 answerable ones
    assert 0.0 <= metrics["noans_auc"] <= 1.0 and result["headline"]["noans_auc"] == metrics["noans_auc"]
    # 4 dev articles: the no-answer threshold is also chosen on each half of them for the other half
    assert metrics["cv_folds"] == 2 and len(metrics["cv_thresholds"]) == 2 and 0.0 <= metrics["cv_f1"] <= 100.0
    assert result["headline"]["f1"] == metrics["f1"] and result["headline"]["best_f1"] == metrics["best_f1"]
    assert metrics["best_f1"] >= metrics["f1"]
    assert result["training"]["steps"] == 2 * math.ceil(10 / 8)  # every window of this data fits in one
    model, _ = load_run(tmp_path / "run")
    assert model.config.task == "qa" and model.head.out_features == 2


def _qa_pool_config(tmp_path, **overrides) -> FinetuneConfig:
    data = write_qa_data(tmp_path / "squad")
    v1 = write_squad_v1_data(tmp_path / "squad_v1.1")
    settings = dict(
        task="qa",
        data=f"squad:{data}",
        eval_split="dev",
        squad_v1=str(v1),
        squad_v1_train=True,
        squad_v1_eval=True,
        squad_negatives=1.0,
        max_train=None,
        max_length=128,
        doc_stride=32,
    )
    return FinetuneConfig(**{**settings, **overrides})


def test_qa_pool_and_evaluation_sets_from_hand_made_squad_files(tmp_path):
    splits = load_splits(_qa_pool_config(tmp_path))
    info = splits.info
    # SQuAD 2.0 train: 10 questions in 4 articles; SQuAD 1.1 train repeats article0's paragraph (dropped
    # there, 2 questions) and adds v1-article0 (2 paragraphs, 4 questions); one negative per article that
    # has a second paragraph: v1-article0 only
    assert info["squad_v1_train"]["duplicate_articles"] == 1
    assert info["squad_v1_train"]["duplicate_questions_dropped"] == 2
    assert info["pool"] == {
        "articles": 5,
        "paragraphs": 6,
        "questions": 15,
        "answerable": 11,
        "unanswerable": 4,
        "negatives_made": 1,
    }
    assert info["squad_negatives"]["made"] == 1 and info["squad_negatives"]["state"] == "on"
    assert len(splits.pool) == len({ex.id for ex in splits.pool}) == 15
    (negative,) = [ex for ex in splits.pool if ex.id.endswith("-neg")]
    source = next(ex for ex in splits.pool if ex.id == negative.id.removesuffix("-neg"))
    assert negative.is_impossible and negative.title == source.title == "v1-article0"
    assert negative.context != source.context and source.answers[0][0] not in negative.context
    # evaluation (a): the SQuAD 2.0 dev file; (b): SQuAD 1.1 dev without its article that is in 2.0 dev
    sets = info["evaluation_sets"]
    assert (sets["evaluation"]["articles"], sets["evaluation"]["questions"]) == (4, len(QA_DEV))
    v1 = splits.extra_eval["squad_v1_eval"]
    assert [ex.title for ex in v1] == ["v1-dev-article0"] * 2 and not any(ex.is_impossible for ex in v1)
    assert sets["squad_v1_eval"]["left_out_in_squad_v2_dev"] == 1 and sets["squad_v1_eval"]["questions"] == 2
    assert len(QA_V1_DEV) == 3 and len(QA_V1_TRAIN) == 6
    assert info["disjoint_by_article"] == "checked"
    assert info["disjoint_checked"] == ["evaluation", "squad_v1_eval"]
    # a label budget is a seeded subset of the pool, and keeps both evaluation sets
    budget = splits.with_budget(5)
    pool_ids = [ex.id for ex in splits.pool]
    assert len(budget.train) == 5 and {ex.id for ex in budget.train} <= set(pool_ids)
    assert budget.extra_eval == splits.extra_eval
    # the defaults change nothing: no SQuAD 1.1, no negatives (stated), one evaluation set
    plain = load_splits(
        _qa_pool_config(tmp_path / "plain", squad_v1_train=False, squad_v1_eval=False, squad_negatives=0)
    )
    assert len(plain.pool) == 10 and plain.extra_eval == {}
    assert plain.info["squad_negatives"] == {"setting": 0, "made": 0, "state": "off"}


def test_qa_training_subset_with_an_unanswerable_share(tmp_path):
    splits = load_splits(_qa_pool_config(tmp_path, max_train=6, squad_unanswerable_share=0.5))
    assert sum(ex.is_impossible for ex in splits.train) == 3 and len(splits.train) == 6
    assert splits.info["unanswerable_share"]["unanswerable_own"] == 3  # the pool's own 3 (and 1 made)
    assert sorted(splits.order[:6]) == sorted(splits.pool.index(ex) for ex in splits.train)
    with pytest.raises(ValueError, match="needs 7 unanswerable and 7 answerable questions; the pool has 4 and 11"):
        load_splits(_qa_pool_config(tmp_path / "more", max_train=14, squad_unanswerable_share=0.5))


def test_qa_evaluation_article_in_training_is_refused(tmp_path):
    config = _qa_pool_config(tmp_path)
    dev = json.loads((tmp_path / "squad" / "dev-v2.0.json").read_text())
    train = json.loads((tmp_path / "squad" / "train-v2.0.json").read_text())
    train["data"].append(dev["data"][1])  # dev-article1 is trained on too
    (tmp_path / "squad" / "train-v2.0.json").write_text(json.dumps(train))
    with pytest.raises(
        ValueError, match=r"article\(s\) of the evaluation split are also in the training pool.*dev-article1"
    ):
        load_splits(dataclasses.replace(config, squad_v1_train=False))


def test_qa_run_scores_both_evaluation_sets(qa_bert_dir, tmp_path, capsys):
    from alad.cli import main
    from alad.evaluation.metrics import squad_v1_metrics
    from alad.tasks import get_task
    from alad.tasks.squad import gold_answers

    config = _qa_pool_config(tmp_path, student=str(qa_bert_dir), epochs=1, batch_size=8)
    result = finetune(tmp_path / "run", config, show_progress=False)
    assert set(result) == RESULT_KEYS | {"squad_v1_eval"}
    v1 = result["squad_v1_eval"]
    assert v1["total"] == 2 and v1["articles"] == 1 and "SQuAD 1.1" in v1["scoring"]
    saved = json.loads((tmp_path / "run" / METRICS).read_text())
    assert saved["squad_v1_eval"] == v1 and saved["data"]["disjoint_by_article"] == "checked"
    # the same numbers from the model's best non-null spans, never "no answer"
    model, _ = load_run(tmp_path / "run")
    items = load_splits(config).extra_eval["squad_v1_eval"]
    predictions, _ = get_task("qa").predict(model, items, config)
    assert all(predictions.values())
    expected = squad_v1_metrics(gold_answers(items), predictions)
    assert (v1["exact"], v1["f1"]) == (pytest.approx(expected["exact"]), pytest.approx(expected["f1"]))
    # alad evaluate scores both sets too
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "run"), "--split", "dev", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "SQuAD 1.1 dev articles not in SQuAD 2.0 dev (1 articles, 2 questions; " in out
    assert f"EM {v1['exact']:.2f}, F1 {v1['f1']:.2f}" in out
    assert main(["evaluate", str(tmp_path / "run"), "--split", "dev", "--quiet", "--squad-v1-eval", "false"]) == 0
    assert "SQuAD 1.1 dev" not in capsys.readouterr().out


@pytest.mark.parametrize(("mode", "adapter_type"), [("frozen", "mlp"), ("frozen", "attention"), ("head-only", "mlp")])
def test_cached_frozen_states_train_as_running_the_frozen_part(ner_config, tmp_path, mode, adapter_type):
    """The frozen part's states, computed once, give the weights that running it every step gives."""
    torch.manual_seed(0)
    options = {"attention_dim": 8, "attention_heads": 2} if adapter_type == "attention" else {}
    shape = AdapterConfig(student_dim=32, teacher_dim=24, hidden_size=16, adapter_type=adapter_type, **options)
    AlignmentAdapter(shape).save_pretrained(tmp_path / "adapter")
    config = dataclasses.replace(ner_config, mode=mode, adapter=str(tmp_path / "adapter"), epochs=2)
    calls = []
    original = finetune_module.cache_frozen_states

    def counting(*args, **kwargs):
        states = original(*args, **kwargs)
        calls.append(states is not None)
        return states

    finetune_module.cache_frozen_states = counting
    try:
        cached = finetune(tmp_path / "cached", config, show_progress=False)
        per_step = finetune(tmp_path / "per-step", dataclasses.replace(config, frozen_cache_mb=0), show_progress=False)
    finally:
        finetune_module.cache_frozen_states = original
    assert calls == [True, False]
    a, b = _weights(tmp_path / "cached/model/head.safetensors"), _weights(tmp_path / "per-step/model/head.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    assert cached["training"]["steps"] == per_step["training"]["steps"] > 0
    assert math.isclose(cached["training"]["final_loss"], per_step["training"]["final_loss"], rel_tol=1e-4)


def test_frozen_parts_run_without_dropout_and_the_cache_has_a_limit(ner_config, bert_dir, tmp_path):
    from alad.finetuning.frozen_states import cache_frozen_states
    from alad.models.task_model import build_task_model

    torch.manual_seed(0)
    AlignmentAdapter(AdapterConfig(student_dim=32, teacher_dim=24, hidden_size=16)).save_pretrained(tmp_path / "a")
    splits = load_splits(ner_config)
    task = finetune_module.get_task("ner")
    labels = task.label_set(splits.train, None)
    for mode, adapter_training in (("frozen", True), ("head-only", False), ("joint", True)):
        model = build_task_model("ner", bert_dir, labels, adapter=tmp_path / "a", mode=mode).train()
        assert model.head.training and model.dropout.training
        assert model.encoder.training == (mode == "joint") and model.adapter.training == adapter_training
        features = task.features(model, splits.train, ner_config)
        states = cache_frozen_states(model, task, features, limit_mb=64)
        assert model.training  # left in training mode
        if mode == "joint":
            assert states is None  # the encoder trains: nothing to cache
            continue
        width = 24 if mode == "head-only" else 32
        assert [s.shape for s in states] == [(len(f.input_ids), width) for f in features]
        batch = task.collate(model, features[:1])
        with torch.no_grad():
            assert torch.allclose(states[0], model.frozen_states(batch["input_ids"], batch["attention_mask"])[0])
        tokens = sum(len(f.input_ids) for f in features)
        assert cache_frozen_states(model, task, features, limit_mb=tokens * width * 4 / 2**20 * 0.99) is None
    with pytest.raises(ValueError, match="--frozen-cache-mb must be >= 0, got -1.0"):
        dataclasses.replace(ner_config, frozen_cache_mb=-1)
