"""The TIR rollout loop with the fake backend and a recording executor."""

from __future__ import annotations

from mathloop.backends.base import SamplingParams
from mathloop.backends.fake import FakeBackend
from mathloop.tools.tir import OUTPUT_STOP, last_code_block, tir_generate


class RecordingExecutor:
    """Runs nothing: answers each cell with the session and how many cells that session has seen."""

    def __init__(self):
        self.cells: list[tuple[str, str]] = []
        self.closed: list[str] = []

    def run_cells(self, cells):
        self.cells += list(cells)
        return [f"ran {sum(1 for _, s in self.cells if s == session)} in {session}" for _, session in cells]

    def close_session(self, session):
        self.closed.append(session)


def model(prompt: str, index: int) -> str:
    """Writes code until it has seen two outputs, then answers; 'NOCODE' prompts never call the tool."""
    if "NOCODE" in prompt:
        return "Easy: \\boxed{1}"
    seen = prompt.count(OUTPUT_STOP)
    if seen < 2:
        return f"Step {seen}.\n```python\nx = {seen}\nprint(x)\n```\n```output\nMODEL MUST NOT WRITE THIS"
    return "So the answer is \\boxed{42}."


def test_trajectories_alternate_code_and_output_and_record_spans():
    executor = RecordingExecutor()
    params = SamplingParams(n=2, temperature=0.7, max_new_tokens=500)
    result = tir_generate(FakeBackend(model), ["Q1", "NOCODE"], params, executor)
    code_traj, plain = result[0][0], result[1][0]
    assert len(result[0]) == 2 and len(result[1]) == 2
    assert code_traj.tool_calls == 2 and code_traj.finish_reason == "stop"
    assert code_traj.text.endswith("\\boxed{42}.")
    assert "MODEL MUST NOT WRITE THIS" not in code_traj.text
    outputs = [code_traj.text[a:b] for a, b in code_traj.tool_output_spans]
    assert outputs == ["\nran 1 in tir-0\n```\n", "\nran 2 in tir-0\n```\n"]
    assert code_traj.text.count("```output\nran") == 2
    assert plain.tool_calls == 0 and plain.tool_output_spans == [] and plain.text == "Easy: \\boxed{1}"
    # Each trajectory runs only its last block, in its own session; every session is closed at the end.
    assert [code for code, s in executor.cells if s == "tir-0"] == ["x = 0\nprint(x)\n", "x = 1\nprint(x)\n"]
    assert sorted(executor.closed) == [f"tir-{i}" for i in range(4)]


def test_tool_call_limit_makes_the_model_finish():
    def always_code(prompt, index):
        return "```python\nprint(1)\n```\n```output\n" if "STOP-TOOLS" not in prompt else "x"
    executor = RecordingExecutor()
    traj = tir_generate(FakeBackend(always_code), ["Q"], SamplingParams(max_new_tokens=1000), executor,
                        max_tool_calls=3)[0][0]
    assert traj.tool_calls == 3 and len(executor.cells) == 3
    # After the limit the continuation has no ```output stop: the fake model's text comes back whole.
    assert traj.text.endswith("```output\n") and traj.finish_reason == "stop"


def test_last_code_block():
    assert last_code_block("no code") is None
    assert last_code_block("```python\na\n```\n```python\nb\n```") == "b\n"


class KeyedFake(FakeBackend):
    """A fake that takes per-sample seed keys, as hf and openvino do, and records them."""

    takes_seed_keys = True

    def __init__(self, responses):
        super().__init__(responses)
        self.keys: list[list[str]] = []

    def generate(self, prompts, params, seed_keys=None):
        self.keys.append(list(seed_keys))
        return super().generate(prompts, params)


def test_every_segment_of_a_trajectory_has_seeds_of_its_own():
    """Issue 28 item 2: the first segment is sample j of the problem's key; a continuation is sample 0 of
    <key>/<j>/<cells run>, so no two segments share a seed and none depends on the batch."""
    backend = KeyedFake(model)
    tir_generate(backend, ["Q1", "NOCODE"], SamplingParams(n=2, temperature=0.7, max_new_tokens=500),
                 RecordingExecutor(), seed_keys=["gsm8k/1", "gsm8k/2"])
    assert backend.keys == [["gsm8k/1", "gsm8k/2"], ["gsm8k/1/0/1", "gsm8k/1/1/1"], ["gsm8k/1/0/2", "gsm8k/1/1/2"]]
