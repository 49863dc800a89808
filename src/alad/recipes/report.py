"""The recipe's report: ``results.md`` (every row, the label sweep, the stage-3 comparison, the
alignment stages, how latency was measured) and its plots (metric against parameters, latency and
label budget)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from alad.tasks import get_task


def _count(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else (f"{n / 1e3:.1f}K" if n >= 1e3 else str(n))


def _fmt(value, pct: bool = False) -> str:
    if value is None:
        return ""
    return f"{100 * value:.0f}%" if pct else (f"{value:.2f}" if isinstance(value, float) else str(value))


def metric_cell(value, column: str) -> str:
    """A task metric: blank where not measured (None, NaN, or a column added after the run), AUCs to 3
    decimals (a fraction), the rest to 2 (percentages and points)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.3f}" if column.endswith("auc") else f"{value:.2f}"


def format_results(results: dict) -> str:
    """Markdown: per pair, the alignment stages, the rows at the main label budget (metric beside
    params, latency, cosine, recovery), the label sweep and the stage-3 comparison."""
    task = get_task(results["task"])
    cols = list(task.columns)
    extra_cols = [c for c in EXTRA_COLUMNS if any(c in r for r in results["rows"])]  # QA: v1.1 EM / F1
    if extra_cols:
        cols += extra_cols
        results = {**results, "rows": [{**dict.fromkeys(extra_cols, float("nan")), **r} for r in results["rows"]]}
    main = results.get("main_labels", results["data"]["train_items"])
    lines = _header_lines(results, main) + _no_answer_lines(results)
    for pair in results["pairs"]:
        lines += _pair_lines(results, pair, main, cols, task.main_metric)
    lines += [
        "",
        "recovery = (row - student alone in the same mode and budget) / (teacher - that student); vs random = row "
        "minus the random-init adapter trained the same way (points); share of teacher = teacher-head score / teacher "
        "score (no task labels used for the student). KD rows read the teacher's soft predictions on the labelled "
        "items and on unlabelled items of the training split (column 'unlabelled'), never their gold labels. "
        f"{_latency_note(results.get('latency'))} 'cos to teacher' is measured on adapter rows only (held-out "
        "evaluation texts).",
    ]
    return "\n".join(lines) + "\n"


def _header_lines(results: dict, main: int) -> list[str]:
    """Title, data, settings, command, machine, wall clock and (QA) the article split and evaluation sets."""
    info, config = results["data"], results["config"]
    min_steps = (config.get("finetune") or {}).get("min_steps", 0)
    lines = [
        f"# {results['task'].upper()} results, profile {results['profile']}",
        "",
        f"Training split: {info['train_available']} items in `{info['train_file']}`; labelled budgets "
        f"{results.get('labels', [main])} (the main tables use {main}; smaller budgets are subsets of larger ones); "
        f"evaluated on {info['eval_items']} of {info['eval_available']} from `{info['eval_file']}`.  ",
        f"Stage 2 text: `{config.get('stage2_texts', 'all')}` of the training split (labels never read)"
        + (f" plus `{config['extra_texts']}`" if config.get("extra_texts") else "")
        + f"; task fine-tuning {config.get('epochs')} epochs (at least {min_steps} steps), seed "
        f"{config.get('seed', 0)}; KD settings {json.dumps(config.get('kd') or {})}; precision "
        f"{config.get('precision', 'fp32')} (alignment and stage-3 training; the teacher's fine-tuning, evaluation "
        "and latency in fp32).  ",
        f"Command: `{results.get('command', '')}`  ",
        f"Machine: {results.get('machine', '')}",
    ]
    if results.get("wall_seconds") is not None:
        lines[-1] += "  "
        lines.append(_wall_clock_line(results))
    if "article_split" in info:
        split = info["article_split"]
        lines.append(f"Article split (seeded): {json.dumps({k: v for k, v in split.items() if 'titles' not in k})}")
    return lines + _evaluation_sets_lines(info)


