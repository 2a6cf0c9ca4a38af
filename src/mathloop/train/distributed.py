"""The `Accelerator` of a trainer (RM, GRPO) and the process group's end: data parallelism under `accelerate launch`
or `torchrun`."""

from __future__ import annotations

import atexit
import os


def make_accelerator():
    """accelerate's `Accelerator`, refusing a launch it would silently run as N independent copies: N processes
    started (WORLD_SIZE) while accelerate sees one. That happens on a machine without GPUs unless the environment
    says CPU (`ACCELERATE_USE_CPU=true`); each copy would then train on the whole batch and write the run folder."""
    from accelerate import Accelerator

    accelerator = Accelerator()
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and accelerator.num_processes != launched:
        raise RuntimeError(f"{launched} processes were launched but accelerate sees {accelerator.num_processes}: on "
                           f"a machine without GPUs set ACCELERATE_USE_CPU=true (e.g. ACCELERATE_USE_CPU=true "
                           f"accelerate launch --multi_gpu --num_processes {launched} ...)")
    destroy_process_group_at_exit()
    return accelerator


def is_main_process() -> bool:
    """Whether this is the process that reports (rank 0 of a launch, or the only process)."""
    return int(os.environ.get("RANK", "0")) == 0


def mean_over_processes(value: float) -> tuple[float, list[float]]:
    """The mean of `value` over the processes of a launch, and each process's value (rank order); `value` and
    `[value]` in a single process. Every process must call it (a collective)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value, [value]
    device = f"cuda:{torch.cuda.current_device()}" if dist.get_backend() == "nccl" else "cpu"
    values = [torch.zeros(1, dtype=torch.float64, device=device) for _ in range(dist.get_world_size())]
    dist.all_gather(values, torch.tensor([float(value)], dtype=torch.float64, device=device))
    each = [v.item() for v in values]
    return sum(each) / len(each), each


def destroy_process_group_at_exit() -> None:
    """Have the default process group, if there is one (several processes), destroyed when the process exits
    (once, however many trainers run in it)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        atexit.unregister(destroy_process_group)
        atexit.register(destroy_process_group)


def destroy_process_group() -> None:
    """Destroy the default process group while the interpreter is still whole. Left to interpreter finalization,
    gloo's worker threads can outlive it and the process aborts ("terminate called without an active exception",
    SIGABRT) after its work is done: a launch that trained correctly would exit non-zero. Registered with `atexit`
    rather than called when a trainer returns, so several trainers can run in one launched process."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
