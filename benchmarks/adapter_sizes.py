"""Benchmark: the adapter-size trade-off, adapter type x hidden size x window, main metric against CPU
latency overhead.

For one student and one fine-tuned teacher run, every adapter of the sweep (adapter type x hidden
size x window; types ``mlp``, the window MLP, and ``attention``, the window MLP + one masked
self-attention block, with ``--adapter-types mlp,attention``) is aligned (stage 1 on a corpus, then
stage 2 on the task's training text, labels never read), then trained on the task in each mode asked
for (``frozen``, ``teacher-head``, ...). All adapters read one embedding cache: the teacher and the
student run once over each text set, and every type and hidden size reuses those cached states
(windows train together in one pass per type and hidden size).

Latency: the student alone (frozen + head) and every row are timed together at the end, in one
interleaved, repeated pass (median over rounds) on the evaluation set's own items at their real
lengths, batch 1 and 32, the rows taking turns call by call (see ``alad.evaluation.interleaved``); the
overhead is the median over rounds of a row's time over the student alone's in the same round, in
percent. A second, separately loaded copy of the student is timed as a row too: its overhead is the
noise floor of the column. The suggested default adapter is the one with the smallest batch-1 overhead whose
frozen row keeps ``--default-share`` of the W3/h1280 MLP's gain over the student (stated in the output).

Writes ``adapter_sizes.json``, ``adapter_sizes.md`` and ``adapter_sizes.png`` (metric against
overhead at batch 1 and 32) to ``--out``; every stage is resumable (run the same command again).

    python benchmarks/adapter_sizes.py --student models/minilm-l6 --teacher runs/teachers/ner-mpnet \\
        --corpus ../shared/data/corpus/nlp-corpus-sentences.txt --data conll2003 --task ner \\
        --hidden 64,128,256,512,1280 --windows 1,3,5 --adapter-types mlp,attention \\
        --out benchmarks/results/adapter_sizes-ner-b

Folders of the ``mlp`` type are named as before adapter types existed (``align-h128``,
``h128-w3-frozen``), so an earlier sweep resumes; other types add their name (``align-attention-h128``,
``attention-h128-w3-frozen``).
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch

from alad.adapters import ADAPTER_TYPES
from alad.alignment.trainer import AlignConfig, align
from alad.evaluation.interleaved import interleaved_latency, real_length_batches
from alad.finetuning.trainer import MODEL_DIR, FinetuneConfig, finetune, load_splits
from alad.io.serialization import write_json_atomic, write_text_atomic
from alad.models.task_model import AladTaskModel
from alad.tasks import get_task


def _ints(text: str) -> list[int]:
    values = [int(p) for p in text.split(",") if p.strip()]
    if not values or any(v < 1 for v in values):
        raise SystemExit(f"expected positive integers such as 128,256, got {text!r}")
    return values


def _types(text: str) -> list[str]:
    names = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [n for n in names if n not in ADAPTER_TYPES]
    if not names or unknown:
        raise SystemExit(f"--adapter-types takes names among {', '.join(sorted(ADAPTER_TYPES))}, got {text!r}")
    return list(dict.fromkeys(names))


def type_options(adapter_type: str, attention_dim: int, attention_heads: int) -> dict:
    """The alignment options of one adapter type: none for mlp, so its runs are the sweep's runs of before."""
    if adapter_type == "mlp":
        return {}
    options = {"adapter_type": adapter_type}
    if adapter_type == "attention":
        options.update(attention_dim=attention_dim, attention_heads=attention_heads)
    return options


