"""The one narrow interface every generation backend implements.

A backend turns chat messages into prompt text (`chat_prompt`, with the model's own chat template) and prompt texts
into completions (`generate`). Prompts are text, not messages, so a stage can continue a partial assistant turn
(tool-integrated reasoning appends executor output and generates again).
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping, Protocol, runtime_checkable

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": "..."}


@dataclass(kw_only=True)
class SamplerOptions:
    """Sampling options every stage carries alike (eval, sample, GRPO rollouts): each field's default leaves the
    distribution unchanged, so a backend passes only the options set (`SamplingParams.sampler_options`) under these
    same names (transformers `generate`, vLLM `SamplingParams`, the OpenAI-compatible request body). Stage configs
    inherit the fields, so a new option is one field here; `validate_sampler_options` checks the values."""

    top_k: int = field(default=0, metadata={"resume": True,
        "help": "sample from the k most likely tokens only; 0 keeps all"})
    min_p: float = field(default=0.0, metadata={"resume": True,
        "help": "drop tokens less likely than min_p times the most likely one (Nguyen et al. 2024); 0 keeps all"})


SAMPLER_OPTIONS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(SamplerOptions))


def validate_sampler_options(options: Any, where: str = "sampling") -> None:
    """Raise a ValueError naming the option when a `SamplerOptions` field of `options` is out of range."""
    if options.top_k < 0:
        raise ValueError(f"{where}: top_k must be >= 0 (0: all tokens), got {options.top_k}")
    if not 0 <= options.min_p < 1:
        raise ValueError(f"{where}: min_p must be in [0, 1) (0: off), got {options.min_p}")


@dataclass(kw_only=True)
class SamplingParams(SamplerOptions):
    """How to sample. temperature 0 means greedy decoding (then n > 1 repeats the same answer). Treated as a value:
    change one with `dataclasses.replace`."""

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
        validate_sampler_options(self)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def sampler_options(self) -> dict[str, Any]:
        """The `SamplerOptions` set away from their neutral defaults, by name (what a backend passes on)."""
        defaults = SamplerOptions()
        return {name: getattr(self, name) for name in SAMPLER_OPTIONS if getattr(self, name) != getattr(defaults, name)}

    def to_dict(self) -> dict:
        """What a run records (run.json, every Sample's `sampling`)."""
        return {**dataclasses.asdict(self), "stop": list(self.stop)}


def sampling_params(settings: Any, **overrides: Any) -> SamplingParams:
    """The SamplingParams of a stage: its config's fields named like SamplingParams fields (n, temperature, top_p,
    max_new_tokens, seed and every `SamplerOptions` field), with `overrides` (e.g. one pass's temperature) on top.

    >>> from types import SimpleNamespace
    >>> sampling_params(SimpleNamespace(top_p=0.9, max_new_tokens=64, mode="cot"), n=4).to_dict()["n"]
    4
    """
    names = [f.name for f in dataclasses.fields(SamplingParams)]
    values = {name: getattr(settings, name) for name in names if hasattr(settings, name)}
    return SamplingParams(**{**values, **overrides})


@dataclass
class Completion:
    """One generated continuation. `finish_reason` is "stop" (EOS or a stop string) or "length".

    `metadata["token_logprobs"]`, where the engine reports them (openvino, hf, vllm with logprobs, OpenAI-compatible
    servers with logprobs), is the log-probability of each generated token, from which each `Sample` gets its
    `confidence` (`mathloop.metrics.confidence_summary`)."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"
    stop_string: str | None = None  # which stop string ended it, when one did (the string is not in `text`)
    # TIR: code cells run, and the character spans [start, end) of `text` the executor wrote (masked in training)
    tool_calls: int = 0
    tool_output_spans: list[list[int]] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)


@runtime_checkable
class Backend(Protocol):
    """What mathloop needs from a model server or library: `chat_prompt` and `generate`, and the optional
    capabilities below, declared as class attributes (a backend subclasses `Backend` and sets those it has; the
    defaults say it has none). Callers read these attributes, never the signature of `generate`."""

    name: str  # registry name: "hf", "openai", "vllm", "openvino", "fake"
    model_id: str  # what produced the samples, recorded in every Sample

    # Optional capabilities.
    supports_lora: bool = False  # `use_lora(path, name, lora_id)`: generate through a LoRA adapter from now on
    takes_seed_keys: bool = False  # `generate(..., seed_keys=)`: each sample seeded by `sample_seed` (hf, openvino)
    # each response depends on (run seed, key, sample index) alone, so a run seed draws the same responses
    # regardless of batching, resume, shards or Ray replicas (openvino; hf without `continuous_batching`)
    seeds_each_sample: bool = False
    reports_each_completion: bool = False  # `generate(..., on_progress=)`: called as each completion finishes
    reports_tokens: bool = False  # `generate(..., on_tokens=)`: called with the tokens of each generation step
    batch_size: int = 32  # sequences one `generate` call should carry (stages cut their work into calls of this)
    info: Mapping[str, Any] = MappingProxyType({})  # what the engine reports of itself (run.json's backend_info)

    def chat_prompt(self, messages: list[Message]) -> str:
        """Render messages with the model's chat template, ending with the opening of the assistant turn."""
        ...

    def generate(self, prompts: list[str], params: SamplingParams) -> list[list[Completion]]:
        """Return `params.n` completions for every prompt, in prompt order. Stop strings are cut from the text.
        A backend with `takes_seed_keys`, `reports_each_completion` or `reports_tokens` also takes the keyword
        arguments `seed_keys`, `on_progress` or `on_tokens` (`call_generate` passes those it declares)."""
        ...

    def use_lora(self, path: str, name: str, lora_id: int = 0) -> None:
        """Where `supports_lora`: generate through the LoRA adapter saved at `path` (known as `name`) from now on."""
        raise NotImplementedError(f"the {self.name} backend cannot load a LoRA adapter at run time")


def sample_seed(seed: int, key: str, index: int) -> int:
    """The seed of sample `index` of the request `key` (a problem id, else the prompt text) in a call seeded `seed`:
    a function of these three alone, so a sample draws the same tokens whatever else shares its batch, chunk, shard,
    replica or resumed run (backends that declare `takes_seed_keys`). A 63-bit integer.

    >>> sample_seed(0, "gsm8k/17", 3) == sample_seed(0, "gsm8k/17", 3) != sample_seed(0, "gsm8k/17", 4)
    True
    """
    digest = hashlib.blake2b(f"{seed}\0{key}\0{index}".encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def token_uniform(seed: int, position: int) -> float:
    """The uniform number in [0, 1) that picks the token at `position` (0: the first generated) of the sequence
    seeded `seed` (`sample_seed`): counter-based, so it does not depend on how many numbers were drawn before
    (a sequence that leaves a batch and joins another, or stops at a stop string and goes on, draws the same).

    >>> 0 <= token_uniform(5, 0) < 1 and token_uniform(5, 0) == token_uniform(5, 0) != token_uniform(5, 1)
    True
    """
    digest = hashlib.blake2b(f"{seed}\0{position}".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") >> 11) / float(1 << 53)


def call_generate(backend: Backend, prompts: list[str], params: SamplingParams, *, seed_keys: list[str] | None = None,
                  on_progress: Callable[[int, int, Completion], None] | None = None,
                  on_tokens: Callable[[int], None] | None = None) -> list[list[Completion]]:
    """`backend.generate(prompts, params, ...)` with those of `seed_keys`, `on_progress` and `on_tokens` that are
    given and that the backend declares it takes (`takes_seed_keys`, `reports_each_completion`, `reports_tokens`)."""
    optional: dict[str, Any] = {}
    if seed_keys is not None and backend.takes_seed_keys:
        optional["seed_keys"] = seed_keys
    if on_progress is not None and backend.reports_each_completion:
        optional["on_progress"] = on_progress
    if on_tokens is not None and backend.reports_tokens:
        optional["on_tokens"] = on_tokens
    return backend.generate(prompts, params, **optional)


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
