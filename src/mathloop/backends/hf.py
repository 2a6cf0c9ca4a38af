"""The `hf` backend: batched generation with transformers, on CPU or GPU.

n samples per prompt are n queue entries. By default (`refill=True`, `_Refill`) they are decoded in one batch of at
most `batch_size` rows that refills: each step decodes one token per row over a shared KV cache, a finished row
leaves at once, and waiting sequences are prefilled and join, so no slot decodes for a sequence that already ended.
`refill=False` runs static batches of `batch_size` with `model.generate`, each until its longest member ends: one
response that rambles to max_new_tokens keeps the finished slots busy. Refill pays where responses differ in
length, not where most hit the limit (docs/results.md). Models whose cache is not plain key/value tensors in every layer
(sliding-window layers) keep static batches. `dtype="auto"` runs the model in bfloat16 where the device computes it
natively and in float32 elsewhere (`mathloop.hardware`).

Seeds: every sampled sequence has its own seed, `sample_seed(params.seed, key, j)` for sample j of a prompt whose
key is its problem id (`seed_keys`, which stages pass) or else its text, and its token at position t is drawn by
inverse CDF with the uniform number `token_uniform(seed, t)`. No random state is shared between sequences or carried
from one draw to the next, so a sample's tokens do not depend on the batch size, on which sequences share its batch,
on a resumed run, a shard or a Ray replica; the only remaining difference is floating-point rounding of logits that
a different batch shape computes in another order (a token whose cumulative probability lies within rounding of the
drawn number; not seen in the tests). `continuous_batching=True` leaves the draws to transformers' scheduler (one
seed per call): its samples depend on the batch. Both decoding loops also report each generated token's
log-probability under the model (`Completion.metadata["token_logprobs"]`, before penalty and temperature), from
which each `Sample` gets its `confidence`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

import torch

from mathloop.backends.base import Backend, Completion, Message, SamplingParams, cut_at_stop, sample_seed, token_uniform

log = logging.getLogger(__name__)


@dataclass
class _Job:
    prompt_index: int
    sample_index: int
    prompt_ids: list[int]
    seed: int = 0  # `sample_seed` of this sequence
    generated: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)  # of each generated token, the model's (no penalty, warpers)
    pending_logprob: float = 0.0  # refill: the log-probability of the token chosen this step


class HFBackend(Backend):
    name = "hf"
    takes_seed_keys = reports_each_completion = reports_tokens = True

    def __init__(self, model: str, dtype: str = "auto", device: str | None = None, batch_size: int = 32,
                 refill: bool = True, model_obj=None, tokenizer_obj=None, threads: int | None = None,
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
        self.continuous_batching = continuous_batching
        self.seeds_each_sample = not continuous_batching  # transformers' scheduler draws per call
        self.refill = refill
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
                 on_progress: Callable[[int, int, Completion], None] | None = None,
                 seed_keys: list[str] | None = None,
                 on_tokens: Callable[[int], None] | None = None) -> list[list[Completion]]:
        """Generate `params.n` completions per prompt, in prompt order. `on_progress(i, j, completion)` is called
        for each completion as soon as it is finished (sample j of prompt i), so a stage can show progress and
        write finished prompts before the call returns. Sample j of prompt i is seeded by
        `sample_seed(params.seed, seed_keys[i], j)` (default key: the prompt text). `on_tokens(k)` is called as
        k more tokens are generated (every decoding step)."""
        keys = list(seed_keys) if seed_keys is not None else list(prompts)
        if len(keys) != len(prompts):
            raise ValueError(f"hf backend: {len(keys)} seed keys for {len(prompts)} prompts")
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
        queue = [_Job(i, j, prompt_ids[i], sample_seed(params.seed, keys[i], j))
                 for i in range(len(prompts)) for j in range(n)]
        results: list[list[Completion | None]] = [[None] * n for _ in prompts]
        if self.refill and not _Refill.supports(self.model):
            log.warning("hf backend: refill needs a plain key/value cache in every layer (no sliding window); "
                        "%s generates in static batches", self.model_id)
            self.refill = False

        def finished(job: _Job, completion: Completion) -> None:
            results[job.prompt_index][job.sample_index] = completion
            if on_progress:  # greedy: the one completion stands for all n samples
                for j in range(params.n) if params.greedy else (job.sample_index,):
                    on_progress(job.prompt_index, j, completion)

        if self.refill:
            _Refill(self, params, on_tokens).run(queue, finished)
        while queue and not self.refill:  # static batches
            queue.sort(key=lambda job: -len(job.prompt_ids))  # similar lengths batch together
            batch, queue = queue[:self.batch_size], queue[self.batch_size:]
            budget = max(params.max_new_tokens - len(job.generated) for job in batch)
            new, logprobs = self._generate_ids(batch, budget, params, on_tokens)
            for job, new_ids, new_logprobs in zip(batch, new, logprobs):
                completion = self._advance(job, new_ids, params, new_logprobs)
                if completion is None:  # stopped by a stop string its whole text does not hold: go on
                    queue.append(job)
                else:
                    finished(job, completion)
        if params.greedy and params.n > 1:
            results = [[r[0]] * params.n for r in results]
        return results  # type: ignore[return-value]

    def _advance(self, job: _Job, new_ids: list[int], params: SamplingParams,
                 new_logprobs: list[float] | None = None) -> Completion | None:
        """Add new tokens (and their log-probabilities) to a job; return its Completion when it is finished (an end
        token, the token budget, a stop string in its text), else None."""
        ended_by_eos = False
        for k, t in enumerate(new_ids):
            if t in self.eos_token_ids:
                ended_by_eos = True
                break
            job.generated.append(t)
            if new_logprobs is not None and k < len(new_logprobs):
                job.logprobs.append(new_logprobs[k])
            if len(job.generated) >= params.max_new_tokens:
                break
        out_of_budget = len(job.generated) >= params.max_new_tokens
        if not (ended_by_eos or out_of_budget or params.stop):
            return None  # no text to look at: refill adds one token at a time
        text, stop_string = cut_at_stop(self.tokenizer.decode(job.generated, skip_special_tokens=True), params.stop)
        if not (ended_by_eos or stop_string is not None or out_of_budget):
            return None
        return Completion(text=text, prompt_tokens=len(job.prompt_ids), completion_tokens=len(job.generated),
                          finish_reason="stop" if ended_by_eos or stop_string is not None else "length",
                          stop_string=stop_string,
                          metadata={"token_logprobs": list(job.logprobs)} if len(job.logprobs) == len(job.generated)
                          else {})

    @torch.no_grad()  # not inference_mode: transformers' scheduler thread updates the tensors made here in place
    def _generate_continuous(self, prompt_ids: list[list[int]], n: int, params: SamplingParams
                             ) -> list[list[Completion]]:
        """All sequences through one continuous-batching scheduler, each prompt sent n times (transformers 5.17's
        scheduler returned one sequence per prompt for num_return_sequences > 1)."""
        from transformers import GenerationConfig
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        sampling = ({"do_sample": False} if params.greedy else
                    {"do_sample": True, "temperature": params.temperature, "top_p": params.top_p, "top_k": 0})
        config = GenerationConfig(max_new_tokens=params.max_new_tokens, eos_token_id=self.eos_token_ids,
                                  pad_token_id=self.tokenizer.pad_token_id, **sampling)
        # The default sizes the KV cache to most of free memory; a tenth holds 128 x 2k tokens of a 0.5B model.
        scheduler = ContinuousBatchingConfig(max_memory_percent=0.1, seed=params.seed)
        torch.manual_seed(params.seed)
        requests = [ids for ids in prompt_ids for _ in range(n)]
        by_id = self.model.generate_batch(inputs=requests, generation_config=config,
                                          continuous_batching_config=scheduler)
        outputs = list(by_id.values())
        if all(o.request_id.startswith("req_") and o.request_id[4:].isdigit() for o in outputs):
            outputs.sort(key=lambda o: int(o.request_id[4:]))  # req_<index into requests>, not finishing order
        failed = [o.request_id for o in outputs if o.error is not None]
        if len(outputs) != len(prompt_ids) * n or failed:
            raise RuntimeError(f"continuous batching returned {len(outputs)} of {len(prompt_ids) * n} sequences"
                               + (f"; failed: {', '.join(failed)}" if failed else "")
                               + "; rerun with continuous_batching=False")
        results = []
        for i, ids in enumerate(prompt_ids):  # each prompt's n requests are consecutive
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
    def _generate_ids(self, batch: list[_Job], max_new_tokens: int, params: SamplingParams,
                      on_tokens: Callable[[int], None] | None = None) -> tuple[list[list[int]], list[list[float]]]:
        """One `model.generate` call over left-padded prompt+generated token ids; returns the new ids per row and
        their log-probabilities. `generate` decodes greedily over scores that `_TokenChooser` (a logits processor,
        the same choice as refill's) has reduced to the one token it picked, so each row draws with its own seed."""
        rows = [job.prompt_ids + job.generated for job in batch]
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=self.device)
        attention_mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=self.device)
        chooser = _StaticChoice(_TokenChooser(self.model, params, self.device), batch, width,
                                on_tokens, self.eos_token_ids)
        # the chooser applies the model's repetition penalty itself; generate's own sampling settings are off
        kwargs = dict(max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=self.eos_token_ids,
                      do_sample=False, temperature=None, top_p=None, top_k=None, repetition_penalty=1.0,
                      logits_processor=[chooser])
        if params.stop:
            kwargs.update(stopping_criteria=[StopOnStrings(self.tokenizer, params.stop, width)])
        out = self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        return out[:, width:].tolist(), chooser.logprobs


