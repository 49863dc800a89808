"""Knowledge distillation, the auxiliary alignment loss and label budgets (stage 3 beside AlAd)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from tiny_tasks import write_ner_data
from torch.nn import functional as F

import alad.finetuning.trainer as finetune_module
from alad.adapters import AdapterConfig, AlignmentAdapter
from alad.data.readers import TaggedSentence
from alad.finetuning.teacher_signals import cached_soft_targets
from alad.finetuning.trainer import MODEL_DIR, FinetuneConfig, finetune, load_splits
from alad.models.task_model import AladTaskModel, build_task_model
from alad.tasks import get_task

NER = get_task("ner")


@pytest.fixture(scope="module")
def ner_dir(tmp_path_factory):
    return write_ner_data(tmp_path_factory.mktemp("kd-ner"), n_train=30)


@pytest.fixture(scope="module")
def teacher_run(bert_dir, ner_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("kd-teacher") / "teacher"
    config = FinetuneConfig(
        task="ner", student=str(bert_dir), data=f"conll2003:{ner_dir}", eval_split="dev", epochs=1, batch_size=8
    )
    finetune(run, config, max_train=10, show_progress=False)
    return run


def test_distillation_loss_is_t2_kl_on_masked_tokens():
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 5, 4), torch.randn(2, 5, 4)
    mask = torch.tensor([[1, 1, 0, 0, 0], [0, 1, 0, 1, 0]], dtype=torch.bool)
    batch = {"soft_targets": teacher, "soft_mask": mask}
    temperature = 2.0
    expected = (
        F.kl_div(
            F.log_softmax(student[mask] / temperature, -1),
            F.softmax(teacher[mask] / temperature, -1),
            reduction="batchmean",
        )
        * temperature**2
    )
    assert NER.distillation_loss(student, batch, temperature).item() == pytest.approx(expected.item(), rel=1e-5)
    assert NER.distillation_loss(teacher, batch, temperature).item() == pytest.approx(0.0, abs=1e-6)
    changed = student.clone()
    changed[0, 4] += 100  # an unmasked token changes nothing
    assert NER.distillation_loss(changed, batch, temperature).item() == pytest.approx(expected.item(), rel=1e-5)
    nothing = {"soft_targets": teacher, "soft_mask": torch.zeros_like(mask)}
    assert NER.distillation_loss(student, nothing, temperature).item() == 0.0


def test_soft_targets_move_across_tokenizers_by_word(bert_dir, roberta_dir):
    """A RoBERTa (byte-level BPE) teacher's word logits land on a BERT (WordPiece) student's first sub-tokens."""
    labels = ("O", "B-PER", "I-PER")
    teacher = build_task_model("ner", roberta_dir, labels, seed=1).eval()
    student = build_task_model("ner", bert_dir, labels, seed=2).eval()
    items = [TaggedSentence(["the", "quick", "foxes", "jumped"], ["O"] * 4), TaggedSentence(["a", "dog"], ["O", "O"])]
    soft = NER.soft_targets(teacher, items)
    assert [s.shape for s in soft] == [torch.Size([4, 3]), torch.Size([2, 3])]
    features = NER.features(student, items, None)
    NER.attach_soft_targets(features, soft)
    for feature in features:
        for offset, position in enumerate(feature.first_token_of_word):
            row = soft[feature.sentence_index][feature.word_start + offset]
            assert torch.equal(feature.soft[position], row)
        others = [p for p in range(len(feature.input_ids)) if p not in feature.first_token_of_word]
        assert torch.isnan(feature.soft[others]).all()  # no target on specials and later sub-tokens
    batch = NER.collate(student, features)
    assert batch["soft_mask"].sum() == 6 and not torch.isnan(batch["soft_targets"]).any()


def test_soft_targets_are_cached_per_item(teacher_run, tmp_path, monkeypatch):
    items = [TaggedSentence(["the", "cat"], ["O", "O"]), TaggedSentence(["Paris", "is", "big"], ["B-LOC", "O", "O"])]
    first = cached_soft_targets(NER, teacher_run / MODEL_DIR, items, root=tmp_path)
    seen = []
    compute = type(NER).soft_targets

    def counted(self, teacher, batch, config=None, show_progress=False):
        seen.append([s.tokens for s in batch])
        return compute(self, teacher, batch, config, show_progress)

    monkeypatch.setattr(type(NER), "soft_targets", counted)
    again = cached_soft_targets(NER, teacher_run / MODEL_DIR, items[::-1] + items[:1], root=tmp_path)
    assert seen == []  # any order and subset of known items: no teacher pass
    assert all(torch.equal(a, b) for a, b in zip(first[::-1] + first[:1], again, strict=True))
    new = TaggedSentence(["the", "cat", "sat"], ["O", "O", "O"])
    joined = TaggedSentence(["the cat"], ["O"])  # the same text in other words: another item
    mixed = cached_soft_targets(NER, teacher_run / MODEL_DIR, [new, items[1], joined, new], root=tmp_path)
    assert seen == [[["the", "cat", "sat"], ["the cat"]]]  # only the unseen items, each once
    assert torch.equal(mixed[1], first[1]) and torch.equal(mixed[0], mixed[3]) and mixed[2].shape[0] == 1
    for part in (tmp_path / "soft_targets").rglob("part-*.safetensors"):
        part.write_bytes(b"truncated")  # an unreadable cache is recomputed, not trusted
    seen.clear()
    redone = cached_soft_targets(NER, teacher_run / MODEL_DIR, items, root=tmp_path)
    assert seen == [[s.tokens for s in items]]
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(first, redone, strict=True))


def test_label_budgets_are_nested_and_checked(ner_dir):
    splits = load_splits(FinetuneConfig(data=f"conll2003:{ner_dir}", eval_split="dev", max_train=20))
    small, large = splits.with_budget(5), splits.with_budget(12)
    key = [" ".join(s.tokens) for s in splits.pool]
    chosen = {n: {key.index(" ".join(s.tokens)) for s in part.train} for n, part in ((5, small), (12, large))}
    assert len(chosen[5]) == 5 and chosen[5] <= chosen[12]
    assert splits.with_budget(20).train == splits.train  # the main budget is the labelled subset itself
    assert len(splits.with_budget("all").train) == 30 and splits.with_budget("all").unlabelled() == []
    assert len(small.unlabelled()) == 25 and len(small.unlabelled(8)) == 3  # 8 items read in all
    assert not {id(s) for s in small.unlabelled()} & {id(s) for s in small.train}
    with pytest.raises(ValueError, match="outside 1..30"):
        splits.with_budget(31)


def test_kd_settings_are_checked(monkeypatch):
    with pytest.raises(ValueError, match="kd_temperature must be a positive number|--kd-temperature must be"):
        FinetuneConfig(kd_weight=0.5, kd_temperature=0, teacher="t")
    with pytest.raises(ValueError, match="needs --teacher"):
        FinetuneConfig(kd_weight=0.5)
    FinetuneConfig(task="qa", data="squad", kd_weight=0.5, teacher="t")  # span distillation
    monkeypatch.setattr(type(QA), "supports_distillation", False)  # a task without it is refused up front
    with pytest.raises(ValueError, match="not implemented for task qa"):
        FinetuneConfig(task="qa", data="squad", kd_weight=0.5, teacher="t")
    with pytest.raises(ValueError, match="kd_weight must be in|--kd-weight must be"):
        FinetuneConfig(kd_weight=1.5, teacher="t")
    with pytest.raises(ValueError, match="align_weight > 0 needs --adapter"):
        FinetuneConfig(align_weight=1.0, teacher="t")


def test_kd_reads_unlabelled_text_but_never_its_labels(bert_dir, ner_dir, teacher_run, tmp_path, monkeypatch):
    monkeypatch.setenv("ALAD_CACHE", str(tmp_path / "cache"))
    config = FinetuneConfig(
        task="ner",
        student=str(bert_dir),
        data=f"conll2003:{ner_dir}",
        eval_split="dev",
        epochs=1,
        batch_size=8,
        teacher=str(teacher_run),
        kd_weight=0.5,
        kd_max_texts=25,
    )
    splits = load_splits(dataclasses.replace(config, max_train=10))
    # poison every gold tag outside the labelled budget: reading one would fail (unknown label)
    labelled = {id(s) for s in splits.train}
    poisoned = [s if id(s) in labelled else TaggedSentence(s.tokens, ["B-POISON"] * len(s.tokens)) for s in splits.pool]
    splits = dataclasses.replace(splits, pool=poisoned)
    result = finetune(tmp_path / "kd", config, splits=splits, show_progress=False)
    assert result["training"]["labelled_items"] == 10 and result["training"]["unlabelled_items"] == 15
    plain = finetune(tmp_path / "plain", dataclasses.replace(config, kd_weight=0.0), splits=splits, show_progress=False)
    assert plain["training"]["unlabelled_items"] == 0
    assert result["training"]["steps"] > plain["training"]["steps"]  # more items per epoch
    # kd_steps labelled: whole passes over all 25 items (4 batches of 8), as few as give the plain row's
    # steps (10 labelled items: 2 batches x 1 epoch), so 1 pass, and the row still reads every item
    matched = finetune(
        tmp_path / "kd-matched", dataclasses.replace(config, kd_steps="labelled"), splits=splits, show_progress=False
    )
    assert matched["training"]["unlabelled_items"] == 15 and matched["training"]["epochs"] == 1
    assert plain["training"]["steps"] <= matched["training"]["steps"] < plain["training"]["steps"] + 4


def test_kd_steps_labelled_matches_the_plain_rows_steps_in_whole_passes():
    lengths = [5] * 2000 + [7] * 1000  # 2,000 labelled items, then 1,000 read for distillation only
    config = FinetuneConfig(epochs=3, batch_size=16, min_steps=150)
    assert finetune_module.training_epochs(lengths, config, 2000) == 3  # kd_steps epochs: epochs over all
    matched = dataclasses.replace(config, kd_steps="labelled")
    # plain: 125 batches x 3 epochs = 375 steps; all 3,000 items: 188 batches a pass, so 2 passes (376 steps)
    assert finetune_module.training_epochs(lengths, matched, 2000) == 2
    # 100 labelled: min_steps raises the plain row to 150 steps (7 batches x 22 epochs = 154): 1 pass of 188
    assert finetune_module.training_epochs(lengths[:100] + [7] * 2900, matched, 100) == 1
    # 100 labelled + 1,000: 69 batches a pass, so 3 passes (207 steps) give the plain row's 154
    assert finetune_module.training_epochs(lengths[:100] + lengths[2000:], matched, 100) == 3
    assert finetune_module.training_epochs(lengths[:2000], matched, 2000) == 3  # nothing unlabelled: as plain
    assert finetune_module.training_epochs(lengths, matched, None) == 3
    with pytest.raises(ValueError, match="kd_steps must be one of"):
        FinetuneConfig(kd_steps="all")


def test_auxiliary_alignment_loss_adds_teacher_states(bert_dir, ner_dir, teacher_run, tmp_path, monkeypatch):
    monkeypatch.setenv("ALAD_CACHE", str(tmp_path / "cache"))
    adapter = AlignmentAdapter(AdapterConfig(student_dim=32, teacher_dim=32, window=3, hidden_size=8))
    adapter.save_pretrained(tmp_path / "adapter")
    config = FinetuneConfig(
        task="ner",
        student=str(bert_dir),
        adapter=str(tmp_path / "adapter"),
        teacher=str(teacher_run),
        data=f"conll2003:{ner_dir}",
        eval_split="dev",
        mode="frozen",
        epochs=1,
        batch_size=8,
        max_train=10,
        align_weight=1.0,
    )
    seen = []
    real = finetune_module.training_loss

    def spy(model, task, batch, cfg):
        seen.append(("align_targets" in batch, int(batch.get("align_mask", torch.zeros(1)).sum())))
        return real(model, task, batch, cfg)

    monkeypatch.setattr(finetune_module, "training_loss", spy)
    result = finetune(tmp_path / "aux", config, show_progress=False)
    assert result["training"]["align_target_features"] == 10
    assert seen and all(has and count > 0 for has, count in seen)
    model = AladTaskModel.from_pretrained(tmp_path / "aux" / MODEL_DIR)
    assert model.adapter is not None


# ------------------------------------------------------------------------------------------------
# extractive QA: span distillation per context character

QA = get_task("qa")
QA_CONTEXT = "the quick brown foxes jumped over the lazy dogs near the river bank in the early morning light"


def _qa_examples():
    from alad.data.readers import QAExample

    return [
        QAExample("q0", "t", QA_CONTEXT, "what jumped over the dogs ?", [("the quick brown foxes", 0)], False),
        QAExample("q1", "t", "a cat sat on the mat", "who sat ?", [], True),
    ]


def _qa_config(**overrides):
    return FinetuneConfig(task="qa", data="squad", max_length=32, doc_stride=8, **overrides)


def _char_logits(features, scale: float = 1.0):
    """Teacher logits that name the characters: start = first char, end = last char (+1000 * window)."""
    logits = []
    for n, feature in enumerate(features):
        values = torch.full((len(feature.input_ids), 2), -5.0)
        for k, offset in enumerate(feature.offsets):
            if offset is not None:
                values[k] = torch.tensor([offset[0], offset[1] - 1]) * scale + 1000 * n
        logits.append(values)
    return logits


def test_qa_soft_targets_move_across_tokenizers_by_character(bert_dir, roberta_dir):
    """A RoBERTa teacher's span logits land on the BERT student's tokens that start (end) at the same character."""
    from alad.tasks.squad import attach_soft_span_targets, soft_span_targets

    teacher = build_task_model("qa", roberta_dir, (), seed=1).eval()
    student = build_task_model("qa", bert_dir, (), seed=2).eval()
    examples = QA.strip_labels(_qa_examples())
    teacher_features = QA.features(teacher, examples, _qa_config(), labelled=False)
    assert {f.start_position for f in teacher_features} == {-100}  # read for distillation: no span label
    logits = _char_logits(teacher_features)
    soft = soft_span_targets(examples, teacher_features, logits)
    assert [s.shape for s in soft] == [torch.Size([len(ex.context) + 1, 2]) for ex in examples]
    windows = [f for f in teacher_features if f.example_index == 0]
    assert len(windows) > 1  # the long context needs several windows of 32 tokens
    # a character's value comes from the window where its token has the most context on both sides
    for column, pick in ((0, 0), (1, 1)):
        for char in torch.nonzero(~torch.isnan(soft[0][1:, column])).flatten().tolist():
            rooms = []
            for n, feature in enumerate(teacher_features):
                context = [k for k, o in enumerate(feature.offsets) if o is not None]
                for k in context:
                    if feature.offsets[k][pick] - pick == char:
                        rooms.append((min(k - context[0], context[-1] - k), -n, n))
            assert soft[0][1 + char, column] == 1000 * max(rooms)[2] + char
    assert torch.allclose(
        soft[0][0], torch.stack([logits[i][0] for i, f in enumerate(teacher_features) if f.example_index == 0]).mean(0)
    )
    features = QA.features(student, examples, _qa_config(), labelled=False)
    attach_soft_span_targets(features, soft)
    matched = 0
    for feature in features:
        assert torch.equal(feature.soft[0], soft[feature.example_index][0])  # no-answer position
        for k, offset in enumerate(feature.offsets):
            if offset is None:
                assert k == 0 or torch.isnan(feature.soft[k]).all()  # question and special tokens: none
                continue
            start, end = feature.soft[k]
            if not torch.isnan(start):
                assert start % 1000 == offset[0]  # the teacher's token that starts at the same character
                matched += 1
            if not torch.isnan(end):
                assert end % 1000 == offset[1] - 1
    assert matched > 10
    batch = QA.collate(student, features)
    assert batch["soft_mask"].shape == (*batch["input_ids"].shape, 2)
    assert not torch.isnan(batch["soft_targets"]).any()
    assert (batch["soft_mask"][..., 0].sum(1) > 1).all()


def test_qa_distillation_loss_is_t2_kl_of_start_and_end():
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 6, 2), torch.randn(2, 6, 2)
    mask = torch.ones(2, 6, 2, dtype=torch.bool)
    mask[0, 4:] = False  # no teacher logit there
    mask[1, 2, 1] = False  # a start target without an end target
    attention = torch.ones(2, 6, dtype=torch.long)
    attention[1, 5] = 0  # padding never counts
    batch = {"soft_targets": teacher, "soft_mask": mask, "attention_mask": attention}
    temperature = 2.0
    expected = 0.0
    for column in (0, 1):
        for row in range(2):
            keep = mask[row, :, column] & (attention[row] == 1)
            t = F.softmax(teacher[row, keep, column] / temperature, dim=0)
            s = F.log_softmax(student[row, keep, column] / temperature, dim=0)
            expected += (t * (t.log() - s)).sum()
    expected = expected / 4 * temperature**2
    assert QA.distillation_loss(student, batch, temperature).item() == pytest.approx(expected.item(), rel=1e-5)
    assert QA.distillation_loss(teacher, batch, temperature).item() == pytest.approx(0.0, abs=1e-6)
    changed = student.clone()
    changed[0, 5] += 100  # untargeted positions change nothing
    changed[1, 5] -= 100
    assert QA.distillation_loss(changed, batch, temperature).item() == pytest.approx(expected.item(), rel=1e-5)
    nothing = {**batch, "soft_mask": torch.zeros_like(mask)}
    assert QA.distillation_loss(student, nothing, temperature).item() == 0.0


def test_qa_loss_skips_windows_read_only_for_distillation():
    logits = torch.randn(3, 5, 2, requires_grad=True)
    batch = {
        "attention_mask": torch.ones(3, 5, dtype=torch.long),
        "start_positions": torch.tensor([1, -100, -100]),
        "end_positions": torch.tensor([2, -100, -100]),
    }
    expected = (
        F.cross_entropy(logits[:1, :, 0], torch.tensor([1])) + F.cross_entropy(logits[:1, :, 1], torch.tensor([2]))
    ) / 2
    assert QA.loss(logits, batch).item() == pytest.approx(expected.item())
    unlabelled = {**batch, "start_positions": torch.full((3,), -100), "end_positions": torch.full((3,), -100)}
    loss = QA.loss(logits, unlabelled)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(logits.grad).all()


def test_qa_student_distils_from_a_qa_teacher(bert_dir, tmp_path, monkeypatch):
    """End to end: a QA teacher's soft spans on the pool's unlabelled questions, cached under the window settings."""
    from tiny_tasks import write_qa_data

    monkeypatch.setenv("ALAD_CACHE", str(tmp_path / "cache"))
    data = write_qa_data(tmp_path / "squad")
    common = dict(task="qa", data=f"squad:{data}", eval_split="dev", max_length=64, doc_stride=16, batch_size=4)
    teacher = tmp_path / "teacher"
    finetune(teacher, FinetuneConfig(student=str(bert_dir), epochs=1, **common), show_progress=False)
    config = FinetuneConfig(student=str(bert_dir), epochs=1, max_train=4, teacher=str(teacher), kd_weight=0.5, **common)
    result = finetune(tmp_path / "kd", config, show_progress=False)
    assert result["training"]["unlabelled_items"] == 6 and result["training"]["labelled_items"] == 4
    (folder,) = (tmp_path / "cache" / "soft_targets").iterdir()
    assert folder.name.startswith("qa-") and folder.name.endswith("-len64-stride16")
