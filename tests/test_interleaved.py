"""Tests for alad.evaluation.interleaved (latency of several rows in one interleaved pass) and the benchmark helpers."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from tiny_tasks import load_benchmark, write_recipe

from alad.evaluation.interleaved import interleaved_latency, real_length_batches


def _features(lengths):
    return [SimpleNamespace(input_ids=list(range(n))) for n in lengths]


def _collate(group):
    width = max(len(f.input_ids) for f in group)
    ids = torch.zeros(len(group), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, f in enumerate(group):
        mask[row, : len(f.input_ids)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def test_real_length_batches_use_real_items_sorted_by_length():
    features = _features([3, 9, 4, 12, 5, 7, 6, 8])
    single = real_length_batches(features, _collate, 1, limit=5)
    assert len(single) == 5 and all(ids.shape[0] == 1 for ids, _ in single)
    grouped = real_length_batches(features, _collate, 4, limit=2)
    assert [ids.shape for ids, _ in grouped] == [(4, 6), (4, 12)]  # padded to the longest of each sorted group
    assert int(grouped[0][1].sum()) == 3 + 4 + 5 + 6


def test_interleaved_latency_orders_rows_by_their_cost():
    batches = {1: [(torch.zeros(1, 3), torch.ones(1, 3))] * 2}
    rows = {"fast": lambda ids, mask: None, "slow": lambda ids, mask: time.sleep(0.004)}
    result = interleaved_latency(rows, batches, rounds=3)
    assert result["slow"][1]["median_ms"] > 3 > result["fast"][1]["median_ms"]
    assert result["fast"][1]["rounds"] == 3 and result["fast"][1]["calls"] == 2
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        interleaved_latency(rows, batches, rounds=0)


def test_interleaved_latency_gives_each_row_its_own_batches():
    """Rows with other tokenizers read the same items as their own token ids (here: other lengths)."""
    short = {1: [(torch.zeros(1, 3), torch.ones(1, 3))], 32: [(torch.zeros(2, 4), torch.ones(2, 4))]}
    long = {1: [(torch.zeros(1, 7), torch.ones(1, 7))], 32: [(torch.zeros(2, 9), torch.ones(2, 9))]}
    seen = {"a": set(), "b": set()}
    rows = {name: (lambda ids, mask, name=name: seen[name].add(ids.shape[1])) for name in seen}
    result = interleaved_latency(rows, {"a": short, "b": long}, rounds=2)
    assert seen == {"a": {3, 4}, "b": {7, 9}}
    assert result["a"][1]["mean_tokens"] == 3 and result["b"][32]["mean_tokens"] == 9


def test_interleaved_latency_takes_turns_call_by_call():
    """Every row runs batch i before any row runs batch i + 1, so a load spike lands on all rows alike."""
    batches = {1: [(torch.full((1, 1), i), torch.ones(1, 1)) for i in range(4)]}
    calls = []
    rows = {name: (lambda ids, mask, name=name: calls.append((name, int(ids)))) for name in ("a", "b", "c")}
    interleaved_latency(rows, batches, rounds=2, warmup=0)
    timed = calls[3:]  # after one warm-up call per row
    for start in range(0, len(timed), 3):
        turn = timed[start : start + 3]
        assert sorted(name for name, _ in turn) == ["a", "b", "c"] and len({i for _, i in turn}) == 1


def test_interleaved_overhead_is_paired_so_a_drifting_machine_cancels():
    """The machine is 4x slower every other round; the row costing 1.5x the reference stays at +50%."""
    calls = {"n": -2}  # the warm-up makes one call per row
    batches = {1: [(torch.zeros(1, 1), torch.ones(1, 1))] * 2}  # 2 rows x 2 batches: 4 calls a round

    def machine(cost_ms):
        slow = 4 if max(calls["n"], 0) // 4 % 2 else 1
        calls["n"] += 1
        time.sleep(cost_ms * slow / 1e3)

    rows = {"ref": lambda ids, mask: machine(2.0), "row": lambda ids, mask: machine(3.0)}
    result = interleaved_latency(rows, batches, rounds=6, reference="ref")
    assert result["ref"][1]["overhead_pct"] == 0
    assert 35 < result["row"][1]["overhead_pct"] < 65
    assert result["ref"][1]["max_ms"] > 3 * result["ref"][1]["min_ms"]  # the drift is there, in the raw times
    with pytest.raises(ValueError, match="reference row 'nope' is not among"):
        interleaved_latency(rows, batches, rounds=1, reference="nope")


def _sweep_summary(rows: list[dict], default: dict | None, modes: list[str]) -> dict:
    """An adapter_sizes summary around ``rows``, as the benchmark writes it (tiny fixed setup)."""
    return {
        "student": "s",
        "teacher": "t",
        "task": "ner",
        "main_metric": "micro_f1",
        "data": {"eval_items": 10},
        "rounds": 3,
        "threads": 1,
        "machine": "m",
        "rows": rows,
        "default": default,
        "modes": modes,
    }


def test_adapter_sizes_default_rule_and_table():
    bench = load_benchmark("adapter_sizes")
    rows = [
        {"name": "student", "hidden": None, "window": None, "mode": "frozen", "metric": 50.0},
        {"name": "a", "hidden": 1280, "window": 3, "mode": "frozen", "metric": 80.0},
        {"name": "b", "hidden": 256, "window": 3, "mode": "frozen", "metric": 79.7},
        {"name": "c", "hidden": 128, "window": 1, "mode": "frozen", "metric": 78.0},
        {"name": "d", "hidden": 128, "window": 1, "mode": "teacher-head", "metric": 90.0},
    ]
    for i, row in enumerate(rows):
        row.update(params_total=1000 + i, ms_b1=1.0 + i, ms_b32=2.0 + i, overhead_b1_pct=10.0 * i)
        row["overhead_b32_pct"] = 5.0 * i
    choice = bench.suggest_default(rows, tolerance=0.5)
    assert (choice["hidden"], choice["window"]) == (1280, 3)  # b is within 0.5 but slower than a here
    rows[2]["overhead_b1_pct"] = 1.0
    assert bench.suggest_default(rows, tolerance=0.5)["hidden"] == 256
    summary = _sweep_summary(rows, bench.suggest_default(rows, 0.5), ["frozen", "teacher-head"])
    text = bench.format_table(summary)
    assert "Suggested default: hidden 256, window 3, mlp adapter" in text and text.count("\n| ") == 6
    assert "| b | mlp | 256 | 3 | frozen | 79.70 |" in text  # rows written before adapter types are mlp


def test_adapter_sizes_sweeps_adapter_types(tmp_path):
    bench = load_benchmark("adapter_sizes")
    assert bench._types("mlp, attention,mlp") == ["mlp", "attention"]
    with pytest.raises(SystemExit, match="--adapter-types takes names among attention, mlp, got 'mlp,lstm'"):
        bench._types("mlp,lstm")
    assert bench.type_options("mlp", 128, 4) == {}  # mlp runs keep the settings (and folders) of earlier sweeps
    assert bench.type_options("attention", 64, 2) == {
        "adapter_type": "attention",
        "attention_dim": 64,
        "attention_heads": 2,
    }
    rows = [
        {"name": "student", "type": None, "hidden": None, "window": None, "mode": "frozen", "metric": 50.0},
        {"name": "h128 w3, frozen", "type": "mlp", "hidden": 128, "window": 3, "mode": "frozen", "metric": 78.0},
        {"name": "attention h128 w3, frozen", "type": "attention", "hidden": 128, "window": 3, "mode": "frozen"},
    ]
    rows[2]["metric"] = 80.0
    for i, row in enumerate(rows):
        row.update(params_total=1000 + i, ms_b1=1.0 + i, ms_b32=2.0 + i, overhead_b1_pct=10.0 * i)
        row["overhead_b32_pct"] = 5.0 * i
    choice = bench.suggest_default(rows, tolerance=0.5)
    assert (choice["type"], choice["hidden"], choice["window"]) == ("attention", 128, 3)
    summary = _sweep_summary(rows, choice, ["frozen"])
    text = bench.format_table(summary)
    assert "| attention h128 w3, frozen | attention | 128 | 3 | frozen | 80.00 |" in text
    assert "| student | - | - | - | frozen |" in text
    assert "Suggested default: hidden 128, window 3, attention adapter (80.00 vs best 80.00" in text
    bench.plot(summary, tmp_path / "sizes.png")
    assert (tmp_path / "sizes.png").read_bytes()[:4] == b"\x89PNG"


def test_adapter_sizes_gain_share_and_overhead_target():
    """Share of the W3/h1280 MLP's frozen gain over the student, and the <= 10% / >= 80% target."""
    bench = load_benchmark("adapter_sizes")
    rows = [
        {"name": "student", "hidden": None, "window": None, "mode": "frozen", "metric": 50.0, "overhead_b1_pct": 0.0},
        {"name": "ref", "type": "mlp", "hidden": 1280, "window": 3, "mode": "frozen", "metric": 80.0},
        {"name": "cheap", "type": "mlp", "hidden": 256, "window": 3, "mode": "frozen", "metric": 76.0},
        {"name": "cheaper", "type": "mlp", "hidden": 128, "window": 1, "mode": "frozen", "metric": 70.0},
        {"name": "th", "type": "mlp", "hidden": 128, "window": 1, "mode": "teacher-head", "metric": 90.0},
    ]
    for row, overhead in zip(rows[1:], (40.0, 9.0, 3.0, 3.0), strict=True):
        row.update(overhead_b1_pct=overhead, overhead_b32_pct=overhead / 2, params_total=1000)
    target = bench.gain_shares(rows)
    shares = [r.get("gain_share") for r in rows[1:4]]
    assert shares == [pytest.approx(1.0), pytest.approx(26 / 30), pytest.approx(2 / 3)]
    assert "gain_share" not in rows[4]  # teacher-head rows are not frozen-mode gains
    assert target["meeting"] == ["cheap"] and target["best"]["name"] == "cheap"
    assert target["reference_gain"] == pytest.approx(30.0)
    rows[2]["overhead_b1_pct"] = 11.0  # now nothing is both cheap enough and good enough
    assert bench.gain_shares(rows)["best"] is None
    assert bench.gain_shares(rows[:1] + rows[2:]) is None  # no W3/h1280 MLP row: no reference
    rows[2]["overhead_b1_pct"] = 9.0
    bench.gain_shares(rows)
    # the default keeps >= 85% of the reference's gain at the least batch-1 overhead: "cheap" (87%), not
    # "cheaper" (67%, faster), nor "ref" (100%, slower)
    assert bench.suggest_default(rows, tolerance=0.5, min_share=0.85)["hidden"] == 256
    assert bench.suggest_default(rows, tolerance=0.5, min_share=0.5)["hidden"] == 128
    assert "keeping >= 85% of the W3/h1280" in bench.suggest_default(rows, 0.5, 0.85)["rule"]


