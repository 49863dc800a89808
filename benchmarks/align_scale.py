"""Benchmark: streaming alignment at corpus scale, and 1 vs 2 processes.

(1) Stage 1 of pair (b) (MiniLM-L6 cut to layers 0,1 -> MiniLM-L6) on the first 10k, 30k and 100k
    corpus sentences: wall-clock, tokens per second and peak resident memory of each. Target: the
    peak on 100k is at most 1.3x the peak on 10k (training streams the cache in a bounded buffer).
(2) The same 10k sentences on 1 process and on 2 processes (``torchrun --standalone
    --nproc-per-node 2``), one thread each: cache-build and training throughput, and the final
    held-out cosine of each. Target: 2 processes build the cache >= 1.6x as fast, with equal results.

Every measurement runs in a fresh child process (peak resident memory is that child's
``ru_maxrss``; under 2 processes the larger of the two) with a fresh embedding cache, so the cache
build is timed. Writes ``align_scale.json`` and ``align_scale.md`` to ``--out``.

    python benchmarks/align_scale.py --sizes 10000,30000,100000 --compare-size 10000 --out benchmarks/results

Check it on tiny local models first (seconds), e.g. with the test suite's tiny BERT and RoBERTa:

    python benchmarks/align_scale.py --student DIR --teacher DIR --keep-layers none --corpus FILE \\
        --sizes 40,80 --compare-size 80 --shard-texts 8 --batch-tokens 64 --hidden-size 32 --out /tmp/scale
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
import time
from pathlib import Path

CHILD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


# --------------------------------------------------------------------------------------------------
# child: one measured alignment run (one process of it under torchrun)


def child(job_file: str) -> None:
    import torch

    torch.set_num_threads(1)
    import alad.alignment.trainer
    from alad.alignment.cache import EmbeddingCache
    from alad.alignment.pairing import segment_texts
    from alad.alignment.trainer import AlignConfig, align, load_texts
    from alad.models.encoders import load_encoder
    from alad.training import distributed

    job = json.loads(Path(job_file).read_text(encoding="utf-8"))
    alad.alignment.trainer.SHARD_TEXTS = job["shard_texts"]
    ctx = distributed.setup(torch.device("cpu"))
    config = AlignConfig(**job["config"])
    start = time.perf_counter()
    student, teacher = load_encoder(config.student), load_encoder(config.teacher)
    segments = segment_texts(
        load_texts(config), [(student.tokenizer, student.max_length), (teacher.tokenizer, teacher.max_length)]
    )
    loaded = time.perf_counter()
    # The cache build, timed on its own (align() below finds it complete and only reads it).
    cache = EmbeddingCache(config.cache_dir, shard_size=job["shard_texts"])
    built = [
        cache.build(model, segments, layer, show_progress=False)
        for model, layer in ((teacher, config.teacher_layer), (student, config.student_layer))
    ]
    distributed.barrier()
    cache_s = time.perf_counter() - loaded
    build_tokens = sum(len(s.input_ids) for cached in built for s in cached.spans)
    del built, segments  # align() reads and tokenises the corpus itself: hold no second copy of it
    train_start = time.perf_counter()
    summary = align(job["out"], config, student=student, teacher=teacher, show_progress=False)
    train_s = time.perf_counter() - train_start
    peaks = distributed.gather(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # MiB (Linux: KiB)
    if ctx.is_main:
        epochs = summary["epochs_run"]
        result = {
            "processes": ctx.world_size,
            "texts": summary["num_texts"],
            "segments": summary["num_segments"],
            "train_tokens": summary["train_tokens"],
            "build_tokens": build_tokens,
            "load_s": loaded - start,
            "cache_build_s": cache_s,
            "cache_tokens_per_s": build_tokens / cache_s,
            "train_s": train_s,
            "train_tokens_per_s": summary["train_tokens"] * epochs / train_s,
            "wall_s": time.perf_counter() - start,
            "peak_rss_mib": max(peaks),
            "peak_rss_mib_per_process": peaks,
            "epochs": epochs,
            "val_cosine": {w: row["val_cosine"] for w, row in summary["windows"].items()},
            "mean_predictor_cosine": summary["mean_predictor"]["cosine"],
        }
        Path(job["result"]).write_text(json.dumps(result, indent=2), encoding="utf-8")
    distributed.shutdown()


# --------------------------------------------------------------------------------------------------
# parent: prepare the student, run the children, write the tables


def run_child(job: dict, processes: int, work: Path, timeout: float) -> dict:
    name = f"{job['name']}-p{processes}"
    job = {**job, "out": str(work / name / "run"), "result": str(work / f"{name}.json")}
    job["config"] = {**job["config"], "cache_dir": job.get("cache_dir") or str(work / name / "cache")}
    job_file = work / f"{name}.job.json"
    job_file.write_text(json.dumps(job), encoding="utf-8")
    env = {**os.environ, **CHILD_ENV}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    script = [str(Path(__file__).resolve()), "--child", str(job_file)]
    if processes == 1:
        command = [sys.executable, *script]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
        command += script
    print(f"[{name}] {' '.join(command)}", flush=True)
    subprocess.run(command, env=env, check=True, timeout=timeout)
    return json.loads(Path(job["result"]).read_text(encoding="utf-8"))


def prepare_student(args, work: Path) -> str:
    if args.keep_layers in ("", "none"):
        return args.student
    from alad.compression.layer_dropping import drop_layers

    folder = work / "student"
    drop_layers(args.student, [int(x) for x in args.keep_layers.split(",")], folder)
    return str(folder)


def format_table(report: dict) -> str:
    setup = report["setup"]
    lines = [
        "# Alignment at scale: streaming from the cache, 1 vs 2 processes",
        "",
        f"Command: `{setup['command']}`  ",
        f"Machine: {setup['machine']}; one torch thread per process  ",
        f"Pair: {setup['student']} (layers {setup['keep_layers']}) -> {setup['teacher']}; windows "
        f"{setup['windows']}, {setup['epochs']} epochs, {setup['batch_tokens']} tokens per batch, buffer "
        f"{setup['buffer_tokens']:,} tokens, cache shards of {setup['shard_texts']} texts  ",
        f"Meanwhile on this machine: {setup.get('note') or 'nothing else (quiet)'}",
        "",
        "## Corpus size (1 process)",
        "",
        "| sentences | wall-clock (s) | cache build (s) | cache tokens/s | training (s) | training tokens/s | "
        "peak RSS (MiB) | peak vs smallest |",
        "|---|---|---|---|---|---|---|---|",
    ]
    sizes = report["sizes"]
    base = sizes[0]["peak_rss_mib"] if sizes else 1.0
    if not sizes:
        lines = lines[:-5]
    for row in sizes:
        lines.append(
            f"| {row['texts']:,} | {row['wall_s']:.1f} | {row['cache_build_s']:.1f} | "
            f"{row['cache_tokens_per_s']:,.0f} | "
            f"{row['train_s']:.1f} | {row['train_tokens_per_s']:,.0f} | {row['peak_rss_mib']:,.0f} | "
            f"{row['peak_rss_mib'] / base:.2f}x |"
        )
    if report.get("processes"):
        one, two = report["processes"]
        lines += [
            "",
            f"## 1 vs 2 processes ({one['texts']:,} sentences, one thread each)",
            "",
            "| processes | cache tokens/s | training tokens/s | wall-clock (s) | peak RSS per process (MiB) | "
            + " | ".join(f"held-out cosine w{w}" for w in one["val_cosine"])
            + " |",
            "|---|---|---|---|---|" + "---|" * len(one["val_cosine"]),
        ]
        for row in (one, two):
            lines.append(
                f"| {row['processes']} | {row['cache_tokens_per_s']:,.0f} | {row['train_tokens_per_s']:,.0f} | "
                f"{row['wall_s']:.1f} | {', '.join(f'{p:,.0f}' for p in row['peak_rss_mib_per_process'])} | "
                + " | ".join(f"{row['val_cosine'][w]:.4f}" for w in one["val_cosine"])
                + " |"
            )
        lines += [
            f"| speed-up 2/1 | **{two['cache_tokens_per_s'] / one['cache_tokens_per_s']:.2f}x** | "
            f"**{two['train_tokens_per_s'] / one['train_tokens_per_s']:.2f}x** | | |" + " |" * len(one["val_cosine"]),
        ]
    lines += [
        "",
        "Tokens per second: cache build = student + teacher tokens embedded per second; training = training "
        "tokens x epochs per second of align() (cache already built). Peak RSS is the child process's "
        "ru_maxrss (the models, the tokenised corpus and the streaming buffer). Two processes train on the "
        "same global batches as one, so held-out cosines agree up to dropout and the order of sums.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--student", default="all-MiniLM-L6-v2")
    parser.add_argument("--keep-layers", default="0,1", help="layers of the student kept (none: the student as is)")
    parser.add_argument("--teacher", default="all-MiniLM-L6-v2")
    parser.add_argument("--corpus", default=None, help="text file (default: the 100k-sentence corpus)")
    parser.add_argument("--sizes", default="10000,30000,100000", help="corpus sizes of part (1)")
    parser.add_argument("--compare-size", type=int, default=10000, help="corpus size of part (2); 0: skip it")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--windows", default="1,3")
    parser.add_argument("--batch-tokens", type=int, default=1024)
    parser.add_argument("--hidden-size", type=int, default=1280)
    parser.add_argument("--buffer-tokens", type=int, default=None, help="default: AlignConfig's")
    parser.add_argument(
        "--shard-texts", type=int, default=1024, help="texts per cache shard (10 shards for 10k: 5 per process)"
    )
    parser.add_argument("--timeout", type=float, default=12 * 3600, help="seconds per child run")
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one, deleted)")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--name", default="align_scale", help="file stem of the JSON / markdown written to --out")
    parser.add_argument(
        "--cache-dir",
        default=None,
        help="one embedding cache for every run (default: a fresh one per run, so the cache build is timed); "
        "with a cache built before, only memory and training are measured",
    )
    parser.add_argument("--note", default="", help="what else the machine ran meanwhile (written into the table)")
    args = parser.parse_args(argv)
    if args.child:
        child(args.child)
        return 0

    import torch

    from alad.alignment.trainer import AlignConfig
    from alad.data.sources import corpus_path
    from alad.io.serialization import write_json_atomic, write_text_atomic

    with tempfile.TemporaryDirectory(prefix="align-scale-") as scratch:
        work = Path(args.work or scratch)
        work.mkdir(parents=True, exist_ok=True)
        student = prepare_student(args, work)
        config = {
            "student": student,
            "teacher": args.teacher,
            "corpus": str(Path(args.corpus) if args.corpus else corpus_path()),
            "windows": [int(w) for w in args.windows.split(",")],
            "epochs": args.epochs,
            "batch_tokens": args.batch_tokens,
            "hidden_size": args.hidden_size,
        }
        if args.buffer_tokens is not None:
            config["buffer_tokens"] = args.buffer_tokens
        buffer_tokens = config.get("buffer_tokens", AlignConfig.buffer_tokens)
        base = {"shard_texts": args.shard_texts, "cache_dir": args.cache_dir}
        sizes = []
        for size in (int(s) for s in args.sizes.split(",") if s.strip()):
            job = {**base, "name": f"n{size}", "config": {**config, "max_texts": size}}
            sizes.append(run_child(job, 1, work, args.timeout))
        processes = []
        if args.compare_size:
            job = {**base, "name": f"cmp{args.compare_size}", "config": {**config, "max_texts": args.compare_size}}
            processes = [run_child(job, n, work, args.timeout) for n in (1, 2)]
    report = {
        "setup": {
            "command": "python benchmarks/align_scale.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs; Python {platform.python_version()}, "
            f"torch {torch.__version__}",
            "student": args.student,
            "keep_layers": args.keep_layers,
            "teacher": args.teacher,
            "windows": config["windows"],
            "epochs": args.epochs,
            "batch_tokens": args.batch_tokens,
            "buffer_tokens": buffer_tokens,
            "shard_texts": args.shard_texts,
            "note": args.note,
        },
        "sizes": sizes,
        "processes": processes,
    }
    if len(sizes) > 1:
        report["peak_rss_largest_vs_smallest"] = sizes[-1]["peak_rss_mib"] / sizes[0]["peak_rss_mib"]
    if processes:
        report["cache_speedup_2_vs_1"] = processes[1]["cache_tokens_per_s"] / processes[0]["cache_tokens_per_s"]
        report["train_speedup_2_vs_1"] = processes[1]["train_tokens_per_s"] / processes[0]["train_tokens_per_s"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / f"{args.name}.json", report)
    write_text_atomic(out / f"{args.name}.md", format_table(report))
    print(format_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
