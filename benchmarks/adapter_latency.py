"""Benchmark: what each adapter type costs at a task's real input size, latency only.

Latency does not depend on the weights, so no teacher is fine-tuned and nothing is aligned: for one
pair of a recipe config, the student alone (+ the task's head) and the student with each adapter asked
for (random-init, the teacher's width read from its config) are timed together in one interleaved,
repeated pass (``alad.evaluation.interleaved``) on the config's own evaluation items at their real
lengths (QA: the question + context windows of ``max_length``; token tasks: the sentences), batch 1
and 32, the rows taking turns call by call. A row's overhead is the median over rounds of its time
over the student's in the same round; a second, separately loaded copy of the student timed as a row
gives the noise floor. The rows are the models ``alad run`` times (``AladTaskModel``, eval mode,
``torch.inference_mode``), so the figures compare with the latency columns of its tables.

    python benchmarks/adapter_latency.py --config configs/qa_squad2.yaml --pair minilm-l2-to-minilm-l6 \\
        --adapter mlp:hidden_size=128 \\
        --adapter attention:hidden_size=128,attention_dim=64,attention_heads=2 \\
        --out benchmarks/results/adapter_latency-qa

``--also NAME=DIR`` (repeatable) adds saved task models (``AladTaskModel`` folders: a recipe's rows or
its teacher) to the same pass, e.g. to time trained adapters beside random-init ones or to see what
timing a larger model between the students' calls (as ``alad run``'s latency pass does) changes. They
must read the student's token ids (the same tokenizer); another tokenizer is refused.

Writes ``adapter_latency.json`` and ``adapter_latency.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
from pathlib import Path

import torch
from transformers import AutoConfig

from alad.adapters import AdapterConfig, AlignmentAdapter
from alad.evaluation.interleaved import interleaved_latency, real_length_batches
from alad.evaluation.latency import count_parameters
from alad.finetuning.trainer import load_splits
from alad.io.serialization import write_json_atomic
from alad.models.encoders import resolve_model
from alad.models.task_model import AladTaskModel, build_task_model
from alad.recipes.runner import load_run_config, machine_info, recipe_finetune_config, resolve_student
from alad.tasks import get_task

STUDENT, STUDENT_COPY = "student alone", "student alone (second copy: noise floor)"


def parse_adapter(text: str) -> tuple[str, dict]:
    """``TYPE:key=value,key=value`` as a row name and AdapterConfig fields (ints)."""
    adapter_type, _, rest = text.partition(":")
    fields = {}
    for part in filter(None, rest.split(",")):
        key, sep, value = part.partition("=")
        if not sep or not value.strip().isdigit():
            raise ValueError(f"--adapter {text!r}: options are key=integer, e.g. mlp:hidden_size=128")
        fields[key.strip()] = int(value)
    AdapterConfig(student_dim=1, teacher_dim=1, adapter_type=adapter_type, **fields)  # bad options fail here
    return text, {"adapter_type": adapter_type, **fields}


def parse_saved(text: str) -> tuple[str, Path]:
    """``NAME=DIR`` of ``--also``: a saved task model's row name and folder."""
    name, sep, folder = text.partition("=")
    if not sep or not name.strip() or not folder.strip():
        raise ValueError(f"--also takes NAME=DIR (a saved task model's folder), got {text!r}")
    if not Path(folder).is_dir():
        raise ValueError(f"--also {text}: {folder} is not a folder; pass a saved task model (a recipe row's model)")
    return name.strip(), Path(folder)


def load_saved(saved: list[tuple[str, Path]], reference) -> dict:
    """``{row name: model}`` of the ``--also`` models; each must tokenize as the student does."""
    probe = "Which river flows through Cairo? The Nile, 6,650 km long, flows north."
    expected = reference.tokenizer(probe)["input_ids"]
    rows = {}
    for name, folder in saved:
        model = AladTaskModel.from_pretrained(folder).eval()
        if model.tokenizer(probe)["input_ids"] != expected:
            raise ValueError(
                f"--also {name}={folder}: its tokenizer differs from the student's; the pass feeds one set of token ids"
            )
        rows[name] = model
    return rows