def test_adapter_sizes_times_each_model_once_with_a_noise_floor(monkeypatch):
    """Frozen and teacher-head rows of one adapter share one timing; a second student copy gives the noise floor."""
    bench = load_benchmark("adapter_sizes")
    loaded = []

    def from_pretrained(folder):
        loaded.append(Path(folder).parent.name)
        cost = {"student": 0.0, "a": 0.003}[Path(folder).parent.name]
        return lambda ids, mask: time.sleep(0.001 + cost)

    monkeypatch.setattr(bench.AladTaskModel, "from_pretrained", staticmethod(from_pretrained))
    task = SimpleNamespace(features=lambda model, items, config: _features([3, 5, 4]), collate=lambda m, g: _collate(g))
    rows = [
        {"name": "student", "type": None, "hidden": None, "window": None, "folder": "student"},
        {"name": "a frozen", "type": "mlp", "hidden": 128, "window": 3, "folder": "a"},
        {"name": "a teacher-head", "type": "mlp", "hidden": 128, "window": 3, "folder": "a"},
    ]
    args = SimpleNamespace(threads=torch.get_num_threads(), latency_batches=2, rounds=3, quiet=True)
    out = bench.time_rows(rows, task, [], None, args)
    assert sorted(loaded) == ["a", "student", "student"]  # the adapter once, the student twice
    assert rows[1]["ms_b1"] == rows[2]["ms_b1"] and rows[1]["overhead_b1_pct"] > 150
    assert rows[0]["overhead_b1_pct"] == 0 and abs(out["noise_floor_pct"]["1"]) < 50
    summary = _sweep_summary(
        [{**r, "mode": "frozen", "metric": 1.0, "params_total": 1} for r in rows], None, ["frozen"]
    )
    summary["noise_floor_pct"] = out["noise_floor_pct"]
    assert "Noise floor: a second copy of the student, timed as a row, measured" in bench.format_table(summary)


