"""On-disk cache of frozen encoders' token embeddings, so the teacher runs once per corpus.

Alignment trains only the adapter: the teacher (and the student, while it is frozen) produce the
same states every epoch and for every window size. They are computed once and stored as float16
safetensors shards under a folder named by a hash of everything that determines them: the model's
weights and config, the layer, the tokenizer's full definition, the maximum length and the exact
texts. Any change gives another key, hence a fresh build. Each shard is written atomically and
recorded in the manifest with its SHA-256 only once complete, so an interrupted build resumes at
the first missing shard, and a corrupt shard is detected and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from alad.file_lock import file_lock
from alad.models import Encoder, cache_root, model_fingerprint, tokenizer_fingerprint
from alad.run_folder import remove_stale_tmp
from alad.serialization import (
    FORMAT_VERSION,
    ArtefactError,
    file_sha256,
    load_tensors,
    read_json,
    save_tensors_atomic,
    write_json_atomic,
)
from alad.tokenizer_alignment import AlignText, TokenSpans, is_pair_corpus, tokenize_with_spans

logger = logging.getLogger(__name__)

CACHE_KIND = "embedding_cache"
MANIFEST = "manifest.json"


@dataclass
class TokenEmbeddings:
    """Token states of one model for a list of texts, with the spans needed to pair them."""

    texts: list[AlignText]
    spans: list[TokenSpans]
    states: list[torch.Tensor]  # per text [T, d], float16
    key: dict
    directory: Path | None = None

    @property
    def hidden_size(self) -> int:
        return int(self.states[0].shape[-1])

    def __len__(self) -> int:
        return len(self.texts)


def display_name(name: str) -> str:
    """Short model name for progress bars: a fine-tuned run's ``<run>/model/encoder`` shows as ``<run>``."""
    path = Path(name)
    if path.name == "encoder" and path.parent.name == "model":
        return path.parent.parent.name
    return path.name


def corpus_hash(texts: Sequence[AlignText]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        if isinstance(text, tuple):  # a pair hashes apart from the string of its two texts joined
            digest.update(b"\x01")
            for part in text:
                digest.update(part.encode("utf-8"))
                digest.update(b"\x01")
        else:
            digest.update(text.encode("utf-8"))
        digest.update(b"\x00")
    return digest.hexdigest()


def cache_key(encoder: Encoder, texts: Sequence[AlignText], layer: int) -> dict:
    """Everything that determines the cached states; two runs share a cache only if all match."""
    key = {
        "format_version": FORMAT_VERSION,
        "model_name": encoder.name,
        "model_fingerprint": model_fingerprint(encoder.model),
        "tokenizer_fingerprint": tokenizer_fingerprint(encoder.tokenizer),
        "add_special_tokens": True,
        "max_length": encoder.max_length,
        "layer": layer,
        "dtype": "float16",
        "num_texts": len(texts),
        "corpus_sha256": corpus_hash(texts),
    }
    if is_pair_corpus(texts):
        key["text_pairs"] = "one input, no segment ids"
    return key


def _key_directory(root: Path, key: dict) -> Path:
    digest = hashlib.blake2b(json.dumps(key, sort_keys=True).encode(), digest_size=10).hexdigest()
    slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in display_name(key["model_name"]))[:40]
    return root / f"{slug}-L{key['layer']}-{digest}"


