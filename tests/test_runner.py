"""Tests for alad.recipes.runner: the whole recipe on tiny models and data, its reuse, summaries and config files."""

from __future__ import annotations

import importlib
import json
import types
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from tiny_tasks import MODES, load_benchmark, save_tiny_bert, write_qa_data, write_recipe, write_squad_v1_data

import alad.finetuning.trainer as finetune_module
from alad.alignment.cache import corpus_hash
from alad.finetuning.trainer import FinetuneConfig, load_splits
from alad.recipes.report import format_results
from alad.recipes.runner import _summarise_pair, load_run_config, run_recipe

alignment_module = importlib.import_module("alad.alignment.trainer")
latency_module = importlib.import_module("alad.evaluation.latency")
# measure_latency runs a full garbage collection before timing, about 0.25 s in a process as big as a
# test session; the recipe measures 18 times per run, so the tests skip it (the timing itself is real).
NO_GC = types.SimpleNamespace(collect=lambda *args: 0)

TEACHER = "teacher (fine-tuned, upper bound)"
STUDENT_FROZEN = "student alone, frozen + head"
STUDENT_JOINT = "student alone, full fine-tuning"


@pytest.fixture(scope="module")
def recipe_run(bert_dir, sentences, tmp_path_factory):
    folder = tmp_path_factory.mktemp("recipe")
    path = write_recipe(folder, bert_dir, sentences)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ALAD_CACHE", str(folder / "cache"))  # the cosine reference uses the default cache
        patch.setattr(latency_module, "gc", NO_GC)
        results = run_recipe(load_run_config(path, "quick"), folder / "run", show_progress=False)
    return folder, path, results


# --------------------------------------------------------------------------------------------------
# the recipe


def test_recipe_rows(recipe_run):
    folder, _, results = recipe_run
    rows = results["rows"]
    names = [r["name"] for r in rows]
    assert names == [
        TEACHER,
        "AlAd w1, teacher-head",
        STUDENT_FROZEN,
        STUDENT_JOINT,
        *[f"AlAd w1, {mode}" for mode in MODES if mode != "teacher-head"],
        "random-init adapter w1, frozen",
        "random-init adapter w1, joint",
    ]
    assert [r["kind"] for r in rows] == ["teacher", "alad", "student", "student"] + ["alad"] * 3 + ["random"] * 2
    assert all(r["pair"] == "tiny" for r in rows)
    assert [r["labels"] for r in rows] == [None, 0] + [20] * 7
    for row in rows:
        assert row["params"] > 0 and row["latency_ms_b1"] > 0 and row["latency_ms_b32"] > 0, row["name"]
        assert row["main"] == row["micro_f1"] and 0.0 <= row["main"] <= 100.0
        assert Path(row["model_dir"]).is_dir(), row["name"]
        # timed on the evaluation sentences' real lengths (3 items of 3-8 words), not on a fixed length
        assert 2 < row["latency_tokens_b1"] < 20, row
    # one interleaved pass over every row of the main budget, at the end, in a process spawned for it
    threads = torch.get_num_threads()
    # the teacher, the student (frozen and joint) and the student with an adapter (5 rows): 3 models timed
    assert results["latency"] == {
        "rounds": 2, "calls": 3, "threads": threads, "rows": 9, "models_timed": 3, "eval_items": 10,
        "fresh_process": True,
    }  # fmt: skip
    by_name = {r["name"]: r for r in rows}
    timing = {r["name"]: (r["latency_ms_b1"], r["latency_ms_b32"]) for r in rows}
    assert timing[STUDENT_FROZEN] == timing[STUDENT_JOINT] != timing[TEACHER]
    assert len({timing[r["name"]] for r in rows if r["kind"] in ("alad", "random")}) == 1
    # the 1-layer student is smaller than the 2-layer teacher; the adapter and head add a little
    teacher, student = by_name[TEACHER], by_name[STUDENT_FROZEN]
    assert student["params"] < teacher["params"]
    assert by_name["AlAd w1, frozen"]["params"] > student["params"]
    assert by_name["AlAd w1, teacher-head"]["params_trained"] == 0
    assert by_name["AlAd w1, head-only"]["params_trained"] == 32 * 3 + 3  # the head alone (32 -> O, B-LOC, B-PER)
    assert by_name[STUDENT_JOINT]["params_trained"] == student["params"]

    pair = results["pairs"][0]
    assert pair["teacher_score"] == teacher["main"]
    assert pair["student_scores"] == {"frozen": student["main"], "joint": by_name[STUDENT_JOINT]["main"]}
    assert set(pair["alignment_cosine"]) == {"1"}
    for row in rows[1:2] + rows[4:]:
        assert -1.0 <= row["cosine_to_teacher"] <= 1.0
        assert (
            "recovery" in row
            and row["student_same_mode"] == pair["student_scores"]["joint" if row["mode"] == "joint" else "frozen"]
        )
        gap = teacher["main"] - row["student_same_mode"]
        assert row["recovery"] == (pytest.approx((row["main"] - row["student_same_mode"]) / gap) if gap > 0 else None)
    head = by_name["AlAd w1, teacher-head"]
    assert "share_of_teacher" in head
    assert head["share_of_teacher"] == (head["main"] / teacher["main"] if teacher["main"] else None)
    assert by_name["AlAd w1, joint"]["gain_over_random"] == pytest.approx(
        by_name["AlAd w1, joint"]["main"] - by_name["random-init adapter w1, joint"]["main"]
    )
    assert results["data"]["train_items"] == 20 and results["data"]["eval_items"] == 10


