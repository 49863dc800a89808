"""The resumable epoch/batch loop that alignment and task fine-tuning share.

A run that stops (killed, or ``stop_after_steps`` in tests) restarts at the batch after the last
checkpoint, with the same seeded batch order, so it ends bit-identical to a run never interrupted.
Keeping that bookkeeping in one place is what makes both trainers resumable the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from alad.validation import NonFiniteLossError, check_finite_loss

SaveFn = Callable[[int, int, int], None]
"""``save(epoch, batch, step)``: checkpoint a run about to start batch ``batch`` of epoch ``epoch``."""


class ResumableLoop:
    """Epochs of seeded batches from a saved position, with step-cadence checkpoints and an early stop."""

    def __init__(
        self,
        epochs: int,
        batches_for_epoch: Callable[[int], Sequence[Any]],
        save: SaveFn,
        *,
        start_epoch: int = 0,
        start_batch: int = 0,
        start_step: int = 0,
        checkpoint_every: int = 0,
        stop_after_steps: int | None = None,
        description: str = "training",
        show_progress: bool = True,
    ) -> None:
        self.epochs = epochs
        self.batches_for_epoch = batches_for_epoch
        self.save = save
        self.start_epoch, self.start_batch = start_epoch, start_batch
        self.step = start_step
        self.checkpoint_every = checkpoint_every
        self.stop_after_steps = stop_after_steps
        self.description = description
        self.show_progress = show_progress

    def resume_at(self, epoch: int, batch: int, step: int) -> None:
        """Continue from a checkpoint taken before batch ``batch`` of epoch ``epoch``, after ``step`` steps."""
        self.start_epoch, self.start_batch, self.step = epoch, batch, step

    def total_steps(self) -> int:
        return sum(len(self.batches_for_epoch(epoch)) for epoch in range(self.epochs))

    def run(
        self,
        train_step: Callable[[Any], dict[str, Any]],
        end_epoch: Callable[[int], None] | None = None,
        converged: Callable[[], bool] | None = None,
    ) -> bool:
        """Call ``train_step(batch)`` (it returns the progress-bar postfix) for every batch not yet done.

        ``end_epoch(epoch)`` runs after each epoch, before the epoch-end checkpoint. ``converged()`` is
        asked before each epoch starts; True ends training there (early stopping). It must read only
        state the checkpoint restores, so a resumed run stops at the same epoch. Returns False when
        the run stopped at ``stop_after_steps`` (a checkpoint was written), True when it finished.
        """
        progress = tqdm(
            total=self.total_steps(),
            initial=self.step,
            unit="step",
            disable=not self.show_progress,
            desc=self.description,
        )
        try:
            for epoch in range(self.start_epoch, self.epochs):
                if converged is not None and converged():
                    break
                for index, batch in enumerate(self.batches_for_epoch(epoch)):
                    if epoch == self.start_epoch and index < self.start_batch:
                        continue
                    try:
                        postfix = train_step(batch)
                    except NonFiniteLossError as err:
                        raise NonFiniteLossError(
                            f"{err} at step {self.step + 1} (epoch {epoch + 1}); training stopped and this step was "
                            "not saved. Lower the learning rate (align: --lr; finetune: --lr-head, --lr-adapter, "
                            "--lr-encoder) or set --grad-clip, in a new --out"
                        ) from None
                    self.step += 1
                    progress.update(1)
                    progress.set_postfix(postfix)
                    if self.stop_after_steps is not None and self.step >= self.stop_after_steps:
                        self.save(epoch, index + 1, self.step)
                        return False
                    if self.checkpoint_every and self.step % self.checkpoint_every == 0:
                        self.save(epoch, index + 1, self.step)
                if end_epoch is not None:
                    end_epoch(epoch)
                self.save(epoch + 1, 0, self.step)
        finally:
            progress.close()
        return True


FUSED_DEVICES = ("cpu", "cuda")


def adamw(params: Iterable[Any], **settings: Any) -> torch.optim.AdamW:
    """AdamW for parameters (or parameter groups), fused where every tensor allows it (CPU or CUDA floats).

    The fused kernel takes one pass over each tensor instead of a dozen: on 2 CPU cores it cut the
    optimiser step of a 2-layer MiniLM student (15.6M parameters, 11.7M of them word embeddings)
    from 70 to 10 ms, and its joint fine-tuning step from 129 to 69 ms (``benchmarks/step_time.py``,
    ``benchmarks/results/step_time/``). The update is AdamW's, equal up to float rounding.
    """
    groups = list(params)
    tensors = [t for g in groups for t in (g["params"] if isinstance(g, dict) else [g])]
    fused = bool(tensors) and all(t.device.type in FUSED_DEVICES and t.is_floating_point() for t in tensors)
    return torch.optim.AdamW(groups, fused=fused, **settings)


def optimizer_step(
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    parameters: Iterable[torch.nn.Parameter],
    grad_clip: float,
) -> None:
    """Backward, clip the global gradient norm (when ``grad_clip`` > 0), step optimiser and schedule."""
    check_finite_loss(loss)  # a NaN/inf loss never reaches the weights
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    clip_and_step(optimizer, scheduler, parameters, grad_clip)


def clip_and_step(
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    parameters: Iterable[torch.nn.Parameter],
    grad_clip: float,
) -> None:
    """Clip the gradient norm (when ``grad_clip`` > 0; a NaN/inf norm stops training), then step both."""
    if grad_clip > 0:
        norm = torch.nn.utils.clip_grad_norm_(list(parameters), grad_clip)
        if not bool(torch.isfinite(norm)):
            raise NonFiniteLossError(f"the gradient norm became {norm.item()}")
    optimizer.step()
    scheduler.step()


def rng_state() -> dict[str, Any]:
    """The random state a resumed run needs: CPU, and CUDA's where a GPU is in use (dropout there)."""
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any] | torch.Tensor) -> None:
    """Restore ``rng_state()``'s result (or a bare CPU state, as older checkpoints hold)."""
    if isinstance(state, torch.Tensor):
        torch.set_rng_state(state)
        return
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
