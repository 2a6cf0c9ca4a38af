"""`mathloop eval`: generate -> extract -> verify -> aggregate, for any backend and benchmark, resumable.

The run folder holds:
  run.json                 what produced the run: model, backend, sampling, seed, benchmarks (with each data
                           file's version and sha256), package versions
  samples/<bench>.jsonl    one `Sample` per response, appended chunk by chunk (a killed run keeps what it wrote)
  metrics.json             acc (first sample), maj@k, rm@k (with --rm), pass@k per benchmark and averaged, each
                           a fraction with its 95% interval and standard error (docs/metrics.md)
  results.md               the same as a Markdown table, in percent
  results.json             the same in lm-evaluation-harness's results layout, with the run's settings beside them
Re-running with the same folder skips the problems that already have all their samples; a different model or
different sampling parameters or different benchmark data (sha256) for the same folder is refused, so one folder
never mixes two runs; paths, batch sizes and worker counts may change.
With a reward model (`rm`), every sample gets an `rm_score` after generation and the metrics add RM@k (best-of-k
by RM score). The reward model may be added to, or changed on, a finished run: samples scored by another RM
are scored again, the generations are kept.
"""

from __future__ import annotations

import json
import logging
import time
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
from mathloop.config import non_negative_int, positive_float, positive_int, resume_keys
from mathloop.data.benchmarks import data_record, get_benchmark, load_benchmark
from mathloop.metrics import format_markdown, summarize
from mathloop.generate import MODES, generate_and_grade, pending_problems
from mathloop.records import Problem, Sample, read_records, write_jsonl
from mathloop.pipeline.generate import (generation_resources, load_stage_backend, validate_generation_settings,
                                       with_resolved_backend)
from mathloop.replicas import RayOptions
from mathloop.verify import same_answer
from mathloop.tools.errors import UNSAFE_FILE_ACCESS_SETTING
from mathloop.runs import (finish_run_record, lock_run_dir, read_json, record_backend, start_run_record, write_json,
                           write_text_atomic)

log = logging.getLogger(__name__)


@dataclass
class EvalConfig(SamplerOptions, RayOptions):
    """Everything that decides what an evaluation produces (recorded in run.json)."""

    out: str = field(metadata={"help": "run folder (created; resumed when it exists)"})
    model: str = field(default="default", metadata={"resume": True,
        "help": "'default' (embedded Qwen2.5-Coder-0.5B-Instruct), 'smollm2' (embedded SmolLM2-135M-Instruct), a "
                "local folder or .gguf file, or a Hugging Face Hub id"})
    benchmarks: list[str] = field(default_factory=lambda: ["gsm8k"], metadata={
        "help": "comma-separated benchmark names, e.g. gsm8k,math500"})
    backend: str = field(default="auto", metadata={**BACKEND_SETTING, "resume": True})
    mode: str = field(default="cot", metadata={"resume": True, "choices": list(MODES),
        "help": "cot = chain of thought; tir = tool-integrated reasoning, the model's Python runs in the sandbox"})
    n: int = field(default=1, metadata={"resume": True, "type": positive_int, "help": "samples per problem"})
    temperature: float = field(default=0.0, metadata={"resume": True, "help": "0 = greedy"})
    top_p: float = field(default=1.0, metadata={"resume": True, "help": "nucleus sampling"})
    max_new_tokens: int = field(default=SamplingParams.max_new_tokens, metadata={"resume": True,
        "type": positive_int, "help": "per response"})
    seed: int = field(default=0, metadata={"resume": True, "help": "sampling seed"})
    limit: int | None = field(default=None, metadata={"type": positive_int,
        "help": "first N problems of each benchmark (default: all)"})
    data_dir: str | None = field(default=None, metadata={
        "help": "benchmark folder in the official harness layout (default: $MATHLOOP_DATA_DIR); sets it lacks come "
                "from the data packaged with mathloop"})
    data_source: str = field(default="local", metadata={"choices": ["local", "hub"],
        "help": "local = --data-dir, else the packaged data; hub = the Hugging Face Hub (pip install 'mathloop[hub]')"})
    split: str = field(default="test", metadata={"resume": True, "help": "data split"})
    shots: int | None = field(default=None, metadata={"resume": True, "type": non_negative_int,
        "help": "few-shot examples for multiple-choice sets (default: the official setting, 5 for MC sets)"})
    max_tool_calls: int = field(default=4, metadata={"resume": True, "type": non_negative_int,
        "help": "tir: code executions per response"})
    tool_timeout: float = field(default=5.0, metadata={"type": positive_float,
        "help": "tir: seconds per execution (the official harness's limit)"})
    unsafe_sandbox_file_access: bool = field(default=False, metadata=UNSAFE_FILE_ACCESS_SETTING)
    backend_args: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "backend settings as JSON (the backend flags such as --batch-size set the same keys)"})
    rm: str | None = field(default=None, metadata={
        "help": "reward model (a `mathloop rm train` final/ folder or Hub id): scores every sample and adds RM@k "
                "(best-of-k by RM score) next to Maj@k and pass@k; may be added to a finished run"})
    rm_batch_size: int = field(default=8, metadata={"type": positive_int,
        "help": "reward model: sequences per forward pass"})
    rm_max_length: int = field(default=4096, metadata={
        "help": "reward model: tokens per prompt + response; longer ones keep their end"})
    rm_dtype: str | None = field(default=None, metadata={
        "help": "reward model dtype (default: bfloat16 where the device computes it natively, else float32)"})

    def validate(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"eval: unknown mode '{self.mode}': use cot or tir")
        if self.n < 1:
            raise ValueError(f"eval: n must be >= 1, got {self.n}")
        if self.shots is not None and self.shots < 0:
            raise ValueError(f"eval: shots must be >= 0 (or left out for the benchmark's own), got {self.shots}")
        validate_generation_settings(self, "eval")

    def sampling(self) -> SamplingParams:
        return sampling_params(self)


