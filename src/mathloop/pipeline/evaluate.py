"""`mathloop eval`: generate -> extract -> verify -> aggregate, for any backend and benchmark, resumable.

The run folder holds:
  run.json                 what produced the run: model, backend, sampling, seed, benchmarks (with each data
                           file's version and sha256), package versions
  samples/<bench>.jsonl    one `Sample` per response, appended chunk by chunk (a killed run keeps what it wrote)
  metrics.json             acc (first sample), maj@k, rm@k (with --rm), pass@k per benchmark and averaged
  results.md               the same as a Markdown table
Re-running with the same folder skips the problems that already have all their samples; a different model or
different sampling parameters or different benchmark data (sha256) for the same folder is refused, so one folder
never mixes two runs; paths, batch sizes and worker counts may change.
With a reward model (`rm`), every sample gets an `rm_score` after generation and the metrics add RM@k (best-of-k
by RM score). The reward model may be added to, or changed on, a finished run: samples scored by another RM
are scored again, the generations are kept.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mathloop.config import changed_settings
from mathloop.backends.base import Backend, Completion, SamplingParams
from mathloop.data.benchmarks import get_benchmark, load_benchmark
from mathloop.data.sources import changed_data, data_record
from mathloop.hardware import hardware_info
from mathloop.metrics import format_markdown, summarize
from mathloop.prompts import build_messages
from mathloop.records import JsonlAppender, Problem, Sample, drop_torn_last_line, read_records, write_jsonl
from mathloop.verify import Verifier, same_answer
from mathloop.runs import lock_run_dir, read_json, write_json, write_text_atomic

log = logging.getLogger(__name__)


@dataclass
class EvalConfig:
    """Everything that decides what an evaluation produces (recorded in run.json)."""

    model: str
    benchmarks: list[str]
    out: str
    backend: str = "hf"
    mode: str = "cot"
    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 2048
    seed: int = 0
    limit: int | None = None
    data_dir: str | None = None
    data_source: str = "local"  # "local": data_dir, else the packaged data; "hub": the Hugging Face Hub
    split: str = "test"
    shots: int | None = None  # None: the benchmark's official setting
    max_tool_calls: int = 4  # TIR: code executions per response
    tool_timeout: float = 5.0  # TIR: seconds per code execution (the official harness's limit)
    backend_args: dict[str, Any] = field(default_factory=dict)
    rm: str | None = None  # reward model (folder or Hub id) that scores every sample, for RM@k
    rm_batch_size: int = 8
    rm_max_length: int = 4096
    rm_dtype: str | None = None  # default: bfloat16 where the device computes it natively, else float32

    def validate(self) -> None:
        if self.mode not in ("cot", "tir"):
            raise ValueError(f"eval: unknown mode '{self.mode}': use cot or tir")
        if self.n < 1:
            raise ValueError(f"eval: n must be >= 1, got {self.n}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"eval: limit must be >= 1 (or left out for all problems), got {self.limit}")
        if not self.tool_timeout > 0:
            raise ValueError(f"eval: tool_timeout must be > 0 seconds, got {self.tool_timeout}")

    def sampling(self) -> SamplingParams:
        return SamplingParams(n=self.n, temperature=self.temperature, top_p=self.top_p,
                              max_new_tokens=self.max_new_tokens, seed=self.seed)


# Fields that must match for a run folder to be resumed; `limit` and `benchmarks` may grow between runs.
_RESUME_KEYS = ("model", "backend", "mode", "n", "temperature", "top_p", "max_new_tokens", "seed", "split", "shots",
                "max_tool_calls")


def run_eval(config: EvalConfig, backend: Backend | None = None, progress: bool = True,
             problems: dict[str, list[Problem]] | None = None) -> dict:
    """Run (or resume) an evaluation and return the metrics summary.

    `problems` replaces loading `config.benchmarks` from the data folder (e.g. built-in procedural problems);
    its keys name the sample files. The run folder is owned by this run while it works (`lock_run_dir`)."""
    config.validate()
    data = {}
    if problems is None:  # loaded before the run folder exists, so a missing set leaves nothing behind
        problems = {name: load_benchmark(name, config.data_dir, config.split, config.limit, config.data_source)
                    for name in config.benchmarks}
        data = {f"{name}:{config.split}": data_record(name, config.split, config.data_dir, config.data_source)
                for name in config.benchmarks}
    with lock_run_dir(config.out):
        return _run_eval(config, backend, progress, problems, data)


def _run_eval(config: EvalConfig, backend: Backend | None, progress: bool, problems: dict[str, list[Problem]],
              data: dict) -> dict:
    out = Path(config.out)
    run_info = _start_run_record(out, config, data)
    started = time.time()
    with Verifier() as verifier, _executor(config) as executor:
        for name, bench_problems in problems.items():
            path = out / "samples" / f"{name}.jsonl"
            pending = _pending(bench_problems, path, config.n)
            if not pending:
                log.info("%s: all %d problems already done", name, len(bench_problems))
                continue
            if backend is None:
                backend = _load_backend(config)
            _generate_and_grade(name, pending, path, config, backend, verifier, executor, progress)
    if config.rm:
        del backend  # the policy's memory goes back before the reward model loads
        score_with_rm(out, config, problems)
    summary = write_metrics(out, list(problems), problems)
    run_info.update(finished=time.strftime("%Y-%m-%dT%H:%M:%S"),
                    wall_seconds=round(run_info.get("wall_seconds", 0) + time.time() - started, 1))
    write_json(out / "run.json", run_info)
    return summary


def _executor(config: EvalConfig):
    """The code sandbox for TIR runs; a do-nothing context for CoT."""
    if config.mode != "tir":
        return contextlib.nullcontext()
    from mathloop.tools.sandbox import Sandbox

    return Sandbox(timeout=config.tool_timeout)


def _load_backend(config: EvalConfig) -> Backend:
    from mathloop.backends import load_backend

    return load_backend(config.backend, config.model, **config.backend_args)


def _pending(problems: list[Problem], path: Path, n: int) -> list[Problem]:
    """Problems without all their samples; samples of half-done problems (a killed run) are dropped so those
    problems are regenerated whole."""
    if not path.exists():
        return problems
    drop_torn_last_line(path)
    samples = read_records(Sample, path)
    counts: dict[str, int] = {}
    for sample in samples:
        counts[sample.problem_id] = counts.get(sample.problem_id, 0) + 1
    pending = [p for p in problems if counts.get(p.id, 0) < n]
    half_done = {p.id for p in pending if counts.get(p.id, 0)}
    if half_done:
        write_jsonl(path, [s for s in samples if s.problem_id not in half_done])
    return pending


def _generate_and_grade(name: str, problems: list[Problem], path: Path, config: EvalConfig, backend: Backend,
                        verifier: Verifier, executor, progress: bool) -> None:
    from tqdm import tqdm

    shots = get_benchmark(name).shots if config.shots is None else config.shots
    params = config.sampling()
    prompts = {p.id: backend.chat_prompt(build_messages(p, config.mode, shots)) for p in problems}
    problems = sorted(problems, key=lambda p: -len(prompts[p.id]))  # similar lengths share a batch
    chunk = max(1, getattr(backend, "batch_size", 32) // (1 if params.greedy else params.n)) * 4
    bar = tqdm(total=len(problems), desc=name, unit="problem", disable=not progress)
    with JsonlAppender(path) as appender:
        for start in range(0, len(problems), chunk):
            batch = problems[start:start + chunk]
            if config.mode == "tir":
                completions = _tir_completions(backend, [prompts[p.id] for p in batch], params, executor, config)
                bar.update(len(batch))
            else:
                completions = _generate(backend, [prompts[p.id] for p in batch], params, bar)
            samples = [
                Sample(problem_id=p.id, benchmark=p.benchmark or name, prompt=prompts[p.id], response=c.text, mode=config.mode,
                       sample_index=j, gold=p.gold, prompt_tokens=c.prompt_tokens,
                       completion_tokens=c.completion_tokens, finish_reason=c.finish_reason,
                       model=backend.model_id, sampling=params.to_dict(),
                       tool_output_spans=c.metadata.get("tool_output_spans", []),
                       metadata={"answer_type": p.metadata.get("answer_type", "math"), "question": p.question,
                                 **({"tool_calls": c.metadata["tool_calls"]} if "tool_calls" in c.metadata else {})})
                for p, outs in zip(batch, completions) for j, c in enumerate(outs)
            ]
            choices = {p.id: p.choices for p in batch}
            graded = verifier.grade_batch([(s.gold, s.response) for s in samples],
                                          answer_type=[s.metadata["answer_type"] for s in samples],
                                          choices=[choices[s.problem_id] for s in samples],
                                          questions=[s.metadata.get("question") for s in samples])
            for sample, (pred, verdict) in zip(samples, graded):
                sample.pred, sample.verdict = pred, verdict
            appender.write(samples)
    bar.close()


def _generate(backend: Backend, prompts: list[str], params: SamplingParams, bar) -> list:
    """Call the backend, moving the progress bar as completions finish when the backend reports them."""
    if "on_progress" not in inspect.signature(backend.generate).parameters:
        completions = backend.generate(prompts, params)
        bar.update(len(prompts))
        return completions
    per_problem = 1 if params.greedy else params.n
    done = [0]

    def on_progress(k: int) -> None:
        before = done[0] // per_problem
        done[0] += k
        bar.update(done[0] // per_problem - before)

    completions = backend.generate(prompts, params, on_progress=on_progress)
    bar.update(len(prompts) - done[0] // per_problem)
    return completions


def _tir_completions(backend: Backend, prompts: list[str], params: SamplingParams, executor,
                     config: EvalConfig) -> list[list[Completion]]:
    """TIR rollouts for a chunk of prompts, as Completions carrying their executor-output spans."""
    from mathloop.tools.tir import tir_generate

    trajectories = tir_generate(backend, prompts, params, executor, max_tool_calls=config.max_tool_calls)
    return [[Completion(text=t.response, prompt_tokens=t.prompt_tokens, completion_tokens=t.completion_tokens,
                        finish_reason=t.finish_reason or "stop",
                        metadata={"tool_output_spans": t.tool_output_spans, "tool_calls": t.tool_calls})
             for t in group] for group in trajectories]


def score_with_rm(out: Path, config: EvalConfig, problems: dict[str, list[Problem]]) -> int:
    """Give every sample of the run an `rm_score` from `config.rm`; samples already scored by that same reward
    model are left alone. Returns the number of samples scored now."""
    from mathloop.reward.model import load_reward_model
    from mathloop.reward.score import score_samples

    todo: dict[Path, list[Sample]] = {}
    for name in problems:
        path = out / "samples" / f"{name}.jsonl"
        if path.exists():
            samples = read_records(Sample, path)
            if any(s.rm_score is None or s.metadata.get("rm") != config.rm for s in samples):
                todo[path] = samples
    if not todo:
        return 0
    reward_model, tokenizer = load_reward_model(config.rm, dtype=config.rm_dtype)
    questions = {p.id: p.question for bench in problems.values() for p in bench}
    scored = 0
    for path, samples in todo.items():
        stale = [s for s in samples if s.rm_score is None or s.metadata.get("rm") != config.rm]
        log.info("%s: scoring %d samples with %s", path.name, len(stale), config.rm)
        scores = score_samples(reward_model, tokenizer, stale, batch_size=config.rm_batch_size,
                               max_length=config.rm_max_length, questions=questions)
        for sample, score in zip(stale, scores):
            sample.rm_score = score
            sample.metadata["rm"] = config.rm
        write_jsonl(path, samples)
        scored += len(stale)
    return scored


def write_metrics(out: Path, benchmarks: list[str], problems: dict[str, list[Problem]]) -> dict:
    """Aggregate the samples on disk into metrics.json and results.md."""
    per_problem = []
    for name in benchmarks:
        path = out / "samples" / f"{name}.jsonl"
        if not path.exists():
            continue
        by_problem: dict[str, list[Sample]] = {}
        for s in read_records(Sample, path):
            by_problem.setdefault(s.problem_id, []).append(s)
        for p in problems[name]:
            samples = sorted(by_problem.get(p.id, []), key=lambda s: s.sample_index)
            if not samples:
                continue
            per_problem.append(problem_outcome(samples, name))
    ks = sorted({len(row["verdicts"]) for row in per_problem}) or [1]
    summary = summarize(per_problem, ks=_ks_up_to(max(ks)), same=same_answer)
    write_json(out / "metrics.json", summary)
    run = read_json(out / "run.json") if (out / "run.json").exists() else {}
    header = f"# mathloop eval\n\nmodel: `{run.get('model_name', run.get('config', {}).get('model', '?'))}`; " \
             f"sampling: `{json.dumps(run.get('sampling', {}))}`\n\n"
    write_text_atomic(out / "results.md", header + format_markdown(summary) + "\n")
    return summary


def problem_outcome(samples: list[Sample], benchmark: str) -> dict:
    """One problem's row for `metrics.summarize`."""
    row: dict[str, Any] = {"benchmark": benchmark, "verdicts": [s.verdict or "no_answer" for s in samples],
                           "preds": [s.pred for s in samples]}
    if all(s.rm_score is not None for s in samples):
        row["scores"] = [s.rm_score for s in samples]
    return row


