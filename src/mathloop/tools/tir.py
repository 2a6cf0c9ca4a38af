"""The tool-integrated reasoning (TIR) rollout loop, for every generation backend.

A trajectory generates until the model closes a ```python block and opens ```output (the stop string); the last
```python block of the trajectory runs in that trajectory's sandbox session (cells share state like a notebook);
"```output\\n<result>\\n```\\n" is appended and generation continues, up to `max_tool_calls` times, after which
the model finishes without the stop string. Many trajectories advance together: one batched generation for all
pending ones, then their code runs concurrently in the sandbox pool.

The text the executor wrote (everything after the model's own "```output" up to and including the closing fence)
is recorded as a character span of the response, so training can mask it out of the loss.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Protocol, Sequence

from mathloop.backends.base import Backend, Completion, SamplingParams

OUTPUT_STOP = "```output"
_PYTHON_BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


class Executor(Protocol):
    """What the loop needs from a sandbox: run cells (code, session id) concurrently, return the model-facing text."""

    def run_cells(self, cells: Sequence[tuple[str, str]]) -> list[str]: ...

    def close_session(self, session: str) -> None: ...


@dataclass
class Trajectory:
    prompt: str
    response: str = ""
    tool_calls: int = 0
    tool_output_spans: list[list[int]] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None  # set when the trajectory is done


def last_code_block(text: str) -> str | None:
    """The last complete ```python block of a response, or None.

    >>> last_code_block("a\\n```python\\nx = 1\\n```\\nb\\n```python\\nprint(x)\\n```\\n")
    'print(x)\\n'
    """
    blocks = _PYTHON_BLOCK.findall(text)
    return blocks[-1] if blocks else None


def tir_generate(backend: Backend, prompts: list[str], params: SamplingParams, executor: Executor,
                 max_tool_calls: int = 4, session_prefix: str = "tir") -> list[list[Trajectory]]:
    """Run `params.n` TIR trajectories per prompt to completion; returns them in prompt order."""
    first = backend.generate(prompts, _with_stop(params, params))
    trajectories = [[Trajectory(prompt=p) for _ in outs] for p, outs in zip(prompts, first)]
    flat = [t for group in trajectories for t in group]
    sessions = {id(t): f"{session_prefix}-{i}" for i, t in enumerate(flat)}
    step = [(t, c) for group, outs in zip(trajectories, first) for t, c in zip(group, outs)]
    try:
        while step:
            to_run = [t for t, c in step if _absorb(t, c, max_tool_calls, params.max_new_tokens)]
            if not to_run:
                break
            outputs = executor.run_cells([(last_code_block(t.response) or "", sessions[id(t)]) for t in to_run])
            for t, output in zip(to_run, outputs):
                _append_tool_output(t, output)
            budgets = [params.max_new_tokens - t.completion_tokens for t in to_run]
            step = list(zip(to_run, _continue(backend, to_run, params, budgets, max_tool_calls)))
    finally:
        for t in flat:
            executor.close_session(sessions[id(t)])
    return trajectories


def _with_stop(params: SamplingParams, base: SamplingParams, allow_tool: bool = True) -> SamplingParams:
    stop = tuple(dict.fromkeys(base.stop + ((OUTPUT_STOP,) if allow_tool else ())))
    return SamplingParams(n=params.n, temperature=params.temperature, top_p=params.top_p,
                          max_new_tokens=params.max_new_tokens, seed=params.seed, stop=stop)


def _continue(backend: Backend, trajectories: list[Trajectory], params: SamplingParams, budgets: list[int],
              max_tool_calls: int) -> list[Completion]:
    """Continue every trajectory with its remaining token budget, one sample each; those at the tool-call limit
    generate without the ```output stop string, so they finish."""
    outs: list[Completion | None] = [None] * len(trajectories)
    groups: dict[tuple[int, bool], list[int]] = {}
    for i, (t, budget) in enumerate(zip(trajectories, budgets)):
        groups.setdefault((budget, t.tool_calls < max_tool_calls), []).append(i)
    for (budget, allow_tool), indices in groups.items():
        group_params = _with_stop(SamplingParams(n=1, temperature=params.temperature, top_p=params.top_p,
                                                 max_new_tokens=budget, seed=params.seed, stop=params.stop),
                                  params, allow_tool)
        results = backend.generate([trajectories[i].prompt + trajectories[i].response for i in indices],
                                   group_params)
        for i, result in zip(indices, results):
            outs[i] = result[0]
    return outs  # type: ignore[return-value]


def _absorb(t: Trajectory, completion: Completion, max_tool_calls: int, max_new_tokens: int) -> bool:
    """Add a completion to its trajectory; True when the trajectory now waits for a code cell to run."""
    if not t.prompt_tokens:
        t.prompt_tokens = completion.prompt_tokens
    t.response += completion.text
    t.completion_tokens += completion.completion_tokens
    asked = completion.stop_string == OUTPUT_STOP
    if asked and t.completion_tokens >= max_new_tokens:
        t.response += OUTPUT_STOP
        t.finish_reason = "length"  # the token budget is spent: no room to read the output
        return False
    if asked and t.tool_calls < max_tool_calls and last_code_block(t.response) is not None:
        return True
    if asked:  # asked for output without a code block: nothing to run, the trajectory ends here
        t.response += OUTPUT_STOP
    t.finish_reason = completion.finish_reason
    return False


def _append_tool_output(t: Trajectory, output: str) -> None:
    """Append the model's own "```output" marker, then the executor's text, recording the executor's span."""
    t.response += OUTPUT_STOP
    start = len(t.response)
    t.response += f"\n{output}\n```\n"
    t.tool_output_spans.append([start, len(t.response)])
    t.tool_calls += 1
