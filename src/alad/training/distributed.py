"""Several processes through ``torch.distributed``: process-group setup, rank helpers, gradient sync.

``torchrun --nproc-per-node 2 -m alad align ...`` and ``accelerate launch --num-processes 2 -m alad
align ...`` both start the processes with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``
and ``MASTER_PORT`` in the environment; :func:`setup` joins the process group from them (gloo on the
CPU, nccl on GPUs, each process on the GPU of its ``LOCAL_RANK``). A process group the caller already
started is used as it is. Without those variables (or with ``WORLD_SIZE=1``) everything here is a
no-op and alad runs as one process, exactly as before.

Data parallelism is plain: every process holds the same adapters, computes the loss of its share of
each global batch, and :func:`data_parallel_step` sums the gradients (and the loss) over the
processes before the optimiser step, so every process takes the same step. Only the main process
(rank 0) writes files. Checks whose outcome may differ between processes (a folder one of them
cannot write) go through :func:`agree`, so every process fails together with the same message
instead of some of them waiting for the others forever.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from alad.training.loop import clip_and_step
from alad.validation import check_finite_loss

T = TypeVar("T")

TIMEOUT_ENV = "ALAD_DIST_TIMEOUT_S"
"""Seconds a process waits for the others at a collective before failing (default 1800)."""


@dataclass(frozen=True)
class Context:
    """Where this process stands: its rank, the number of processes, and the device it computes on."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def env_world_size() -> int:
    """The number of processes the launcher started (``WORLD_SIZE``), 1 without a launcher."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError as err:
        raise ValueError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a number of processes") from err


def is_active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_active() else 0


def world_size() -> int:
    return dist.get_world_size() if is_active() else 1


def is_main() -> bool:
    return rank() == 0


def setup(device: torch.device) -> Context:
    """Join the process group the launcher describes (if any) and return this process's context.

    ``device`` is the resolved device (:func:`alad.models.encoders.resolve_device` already refused a GPU asked
    for where none is); with several processes on CUDA each takes the GPU of its ``LOCAL_RANK``.
    """
    if device.type == "cuda" and device.index is not None and env_world_size() > 1:
        raise ValueError(
            f"--device {device} names one GPU, but {env_world_size()} processes were started; pass --device cuda "
            "(each process takes the GPU of its LOCAL_RANK)"
        )
    if not is_active() and env_world_size() > 1:
        if not dist.is_available():
            raise RuntimeError("this torch has no torch.distributed; run one process (no torchrun/accelerate)")
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            local = int(os.environ.get("LOCAL_RANK", "0"))
            if local >= torch.cuda.device_count():
                raise ValueError(
                    f"process with LOCAL_RANK {local} has no GPU of its own: torch sees {torch.cuda.device_count()}; "
                    "start at most one process per GPU (--nproc-per-node / --num-processes)"
                )
            torch.cuda.set_device(local)
        timeout = datetime.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, "1800")))
        dist.init_process_group(backend=backend, timeout=timeout)
    if not is_active():
        return Context(device=device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", torch.cuda.current_device())))
    return Context(rank=dist.get_rank(), world_size=dist.get_world_size(), device=device)


def barrier() -> None:
    if is_active():
        dist.barrier()


def broadcast(value: T) -> T:
    """The main process's ``value`` on every process (any picklable object)."""
    if not is_active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value: T) -> list[T]:
    """Every process's ``value``, in rank order, on every process."""
    if not is_active():
        return [value]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def agree(check: Callable[[], T], main_only: bool = False) -> T:
    """Run ``check`` (on every process, or on the main one) and fail on every process if it failed on any.

    Returns ``check()``'s result (the main process's with ``main_only``). The error re-raised keeps the
    type of the first failure and names the process it happened on.
    """
    result, failure = None, None
    if not main_only or is_main():
        try:
            result = check()
        except Exception as err:  # noqa: BLE001 - every failure must reach every process
            failure = err
    if not is_active():
        if failure is not None:
            raise failure
        return result
    outcomes = gather(None if failure is None else (type(failure), str(failure), getattr(failure, "errno", None)))
    for index, outcome in enumerate(outcomes):
        if outcome is not None:
            kind, text, code = outcome
            if failure is not None and index == rank():
                raise failure
            message = f"process {index} of {len(outcomes)}: {text}"
            if issubclass(kind, OSError) and code is not None:
                raise kind(code, message)
            try:
                error = kind(message)
            except Exception:  # noqa: BLE001 - an exception type that takes other arguments
                error = RuntimeError(message)
            raise error
    return broadcast(result) if main_only else result


def all_reduce_sum(values: list[float], device: torch.device | None = None) -> list[float]:
    """Sum each number over the processes (float64)."""
    if not is_active():
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def data_parallel_step(
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    parameters: Iterable[torch.nn.Parameter],
    grad_clip: float,
) -> torch.Tensor:
    """:func:`alad.training.loop.optimizer_step` for one process of several.

    ``loss`` is this process's share of the global batch loss (e.g. its summed token losses over the
    global batch's token count), so the sum over the processes is the loss of the whole batch and the
    summed gradients are its gradients. Returns the global loss.
    """
    return data_parallel_steps([(loss, optimizer, scheduler, list(parameters))], grad_clip)[0]


def data_parallel_steps(
    steps: Sequence[
        tuple[torch.Tensor, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler, Sequence[torch.nn.Parameter]]
    ],
    grad_clip: float,
) -> list[torch.Tensor]:
    """Several independent models' steps (alignment's windows) with one all-reduce between them.

    Each model's gradients and loss are summed over the processes in one flat all-reduce; the NaN
    check, the clipping and the step then see the same numbers on every process, so every process
    takes the same step (and fails together). Returns each model's global loss.
    """
    flats, sizes = [], []
    for loss, optimizer, _, params in steps:
        optimizer.zero_grad(set_to_none=True)
        if loss.requires_grad:
            loss.backward()
        pieces = [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params]
        flats.append(torch.cat([*pieces, loss.detach().reshape(1).to(pieces[0].dtype)]))
        sizes.append(flats[-1].numel())
    flat = torch.cat(flats)
    if is_active():
        dist.all_reduce(flat)
    totals = []
    for (_, optimizer, scheduler, params), part in zip(steps, flat.split(sizes), strict=True):
        offset = 0
        for p in params:
            p.grad = part[offset : offset + p.numel()].view_as(p).clone()
            offset += p.numel()
        total = part[-1]
        check_finite_loss(total)  # every process sees the same sum: all stop together
        clip_and_step(optimizer, scheduler, params, grad_clip)
        totals.append(total)
    return totals


def shutdown() -> None:
    """Leave the process group (the CLI's end; library callers may keep theirs)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
