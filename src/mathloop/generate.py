"""The one generate -> (TIR) -> grade -> append stage, shared by eval, sample, GRPO rollouts and synthesis.

  generate             prompts -> `Completion`s, by the backend alone (cot) or with the sandbox in the loop (tir)
  response_samples     completions -> `Sample`s: the one conversion from a generated response to the record
  grade_samples        extracted answer and verdict against each sample's gold
  generate_and_grade   all three for a list of problems, each problem appended to a JSONL file as soon as its
                       responses are finished (resumable with `pending_problems`)

Helpers take a `SamplingParams` and a mode, never a stage's config, so every stage samples the same way.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, ContextManager

from mathloop.backends.base import Backend, Completion, SamplingParams, call_generate
from mathloop.records import JsonlAppender, Mode, Problem, Sample, drop_torn_last_line, read_records, write_jsonl

MODES = ("cot", "tir")


def code_executor(mode: str, timeout: float = 5.0, unsafe_file_access: bool = False) -> ContextManager[Any]:
    """The code sandbox for TIR (`timeout` seconds per execution); a do-nothing context for CoT. Raises
    `SandboxUnavailable` where the host cannot confine the code's file access, unless `unsafe_file_access`
    (--unsafe-sandbox-file-access, YAML unsafe_sandbox_file_access) accepts running it unconfined."""
    if mode not in MODES:
        raise ValueError(f"unknown mode '{mode}': use cot or tir")
    if mode != "tir":
        return contextlib.nullcontext()
    from mathloop.tools.sandbox import Sandbox

    return Sandbox(timeout=timeout, unsafe_file_access=unsafe_file_access)


OnCompletion = Callable[[int, int, Completion], None]  # (prompt index, sample index, the finished completion)


class TokenProgress:
    """A bar that counts generated tokens, so it moves within seconds of a stage's start even while every sequence
    runs in parallel (a bar of finished sequences sits at 0 until the first one ends). Its total is the tokens
    expected: `max_new_tokens` for every sequence until one finishes, then the tokens of the finished ones plus
    their mean length for each one left, so the ETA follows the lengths seen. The postfix counts finished
    sequences. Tokens come from the backend as they are generated (`Backend.reports_tokens`), else with each finished
    completion."""

    def __init__(self, bar: Any, sequences: int, max_new_tokens: int, streamed: bool) -> None:
        self.bar, self.sequences, self.streamed = bar, sequences, streamed
        self.finished = self.finished_tokens = 0
        bar.total = sequences * max_new_tokens
        self._postfix()

    def tokens(self, count: int) -> None:
        self.bar.update(count)

    def sequence_done(self, completion: Completion) -> None:
        if not self.streamed:
            self.bar.update(completion.completion_tokens)
        self.finished += 1
        self.finished_tokens += completion.completion_tokens
        left = self.sequences - self.finished
        expected = self.finished_tokens + round(left * self.finished_tokens / self.finished)
        self.bar.total = max(expected, self.bar.n + (1 if left else 0))
        self._postfix()

    def _postfix(self) -> None:
        self.bar.set_postfix_str(f"{self.finished}/{self.sequences} seq", refresh=True)


def generate(backend: Backend, prompts: list[str], params: SamplingParams, mode: str = "cot", executor: Any = None,
             max_tool_calls: int = 4, on_progress: OnCompletion | None = None,
             session_prefix: str = "tir", seed_keys: list[str] | None = None,
             on_tokens: Callable[[int], None] | None = None) -> list[list[Completion]]:
    """`params.n` completions per prompt, in prompt order. tir: TIR trajectories with `executor` running the code
    (`code_executor`); cot: the backend alone. `on_progress(i, j, completion)` is called once per completion: as
    it finishes where the backend reports that (`Backend.reports_each_completion`), else when the call returns.
    `seed_keys` (one per prompt: its problem id) seed each sample on backends that take them (`Backend.takes_seed_keys`);
    `on_tokens(k)` counts generated tokens where the backend reports them."""
    if mode == "tir":
        from mathloop.tools.tir import tir_generate

        completions = tir_generate(backend, prompts, params, executor, max_tool_calls, session_prefix,
                                   seed_keys=seed_keys, on_tokens=on_tokens)
    elif on_progress and backend.reports_each_completion:
        return call_generate(backend, prompts, params, on_progress=on_progress, seed_keys=seed_keys,
                             on_tokens=on_tokens)
    else:
        completions = call_generate(backend, prompts, params, seed_keys=seed_keys, on_tokens=on_tokens)
    if on_progress:
        for i, outs in enumerate(completions):
            for j, completion in enumerate(outs):
                on_progress(i, j, completion)
    return completions


def response_logprobs(completion: Completion) -> list[float] | None:
    """The log-probabilities of a completion's counted tokens (`completion_tokens`): an end token an engine reports
    beyond them (OpenVINO's, for GRPO's token ids) is left out of the sample's confidence."""
    logprobs = completion.metadata.get("token_logprobs")
    if logprobs and len(logprobs) == completion.completion_tokens + 1:
        return logprobs[:-1]
    return logprobs


