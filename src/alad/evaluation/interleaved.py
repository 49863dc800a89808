"""Latency of several models measured together: interleaved, repeated, median; at real input lengths.

On a shared machine a model timed alone, minutes before or after another, sees another load; a
table whose rows were timed at different moments compares the machine, not the models. Here every
row of a table is timed in one pass at the end, interleaved call by call: in each of ``rounds``
rounds, for each of the fixed batches (the evaluation set's own items at their real lengths: batch 1
one item at a time, batch 32 length-sorted groups padded to their longest item), every row runs that
batch once, in a fresh seeded order. A load spike thus lands on all rows within milliseconds instead
of on whichever row ran during it. A row's number is the median over rounds of its mean time per
call; with a ``reference`` row, its overhead is the median over rounds of its time over the
reference's time in the same round (paired, so drifts in the machine's speed cancel).
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
    reference: str | None = None,
) -> dict[str, dict[int, dict[str, Any]]]:
    """``{row: {batch_size: {median_ms, min_ms, max_ms, rounds, calls, mean_tokens, threads}}}``, plus
    ``overhead_pct`` (median over rounds of the paired ratio, minus 1) where ``reference`` names a row;
    see the module doc.

    ``batches`` is ``{batch_size: [(input_ids, attention_mask), ...]}`` shared by every row, or
    ``{row: {batch_size: [...]}}`` where rows read different tokenizers (the same items, each row's
    own token ids).
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    if reference is not None and reference not in rows:
        raise ValueError(f"reference row {reference!r} is not among the rows timed ({', '.join(rows)})")
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
            for size in sizes:
                spent = _one_round(rows, {name: per_row[name][size] for name in rows}, rng)
                for name in rows:
                    times[name][size].append(spent[name] * 1e3 / len(per_row[name][size]))
    return {
        name: {size: _summary(times, name, size, per_row[name][size], reference) for size in sizes} for name in rows
    }


def _one_round(rows: dict, groups: dict[str, list], rng: random.Random) -> dict[str, float]:
    """Seconds each row spent on its batches, the rows taking turns call by call in a shuffled order."""
    spent = dict.fromkeys(rows, 0.0)
    order = list(rows)
    for index in range(max(len(group) for group in groups.values())):
        rng.shuffle(order)
        for name in order:
            if index < len(groups[name]):
                ids, mask = groups[name][index]
                start = time.perf_counter()
                rows[name](ids, mask)
                spent[name] += time.perf_counter() - start
    return spent


def _summary(times: dict, name: str, size: int, group: list, reference: str | None) -> dict[str, Any]:
    values = sorted(times[name][size])
    out = {
        "median_ms": statistics.median(values),
        "min_ms": values[0],
        "max_ms": values[-1],
        "rounds": len(values),
        "calls": len(group),
        "mean_tokens": statistics.fmean(int(mask.sum()) / mask.shape[0] for _, mask in group),
        "threads": torch.get_num_threads(),
    }
    if reference is not None:
        ratios = [mine / theirs for mine, theirs in zip(times[name][size], times[reference][size], strict=True)]
        out["overhead_pct"] = 100 * (statistics.median(ratios) - 1)
    return out
