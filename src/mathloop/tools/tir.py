"""The tool-integrated reasoning (TIR) rollout loop, for every generation backend.

A trajectory generates until the model closes a ```python block and opens ```output (the stop string); the last
```python block of the trajectory runs in that trajectory's sandbox session (cells share state like a notebook);
"```output\\n<result>\\n```\\n" is appended and generation continues, up to `max_tool_calls` times, after which
the model finishes without the stop string. Many trajectories advance together: one batched generation for all
pending ones, then their code runs concurrently in the sandbox pool.

A trajectory is a `Completion` whose text grows turn by turn: the text the executor wrote (everything after the
model's own "```output" up to and including the closing fence) is recorded in `tool_output_spans`, so training can
mask it out of the loss; `stop_string` is OUTPUT_STOP when the trajectory ended asking for output it could not get.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, Protocol, Sequence

from mathloop.backends.base import Backend, Completion, SamplingParams, call_generate

OUTPUT_STOP = "```output"
_PYTHON_BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


class Executor(Protocol):
    """What the loop needs from a sandbox: run cells (code, session id) concurrently, return the model-facing text."""

    def run_cells(self, cells: Sequence[tuple[str, str]]) -> list[str]: ...

    def close_session(self, session: str) -> None: ...


def last_code_block(text: str) -> str | None:
    """The last complete ```python block of a response, or None.

    >>> last_code_block("a\\n```python\\nx = 1\\n```\\nb\\n```python\\nprint(x)\\n```\\n")
    'print(x)\\n'
    """
    blocks = _PYTHON_BLOCK.findall(text)
    return blocks[-1] if blocks else None


def tir_generate(backend: Backend, prompts: list[str], params: SamplingParams, executor: Executor,
                 max_tool_calls: int = 4, session_prefix: str = "tir", seed_keys: list[str] | None = None,
                 on_tokens: Callable[[int], None] | None = None) -> list[list[Completion]]:
    """Run `params.n` TIR trajectories per prompt to completion; returns them in prompt order. With `seed_keys`
    (one per prompt, its problem id; default the prompt), trajectory j's first segment is sample j of its key and
    each continuation is sample 0 of `<key>/<j>/<cells run>`, so a trajectory's seeds are its own on backends that
    seed per sample (`Backend.takes_seed_keys`), whatever else shares the batch."""
    keys = list(seed_keys) if seed_keys is not None else list(prompts)
    first = call_generate(backend, prompts, _with_stop(params), seed_keys=keys, on_tokens=on_tokens)
    trajectories = [[Completion(text="", finish_reason="") for _ in outs] for outs in first]
    flat = [(p, t) for p, group in zip(prompts, trajectories) for t in group]
    prompt_of = {id(t): p for p, t in flat}
    key_of = {id(t): f"{key}/{j}" for key, group in zip(keys, trajectories) for j, t in enumerate(group)}
    sessions = {id(t): f"{session_prefix}-{i}" for i, (_, t) in enumerate(flat)}
    step = [(t, c) for group, outs in zip(trajectories, first) for t, c in zip(group, outs)]
    try:
        while step:
            to_run = [t for t, c in step if _absorb(t, c, max_tool_calls, params.max_new_tokens)]
            if not to_run:
                break
            outputs = executor.run_cells([(last_code_block(t.text) or "", sessions[id(t)]) for t in to_run])
            for t, output in zip(to_run, outputs):
                _append_tool_output(t, output)
            budgets = [params.max_new_tokens - t.completion_tokens for t in to_run]
            continued = _continue(backend, [prompt_of[id(t)] + t.text for t in to_run], to_run, params, budgets,
                                  max_tool_calls, [f"{key_of[id(t)]}/{t.tool_calls}" for t in to_run], on_tokens)
            step = list(zip(to_run, continued))
    finally:
        for _, t in flat:
            executor.close_session(sessions[id(t)])
    return trajectories


def _with_stop(params: SamplingParams, allow_tool: bool = True, **changes) -> SamplingParams:
    stop = tuple(dict.fromkeys(params.stop + ((OUTPUT_STOP,) if allow_tool else ())))
    return dataclasses.replace(params, stop=stop, **changes)


def _continue(backend: Backend, texts: list[str], trajectories: list[Completion], params: SamplingParams,
              budgets: list[int], max_tool_calls: int, keys: list[str],
              on_tokens: Callable[[int], None] | None = None) -> list[Completion]:
    """Continue every trajectory (`texts`: its prompt and text so far) with its remaining token budget, one sample
    each; those at the tool-call limit generate without the ```output stop string, so they finish."""
    outs: list[Completion | None] = [None] * len(trajectories)
    groups: dict[tuple[int, bool], list[int]] = {}
    for i, (t, budget) in enumerate(zip(trajectories, budgets)):
        groups.setdefault((budget, t.tool_calls < max_tool_calls), []).append(i)
    for (budget, allow_tool), indices in groups.items():
        group_params = _with_stop(params, allow_tool, n=1, max_new_tokens=budget)
        results = call_generate(backend, [texts[i] for i in indices], group_params,
                                seed_keys=[keys[i] for i in indices], on_tokens=on_tokens)
        for i, result in zip(indices, results):
            outs[i] = result[0]
    return outs  # type: ignore[return-value]


def _absorb(t: Completion, completion: Completion, max_tool_calls: int, max_new_tokens: int) -> bool:
    """Add a completion to its trajectory; True when the trajectory now waits for a code cell to run."""
    if not t.prompt_tokens:
        t.prompt_tokens = completion.prompt_tokens
    t.text += completion.text
    t.completion_tokens += completion.completion_tokens
    asked = completion.stop_string == OUTPUT_STOP
    if asked and t.completion_tokens >= max_new_tokens:
        t.text += OUTPUT_STOP
        t.finish_reason, t.stop_string = "length", OUTPUT_STOP  # the token budget is spent: no room to read the output
        return False
    if asked and t.tool_calls < max_tool_calls and last_code_block(t.text) is not None:
        return True
    if asked:  # asked for output without a code block: nothing to run, the trajectory ends here
        t.text += OUTPUT_STOP
    t.finish_reason, t.stop_string = completion.finish_reason, completion.stop_string
    return False


def _append_tool_output(t: Completion, output: str) -> None:
    """Append the model's own "```output" marker, then the executor's text, recording the executor's span."""
    t.text += OUTPUT_STOP
    start = len(t.text)
    t.text += f"\n{output}\n```\n"
    t.tool_output_spans.append([start, len(t.text)])
    t.tool_calls += 1