def response_samples(problems: list[Problem], prompts: list[str], completions: list[list[Completion]],
                     params: SamplingParams, mode: Mode, model: str, benchmark: str = "") -> list[Sample]:
    """One `Sample` per completion (problem by problem, `sample_index` in order), carrying the problem's question,
    gold, answer type and benchmark version, and the sampling it was drawn with. `benchmark` names problems that
    have none."""
    from mathloop.metrics import confidence_summary

    sampling = params.to_dict()
    return [Sample(problem_id=p.id, benchmark=p.benchmark or benchmark, prompt=prompt, response=c.text, mode=mode,
                   sample_index=j, gold=p.gold, prompt_tokens=c.prompt_tokens, completion_tokens=c.completion_tokens,
                   finish_reason=c.finish_reason, model=model, sampling=sampling,
                   confidence=confidence_summary(response_logprobs(c)),
                   tool_output_spans=c.tool_output_spans, question=p.question,
                   answer_type=p.metadata.get("answer_type", "math"),
                   benchmark_version=p.metadata.get("benchmark_version"),
                   metadata={"tool_calls": c.tool_calls} if mode == "tir" else {})
            for p, prompt, outs in zip(problems, prompts, completions) for j, c in enumerate(outs)]


def grade_samples(samples: list[Sample], choices: list[list[str] | None], verifier: Any = None) -> None:
    """Set each sample's `pred` and `verdict` against its gold (`choices`: the options of each sample's problem); the
    sample's question decides whether a decimal may stand for an exact gold, and a response cut at the token limit
    (finish reason "length") gets no fallback extraction (`mathloop.verify`).
    With a `mathloop.verify.Verifier` the batch is checked in its worker pool, else one by one in this process."""
    if verifier is not None:
        graded = verifier.grade_batch([(s.gold, s.response) for s in samples],
                                      answer_type=[s.answer_type for s in samples], choices=choices,
                                      questions=[s.question for s in samples],
                                      truncated=[s.finish_reason == "length" for s in samples])
    else:
        from mathloop.verify import grade

        graded = [grade(s.gold, s.response, s.answer_type, c, question=s.question, truncated=s.finish_reason == "length")
                  for s, c in zip(samples, choices)]
    for sample, (pred, verdict) in zip(samples, graded):
        sample.pred, sample.verdict = pred, verdict


def pending_problems(problems: list[Problem], path: Path, n: int) -> list[Problem]:
    """Problems of `path` without all their `n` samples. Samples of half-done problems (a killed run) are dropped so
    those problems are generated again whole; samples of another benchmark version than the problem's are refused,
    so one file never mixes two versions of a benchmark."""
    if not path.exists():
        return problems
    drop_torn_last_line(path)
    samples = read_records(Sample, path)
    versions = {p.id: p.metadata.get("benchmark_version") for p in problems}
    counts: dict[str, int] = {}
    for sample in samples:
        counts[sample.problem_id] = counts.get(sample.problem_id, 0) + 1
        version = versions.get(sample.problem_id)
        if sample.benchmark_version is not None and version is not None and sample.benchmark_version != version:
            raise ValueError(f"{path}: {sample.problem_id} was sampled from version {sample.benchmark_version} of "
                             f"{sample.benchmark}, the data is now version {version}; use a new output folder")
    pending = [p for p in problems if counts.get(p.id, 0) < n]
    half_done = {p.id for p in pending if counts.get(p.id, 0)}
    if half_done:
        write_jsonl(path, [s for s in samples if s.problem_id not in half_done])
    return pending


def generate_and_grade(problems: list[Problem], path: Path, backend: Backend, params: SamplingParams,
                       mode: Mode = "cot", *, verifier: Any, shots: int = 0, executor: Any = None,
                       max_tool_calls: int = 4, progress: bool = True, desc: str = "", benchmark: str = "") -> None:
    """Generate `params.n` responses per problem with the benchmark's prompt (`shots` few-shot turns for
    multiple-choice problems), grade them and append them to `path` problem by problem, each as soon as its last
    response is finished: with a backend that reports each completion (hf, openvino) a killed run loses only the batch in
    flight; other backends (and TIR) get one backend batch of problems per call, so it loses at most that.
    The bar counts generated tokens (`TokenProgress`)."""
    from mathloop.prompts import build_messages
    from mathloop.progress import progress_bar

    prompts = {p.id: backend.chat_prompt(build_messages(p, mode, shots)) for p in problems}
    problems = sorted(problems, key=lambda p: -len(prompts[p.id]))  # similar lengths share a batch
    streamed = mode == "cot" and backend.reports_each_completion
    per_call = 1 if params.greedy else params.n  # sequences one problem puts in a backend batch
    chunk = len(problems) if streamed else max(1, backend.batch_size // per_call)
    with JsonlAppender(path) as appender, progress_bar(None, desc or "generate", "tok", enabled=progress,
                                                        unit_scale=True) as bar:
        counter = TokenProgress(bar, len(problems) * per_call, params.max_new_tokens, backend.reports_tokens)
        for start in range(0, len(problems), chunk):
            batch = problems[start:start + chunk]
            texts = [prompts[p.id] for p in batch]
            finished: list[list[Completion | None]] = [[None] * params.n for _ in batch]
            written = [False] * len(batch)

            def write(i: int) -> None:  # one problem, all its responses graded, to the file
                samples = response_samples([batch[i]], [texts[i]], [finished[i]], params, mode,  # type: ignore[list-item]
                                           backend.model_id, benchmark)
                grade_samples(samples, [batch[i].choices] * len(samples), verifier)
                appender.write(samples)
                written[i] = True

            def on_completion(i: int, j: int, completion: Completion) -> None:
                finished[i][j] = completion
                if j == 0 or not params.greedy:  # greedy: one sequence stands for all n
                    counter.sequence_done(completion)
                if all(c is not None for c in finished[i]):
                    write(i)

            completions = generate(backend, texts, params, mode, executor, max_tool_calls, on_completion,
                                   seed_keys=[p.id for p in batch], on_tokens=counter.tokens)
            for i, outs in enumerate(completions):  # a backend that reported fewer than it returned
                if not written[i]:
                    finished[i] = list(outs)
                    write(i)