def build_rows(task_name: str, student: str, teacher_dim: int, labels, adapters: list[tuple[str, dict]], seed: int):
    """``{row name: model}``: the student alone, its second copy, and the student with each adapter."""
    rows = {
        name: build_task_model(task_name, student, labels, mode="frozen", seed=seed) for name in (STUDENT, STUDENT_COPY)
    }
    student_dim = rows[STUDENT].encoder.config.hidden_size
    for name, fields in adapters:
        torch.manual_seed(seed)
        adapter = AlignmentAdapter(AdapterConfig(student_dim=student_dim, teacher_dim=teacher_dim, **fields))
        rows[name] = build_task_model(task_name, student, labels, adapter=adapter, mode="frozen", seed=seed)
    return {name: model.eval() for name, model in rows.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="recipe config, e.g. configs/qa_squad2.yaml")
    parser.add_argument("--profile", default="quick", help="its profile (sets the evaluation items)")
    parser.add_argument("--pair", required=True, help="the pair's name in the config")
    parser.add_argument(
        "--adapter", action="append", required=True, help="TYPE:key=value,... (repeat), e.g. mlp:hidden_size=128"
    )
    parser.add_argument("--rounds", type=int, default=9, help="interleaved timing rounds")
    parser.add_argument("--batches", type=int, default=32, help="calls per row and batch size per round")
    parser.add_argument("--threads", type=int, default=2, help="torch threads while timing")
    parser.add_argument("--models-dir", default="runs/models", help="where a compressed student is written once")
    parser.add_argument(
        "--also", action="append", default=[], help="NAME=DIR (repeat): a saved task model timed in the same pass"
    )
    parser.add_argument("--out", required=True)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    adapters = [parse_adapter(text) for text in args.adapter]
    saved = [parse_saved(text) for text in args.also]

    config = load_run_config(args.config, args.profile, [args.pair])
    pair = config["pairs"][0]
    template = recipe_finetune_config(config)
    task, splits = get_task(config["task"]), load_splits(template)
    student = resolve_student(pair, Path(args.models_dir))
    teacher_dim = AutoConfig.from_pretrained(resolve_model(pair["teacher"])).hidden_size  # its width, not its weights
    rows = build_rows(config["task"], student, teacher_dim, task.label_set(splits.train, None), adapters, template.seed)
    rows.update(load_saved(saved, rows[STUDENT]))

    reference = rows[STUDENT]
    features = task.features(reference, splits.eval, template, labelled=False)  # inputs only, no label read
    batches = {b: real_length_batches(features, lambda g: task.collate(reference, g), b, args.batches) for b in (1, 32)}
    torch.set_num_threads(args.threads)
    timings = interleaved_latency(rows, batches, rounds=args.rounds, reference=STUDENT, show_progress=not args.quiet)

    summary = {
        "command": "python "
        + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine_info(),  # after set_num_threads: it names the threads timed with
        "threads": args.threads,
        "config": args.config,
        "profile": args.profile,
        "pair": pair,
        "teacher_dim": teacher_dim,
        "also": {name: str(folder) for name, folder in saved},
        "eval_items": len(splits.eval),
        "eval_features": len(features),
        "max_length": template.max_length if config["task"] == "qa" else None,
        "median_tokens_b1": statistics.median(int(mask.sum()) for _, mask in batches[1]),
        "rows": [
            {"row": name, "params": count_parameters(model), **{f"b{b}": timings[name][b] for b in (1, 32)}}
            for name, model in rows.items()
        ],
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "adapter_latency.json", summary)
    (out / "adapter_latency.md").write_text(format_table(summary))
    print(format_table(summary))
    return 0


def format_table(summary: dict) -> str:
    b1 = summary["rows"][0]["b1"]
    lines = [
        f"# Adapter latency at the task's input size: {summary['config']} ({summary['profile']}), "
        f"pair {summary['pair']['name']}",
        "",
        f"Command: `{summary['command']}`  ",
        f"Machine: {summary['machine']}  ",
        f"Inputs: {summary['eval_features']} model inputs of {summary['eval_items']} evaluation items"
        + (f" (windows of at most {summary['max_length']} tokens)" if summary["max_length"] else "")
        + f"; batch 1: {b1['calls']} single inputs, mean {b1['mean_tokens']:.1f} tokens, median "
        f"{summary['median_tokens_b1']:.0f}; batch 32: length-sorted groups. Median of {b1['rounds']} interleaved "
        "rounds; overhead = median over rounds of the row's time over the student's in the same round. "
        "Adapters random-init (latency does not depend on the weights), teacher width "
        f"{summary['teacher_dim']}."
        + (
            " Saved models timed in the same pass (--also): "
            + ", ".join(f"{name} = `{folder}`" for name, folder in summary["also"].items())
            + "."
            if summary.get("also")
            else ""
        ),
        "",
        "| row | params | ms b1 | overhead b1 | ms b32 | overhead b32 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in summary["rows"]:
        cells = [f"{row[f'b{b}']['median_ms']:.2f} | {row[f'b{b}']['overhead_pct']:+.1f}%" for b in (1, 32)]
        lines.append(f"| {row['row']} | {row['params']:,} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
