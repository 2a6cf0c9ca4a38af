"""The `Accelerator` of a trainer (RM, GRPO): data parallelism under `accelerate launch` or `torchrun`."""

from __future__ import annotations

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
    return accelerator
