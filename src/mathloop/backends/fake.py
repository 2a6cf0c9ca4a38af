"""A scripted backend for tests: no model, deterministic text, and a record of every call.

It behaves like a real backend where stages rely on it: `n` completions per prompt in prompt order, stop strings cut
from the text (finish_reason "stop", `stop_string` set) and `max_new_tokens` enforced (finish_reason "length").
Tokens are whitespace-separated words.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Union

from mathloop.backends.base import Backend, Completion, Message, SamplingParams, cut_at_stop

Responses = Union[Callable[[str, int], str], dict[str, str], list[str], None]

DEFAULT_RESPONSE = "The answer is \\boxed{0}."


class FakeBackend(Backend):
    """Answers from a script instead of a model.

    `responses` is one of:
    - a callable `(prompt, index) -> text`, where `index` is the sample number 0..n-1 for that prompt;
    - a dict `{substring: text}`: the first key (in insertion order) found in the prompt picks the text,
      a prompt matching no key gets the default response;
    - a list of texts, cycled over every completion this backend produces (across calls);
    - None: always the default response, which ends in `\\boxed{0}`.

    >>> fake = FakeBackend(["a b c", "\\\\boxed{1}"])
    >>> [[c.text for c in cs] for cs in fake.generate(["p1", "p2"], SamplingParams(n=1))]
    [['a b c'], ['\\\\boxed{1}']]
    >>> fake.generate(["p"], SamplingParams(max_new_tokens=2))[0][0].text, len(fake.calls)
    ('a b', 2)
    """

    name = "fake"

    def __init__(self, responses: Responses = None, model_id: str = "fake") -> None:
        if responses is not None and not (callable(responses) or isinstance(responses, (dict, list))):
            raise TypeError(f"responses must be a callable, dict, list or None, got {type(responses).__name__}")
        if isinstance(responses, list) and not responses:
            raise ValueError("responses list is empty")
        self.responses = responses
        self.model_id = model_id
        self.calls: list[tuple[list[str], SamplingParams]] = []  # (prompts, params) of every generate() call
        self._cursor = 0  # position in a cycled list of responses

    def chat_prompt(self, messages: list[Message]) -> str:
        """Render as `<|role|>\\ncontent\\n` blocks, then open the assistant turn.

        >>> FakeBackend().chat_prompt([{"role": "user", "content": "1+1?"}])
        '<|user|>\\n1+1?\\n<|assistant|>\\n'
        """
        turns = "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in messages)
        return turns + "<|assistant|>\n"

    def generate(self, prompts: list[str], params: SamplingParams) -> list[list[Completion]]:
        self.calls.append((list(prompts), params))
        return [[self._complete(prompt, i, params) for i in range(params.n)] for prompt in prompts]

    def _response(self, prompt: str, index: int) -> str:
        if self.responses is None:
            return DEFAULT_RESPONSE
        if isinstance(self.responses, list):
            text = self.responses[self._cursor % len(self.responses)]
            self._cursor += 1
            return text
        if isinstance(self.responses, dict):
            return next((text for key, text in self.responses.items() if key in prompt), DEFAULT_RESPONSE)
        return self.responses(prompt, index)

    def _complete(self, prompt: str, index: int, params: SamplingParams) -> Completion:
        text, stop_string = cut_at_stop(self._response(prompt, index), params.stop)
        finish_reason = "stop"
        words = list(re.finditer(r"\S+", text))
        if len(words) > params.max_new_tokens:  # the length limit is hit before the stop string
            text = text[: words[params.max_new_tokens - 1].end()]
            words = words[: params.max_new_tokens]
            finish_reason, stop_string = "length", None
        return Completion(text=text, prompt_tokens=len(prompt.split()), completion_tokens=len(words),
                          finish_reason=finish_reason, stop_string=stop_string)
