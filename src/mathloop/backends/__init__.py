"""Generation backends behind one interface (`Backend`), chosen by name with `load_backend`.

Each backend module is imported only when asked for, so optional dependencies (vllm, openvino-genai) stay optional.
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


def load_backend(name: str, model: str, **kwargs: Any) -> Backend:
    """Build the backend registered as `name` for `model`; `kwargs` go to its constructor.

    >>> load_backend("fake", "tiny").model_id
    'tiny'
    """
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}")
    import importlib

    module_name, class_name = BACKENDS[name].split(":")
    backend_class = getattr(importlib.import_module(module_name), class_name)
    if name == "fake":
        return backend_class(model_id=model, **kwargs)
    return backend_class(model, **kwargs)


__all__ = ["BACKENDS", "Backend", "Completion", "Message", "SamplingParams", "cut_at_stop", "load_backend"]
