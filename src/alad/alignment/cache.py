"""On-disk cache of frozen encoders' token embeddings, so the teacher runs once per corpus.

Alignment trains only the adapter: the teacher (and the student, while it is frozen) produce the
same states every epoch and for every window size. They are computed once and stored as float16
safetensors shards under a folder named by a hash of everything that determines them: the model's
weights and config, the layer, the tokenizer's full definition, the maximum length and the exact
texts. Any change gives another key, hence a fresh build. Each shard is written atomically and
recorded in the manifest with its SHA-256 only once complete, so an interrupted build resumes at
the first missing shard, and a corrupt shard is detected and rebuilt.

:meth:`EmbeddingCache.build` only makes sure the shards exist and returns a :class:`CachedStates`
that reads them one shard (or one text) at a time through memory-mapped safetensors, so alignment
can stream a corpus larger than memory; :meth:`EmbeddingCache.embed` reads every state at once.
Under several processes (``torchrun``/``accelerate launch``) each process embeds its own share of
the missing shards; the main process holds the lock, checks the cache and writes the manifest, and
all wait for it before reading.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import shutil
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from alad.alignment.pairing import AlignText, TokenSpans, is_pair_corpus, span_lengths, tokenize_with_spans
from alad.io.file_lock import file_lock
from alad.io.run_folder import remove_stale_tmp
from alad.io.serialization import (
    FORMAT_VERSION,
    ArtefactError,
    file_sha256,
    read_json,
    save_tensors_atomic,
    write_json_atomic,
)
from alad.models.encoders import Encoder, cache_root, model_fingerprint, tokenizer_fingerprint
from alad.training import distributed
from alad.training.memory import trim_heap
from alad.training.precision import autocast

logger = logging.getLogger(__name__)

CACHE_KIND = "embedding_cache"
MANIFEST = "manifest.json"


@dataclass
class TokenEmbeddings:
    """Token states of one model for a list of texts, with the spans needed to pair them."""

    texts: list[AlignText]
    spans: Sequence[TokenSpans]  # a SpanTable for a corpus
    states: list[torch.Tensor]  # per text [T, d], float16
    key: dict
    directory: Path | None = None

    @property
    def hidden_size(self) -> int:
        return int(self.states[0].shape[-1])

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class CachedStates:
    """The cached token states of one model for a corpus, read on demand, never all at once.

    Shard ``i`` holds texts ``shards[i]["start"] : + shards[i]["count"]``; :meth:`read_texts` copies the
    states of the texts asked for out of the memory-mapped shard file and nothing else.
    """

    texts: list[AlignText]
    spans: Sequence[TokenSpans]  # a SpanTable for a corpus
    key: dict
    directory: Path
    shards: list[dict]
    hidden_size: int = 0
    _starts: list[int] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self._starts = [entry["start"] for entry in self.shards]

    def __len__(self) -> int:
        return len(self.texts)

    def shard_of(self, index: int) -> int:
        import bisect

        return bisect.bisect_right(self._starts, index) - 1

    def read_texts(self, shard: int, indices: Sequence[int]) -> dict[int, torch.Tensor]:
        """States of the corpus texts ``indices`` (all in shard ``shard``), as float16 [T, d] copies."""
        from safetensors import safe_open

        entry = self.shards[shard]
        path = self.directory / entry["file"]
        lo, count = entry["start"], entry["count"]
        try:
            with safe_open(str(path), framework="pt") as handle:
                lengths = handle.get_tensor("lengths").tolist()
                part = self.spans[lo : lo + count]
                expected = span_lengths(part)
                flat = part.flat_ids() if hasattr(part, "flat_ids") else [i for s in part for i in s.input_ids]
                if lengths != expected or handle.get_tensor("input_ids").tolist() != flat:
                    raise ArtefactError(
                        f"cache shard {path} does not match the tokenised corpus; delete {self.directory} and run again"
                    )
                offsets = [0]
                for length in lengths:
                    offsets.append(offsets[-1] + length)
                states = handle.get_slice("states")
                out = {}
                for index in indices:
                    row = index - lo
                    if not 0 <= row < count:
                        raise IndexError(f"text {index} is not in cache shard {shard} ({lo}..{lo + count - 1})")
                    out[index] = states[offsets[row] : offsets[row + 1]].clone()
                return out
        except (OSError, ValueError, RuntimeError) as err:
            if isinstance(err, ArtefactError):
                raise
            raise ArtefactError(
                f"cache shard {path} cannot be read ({err}); delete {self.directory} and run again"
            ) from err

    def read_all(self) -> list[torch.Tensor]:
        states: list[torch.Tensor] = []
        for shard, entry in enumerate(self.shards):
            found = self.read_texts(shard, range(entry["start"], entry["start"] + entry["count"]))
            states.extend(found[i] for i in sorted(found))
        return states


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


def cache_key(encoder: Encoder, texts: Sequence[AlignText], layer: int, precision: str = "fp32") -> dict:
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
    if precision != "fp32":  # fp32 caches keep the keys they had before the option
        key["precision"] = precision
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
    precision: str = "fp32",
) -> list[torch.Tensor]:
    """Run the encoder on pre-tokenised texts; returns one float16 [T, d] tensor per text.
    ``precision`` bf16 runs the encoder under bfloat16 autocast (:mod:`alad.training.precision`).

    The texts' states are views of one [sum T, d] tensor, filled batch by batch: one allocation per
    call instead of one per text, so a long cache build does not fragment the heap (with a copy
    per text, resident memory grew with every shard the process embedded)."""
    lengths = span_lengths(spans)
    _check_lengths(encoder, lengths)
    model = encoder.model
    device = next(model.parameters()).device
    pad_id = encoder.tokenizer.pad_token_id or 0
    starts = list(itertools.accumulate(lengths, initial=0))
    flat = torch.empty(starts[-1], encoder.hidden_size, dtype=torch.float16)
    for batch in _batches_by_tokens(lengths, max_tokens):
        width = max(lengths[i] for i in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, index in enumerate(batch):
            ids[row, : lengths[index]] = torch.tensor(spans[index].input_ids)
            mask[row, : lengths[index]] = 1
        with autocast(device, precision):
            result = model(input_ids=ids.to(device), attention_mask=mask.to(device), output_hidden_states=layer != -1)
        hidden = result.last_hidden_state if layer == -1 else result.hidden_states[layer]
        hidden = hidden.to("cpu", torch.float16)
        for row, index in enumerate(batch):
            flat[starts[index] : starts[index + 1]] = hidden[row, : lengths[index]]
        del result, hidden
        if progress is not None:
            progress.update(sum(lengths[i] for i in batch))
    return list(flat.split(lengths))


class EmbeddingCache:
    """A folder of cached token embeddings, one sub-folder per (model, layer, tokenizer, corpus)."""

    def __init__(self, root: str | os.PathLike | None = None, shard_size: int = 2048, max_tokens: int = 8192):
        self.root = Path(root) if root is not None else cache_root() / "embeddings"
        if shard_size < 1:
            raise ValueError("shard_size must be >= 1")
        self.shard_size = shard_size
        self.max_tokens = max_tokens

    def embed(
        self,
        encoder: Encoder,
        texts: Sequence[AlignText],
        layer: int = -1,
        show_progress: bool = True,
        precision: str = "fp32",
    ) -> TokenEmbeddings:
        """Return the encoder's token states for ``texts``, computing only what is not cached yet."""
        cached = self.build(encoder, texts, layer, show_progress, precision)
        return TokenEmbeddings(
            texts=cached.texts, spans=cached.spans, states=cached.read_all(), key=cached.key, directory=cached.directory
        )

    def build(
        self,
        encoder: Encoder,
        texts: Sequence[AlignText],
        layer: int = -1,
        show_progress: bool = True,
        precision: str = "fp32",
    ) -> CachedStates:
        """Make sure every shard of ``texts`` is cached (embedding the missing ones); read no state yet.
        ``precision`` (fp32 or bf16, see :mod:`alad.training.precision`) is part of the cache key.

        Under several processes every process calls this with the same arguments: each embeds its share
        of the missing shards, the main process records them in the manifest, and all return together.
        """
        texts = list(texts)
        if not texts:
            raise ValueError("no texts to embed: the corpus is empty")
        key = cache_key(encoder, texts, layer, precision)
        directory = _key_directory(self.root, key)
        spans = tokenize_with_spans(encoder.tokenizer, texts)
        # Check the whole corpus up front: indices are the corpus's, and no shard is built in vain.
        _check_lengths(encoder, span_lengths(spans))
        num_shards = (len(texts) + self.shard_size - 1) // self.shard_size
        if not distributed.is_active():
            # One process at a time per entry; under the lock, .tmp files are leftovers of a killed write.
            with file_lock(directory.parent / f"{directory.name}.lock"):
                remove_stale_tmp(directory)
                manifest = self._load_manifest(directory, key)
                done = self._valid_prefix(directory, manifest)
                if done < num_shards:
                    self._build(
                        encoder, spans, layer, directory, manifest, range(done, num_shards), show_progress, precision
                    )
        else:
            manifest = self._build_distributed(
                encoder, spans, layer, directory, key, num_shards, show_progress, precision
            )
        return CachedStates(
            texts=texts,
            spans=spans,
            key=key,
            directory=directory,
            shards=manifest["shards"],
            hidden_size=int(encoder.hidden_size),
        )

    def _build_distributed(self, encoder, spans, layer, directory, key, num_shards, show_progress, precision) -> dict:
        """Each process embeds shards ``done + rank``, ``done + rank + world``, ...; the main one holds the
        lock and writes the manifest once all are written."""
        main, world, rank = distributed.is_main(), distributed.world_size(), distributed.rank()
        with file_lock(directory.parent / f"{directory.name}.lock") if main else nullcontext():

            def prepare() -> dict:
                remove_stale_tmp(directory)
                manifest = self._load_manifest(directory, key)
                self._valid_prefix(directory, manifest)
                return manifest

            manifest = distributed.agree(prepare, main_only=True)
            done = len(manifest["shards"])
            mine = range(done + rank, num_shards, world)
            entries = distributed.agree(
                lambda: self._build(encoder, spans, layer, directory, None, mine, show_progress and main, precision)
            )
            gathered = sorted((e for part in distributed.gather(entries) for e in part), key=lambda e: e["index"])
            manifest["shards"].extend(gathered)
            if gathered:
                distributed.agree(lambda: write_json_atomic(directory / MANIFEST, manifest), main_only=True)
        distributed.barrier()  # nobody reads before the manifest names every shard
        return manifest

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

    def _build(self, encoder, spans, layer, directory, manifest, indices, show_progress, precision) -> list[dict]:
        """Embed and write the shards ``indices``; with a ``manifest``, record each one as it is done."""
        directory.mkdir(parents=True, exist_ok=True)
        indices = list(indices)
        total = sum(sum(span_lengths(spans[i * self.shard_size : (i + 1) * self.shard_size])) for i in indices)
        entries = []
        with tqdm(
            total=total,
            unit="tok",
            disable=not show_progress,
            desc=f"embedding with {display_name(encoder.name)}",
        ) as progress:
            for index in indices:
                lo, hi = index * self.shard_size, min((index + 1) * self.shard_size, len(spans))
                part = spans[lo:hi]
                states = encode_spans(encoder, part, layer, self.max_tokens, progress, precision)
                file = f"shard-{index:05d}.safetensors"
                save_tensors_atomic(
                    directory / file,
                    {
                        "states": torch.cat(states),
                        "lengths": torch.tensor([len(s.input_ids) for s in part], dtype=torch.long),
                        "input_ids": torch.tensor([i for s in part for i in s.input_ids], dtype=torch.long),
                    },
                )
                entry = {
                    "index": index,
                    "file": file,
                    "start": lo,
                    "count": hi - lo,
                    "sha256": file_sha256(directory / file),
                }
                entries.append(entry)
                if manifest is not None:
                    manifest["shards"].append(entry)
                    write_json_atomic(directory / MANIFEST, manifest)
                del states
                trim_heap()  # freed activations back to the OS: resident memory stays flat over the shards
        return entries
