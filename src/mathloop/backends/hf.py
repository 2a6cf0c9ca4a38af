"""The `hf` backend: batched generation with transformers, on CPU or GPU.

Sequences are generated `batch_size` at a time with left padding, and n samples per prompt are n queue entries.
A plain batch runs until its longest member ends, so one response that rambles to max_new_tokens keeps the
finished slots busy. `segment_tokens=K` generates in segments of K tokens instead: after each segment the finished
sequences leave and the unfinished ones return to the queue with their tokens so far, to be batched with other
unfinished ones (their prompt+partial response is prefilled again). On this project's 2-core CPU the re-prefill
costs more than the idle slots (bench/generate.py prints the ratio), so it is off by default; it pays where
prefill is cheap relative to decoding (GPUs, long max_new_tokens). `dtype="auto"` runs the model in bfloat16
where the device computes it natively and in float32 elsewhere (`mathloop.hardware`). Sampling
is seeded per batch, so a run is reproducible for the same prompts, batch size, segment size and seed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

import torch

from mathloop.backends.base import Completion, Message, SamplingParams, cut_at_stop

log = logging.getLogger(__name__)


@dataclass
class _Job:
    prompt_index: int
    sample_index: int
    prompt_ids: list[int]
    generated: list[int] = field(default_factory=list)


class HFBackend:
    name = "hf"

    def __init__(self, model: str, dtype: str = "auto", device: str | None = None, batch_size: int = 32,
                 segment_tokens: int | None = None, model_obj=None, tokenizer_obj=None, threads: int | None = None,
                 continuous_batching: bool = False):
        """`model` is an embedded name (default, smollm2), a local folder or GGUF file, or a Hub id.

        `model_obj`/`tokenizer_obj` let tests and training code pass models that are already in memory.
        `continuous_batching=True` generates with transformers' continuous batching (paged KV cache; a finished
        sequence's slot takes the next waiting one at once) instead of static batches, for requests without stop
        strings (those keep the static batches: its scheduler has no stopping criteria).
        """
        if threads:
            torch.set_num_threads(threads)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.batch_size = batch_size
        self.segment_tokens = segment_tokens
        self.continuous_batching = continuous_batching
        if model_obj is not None:
            self.model, self.tokenizer, self.model_id = model_obj, tokenizer_obj, model
        else:
            from mathloop.hardware import resolve_dtype
            from mathloop.models import load_causal_lm, load_tokenizer, resolve_model

            path, self.model_id = resolve_model(model)
            self.tokenizer = load_tokenizer(path)
            self.model = load_causal_lm(path, resolve_dtype(dtype, self.device)).to(self.device)
        self.model.eval()
        self.dtype = str(next(self.model.parameters()).dtype).removeprefix("torch.")
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.eos_token_ids = _eos_ids(self.model, self.tokenizer)

    def chat_prompt(self, messages: list[Message]) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def generate(self, prompts: list[str], params: SamplingParams,
                 on_progress: Callable[[int, int, Completion], None] | None = None) -> list[list[Completion]]:
        """Generate `params.n` completions per prompt, in prompt order. `on_progress(i, j, completion)` is called
        for each completion as soon as it is finished (sample j of prompt i), so a stage can show progress and
        write finished prompts before the call returns."""
        n = 1 if params.greedy else params.n  # greedy decoding is deterministic: compute once, repeat below
        prompt_ids = self.tokenizer(prompts, add_special_tokens=False)["input_ids"]
        if self.continuous_batching and not params.stop:
            results = self._generate_continuous(prompt_ids, n, params)
            if params.greedy and params.n > 1:
                results = [[r[0]] * params.n for r in results]
            if on_progress:  # transformers' batch generation returns all at once
                for i, completions in enumerate(results):
                    for j, completion in enumerate(completions):
                        on_progress(i, j, completion)
            return results
        queue = [_Job(i, j, prompt_ids[i]) for i in range(len(prompts)) for j in range(n)]
        results: list[list[Completion | None]] = [[None] * n for _ in prompts]
        segment = self.segment_tokens or params.max_new_tokens
        round_ = 0
        while queue:
            queue.sort(key=lambda job: -(len(job.prompt_ids) + len(job.generated)))  # similar lengths batch together
            batch, queue = queue[:self.batch_size], queue[self.batch_size:]
            torch.manual_seed(params.seed + round_)
            round_ += 1
            budget = min(segment, max(params.max_new_tokens - len(job.generated) for job in batch))
            for job, new_ids in zip(batch, self._generate_ids(batch, budget, params)):
                completion = self._advance(job, new_ids, params)
                if completion is None:
                    queue.append(job)
                    continue
                results[job.prompt_index][job.sample_index] = completion
                if on_progress:  # greedy: the one completion stands for all n samples
                    for j in range(params.n) if params.greedy else (job.sample_index,):
                        on_progress(job.prompt_index, j, completion)
        if params.greedy and params.n > 1:
            results = [[r[0]] * params.n for r in results]
        return results  # type: ignore[return-value]

    def _advance(self, job: _Job, new_ids: list[int], params: SamplingParams) -> Completion | None:
        """Add a segment's tokens to a job; return its Completion when it is finished, else None."""
        ended_by_eos = False
        for t in new_ids:
            if t in self.eos_token_ids:
                ended_by_eos = True
                break
            job.generated.append(t)
            if len(job.generated) >= params.max_new_tokens:
                break
        text = self.tokenizer.decode(job.generated, skip_special_tokens=True)
        text, stop_string = cut_at_stop(text, params.stop)
        out_of_budget = len(job.generated) >= params.max_new_tokens
        if not (ended_by_eos or stop_string is not None or out_of_budget):
            return None
        return Completion(text=text, prompt_tokens=len(job.prompt_ids), completion_tokens=len(job.generated),
                          finish_reason="stop" if ended_by_eos or stop_string is not None else "length",
                          stop_string=stop_string)

    @torch.inference_mode()
    def _generate_continuous(self, prompt_ids: list[list[int]], n: int, params: SamplingParams
                             ) -> list[list[Completion]]:
        """All sequences through one continuous-batching scheduler; n samples per prompt share its prefill."""
        from transformers import GenerationConfig
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        sampling = ({"do_sample": False} if params.greedy else
                    {"do_sample": True, "temperature": params.temperature, "top_p": params.top_p, "top_k": 0})
        config = GenerationConfig(max_new_tokens=params.max_new_tokens, num_return_sequences=n,
                                  eos_token_id=self.eos_token_ids, pad_token_id=self.tokenizer.pad_token_id, **sampling)
        # The default sizes the KV cache to most of free memory; a tenth holds 128 x 2k tokens of a 0.5B model.
        scheduler = ContinuousBatchingConfig(max_memory_percent=0.1, seed=params.seed)
        torch.manual_seed(params.seed)
        outputs = list(self.model.generate_batch(inputs=prompt_ids, generation_config=config,
                                                 continuous_batching_config=scheduler).values())
        failed = [o.request_id for o in outputs if o.error is not None]
        if len(outputs) != len(prompt_ids) * n or failed:
            raise RuntimeError(f"continuous batching returned {len(outputs)} of {len(prompt_ids) * n} sequences"
                               + (f"; failed: {', '.join(failed)}" if failed else "")
                               + "; rerun with continuous_batching=False")
        results = []
        for i, ids in enumerate(prompt_ids):  # generate_batch returns each prompt's n sequences together, in order
            completions = []
            for output in outputs[i * n:(i + 1) * n]:
                tokens = list(output.generated_tokens)
                ended_by_eos = bool(tokens) and tokens[-1] in self.eos_token_ids
                tokens = tokens[:-1] if ended_by_eos else tokens
                completions.append(Completion(
                    text=self.tokenizer.decode(tokens, skip_special_tokens=True), prompt_tokens=len(ids),
                    completion_tokens=len(tokens), finish_reason="stop" if ended_by_eos else "length"))
            results.append(completions)
        return results

    @torch.inference_mode()
    def _generate_ids(self, batch: list[_Job], max_new_tokens: int, params: SamplingParams) -> list[list[int]]:
        """One `model.generate` call over left-padded prompt+generated token ids; returns the new ids per row."""
        rows = [job.prompt_ids + job.generated for job in batch]
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=self.device)
        attention_mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=self.device)
        kwargs = dict(max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=self.eos_token_ids)
        if params.greedy:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:  # top_k=0 overrides a generation config's own top_k; the sampler options set override that
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=0)
            kwargs.update(params.sampler_options())
        if params.stop:
            kwargs.update(stopping_criteria=[StopOnStrings(self.tokenizer, params.stop, width)])
        out = self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        return out[:, width:].tolist()


class StopOnStrings:
    """Stop each sequence once the text it generated in this call contains a stop string.

    transformers' own `stop_strings` also match across the prompt boundary (a prompt ending in "is" plus a
    generated " is" matches "is is"), which ends generations that never wrote the stop string. A match that spans
    two segments is found by the backend's check of the whole generated text.
    """

    def __init__(self, tokenizer, stop: tuple[str, ...], prompt_length: int):
        self.tokenizer, self.stop, self.prompt_length = tokenizer, stop, prompt_length
        self.window = max(len(s) for s in stop) + 2  # tokens are at least one character, so this covers any match

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        tails = self.tokenizer.batch_decode(input_ids[:, self.prompt_length:][:, -self.window:])
        return torch.tensor([any(s in tail for s in self.stop) for tail in tails], device=input_ids.device)


def _eos_ids(model, tokenizer) -> list[int]:
    """All token ids that end a turn: the generation config's, the tokenizer's, and chat end markers."""
    ids: set[int] = set()
    configured = getattr(model.generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(configured)
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    vocab = tokenizer.get_vocab()
    for marker in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<end_of_turn>"):
        if marker in vocab:
            ids.add(vocab[marker])
    return sorted(ids)
