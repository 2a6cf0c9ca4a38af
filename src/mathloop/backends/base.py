"""The one narrow interface every generation backend implements.

A backend turns chat messages into prompt text (`chat_prompt`, with the model's own chat template) and prompt texts
into completions (`generate`). Prompts are text, not messages, so a stage can continue a partial assistant turn
(tool-integrated reasoning appends executor output and generates again).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": "..."}


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. temperature 0 means greedy decoding (then n > 1 repeats the same answer)."""

    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 2048
    seed: int = 0
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def to_dict(self) -> dict:
        return {"n": self.n, "temperature": self.temperature, "top_p": self.top_p,
                "max_new_tokens": self.max_new_tokens, "seed": self.seed, "stop": list(self.stop)}


@dataclass
class Completion:
    """One generated continuation. `finish_reason` is "stop" (EOS or a stop string) or "length"."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"
    stop_string: str | None = None  # which stop string ended it, when one did (the string is not in `text`)
    metadata: dict = field(default_factory=dict)


@runtime_checkable
class Backend(Protocol):
    """What mathloop needs from a model server or library."""

    name: str  # registry name: "hf", "openai", "vllm", "fake"
    model_id: str  # what produced the samples, recorded in every Sample

    def chat_prompt(self, messages: list[Message]) -> str:
        """Render messages with the model's chat template, ending with the opening of the assistant turn."""
        ...

    def generate(self, prompts: list[str], params: SamplingParams) -> list[list[Completion]]:
        """Return `params.n` completions for every prompt, in prompt order. Stop strings are cut from the text."""
        ...


def cut_at_stop(text: str, stop: tuple[str, ...]) -> tuple[str, str | None]:
    """Cut `text` at the earliest stop string; return the kept text and the stop string found (or None).

    >>> cut_at_stop("x = 1\\n```output\\nrest", ("```output",))
    ('x = 1\\n', '```output')
    >>> cut_at_stop("no stop here", ("```output",))
    ('no stop here', None)
    """
    best, found = len(text), None
    for s in stop:
        i = text.find(s)
        if i != -1 and i < best:
            best, found = i, s
    return text[:best], found
