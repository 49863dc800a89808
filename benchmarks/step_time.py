"""Benchmark: one fine-tuning step split into forward, backward, gradient clipping and the AdamW step,
with torch's plain AdamW against the fused one that ``alad.training.loop.adamw`` picks.

Same model, same batches (POS on EWT dev, length-bucketed as in training), both optimisers one after
the other in one process; the first ``--warmup`` steps of each are not counted.

    python benchmarks/step_time.py --student runs/models/all-MiniLM-L6-v2-layers01 --mode joint \
        --out benchmarks/results/step_time

Writes ``step_time.json`` and ``step_time.md`` to ``--out`` (one row per run is appended).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch


def measure(student: str, mode: str, adapter: str | None, steps: int, warmup: int, threads: int) -> dict:
    from alad.finetuning.trainer import FinetuneConfig, length_bucketed_batches, load_splits, training_loss
    from alad.models.task_model import build_task_model
    from alad.tasks import get_task

    torch.set_num_threads(threads)
    config = FinetuneConfig(
        task="pos", data="conllu", tag="upos", train_split="dev", eval_split="test", max_train=2001,
        max_eval=50, student=student, mode=mode, adapter=adapter, batch_size=16, frozen_cache_mb=0,
    )  # fmt: skip
    splits, task = load_splits(config), get_task("pos")
    model = build_task_model("pos", student, task.label_set(splits.train, None), adapter=adapter, mode=mode)
    features = task.features(model, splits.train, config)
    batches = length_bucketed_batches([len(f.input_ids) for f in features], 16, 0)[: steps + warmup]
    params = [p for p in model.parameters() if p.requires_grad]
    out = {"trainable_parameters": sum(p.numel() for p in params)}
    for fused in (False, True):
        optimizer = torch.optim.AdamW(params, lr=1e-4, fused=fused)
        spent = dict.fromkeys(("forward", "backward", "clip", "optimizer"), 0.0)
        model.train()
        for index, rows in enumerate(batches):
            t0 = time.perf_counter()
            loss = training_loss(model, task, task.collate(model, [features[i] for i in rows]), config)
            t1 = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            t2 = time.perf_counter()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            t3 = time.perf_counter()
            optimizer.step()
            t4 = time.perf_counter()
            if index >= warmup:
                for name, seconds in zip(spent, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                    spent[name] += seconds
        out["fused" if fused else "plain"] = {k: 1000 * v / (len(batches) - warmup) for k, v in spent.items()}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", required=True, help="student encoder: packaged name or model folder")
    parser.add_argument("--mode", default="joint", help="joint or frozen")
    parser.add_argument("--adapter", default=None, help="an aligned adapter folder (optional)")
    parser.add_argument("--steps", type=int, default=40, help="steps counted per optimiser")
    parser.add_argument("--warmup", type=int, default=10, help="steps not counted first")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/step_time")
    args = parser.parse_args(argv)
    result = measure(args.student, args.mode, args.adapter, args.steps, args.warmup, args.threads)
    row = {
        "command": "python benchmarks/step_time.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "student": args.student,
        "mode": args.mode,
        "adapter": args.adapter,
        "threads": args.threads,
        "steps": args.steps,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        **result,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "step_time.json"
    rows = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []
    rows = [r for r in rows if r["command"] != row["command"]] + [row]
    from alad.io.serialization import write_json_atomic, write_text_atomic

    write_json_atomic(path, rows)
    write_text_atomic(out / "step_time.md", format_table(rows))
    print(format_table(rows))
    return 0


def format_table(rows: list[dict]) -> str:
    lines = [
        "# One fine-tuning step: plain vs fused AdamW (ms per step, POS on EWT dev, batch 16)",
        "",
        "| student | mode | trainable | threads | AdamW | forward | backward | clip | optimiser | step |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        for kind in ("plain", "fused"):
            t = row[kind]
            lines.append(
                f"| {row['student']} | {row['mode']} | {row['trainable_parameters']:,} | {row['threads']} | {kind} | "
                f"{t['forward']:.1f} | {t['backward']:.1f} | {t['clip']:.1f} | {t['optimizer']:.1f} | "
                f"{sum(t.values()):.1f} |"
            )
    lines += ["", "Commands (machine quiet, one after the other):", ""]
    lines += [f"- `{row['command']}` ({row['machine']}, {row['steps']} steps counted)" for row in rows]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