# Fields that must match for a run folder to be resumed; `limit` and `benchmarks` may grow between runs.
_RESUME_KEYS = resume_keys(EvalConfig)  # its fields marked metadata={"resume": True}


def run_eval(config: EvalConfig, backend: Backend | None = None, progress: bool = True,
             problems: dict[str, list[Problem]] | None = None) -> dict:
    """Run (or resume) an evaluation and return the metrics summary.

    `problems` replaces loading `config.benchmarks` from the data folder (e.g. built-in procedural problems);
    its keys name the sample files. The run folder is owned by this run while it works (`lock_run_dir`)."""
    config = with_resolved_backend(config, backend)
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
    if backend is not None:
        record_backend(out / "run.json", run_info, backend)
    started = time.time()
    with generation_resources(config) as (verifier, executor, replicas):
        for name, bench_problems in problems.items():
            path = out / "samples" / f"{name}.jsonl"
            pending = pending_problems(bench_problems, path, config.n)
            if not pending:
                log.info("%s: all %d problems already done", name, len(bench_problems))
                continue
            shots = get_benchmark(name).shots if config.shots is None else config.shots
            log.info("eval %s: %d problems x %d samples%s", name, len(pending), config.n,
                     f" ({len(bench_problems) - len(pending)} already done)" if len(pending) < len(bench_problems)
                     else "")
            if config.ray_address:
                replicas().generate_and_grade(pending, path, config.sampling(), shots=shots, benchmark=name)
                continue
            if backend is None:
                backend = load_stage_backend(config.backend, config.model, config.backend_args)
                record_backend(out / "run.json", run_info, backend)
            generate_and_grade(pending, path, backend, config.sampling(), config.mode, verifier=verifier, shots=shots,
                               executor=executor, max_tool_calls=config.max_tool_calls, progress=progress, desc=name,
                               benchmark=name)
    if config.rm:
        del backend  # the policy's memory goes back before the reward model loads
        score_with_rm(out, config, problems)
    summary = write_metrics(out, list(problems), problems)
    finish_run_record(out / "run.json", run_info, started)
    return summary


def score_with_rm(out: Path, config: EvalConfig, problems: dict[str, list[Problem]]) -> int:
    """Give every sample of the run an `rm_score` from `config.rm`; samples already scored by that same reward
    model are left alone. Returns the number of samples scored now."""
    from mathloop.reward.model import load_reward_model
    from mathloop.reward.score import score_samples, scoring_progress

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
        with scoring_progress(path, config.rm) as progress:
            scores = score_samples(reward_model, tokenizer, stale, batch_size=config.rm_batch_size,
                                   max_length=config.rm_max_length, questions=questions, progress_file=progress)
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
    write_json(out / "results.json", lm_eval_results(summary, run))
    return summary