def test_adapter_latency_benchmark_times_saved_models_in_the_same_pass(bert_dir, roberta_dir, sentences, tmp_path):
    from alad.models.task_model import build_task_model

    bench = load_benchmark("adapter_latency")
    recipe = write_recipe(tmp_path, bert_dir, sentences)
    saved = tmp_path / "saved-row"
    build_task_model("ner", bert_dir, ("O", "B-PER", "I-PER"), mode="frozen").save_pretrained(saved)
    argv = [
        "--config",
        str(recipe),
        "--pair",
        "tiny",
        "--adapter",
        "mlp:hidden_size=8",
        "--also",
        f"a saved row={saved}",
    ]
    argv += ["--rounds", "2", "--batches", "2", "--threads", "1", "--models-dir", str(tmp_path / "models")]
    assert bench.main([*argv, "--out", str(tmp_path / "out"), "--quiet"]) == 0
    summary = json.loads((tmp_path / "out" / "adapter_latency.json").read_text())
    assert [row["row"] for row in summary["rows"]][-1] == "a saved row" and summary["also"] == {
        "a saved row": str(saved)
    }
    assert summary["rows"][-1]["b1"]["median_ms"] > 0
    assert f"Saved models timed in the same pass (--also): a saved row = `{saved}`." in bench.format_table(summary)
    other = tmp_path / "other-tokenizer"
    build_task_model("ner", roberta_dir, ("O", "B-PER", "I-PER"), mode="frozen").save_pretrained(other)
    argv[argv.index(f"a saved row={saved}")] = f"roberta={other}"
    with pytest.raises(ValueError, match="its tokenizer differs from the student's"):
        bench.main([*argv, "--out", str(tmp_path / "out2"), "--quiet"])


