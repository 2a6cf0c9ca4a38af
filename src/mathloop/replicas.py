"""Generation replicas on a Ray cluster: `sample` and `eval` spread over N actors, written by one driver.

Each replica is a Ray actor holding one backend (hf, vllm, openai or fake) with its own resources (`num_cpus`,
`num_gpus`), the TIR sandbox (on the replica's node) and a verifier pool. The driver (the `mathloop` process that
owns the run folder and its lock) cuts the pending problems into chunks and hands one chunk at a time to each idle
replica; a replica generates and grades its chunk and returns the graded `Sample`s; the driver appends them to the
run's JSONL file with the same `JsonlAppender` as a run without Ray. So resume (`pending_problems`), the folder lock
and the output format are the same with and without Ray.

Grading happens in the replicas: verification (sympy, the sandbox for TIR) costs CPU time that grows with the
samples, and the replicas are where the cluster's CPUs are; the driver only writes. A replica that dies (its node
lost, out of memory, killed) takes its chunk with it: the driver starts a new replica and queues the chunk again,
so every chunk is written exactly once, by the replica that finished it (a chunk is written whole or not at all).
A chunk that kills `MAX_CHUNK_TRIES` replicas in a row ends the run with an error naming it.

Chunks are the same as in a run without Ray (problems sorted by prompt length, the same chunk size), so a greedy
run writes the same rows; sampled responses are the same too on backends that seed each sample by its problem id
and index (hf, openvino: `Backend.seeds_each_sample`), whichever replica draws them and whatever the chunk size.
Connecting (`connect_ray`): `local` always starts a new cluster on this machine (never the one a stale
/tmp/ray/ray_current_cluster file names); `auto` joins the cluster that file names and refuses, in one line, a file
whose cluster no longer answers; a cluster with token authentication (Ray >= 2.52; on by default for clusters
started with `ray start` from Ray 2.59) that refuses this process's token gets one line that says where Ray reads
the token from (docs/reliability.md).

Ray is an optional dependency (`pip install 'mathloop[ray]'`), imported here only when a run asks for it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from mathloop.backends.base import SamplingParams
from mathloop.config import positive_int
from mathloop.records import JsonlAppender, Problem, Sample

log = logging.getLogger(__name__)

MAX_CHUNK_TRIES = 3  # replicas a chunk may take down before the run gives up on it
# Test hook: a path; the first replica to finish generating a chunk creates the file and exits (a crash mid-chunk).
CRASH_ONCE_ENV = "MATHLOOP_RAY_CRASH_ONCE"


@dataclass(kw_only=True)
class RayOptions:
    """Where `sample` and `eval` generate: in this process (`ray_address` None, the default) or on Ray actors.
    Stage configs inherit these fields (YAML keys, or a loop config's `ray:` section). They decide where and how
    fast a run goes, never what it writes, so they may change between runs of one folder."""

    ray_address: str | None = field(default=None, metadata={
        "flags": ("--ray",), "nargs": "?", "const": "local", "metavar": "ADDRESS",
        "help": "generate on Ray actors: no ADDRESS (or 'local') starts a cluster on this machine, 'auto' joins the "
                "running one, ray://HOST:10001 a remote one (pip install 'mathloop[ray]')"})
    ray_replicas: int = field(default=2, metadata={"type": positive_int,
        "help": "Ray: generation replicas (actors), one backend each"})
    ray_num_cpus: float = field(default=1.0, metadata={"help": "Ray: CPUs per replica"})
    ray_num_gpus: float = field(default=0.0, metadata={"help": "Ray: GPUs per replica (vllm, hf on CUDA)"})
    ray_chunk: int | None = field(default=None, metadata={"type": positive_int,
        "help": "Ray: problems per chunk handed to a replica (default: the chunk of a run without Ray)"})


RAY_OPTIONS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(RayOptions))


def validate_ray_options(options: Any, where: str) -> None:
    """Raise a ValueError naming the field when a `RayOptions` value is out of range."""
    if options.ray_replicas < 1:
        raise ValueError(f"{where}: ray_replicas must be >= 1, got {options.ray_replicas}")
    if options.ray_num_cpus < 0 or options.ray_num_gpus < 0:
        raise ValueError(f"{where}: ray_num_cpus and ray_num_gpus must be >= 0, got {options.ray_num_cpus}, "
                         f"{options.ray_num_gpus}")
    if options.ray_chunk is not None and options.ray_chunk < 1:
        raise ValueError(f"{where}: ray_chunk must be >= 1, got {options.ray_chunk}")


def import_ray():
    try:
        import ray
    except ImportError:
        raise ImportError("--ray needs Ray: pip install 'mathloop[ray]'") from None
    return ray


def connect_ray(ray: Any, address: str | None) -> None:
    """`ray.init` for `ray_address` (see the module docstring); a cluster that cannot be joined is a ValueError
    whose one line says why and what to do."""
    if address in (None, "local"):
        ray.init(address="local", include_dashboard=False, log_to_driver=False)
        return
    if address == "auto" and not os.environ.get("RAY_ADDRESS"):
        _refuse_a_stale_cluster_file(ray)
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    except Exception as e:  # Ray raises its own kinds (AuthenticationError, ConnectionError, RuntimeError)
        text = f"{type(e).__name__}: {e}"
        # A cluster that refuses the token logs InvalidAuthToken from C++ and raises a plain ConnectionError (Ray
        # 2.60): a cluster that answers at the address but cannot be joined is taken for one.
        if address == "auto":
            from ray._private.utils import read_ray_address

            target = os.environ.get("RAY_ADDRESS") or read_ray_address()
        else:
            target = os.environ.get("RAY_ADDRESS") or address
        refused = isinstance(e, ConnectionError) and _answers(target)
        if refused or "AuthenticationError" in text or "auth" in text.lower() and "token" in text.lower():
            raise ValueError(
                f"ray_address {address}: the Ray cluster there refused this process (InvalidAuthToken: token "
                f"authentication, {type(e).__name__}); give it the cluster's token: RAY_AUTH_MODE=token and "
                "RAY_AUTH_TOKEN=<token> (or RAY_AUTH_TOKEN_PATH=<file>; `ray get-auth-token` on the head node prints it; the default is "
                "~/.ray/auth_token)") from None
        raise


def _answers(address: str | None) -> bool:
    """Whether something listens at a Ray address (HOST:PORT or ray://HOST:PORT)."""
    import socket

    if not address or ":" not in address:
        return False
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return True
    except (OSError, ValueError):
        return False


def _refuse_a_stale_cluster_file(ray: Any) -> None:
    """`ray_address: auto` joins the cluster /tmp/ray/ray_current_cluster names; when nothing listens at that
    address the cluster has stopped and Ray would wait for it: refuse at once."""
    from ray._private.utils import get_ray_address_file, read_ray_address

    address = read_ray_address()
    if not address or ":" not in address or _answers(address):
        return
    raise ValueError(f"ray_address auto: {get_ray_address_file(None)} names the cluster at {address}, which no longer "
                     "answers (it was stopped); start one with `ray start --head`, or use ray_address: local for a "
                     "cluster of this run alone")


@dataclass
class ReplicaSpec:
    """What every replica builds: the backend and how it generates."""

    backend: str
    model: str
    backend_args: dict[str, Any]
    mode: str = "cot"
    tool_timeout: float = 5.0
    max_tool_calls: int = 4
    unsafe_sandbox_file_access: bool = False


class GenerationReplica:
    """One backend, one sandbox (TIR) and one verifier pool; `run` generates and grades a chunk. Used as a Ray
    actor (`ray.remote(GenerationReplica)`); plain Python, so it is also testable without Ray."""

    def __init__(self, spec: ReplicaSpec, verifier_workers: int = 1) -> None:
        from mathloop.backends import load_backend
        from mathloop.generate import code_executor
        from mathloop.verify import Verifier

        self.spec = spec
        self.backend = load_backend(spec.backend, spec.model, **spec.backend_args)
        self._stack = contextlib.ExitStack()
        self.verifier = self._stack.enter_context(Verifier(verifier_workers))
        self.executor = self._stack.enter_context(code_executor(spec.mode, spec.tool_timeout,
                                                                        spec.unsafe_sandbox_file_access))

    def chat_prompts(self, problems: list[Problem], shots: int) -> list[str]:
        from mathloop.prompts import build_messages

        return [self.backend.chat_prompt(build_messages(p, self.spec.mode, shots)) for p in problems]

    def run(self, problems: list[Problem], prompts: list[str], params: SamplingParams, benchmark: str) -> list[Sample]:
        from mathloop.generate import generate, grade_samples, response_samples

        completions = generate(self.backend, prompts, params, self.spec.mode, self.executor,
                               self.spec.max_tool_calls, seed_keys=[p.id for p in problems])
        samples = response_samples(problems, prompts, completions, params, self.spec.mode,  # type: ignore[arg-type]
                                   self.backend.model_id, benchmark)
        choices = {p.id: p.choices for p in problems}
        grade_samples(samples, [choices[s.problem_id] for s in samples], self.verifier)
        crash_marker = os.environ.get(CRASH_ONCE_ENV)
        if crash_marker and not Path(crash_marker).exists():
            Path(crash_marker).touch()
            os._exit(1)  # a replica lost mid-chunk (test hook)
        return samples

    def close(self) -> None:
        self._stack.close()


class ReplicaPool:
    """N replicas on a Ray cluster, started once per run and reused for every pass and benchmark."""

    def __init__(self, options: RayOptions, spec: ReplicaSpec) -> None:
        self.ray = import_ray()
        self.options, self.spec = options, spec
        self._started_ray = False
        if not self.ray.is_initialized():
            connect_ray(self.ray, options.ray_address)
            self._started_ray = True
        workers = max(1, int(options.ray_num_cpus))
        self._actor_class = self.ray.remote(num_cpus=options.ray_num_cpus, num_gpus=options.ray_num_gpus,
                                            max_restarts=0)(GenerationReplica)
        self._verifier_workers = workers
        self.actors = [self._new_actor() for _ in range(options.ray_replicas)]
        self.replaced = 0  # replicas started again after one died

    def _new_actor(self):
        return self._actor_class.remote(self.spec, self._verifier_workers)

    def close(self) -> None:
        for actor in self.actors:
            with contextlib.suppress(Exception):
                self.ray.kill(actor)
        if self._started_ray:
            self.ray.shutdown()

    def __enter__(self) -> "ReplicaPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def chat_prompts(self, problems: list[Problem], shots: int) -> list[str]:
        """The prompts as the replicas' backend renders them (one replica renders them all)."""
        return self._call_with_retry(lambda actor: actor.chat_prompts.remote(problems, shots))

    def _call_with_retry(self, call):
        for _ in range(MAX_CHUNK_TRIES):
            try:
                return self.ray.get(call(self.actors[0]))
            except self.ray.exceptions.RayActorError:
                self.actors[0] = self._new_actor()
                self.replaced += 1
        raise RuntimeError(f"Ray replicas died {MAX_CHUNK_TRIES} times in a row; see the Ray logs")

    def generate_and_grade(self, problems: list[Problem], path: Path, params: SamplingParams, *, shots: int = 0,
                           benchmark: str = "", chunk_size: int | None = None) -> int:
        """`generate_and_grade` on the replicas: each chunk's graded samples are appended to `path` by this
        process as the chunk comes back (in the order chunks finish). Returns the number of chunks re-queued."""
        ray = self.ray
        prompts = dict(zip((p.id for p in problems), self.chat_prompts(problems, shots)))
        problems = sorted(problems, key=lambda p: -len(prompts[p.id]))  # as generate.generate_and_grade does
        size = self.options.ray_chunk or chunk_size or _default_chunk(self.spec, params)
        queue = deque((start, problems[start:start + size]) for start in range(0, len(problems), size))
        tries: dict[int, int] = {}
        running: dict[Any, tuple[int, tuple[int, list[Problem]]]] = {}  # ref -> (actor slot, chunk)
        idle = list(range(len(self.actors)))
        requeued = 0
        with JsonlAppender(path) as appender:
            while queue or running:
                while queue and idle:
                    slot, chunk = idle.pop(), queue.popleft()
                    ref = self.actors[slot].run.remote(chunk[1], [prompts[p.id] for p in chunk[1]], params, benchmark)
                    running[ref] = (slot, chunk)
                [ref], _ = ray.wait(list(running), num_returns=1)
                slot, chunk = running.pop(ref)
                try:
                    samples = ray.get(ref)
                except ray.exceptions.RayActorError as e:
                    tries[chunk[0]] = tries.get(chunk[0], 0) + 1
                    if tries[chunk[0]] >= MAX_CHUNK_TRIES:
                        raise RuntimeError(f"{path}: the chunk of problems {chunk[1][0].id}.. took down "
                                           f"{MAX_CHUNK_TRIES} Ray replicas ({type(e).__name__}); see the Ray logs")
                    log.warning("a Ray replica died on the chunk of %s.. (%s); starting a new one, chunk re-queued",
                                chunk[1][0].id, type(e).__name__)
                    self.actors[slot] = self._new_actor()
                    self.replaced += 1
                    queue.appendleft(chunk)
                    requeued += 1
                else:
                    appender.write(samples)
                idle.append(slot)
        return requeued


def _default_chunk(spec: ReplicaSpec, params: SamplingParams) -> int:
    """The chunk of a run without Ray (`generate.generate_and_grade`): four backend batches of problems."""
    per_problem = 1 if params.greedy else params.n
    return max(1, spec.backend_args.get("batch_size", 32) // per_problem) * 4


@contextlib.contextmanager
def replica_pool(options: RayOptions, spec: ReplicaSpec) -> Iterator[ReplicaPool | None]:
    """A `ReplicaPool` when `options.ray_address` is set, else None (generation stays in this process)."""
    if options.ray_address is None:
        yield None
        return
    with ReplicaPool(options, spec) as pool:
        yield pool