def _no_answer_lines(results: dict) -> list[str]:
    """SQuAD 2.0: the always-no-answer baseline and what each threshold column means."""
    baseline = next((r.get("no_answer_baseline") for r in results["rows"] if r.get("no_answer_baseline")), None)
    if not baseline:
        return []
    return [
        f"Always-no-answer baseline on this evaluation set: EM {baseline['exact']:.2f}, F1 {baseline['f1']:.2f}. "
        "F1 near it means a model that mostly answers 'no answer'; HasAns_f1 shows whether it finds spans. "
        "f1, exact, HasAns_f1, NoAns_f1 abstain where the no-answer score is above 0; best_f1 at the threshold "
        "best on these questions themselves (optimistic); cv_f1, cv_HasAns_f1 at a threshold chosen on the other "
        "half of the evaluation articles (two folds by article). noans_auc: the chance that an unanswerable "
        "question's no-answer score is above an answerable one's (1: it tells them apart; 0.5: not at all)."
    ]


def _pair_lines(results: dict, pair: dict, main: int, cols: list[str], metric: str) -> list[str]:
    """One pair's section: warnings, teacher, alignment, the main rows, the sweep, rows not run, variants."""
    rows = [r for r in results["rows"] if r["pair"] == pair["name"]]
    lines = ["", f"## {pair['name']}: {pair['student']} -> {pair['teacher']}", ""]
    lines += [f"**WARNING: {warning}**\n" for warning in pair["warnings"]]
    lines += _teacher_lines(rows)
    lines += _alignment_table(pair.get("alignment") or {})
    lines += ["", f"### Every row at {main} labels", ""]
    lines += _rows_table([r for r in rows if r["kind"] != "variant" and r.get("labels") in (None, 0, main)], cols)
    lines += _sweep_table(rows, metric)
    missing = [m for m in results.get("missing", []) if m.startswith(pair["name"] + "/")]
    if missing:
        lines += [
            "",
            f"Not run yet ({len(missing)} rows, reported with --report-only): "
            + ", ".join(f"`{m.split('/', 1)[1]}`" for m in missing),
        ]
    variants = [r for r in rows if r["kind"] == "variant"]
    if variants:
        lines += ["", f"### Stage 3 settings compared ({main} labels)", ""]
        lines += _rows_table(variants, cols)
    return lines


def _wall_clock_line(results: dict) -> str:
    """How long this invocation took, per pair and phase (stages reused from disk take ~0 s)."""
    phases = "; ".join(
        f"{pair['name']}: " + ", ".join(f"{phase} {sec / 60:.1f}" for phase, sec in pair["wall_seconds"].items())
        for pair in results["pairs"]
        if pair.get("wall_seconds")
    )
    return (
        f"Wall clock of this invocation: {results['wall_seconds'] / 60:.1f} min with {results.get('jobs', 1)} "
        f"row process(es), latency pass included ({phases} min; a finished stage or row is reused, not re-timed)."
    )


EXTRA_COLUMNS = ("v1.1_exact", "v1.1_f1")  # shown where rows have them (QA with squad_v1_eval)


def _teacher_lines(rows: list[dict]) -> list[str]:
    """A teacher continued by ``teacher_refine``: its first pass beside it."""
    teacher = next((r for r in rows if r["kind"] == "teacher"), {})
    first = teacher.get("first_pass")
    if not first:
        return []
    extra = "".join(f", {c} {_fmt(first[c])}" for c in EXTRA_COLUMNS if c in first)
    return [
        f"Teacher: a first pass on {_count(first['train_items'])} items ({first['train_seconds'] / 60:.1f} min: "
        f"{_fmt(first['main'])}{extra}), then teacher_refine on {_count(teacher.get('train_items') or 0)} "
        f"({(teacher.get('train_seconds') or 0) / 60:.1f} min): the teacher row.",
        "",
    ]


def _evaluation_sets_lines(info: dict) -> list[str]:
    """QA: the training pool and the evaluation sets, as load_splits recorded them."""
    lines = []
    pool = info.get("pool")
    if pool:
        negatives = info.get("squad_negatives") or {}
        v1 = info.get("squad_v1_train")
        lines.append(
            f"Training pool: {pool['articles']} articles, {pool['questions']} questions ({pool['answerable']} "
            f"answerable, {pool['unanswerable']} unanswerable)"
            + (
                f"; SQuAD 1.1 train added ({v1['duplicate_articles']} articles already in the SQuAD 2.0 train file "
                "kept once)"
                if v1
                else ""
            )
            + f"; negatives: {negatives.get('made', 0) if negatives.get('state') == 'on' else 'off'}.  "
        )
    share = info.get("unanswerable_share")
    if share:
        lines.append(
            f"Training subset: {share['questions']} questions drawn {share['share']:g} unanswerable "
            f"({share['unanswerable_own']} of the pool's own, {share['unanswerable_made']} made negatives, "
            f"{share['answerable']} answerable).  "
        )
    for name, described in (info.get("evaluation_sets") or {}).items():
        label = "SQuAD 1.1 dev articles not in SQuAD 2.0 dev" if name == "squad_v1_eval" else "Evaluation split"
        evaluated = described.get("evaluated", info.get("eval_items"))
        lines.append(
            f"{label}: {described['articles']} articles, {described['questions']} questions "
            f"({evaluated} evaluated); scoring: {described['scoring']}.  "
        )
    if info.get("disjoint_by_article"):
        lines.append(f"Training and evaluation disjoint by article: {info['disjoint_by_article']}.  ")
    return lines


