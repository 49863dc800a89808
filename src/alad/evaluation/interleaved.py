"""Latency of several models measured together: interleaved, repeated, median; at real input lengths.

On a shared machine a model timed alone, minutes before or after another, sees another load; a
table whose rows were timed at different moments compares the machine, not the models. Here every
row of a table is timed in one pass at the end: in each of ``rounds`` rounds, the rows run one
after another in a fresh seeded order, each over the same fixed batches (the evaluation set's own
items at their real lengths: batch 1 one item at a time, batch 32 length-sorted groups padded to
their longest item); a row's number is the median over rounds of its mean time per call.
"""

from __future__ import annotations

import gc
import random
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm


def real_length_batches(
    features: Sequence, collate: Callable[[list], dict[str, torch.Tensor]], batch_size: int, limit: int, seed: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Up to ``limit`` batches of real items: batch 1 a seeded sample of items, larger batches
    length-sorted groups of a seeded sample (so padding stays as small as deployment would make it)."""
    order = list(range(len(features)))
    random.Random(seed).shuffle(order)
    chosen = order[: batch_size * limit]
    if batch_size > 1:
        chosen.sort(key=lambda i: len(features[i].input_ids))
    batches = []
    for start in range(0, len(chosen), batch_size):
        group = [features[i] for i in chosen[start : start + batch_size]]
        if len(group) < batch_size and batches:
            break
        batch = collate(group)
        batches.append((batch["input_ids"], batch["attention_mask"]))
    return batches[:limit]


def interleaved_latency(
    rows: dict[str, Callable[[torch.Tensor, torch.Tensor], Any]],
    batches: dict,
    rounds: int = 7,
    warmup: int = 1,
    seed: int = 0,
    show_progress: bool = False,
) -> dict[str, dict[int, dict[str, Any]]]:
    """``{row: {batch_size: {median_ms, min_ms, max_ms, rounds, calls, mean_tokens}}}``; see the module doc.

    ``batches`` is ``{batch_size: [(input_ids, attention_mask), ...]}`` shared by every row, or
    ``{row: {batch_size: [...]}}`` where rows read different tokenizers (the same items, each row's
    own token ids).
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    per_row = batches if set(batches) == set(rows) else {name: batches for name in rows}
    sizes = list(next(iter(per_row.values()))) if per_row else []
    rng = random.Random(seed)
    times: dict[str, dict[int, list[float]]] = {name: {b: [] for b in sizes} for name in rows}
    with torch.inference_mode():
        for name, fn in rows.items():  # warm-up: first calls pay for lazy initialisation
            for group in per_row[name].values():
                for ids, mask in group[: max(1, warmup)]:
                    fn(ids, mask)
        gc.collect()
        for _ in tqdm(range(rounds), desc="timing rows (interleaved)", disable=not show_progress):
            order = list(rows)
            rng.shuffle(order)
            for size in sizes:
                for name in order:
                    fn, group = rows[name], per_row[name][size]
                    start = time.perf_counter()
                    for ids, mask in group:
                        fn(ids, mask)
                    times[name][size].append((time.perf_counter() - start) * 1e3 / len(group))
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for name in rows:
        out[name] = {}
        for size in sizes:
            group, values = per_row[name][size], sorted(times[name][size])
            out[name][size] = {
                "median_ms": statistics.median(values),
                "min_ms": values[0],
                "max_ms": values[-1],
                "rounds": rounds,
                "calls": len(group),
                "mean_tokens": statistics.fmean(int(mask.sum()) / mask.shape[0] for _, mask in group),
                "threads": torch.get_num_threads(),
            }
    return out