def test_recipe_files(recipe_run):
    folder, _, results = recipe_run
    run = folder / "run"
    assert json.loads((run / "results.json").read_text()) == json.loads(json.dumps(results))
    markdown = (run / "results.md").read_text()
    assert markdown.startswith("# NER results, profile quick")
    assert "## tiny:" in markdown and "| AlAd w1, teacher-head |" in markdown
    # the alignment table (header, stage 1, stage 2), then the rows table (header, one line per row)
    assert markdown.count("\n| ") == 3 + 1 + len(results["rows"])
    assert "\n|---|---|" in markdown
    assert "timed together at the end in a fresh process (not the one that trained) in 2 rounds" in markdown
    for png in ("metric_vs_params.png", "metric_vs_latency.png"):
        assert (run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the teacher-not-better warning appears exactly when the teacher does not beat the student
    pair = results["pairs"][0]
    warned = pair["teacher_score"] <= pair["student_scores"]["joint"]
    assert ("TEACHER DOES NOT BEAT THE STUDENT" in markdown) == warned
    # stages and baselines each have their own folder; the compressed student and teacher are shared
    for sub in (
        "stage1/w1",
        "stage2/w1",
        "random-w1",
        "labels-20/student-frozen/model",
        "labels-20/alad-w1-teacher-head/model",
    ):
        assert (run / "tiny" / sub).is_dir(), sub
    student = folder / "models"
    [compressed] = list(student.iterdir())
    assert json.loads((compressed / "config.json").read_text())["num_hidden_layers"] == 1
    [teacher] = list((folder / "teachers").iterdir())
    assert teacher.name.startswith("ner-") and (teacher / "metrics.json").is_file()
    random_adapter = json.loads((run / "tiny" / "random-w1" / "adapter_config.json").read_text())
    aligned = json.loads((run / "tiny" / "stage2" / "w1" / "adapter_config.json").read_text())
    assert random_adapter["config"] == aligned["config"] and random_adapter["metadata"] == {"random_init": True}
    assert aligned["config"]["hidden_size"] == 16 and aligned["metadata"]["init"] == str(run / "tiny" / "stage1")


def test_second_run_reuses_every_stage(recipe_run, monkeypatch):
    folder, path, results = recipe_run

    def refuse(*args, **kwargs):
        raise AssertionError("a finished stage ran again")

    monkeypatch.setenv("ALAD_CACHE", str(folder / "cache"))
    monkeypatch.setattr(latency_module, "gc", NO_GC)
    monkeypatch.setattr(finetune_module, "train_task_model", refuse)
    monkeypatch.setattr(finetune_module, "build_task_model", refuse)
    monkeypatch.setattr(alignment_module, "load_texts", refuse)
    monkeypatch.setattr(alignment_module, "load_encoder", refuse)
    model_files = sorted((folder / "run").rglob("*.safetensors")) + sorted((folder / "teachers").rglob("*.safetensors"))
    assert len(model_files) >= 9 * 2
    before = {p: p.stat().st_mtime_ns for p in model_files}

    # the latency pass runs again, here in this process (fresh_process: false; the first run spawned one)
    config = load_run_config(path, "quick")
    config["latency"] = {**config["latency"], "fresh_process": False}
    again = run_recipe(config, folder / "run", show_progress=False)
    assert {p: p.stat().st_mtime_ns for p in model_files} == before
    assert again["latency"]["fresh_process"] is False and results["latency"]["fresh_process"] is True
    assert all(r["latency_ms_b1"] > 0 for r in again["rows"] if r["model_dir"])
    keep = ("name", "main", "params", "params_trained", "recovery", "share_of_teacher", "cosine_to_teacher")
    assert [{k: r.get(k) for k in keep} for r in again["rows"]] == [
        {k: r.get(k) for k in keep} for r in results["rows"]
    ]


def test_a_failed_latency_process_says_how_to_time_in_this_one(monkeypatch):
    import sys

    from alad.recipes.latency_pass import time_rows

    monkeypatch.setattr(sys, "executable", "false")  # a child that fails at once
    splits = types.SimpleNamespace(eval=[])
    with pytest.raises(RuntimeError, match=r"latency pass \(a fresh process\) failed.*fresh_process: false"):
        time_rows({"latency": {"rounds": 1}}, types.SimpleNamespace(task="ner"), splits, [{"model_dir": "m"}], False)
    assert time_rows({}, types.SimpleNamespace(task="ner"), splits, [{"model_dir": None}], False) == {}  # none timed


# --------------------------------------------------------------------------------------------------
# summaries


def _rows(teacher: float, frozen: float, joint: float) -> list[dict]:
    rows = [
        {"name": TEACHER, "kind": "teacher", "mode": "joint", "main": teacher},
        {"name": STUDENT_FROZEN, "kind": "student", "mode": "frozen", "main": frozen},
        {"name": STUDENT_JOINT, "kind": "student", "mode": "joint", "main": joint},
        {"name": "AlAd w3, frozen", "kind": "alad", "mode": "frozen", "window": 3, "main": 65.0},
        {"name": "AlAd w3, joint", "kind": "alad", "mode": "joint", "window": 3, "main": 70.0},
        {"name": "AlAd w3, teacher-head", "kind": "alad", "mode": "teacher-head", "window": 3, "main": 40.0},
        {"name": "random-init adapter w3, frozen", "kind": "random", "mode": "frozen", "window": 3, "main": 55.0},
    ]
    for row in rows:
        row.update(pair="p", micro_f1=row["main"], macro_f1=row["main"], params=1_000_000, params_trained=0)
        row.update(latency_ms_b1=1.0, latency_ms_b32=5.0, labels=20)
    rows[0]["labels"], rows[5]["labels"] = None, 0  # the teacher and teacher-head read no student label
    return rows


def _results(rows: list[dict], pair: dict) -> dict:
    info = {"train_items": 20, "train_available": 30, "train_file": "t.txt", "eval_items": 10}
    info.update(eval_available=12, eval_file="v.txt")
    return {"task": "ner", "profile": "quick", "config": {}, "data": info, "pairs": [pair], "rows": rows}


ALIGNMENT = {
    "summaries": {
        "stage2": {
            "num_texts": 30,
            "epochs_run": 4,
            "max_epochs": 10,
            "windows": {"3": {"val_cosine": 0.75, "best_epoch": 3}},
            "mean_predictor": {"cosine": 0.5},
        }
    },
    "chosen": {"3": "stage2"},
}


def test_summary_recovery_share_and_gain():
    rows = _rows(teacher=80.0, frozen=50.0, joint=60.0)
    pair = _summarise_pair("p", "student", "teacher", rows, ALIGNMENT, 20)
    assert pair["warnings"] == [] and pair["teacher_score"] == 80.0
    assert pair["student_scores"] == {"frozen": 50.0, "joint": 60.0} and pair["alignment_cosine"] == {"3": 0.75}
    by_name = {r["name"]: r for r in rows}
    assert by_name["AlAd w3, frozen"]["recovery"] == pytest.approx(0.5)  # (65 - 50) / (80 - 50)
    assert by_name["AlAd w3, joint"]["recovery"] == pytest.approx(0.5)  # (70 - 60) / (80 - 60)
    assert by_name["AlAd w3, teacher-head"]["recovery"] == pytest.approx(-1 / 3)  # against the frozen student
    assert by_name["AlAd w3, teacher-head"]["share_of_teacher"] == pytest.approx(0.5)
    assert by_name["AlAd w3, frozen"]["gain_over_random"] == pytest.approx(10.0)
    assert by_name["AlAd w3, joint"]["gain_over_random"] is None  # no random twin in joint mode
    assert "recovery" not in by_name[TEACHER] and "share_of_teacher" not in by_name["AlAd w3, frozen"]
    markdown = format_results(_results(rows, pair))
    assert "WARNING" not in markdown
    assert "| AlAd w3, frozen | 65.00 | 65.00 | 1.00M | 0 |  | 1.00 | 5.00 |  |  | 50% | 10.00 |  |" in markdown
    assert "| stage2 | 30 | 4 / 10 | w3 0.7500 | 0.5000 | w3 |" in markdown
    assert "| AlAd w3, teacher-head |" in markdown and "| -33% |" in markdown


def test_teacher_not_better_warning(capsys):
    rows = _rows(teacher=58.0, frozen=50.0, joint=60.0)
    pair = _summarise_pair("p", "student", "teacher", rows, ALIGNMENT, 20)
    [warning] = pair["warnings"]
    assert warning.startswith("TEACHER DOES NOT BEAT THE STUDENT: teacher 58.00 <= fully fine-tuned student 60.00")
    assert "!!! p: TEACHER DOES NOT BEAT THE STUDENT" in capsys.readouterr().out
    by_name = {r["name"]: r for r in rows}
    assert by_name["AlAd w3, joint"]["recovery"] is None  # no gap to recover
    assert by_name["AlAd w3, frozen"]["recovery"] == pytest.approx((65 - 50) / (58 - 50))
    markdown = format_results(_results(rows, pair))
    assert f"**WARNING: {warning}**" in markdown
    # an equal score is no better either
    rows = _rows(teacher=60.0, frozen=50.0, joint=60.0)
    assert len(_summarise_pair("p", "s", "t", rows, ALIGNMENT, 20)["warnings"]) == 1


# --------------------------------------------------------------------------------------------------
# question answering end to end


def test_qa_recipe_aligns_on_question_context_pairs(bert_dir, sentences, tmp_path, monkeypatch):
    """With attention adapters, named in stage 1 only: stage 2 takes them over."""
    from transformers import AutoTokenizer

    from alad.adapters import AlignmentAdapter, WindowAttentionAdapter

    teacher = save_tiny_bert(tmp_path / "qa-bert", AutoTokenizer.from_pretrained(bert_dir), max_position_embeddings=128)
    data = write_qa_data(tmp_path / "squad")
    recipe = {
        "task": "qa",
        "data": f"squad:{data}",
        "squad_v1": str(write_squad_v1_data(tmp_path / "squad_v1.1")),
        "squad_v1_eval": True,  # every row on the SQuAD 1.1 set too
        "eval_split": "dev",
        "pairs": [{"name": "tiny", "student": {"compress": str(teacher), "keep_layers": [0]}, "teacher": str(teacher)}],
        "corpus": str(tmp_path / "corpus.txt"),
        "windows": [1],
        "modes": ["frozen", "teacher-head"],
        "batch_size": 8,
        "max_length": 128,
        "doc_stride": 32,
        "epochs": 1,
        "stage1": {"epochs": 1, "max_texts": 20, "hidden_size": 16, **ATTENTION},
        "stage2": {"epochs": 1, "align_special_tokens": True},
        "compare_adapters": {"mlp": {"adapter_type": "mlp", "hidden_size": 24}},  # beside the attention adapter
        "kd": {"kd_weight": 0.5, "kd_temperature": 2.0, "kd_max_texts": 8},  # span distillation
        "labels": [6],
        "cosine_texts": 4,
        "teachers_dir": str(tmp_path / "teachers"),
        "profiles": {"quick": {}},
    }
    (tmp_path / "corpus.txt").write_text("\n".join(sentences), encoding="utf-8")
    (tmp_path / "qa.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    monkeypatch.setenv("ALAD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(latency_module, "gc", NO_GC)
    results = run_recipe(load_run_config(tmp_path / "qa.yaml", "quick"), tmp_path / "run", show_progress=False)
    names = [r["name"] for r in results["rows"]]
    assert names == [
        TEACHER,
        "AlAd w1, teacher-head",
        STUDENT_FROZEN,
        STUDENT_JOINT,
        "AlAd w1, frozen",
        "random-init adapter w1, frozen",
        "student + KD, frozen + head",
        "student + KD, full fine-tuning",
        "AlAd w1 + KD, frozen",
        "AlAd w1 mlp, teacher-head",
        "AlAd w1 mlp, frozen",
    ]
    rows = {r["name"]: r for r in results["rows"]}
    assert all(rows[n]["unlabelled_items"] == 2 for n in names if "KD" in n)  # 8 items read, 6 labelled
    # the compared adapter: aligned in its own stages, timed, no random twin of its own type
    for name in ("AlAd w1 mlp, teacher-head", "AlAd w1 mlp, frozen"):
        assert rows[name]["adapter_kind"] == "mlp" and rows[name]["gain_over_random"] is None
        assert rows[name]["latency_ms_b1"] is not None and "/adapter-mlp/" in rows[name]["model_dir"]
    assert rows["AlAd w1 mlp, teacher-head"]["labels"] == 0 and rows["AlAd w1, frozen"]["gain_over_random"] is not None
    for stage in ("stage1-mlp", "stage2-mlp"):
        adapter = AlignmentAdapter.from_pretrained(tmp_path / "run" / "tiny" / stage / "w1")
        assert type(adapter) is not WindowAttentionAdapter and adapter.config.hidden_size == 24, stage
    assert results["pairs"][0]["alignment"]["stage2-mlp"]["num_texts"] == 10
    assert json.loads((tmp_path / "run" / "tiny" / "stage2-mlp" / "run_config.json").read_text())["config"]["init"]
    for row in results["rows"]:
        assert {"exact", "f1", "HasAns_f1", "NoAns_f1"} <= set(row) and row["main"] == row["f1"]
        assert 0.0 <= row["v1.1_exact"] <= row["v1.1_f1"] <= 100.0
    teacher_run = Path(results["rows"][0]["model_dir"]).parent
    v1 = json.loads((teacher_run / "metrics.json").read_text())["squad_v1_eval"]
    assert (results["rows"][0]["v1.1_exact"], results["rows"][0]["v1.1_f1"]) == (v1["exact"], v1["f1"])
    markdown = (tmp_path / "run" / "results.md").read_text()
    assert (
        "| best_f1 | cv_f1 | cv_HasAns_f1 | noans_auc | v1.1_exact | v1.1_f1 | params |" in markdown
        and "| AlAd w1 mlp, frozen | " in markdown
    )
    assert "cv_f1, cv_HasAns_f1 at a threshold chosen on the other half of the evaluation articles" in markdown
    assert "noans_auc: the chance that an unanswerable question's no-answer score is above" in markdown
    assert "SQuAD 1.1 dev articles not in SQuAD 2.0 dev: 1 articles, 2 questions (2 evaluated); scoring: " in markdown
    assert "Training and evaluation disjoint by article: checked." in markdown
    # a run from before a column existed (no cv_f1, noans_auc) still reports: blank cells, not a KeyError
    older = {
        **results,
        "rows": [{k: v for k, v in r.items() if k not in ("cv_f1", "noans_auc")} for r in results["rows"]],
    }
    lines = format_results(older).splitlines()
    header = next(line for line in lines if line.startswith("| row | f1 |"))
    teacher_line = next(line for line in lines if line.startswith(f"| {TEACHER} |"))
    cells = dict(
        zip(*([c.strip() for c in line.strip("|").split("|")] for line in (header, teacher_line)), strict=True)
    )
    assert (cells["cv_f1"], cells["noans_auc"]) == ("", "")
    assert cells["best_f1"] == f"{results['rows'][0]['best_f1']:.2f}" and cells["cv_HasAns_f1"]
    # benchmarks/rescore_run.py: every saved row again on the run's own evaluation items, same F1 (checked)
    rescore = load_benchmark("rescore_run").rescore
    rescored = rescore(tmp_path / "run", show_progress=False)
    timed = [r for r in results["rows"] if r["model_dir"]]
    assert [(r["name"], r["f1"], r["noans_auc"]) for r in rescored["rows"]] == [
        (r["name"], r["f1"], r["noans_auc"]) for r in timed
    ]
    assert rescored["eval_items"] == 5 and all(0.0 <= r["noans_auc"] <= 1.0 for r in rescored["rows"])
    edited = json.loads((tmp_path / "run" / "results.json").read_text())
    edited["rows"][0]["main"] += 1.0  # a run whose figure these predictions do not give
    (tmp_path / "run" / "results.json").write_text(json.dumps(edited))
    with pytest.raises(SystemExit, match=r"scores .* now against .* in the run: not the run's predictions"):
        rescore(tmp_path / "run", show_progress=False)
    # stage 2 aligned on the questions and contexts as the QA model reads them: one pair per question
    train = load_splits(FinetuneConfig(task="qa", data=f"squad:{data}", eval_split="dev", max_train=None)).train
    saved = json.loads((tmp_path / "run" / "tiny" / "stage2" / "run_config.json").read_text())
    assert saved["texts_sha256"] == corpus_hash([(ex.question, ex.context) for ex in train])
    assert saved["config"]["align_special_tokens"] is True
    summary = json.loads((tmp_path / "run" / "tiny" / "stage2" / "summary.json").read_text())
    assert summary["num_texts"] == len(train) == 10 and summary["unpaired_student_tokens"] == 0
    for stage in ("stage1", "stage2"):
        adapter = AlignmentAdapter.from_pretrained(tmp_path / "run" / "tiny" / stage / "w1")
        assert type(adapter) is WindowAttentionAdapter and adapter.config.attention_dim == 8, stage
        assert results["pairs"][0]["alignment"][stage]["adapter"] == ATTENTION
    pair_dir = tmp_path / "run" / "tiny"
    random_init = AlignmentAdapter.from_pretrained(pair_dir / "random-w1")
    aligned = AlignmentAdapter.from_pretrained(pair_dir / results["pairs"][0]["alignment"]["chosen"]["1"] / "w1")
    assert type(random_init) is WindowAttentionAdapter and random_init.config == aligned.config
    assert not torch.equal(random_init.net[0].weight, aligned.net[0].weight)
    assert "| stage2 (attention adapters) |" in format_results(results)


ATTENTION = {"adapter_type": "attention", "attention_dim": 8, "attention_heads": 2}


def test_recipe_stage_options_take_the_adapter_type_and_are_checked():
    from alad.recipes.runner import check_recipe, stage2_options

    recipe = {"windows": [3], "stage1": {**ATTENTION, "epochs": 2}, "stage2": {"epochs": 1}}
    check_recipe(recipe)
    assert stage2_options(recipe) == {"epochs": 1, **ATTENTION}
    assert stage2_options({**recipe, "stage2": {"attention_heads": 4}})["attention_heads"] == 4  # stage 2's own wins
    assert stage2_options({**recipe, "stage1": None}) == {"epochs": 1}
    sized = {"windows": [3], "stage1": {"hidden_size": 64}, "stage2": {"epochs": 1}}
    assert stage2_options(sized) == {"epochs": 1, "hidden_size": 64}  # stage 2 continues an adapter of stage 1's size
    with pytest.raises(ValueError, match="adapter_type 'lstm' is not one of attention, mlp"):
        check_recipe({"windows": [3], "stage1": {"adapter_type": "lstm"}})
    with pytest.raises(ValueError, match=r"attention_dim \(8\) must be divisible by attention_heads \(3\)"):
        check_recipe({**recipe, "stage2": {"attention_heads": 3}})
    check_recipe({**recipe, "compare_adapters": {"mlp": {"adapter_type": "mlp"}}})  # stage 1's shape is not merged
    with pytest.raises(ValueError, match=r"compare_adapters: 'x' needs a mapping of adapter options"):
        check_recipe({**recipe, "compare_adapters": {"x": {"epochs": 3}}})
    with pytest.raises(ValueError, match="adapter_type 'lstm' is not one of attention, mlp"):
        check_recipe({**recipe, "compare_adapters": {"x": {"adapter_type": "lstm"}}})


def test_recipe_precision_reaches_alignment_and_stage_3_not_the_teacher():
    from alad.recipes.runner import check_recipe, recipe_finetune_config

    recipe = {"task": "ner", "windows": [3], "precision": "bf16", "stage1": {"epochs": 1}}
    check_recipe(recipe)
    assert recipe_finetune_config(recipe).precision == "bf16"  # stage 3 and the baselines
    teacher = recipe_finetune_config(recipe, stage3=False, student="t", adapter=None, mode="joint")
    assert teacher.precision == "fp32"  # so a teacher is reused whatever the run's precision
    assert (
        recipe_finetune_config(
            {**recipe, "teacher_finetune": {"precision": "bf16"}},
            stage3=False,
            **({"student": "t", "adapter": None, "mode": "joint", "precision": "bf16"}),
        ).precision
        == "bf16"
    )  # the teacher's own setting
    with pytest.raises(ValueError, match="--precision must be one of fp32, bf16, got 'fp16'"):
        check_recipe({**recipe, "precision": "fp16"})


def test_teacher_refine_continues_the_first_teacher(bert_dir, sentences, tmp_path, monkeypatch):
    """teacher_refine: a second fine-tuning from the first teacher's run, in a folder of its own,
    with the first pass recorded beside it; a finished first pass is reused, not retrained."""
    from alad.recipes.report import _teacher_lines
    from alad.recipes.runner import _first_pass, _teacher_run, check_recipe

    refine = {"epochs": 2, "lr_encoder": 5.0e-5}
    config = load_run_config(write_recipe(tmp_path, bert_dir, sentences, teacher_refine=refine), "quick")
    check_recipe(config)
    pair, teachers = config["pairs"][0], Path(config["teachers_dir"])
    plain, first = _teacher_run({k: v for k, v in config.items() if k != "teacher_refine"}, pair, teachers, False)
    run, result = _teacher_run(config, pair, teachers, False)
    assert run.parent == teachers and run.name.startswith(plain.name + "-refined-")
    saved = json.loads((run / "finetune_config.json").read_text())["config"]
    assert saved["init_from"] == str(plain) and saved["student"] == str(plain / "model" / "encoder")
    assert (saved["epochs"], saved["lr_encoder"]) == (2, 5.0e-5) and result["training"]["steps"] > 0
    assert result["refined_from"]["metrics"] == first["metrics"]
    # the refined teacher differs from the first pass it started from
    refined_head = load_file(str(run / "model" / "head.safetensors"))["weight"]
    assert not torch.equal(refined_head, load_file(str(plain / "model" / "head.safetensors"))["weight"])
    row = {"kind": "teacher", "train_items": 20, "train_seconds": 60.0, "first_pass": _first_pass(first, "ner")}
    assert row["first_pass"]["main"] == first["headline"]["micro_f1"]
    assert _teacher_lines([row])[0].startswith("Teacher: a first pass on 20 items (")
    monkeypatch.setattr(finetune_module, "train_task_model", lambda *a, **k: pytest.fail("retrained a teacher"))
    assert _teacher_run(config, pair, teachers, False)[1] == json.loads(json.dumps(result))
    with pytest.raises(ValueError, match="teacher_refine must be a mapping of fine-tuning options"):
        check_recipe({**config, "teacher_refine": {"stage2": 1}})


@pytest.mark.parametrize("profile", ["quick", "full"])
def test_qa_config_profiles_accept_the_real_squad_pool(profile, tmp_path):
    """configs/qa_squad2.yaml against the real shared files: reading and splitting only, no model."""
    from alad.data.sources import shared_data_dir
    from alad.recipes.runner import _context, check_recipe, recipe_finetune_config, stage2_texts

    root = shared_data_dir()
    needed = ["squad_v2/dev-v2.0.json", "squad_v2/train-v2.0.first10articles.json", "squad_v1.1/train-v1.1.json"]
    if root is None or not all((root / n).is_file() for n in needed + ["squad_v1.1/dev-v1.1.json"]):
        pytest.skip("the shared SQuAD 1.1 / 2.0 files are not here (set ALAD_SHARED_DATA)")
    config = load_run_config(Path(__file__).parents[1] / "configs" / "qa_squad2.yaml", profile)
    check_recipe(config)
    teacher = recipe_finetune_config(
        config, stage3=False, student="t", adapter=None, mode="joint", **config["teacher_finetune"]
    )
    ctx = _context(config, tmp_path / "run", False, "cpu", None)  # what `alad run` checks before any work
    assert not (tmp_path / "run").exists()
    info, splits = ctx.splits.info, ctx.splits
    # 442 SQuAD 1.1 articles (10 of them the SQuAD 2.0 train articles, kept once) + 15 moved dev articles
    assert info["squad_v1_train"]["file_questions"] == 87599 and info["squad_v1_train"]["file_articles"] == 442
    assert info["squad_v1_train"]["duplicate_articles"] == 10
    made = info["squad_negatives"]["made"]  # quick: one per 20 answerable questions; full: one per 2
    wanted = round((0.05 if profile == "quick" else 0.5) * (93105 - 2891))
    assert wanted - 100 < made <= wanted  # a few questions have their answer in every other paragraph
    assert info["pool"] == {
        "articles": 457,
        "paragraphs": 18197 + 694 + 523,  # SQuAD 1.1 train (694 of them also in SQuAD 2.0 train), moved dev
        "questions": 93105 + made,
        "answerable": 93105 - 2891,
        "unanswerable": 2891 + made,
        "negatives_made": made,
    }
    assert len(splits.pool) == 93105 + made
    if profile == "quick":  # the students' 4,000: half unanswerable, SQuAD 2.0's own first
        assert info["unanswerable_share"] == {
            "share": 0.5,
            "questions": 4000,
            "unanswerable_own": 2000,
            "unanswerable_made": 0,
            "answerable": 2000,
            "rule": "the pool's own unanswerable questions first, then made negatives, then answerable ones, by seed",
        }
        refine = recipe_finetune_config(
            config, stage3=False, student="t", adapter=None, mode="joint",
            **{**config["teacher_finetune"], **config["teacher_refine"]},
        )  # fmt: skip
        assert (refine.max_train, refine.squad_unanswerable_share, refine.lr_encoder) == (12000, 0.5, 5.0e-5)
    else:
        assert "unanswerable_share" not in info
    sets = info["evaluation_sets"]
    assert (sets["evaluation"]["articles"], sets["evaluation"]["questions"]) == (20, 6709)
    assert (sets["squad_v1_eval"]["articles"], sets["squad_v1_eval"]["questions"]) == (13, 4557)
    assert sets["squad_v1_eval"]["unanswerable"] == 0 and info["disjoint_by_article"] == "checked"
    evaluated = 1000 if profile == "quick" else None
    assert len(splits.eval) == (evaluated or 6709) and len(splits.extra_eval["squad_v1_eval"]) == (evaluated or 4557)
    assert len(splits.train) == (4000 if profile == "quick" else 93105 + made)
    assert teacher.max_train == (44000 if profile == "quick" else None) and teacher.squad_v1_train
    assert (teacher.epochs, teacher.precision) == ((1, "bf16") if profile == "quick" else (2, "fp32"))
    assert len(stage2_texts(ctx)) == (10000 if profile == "quick" else 93105 + made)
    # the first teacher pass reads the pool as it is (no negatives, no share): the teacher already trained
    assert (teacher.squad_negatives, teacher.squad_unanswerable_share) == (
        (0, None) if profile == "quick" else (0.5, None)
    )
    assert {p["name"] for p in config["pairs"]} >= (
        {"minilm-l2-to-minilm-l6"} if profile == "quick" else {"minilm-l2-to-minilm-l6", "minilm-l6-to-mpnet"}
    )


def test_qa_experiment_profiles_reuse_the_quick_profiles_teacher():
    """quick-12k changes the students' budget and drops the KD and head-only rows, nothing else; quick-l4
    the student: the teacher's settings (its key) are the quick profile's, so its one-off teacher is reused."""
    from alad.recipes.runner import check_recipe, recipe_finetune_config

    path = Path(__file__).parents[1] / "configs" / "qa_squad2.yaml"
    quick, larger = load_run_config(path, "quick"), load_run_config(path, "quick-12k")
    check_recipe(larger)

    def teacher(config):
        settings = {**config["teacher_finetune"], **config["teacher_refine"]}
        return recipe_finetune_config(config, stage3=False, student="t", adapter=None, mode="joint", **settings)

    assert teacher(larger) == teacher(quick)
    assert (larger["max_train"], larger["kd"], larger["modes"]) == (12000, None, ["frozen", "joint", "teacher-head"])
    changed = ("max_train", "kd", "modes", "profile")
    assert {k: v for k, v in larger.items() if k not in changed} == {k: v for k, v in quick.items() if k not in changed}
    # quick-l4: a 4-layer student of the same teacher, the quick profile's questions
    milder = load_run_config(path, "quick-l4")
    check_recipe(milder)
    assert teacher(milder) == teacher(quick) and milder["max_train"] == quick["max_train"]
    (pair,) = milder["pairs"]
    assert pair["student"] == {"compress": "all-MiniLM-L6-v2", "keep_layers": [0, 1, 2, 3]}
    assert pair["teacher"] == quick["pairs"][0]["teacher"]


# --------------------------------------------------------------------------------------------------
# config files


def test_load_run_config_merges_the_profile(bert_dir, sentences, tmp_path):
    path = write_recipe(tmp_path, bert_dir, sentences)
    config = load_run_config(path, "quick")
    assert config["profile"] == "quick" and "profiles" not in config
    assert config["stage1"] == {"epochs": 1, "max_texts": 20, "hidden_size": 16}
    assert (config["epochs"], config["max_train"], config["batch_size"]) == (1, 20, 8)
    assert config["windows"] == [1] and config["modes"] == MODES


def test_profile_overrides_nested_values_and_defaults_apply(tmp_path):
    recipe = {
        "task": "pos",
        "pairs": [{"student": "s", "teacher": "t"}],
        "stage1": {"epochs": 5, "lr": 0.01},
        "profiles": {"full": {"stage1": {"epochs": 9}}},
    }
    path = tmp_path / "r.json"
    path.write_text(json.dumps(recipe), encoding="utf-8")
    config = load_run_config(path, "full")
    assert config["stage1"] == {"epochs": 9, "lr": 0.01}
    assert config["windows"] == [3] and config["modes"] == MODES


def test_unknown_key_missing_profile_and_no_pairs_raise(bert_dir, sentences, tmp_path):
    path = write_recipe(tmp_path, bert_dir, sentences, learning_rate=0.1, stage3={})
    with pytest.raises(ValueError, match=r"unknown keys \['learning_rate', 'stage3'\]"):
        load_run_config(path, "quick")
    path = write_recipe(tmp_path, bert_dir, sentences)
    with pytest.raises(ValueError, match=r"has no profile 'full'; it has \['quick'\]"):
        load_run_config(path, "full")
    raw = yaml.safe_load(path.read_text())
    raw["pairs"] = []
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match="names no student-teacher pairs"):
        load_run_config(path, "quick")


def test_pairs_are_picked_from_the_profile_then_the_recipe(tmp_path):
    recipe = {
        "task": "ner",
        "pairs": [{"name": "a", "student": "s1", "teacher": "t1"}, {"name": "b", "student": "s2", "teacher": "t2"}],
        "profiles": {"quick": {"pairs": [{"name": "b", "student": "s2-cut", "teacher": "t2"}]}},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    assert [p["name"] for p in load_run_config(path, "quick")["pairs"]] == ["b"]
    # a pair the profile leaves out can still be asked for; the profile's version of a pair wins
    picked = load_run_config(path, "quick", ["a", "b"])["pairs"]
    assert [(p["name"], p["student"]) for p in picked] == [("a", "s1"), ("b", "s2-cut")]
    with pytest.raises(ValueError, match=r"has no pair named \['c'\]; its pairs are \['a', 'b'\]"):
        load_run_config(path, "quick", ["c"])


def test_qa_teacher_below_the_no_answer_baseline_is_flagged(capsys):
    rows = _rows(teacher=49.0, frozen=50.7, joint=46.4)
    for row in rows:
        row["no_answer_baseline"] = {"exact": 50.7, "f1": 50.7}
    pair = _summarise_pair("p", "student", "teacher", rows, ALIGNMENT, 20)
    [warning] = pair["warnings"]
    assert warning.startswith("TEACHER DOES NOT BEAT ALWAYS ANSWERING 'NO ANSWER': teacher F1 49.00 <= 50.70")
    assert "!!! p: TEACHER DOES NOT BEAT ALWAYS ANSWERING" in capsys.readouterr().out
    for row in rows:
        row["no_answer_baseline"] = {"exact": 40.0, "f1": 40.0}
    assert _summarise_pair("p", "student", "teacher", rows, ALIGNMENT, 20)["warnings"] == []


# --------------------------------------------------------------------------------------------------
# label budgets, distillation, stage-1 comparison and stage-3 settings


@pytest.fixture(scope="module")
def sweep_run(bert_dir, sentences, tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep")
    path = write_recipe(
        folder,
        bert_dir,
        sentences,
        labels=[5, 20],
        compare_stage1=True,
        kd={
            "kd_weight": 0.5,
            "kd_temperature": 2.0,
            "kd_max_texts": 25,
            "frozen": {"kd_temperature": 1.0},
            "joint": {"kd_steps": "labelled"},
        },
        finetune={"min_steps": 4},
        stage3_compare={"modes": ["frozen"], "variants": {"aux loss": {"align_weight": 1.0}}},
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ALAD_CACHE", str(folder / "cache"))
        patch.setattr(latency_module, "gc", NO_GC)
        results = run_recipe(load_run_config(path, "quick"), folder / "run", show_progress=False)
    return folder, results


def test_sweep_rows_per_budget(sweep_run):
    folder, results = sweep_run
    rows = results["rows"]
    assert results["labels"] == [5, 20] and results["main_labels"] == 20
    by_budget = {}
    for row in rows:
        by_budget.setdefault(row["labels"], []).append(row["name"])
    expected = {
        "student alone, frozen + head",
        "student alone, full fine-tuning",
        "student + KD, frozen + head",
        "student + KD, full fine-tuning",
        "AlAd w1, frozen",
        "AlAd w1, joint",
        "random-init adapter w1, frozen",
        "AlAd w1 + KD, frozen",
        "AlAd w1 + KD, joint",
    }
    assert set(by_budget[5]) == expected  # the sweep rows
    assert expected | {"AlAd w1, head-only", "random-init adapter w1, joint"} <= set(by_budget[20])
    # teacher-head reads no student label: one row, labels 0; the teacher: labels None
    assert "AlAd w1, teacher-head" in by_budget[0] and by_budget[None] == [TEACHER]
    # KD rows read unlabelled items (labelled first, up to kd_max_texts), the others none
    for row in rows:
        if "KD" in row["name"]:
            assert row["unlabelled_items"] == 25 - row["labels"], row["name"]
        elif row["kind"] != "teacher":
            assert row["unlabelled_items"] == 0, row["name"]
    # KD rows take their mode's overrides of the kd section, in folders of their own
    kd_folders = sorted((folder / "run").glob("*/labels-*/*-kd-*"))
    settings = {}
    for kd_folder in kd_folders:
        saved = json.loads((kd_folder / "finetune_config.json").read_text())["config"]
        settings[kd_folder.name.partition("-kd-")[2]] = (saved["mode"], saved["kd_temperature"], saved["kd_steps"])
    assert len(kd_folders) == 8
    assert settings == {
        "frozen-temperature1.0": ("frozen", 1.0, "epochs"),
        "joint-stepslabelled": ("joint", 2.0, "labelled"),
    }
    # the teacher's soft targets are cached per item: no item is run through the teacher twice
    parts = list((folder / "cache" / "soft_targets").rglob("part-*.safetensors"))
    keys = [bytes(k.tolist()) for part in parts for k in load_file(part)["keys"]]
    assert parts and len(keys) == len(set(keys)) <= 30
    # recovery and gain over random are taken against the same budget
    students = {(r["labels"], r["mode"]): r["main"] for r in rows if r["kind"] == "student"}
    for row in rows:
        if row["kind"] == "alad" and row["mode"] == "frozen":
            assert row["student_same_mode"] == students[(row["labels"], "frozen")]


def test_sweep_compares_stage1_and_stage3_settings(sweep_run):
    folder, results = sweep_run
    pair = results["pairs"][0]
    alignment = pair["alignment"]
    assert set(alignment) == {"stage1", "stage2", "stage2-scratch", "chosen"}
    for stage in ("stage2", "stage2-scratch"):
        assert alignment[stage]["num_texts"] == 30  # all training text, not the 20 labelled items
    cosines = {s: alignment[s]["val_cosine"]["1"] for s in ("stage2", "stage2-scratch")}
    assert alignment["chosen"]["1"] == max(cosines, key=cosines.get)
    assert pair["alignment_cosine"]["1"] == max(cosines.values())
    variants = [r for r in results["rows"] if r["kind"] == "variant"]
    assert {r["variant"] for r in variants} == {"after stage 1", "from scratch", "aux loss"}
    markdown = (folder / "run" / "results.md").read_text()
    assert "### micro_f1 at every label budget" in markdown and "### Stage 3 settings compared" in markdown
    assert (folder / "run" / "metric_vs_labels.png").read_bytes()[:4] == b"\x89PNG"


def test_label_budgets_are_checked_before_any_work(bert_dir, sentences, tmp_path):
    path = write_recipe(tmp_path, bert_dir, sentences)
    config = load_run_config(path, "quick")
    with pytest.raises(ValueError, match="larger than the training split"):
        run_recipe(config, tmp_path / "run", show_progress=False, labels="10,5000")
    with pytest.raises(ValueError, match="positive integers or 'all'"):
        run_recipe(config, tmp_path / "run", show_progress=False, labels="10,-3")
    bad_kd = {**config, "kd": {"kd_weight": 0.5, "kd_temperature": 0}}
    with pytest.raises(ValueError, match="kd_temperature must be a positive number"):
        run_recipe(bad_kd, tmp_path / "run", show_progress=False)
    frozen_bad = {**config, "kd": {"kd_weight": 0.5, "frozen": {"kd_temperature": -1.0}}}
    with pytest.raises(ValueError, match="kd_temperature must be a positive number"):
        run_recipe(frozen_bad, tmp_path / "run", show_progress=False)
    for kd, message in (
        ({"kd_weight": 0.5, "frozen": {"lr_head": 1.0}}, "kd: frozen must be a mapping of"),
        ({"kd_weight": 0.5, "joint": 2.0}, "kd: joint must be a mapping of"),
        ({"kd_weight": 0.5, "kd_temprature": 2.0}, r"kd has unknown options \['kd_temprature'\]"),
    ):
        with pytest.raises(ValueError, match=message):
            run_recipe({**config, "kd": kd}, tmp_path / "run", show_progress=False)
    for latency, message in (
        ({"round": 3}, r"latency has unknown keys \['round'\]; known: rounds: "),
        ({"rounds": 0}, "latency: rounds must be a whole number >= 1, got 0"),
        ({"threads": 1.5}, "latency: threads must be a whole number >= 1, got 1.5"),
        ({"fresh_process": "yes"}, "latency: fresh_process must be true or false"),
        ([3], "latency must be a mapping"),
    ):
        with pytest.raises(ValueError, match=message):
            run_recipe({**config, "latency": latency}, tmp_path / "run", show_progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("content", "message"), [(b"", "holds no text"), (b"\n  \n", "holds no text"), (b"\xff\xfe bad", "is not UTF-8")]
)
def test_extra_text_files_are_checked(tmp_path, content, message):
    from alad.recipes.runner import read_extra_texts

    path = tmp_path / "extra.txt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        read_extra_texts(path)


def test_recipe_students_can_be_any_compression(bert_dir, tmp_path):
    from alad.compression import is_quantized_folder
    from alad.recipes.runner import check_recipe, resolve_student

    spec = {"compress": str(bert_dir), "method": "quantize-int8"}
    folder = resolve_student({"student": spec}, tmp_path / "models")
    assert is_quantized_folder(folder) and resolve_student({"student": spec}, tmp_path / "models") == folder
    recipe = {
        "pairs": [
            {"name": "p", "student": {"compress": str(bert_dir), "method": "prune", "fraction": 1.5}, "teacher": "t"}
        ],
        "windows": [3],
    }
    with pytest.raises(ValueError, match="fraction"):
        check_recipe(recipe)


def test_report_only_trains_nothing_and_lists_what_is_missing(recipe_run, monkeypatch):
    folder, path, results = recipe_run

    def refuse(*args, **kwargs):
        raise AssertionError("report_only trained a model")

    monkeypatch.setenv("ALAD_CACHE", str(folder / "cache"))
    monkeypatch.setattr(latency_module, "gc", NO_GC)
    monkeypatch.setattr(finetune_module, "train_task_model", refuse)
    monkeypatch.setattr(finetune_module, "build_task_model", refuse)
    config = load_run_config(path, "quick")
    report = run_recipe(config, folder / "run", show_progress=False, labels="5,20", report_only=True)
    assert {r["name"] for r in report["rows"]} == {r["name"] for r in results["rows"]}  # budget 20 as before
    assert report["missing"] and all(m.startswith("tiny/labels-5/") for m in report["missing"])
    assert "Not run yet" in (folder / "run" / "results.md").read_text()
    with pytest.raises(ValueError, match="is not finished"):  # an unfinished stage every row needs
        run_recipe(config, folder / "another-run", show_progress=False, report_only=True)
    # leave the finished recipe's results as they were for the other tests
    run_recipe(config, folder / "run", show_progress=False, report_only=True)


def test_rows_in_worker_processes_match_the_sequential_run(bert_dir, sentences, tmp_path, monkeypatch):
    """--jobs 2 trains the rows in two processes; at one thread each, every row equals the sequential one's."""
    path = write_recipe(
        tmp_path,
        bert_dir,
        sentences,
        labels=[5, 20],
        kd={"kd_weight": 0.5, "kd_temperature": 2.0, "kd_max_texts": 25},
        finetune={"min_steps": 4},
    )
    monkeypatch.setenv("ALAD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(latency_module, "gc", NO_GC)
    import alad.recipes.runner as runner_module

    found_finished = []

    def finetune_in_main(folder, *args, **kwargs):  # the workers (spawned) do not see this wrapper
        found_finished.append((Path(folder) / "metrics.json").is_file())
        return original(folder, *args, **kwargs)

    original = runner_module.finetune
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' share of one thread: the same arithmetic as the sequential run
    try:
        config = load_run_config(path, "quick")
        sequential = run_recipe(config, tmp_path / "sequential", show_progress=False)
        monkeypatch.setattr(runner_module, "finetune", finetune_in_main)
        parallel = run_recipe(config, tmp_path / "parallel", show_progress=False, jobs=2)
    finally:
        torch.set_num_threads(threads)
    assert parallel["jobs"] == 2 and parallel["wall_seconds"] > 0
    assert list(parallel["pairs"][0]["wall_seconds"]) == ["teacher", "alignment", "rows"]
    assert "with 2 row process(es)" in (tmp_path / "parallel/results.md").read_text()
    assert len(found_finished) >= 10 and all(found_finished)  # every row was trained by a worker
    for ours, theirs in zip(sequential["rows"], parallel["rows"], strict=True):
        assert (ours["name"], ours["labels"]) == (theirs["name"], theirs["labels"])
        assert ours["micro_f1"] == theirs["micro_f1"] and ours["macro_f1"] == theirs["macro_f1"]
        if ours["model_dir"]:
            a = load_file(str(Path(ours["model_dir"]) / "head.safetensors"))
            b = load_file(str(Path(theirs["model_dir"]) / "head.safetensors"))
            assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="jobs must be"):
        run_recipe(config, tmp_path / "other", show_progress=False, jobs=0)
    assert not (tmp_path / "other").exists()


SHIPPED = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_recipe_and_profile_passes_the_checks(path):
    """Each config in configs/, in each of its profiles, is accepted (settings only: no data, no model)."""
    from alad.recipes.config_files import load_run_file
    from alad.recipes.runner import check_recipe

    profiles = load_run_file(path)["profiles"]
    assert "quick" in profiles
    for profile in profiles:
        config = load_run_config(path, profile)
        check_recipe(config)
        assert config["pairs"] and config["profile"] == profile
    if path.stem == "ner_conll03":  # the quick profile runs every row at every budget; the comparison its own profile
        quick, compare = load_run_config(path, "quick"), load_run_config(path, "quick-stage3")
        assert "sweep_rows" not in quick and "stage3_compare" not in quick
        assert compare["stage3_compare"]["variants"] and compare["labels"] == quick["labels"] == [100, 300, 1000, 2000]
