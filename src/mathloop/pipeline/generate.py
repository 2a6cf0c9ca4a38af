"""What the generating stages (`mathloop eval`, `mathloop sample`) share around `mathloop.generate`.

`mathloop.generate` is the generate -> grade -> append step itself, a building block that GRPO rollouts and
synthesis use too; this module is the stage's side of it, which reads a stage's config (its `SamplerOptions`,
`RayOptions`, backend and TIR settings):

  validate_generation_settings   the checks every generating stage makes of its settings
  with_resolved_backend          `backend: auto` replaced by the engine it stands for, before the run record is written
  load_stage_backend             the backend a stage generates with
  generation_resources           the verifier's workers, the TIR sandbox and the Ray replica pool, held for a run
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

from mathloop.backends.base import Backend, validate_sampler_options
from mathloop.generate import code_executor
from mathloop.replicas import ReplicaSpec, replica_pool, validate_ray_options
from mathloop.verify import Verifier


def validate_generation_settings(config: Any, stage: str) -> None:
    """The checks every generating stage (eval, sample) shares: limit, tool timeout, sampler and Ray options."""
    if config.limit is not None and config.limit < 1:
        raise ValueError(f"{stage}: limit must be >= 1 (or left out for all problems), got {config.limit}")
    if not config.tool_timeout > 0:
        raise ValueError(f"{stage}: tool_timeout must be > 0 seconds, got {config.tool_timeout}")
    if config.max_tool_calls < 0:
        raise ValueError(f"{stage}: max_tool_calls must be >= 0 (code executions per response), got "
                         f"{config.max_tool_calls}")
    validate_sampler_options(config, stage)
    validate_ray_options(config, stage)


def with_resolved_backend(config: Any, backend: Backend | None = None) -> Any:
    """A generating stage's config (eval, sample) with `backend: auto` replaced by the engine it stands for and that
    engine's arguments (`resolve_backend`), so run.json names the engine that runs and a resume with another one is
    refused. With a `backend` object given, `auto` becomes that object's name."""
    from mathloop.backends import AUTO, resolve_backend

    if backend is not None:
        name = backend.name
        return dataclasses.replace(config, backend=name) if config.backend == AUTO and name else config
    name, args = resolve_backend(config.backend, config.backend_args)
    return dataclasses.replace(config, backend=name, backend_args=args)


def load_stage_backend(backend: str, model: str, backend_args: dict[str, Any]) -> Backend:
    from mathloop.backends import load_backend

    return load_backend(backend, model, **backend_args)


@contextlib.contextmanager
def generation_resources(config: Any):
    """What a generating stage (eval, sample) holds while it runs: the verifier's worker pool, the sandbox for TIR
    (the replicas run their own when the stage runs on Ray) and `replicas()`, the Ray replica pool started on first
    use and stopped with the stage."""
    spec = ReplicaSpec(config.backend, config.model, config.backend_args, config.mode, config.tool_timeout,
                       config.max_tool_calls, config.unsafe_sandbox_file_access)
    local_mode = "cot" if config.ray_address else config.mode
    with Verifier() as verifier, \
            code_executor(local_mode, config.tool_timeout, config.unsafe_sandbox_file_access) as executor, \
            contextlib.ExitStack() as stack:
        started: list = []

        def replicas():
            if not started:
                started.append(stack.enter_context(replica_pool(config, spec)))
            return started[0]

        yield verifier, executor, replicas