def _prefix(adapter_type: str) -> str:
    return "" if adapter_type == "mlp" else f"{adapter_type}-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", required=True, help="student encoder: packaged name or model folder")
    parser.add_argument("--teacher", required=True, help="fine-tuned teacher run folder (alad finetune-teacher)")
    parser.add_argument("--corpus", required=True, help="stage-1 corpus (plain text, one text per line)")
    parser.add_argument("--max-texts", type=int, default=5000, help="stage-1 texts (default 5000; 0: no stage 1)")
    parser.add_argument("--stage1-epochs", type=int, default=10)
    parser.add_argument("--stage2-epochs", type=int, default=5, help="0: no stage 2")
    parser.add_argument("--task", default="ner")
    parser.add_argument("--data", default="conll2003")
    parser.add_argument("--eval-split", default="dev")
    parser.add_argument("--max-train", type=int, default=2000, help="labelled training items")
    parser.add_argument("--max-eval", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=3, help="task fine-tuning epochs")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--hidden", default="64,128,256,512,1280", help="adapter hidden sizes")
    parser.add_argument("--windows", default="1,3,5", help="adapter windows")
    parser.add_argument(
        "--adapter-types", default="mlp", help=f"adapter types, among {', '.join(sorted(ADAPTER_TYPES))} (default mlp)"
    )
    parser.add_argument("--attention-dim", type=int, default=128, help="attention adapters: query/key/value width")
    parser.add_argument("--attention-heads", type=int, default=4, help="attention adapters: heads")
    parser.add_argument("--modes", default="frozen,teacher-head", help="stage-3 modes")
    parser.add_argument("--tolerance", type=float, default=0.5, help="points from the best metric (default choice)")
    parser.add_argument(
        "--default-share",
        type=float,
        default=0.95,
        help="default choice: the cheapest frozen row keeping this share of the W3/h1280 MLP's gain over the student "
        "(0: the --tolerance rule instead)",
    )
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds")
    parser.add_argument("--latency-batches", type=int, default=32, help="calls per row and batch size per round")
    parser.add_argument("--threads", type=int, default=1, help="torch threads while timing")
    parser.add_argument("--cache-dir", default=None, help="embedding cache (default: alad's)")
    parser.add_argument("--out", default="benchmarks/results/adapter_sizes")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)

    hidden, windows, modes = _ints(args.hidden), _ints(args.windows), [m for m in args.modes.split(",") if m]
    adapter_types = _types(args.adapter_types)
    options = {t: type_options(t, args.attention_dim, args.attention_heads) for t in adapter_types}
    for t in adapter_types:  # a wrong option (attention_dim not divisible by the heads) fails before any work
        AlignConfig(**options[t])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    progress = not args.quiet
    teacher_encoder = str(Path(args.teacher) / MODEL_DIR / "encoder")
    base = FinetuneConfig(
        task=args.task,
        student=args.student,
        data=args.data,
        eval_split=args.eval_split,
        max_train=args.max_train,
        max_eval=args.max_eval,
        epochs=args.epochs,
        batch_size=args.batch_size,
        teacher=args.teacher,
    )
    splits = load_splits(base)
    task = get_task(args.task)
    stage2_texts = task.alignment_texts(splits.pool)

    adapters: dict[tuple[str, int, int], Path] = {}
    # one cache entry per text set: every type and hidden size reuses the same embeddings
    for adapter_type in adapter_types:
        for size in hidden:
            common = dict(student=args.student, teacher=teacher_encoder, windows=tuple(windows), hidden_size=size)
            common.update(options[adapter_type])
            if args.cache_dir:
                common["cache_dir"] = args.cache_dir
            stage1 = None
            if args.max_texts > 0:
                stage1 = out / f"align-{_prefix(adapter_type)}h{size}"
                align(
                    stage1,
                    AlignConfig(corpus=args.corpus, max_texts=args.max_texts, epochs=args.stage1_epochs, **common),
                    show_progress=progress,
                )
            final = stage1
            if args.stage2_epochs > 0:
                final = out / f"align2-{_prefix(adapter_type)}h{size}"
                corpus = f"task:{args.task}:{args.data}:all"
                init = str(stage1) if stage1 else None
                config = AlignConfig(corpus=corpus, init=init, max_texts=None, epochs=args.stage2_epochs, **common)
                align(final, config, texts=stage2_texts, show_progress=progress)
            if final is None:
                raise SystemExit("--max-texts 0 and --stage2-epochs 0 leave nothing to align")
            for window in windows:
                adapters[(adapter_type, size, window)] = final / f"w{window}"

    rows = []
    student_run = out / "student-frozen"
    result = finetune(student_run, base, splits=splits, show_progress=progress, mode="frozen")
    rows.append(_row("student alone, frozen", None, None, None, "frozen", result, student_run, task.main_metric))
    for (adapter_type, size, window), adapter in adapters.items():
        for mode in modes:
            folder = out / f"{_prefix(adapter_type)}h{size}-w{window}-{mode}"
            result = finetune(folder, base, splits=splits, show_progress=progress, adapter=str(adapter), mode=mode)
            name = f"{adapter_type + ' ' if adapter_type != 'mlp' else ''}h{size} w{window}, {mode}"
            rows.append(_row(name, adapter_type, size, window, mode, result, folder, task.main_metric))

    # latency: every row at the end, in one interleaved pass on the evaluation set's real lengths
    timings = time_rows(rows, task, splits.eval, base, args)
    gains = gain_shares(rows)
    summary = {
        "command": "python benchmarks/adapter_sizes.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "stages": {
            "stage1_texts": args.max_texts,
            "stage1_epochs": args.stage1_epochs if args.max_texts > 0 else 0,
            "stage2_texts": len(stage2_texts),
            "stage2_epochs": args.stage2_epochs,
            "task_epochs": args.epochs,
        },
        "student": args.student,
        "teacher": args.teacher,
        "task": args.task,
        "main_metric": task.main_metric,
        "data": splits.info,
        "adapter_types": adapter_types,
        **(
            {"attention_dim": args.attention_dim, "attention_heads": args.attention_heads}
            if "attention" in options
            else {}
        ),
        "hidden": hidden,
        "windows": windows,
        "modes": modes,
        "rounds": args.rounds,
        "threads": args.threads,
        "latency_batches": args.latency_batches,
        "noise_floor_pct": timings["noise_floor_pct"],
        "machine": f"{platform.processor() or platform.machine()}, {platform.system()}, torch {torch.__version__}",
        "rows": rows,
        "default": suggest_default(rows, args.tolerance, args.default_share or None),
        "tolerance": args.tolerance,
        "overhead_target": gains,
    }
    write_json_atomic(out / "adapter_sizes.json", summary)
    text = format_table(summary)
    write_text_atomic(out / "adapter_sizes.md", text)
    plot(summary, out / "adapter_sizes.png")
    print(text)
    return 0


