"""One process of a multi-process test run, started by ``torchrun`` (tests/test_distributed.py).

Reads a JSON job: ``{"mode": "align" | "bad_inputs", "student", "teacher", "texts", "out", "settings",
"shard_texts", "stop_after_steps", "result"}``; rank 0 writes what the test checks to ``result``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

torch.set_num_threads(1)


def main() -> None:
    job = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    import alad.alignment.trainer
    from alad.alignment.trainer import AlignConfig, align
    from alad.training import distributed

    alad.alignment.trainer.SHARD_TEXTS = job.get("shard_texts", alad.alignment.trainer.SHARD_TEXTS)
    result: dict = {}
    if job["mode"] == "finetune":
        from alad.finetuning.trainer import FinetuneConfig, finetune

        out = finetune(job["out"], FinetuneConfig(**job["settings"]), show_progress=False, **job.get("finetune", {}))
        result = {"result": out, "world_size": distributed.world_size()}
        if distributed.is_main():
            Path(job["result"]).write_text(json.dumps(result), encoding="utf-8")
        distributed.shutdown()
        return
    config = AlignConfig(student=job["student"], teacher=job["teacher"], **job["settings"])
    if job["mode"] == "align":
        from alad.alignment.cache import EmbeddingCache

        built: list[int] = []  # the cache shards this process embedded
        original = EmbeddingCache._build

        def spy(self, encoder, spans, layer, directory, manifest, indices, *rest):
            indices = list(indices)
            built.extend(indices)
            return original(self, encoder, spans, layer, directory, manifest, indices, *rest)

        EmbeddingCache._build = spy
        summary = align(job["out"], config, texts=job["texts"], show_progress=False, **job.get("align", {}))
        result = {"summary": summary, "world_size": distributed.world_size(), "built": distributed.gather(built)}
    else:  # bad_inputs: every process must fail, with the same message
        distributed.setup(torch.device("cpu"))
        rank = distributed.rank()

        def only_rank_1_fails() -> None:
            if rank == 1:
                raise PermissionError(13, f"{job['out']} is not writable; choose a writable --cache-dir")

        for name, call in [
            ("agree", lambda: distributed.agree(only_rank_1_fails)),
            (
                "few_texts",
                lambda: align(job["out"], config, texts=job["texts"][:2], val_fraction=0.5, show_progress=False),
            ),
        ]:
            try:
                call()
                result[name] = None
            except Exception as err:  # noqa: BLE001
                result[name] = [type(err).__name__, str(err)]
        result = {"per_rank": distributed.gather(result)}
    if distributed.is_main():
        with open(job["result"], "w", encoding="utf-8") as handle:
            json.dump(result, handle)
    distributed.shutdown()


if __name__ == "__main__":
    main()