def lm_eval_results(summary: dict, run: dict) -> dict:
    """`summary` (metrics.json) in the layout of lm-evaluation-harness's results file, so its readers (and a person
    used to it) find each task's metrics as `"<metric>,<filter>"` fractions with `"<metric>_stderr,<filter>"`
    beside them, and the run's settings under `config` and `configs`. The filter is "none": the answer extraction is
    mathloop's verifier. The 95% intervals, which the harness's layout has no key for, are under `mathloop_ci95`.

    >>> summary = {"benchmarks": {"gsm8k": {"n_problems": 2, "acc": {"mean": 0.5, "ci95": [0.1, 0.9], "stderr": 0.5}}}}
    >>> run = {"config": {"model": "m", "backend": "hf", "n": 1, "seed": 0, "split": "test"}, "sampling": {}}
    >>> results = lm_eval_results(summary, run)
    >>> results["results"]["gsm8k"], results["n-samples"]["gsm8k"]["effective"]
    ({'alias': 'gsm8k', 'acc,none': 0.5, 'acc_stderr,none': 0.5}, 2)
    """
    from mathloop.metrics import METRICS_SCHEMA

    config, sampling = run.get("config", {}), run.get("sampling", {})
    results, intervals, configs, versions, shots, better, counts = {}, {}, {}, {}, {}, {}, {}
    for name, entry in summary["benchmarks"].items():
        metrics = {key: value for key, value in entry.items() if isinstance(value, dict) and "mean" in value}
        results[name] = {"alias": name}
        for key, value in metrics.items():
            results[name][f"{key},none"] = value["mean"]
            results[name][f"{key}_stderr,none"] = value.get("stderr") if value.get("stderr") is not None else "N/A"
        intervals[name] = {f"{key},none": value.get("ci95") for key, value in metrics.items()}
        data = run.get("data", {}).get(f"{name}:{config.get('split', 'test')}", {})
        try:
            official_shots = get_benchmark(name).shots
        except ValueError:  # problems that are not a registered benchmark (the loop's procedural ones)
            official_shots = 0
        shots[name] = official_shots if config.get("shots") is None else config["shots"]
        versions[name] = data.get("benchmark_version")
        better[name] = dict.fromkeys(metrics, True)
        counts[name] = {"original": data.get("rows", entry["n_problems"]), "effective": entry["n_problems"]}
        configs[name] = {"task": name, "dataset_path": data.get("source"), "test_split": config.get("split"),
                         "num_fewshot": shots[name], "output_type": "generate_until", "repeats": config.get("n"),
                         "generation_kwargs": sampling, "metadata": {"version": versions[name],
                                                                     "data_version": data.get("version"),
                                                                     "sha256": data.get("sha256")},
                         "metric_list": [{"metric": key, "aggregation": "mean", "higher_is_better": True}
                                         for key in metrics]}
    return {"results": results, "mathloop_ci95": intervals, "configs": configs, "versions": versions,
            "n-shot": shots, "higher_is_better": better, "n-samples": counts,
            "config": {"model": f"mathloop-{config.get('backend')}", "model_args": f"pretrained={config.get('model')}",
                       "limit": config.get("limit"), "gen_kwargs": sampling, "random_seed": config.get("seed"),
                       "mode": config.get("mode"), "backend_info": run.get("backend_info")},
            "mathloop": {"schema": METRICS_SCHEMA, "metrics_file": "metrics.json",
                         "version": run.get("versions", {}).get("mathloop"), "hardware": run.get("hardware")},
            "date": time.time()}


def problem_outcome(samples: list[Sample], benchmark: str) -> dict:
    """One problem's row for `metrics.summarize`."""
    row: dict[str, Any] = {"benchmark": benchmark, "verdicts": [s.verdict or "no_answer" for s in samples],
                           "preds": [s.pred for s in samples]}
    if all(s.rm_score is not None for s in samples):
        row["scores"] = [s.rm_score for s in samples]
    if all(s.confidence is not None for s in samples):
        row["confidences"] = [s.confidence for s in samples]
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
    `data_record` (version and sha256): where the data was read from does not matter, its checksum does. A resumed
    run may add benchmarks and problems and change the reward model."""
    record, resumed = start_run_record(out / "run.json", config, _RESUME_KEYS, data, what=f"{out} holds a run",
                                       fix="use a new --out folder", kind="eval", sampling=config.sampling().to_dict(),
                                       model_name=config.model)
    if resumed:
        old = record["config"]
        old.update(data_dir=config.data_dir, data_source=config.data_source, limit=config.limit, rm=config.rm,
                   benchmarks=sorted(set(old.get("benchmarks", [])) | set(config.benchmarks)))
        record["resumed"] = record.get("resumed", 0) + 1
        write_json(out / "run.json", record)
    return record
