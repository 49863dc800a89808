"""Benchmark: resident memory of an embedding-cache build, shard by shard, with and without the heap
trimmed after each shard (``alad.training.memory.trim_heap``).

Each variant runs in a fresh child process: it embeds the first ``--texts`` corpus sentences with one
model into a new cache (``--shard-texts`` texts per shard) and records its resident memory as each
shard starts (so after the previous shard's trim) and its peak (``ru_maxrss``). Without the trim,
glibc keeps the encoder's freed activation buffers in its heap and resident memory climbs with the
shards embedded; with it, it stays flat.

    python benchmarks/cache_memory.py --model all-MiniLM-L6-v2 --texts 12000 --out benchmarks/results/cache_memory

Writes ``cache_memory.json`` and ``cache_memory.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

VARIANTS = ("trimmed", "untrimmed")


def child(model: str, corpus: str, texts: int, shard_texts: int, variant: str, result: str) -> None:
    import psutil
    import torch

    torch.set_num_threads(1)
    import alad.alignment.cache as cache_module
    from alad.data.readers import read_texts
    from alad.models.encoders import load_encoder

    if variant == "untrimmed":
        cache_module.trim_heap = lambda: False  # the build as it was before the trim
    process = psutil.Process()
    at_shard_start: list[float] = []
    encode = cache_module.encode_spans

    def recording(*args, **kwargs):
        at_shard_start.append(process.memory_info().rss / 2**20)
        return encode(*args, **kwargs)

    cache_module.encode_spans = recording
    encoder = load_encoder(model)
    lines = read_texts(corpus)[:texts]
    start_rss = process.memory_info().rss / 2**20
    with tempfile.TemporaryDirectory() as folder:
        cache_module.EmbeddingCache(folder, shard_size=shard_texts).build(encoder, lines, show_progress=False)
    out = {
        "variant": variant,
        "rss_before_build_mib": start_rss,
        "rss_at_shard_start_mib": at_shard_start,
        "rss_after_build_mib": process.memory_info().rss / 2**20,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    Path(result).write_text(json.dumps(out), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="all-MiniLM-L6-v2", help="encoder embedded (packaged name or folder)")
    parser.add_argument("--corpus", default=None, help="text file (default: the 100k-sentence corpus)")
    parser.add_argument("--texts", type=int, default=12000, help="first N corpus sentences")
    parser.add_argument("--shard-texts", type=int, default=1024, help="texts per cache shard")
    parser.add_argument("--out", default="benchmarks/results/cache_memory")
    parser.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        model, corpus, texts, shard_texts, variant, result = args.child
        child(model, corpus, int(texts), int(shard_texts), variant, result)
        return 0
    if args.texts < 1 or args.shard_texts < 1:
        raise SystemExit("--texts and --shard-texts must be >= 1")
    from alad.data.sources import corpus_path

    corpus = args.corpus or str(corpus_path())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = {}
    with tempfile.TemporaryDirectory() as scratch:
        for variant in VARIANTS:
            result = Path(scratch) / f"{variant}.json"
            command = [sys.executable, __file__, "--child", args.model, corpus, str(args.texts)]
            command += [str(args.shard_texts), variant, str(result)]
            subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            runs[variant] = json.loads(result.read_text(encoding="utf-8"))
    summary = {
        "command": "python benchmarks/cache_memory.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "model": args.model,
        "corpus": corpus,
        "texts": args.texts,
        "shard_texts": args.shard_texts,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "runs": runs,
    }
    from alad.io.serialization import write_json_atomic, write_text_atomic

    write_json_atomic(out / "cache_memory.json", summary)
    text = format_table(summary)
    write_text_atomic(out / "cache_memory.md", text)
    print(text)
    return 0


def format_table(summary: dict) -> str:
    runs = summary["runs"]
    shards = max(len(r["rss_at_shard_start_mib"]) for r in runs.values())
    lines = [
        f"# Cache build memory: {summary['model']}, {summary['texts']:,} sentences, "
        f"{summary['shard_texts']:,} per shard",
        "",
        f"Command: `{summary['command']}`  ",
        f"Machine: {summary['machine']}; one torch thread; each variant in a fresh process. Resident memory "
        "(MiB) as each shard starts, then after the build and the peak (ru_maxrss).",
        "",
        "| shard | " + " | ".join(runs) + " |",
        "|---:|" + "---:|" * len(runs),
    ]
    cells = [r["rss_at_shard_start_mib"] for r in runs.values()]
    for index in range(shards):
        row = " | ".join(f"{c[index]:,.0f}" if index < len(c) else "" for c in cells)
        lines.append(f"| {index + 1} | {row} |")
    lines.append("| after | " + " | ".join(f"{r['rss_after_build_mib']:,.0f}" for r in runs.values()) + " |")
    lines.append("| peak | " + " | ".join(f"{r['peak_rss_mib']:,.0f}" for r in runs.values()) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
