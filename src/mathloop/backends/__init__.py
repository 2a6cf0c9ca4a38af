"""Generation backends behind one interface (`Backend`), chosen by name with `load_backend`.

Each backend module is imported only when asked for, so optional dependencies (vllm, openvino-genai) stay optional.
`auto`, the default of every generating stage (eval, sample, synthesize, the loop's sections), stands for `openvino`
with int8 weights where OpenVINO GenAI is installed and there is no CUDA GPU, else `hf` (`resolve_backend`). The
stages resolve it before they write run.json, which therefore names the engine that ran; a run resumed where `auto`
means another engine is refused rather than continued with it.
"""

from __future__ import annotations

from typing import Any

from mathloop.backends.base import Backend, Completion, Message, SamplingParams, cut_at_stop

BACKENDS: dict[str, str] = {
    "hf": "mathloop.backends.hf:HFBackend",  # transformers, in process (CPU or GPU)
    "openai": "mathloop.backends.openai:OpenAIBackend",  # any OpenAI-compatible server (vllm serve, SGLang, ...)
    "vllm": "mathloop.backends.vllm:VLLMBackend",  # vLLM's offline engine (GPU, optional extra)
    "openvino": "mathloop.backends.openvino:OpenVINOBackend",  # OpenVINO GenAI continuous batching (CPU, extra)
    "fake": "mathloop.backends.fake:FakeBackend",  # scripted responses, for tests
}


AUTO = "auto"
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


def backend_class(name: str) -> type:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of: {AUTO}, {', '.join(BACKENDS)}")
    import importlib

    module_name, class_name = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


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
    import inspect

    accepted = [p for p in inspect.signature(backend_class(chosen)).parameters if p not in ("self", "model")]
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


__all__ = ["AUTO", "BACKENDS", "Backend", "Completion", "Message", "SamplingParams", "choose_backend", "cut_at_stop",
           "load_backend", "resolve_backend"]