STUDENT_COPY = "student alone, second copy"  # timed as a row of its own: the noise floor of the overhead column


def latency_key(row: dict) -> tuple:
    """Rows with the same compute (the same adapter in frozen and teacher-head mode) are timed once."""
    return (row.get("type"), row["hidden"], row["window"])


def time_rows(rows: list[dict], task, items, config, args) -> dict:
    """Fill ``ms_b1/ms_b32`` and the paired ``overhead_b1_pct/overhead_b32_pct`` of every row (see
    :func:`alad.evaluation.interleaved.interleaved_latency`). Each distinct model is timed once, plus a
    second, separately loaded copy of the student: its overhead over the student is pure measurement
    noise, stated beside the table."""
    torch.set_num_threads(args.threads)
    timed: dict[tuple, dict] = {}  # the first row of each distinct model
    for row in rows:
        timed.setdefault(latency_key(row), row)
    models = {row["name"]: AladTaskModel.from_pretrained(Path(row["folder"]) / MODEL_DIR) for row in timed.values()}
    student = rows[0]["name"]
    models[STUDENT_COPY] = AladTaskModel.from_pretrained(Path(rows[0]["folder"]) / MODEL_DIR)
    reference = models[student]
    features = task.features(reference, items, config)

    def collate(group):
        return task.collate(reference, group)

    batches = {b: real_length_batches(features, collate, b, args.latency_batches) for b in (1, 32)}
    timings = interleaved_latency(models, batches, rounds=args.rounds, reference=student, show_progress=not args.quiet)
    for row in rows:
        measured = timings[timed[latency_key(row)]["name"]]
        for b in (1, 32):
            row[f"ms_b{b}"] = measured[b]["median_ms"]
            row[f"overhead_b{b}_pct"] = measured[b]["overhead_pct"]
    return {"noise_floor_pct": {str(b): timings[STUDENT_COPY][b]["overhead_pct"] for b in (1, 32)}}


def _row(name, adapter_type, size, window, mode, result, folder, metric) -> dict:
    """One table row; the metric is read by name (a reused run's headline comes back in sorted key order)."""
    return {
        "name": name,
        "type": adapter_type,
        "hidden": size,
        "window": window,
        "mode": mode,
        "metric": result["headline"][metric],
        "params_total": result["params_total"],
        "params_trained": result["params_trained"],
        "folder": str(folder),
    }


