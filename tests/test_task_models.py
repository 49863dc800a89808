"""Tests for alad.models.task_model: what each mode trains, shape checks, saving and loading, teacher heads."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from alad.adapters import AdapterConfig, AlignmentAdapter
from alad.io.serialization import ArtefactError
from alad.models.encoders import load_encoder
from alad.models.task_model import MODES, AladTaskModel, TaskModelConfig, build_task_model

LABELS = ("O", "B-LOC", "B-PER")


def _adapter(student_dim: int = 32, teacher_dim: int = 48, window: int = 3, seed: int = 0) -> AlignmentAdapter:
    torch.manual_seed(seed)
    return AlignmentAdapter(
        AdapterConfig(student_dim=student_dim, teacher_dim=teacher_dim, window=window, hidden_size=16)
    )


def _prefixes(names: list[str]) -> set[str]:
    return {name.split(".")[0] for name in names}


def _inputs(model: AladTaskModel, texts: list[str]) -> dict[str, torch.Tensor]:
    encoded = model.tokenizer(texts, padding=True, return_tensors="pt")
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}


# --------------------------------------------------------------------------------------------------
# modes


EXPECTED_TRAINABLE = {
    (True, "frozen"): {"adapter", "head"},
    (True, "joint"): {"encoder", "adapter", "head"},
    (True, "head-only"): {"head"},
    (True, "teacher-head"): set(),
    (False, "frozen"): {"head"},
    (False, "joint"): {"encoder", "head"},
}


@pytest.mark.parametrize(("with_adapter", "mode"), list(EXPECTED_TRAINABLE))
def test_mode_decides_exactly_what_trains(bert_dir, with_adapter, mode):
    adapter = _adapter() if with_adapter else None
    teacher = None
    if mode == "teacher-head":
        teacher = build_task_model("ner", bert_dir, LABELS)  # hidden 32
        adapter = _adapter(teacher_dim=32)
    model = build_task_model("ner", bert_dir, LABELS, adapter=adapter, mode=mode, teacher_model=teacher)
    assert model.config.mode == mode
    expected = EXPECTED_TRAINABLE[(with_adapter, mode)]
    trainable = model.trainable_parameter_names()
    # every parameter of a trainable part trains, and nothing else does
    assert trainable == [name for name, _ in model.named_parameters() if name.split(".")[0] in expected]
    assert _prefixes(trainable) == expected
    assert _prefixes([n for n, _ in model.named_parameters()]) == (
        {"encoder", "head"} | ({"adapter"} if adapter else set())
    )


def test_set_mode_switches_back_and_forth(bert_dir):
    model = build_task_model("pos", bert_dir, ("NOUN", "VERB"), adapter=_adapter(), mode="head-only")
    assert _prefixes(model.trainable_parameter_names()) == {"head"}
    model.set_mode("joint")
    assert _prefixes(model.trainable_parameter_names()) == {"encoder", "adapter", "head"}
    model.set_mode("frozen")
    assert _prefixes(model.trainable_parameter_names()) == {"adapter", "head"}
    with pytest.raises(ValueError, match="mode must be one of"):
        model.set_mode("everything")


@pytest.mark.parametrize("mode", ["head-only", "teacher-head"])
def test_adapter_modes_without_adapter_raise(bert_dir, mode):
    teacher = build_task_model("ner", bert_dir, LABELS)
    with pytest.raises(ValueError, match=f"mode '{mode}' needs an alignment adapter"):
        build_task_model("ner", bert_dir, LABELS, mode=mode, teacher_model=teacher)
    model = build_task_model("ner", bert_dir, LABELS, mode="joint")
    with pytest.raises(ValueError, match="needs an alignment adapter"):
        model.set_mode(mode)


def test_adapter_for_another_student_raises(bert):
    encoder = load_encoder(bert.name)
    config = TaskModelConfig(task="ner", labels=LABELS)
    with pytest.raises(ValueError, match="adapter expects student states of width 48 but this encoder has 32"):
        AladTaskModel(config, encoder.model, encoder.tokenizer, adapter=_adapter(student_dim=48, teacher_dim=32))


def test_head_of_wrong_shape_raises(bert):
    encoder = load_encoder(bert.name)
    config = TaskModelConfig(task="ner", labels=LABELS)
    with pytest.raises(ValueError, match="the head maps 32 -> 5 but this model needs 32 -> 3"):
        AladTaskModel(config, encoder.model, encoder.tokenizer, head=nn.Linear(32, 5))
    with pytest.raises(ValueError, match="the head maps 32 -> 3 but this model needs 48 -> 3"):
        AladTaskModel(config, encoder.model, encoder.tokenizer, adapter=_adapter(), head=nn.Linear(32, 3))
    qa = TaskModelConfig(task="qa")
    with pytest.raises(ValueError, match="needs 32 -> 2"):
        AladTaskModel(qa, encoder.model, encoder.tokenizer, head=nn.Linear(32, 3))
    # the right shape is accepted and used as is
    head = nn.Linear(48, 3)
    assert AladTaskModel(config, encoder.model, encoder.tokenizer, adapter=_adapter(), head=head).head is head


def test_task_model_config_validation():
    with pytest.raises(ValueError, match="task must be one of"):
        TaskModelConfig(task="sentiment", labels=("a",))
    with pytest.raises(ValueError, match="mode must be one of"):
        TaskModelConfig(task="ner", labels=LABELS, mode="all")
    with pytest.raises(ValueError, match="a pos model needs its label set"):
        TaskModelConfig(task="pos")
    assert TaskModelConfig(task="qa").labels == ()
    assert TaskModelConfig(task="ner", labels=["O", "B-PER"]).labels == ("O", "B-PER")
    assert MODES == ("frozen", "joint", "head-only", "teacher-head")


# --------------------------------------------------------------------------------------------------
# forward


def test_forward_shapes_and_states(bert_dir):
    model = build_task_model("ner", bert_dir, LABELS, adapter=_adapter(), mode="frozen").eval()
    inputs = _inputs(model, ["the cat sat on the mat", "a dog"])
    logits = model(**inputs)
    assert logits.shape == (2, inputs["input_ids"].shape[1], 3)
    with torch.no_grad():
        plain = model.encoder(**inputs).last_hidden_state
        expected = model.head(model.adapter(plain, inputs["attention_mask"]))
    assert torch.allclose(logits, expected, atol=1e-6)

    qa = build_task_model("qa", bert_dir, student_layer=1).eval()
    assert qa.head.out_features == 2 and qa.config.labels == ()
    with torch.no_grad():
        layer1 = qa.encoder(**inputs, output_hidden_states=True).hidden_states[1]
        assert torch.allclose(qa.token_states(**inputs), layer1, atol=1e-6)
        assert qa(**inputs).shape == (2, inputs["input_ids"].shape[1], 2)


# --------------------------------------------------------------------------------------------------
# saving and loading


@pytest.mark.parametrize(
    ("task", "labels", "with_adapter"),
    [("ner", LABELS, True), ("pos", ("ADJ", "NOUN", "VERB", "X"), False), ("qa", (), True), ("qa", (), False)],
)
def test_save_and_load_give_identical_logits(bert_dir, tmp_path, task, labels, with_adapter):
    adapter = _adapter(seed=5) if with_adapter else None
    model = build_task_model(task, bert_dir, labels, adapter=adapter, mode="joint", seed=11)
    with torch.no_grad():  # make the saved weights differ from any fresh initialisation
        model.head.weight.add_(0.5)
        model.encoder.embeddings.word_embeddings.weight.mul_(1.5)
    model.metadata = {"note": "round trip"}
    model.eval()
    inputs = _inputs(model, ["the quick brown fox jumps", "playing football is fun"])
    with torch.no_grad():
        before = model(**inputs)

    model.save_pretrained(tmp_path / "model")
    assert (tmp_path / "model" / "adapter").is_dir() == with_adapter
    loaded = AladTaskModel.from_pretrained(tmp_path / "model")
    assert not loaded.training
    assert loaded.config == model.config and loaded.metadata == {"note": "round trip"}
    assert (loaded.adapter is None) == (not with_adapter)
    with torch.no_grad():
        after = loaded(**inputs)
    assert torch.equal(before, after)
    assert loaded.num_parameters() == model.num_parameters()


def test_from_pretrained_refuses_missing_or_foreign_folders(bert_dir, tmp_path):
    with pytest.raises(ArtefactError, match="task model folder not found"):
        AladTaskModel.from_pretrained(tmp_path / "nothing")
    with pytest.raises(ArtefactError, match="task model config not found"):
        AladTaskModel.from_pretrained(bert_dir)


# --------------------------------------------------------------------------------------------------
# teacher head


@pytest.fixture(scope="module")
def teacher(roberta_dir):
    model = build_task_model("ner", roberta_dir, LABELS, seed=3)  # hidden 48
    with torch.no_grad():
        model.head.weight.normal_()
        model.head.bias.fill_(0.25)
    return model


def test_teacher_head_copies_the_teachers_head(bert_dir, teacher):
    model = build_task_model("ner", bert_dir, LABELS, adapter=_adapter(), mode="teacher-head", teacher_model=teacher)
    assert model.head is not teacher.head
    assert torch.equal(model.head.weight, teacher.head.weight) and torch.equal(model.head.bias, teacher.head.bias)
    assert model.trainable_parameter_names() == []
    with torch.no_grad():
        model.head.bias.fill_(-1.0)  # a copy: the teacher is untouched
    assert torch.all(teacher.head.bias == 0.25)


def test_teacher_head_accepts_a_saved_adapter(bert_dir, teacher, tmp_path):
    _adapter(seed=9).save_pretrained(tmp_path / "adapter")
    model = build_task_model(
        "ner", bert_dir, LABELS, adapter=tmp_path / "adapter", mode="teacher-head", teacher_model=teacher
    )
    expected = _adapter(seed=9).state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in model.adapter.state_dict().items())
    assert torch.equal(model.head.weight, teacher.head.weight)


def test_teacher_head_refuses_other_teachers(bert_dir, roberta_dir, teacher):
    adapter = _adapter()
    with pytest.raises(ValueError, match="not for ner with \\['O', 'B-PER'\\]"):
        build_task_model("ner", bert_dir, ("O", "B-PER"), adapter=adapter, mode="teacher-head", teacher_model=teacher)
    with pytest.raises(ValueError, match="fine-tuned for ner .* not for pos"):
        build_task_model("pos", bert_dir, LABELS, adapter=adapter, mode="teacher-head", teacher_model=teacher)
    with pytest.raises(ValueError, match="needs the task-fine-tuned teacher"):
        build_task_model("ner", bert_dir, LABELS, adapter=adapter, mode="teacher-head")
    adapted = build_task_model("ner", roberta_dir, LABELS, adapter=_adapter(student_dim=48, teacher_dim=48))
    with pytest.raises(ValueError, match="plain fine-tuned encoder, not an adapted student"):
        build_task_model("ner", bert_dir, LABELS, adapter=adapter, mode="teacher-head", teacher_model=adapted)
    # a teacher whose width does not match the adapter's output is refused before any head is built
    with pytest.raises(ValueError, match="adapter maps to 32 dimensions but the teacher's head reads 48"):
        build_task_model(
            "ner", bert_dir, LABELS, adapter=_adapter(teacher_dim=32), mode="teacher-head", teacher_model=teacher
        )


@pytest.mark.parametrize("mode", ["frozen", "joint"])
def test_head_from_teacher_starts_from_a_trainable_copy(bert_dir, teacher, mode):
    model = build_task_model(
        "ner", bert_dir, LABELS, adapter=_adapter(), mode=mode, teacher_model=teacher, head_from_teacher=True
    )
    assert torch.equal(model.head.weight, teacher.head.weight) and torch.equal(model.head.bias, teacher.head.bias)
    assert "head" in _prefixes(model.trainable_parameter_names())
    random_head = build_task_model("ner", bert_dir, LABELS, adapter=_adapter(), mode=mode, teacher_model=teacher)
    assert not torch.equal(random_head.head.weight, teacher.head.weight)


def test_head_from_teacher_needs_an_adapter(bert_dir, teacher):
    with pytest.raises(ValueError, match="needs an alignment adapter"):
        build_task_model("ner", bert_dir, LABELS, mode="frozen", teacher_model=teacher, head_from_teacher=True)


def test_build_task_model_is_seeded(bert_dir):
    a = build_task_model("ner", bert_dir, LABELS, seed=1)
    b = build_task_model("ner", bert_dir, LABELS, seed=1)
    c = build_task_model("ner", bert_dir, LABELS, seed=2)
    assert torch.equal(a.head.weight, b.head.weight) and not torch.equal(a.head.weight, c.head.weight)
    assert a.config.source_encoder == str(bert_dir)
