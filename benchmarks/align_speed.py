"""Benchmark: the window sweep done as the published scripts do it vs alad's cache + one-pass training.

(a) "recompute": for each window size separately, every training step runs the frozen student and
    teacher on the batch again (what the published alignment scripts do), then trains the adapter.
(b) "alad": the teacher and student run once into the embedding cache (a fresh cache: the build is
    timed), then all window sizes train together in one pass over the cached states.

Both use the same texts, split, batches, optimiser, schedule and seeds, so held-out cosines should
agree up to float16 caching. Writes JSON and a markdown table.

    python benchmarks/align_speed.py --texts 2000 --epochs 3 --windows 1,3,5 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from alad.adapters import AdapterConfig, AlignmentAdapter
from alad.alignment.cache import encode_spans
from alad.alignment.pairing import segment_texts, teacher_targets, tokenize_with_spans
from alad.alignment.trainer import (
    AlignConfig,
    AlignmentData,
    align,
    alignment_loss,
    evaluate_adapter,
    token_batches,
    warmup_linear_decay,
)
from alad.data.readers import read_texts
from alad.io.serialization import write_json_atomic, write_text_atomic
from alad.models.encoders import load_encoder


def recompute_sweep(student, teacher, segments, config: AlignConfig) -> dict:
    """The published way: per window, per step, run both encoders on the batch again."""
    s_spans = tokenize_with_spans(student.tokenizer, segments)
    t_spans = tokenize_with_spans(teacher.tokenizer, segments)
    order = list(range(len(segments)))
    random.Random(config.seed).shuffle(order)
    n_val = max(1, int(round(len(order) * config.val_fraction)))
    val_idx, train_idx = sorted(order[:n_val]), sorted(order[n_val:])
    lengths = [len(s_spans[i].input_ids) for i in train_idx]

    def batch_data(indices: list[int]) -> AlignmentData:
        s_states = encode_spans(student, [s_spans[i] for i in indices], config.student_layer)
        t_states = encode_spans(teacher, [t_spans[i] for i in indices], config.teacher_layer)
        targets, masks = [], []
        for i, t_state in zip(indices, t_states, strict=True):
            target, mask = teacher_targets(s_spans[i], t_spans[i], t_state)
            targets.append(target.half())
            masks.append(mask)
        return AlignmentData(student=s_states, targets=targets, loss_mask=masks)

    results = {}
    steps_per_epoch = len(token_batches(lengths, config.batch_tokens, config.seed))
    for window in config.windows:
        torch.manual_seed(config.seed * 1000 + window)
        adapter = AlignmentAdapter(
            AdapterConfig(
                student_dim=student.hidden_size,
                teacher_dim=teacher.hidden_size,
                window=window,
                hidden_size=config.hidden_size,
                activation=config.activation,
                dropout=config.dropout,
            )
        )
        optimizer = torch.optim.AdamW(adapter.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, warmup_linear_decay(steps_per_epoch * config.epochs, config.warmup_ratio)
        )
        torch.manual_seed(config.seed)
        for epoch in tqdm(range(config.epochs), desc=f"recompute w{window}"):
            for batch in token_batches(lengths, config.batch_tokens, config.seed + epoch):
                data = batch_data([train_idx[i] for i in batch])
                x, attention, y, counted = data.collate(list(range(len(batch))))
                adapter.train()
                loss = alignment_loss(adapter(x, attention), y, counted, config.loss)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(adapter.parameters(), config.grad_clip)
                optimizer.step()
                scheduler.step()
        results[str(window)] = evaluate_adapter(adapter, batch_data(val_idx))["cosine"]
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=2000, help="first N corpus sentences")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--hidden-size", type=int, default=1280, help="adapter hidden width (results: 1280)")
    parser.add_argument("--windows", default="1,3,5")
    parser.add_argument("--student", default="all-MiniLM-L6-v2")
    parser.add_argument("--teacher", default="all-mpnet-base-v2")
    parser.add_argument("--corpus", default=None, help="text file (default: the shared 100k-sentence corpus)")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)

    from alad.data.sources import corpus_path

    torch.set_num_threads(torch.get_num_threads())
    texts = read_texts(args.corpus or corpus_path())[: args.texts]
    student, teacher = load_encoder(args.student), load_encoder(args.teacher)
    segments = segment_texts(texts, [(student.tokenizer, student.max_length), (teacher.tokenizer, teacher.max_length)])
    windows = tuple(int(w) for w in args.windows.split(","))
    config = AlignConfig(
        student=args.student,
        teacher=args.teacher,
        windows=windows,
        epochs=args.epochs,
        max_texts=args.texts,
        hidden_size=args.hidden_size,
        checkpoint_every=0,
    )

    start, cpu_start = time.perf_counter(), time.process_time()
    recompute = recompute_sweep(student, teacher, segments, config)
    recompute_s, recompute_cpu = time.perf_counter() - start, time.process_time() - cpu_start

    with tempfile.TemporaryDirectory() as tmp:
        start, cpu_start = time.perf_counter(), time.process_time()
        summary = align(
            Path(tmp) / "run",
            config,
            texts=segments,
            student=student,
            teacher=teacher,
            cache_dir=str(Path(tmp) / "cache"),
        )
        alad_s, alad_cpu = time.perf_counter() - start, time.process_time() - cpu_start

    n_tokens = sum(len(s.input_ids) for s in tokenize_with_spans(teacher.tokenizer, segments))
    result = {
        "command": "python benchmarks/align_speed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, {platform.processor() or 'cpu'}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "student": args.student,
        "teacher": args.teacher,
        "texts": len(segments),
        "train_texts": summary["num_train"],
        "val_texts": summary["num_val"],
        "teacher_tokens": n_tokens,
        "epochs": args.epochs,
        "windows": list(windows),
        "batch_tokens": config.batch_tokens,
        "recompute_seconds": round(recompute_s, 1),
        "alad_seconds": round(alad_s, 1),
        "speedup": round(recompute_s / alad_s, 2),
        "recompute_cpu_seconds": round(recompute_cpu, 1),
        "alad_cpu_seconds": round(alad_cpu, 1),
        "speedup_cpu": round(recompute_cpu / alad_cpu, 2),
        "held_out_cosine": {
            w: {"recompute": round(recompute[w], 4), "alad": round(summary["windows"][w]["val_cosine"], 4)}
            for w in recompute
        },
        "mean_predictor_cosine": round(summary["mean_predictor"]["cosine"], 4),
    }
    out = Path(args.out)
    write_json_atomic(out / "align_speed.json", result)
    write_text_atomic(out / "align_speed.md", to_markdown(result))
    print(to_markdown(result))
    return 0


def to_markdown(r: dict) -> str:
    lines = [
        "# Alignment sweep: recompute every step vs alad cache + one pass",
        "",
        f"Command: `{r['command']}`  ",
        f"Machine: {r['machine']}; Python {r['python']}, torch {r['torch']}  ",
        f"Data: {r['texts']} corpus sentences ({r['train_texts']} train / {r['val_texts']} held out, "
        f"{r['teacher_tokens']:,} teacher tokens), windows {r['windows']}, {r['epochs']} epochs, "
        f"{r['batch_tokens']} tokens per batch; {r['student']} -> {r['teacher']}",
        "",
        "| method | wall-clock (s) | process CPU time (s) |",
        "|---|---|---|",
        f"| (a) recompute student + teacher every step, per window | {r['recompute_seconds']} | "
        f"{r['recompute_cpu_seconds']} |",
        f"| (b) alad: cache once + all windows in one pass | {r['alad_seconds']} | {r['alad_cpu_seconds']} |",
        f"| ratio (a) / (b) | **{r['speedup']}x** | **{r['speedup_cpu']}x** |",
        "",
        "Wall-clock is what a user waits; process CPU time (all threads of this process) is less sensitive "
        "to other load on this shared 2-core machine. (b) includes building the cache from scratch.",
        "",
        "| window | held-out cosine (a) | held-out cosine (b) |",
        "|---|---|---|",
    ]
    for w, row in r["held_out_cosine"].items():
        lines.append(f"| {w} | {row['recompute']} | {row['alad']} |")
    lines.append(f"| trivial: teacher's mean token | {r['mean_predictor_cosine']} | {r['mean_predictor_cosine']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