REFERENCE = ("mlp", 1280, 3)  # the paper's adapter, against which the cheaper settings are judged


def gain_shares(rows: list[dict], max_overhead_pct: float = 10.0, min_share: float = 0.8) -> dict | None:
    """Each frozen adapter row's gain over the student alone as a share of the W3/h1280 MLP's gain
    (``gain_share`` on the row), and which rows meet the issue's target: at most ``max_overhead_pct``
    batch-1 latency over the student and at least ``min_share`` of that gain."""
    student = next((r for r in rows if r["hidden"] is None), None)
    frozen = [r for r in rows if r["mode"] == "frozen" and r["hidden"] is not None]
    ref = next((r for r in frozen if (r.get("type", "mlp"), r["hidden"], r["window"]) == REFERENCE), None)
    if student is None or ref is None or ref["metric"] <= student["metric"]:
        return None
    for r in frozen:
        r["gain_share"] = (r["metric"] - student["metric"]) / (ref["metric"] - student["metric"])
    meeting = [r for r in frozen if r["overhead_b1_pct"] <= max_overhead_pct and r["gain_share"] >= min_share]
    best = max(meeting, key=lambda r: r["gain_share"], default=None)
    return {
        "rule": f"batch-1 overhead <= {max_overhead_pct:g}% and >= {100 * min_share:.0f}% of the W3/h1280 MLP's frozen "
        "gain over the student alone",
        "reference_gain": ref["metric"] - student["metric"],
        "meeting": [r["name"] for r in meeting],
        "best": best and {k: best[k] for k in ("name", "metric", "gain_share", "overhead_b1_pct", "overhead_b32_pct")},
    }


def suggest_default(rows: list[dict], tolerance: float, min_share: float | None = None) -> dict | None:
    """The adapter with the smallest batch-1 overhead among frozen rows that keep ``min_share`` of the
    W3/h1280 MLP's gain over the student (rows scored by :func:`gain_shares`), or, without shares,
    whose metric is within ``tolerance`` points of the best. A share is steadier than a distance from
    the best row, which is itself one noisy measurement."""
    frozen = [r for r in rows if r["mode"] == "frozen" and r["hidden"] is not None]
    if not frozen:
        return None
    best = max(r["metric"] for r in frozen)
    if min_share is not None and all("gain_share" in r for r in frozen):
        near = [r for r in frozen if r["gain_share"] >= min_share]
        rule = f"smallest batch-1 latency overhead among frozen rows keeping >= {100 * min_share:.0f}% of the W3/h1280 "
        rule += "MLP's gain over the student"
    else:
        near = [r for r in frozen if r["metric"] >= best - tolerance]
        rule = f"smallest batch-1 latency overhead among frozen rows within {tolerance} points of the best"
    choice = min(near, key=lambda r: (r["overhead_b1_pct"], r["params_total"]))
    return {
        "type": choice.get("type", "mlp"),
        "hidden": choice["hidden"],
        "window": choice["window"],
        "metric": choice["metric"],
        "best_metric": best,
        "overhead_b1_pct": choice["overhead_b1_pct"],
        "overhead_b32_pct": choice["overhead_b32_pct"],
        "rule": rule,
    }


