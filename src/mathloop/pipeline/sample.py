"""`mathloop sample`: many graded responses per training problem (method step 1), resumable and shardable.

Sampling runs in passes. Each entry of `temperatures` is one pass of `n` responses per problem; an optional last
pass (`hard_n`) gives more responses to the problems the model rarely solves (at most `hard_max_correct` correct
after the first passes), because those are the problems whose few correct answers the SFT data most needs.

The run folder holds:
  run.json                          settings, problem source, package versions
  samples/pass-<i>[.shard-<s>-of-<k>].jsonl
                                    graded `Sample`s of pass i, appended chunk by chunk (a kill loses at most the
                                    chunk in flight; half-done problems are regenerated whole on resume)
`read_samples(folder)` gives every pass and shard as one list, `sample_index` numbered per problem across passes.
With `num_shards=k`, process `shard=s` takes the problems whose id hashes to s (stable across machines), so k
processes or machines fill one folder without coordination; the hard pass of a shard only looks at its own problems.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mathloop.backends.base import (
    Backend,
    SamplerOptions,
    SamplingParams,
    sampling_params,
)
from mathloop.backends import BACKEND_SETTING
from mathloop.config import non_negative_int, positive_float, positive_int, resume_keys, temperature_list
from mathloop.data.benchmarks import load_problem_source, problem_source_data
from mathloop.generate import generate_and_grade, pending_problems
from mathloop.pipeline.generate import (generation_resources, load_stage_backend, validate_generation_settings,
                                       with_resolved_backend)
from mathloop.records import CORRECT, Problem, Sample, read_records
from mathloop.replicas import RayOptions
from mathloop.tools.errors import UNSAFE_FILE_ACCESS_SETTING
from mathloop.runs import (finish_run_record, lock_run_dir, record_backend, refuse_overwriting_inputs, start_run_record,
                           write_json)

log = logging.getLogger(__name__)


@dataclass
class SampleConfig(SamplerOptions, RayOptions):
    """Every setting of a sampling run (recorded in run.json)."""

    problems: str = field(metadata={"resume": True,
        "help": "'<benchmark>:<split>' from the data folder (e.g. gsm8k:train), 'synthetic:<count>:<seed>' (built-in "
                "procedural problems) or a Problem JSONL file"})
    out: str = field(metadata={"help": "sampling folder (created; resumed when it exists)"})
    model: str = field(default="default", metadata={"resume": True,
        "help": "embedded name (default, smollm2), folder or Hub id"})
    n: int = field(default=8, metadata={"resume": True, "type": positive_int,
        "help": "responses per problem per temperature"})
    temperatures: list[float] = field(default_factory=lambda: [0.7, 1.0], metadata={"resume": True,
        "type": temperature_list, "help": "comma-separated, one pass each"})
    top_p: float = field(default=0.95, metadata={"resume": True, "help": "nucleus sampling"})
    max_new_tokens: int = field(default=SamplingParams.max_new_tokens, metadata={"resume": True,
        "type": positive_int, "help": "per response"})
    mode: str = field(default="cot", metadata={"resume": True, "choices": ["cot", "tir"],
        "help": "cot = chain of thought; tir = the model's Python runs in the sandbox"})
    hard_n: int = field(default=0, metadata={"resume": True,
        "help": "extra responses for problems with at most --hard-max-correct correct ones"})
    hard_max_correct: int = field(default=0, metadata={"resume": True,
        "help": "a problem is hard with at most this many correct responses"})
    hard_temperature: float = field(default=1.0, metadata={"resume": True, "help": "temperature of the hard pass"})
    limit: int | None = field(default=None, metadata={"type": positive_int, "help": "first N problems (default: all)"})
    data_dir: str | None = field(default=None, metadata={"help": "benchmark folder (default: $MATHLOOP_DATA_DIR)"})
    seed: int = field(default=0, metadata={"resume": True, "help": "sampling seed"})
    shard: int = field(default=0, metadata={"help": "this process's shard, 0-based"})
    num_shards: int = field(default=1, metadata={"resume": True, "type": positive_int,
        "help": "processes sharing the folder"})
    backend: str = field(default="auto", metadata=BACKEND_SETTING)
    backend_args: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "backend settings as JSON (the backend flags such as --batch-size set the same keys)"})
    max_tool_calls: int = field(default=4, metadata={"type": non_negative_int,
        "help": "tir: code executions per response"})
    tool_timeout: float = field(default=5.0, metadata={"type": positive_float, "help": "tir: seconds per execution"})
    unsafe_sandbox_file_access: bool = field(default=False, metadata=UNSAFE_FILE_ACCESS_SETTING)

    def validate(self) -> None:
        if self.n < 1 or not self.temperatures:
            raise ValueError("sample: n must be >= 1 and temperatures must name at least one temperature")
        if any(t < 0 for t in self.temperatures):
            raise ValueError(f"sample: temperatures must be >= 0, got {self.temperatures}")
        if self.num_shards < 1:
            raise ValueError(f"sample: num_shards must be >= 1, got {self.num_shards}")
        if not 0 <= self.shard < self.num_shards:
            raise ValueError(f"sample: shard must be in 0..{self.num_shards - 1}, got {self.shard}")
        if self.hard_n < 0:
            raise ValueError(f"sample: hard_n must be >= 0, got {self.hard_n}")
        validate_generation_settings(self, "sample")


# Settings that must match for a folder to be resumed (the problem list may grow with `limit`).
_RESUME_KEYS = resume_keys(SampleConfig)  # its fields marked metadata={"resume": True}


def shard_of(problem_id: str, num_shards: int) -> int:
    """Stable shard number of a problem id (the same on every machine and Python run).

    >>> shard_of("gsm8k/17", 1), shard_of("gsm8k/17", 4) == shard_of("gsm8k/17", 4)
    (0, True)
    """
    digest = hashlib.sha1(problem_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % num_shards


def run_sample(config: SampleConfig, backend: Backend | None = None, progress: bool = True) -> dict:
    """Run (or resume) sampling; returns counts per pass and overall. The folder (this shard of it) is owned by
    this run while it works (`lock_run_dir`)."""
    config = with_resolved_backend(config, backend)
    config.validate()
    problems = [p for p in load_problem_source(config.problems, config.data_dir, config.limit)
                if shard_of(p.id, config.num_shards) == config.shard]  # before the folder: a missing set leaves none
    suffix = "" if config.num_shards == 1 else f".shard-{config.shard}-of-{config.num_shards}"
    with lock_run_dir(config.out, name=f".mathloop{suffix}.lock"):
        return _run_sample(config, problems, backend, progress)


def _run_sample(config: SampleConfig, problems: list[Problem], backend: Backend | None, progress: bool) -> dict:
    out = Path(config.out)
    source = config.problems if Path(config.problems).is_file() else None
    refuse_overwriting_inputs({"--out": f"{out / 'samples'}/", "--out (run.json)": out / "run.json"}, {"--problems": source})
    record = _check_run_record(out, config)
    started = time.time()
    passes = [(t, config.n) for t in config.temperatures]
    if config.hard_n:
        passes.append((config.hard_temperature, config.hard_n))
    suffix = "" if config.num_shards == 1 else f".shard-{config.shard}-of-{config.num_shards}"
    recorded = False
    with generation_resources(config) as (verifier, executor, replicas):
        for i, (temperature, n) in enumerate(passes):
            pass_problems = problems
            if config.hard_n and i == len(passes) - 1:
                pass_problems = _hard_problems(problems, out, suffix, config.hard_max_correct, i)
            path = out / "samples" / f"pass-{i}{suffix}.jsonl"
            pending = pending_problems(pass_problems, path, n)
            if not pending:
                continue
            params = sampling_params(config, n=n, temperature=temperature, seed=config.seed + i)
            log.info("pass %d: %d problems x %d responses at temperature %g", i, len(pending), n, temperature)
            if config.ray_address:
                replicas().generate_and_grade(pending, path, params)
                continue
            if backend is None:
                backend = load_stage_backend(config.backend, config.model, config.backend_args)
            if not recorded:
                record_backend(out / "run.json", record, backend)
                recorded = True
            generate_and_grade(pending, path, backend, params, config.mode, verifier=verifier, executor=executor,
                               max_tool_calls=config.max_tool_calls, progress=progress, desc=f"pass {i}")
    samples = read_samples(out)
    ids = {p.id for p in problems}
    mine = [s for s in samples if s.problem_id in ids]
    right: dict[str, list[bool]] = {}
    for s in mine:
        right.setdefault(s.problem_id, []).append(s.verdict == CORRECT)
    histogram = Counter(sum(verdicts) for verdicts in right.values())
    summary = {"problems": len(problems), "samples": len(mine),
               "correct": sum(map(sum, right.values())),
               "solved_problems": sum(any(verdicts) for verdicts in right.values()),
               # how sharp the model is on these problems: solved every time, and problems per number right
               "all_correct_problems": sum(all(verdicts) for verdicts in right.values()),
               "correct_per_problem": {str(k): histogram[k] for k in sorted(histogram)},
               "wall_seconds": round(time.time() - started, 1)}
    write_json(out / f"summary{suffix}.json", summary)
    if config.num_shards == 1:  # shards share run.json: no one shard knows that the others are done
        finish_run_record(out / "run.json", record, started)
    return summary


def _hard_problems(problems: list[Problem], out: Path, suffix: str, max_correct: int, hard_pass: int) -> list[Problem]:
    correct: dict[str, int] = {p.id: 0 for p in problems}
    for path in sorted((out / "samples").glob(f"pass-*{suffix}.jsonl")):
        if path.name.startswith(f"pass-{hard_pass}"):
            continue
        for s in read_records(Sample, path):
            if s.problem_id in correct and s.verdict == CORRECT:
                correct[s.problem_id] += 1
    return [p for p in problems if correct[p.id] <= max_correct]


def read_samples(folder: str | Path) -> list[Sample]:
    """Every sample of a sampling folder (all passes and shards), with `sample_index` numbered per problem."""
    samples: list[Sample] = []
    for path in sorted(Path(folder, "samples").glob("pass-*.jsonl")):
        pass_index = int(path.name.split(".")[0].split("-")[1])
        for s in read_records(Sample, path):
            s.metadata["pass"] = pass_index
            samples.append(s)
    samples.sort(key=lambda s: (s.problem_id, s.metadata["pass"], s.sample_index))
    counts: dict[str, int] = {}
    for s in samples:
        s.sample_index = counts.get(s.problem_id, 0)
        counts[s.problem_id] = s.sample_index + 1
    return samples


def _check_run_record(out: Path, config: SampleConfig) -> dict:
    return start_run_record(out / "run.json", config, _RESUME_KEYS, problem_source_data(config.problems, config.data_dir),
                            what=f"{out} holds samples made", fix="use a new --out folder",
                            kind="sample")[0]