class _TokenChooser:
    """Each row's next token, for both decoding loops: the model's repetition penalty when its generation config sets
    one, then greedy argmax, or temperature, top-k, top-p and min-p in that order (as `generate` applies them) and a
    draw by inverse CDF with the row's own uniform number, `token_uniform(job.seed, position)`; and the chosen
    token's log-probability under the model's own distribution (the logits before penalty and warpers)."""

    def __init__(self, model, params: SamplingParams, device):
        from transformers import (LogitsProcessorList, MinPLogitsWarper, RepetitionPenaltyLogitsProcessor,
                                  TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)

        self.params, self.device = params, device
        penalty = getattr(model.generation_config, "repetition_penalty", None)
        self.penalty = RepetitionPenaltyLogitsProcessor(penalty) if penalty not in (None, 1.0) else None
        self.processors = LogitsProcessorList()
        if not params.greedy:
            if params.temperature != 1.0:
                self.processors.append(TemperatureLogitsWarper(params.temperature))
            if params.top_k:
                self.processors.append(TopKLogitsWarper(params.top_k))
            if params.top_p < 1.0:
                self.processors.append(TopPLogitsWarper(params.top_p))
            if params.min_p:
                self.processors.append(MinPLogitsWarper(params.min_p))

    def __call__(self, jobs: list[_Job], seen: Callable[[], list[list[int]]], positions: list[int],
                 logits: torch.Tensor) -> tuple[torch.Tensor, list[float]]:
        """Tokens and their log-probabilities for rows `jobs` (`seen()`: each row's tokens so far, read only when
        a penalty needs them; `positions`: the index among generated tokens of the token chosen now)."""
        raw = logits.float()
        if self.penalty is not None:  # the penalty reads the tokens so far (padding repeats a token: no change)
            rows = seen()
            width = max(len(row) for row in rows)
            logits = self.penalty(torch.tensor([row[:1] * (width - len(row)) + row for row in rows],
                                               device=self.device), raw)
        else:
            logits = raw
        if self.processors:
            logits = self.processors(None, logits)
        if self.params.greedy:
            tokens = logits.argmax(dim=-1)
        else:
            cdf = torch.softmax(logits, dim=-1).double().cumsum(dim=-1)
            uniform = torch.tensor([[token_uniform(job.seed, t)] for job, t in zip(jobs, positions)],
                                   dtype=torch.float64, device=cdf.device)
            # the first token whose cumulative probability exceeds u: never one of probability 0
            tokens = torch.searchsorted(cdf, uniform * cdf[:, -1:], right=True)[:, 0].clamp(max=cdf.shape[1] - 1)
        logprobs = torch.log_softmax(raw, dim=-1).gather(1, tokens[:, None])[:, 0]
        return tokens, logprobs.tolist()


