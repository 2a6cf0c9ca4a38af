"""VLLMBackend against a stub `vllm` module: engine arguments, sampling parameters and output mapping."""

import sys
import types
from types import SimpleNamespace

import pytest

from mathloop.backends import Backend, SamplingParams, load_backend
from mathloop.backends.vllm import VLLMBackend


class StubTokenizer:
    def apply_chat_template(self, messages, tokenize=True, add_generation_prompt=False):
        assert tokenize is False and add_generation_prompt is True
        return "".join(f"[{m['role']}]{m['content']}" for m in messages) + "[assistant]"


def output(text, finish_reason="stop", stop_reason=None, n_tokens=3):
    return SimpleNamespace(index=0, text=text, token_ids=list(range(n_tokens)), finish_reason=finish_reason,
                           stop_reason=stop_reason)


@pytest.fixture
def stub_vllm(monkeypatch):
    """A fake `vllm` with `LLM` and `SamplingParams` that record what they were given."""
    module = types.ModuleType("vllm")
    module.engines, module.generate_calls = [], []

    class StubSamplingParams:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    class StubLLM:
        def __init__(self, **kwargs):
            self.kwargs = kwargs
            module.engines.append(self)

        def get_tokenizer(self):
            return StubTokenizer()

        def generate(self, prompts, sampling_params, use_tqdm=True):
            module.generate_calls.append((prompts, sampling_params.kwargs, use_tqdm))
            outputs = {
                "tool": [output("x = 1\nprint(x)\n```\n", stop_reason="```output", n_tokens=7)],
                "long": [output("a b c d", finish_reason="length", n_tokens=4)],
                "eos": [output("\\boxed{2}", stop_reason=None), output("\\boxed{3}", stop_reason=151645)],
            }
            return [SimpleNamespace(prompt=p, prompt_token_ids=[0] * len(p), outputs=outputs[p.split()[-1]])
                    for p in prompts]

    module.LLM, module.SamplingParams = StubLLM, StubSamplingParams
    monkeypatch.setitem(sys.modules, "vllm", module)
    return module


def test_engine_arguments(stub_vllm):
    backend = VLLMBackend("Qwen/Qwen2.5-Math-1.5B-Instruct", dtype="bfloat16", tensor_parallel_size=2,
                          gpu_memory_utilization=0.8, max_model_len=4096, seed=7, enable_prefix_caching=True)
    assert stub_vllm.engines[0].kwargs == {
        "model": "Qwen/Qwen2.5-Math-1.5B-Instruct", "dtype": "bfloat16", "tensor_parallel_size": 2,
        "gpu_memory_utilization": 0.8, "seed": 7, "max_model_len": 4096, "enable_prefix_caching": True}
    assert isinstance(backend, Backend) and backend.name == "vllm"
    assert backend.model_id == "Qwen/Qwen2.5-Math-1.5B-Instruct"
    VLLMBackend("m")
    assert "max_model_len" not in stub_vllm.engines[1].kwargs  # vLLM picks it from the model config


def test_chat_prompt_uses_engine_tokenizer(stub_vllm):
    backend = load_backend("vllm", "m")
    assert backend.chat_prompt([{"role": "user", "content": "1+1?"}]) == "[user]1+1?[assistant]"


def test_generate_maps_params_and_outputs(stub_vllm):
    backend = VLLMBackend("m")
    params = SamplingParams(n=2, temperature=0.7, top_p=0.8, max_new_tokens=512, seed=3, stop=("```output",))
    results = backend.generate(["p1 tool", "p22 long", "p333 eos"], params)

    [(prompts, sampling, use_tqdm)] = stub_vllm.generate_calls
    assert prompts == ["p1 tool", "p22 long", "p333 eos"] and use_tqdm is False
    assert sampling == {"n": 2, "temperature": 0.7, "top_p": 0.8, "max_tokens": 512, "seed": 3,
                        "stop": ["```output"], "logprobs": 0}  # the sampled tokens' log-probabilities: confidence

    [tool], [long], [eos, token_stop] = results
    assert (tool.text, tool.finish_reason, tool.stop_string) == ("x = 1\nprint(x)\n```\n", "stop", "```output")
    assert (tool.prompt_tokens, tool.completion_tokens) == (7, 7)
    assert (long.finish_reason, long.stop_string, long.completion_tokens) == ("length", None, 4)
    assert (eos.text, eos.finish_reason, eos.stop_string, eos.metadata) == ("\\boxed{2}", "stop", None, {})
    assert token_stop.metadata == {"stop_token_id": 151645} and token_stop.stop_string is None


def test_greedy_samples_once_and_repeats(stub_vllm):
    results = VLLMBackend("m").generate(["p tool"], SamplingParams(n=3))
    assert stub_vllm.generate_calls[0][1]["n"] == 1
    assert [c.text for c in results[0]] == ["x = 1\nprint(x)\n```\n"] * 3
    assert len({id(c) for c in results[0]}) == 3  # separate objects, safe to annotate one by one


def test_missing_vllm_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError
    with pytest.raises(ImportError, match=r"mathloop\[vllm\]"):
        VLLMBackend("m")