def format_table(summary: dict) -> str:
    lines = [
        f"# Adapter size trade-off: {summary['student']} -> {summary['teacher']} ({summary['task']})",
        "",
        f"{summary['main_metric']} on {summary['data'].get('eval_items')} evaluation items; latency: median of "
        f"{summary['rounds']} rounds, the rows taking turns call by call, at the evaluation set's real lengths, "
        f"{summary['threads']} thread(s); overhead: median over rounds of the row's time over the student alone's "
        f"in the same round; {summary['machine']}",
        "",
    ]
    noise = summary.get("noise_floor_pct")
    if noise:
        lines += [
            f"Noise floor: a second copy of the student, timed as a row, measured {float(noise['1']):+.1f}% at "
            f"batch 1 and {float(noise['32']):+.1f}% at batch 32 over the first; rows with the same compute "
            "(one adapter in frozen and teacher-head mode) are timed once.",
            "",
        ]
    if summary.get("command"):
        stages, data = summary["stages"], summary["data"]
        lines += [
            f"Command: `{summary['command']}`  ",
            f"Sizes: {data.get('train_items')} labelled training items, {data.get('eval_items')} evaluation items; "
            f"stage 1 on {stages['stage1_texts']} corpus texts for {stages['stage1_epochs']} epochs, stage 2 on "
            f"{stages['stage2_texts']} task texts (labels unused) for {stages['stage2_epochs']} epochs; task "
            f"fine-tuning {stages['task_epochs']} epochs. 'share of gain': (row - student) / (W3/h1280 MLP - student), "
            "frozen rows.",
            "",
        ]
    lines += [
        "| row | adapter | hidden | window | mode | metric | share of gain | params | ms b1 | overhead b1 | ms b32 | "
        "overhead b32 |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in summary["rows"]:
        kind = r.get("type", "mlp") if r["hidden"] is not None else "-"  # rows written before types: mlp
        lines.append(
            f"| {r['name']} | {kind} | {r['hidden'] or '-'} | {r['window'] or '-'} | {r['mode']} | {r['metric']:.2f} | "
            f"{_share(r.get('gain_share'))} | {r['params_total']:,} | {r['ms_b1']:.2f} | "
            f"{r['overhead_b1_pct']:+.1f}% | {r['ms_b32']:.2f} | "
            f"{r['overhead_b32_pct']:+.1f}% |"
        )
    choice = summary["default"]
    if choice:
        lines += [
            "",
            f"Suggested default: hidden {choice['hidden']}, window {choice['window']}, {choice.get('type', 'mlp')} "
            f"adapter ({choice['metric']:.2f} vs best "
            f"{choice['best_metric']:.2f}; {choice['overhead_b1_pct']:+.1f}% batch 1, "
            f"{choice['overhead_b32_pct']:+.1f}% batch 32): {choice['rule']}.",
        ]
    target = summary.get("overhead_target")
    if target:
        best = target["best"]
        verdict = (
            f"met by {len(target['meeting'])} row(s); the largest share: {best['name']} "
            f"({100 * best['gain_share']:.0f}% of the gain, {best['overhead_b1_pct']:+.1f}% batch 1, "
            f"{best['overhead_b32_pct']:+.1f}% batch 32)"
            if best
            else "NOT met by any row"
        )
        lines += ["", f"Target ({target['rule']}): {verdict}."]
    return "\n".join(lines) + "\n"


def _share(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.0f}%"


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    markers = {1: "o", 3: "s", 5: "^"}
    for ax, batch in zip(axes, (1, 32), strict=True):
        for mode in summary["modes"]:
            rows = [r for r in summary["rows"] if r["mode"] == mode and r["hidden"] is not None]
            for r in rows:
                kind, color = r.get("type", "mlp"), f"C{summary['modes'].index(mode)}"
                ax.scatter(
                    r[f"overhead_b{batch}_pct"],
                    r["metric"],
                    marker=markers.get(r["window"], "x"),
                    edgecolors=color,
                    facecolors=color if kind == "mlp" else "none",  # other adapter types: hollow markers
                )
                label = f"{'' if kind == 'mlp' else kind + ' '}h{r['hidden']} w{r['window']}"
                ax.annotate(label, (r[f"overhead_b{batch}_pct"], r["metric"]), fontsize=7)
        student = summary["rows"][0]
        ax.axhline(student["metric"], color="grey", linestyle="--", label="student alone, frozen")
        ax.set_xlabel(f"CPU latency overhead over the student, batch {batch} (%)")
        ax.set_title(f"batch {batch}")
    axes[0].set_ylabel(summary["main_metric"])
    handles = [
        plt.Line2D([], [], color=f"C{i}", marker="o", linestyle="", label=m) for i, m in enumerate(summary["modes"])
    ]
    handles += [plt.Line2D([], [], color="k", marker=m, linestyle="", label=f"window {w}") for w, m in markers.items()]
    if any(r.get("type", "mlp") != "mlp" for r in summary["rows"] if r["hidden"] is not None):
        hollow = {"marker": "o", "linestyle": "", "markerfacecolor": "none", "color": "k"}
        handles.append(plt.Line2D([], [], label="hollow: adapter types other than mlp", **hollow))
    axes[1].legend(handles=handles, fontsize=8)
    fig.suptitle(f"Adapter size trade-off: {summary['student']} ({summary['task']})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