def test_adapter_latency_benchmark_times_each_type_against_the_student(bert_dir, sentences, tmp_path):
    bench = load_benchmark("adapter_latency")
    recipe = write_recipe(tmp_path, bert_dir, sentences)
    out = tmp_path / "out"
    argv = ["--config", str(recipe), "--pair", "tiny", "--adapter", "mlp:hidden_size=8"]
    argv += ["--adapter", "attention:hidden_size=8,attention_dim=4,attention_heads=2"]
    argv += ["--rounds", "2", "--batches", "2", "--threads", "1", "--models-dir", str(tmp_path / "models")]
    assert bench.main([*argv, "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "adapter_latency.json").read_text())
    names = [row["row"] for row in summary["rows"]]
    assert names == [
        bench.STUDENT,
        bench.STUDENT_COPY,
        "mlp:hidden_size=8",
        "attention:hidden_size=8,attention_dim=4,attention_heads=2",
    ]
    params = [row["params"] for row in summary["rows"]]
    assert params[0] == params[1] < params[2] < params[3]  # the attention block adds to the same MLP
    assert summary["rows"][0]["b1"]["overhead_pct"] == 0.0 and summary["teacher_dim"] == 32
    table = (out / "adapter_latency.md").read_text()
    assert "| mlp:hidden_size=8 |" in table and "Command: `python " in table
    with pytest.raises(ValueError, match="key=integer"):
        bench.parse_adapter("mlp:hidden_size=big")
    with pytest.raises(ValueError, match="--also takes NAME=DIR"):
        bench.parse_saved("just-a-folder")
    with pytest.raises(ValueError, match="is not a folder"):
        bench.parse_saved(f"x={tmp_path / 'missing'}")
    with pytest.raises(ValueError, match="divisible"):
        bench.parse_adapter("attention:attention_dim=5,attention_heads=2")