class _StaticChoice:
    """`_TokenChooser` as a logits processor of `model.generate` (static batches): scores become -inf except at the
    chosen token, so greedy decoding takes it; the log-probabilities are kept per row. `on_tokens(k)` hears of the
    k rows (not yet ended by an end token) that get a token at each step."""

    def __init__(self, chooser: _TokenChooser, batch: list[_Job], width: int,
                 on_tokens: Callable[[int], None] | None = None, eos_token_ids: list[int] = ()):
        self.chooser, self.batch, self.width, self.on_tokens = chooser, batch, width, on_tokens
        self.eos = torch.tensor(list(eos_token_ids), dtype=torch.long)
        self.logprobs: list[list[float]] = [[] for _ in batch]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1] - self.width
        if self.on_tokens:
            generated = input_ids[:, self.width:]
            ended = torch.isin(generated, self.eos.to(generated.device)).any(dim=1)
            self.on_tokens(int((~ended).sum()))

        def seen() -> list[list[int]]:
            return [job.prompt_ids + job.generated + row for job, row in
                    zip(self.batch, input_ids[:, self.width:].tolist())]

        tokens, logprobs = self.chooser(self.batch, seen, [len(job.generated) + step for job in self.batch], scores)
        for row, logprob in zip(self.logprobs, logprobs):
            row.append(logprob)
        chosen = torch.full_like(scores, float("-inf"))
        chosen[torch.arange(len(tokens), device=scores.device), tokens] = 0.0
        return chosen


