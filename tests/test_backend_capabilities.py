"""The backend registry is the one list of backends, and each backend declares its optional capabilities."""

import inspect

import pytest

from mathloop.backends import AUTO, BACKENDS, Backend, SamplingParams, backend_class, backend_names
from mathloop.backends.base import call_generate
from mathloop.backends.fake import FakeBackend


@pytest.mark.parametrize("name", list(BACKENDS))
def test_declared_capabilities_match_what_generate_takes(name):
    cls = backend_class(name)
    takes = inspect.signature(cls.generate).parameters
    assert Backend in cls.__mro__ and cls.name == name
    assert cls.takes_seed_keys == ("seed_keys" in takes)
    assert cls.reports_each_completion == ("on_progress" in takes)
    assert cls.reports_tokens == ("on_tokens" in takes)
    assert cls.supports_lora == ("use_lora" in vars(cls))


def test_capabilities_per_backend():
    declared = {name: sorted(c for c in ("supports_lora", "takes_seed_keys", "seeds_each_sample",
                                         "reports_each_completion", "reports_tokens") if getattr(backend_class(name), c))
                for name in BACKENDS}
    assert declared == {"hf": ["reports_each_completion", "reports_tokens", "takes_seed_keys"],
                        "openai": ["supports_lora"], "vllm": ["supports_lora"],
                        "openvino": ["reports_each_completion", "reports_tokens", "seeds_each_sample", "supports_lora",
                                     "takes_seed_keys"],
                        "fake": []}


def test_cli_and_grpo_take_their_backend_choices_from_the_registry():
    from mathloop.cli import build_parser

    def choices(command, flag):
        sub = next(a for a in build_parser()._actions if a.dest == "command").choices[command]
        return next(a for a in sub._actions if flag in a.option_strings).choices

    assert backend_names() == [name for name in BACKENDS if name != "fake"]
    for command in ("eval", "sample"):
        assert choices(command, "--backend") == [AUTO, *backend_names()]
    assert list(choices("grpo", "--rollout-backend")) == backend_names()


class Recording(FakeBackend):
    takes_seed_keys = True

    def generate(self, prompts, params, **optional):
        self.optional = optional
        return super().generate(prompts, params)


def test_call_generate_passes_only_the_declared_optional_arguments():
    backend = Recording()
    call_generate(backend, ["p"], SamplingParams(), seed_keys=["k"], on_progress=print, on_tokens=print)
    assert backend.optional == {"seed_keys": ["k"]}
    backend.takes_seed_keys, backend.reports_tokens = False, True
    call_generate(backend, ["p"], SamplingParams(), seed_keys=["k"], on_tokens=print)
    assert backend.optional == {"on_tokens": print}


def test_a_backend_without_lora_refuses_an_adapter_and_records_per_call_seeds(tmp_path):
    from mathloop.runs import read_json, record_backend

    with pytest.raises(NotImplementedError, match="the fake backend cannot load a LoRA adapter"):
        FakeBackend().use_lora("adapter", "step-0")
    record_backend(tmp_path / "run.json", {}, FakeBackend())
    assert read_json(tmp_path / "run.json") == {"sample_seeds": "per call"}
