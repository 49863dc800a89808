"""Benchmark: fp32 against bf16 autocast (``precision: bf16``) for the three things it speeds up.

1. embedding the cache: ``encode_spans`` of an encoder (the teacher) over real task sentences,
   tokens per second, and how close the bf16 states are to the fp32 ones (cosine per token);
2. one alignment step of a window MLP adapter (forward, loss, backward, fused AdamW) on a batch of
   ``--batch-tokens`` padded tokens (random states of the pair's widths: the cost does not depend on
   their values);
3. one fine-tuning step (joint, batch 16, POS on EWT dev, length-bucketed as in training) of a student;
4. one training step of the student encoder with a span head at QA's input size (batch 16 x
   ``--seq-len`` random token ids), what a QA teacher's fine-tuning costs per step.

Each measurement runs fp32, bf16, fp32, bf16 in one process and keeps the faster of the two runs of each,
so a slow start or a passing load hits both. Time it on a quiet machine.

    python benchmarks/precision_speed.py --teacher all-mpnet-base-v2 --student all-MiniLM-L6-v2 \
        --out benchmarks/results/precision_speed

Writes ``precision_speed.json`` and ``precision_speed.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import torch

from alad.models.encoders import Encoder, load_encoder
from alad.recipes.runner import machine_info
from alad.training.loop import adamw, optimizer_step
from alad.training.precision import PRECISIONS, autocast, native_bf16


def _best_of_two(measure) -> dict[str, float]:
    """``measure(precision)`` -> seconds, run fp32, bf16, fp32, bf16; the faster of each pair."""
    times: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    for _ in range(2):
        for precision in PRECISIONS:
            times[precision].append(measure(precision))
    return {p: min(t) for p, t in times.items()}


def _time_training(params: list, lr: float, loss_of, steps: int, warmup: int) -> dict[str, float]:
    """Seconds per optimiser step (fused AdamW, constant ``lr``) on ``loss_of(index)``, its forward pass
    and loss under autocast, after ``warmup`` uncounted steps; the faster of two runs per precision."""
    optimizer = adamw(params, lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)

    def measure(precision: str) -> float:
        for index in range(warmup + steps):
            if index == warmup:
                start = time.perf_counter()
            with autocast("cpu", precision):
                loss = loss_of(index)
            optimizer_step(loss, optimizer, scheduler, params, 1.0)
        return (time.perf_counter() - start) / steps

    return _best_of_two(measure)


def embedding(encoder_name: str, encoder: Encoder, texts: list[str]) -> dict:
    from alad.alignment.cache import encode_spans
    from alad.alignment.pairing import tokenize_with_spans

    spans = tokenize_with_spans(encoder.tokenizer, texts)
    tokens = sum(len(s.input_ids) for s in spans)
    states: dict[str, list[torch.Tensor]] = {}

    def measure(precision: str) -> float:
        start = time.perf_counter()
        states[precision] = encode_spans(encoder, spans, precision=precision)
        return time.perf_counter() - start

    seconds = _best_of_two(measure)
    full, half = (torch.cat(states[p]).float() for p in PRECISIONS)
    cosine = torch.nn.functional.cosine_similarity(full, half, dim=-1)
    return {
        "encoder": encoder_name,
        "texts": len(texts),
        "tokens": tokens,
        "tokens_per_s": {p: tokens / s for p, s in seconds.items()},
        "cosine_bf16_to_fp32": {"mean": float(cosine.mean()), "min": float(cosine.min())},
    }


def alignment_step(student_dim: int, teacher_dim: int, hidden: int, batch_tokens: int, steps: int) -> dict:
    from alad.adapters import AdapterConfig, AlignmentAdapter
    from alad.alignment.trainer import alignment_loss

    torch.manual_seed(0)
    adapter = AlignmentAdapter(AdapterConfig(student_dim, teacher_dim, window=3, hidden_size=hidden)).train()
    length = 26  # CoNLL-2003's mean sentence length in MiniLM tokens, special tokens included
    rows = max(1, batch_tokens // length)
    x, y = torch.randn(rows, length, student_dim), torch.randn(rows, length, teacher_dim)
    mask = torch.ones(rows, length, dtype=torch.bool)
    seconds = _time_training(
        list(adapter.parameters()), 1e-3, lambda index: alignment_loss(adapter(x, mask), y, mask), steps, warmup=5
    )
    return {
        "adapter": f"window MLP w3 h{hidden}, {student_dim} -> {teacher_dim}",
        "batch": f"{rows} x {length} tokens",
        "ms_per_step": {p: 1000 * s for p, s in seconds.items()},
    }


def finetuning_step(student: str, steps: int) -> dict:
    from alad.finetuning.trainer import FinetuneConfig, length_bucketed_batches, load_splits, training_loss
    from alad.models.task_model import build_task_model
    from alad.tasks import get_task

    config = FinetuneConfig(
        task="pos", data="conllu", tag="upos", train_split="dev", eval_split="test", max_train=2001,
        max_eval=50, student=student, mode="joint", batch_size=16, frozen_cache_mb=0,
    )  # fmt: skip
    splits, task = load_splits(config), get_task("pos")
    model = build_task_model("pos", student, task.label_set(splits.train, None), mode="joint").train()
    features = task.features(model, splits.train, config)
    batches = length_bucketed_batches([len(f.input_ids) for f in features], 16, 0)[: steps + 5]

    def loss_of(index: int) -> torch.Tensor:
        return training_loss(model, task, task.collate(model, [features[i] for i in batches[index]]), config)

    params = [p for p in model.parameters() if p.requires_grad]
    seconds = _time_training(params, 1e-4, loss_of, len(batches) - 5, warmup=5)
    return {
        "student": student,
        "mode": "joint",
        "batch_size": 16,
        "ms_per_step": {p: 1000 * s for p, s in seconds.items()},
    }


def long_input_step(encoder_name: str, encoder: Encoder, seq_len: int, batch_size: int, steps: int) -> dict:
    """An encoder training step at QA's input size: forward, a span-style linear head and loss,
    backward and fused AdamW on random token ids (the cost does not depend on which ids)."""
    model, head = encoder.model.train(), torch.nn.Linear(int(encoder.hidden_size), 2)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 20000, (batch_size, seq_len), generator=generator)
    mask = torch.ones_like(ids)
    positions = torch.randint(0, seq_len, (batch_size, 2), generator=generator)

    def loss_of(index: int) -> torch.Tensor:
        logits = head(model(input_ids=ids, attention_mask=mask).last_hidden_state).float()
        return sum(torch.nn.functional.cross_entropy(logits[..., k], positions[:, k]) for k in range(2))

    seconds = _time_training([*model.parameters(), *head.parameters()], 1e-4, loss_of, steps, warmup=2)
    return {
        "encoder": encoder_name,
        "batch": f"{batch_size} x {seq_len} tokens",
        "ms_per_step": {p: 1000 * s for p, s in seconds.items()},
    }


def conll_sentences(limit: int) -> list[str]:
    from alad.data.readers import read_conll2003
    from alad.data.sources import shared_data_dir

    root = shared_data_dir()
    if root is None:
        raise SystemExit("needs ../shared/data (CoNLL-2003) beside the checkout, or ALAD_SHARED_DATA")
    sentences = read_conll2003(root / "conll2003" / "train.txt")
    return [" ".join(s.tokens) for s in sentences[:limit]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="all-mpnet-base-v2", help="encoder embedded for the cache")
    parser.add_argument("--student", default="all-MiniLM-L6-v2", help="student of the fine-tuning step")
    parser.add_argument("--texts", type=int, default=1000, help="CoNLL-2003 training sentences embedded")
    parser.add_argument("--hidden", type=int, default=1280, help="adapter hidden width of the alignment step")
    parser.add_argument("--batch-tokens", type=int, default=1024, help="alignment batch (alad align's default)")
    parser.add_argument("--steps", type=int, default=30, help="steps counted per alignment / fine-tuning run")
    parser.add_argument("--seq-len", type=int, default=256, help="tokens per input of the long-input step (QA's)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/precision_speed")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    teacher, student = load_encoder(args.teacher), load_encoder(args.student)
    embed = embedding(args.teacher, teacher, conll_sentences(args.texts))
    student_dim, teacher_dim = int(student.hidden_size), int(teacher.hidden_size)
    row = {
        "command": "python benchmarks/precision_speed.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{machine_info()}, native bf16: {native_bf16('cpu')}",  # after set_num_threads: names them
        "embedding": embed,
        "alignment": alignment_step(student_dim, teacher_dim, args.hidden, args.batch_tokens, args.steps),
        "finetuning": finetuning_step(args.student, args.steps),
        "long_inputs": long_input_step(args.student, student, args.seq_len, 16, max(3, args.steps // 6)),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from alad.io.serialization import write_json_atomic, write_text_atomic

    write_json_atomic(out / "precision_speed.json", row)
    write_text_atomic(out / "precision_speed.md", format_table(row))
    print(format_table(row))
    return 0


def format_table(row: dict) -> str:
    e, a, f, q = row["embedding"], row["alignment"], row["finetuning"], row["long_inputs"]
    cos = e["cosine_bf16_to_fp32"]

    def speedup(fast: float, slow: float) -> str:
        return f"{fast / slow:.2f}x"

    lines = [
        "# fp32 against bf16 autocast (`precision: bf16`)",
        "",
        f"Command: `{row['command']}`  ",
        f"Machine: {row['machine']}; each measurement fp32, bf16, fp32, bf16 in one process, the faster of each kept.",
        "",
        "| what | fp32 | bf16 | bf16 speed-up |",
        "|---|---:|---:|---:|",
        f"| embedding {e['texts']} CoNLL-2003 sentences ({e['tokens']:,} tokens) with {e['encoder']}, tokens/s | "
        f"{e['tokens_per_s']['fp32']:.0f} | {e['tokens_per_s']['bf16']:.0f} | "
        f"{speedup(e['tokens_per_s']['bf16'], e['tokens_per_s']['fp32'])} |",
        f"| alignment step, {a['adapter']}, batch {a['batch']}, ms | {a['ms_per_step']['fp32']:.1f} | "
        f"{a['ms_per_step']['bf16']:.1f} | {speedup(a['ms_per_step']['fp32'], a['ms_per_step']['bf16'])} |",
        f"| fine-tuning step, {f['student']} joint, POS batch {f['batch_size']}, ms | {f['ms_per_step']['fp32']:.1f} | "
        f"{f['ms_per_step']['bf16']:.1f} | {speedup(f['ms_per_step']['fp32'], f['ms_per_step']['bf16'])} |",
        f"| training step at QA's input size, {q['encoder']} + span head, batch {q['batch']}, ms | "
        f"{q['ms_per_step']['fp32']:.0f} | {q['ms_per_step']['bf16']:.0f} | "
        f"{speedup(q['ms_per_step']['fp32'], q['ms_per_step']['bf16'])} |",
        "",
        f"bf16 states against fp32 states, cosine per token: mean {cos['mean']:.5f}, min {cos['min']:.5f} "
        "(the cache stores float16 either way).",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
