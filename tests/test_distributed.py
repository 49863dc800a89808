"""Several processes (gloo, 2 processes on the CPU): the cache build and data-parallel alignment.

Each multi-process run is ``torchrun --standalone --nproc-per-node 2 tests/distributed_worker.py``
(a free port is chosen by the launcher), on the tiny models, bounded by a timeout.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from alad.adapters import AlignmentAdapter
from alad.alignment.trainer import AlignConfig, align
from alad.training import distributed

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"
# Same global batches as one process; dropout off, so the only differences are the order of sums.
SETTINGS = {"windows": [1, 3], "epochs": 2, "batch_tokens": 64, "hidden_size": 32, "lr": 3e-3, "dropout": 0.0}
COSINE_TOLERANCE = 1e-3  # 1 vs 2 processes: held-out cosine after training, absolute
SHARD_TEXTS = 4  # 40 texts -> 10 cache shards, shared by the two processes


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


def accelerate_launcher() -> list[str]:
    """``accelerate launch`` for 2 processes on this machine: its multi-process launcher (named
    ``--multi_gpu``, it runs torch.distributed.run) also starts CPU processes; alad picks gloo there."""
    with socket.socket() as probe:  # a free port: accelerate's default 29500 may be taken
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"] + [
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(port),
    ]


def launch(tmp_path: Path, job: dict, name: str, timeout: int = 180, launcher: list[str] | None = None) -> dict:
    job = {**job, "result": str(tmp_path / f"{name}.result.json")}
    job_file = tmp_path / f"{name}.job.json"
    job_file.write_text(json.dumps(job), encoding="utf-8")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        distributed.TIMEOUT_ENV: "60",
        "HF_HUB_OFFLINE": "1",
    }
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    command = launcher or TORCHRUN
    done = subprocess.run(
        [*command, str(TESTS / "distributed_worker.py"), str(job_file)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(Path(job["result"]).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def job(bert_dir, roberta_dir, sentences, tmp_path_factory):
    return {
        "mode": "align",
        "student": str(bert_dir),
        "teacher": str(roberta_dir),
        "texts": sentences,
        "settings": {**SETTINGS, "cache_dir": str(tmp_path_factory.mktemp("dist-cache"))},
        "shard_texts": SHARD_TEXTS,
    }


@pytest.fixture(scope="module")
def two_process_run(job, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    out = tmp / "two"
    return out, launch(tmp, {**job, "out": str(out)}, "two")


@pytest.fixture(scope="module")
def one_process_run(job, bert, roberta, tmp_path_factory, monkeypatch_module):
    monkeypatch_module.setattr("alad.alignment.trainer.SHARD_TEXTS", SHARD_TEXTS)
    out = tmp_path_factory.mktemp("single") / "one"
    settings = {k: v for k, v in job["settings"].items()}
    summary = align(
        out,
        AlignConfig(student=job["student"], teacher=job["teacher"], **settings),
        texts=job["texts"],
        student=bert,
        teacher=roberta,
        show_progress=False,
    )
    return out, summary


@pytest.fixture(scope="module")
def monkeypatch_module():
    patcher = pytest.MonkeyPatch()
    yield patcher
    patcher.undo()


def test_two_processes_match_one_process(two_process_run, one_process_run, job):
    out, result = two_process_run
    two, one = result["summary"], one_process_run[1]
    assert result["world_size"] == 2
    # the same split and the same counts: the global batches are those of one process
    for key in ("num_train", "num_val", "train_tokens", "val_tokens", "unpaired_student_tokens"):
        assert two[key] == one[key], key
    assert two["mean_predictor"]["cosine"] == pytest.approx(one["mean_predictor"]["cosine"], abs=1e-6)
    for window in ("1", "3"):
        a, b = two["windows"][window], one["windows"][window]
        assert a["val_cosine_init"] == pytest.approx(b["val_cosine_init"], abs=1e-6)
        assert a["val_cosine"] == pytest.approx(b["val_cosine"], abs=COSINE_TOLERANCE)
        assert a["val_cosine"] > a["val_cosine_init"] + 0.05
    # only the main process wrote, and it wrote a complete run
    for name in ("summary.json", "summary.md", "alignment_curves.png", "run_config.json", "w1", "w3"):
        assert (out / name).exists(), name
    assert not (out / "checkpoint").exists()
    # the cache was built by both processes, each its own shards (student and teacher: 10 each)
    first, second = result["built"]
    assert sorted(first + second) == sorted(list(range(10)) * 2) and not set(first) & set(second)
    assert len(first) == len(second) == 10
    # ... and every shard is in the manifest the main process wrote, in order
    manifests = list(Path(job["settings"]["cache_dir"]).glob("*/manifest.json"))
    assert len(manifests) == 2
    for manifest in manifests:
        shards = json.loads(manifest.read_text())["shards"]
        assert [s["index"] for s in shards] == list(range(10))


def test_accelerate_launch_matches_one_process(job, one_process_run, tmp_path):
    """``accelerate launch --num_processes 2 ...`` gives the same run as torchrun and as one process."""
    out = tmp_path / "accelerate"
    cache = tmp_path / "cache"  # a fresh cache: the two processes build it, as under torchrun
    result = launch(
        tmp_path,
        {**job, "out": str(out), "settings": {**job["settings"], "cache_dir": str(cache)}},
        "accelerate",
        launcher=accelerate_launcher(),
    )
    two, one = result["summary"], one_process_run[1]
    assert result["world_size"] == 2
    first, second = result["built"]
    assert len(first) == len(second) == 10 and not set(first) & set(second)
    for window in ("1", "3"):
        assert two["windows"][window]["val_cosine"] == pytest.approx(
            one["windows"][window]["val_cosine"], abs=COSINE_TOLERANCE
        )
    assert (out / "w3" / "adapter.safetensors").is_file() and not (out / "checkpoint").exists()


def test_two_processes_resume_mid_epoch_exactly(two_process_run, job, tmp_path):
    reference, _ = two_process_run
    out = tmp_path / "resumed"
    first = launch(tmp_path, {**job, "out": str(out), "align": {"stop_after_steps": 3}}, "stop")
    assert first["summary"] == {"interrupted_at_step": 3}
    state = torch.load(out / "checkpoint" / "state.pt", weights_only=False)
    assert state["world_size"] == 2 and len(state["rng_per_process"]) == 2
    assert (state["epoch"], state["batch"]) == (0, 3)  # mid-epoch
    # another number of processes would split the batches otherwise: refused, not silently inexact
    with pytest.raises(ValueError, match=r"written by 2 process\(es\); resume it with 2 \(now 1\)"):
        align(
            out,
            AlignConfig(student=job["student"], teacher=job["teacher"], **job["settings"]),
            texts=job["texts"],
            show_progress=False,
        )
    launch(tmp_path, {**job, "out": str(out)}, "resume")
    for window in (1, 3):
        expected = AlignmentAdapter.from_pretrained(reference / f"w{window}").state_dict()
        got = AlignmentAdapter.from_pretrained(out / f"w{window}").state_dict()
        for name in expected:
            assert torch.equal(expected[name], got[name]), (window, name)
    assert json.loads((out / "summary.json").read_text()) == json.loads((reference / "summary.json").read_text())


def test_bad_inputs_fail_on_every_process(job, tmp_path):
    result = launch(tmp_path, {**job, "mode": "bad_inputs", "out": str(tmp_path / "bad")}, "bad")
    ranks = result["per_rank"]
    assert len(ranks) == 2
    for outcome in ranks:  # both fail, with the failing process named
        assert outcome["agree"][0] == "PermissionError"
        assert "process 1 of 2" in outcome["agree"][1] or "not writable" in outcome["agree"][1]
        kind, message = outcome["few_texts"]
        assert kind == "ValueError"
        assert "cannot be shared by 2 processes" in message and "at least one training text" in message
    assert not (tmp_path / "bad").exists()


def test_one_process_is_not_distributed(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = distributed.setup(torch.device("cpu"))
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.active) == (0, 1, True, False)
    assert distributed.gather(5) == [5] and distributed.broadcast("x") == "x"
    assert distributed.all_reduce_sum([1.0, 2.0]) == [1.0, 2.0]
    with pytest.raises(PermissionError):
        distributed.agree(lambda: (_ for _ in ()).throw(PermissionError(13, "no")))


def test_other_commands_refuse_several_processes(monkeypatch, capsys):
    from alad.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["compress", "--model", "x", "--keep-layers", "0", "--out", "y"]) == 2
    assert "runs as one process, but 2 were started" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# fine-tuning (finetune / finetune-teacher) on two processes


@pytest.fixture(scope="module")
def ner_job(bert_dir, tmp_path_factory):
    from tiny_tasks import write_ner_data

    data = write_ner_data(tmp_path_factory.mktemp("dist-ner"))
    settings = {
        "task": "ner",
        "student": str(bert_dir),
        "data": f"conll2003:{data}",
        "eval_split": "dev",
        "epochs": 2,
        "batch_size": 8,
        "max_train": None,
    }
    return {"mode": "finetune", "settings": settings}


@pytest.fixture(scope="module")
def two_process_finetune(ner_job, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist-ft")
    out = tmp / "two"
    return out, launch(tmp, {**ner_job, "out": str(out)}, "ft-two")


def test_finetune_on_two_processes_trains_like_one(two_process_finetune, ner_job, tmp_path):
    from alad.finetuning.trainer import FinetuneConfig, finetune

    out, result = two_process_finetune
    two = result["result"]
    one = finetune(tmp_path / "one", FinetuneConfig(**ner_job["settings"]), show_progress=False)
    assert result["world_size"] == 2
    assert two["training"]["steps"] == one["training"]["steps"]  # the same global batches
    # per-process mean losses averaged (not one mean over the batch) and other dropout: close, not equal
    assert two["training"]["final_loss"] == pytest.approx(one["training"]["final_loss"], rel=0.05)
    assert two["metrics"]["micro_f1"] == pytest.approx(one["metrics"]["micro_f1"], abs=0.1)
    assert (out / "metrics.json").is_file() and (out / "model").is_dir() and not (out / "checkpoint.pt").exists()


def test_finetune_on_two_processes_resumes_exactly(two_process_finetune, ner_job, tmp_path):
    from safetensors.torch import load_file

    reference, result = two_process_finetune
    out = tmp_path / "resumed"
    stopped = launch(tmp_path, {**ner_job, "out": str(out), "finetune": {"stop_after_steps": 3}}, "ft-stop")
    assert stopped["result"] == {"interrupted_at_step": 3}
    assert torch.load(out / "checkpoint.pt", weights_only=False)["world_size"] == 2
    resumed = launch(tmp_path, {**ner_job, "out": str(out)}, "ft-resume")["result"]
    assert resumed["training"] == result["result"]["training"]
    for part in ("head.safetensors", "encoder/model.safetensors"):
        a, b = load_file(reference / "model" / part), load_file(out / "model" / part)
        assert all(torch.equal(a[k], b[k]) for k in a), part


def test_one_named_gpu_for_several_processes_is_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="names one GPU, but 2 processes were started; pass --device cuda"):
        distributed.setup(torch.device("cuda", 0))
