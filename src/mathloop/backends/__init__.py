"""Generation backends behind one interface (`Backend`), chosen by name with `load_backend`.

Each backend module is imported only when asked for, so optional dependencies (vllm, openvino-genai) stay optional.
`auto`, the default of every generating stage (eval, sample, synthesize, the loop's sections), stands for `openvino`
with int8 weights where OpenVINO GenAI is installed and there is no CUDA GPU, else `hf` (`resolve_backend`). The
stages resolve it before they write run.json, which therefore names the engine that ran; a run resumed where `auto`
means another engine is refused rather than continued with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mathloop.backends.base import Backend, Completion, Message, SamplingParams, cut_at_stop

@dataclass(frozen=True)
class Registration:
    """A backend as the registry knows it, without importing it: where its class is and what it is."""

    target: str  # "module:Class", imported only when the backend is asked for
    about: str  # one line for --backend's help
    for_users: bool = True  # offered by --backend and GRPO's rollout_backend (fake: tests only)


# The one place a backend is registered: `load_backend`, the stages' `backend` setting, `--backend` and GRPO's
# `rollout_backend` all take their names from here. What a backend can do besides `generate` is declared on its
# class (`Backend`'s optional capabilities).
BACKENDS: dict[str, Registration] = {
    "hf": Registration("mathloop.backends.hf:HFBackend", "transformers, in process (CPU or GPU)"),
    "openai": Registration("mathloop.backends.openai:OpenAIBackend",
                           "any OpenAI-compatible server (vllm serve, SGLang, ...) at --base-url"),
    "vllm": Registration("mathloop.backends.vllm:VLLMBackend", "vLLM's offline engine (GPU, optional extra)"),
    "openvino": Registration("mathloop.backends.openvino:OpenVINOBackend",
                             "OpenVINO GenAI on CPU (optional extra; exports the model once per checkpoint)"),
    "fake": Registration("mathloop.backends.fake:FakeBackend", "scripted responses, for tests", for_users=False),
}


def backend_names() -> list[str]:
    """The registered backends a user may name (all but those for tests), in registry order.

    >>> backend_names()
    ['hf', 'openai', 'vllm', 'openvino']
    """
    return [name for name, registration in BACKENDS.items() if registration.for_users]


AUTO = "auto"
# The field metadata of a generating stage's `backend` setting (`field(default=AUTO, metadata=BACKEND_SETTING)`):
# its flag's choices and help, from the registry.
BACKEND_SETTING: dict[str, Any] = {
    "choices": [AUTO, *backend_names()],
    "help": f"{AUTO} = openvino with int8 weights where OpenVINO GenAI is installed and there is no CUDA GPU, else hf "
            "(run.json names the one that ran); "
            + "; ".join(f"{name} = {BACKENDS[name].about}" for name in backend_names())}
# What `auto` gives the openvino backend: int8 weights, its fast setting (its speed and accuracy against hf:
# docs/results.md, "Generation engines").
AUTO_OPENVINO_ARGS: dict[str, Any] = {"weight_format": "int8"}


def openvino_installed() -> bool:
    """Whether OpenVINO GenAI (`mathloop[openvino]`) can be imported, without importing it."""
    import importlib.util

    return importlib.util.find_spec("openvino_genai") is not None


def choose_backend(name: str) -> tuple[str, str]:
    """The backend `name` stands for and why: a registered name stands for itself; `auto` for `openvino` where
    OpenVINO GenAI is installed and there is no CUDA GPU, else `hf`."""
    if name != AUTO:
        return name, f"named {name}"
    if not openvino_installed():
        return "hf", "OpenVINO GenAI is not installed"
    import torch

    if torch.cuda.is_available():
        return "hf", "there is a CUDA GPU"
    return "openvino", "OpenVINO GenAI is installed and there is no CUDA GPU"


def backend_class(name: str) -> type[Backend]:
    """The class of the backend registered as `name` (its module imported now)."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of: {AUTO}, {', '.join(BACKENDS)}")
    import importlib

    module_name, class_name = BACKENDS[name].target.split(":")
    return getattr(importlib.import_module(module_name), class_name)


def backend_settings(name: str) -> list[str]:
    """The constructor arguments of the backend registered as `name` besides the model: the keys its
    `backend_args` (and GRPO's `openvino_args`) may hold.

    >>> backend_settings("fake")
    ['responses', 'model_id']
    """
    import inspect

    return [p for p in inspect.signature(backend_class(name)).parameters if p not in ("self", "model")]


def resolve_backend(name: str, backend_args: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """The backend name and constructor arguments a stage runs with. A registered name is returned as it is; `auto`
    becomes the engine `choose_backend` picks, with `AUTO_OPENVINO_ARGS` under the given arguments for openvino,
    and arguments that engine does not take are an error naming the key (they were written for another engine).

    >>> resolve_backend("hf", {"batch_size": 8})
    ('hf', {'batch_size': 8})
    """
    args = dict(backend_args or {})
    if name != AUTO:
        return name, args
    chosen, why = choose_backend(name)
    if chosen == "openvino":
        args = {**AUTO_OPENVINO_ARGS, **args}
    accepted = backend_settings(chosen)
    unknown = sorted(set(args) - set(accepted))
    if unknown:
        raise ValueError(f"backend_args: {unknown[0]!r} is not a setting of the {chosen} backend, which backend "
                         f"'auto' chose ({why}); its settings: {', '.join(accepted)}. Name the engine the settings "
                         f"are for (backend: in YAML, --backend on the command line)")
    return chosen, args


def load_backend(name: str, model: str, **kwargs: Any) -> Backend:
    """Build the backend registered as `name` (or the one `auto` stands for: `resolve_backend`) for `model`;
    `kwargs` go to its constructor.

    >>> load_backend("fake", "tiny").model_id
    'tiny'
    """
    name, kwargs = resolve_backend(name, kwargs)
    cls = backend_class(name)
    if name == "fake":
        return cls(model_id=model, **kwargs)
    return cls(model, **kwargs)


__all__ = ["AUTO", "BACKENDS", "Backend", "Completion", "Message", "Registration", "SamplingParams", "backend_class",
           "backend_names", "backend_settings", "choose_backend", "cut_at_stop", "load_backend", "resolve_backend"]