def _batches_by_tokens(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Group indices, longest first, so each padded batch holds at most ``max_tokens`` tokens."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        width = lengths[current[0]] if current else lengths[index]
        if current and width * (len(current) + 1) > max_tokens:
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


def _check_lengths(encoder: Encoder, lengths: Sequence[int]) -> None:
    too_long = [i for i, n in enumerate(lengths) if n > encoder.max_length]
    if too_long:
        raise ValueError(
            f"{len(too_long)} texts are longer than {encoder.name} accepts ({encoder.max_length} tokens), e.g. "
            f"text #{too_long[0]} with {lengths[too_long[0]]}; split them first (alad.segment_texts)"
        )


@torch.inference_mode()
def encode_spans(
    encoder: Encoder,
    spans: Sequence[TokenSpans],
    layer: int = -1,
    max_tokens: int = 8192,
    progress: tqdm | None = None,
) -> list[torch.Tensor]:
    """Run the encoder on pre-tokenised texts; returns one float16 [T, d] tensor per text."""
    lengths = [len(s.input_ids) for s in spans]
    _check_lengths(encoder, lengths)
    model = encoder.model
    device = next(model.parameters()).device
    pad_id = encoder.tokenizer.pad_token_id or 0
    outputs: list[torch.Tensor | None] = [None] * len(spans)
    for batch in _batches_by_tokens(lengths, max_tokens):
        width = max(lengths[i] for i in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, index in enumerate(batch):
            ids[row, : lengths[index]] = torch.tensor(spans[index].input_ids)
            mask[row, : lengths[index]] = 1
        result = model(input_ids=ids.to(device), attention_mask=mask.to(device), output_hidden_states=layer != -1)
        hidden = result.last_hidden_state if layer == -1 else result.hidden_states[layer]
        hidden = hidden.to("cpu", torch.float16)
        for row, index in enumerate(batch):
            outputs[index] = hidden[row, : lengths[index]].clone()
        if progress is not None:
            progress.update(sum(lengths[i] for i in batch))
    return [o for o in outputs if o is not None]


class EmbeddingCache:
    """A folder of cached token embeddings, one sub-folder per (model, layer, tokenizer, corpus)."""

    def __init__(self, root: str | os.PathLike | None = None, shard_size: int = 2048, max_tokens: int = 8192):
        self.root = Path(root) if root is not None else cache_root() / "embeddings"
        if shard_size < 1:
            raise ValueError("shard_size must be >= 1")
        self.shard_size = shard_size
        self.max_tokens = max_tokens

    def embed(
        self, encoder: Encoder, texts: Sequence[AlignText], layer: int = -1, show_progress: bool = True
    ) -> TokenEmbeddings:
        """Return the encoder's token states for ``texts``, computing only what is not cached yet."""
        texts = list(texts)
        if not texts:
            raise ValueError("no texts to embed: the corpus is empty")
        key = cache_key(encoder, texts, layer)
        directory = _key_directory(self.root, key)
        spans = tokenize_with_spans(encoder.tokenizer, texts)
        # Check the whole corpus up front: indices are the corpus's, and no shard is built in vain.
        _check_lengths(encoder, [len(s.input_ids) for s in spans])
        num_shards = (len(texts) + self.shard_size - 1) // self.shard_size
        # One process at a time per entry; under the lock, .tmp files are leftovers of a killed write.
        with file_lock(directory.parent / f"{directory.name}.lock"):
            remove_stale_tmp(directory)
            manifest = self._load_manifest(directory, key)
            done = self._valid_prefix(directory, manifest)
            if done < num_shards:
                self._build(encoder, spans, layer, directory, manifest, done, num_shards, show_progress)
            states = self._read(directory, manifest, spans)
        return TokenEmbeddings(texts=texts, spans=spans, states=states, key=key, directory=directory)

    def _load_manifest(self, directory: Path, key: dict) -> dict:
        fresh = {
            "kind": CACHE_KIND,
            "format_version": FORMAT_VERSION,
            "key": key,
            "shard_size": self.shard_size,
            "shards": [],
        }
        if not (directory / MANIFEST).is_file():
            return fresh
        try:
            manifest = read_json(directory / MANIFEST, "cache manifest")
        except ArtefactError as err:
            logger.warning("%s; rebuilding the cache", err)
            manifest = {}
        if manifest.get("key") != key or manifest.get("shard_size") != self.shard_size:
            logger.warning("cache at %s was built for other settings; rebuilding it", directory)
            shutil.rmtree(directory)
            return fresh
        return manifest

    def _valid_prefix(self, directory: Path, manifest: dict) -> int:
        """Number of leading shards that exist with their recorded checksum; drop the rest."""
        good = 0
        for index, entry in enumerate(manifest["shards"]):
            path = directory / entry["file"]
            if entry["index"] != index or not path.is_file() or file_sha256(path) != entry["sha256"]:
                logger.warning("cache shard %s is missing or corrupt; rebuilding from it", path)
                break
            good += 1
        manifest["shards"] = manifest["shards"][:good]
        return good

    def _build(self, encoder, spans, layer, directory, manifest, first, num_shards, show_progress) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        start = first * self.shard_size
        total = sum(len(s.input_ids) for s in spans[start:])
        with tqdm(
            total=total,
            unit="tok",
            disable=not show_progress,
            desc=f"embedding with {display_name(encoder.name)}",
        ) as progress:
            for index in range(first, num_shards):
                lo, hi = index * self.shard_size, min((index + 1) * self.shard_size, len(spans))
                part = spans[lo:hi]
                states = encode_spans(encoder, part, layer, self.max_tokens, progress)
                file = f"shard-{index:05d}.safetensors"
                save_tensors_atomic(
                    directory / file,
                    {
                        "states": torch.cat(states),
                        "lengths": torch.tensor([len(s.input_ids) for s in part], dtype=torch.long),
                        "input_ids": torch.tensor([i for s in part for i in s.input_ids], dtype=torch.long),
                    },
                )
                manifest["shards"].append(
                    {
                        "index": index,
                        "file": file,
                        "start": lo,
                        "count": hi - lo,
                        "sha256": file_sha256(directory / file),
                    }
                )
                write_json_atomic(directory / MANIFEST, manifest)

    def _read(self, directory: Path, manifest: dict, spans: Sequence[TokenSpans]) -> list[torch.Tensor]:
        states: list[torch.Tensor] = []
        for entry in manifest["shards"]:
            tensors = load_tensors(directory / entry["file"], "cache shard")
            lengths = tensors["lengths"].tolist()
            expected = [len(s.input_ids) for s in spans[entry["start"] : entry["start"] + entry["count"]]]
            flat_ids = [i for s in spans[entry["start"] : entry["start"] + entry["count"]] for i in s.input_ids]
            if lengths != expected or tensors["input_ids"].tolist() != flat_ids:
                raise ArtefactError(
                    f"cache shard {directory / entry['file']} does not match the tokenised corpus; delete "
                    f"{directory} and run again"
                )
            # load_file memory-maps the shard: copy, so the returned states never alias the file on disk.
            states.extend(torch.split(tensors["states"].clone(), lengths))
        return states
