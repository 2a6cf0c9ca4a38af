"""A backend for any OpenAI-compatible server: `vllm serve`, SGLang, llama.cpp's `llama-server`.

It talks to `/v1/completions` (not chat completions) with prompt text rendered locally by the model's own chat
template, so tool-integrated reasoning can continue a partial assistant turn. Requests run concurrently in a thread
pool and are retried with exponential backoff on connection errors, 429 and 5xx.

`use_lora` sends a LoRA adapter to the server with vLLM's dynamic LoRA API (`POST /v1/load_lora_adapter` with
`{"lora_name", "lora_path"}`, `POST /v1/unload_lora_adapter` with `{"lora_name"}`; the server is started with
`--enable-lora --max-lora-rank R` and the environment variable `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`, and
`lora_path` is a folder on the server's file system) and generates through it from then on (requests name the
adapter as their `model`). GRPO uses it to hand each step's policy to a rollout server on another machine.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from mathloop.backends.base import Backend, Completion, Message, SamplingParams, cut_at_stop


class ServerError(RuntimeError):
    """The server could not be reached or refused a request; the message names the URL and what it said."""


def completions_url(base_url: str) -> str:
    """The `/v1/completions` endpoint for a base URL given with or without `/v1`.

    >>> completions_url("http://localhost:8000")
    'http://localhost:8000/v1/completions'
    >>> completions_url("http://localhost:8000/v1/")
    'http://localhost:8000/v1/completions'
    """
    base = base_url.rstrip("/")
    return base + "/completions" if base.endswith("/v1") else base + "/v1/completions"


class OpenAIBackend(Backend):
    """Generate through an OpenAI-compatible `/v1/completions` endpoint.

    `model` is the name the server serves; `tokenizer` is a local folder or Hub id whose chat template renders
    prompts (default: `model`), loaded on the first `chat_prompt` call. The API key comes from `api_key` or the
    `OPENAI_API_KEY` environment variable; local servers usually need none. `tokenizer_obj` is an already loaded
    tokenizer (GRPO passes the policy's). `retry_backoff` is the first wait in
    seconds between retries; it doubles each time (a server's `Retry-After` header wins when given).
    `logprobs` (on by default) asks for each sampled token's log-probability (`"logprobs": 1`), which becomes the
    sample's `confidence`; turn it off for a server that refuses the field.
    """

    name = "openai"
    supports_lora = True

    def __init__(self, model: str, base_url: str, api_key: str | None = None, tokenizer: str | None = None,
                 concurrency: int = 32, timeout: float = 600, max_retries: int = 3,
                 retry_backoff: float = 1.0, tokenizer_obj: Any = None, logprobs: bool = True) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        self.model_id = model
        self.url = completions_url(base_url)
        self.tokenizer_source = tokenizer or model
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.retry_backoff = retry_backoff
        self.logprobs = logprobs
        api_key = api_key or os.environ.get("OPENAI_API_KEY")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(headers=headers, timeout=timeout,
                                    limits=httpx.Limits(max_connections=concurrency))
        self._tokenizer: Any = tokenizer_obj  # a loaded tokenizer, else `tokenizer` is loaded on first use
        self._tokenizer_lock = threading.Lock()
        self.lora_name: str | None = None  # the adapter loaded by `use_lora`

    def use_lora(self, path: str, name: str, lora_id: int = 0) -> None:
        """Load the LoRA adapter saved at `path` (a folder the server can read) under `name`, generate through it
        from now on, and unload the previous one (`lora_id` is unused: vLLM's engine API takes it, its server
        does not)."""
        base = self.url.removesuffix("/completions")
        self._lora_post(f"{base}/load_lora_adapter", {"lora_name": name, "lora_path": path})
        previous, self.lora_name, self.model_id = self.lora_name, name, name
        if previous and previous != name:
            self._lora_post(f"{base}/unload_lora_adapter", {"lora_name": previous})

    def _lora_post(self, url: str, body: dict) -> None:
        try:
            response = self._client.post(url, json=body)
        except httpx.TransportError as exc:
            raise ServerError(f"cannot reach {url} ({type(exc).__name__}: {exc}); is the rollout server running?") \
                from exc
        if response.status_code in (404, 405):
            raise ServerError(f"{url} does not exist: the server cannot load LoRA adapters at runtime (vLLM: start "
                              f"it with --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True)")
        if response.status_code != 200:
            raise ServerError(f"{url} refused {body} (HTTP {response.status_code}: {response.text[:300]})")

    def close(self) -> None:
        self._client.close()

    # -- prompts ---------------------------------------------------------------------------------------------

    def chat_prompt(self, messages: list[Message]) -> str:
        return self._get_tokenizer().apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def _get_tokenizer(self) -> Any:
        with self._tokenizer_lock:
            if self._tokenizer is None:
                from transformers import AutoTokenizer

                try:
                    tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_source)
                except Exception as exc:
                    raise ValueError(
                        f"cannot load a tokenizer from {self.tokenizer_source!r} to render chat prompts for the "
                        f"openai backend ({type(exc).__name__}: {exc}); pass --tokenizer PATH, a local folder or "
                        f"Hub id holding the served model's tokenizer") from exc
                if not getattr(tokenizer, "chat_template", None):
                    raise ValueError(f"the tokenizer at {self.tokenizer_source!r} has no chat template; pass "
                                     f"--tokenizer PATH pointing at the served model's own tokenizer")
                self._tokenizer = tokenizer
            return self._tokenizer

    # -- generation ------------------------------------------------------------------------------------------

    def generate(self, prompts: list[str], params: SamplingParams) -> list[list[Completion]]:
        if not prompts:
            return []
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(prompts))) as pool:
            futures = [pool.submit(self._complete, prompt, params) for prompt in prompts]
            try:
                return [future.result() for future in futures]
            except BaseException:
                for future in futures:
                    future.cancel()
                raise

    def _complete(self, prompt: str, params: SamplingParams) -> list[Completion]:
        """All `params.n` completions of one prompt. Greedy decoding asks for one and repeats it (some servers
        refuse n > 1 without sampling); a server that returns fewer choices than asked for is asked again."""
        want = 1 if params.greedy else params.n
        completions: list[Completion] = []
        while len(completions) < want:
            body = {"model": self.model_id, "prompt": prompt, "n": want - len(completions),
                    "temperature": params.temperature, "top_p": params.top_p,
                    "max_tokens": params.max_new_tokens, "seed": params.seed + len(completions),
                    **params.sampler_options()}  # extra body parameters (vLLM, SGLang servers read them)
            if self.logprobs:
                body["logprobs"] = 1  # the sampled token's log-probability (and the one most likely token)
            if params.stop:
                body["stop"] = list(params.stop)
            got = parse_completions(self._post(body), params.stop)
            if not got:
                raise ServerError(f"{self.url} returned no choices for a completion request")
            completions.extend(got)
        completions = completions[:want]
        if params.greedy:
            completions = [completions[0]] + [_copy(completions[0]) for _ in range(params.n - 1)]
        return completions

    def _post(self, body: dict) -> dict:
        """POST with retries on connection errors, 429 and 5xx; any other error status fails at once."""
        for attempt in range(self.max_retries + 1):
            wait = self.retry_backoff * 2**attempt
            try:
                response = self._client.post(self.url, json=body)
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code == 200:
                    try:
                        return response.json()
                    except ValueError as exc:
                        raise ServerError(f"{self.url} answered with invalid JSON: {response.text[:200]!r}") from exc
                problem = f"HTTP {response.status_code}: {response.text[:500]}"
                if response.status_code != 429 and response.status_code < 500:
                    hint = (" (it may not serve log-probabilities: set the backend option logprobs: false)"
                            if "logprobs" in body and "logprob" in response.text.lower() else "")
                    raise ServerError(f"{self.url} refused the request ({problem}){hint}")
                retry_after = _retry_after(response)
                wait = wait if retry_after is None else retry_after
            if attempt < self.max_retries:
                time.sleep(wait)
        raise ServerError(f"cannot get a completion from {self.url} after {self.max_retries + 1} attempts "
                          f"({problem}); is the server running and serving model {self.model_id!r}?")


def parse_completions(payload: dict, stop: tuple[str, ...]) -> list[Completion]:
    """Turn one `/v1/completions` response (for a single prompt) into Completions, in choice order.

    The matched stop string comes from vLLM's `stop_reason` or SGLang's `matched_stop`; a stop string a server
    left in the text is cut here. `usage.completion_tokens` covers all choices: when the server gives no
    per-choice count it is split in proportion to text length (marked `completion_tokens_estimated`).
    """
    choices = sorted(payload.get("choices") or [], key=lambda choice: choice.get("index", 0))
    usage = payload.get("usage") or {}
    token_counts = _split_tokens(usage.get("completion_tokens") or 0, [c.get("text") or "" for c in choices])
    completions = []
    for choice, estimated_tokens in zip(choices, token_counts):
        text, stop_string = cut_at_stop(choice.get("text") or "", stop)
        metadata: dict[str, Any] = {}
        raw_finish = choice.get("finish_reason")
        matched = choice.get("stop_reason")
        if matched is None:
            matched = choice.get("matched_stop")
        if isinstance(matched, str) and matched in stop and raw_finish != "length":
            stop_string = matched
        elif isinstance(matched, int) and not isinstance(matched, bool):
            metadata["stop_token_id"] = matched
        if raw_finish not in ("stop", "length"):
            metadata["finish_reason_raw"] = raw_finish
        token_logprobs = (choice.get("logprobs") or {}).get("token_logprobs")
        if token_logprobs and all(isinstance(x, (int, float)) for x in token_logprobs):
            metadata["token_logprobs"] = [float(x) for x in token_logprobs]
        completion_tokens = (choice.get("usage") or {}).get("completion_tokens", choice.get("completion_tokens"))
        if completion_tokens is None:
            completion_tokens = estimated_tokens
            if len(choices) > 1:
                metadata["completion_tokens_estimated"] = True
        completions.append(Completion(
            text=text, prompt_tokens=usage.get("prompt_tokens") or 0, completion_tokens=int(completion_tokens),
            finish_reason="length" if raw_finish == "length" and stop_string is None else "stop",
            stop_string=stop_string, metadata=metadata))
    return completions


def _split_tokens(total: int, texts: list[str]) -> list[int]:
    """Split a token total over texts in proportion to their length (largest remainder, so the sum is exact).

    >>> _split_tokens(10, ["aaa", "a"]), _split_tokens(5, ["", ""]), _split_tokens(7, [])
    ([8, 2], [3, 2], [])
    """
    if not texts:
        return []
    weights = [max(len(t), 1) for t in texts]
    shares = [total * w / sum(weights) for w in weights]
    counts = [int(s) for s in shares]
    by_remainder = sorted(range(len(texts)), key=lambda i: counts[i] - shares[i])
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return min(float(response.headers.get("retry-after", "")), 60.0)
    except ValueError:
        return None


def _copy(completion: Completion) -> Completion:
    return Completion(text=completion.text, prompt_tokens=completion.prompt_tokens,
                      completion_tokens=completion.completion_tokens, finish_reason=completion.finish_reason,
                      stop_string=completion.stop_string, metadata=dict(completion.metadata))