class _Refill:
    """Decoding in one batch that refills (`HFBackend(refill=True)`): each step decodes one token for every row
    with a shared KV cache; a row whose sequence ends leaves the batch at once (its cache rows are dropped), and
    waiting sequences are prefilled and join as soon as a quarter of the `batch_size` rows are free (or none are
    running). Rows are left-padded to a common cache length: a new group's cache is padded on the left to the
    batch's and the other way round, padding is masked, and positions count real tokens only, so each row's logits
    are those of the sequence alone (up to floating-point rounding). Columns that only padding uses are cut away.

    Token choice is `_TokenChooser`'s, as in static batches: each sequence draws with its own seed.
    `on_tokens(k)` is called after each step with the k tokens it generated."""

    def __init__(self, backend: "HFBackend", params: SamplingParams,
                 on_tokens: Callable[[int], None] | None = None):
        self.backend, self.params, self.on_tokens = backend, params, on_tokens
        self.model, self.device = backend.model, backend.device
        self.chooser = _TokenChooser(self.model, params, self.device)
        import inspect  # transformers 5.x renames forward's `past_key_values` to `cache`

        self.cache_key = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"

    @staticmethod
    def supports(model) -> bool:
        """Whether `model`'s cache is plain key/value tensors in every layer, which rows can join and leave."""
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        try:
            layers = DynamicCache(config=model.config).layers
        except Exception:  # a model with a cache of its own kind
            return False
        return all(type(layer) is DynamicLayer for layer in layers)

    @torch.inference_mode()
    def run(self, jobs: list[_Job], finished: Callable[[_Job, Completion], None]) -> None:
        queue = sorted(jobs, key=lambda job: -len(job.prompt_ids))  # similar prompt lengths join together
        rows: list[_Job] = []
        cache = mask = logits = None
        size = self.backend.batch_size
        while queue or rows:
            if rows:
                tokens = self._choose(rows, logits)
                if self.on_tokens:
                    self.on_tokens(len(rows))
                keep = []
                for r, (job, token) in enumerate(zip(rows, tokens.tolist())):
                    completion = self.backend._advance(job, [token], self.params, [job.pending_logprob])
                    if completion is None:
                        keep.append(r)
                    else:
                        finished(job, completion)
                if len(keep) < len(rows):
                    index = torch.tensor(keep, dtype=torch.long, device=self.device)
                    rows, mask, tokens = [rows[r] for r in keep], mask[index], tokens[index]
                    cache.batch_select_indices(index)
                if rows:
                    mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=1)
                    out = self.model(input_ids=tokens[:, None], attention_mask=mask,
                                     position_ids=(mask.sum(dim=1, keepdim=True) - 1), use_cache=True,
                                     **{self.cache_key: cache})
                    logits = out.logits[:, -1, :].float()
                    mask, cache = _cut_padding(mask, cache)
                else:
                    cache = mask = logits = None
            free = size - len(rows)
            if queue and (not rows or free >= max(1, size // 4)):
                joining, queue = queue[:free], queue[free:]
                new_cache, new_mask, new_logits = self._prefill(joining)
                if rows:
                    cache, mask = _join_caches(cache, mask, new_cache, new_mask)
                    logits = torch.cat([logits, new_logits])
                else:
                    cache, mask, logits = new_cache, new_mask, new_logits
                rows = rows + joining

    def _prefill(self, jobs: list[_Job]):
        from transformers import DynamicCache

        ids = [job.prompt_ids + job.generated for job in jobs]
        width = max(len(row) for row in ids)
        pad = self.backend.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(row)) + row for row in ids], device=self.device)
        mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in ids], device=self.device)
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True,
                         logits_to_keep=1, **{self.cache_key: cache})
        return cache, mask, out.logits[:, -1, :].float()

    def _choose(self, rows: list[_Job], logits: torch.Tensor) -> torch.Tensor:
        """Each row's next token from its logits (its log-probability goes to `job.pending_logprob`)."""
        tokens, logprobs = self.chooser(rows, lambda: [job.prompt_ids + job.generated for job in rows],
                                        [len(job.generated) for job in rows], logits)
        for job, logprob in zip(rows, logprobs):
            job.pending_logprob = logprob
        return tokens


def _join_caches(cache, mask, other, other_mask):
    """One cache (and attention mask) of the rows of `cache` followed by those of `other`, the shorter one padded
    on the left (masked out)."""
    length = max(mask.shape[1], other_mask.shape[1])

    def padded(tensor: torch.Tensor, dim: int) -> torch.Tensor:
        missing = length - tensor.shape[dim]
        if not missing:
            return tensor
        shape = list(tensor.shape)
        shape[dim] = missing
        return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)

    for layer, other_layer in zip(cache.layers, other.layers):
        layer.keys = torch.cat([padded(layer.keys, 2), padded(other_layer.keys, 2)])
        layer.values = torch.cat([padded(layer.values, 2), padded(other_layer.values, 2)])
    return cache, torch.cat([padded(mask, 1), padded(other_mask, 1)])


def _cut_padding(mask, cache):
    """Drop the leading cache columns that every row masks out (left behind by rows that left)."""
    used = mask.any(dim=0).nonzero()
    start = int(used[0]) if len(used) else 0
    if start:
        mask = mask[:, start:]
        for layer in cache.layers:
            layer.keys, layer.values = layer.keys[:, :, start:], layer.values[:, :, start:]
    return mask, cache


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
