"""Benchmark: PyTorch fp32 vs ONNX fp32 vs ONNX int8 of one fine-tuned run, on the same inputs.

For a finished fine-tuning run (``alad finetune`` or a stage-3 row of ``alad run``), exports the task
model to ONNX fp32 and ONNX int8 (``alad export``, with its parity check), then on the run's
evaluation items:

- the task metric of each variant (same items, same decoding);
- the share of real tokens whose predicted label (argmax) each ONNX variant shares with PyTorch;
- CPU latency at batch 1 and 32 on the evaluation set's own items at their real lengths, every row
  timed in one interleaved, repeated pass at the end (median over rounds; see ``alad.evaluation.interleaved``).

The issue's targets are checked and printed: ONNX fp32 identical predictions on >= 99.9% of tokens;
ONNX int8 within 1 F1 point of fp32 and at most 0.6x the ONNX fp32 batch-1 latency.

    python benchmarks/export_speed.py --run runs/ner_conll03-quick/<pair>/labels-2000/alad-w3-frozen \\
        --out benchmarks/results/export_speed --max-eval 1000 --rounds 7 --threads 1
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import shlex
import sys
from pathlib import Path

import torch

from alad.evaluation.interleaved import interleaved_latency, real_length_batches
from alad.export import OnnxTaskModel, export_onnx
from alad.export.onnx import parity
from alad.finetuning.trainer import evaluate_task_model, headline, load_run, load_splits
from alad.io.serialization import write_json_atomic, write_text_atomic
from alad.tasks import get_task
from alad.tasks.base import batched_logits


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="finished fine-tuning run folder")
    parser.add_argument("--out", default="benchmarks/results/export_speed", help="results folder (exports inside)")
    parser.add_argument("--max-eval", type=int, default=None, help="evaluation items (default: the run's)")
    parser.add_argument("--latency-batches", type=int, default=64, help="calls per row and batch size per round")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds (median reported)")
    parser.add_argument("--threads", type=int, default=1, help="torch and onnxruntime intra-op threads")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, config = load_run(args.run)
    if args.max_eval is not None:
        config = dataclasses.replace(config, max_eval=args.max_eval)
    exports = {"onnx-fp32": out / "onnx-fp32", "onnx-int8": out / "onnx-int8"}
    for name, folder in exports.items():
        if not (folder / "export.json").is_file():
            export_onnx(args.run, folder, quantize="int8" if name.endswith("int8") else None)
    variants = {"pytorch-fp32": model}
    variants.update({name: OnnxTaskModel.from_folder(folder, threads=args.threads) for name, folder in exports.items()})

    items = load_splits(config).eval
    task = get_task(config.task)
    features = task.features(model, items, config)
    results: dict = {}
    reference = batched_logits(model, task, features)
    for name, variant in variants.items():
        metrics = evaluate_task_model(variant, items, config)
        row = {"headline": headline(metrics, config.task), "params_total": variant.num_parameters()}
        if name != "pytorch-fp32":
            row["vs_pytorch"] = parity(reference, batched_logits(variant, task, features), qa=config.task == "qa")
        results[name] = row
        print(f"{name}: {row['headline']}", file=sys.stderr)

    def collate(group):
        return task.collate(model, group)

    batches = {b: real_length_batches(features, collate, b, args.latency_batches) for b in (1, 32)}
    timings = interleaved_latency({name: v for name, v in variants.items()}, batches, rounds=args.rounds)
    for name in variants:
        results[name]["latency"] = timings[name]

    metric = task.main_metric
    key = metric  # by name: a headline read back from JSON comes in sorted key order
    fp32, int8 = results["onnx-fp32"], results["onnx-int8"]
    targets = {
        "onnx_fp32_token_agreement": fp32["vs_pytorch"]["prediction_agreement"],
        "onnx_fp32_token_agreement_ok": fp32["vs_pytorch"]["prediction_agreement"] >= 0.999,
        "int8_metric_drop_points": fp32["headline"][key] - int8["headline"][key],
        "int8_metric_drop_ok": fp32["headline"][key] - int8["headline"][key] <= 1.0,
        "int8_batch1_latency_ratio": int8["latency"][1]["median_ms"] / fp32["latency"][1]["median_ms"],
    }
    targets["int8_batch1_latency_ok"] = targets["int8_batch1_latency_ratio"] <= 0.6
    summary = {
        "command": "python benchmarks/export_speed.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "run": str(args.run),
        "task": config.task,
        "main_metric": metric,
        "eval_items": len(items),
        "features": len(features),
        "rounds": args.rounds,
        "threads": args.threads,
        "machine": f"{platform.processor() or platform.machine()}, {platform.system()}, torch {torch.__version__}",
        "rows": results,
        "targets": targets,
    }
    write_json_atomic(out / "export_speed.json", summary)
    table = format_table(summary, key)
    write_text_atomic(out / "export_speed.md", table)
    print(table)
    return 0


def format_table(summary: dict, key: str) -> str:
    lines = [
        f"# PyTorch fp32 vs ONNX fp32 vs ONNX int8: {summary['run']}",
        "",
        f"{summary['task']}, {summary['eval_items']} evaluation items; latency: median of {summary['rounds']} "
        f"rounds, the variants taking turns call by call, at the evaluation set's real lengths, "
        f"{summary['threads']} thread(s); "
        f"{summary['machine']}  ",
        f"Command: `{summary.get('command', '')}`",
        "",
        f"| variant | {key} | token agreement with PyTorch | params | batch 1 (ms) | batch 32 (ms) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, row in summary["rows"].items():
        agreement = f"{100 * row['vs_pytorch']['prediction_agreement']:.3f}%" if "vs_pytorch" in row else "-"
        lat = row["latency"]
        lines.append(
            f"| {name} | {row['headline'][key]:.2f} | {agreement} | {row['params_total']:,} | "
            f"{lat[1]['median_ms']:.2f} | {lat[32]['median_ms']:.2f} |"
        )
    t = summary["targets"]
    lines += [
        "",
        f"- ONNX fp32 identical predictions on {100 * t['onnx_fp32_token_agreement']:.3f}% of tokens "
        f"(target >= 99.9%: {'met' if t['onnx_fp32_token_agreement_ok'] else 'NOT met'})",
        f"- ONNX int8 {key} {t['int8_metric_drop_points']:+.2f} points below fp32 "
        f"(target <= 1: {'met' if t['int8_metric_drop_ok'] else 'NOT met'})",
        f"- ONNX int8 batch-1 latency {t['int8_batch1_latency_ratio']:.2f}x ONNX fp32 "
        f"(target <= 0.6x: {'met' if t['int8_batch1_latency_ok'] else 'NOT met'})",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
