"""Re-score a finished ``alad run``'s rows on its own evaluation split with today's metrics.

A metric added after a run (QA's ``noans_auc``, say) is otherwise missing from its table. For every
row of the run's ``results.json`` that kept its model (the main budget's rows and the teacher), this
loads the model and the settings it was trained with, rebuilds the run's evaluation split from the
run's saved config (the same seeded subset), and evaluates again. Nothing is trained or written into
the run. The row's headline metric is recomputed too and must equal the run's figure (checked): the
new columns are then from the same predictions the run scored.

    python benchmarks/rescore_run.py --run runs/qa_squad2-quick-v5 --out results/qa_squad2-quick-amx/rescored

Writes ``rescored.json`` and ``rescored.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from pathlib import Path

from tqdm.auto import tqdm

from alad.finetuning.trainer import load_run, load_splits
from alad.io.serialization import read_json, write_json_atomic, write_text_atomic
from alad.recipes.report import metric_cell
from alad.recipes.runner import machine_info, recipe_finetune_config
from alad.tasks import get_task


def rescore(run: Path, show_progress: bool = True) -> dict:
    results = read_json(run / "results.json", "recipe results")
    config = read_json(run / "run_config.json", "recipe config")
    task = get_task(results["task"])
    splits = load_splits(recipe_finetune_config(config))
    rows = [row for row in results["rows"] if row.get("model_dir")]
    if not rows:
        raise SystemExit(f"rescore_run: {run}/results.json has no row with a saved model (model_dir)")
    scored = []
    for row in tqdm(rows, desc="rows", disable=not show_progress):
        model, trained_with = load_run(Path(row["model_dir"]).parent)
        metrics = task.evaluate(model.eval(), splits.eval, trained_with)
        headline = task.headline(metrics)
        main = headline[task.main_metric]
        if not math.isclose(main, row["main"], abs_tol=1e-6):
            raise SystemExit(
                f"rescore_run: {row['name']} scores {main} now against {row['main']} in the run: not the run's "
                "predictions (another evaluation split or code that predicts differently)"
            )
        scored.append({"name": row["name"], "pair": row.get("pair"), **headline})
    return {
        "command": "python " + shlex.join(["benchmarks/rescore_run.py", *sys.argv[1:]]),
        "machine": machine_info(),
        "run": str(run),
        "run_command": results.get("command"),
        "task": results["task"],
        "eval_items": len(splits.eval),
        "main_metric": task.main_metric,
        "rows": scored,
    }


def format_table(summary: dict) -> str:
    columns = [k for k in summary["rows"][0] if k not in ("name", "pair")]
    lines = [
        f"# {summary['task']} rows of `{summary['run']}` re-scored",
        "",
        f"Command: `{summary['command']}`  ",
        f"Run: `{summary['run_command']}`  ",
        f"Machine: {summary['machine']}  ",
        f"Evaluation items: {summary['eval_items']} (the run's own seeded subset); every row's "
        f"{summary['main_metric']} equals the run's (checked).",
        "",
        "| row | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for row in summary["rows"]:
        lines.append(f"| {row['name']} | " + " | ".join(metric_cell(row[c], c) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, type=Path, help="a finished alad run folder (results.json)")
    parser.add_argument("--out", required=True, type=Path, help="folder for rescored.json and rescored.md")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args()
    if not (args.run / "results.json").is_file():
        parser.error(f"--run {args.run} holds no results.json: pass a finished alad run folder")
    summary = rescore(args.run, show_progress=not args.quiet)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "rescored.json", summary)
    write_text_atomic(args.out / "rescored.md", format_table(summary))
    print(format_table(summary))


if __name__ == "__main__":
    main()