def _latency_note(latency: dict | None) -> str:
    if not latency:
        return "Latency: not measured."
    return (
        f"Latency: CPU, {latency['threads']} torch thread(s), every row of the main budget timed together at the end"
        f"{' in a fresh process (not the one that trained)' if latency.get('fresh_process') else ''} "
        f"in {latency['rounds']} rounds (median), the rows taking turns call by call, each round {latency['calls']} "
        f"calls per batch size on the evaluation set's own items at their real lengths (batch 1: single items, "
        f"mean tokens in column 'tokens b1'; batch 32: length-sorted groups), each model through its own tokenizer."
        + _shared_timing_note(latency)
    )


def _shared_timing_note(latency: dict) -> str:
    timed, rows = latency.get("models_timed"), latency["rows"]
    if timed is None or timed == rows:
        return ""
    return (
        f" Rows whose models compute the same thing on the same inputs, weights aside (same modules, shapes, "
        f"dtypes and token ids: one adapter trained frozen, joint or with KD), share one timing: {timed} models "
        f"timed for {rows} rows."
    )


def _alignment_table(alignment: dict) -> list[str]:
    if not alignment:
        return []
    chosen = alignment.get("chosen", {})
    lines = [
        "| alignment stage | texts | epochs run / max | held-out cosine | mean-token cosine | used |",
        "|---|---|---|---|---|---|",
    ]
    for stage, info in alignment.items():
        if stage == "chosen":
            continue
        cosines = ", ".join(f"w{w} {c:.4f}" for w, c in info["val_cosine"].items())
        used = ", ".join(f"w{w}" for w, s in chosen.items() if s == stage)
        kind = (info.get("adapter") or {}).get("adapter_type", "mlp")
        label = stage if kind == "mlp" else f"{stage} ({kind} adapters)"  # mlp tables read as before
        lines.append(
            f"| {label} | {info['num_texts']} | {info['epochs_run']} / {info['max_epochs']} | {cosines} | "
            f"{info['mean_predictor_cosine']:.4f} | {used} |"
        )
    return lines


def _rows_table(rows: list[dict], cols: list[str]) -> list[str]:
    lines = [
        "| row | " + " | ".join(cols) + " | params | trained | unlabelled | ms b1 | ms b32 | tokens b1 | "
        "cos to teacher | recovery | vs random | share of teacher |",
        "|---" * (len(cols) + 11) + "|",
    ]
    for row in rows:
        lines.append(
            f"| {row['name']} | "
            + " | ".join(metric_cell(row.get(c), c) for c in cols)
            + f" | {_count(row['params'])} | {_count(row['params_trained'])} | {row.get('unlabelled_items') or ''} | "
            f"{_fmt(row.get('latency_ms_b1'))} | {_fmt(row.get('latency_ms_b32'))} | "
            f"{_fmt(row.get('latency_tokens_b1'))} | {_fmt(row.get('cosine_to_teacher'))} | "
            f"{_fmt(row.get('recovery'), True)} | "
            f"{_fmt(row.get('gain_over_random'))} | {_fmt(row.get('share_of_teacher'), True)} |"
        )
    return lines