def _ks_up_to(n: int) -> list[int]:
    """
    >>> _ks_up_to(8)
    [1, 2, 4, 8]
    >>> _ks_up_to(6)
    [1, 2, 4, 6]
    """
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    return ks + [n]


def _start_run_record(out: Path, config: EvalConfig, data: dict[str, dict] | None = None) -> dict:
    """Write run.json (or check it matches when resuming) and return it. `data` holds each benchmark's
    `data_record` (version and sha256): where the data was read from does not matter, its checksum does."""
    path = out / "run.json"
    current = asdict(config)
    data = data or {}
    if path.exists():
        previous = read_json(path)
        old = previous.get("config", {})
        detail = changed_settings(old, current, _RESUME_KEYS) or changed_data(previous.get("data", {}), data)
        if detail:
            raise ValueError(f"{out} holds a run with other settings ({detail}); use a new --out folder")
        previous["data"] = {**previous.get("data", {}), **data}
        previous["config"]["data_dir"] = config.data_dir
        previous["config"]["data_source"] = config.data_source
        previous["config"]["benchmarks"] = sorted(set(old.get("benchmarks", [])) | set(config.benchmarks))
        previous["config"]["limit"] = config.limit
        previous["config"]["rm"] = config.rm
        previous["resumed"] = previous.get("resumed", 0) + 1
        write_json(path, previous)
        return previous
    info = {"config": current, "sampling": config.sampling().to_dict(), "model_name": config.model, "data": data,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "versions": package_versions(),
            "hardware": hardware_info()}
    write_json(path, info)
    return info


def package_versions() -> dict[str, str]:
    import importlib.metadata

    versions = {"python": platform.python_version()}
    for name in ("mathloop", "torch", "transformers", "math-verify", "sympy", "vllm"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions
