"""A backend on vLLM's offline engine (`vllm.LLM`), for fast batched sampling on GPUs.

vLLM is an optional extra (`pip install 'mathloop[vllm]'`), imported only when this backend is built.
"""

from __future__ import annotations

from typing import Any

from mathloop.backends.base import Backend, Completion, Message, SamplingParams, cut_at_stop


class VLLMBackend(Backend):
    """Generate with `vllm.LLM`; `engine_kwargs` go to `vllm.LLM` unchanged (e.g. `enable_prefix_caching=True`).

    `logprobs=True` (the default) also returns each completion's sampled token ids and their log-probabilities, in
    `Completion.metadata["token_ids"]` and `["token_logprobs"]`: each sample's `confidence`, and GRPO's
    rollout-engine correction. vLLM computes them from the logits it already has (`logprobs=0`: the sampled token
    only)."""

    name = "vllm"
    supports_lora = True

    def __init__(self, model: str, dtype: str = "auto", tensor_parallel_size: int = 1,
                 gpu_memory_utilization: float = 0.9, max_model_len: int | None = None, seed: int = 0,
                 logprobs: bool = True, **engine_kwargs: Any) -> None:
        try:
            import vllm
        except ImportError as exc:
            raise ImportError("the vllm backend needs vLLM, which is not installed: pip install 'mathloop[vllm]' "
                              "(Linux with a CUDA GPU), or use the hf or openai backend") from exc
        self._vllm = vllm
        self.model_id = model
        self.logprobs = logprobs
        if max_model_len is not None:
            engine_kwargs["max_model_len"] = max_model_len
        self.llm = vllm.LLM(model=model, dtype=dtype, tensor_parallel_size=tensor_parallel_size,
                            gpu_memory_utilization=gpu_memory_utilization, seed=seed, **engine_kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self.lora_request = None

    def use_lora(self, path: str, name: str, lora_id: int) -> None:
        """Generate through the LoRA adapter saved at `path` from now on (the engine must be built with
        `enable_lora=True`). A new `lora_id` makes vLLM load the adapter afresh: GRPO passes each step's adapter."""
        from vllm.lora.request import LoRARequest

        self.lora_request = LoRARequest(name, lora_id, path)

    def chat_prompt(self, messages: list[Message]) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def generate(self, prompts: list[str], params: SamplingParams) -> list[list[Completion]]:
        """Greedy decoding asks vLLM for one completion per prompt and repeats it `n` times (older vLLM refuses
        n > 1 without sampling, and the copies would be identical anyway)."""
        if not prompts:
            return []
        sampling = self._vllm.SamplingParams(
            n=1 if params.greedy else params.n, temperature=params.temperature, top_p=params.top_p,
            max_tokens=params.max_new_tokens, seed=params.seed, stop=list(params.stop), **params.sampler_options(),
            **({"logprobs": 0} if self.logprobs else {}))
        extra = {"lora_request": self.lora_request} if self.lora_request is not None else {}
        results = self.llm.generate(prompts, sampling, use_tqdm=False, **extra)
        completions = []
        for result in results:
            prompt_tokens = len(result.prompt_token_ids or [])
            outputs = result.outputs[:1] * params.n if params.greedy else result.outputs
            completions.append([to_completion(output, prompt_tokens, params.stop) for output in outputs])
        return completions


def to_completion(output: Any, prompt_tokens: int, stop: tuple[str, ...]) -> Completion:
    """Map one `vllm.CompletionOutput` to a Completion. vLLM's `stop_reason` is the matched stop string, a stop
    token id, or None (EOS or length)."""
    text, stop_string = cut_at_stop(output.text, stop)
    metadata: dict[str, Any] = {}
    stop_reason = getattr(output, "stop_reason", None)
    if isinstance(stop_reason, str) and stop_reason in stop and output.finish_reason != "length":
        stop_string = stop_reason
    elif isinstance(stop_reason, int):
        metadata["stop_token_id"] = stop_reason
    if getattr(output, "logprobs", None) is not None:  # requested: one {token_id: Logprob} per sampled token
        metadata["token_ids"] = list(output.token_ids)
        metadata["token_logprobs"] = [float(step[token].logprob) for step, token in zip(output.logprobs,
                                                                                       output.token_ids)]
    if output.finish_reason not in ("stop", "length"):
        metadata["finish_reason_raw"] = output.finish_reason
    finish_reason = "length" if output.finish_reason == "length" and stop_string is None else "stop"
    return Completion(text=text, prompt_tokens=prompt_tokens, completion_tokens=len(output.token_ids or []),
                      finish_reason=finish_reason, stop_string=stop_string, metadata=metadata)