def _sweep_table(rows: list[dict], metric: str) -> list[str]:
    budgets = sorted({r["labels"] for r in rows if r.get("labels")})
    if len(budgets) < 2:
        return []
    names = list(dict.fromkeys(r["name"] for r in rows if r["kind"] != "variant"))
    score = {(r["name"], r.get("labels")): r["main"] for r in rows}
    lines = ["", f"### {metric} at every label budget", "", "| row | " + " | ".join(map(str, budgets)) + " |"]
    lines.append("|---" * (len(budgets) + 1) + "|")
    for name in names:
        fixed = score.get((name, None), score.get((name, 0)))
        cells = [_fmt(fixed if fixed is not None else score.get((name, b))) for b in budgets]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _short_label(row: dict) -> str:
    if row["kind"] == "teacher":
        return "teacher"
    prefix = {
        "student": "student",
        "student-kd": "student+KD",
        "alad": "AlAd",
        "alad-kd": "AlAd+KD",
        "random": "random",
        "variant": "AlAd",
    }[row["kind"]]
    return f"{prefix} {row.get('mode') or ''}".strip()


_STYLES = {
    "teacher": ("*", "tab:red"),
    "student": ("s", "tab:grey"),
    "student-kd": ("D", "tab:green"),
    "alad": ("o", "tab:blue"),
    "alad-kd": ("P", "tab:purple"),
    "random": ("x", "tab:orange"),
    "variant": ("v", "tab:cyan"),
}


def plot_results(results: dict, out: Path) -> None:
    """Metric against parameters and against batch-1 latency (rows of the main budget), and against
    the label budget: one panel per pair."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from alad.io.serialization import atomic_write

    metric = get_task(results["task"]).main_metric
    pairs = [p["name"] for p in results["pairs"]]
    for x_key, x_label, file in (
        ("params", "parameters (millions)", "metric_vs_params.png"),
        ("latency_ms_b1", "CPU latency, batch 1 (ms)", "metric_vs_latency.png"),
    ):
        fig, axes = plt.subplots(1, len(pairs), figsize=(6 * len(pairs), 4.5), squeeze=False)
        for ax, pair in zip(axes[0], pairs, strict=True):
            for row in (r for r in results["rows"] if r["pair"] == pair and r.get("latency_ms_b1") is not None):
                x = row[x_key] / 1e6 if x_key == "params" else row[x_key]
                marker, color = _STYLES[row["kind"]]
                ax.scatter(x, row["main"], marker=marker, color=color, s=70, label=row["kind"])
                ax.annotate(_short_label(row), (x, row["main"]), textcoords="offset points", xytext=(5, 3), fontsize=7)
            _finish_axes(ax, x_label, metric, f"{results['task'].upper()} ({results['profile']}): {pair}")
        fig.tight_layout()
        atomic_write(out / file, lambda tmp, f=fig: f.savefig(tmp, format="png", dpi=120))
        plt.close(fig)
    if len(results.get("labels") or []) > 1:
        plot_label_sweep(results, out / "metric_vs_labels.png")


def plot_label_sweep(results: dict, path: Path) -> None:
    """The main metric against the number of labelled training items, one line per row; rows that use
    no student label (teacher, teacher-head) are flat lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from alad.io.serialization import atomic_write

    metric = get_task(results["task"]).main_metric
    pairs = [p["name"] for p in results["pairs"]]
    budgets = results["labels"]
    fig, axes = plt.subplots(1, len(pairs), figsize=(7 * len(pairs), 5), squeeze=False)
    for ax, pair in zip(axes[0], pairs, strict=True):
        rows = [r for r in results["rows"] if r["pair"] == pair and r["kind"] != "variant"]
        for name in dict.fromkeys(r["name"] for r in rows):
            mine = [r for r in rows if r["name"] == name]
            marker, color = _STYLES[mine[0]["kind"]]
            label = _short_label(mine[0])
            if all(not r.get("labels") for r in mine):  # teacher, teacher-head: no student labels
                ax.axhline(mine[0]["main"], color=color, linestyle=":", label=f"{label} (no student labels)")
                continue
            points = sorted((r["labels"], r["main"]) for r in mine if r.get("labels"))
            style = "--" if mine[0].get("mode") == "joint" else "-"
            ax.plot(*zip(*points, strict=True), marker=marker, color=color, linestyle=style, label=label)
        ax.set_xscale("log")
        ax.set_xticks(budgets, [str(b) for b in budgets])
        _finish_axes(ax, "labelled training items", metric, f"{results['task'].upper()} ({results['profile']}): {pair}")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


def _finish_axes(ax, x_label: str, metric: str, title: str) -> None:
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    ax.legend(unique.values(), unique.keys(), fontsize=7, loc="lower right")
    ax.set_xlabel(x_label)
    ax.set_ylabel(metric)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
