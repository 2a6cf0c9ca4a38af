"""OpenAIBackend against a real local HTTP server that emulates vLLM's `/v1/completions`."""

import json
import random
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mathloop.backends import Backend, SamplingParams, load_backend
from mathloop.backends.openai import OpenAIBackend, ServerError, completions_url, parse_completions


class CompletionsHandler(BaseHTTPRequestHandler):
    """Answers like `vllm serve`. The prompt's last word picks the behaviour:
    TOOL stops at the "```output" stop string (reported in `stop_reason`), LONG runs out of tokens, LEAK leaves
    the stop string in the text, FEW returns one choice whatever n is, BAD is refused with 400; anything else
    returns n sampled answers. `server.failures` holds error statuses to answer with first."""

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        server = self.server
        with server.lock:
            server.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
            failure = server.failures.pop(0) if server.failures else None
        if failure is not None:
            return self.reply(failure, {"error": {"message": "server busy"}}, {"Retry-After": "0"})
        if self.path != "/v1/completions":
            return self.reply(404, {"error": "not found"})
        prompt, n, stop = body["prompt"], body["n"], body.get("stop", [])
        time.sleep(random.random() * 0.01)  # finish out of order under concurrency
        kind = prompt.split()[-1]
        if kind == "BAD":
            return self.reply(400, {"error": {"message": "max_tokens is too large"}})
        choices = []
        for i in range(1 if kind == "FEW" else n):
            choice = {"index": i, "text": f"sample {i} seed {body['seed']}: \\boxed{{{i}}}", "finish_reason": "stop",
                      "stop_reason": None, "logprobs": None}
            if body.get("logprobs") is not None and kind != "NOLOGPROBS":  # as vLLM: one entry per sampled token
                choice["logprobs"] = {"tokens": ["a", "b"], "token_logprobs": [-0.5, -1.5 - i], "top_logprobs": None}
            if kind == "TOOL":
                choice.update(text="x = 1\nprint(x)\n```\n", stop_reason=stop[0])
            elif kind == "LONG":
                choice.update(text=" ".join(["word"] * body["max_tokens"]), finish_reason="length")
            elif kind == "LEAK":
                choice.update(text="x = 2\n```output\n2\n```")
            choices.append(choice)
        usage = {"prompt_tokens": len(prompt.split()),
                 "completion_tokens": sum(len(c["text"].split()) for c in choices)}
        self.reply(200, {"id": "cmpl-1", "object": "text_completion", "model": body["model"], "choices": choices,
                         "usage": usage})

    def reply(self, status, payload, headers=None):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), CompletionsHandler)
    httpd.daemon_threads = True
    httpd.lock, httpd.requests, httpd.failures = threading.Lock(), [], []
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def tiny_tokenizer(tmp_path):
    """A word-level tokenizer with a ChatML-like chat template, saved like a model's tokenizer folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "<|im_start|>": 1, "<|im_end|>": 2, "user": 3, "assistant": 4}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", eos_token="<|im_end|>")
    fast.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    path = tmp_path / "tokenizer"
    fast.save_pretrained(path)
    return str(path)


def backend_for(server, **kwargs):
    kwargs.setdefault("retry_backoff", 0.0)
    return OpenAIBackend("served-model", server.url, **kwargs)


def test_sampling_params_and_choices(server):
    backend = backend_for(server)
    params = SamplingParams(n=2, temperature=0.7, top_p=0.8, max_new_tokens=5, seed=3, stop=("```output",))
    plain, tool, long = backend.generate(["q1", "q2 TOOL", "q3 LONG"], params)

    bodies = sorted((r["body"] for r in server.requests), key=lambda b: b["prompt"])
    assert bodies[0] == {"model": "served-model", "prompt": "q1", "n": 2, "temperature": 0.7, "top_p": 0.8,
                         "max_tokens": 5, "seed": 3, "stop": ["```output"], "logprobs": 1}
    assert {r["path"] for r in server.requests} == {"/v1/completions"}

    assert [c.text for c in plain] == ["sample 0 seed 3: \\boxed{0}", "sample 1 seed 3: \\boxed{1}"]
    assert all(c.finish_reason == "stop" and c.stop_string is None and c.prompt_tokens == 1 for c in plain)
    assert sum(c.completion_tokens for c in plain) == 10  # usage total (5 words each), split over the choices
    assert [(c.text, c.stop_string, c.finish_reason) for c in tool] == [("x = 1\nprint(x)\n```\n", "```output",
                                                                          "stop")] * 2
    assert [(c.finish_reason, c.stop_string) for c in long] == [("length", None)] * 2
    assert [c.completion_tokens for c in long] == [5, 5]


def test_token_logprobs_become_each_completions_metadata_and_can_be_turned_off(server):
    params = SamplingParams(n=2, temperature=0.7, max_new_tokens=5, seed=0)
    [[first, second]] = backend_for(server).generate(["q"], params)
    assert first.metadata["token_logprobs"] == [-0.5, -1.5] and second.metadata["token_logprobs"] == [-0.5, -2.5]
    [[plain, _]] = backend_for(server, logprobs=False).generate(["q NOLOGPROBS"], params)
    assert "logprobs" not in server.requests[-1]["body"] and "token_logprobs" not in plain.metadata


def test_prompt_order_is_kept_under_concurrency(server):
    prompts = [f"problem {i}" for i in range(24)]
    results = backend_for(server, concurrency=8).generate(prompts, SamplingParams(n=2))
    assert len(server.requests) == 24
    assert all(r["body"]["n"] == 1 for r in server.requests)  # greedy: one sample, repeated
    assert [len(r) for r in results] == [2] * 24
    assert [r[0].text for r in results] == ["sample 0 seed 0: \\boxed{0}"] * 24
    assert [r[0].prompt_tokens for r in results] == [2] * 24
    assert backend_for(server).generate([], SamplingParams()) == []


def test_stop_string_left_in_text_is_cut(server):
    [[completion]] = backend_for(server).generate(["q LEAK"], SamplingParams(stop=("```output",)))
    assert (completion.text, completion.stop_string) == ("x = 2\n", "```output")


def test_server_returning_fewer_choices_is_asked_again(server):
    [completions] = backend_for(server).generate(["q FEW"], SamplingParams(n=3, temperature=1.0, seed=10))
    assert [r["body"]["n"] for r in server.requests] == [3, 2, 1]
    assert [c.text for c in completions] == [f"sample 0 seed {s}: \\boxed{{0}}" for s in (10, 11, 12)]


def test_retries_on_503_and_429_then_succeeds(server):
    server.failures = [503, 429, 502]
    [[completion]] = backend_for(server, max_retries=3).generate(["q"], SamplingParams())
    assert completion.text == "sample 0 seed 0: \\boxed{0}"
    assert len(server.requests) == 4


def test_gives_up_after_retries(server):
    server.failures = [503] * 3
    with pytest.raises(ServerError, match=r"after 3 attempts \(HTTP 503") as error:
        backend_for(server, max_retries=2).generate(["q"], SamplingParams())
    assert server.url in str(error.value)


def test_client_errors_are_not_retried(server):
    with pytest.raises(ServerError, match="max_tokens is too large"):
        backend_for(server, max_retries=3).generate(["q BAD"], SamplingParams())
    assert len(server.requests) == 1


def test_unreachable_server_names_the_url():
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    backend = OpenAIBackend("m", f"http://127.0.0.1:{port}/v1", max_retries=1, retry_backoff=0.0)
    with pytest.raises(ServerError, match=rf"http://127\.0\.0\.1:{port}/v1/completions after 2 attempts"):
        backend.generate(["q"], SamplingParams())


def test_api_key_from_argument_or_environment(server, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    backend_for(server).generate(["q"], SamplingParams())
    backend_for(server, api_key="sk-arg").generate(["q"], SamplingParams())
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    backend_for(server).generate(["q"], SamplingParams())
    assert [r["auth"] for r in server.requests] == [None, "Bearer sk-arg", "Bearer sk-env"]


def test_chat_prompt_renders_with_local_tokenizer(server, tiny_tokenizer):
    backend = load_backend("openai", "served-model", base_url=server.url, tokenizer=tiny_tokenizer)
    assert isinstance(backend, Backend) and backend.name == "openai"
    assert backend._tokenizer is None  # loaded on first use only
    messages = [{"role": "system", "content": "Reason."}, {"role": "user", "content": "1+1?"}]
    assert backend.chat_prompt(messages) == ("<|im_start|>system\nReason.<|im_end|>\n"
                                             "<|im_start|>user\n1+1?<|im_end|>\n<|im_start|>assistant\n")


def test_missing_tokenizer_says_pass_tokenizer(tmp_path):
    (tmp_path / "empty").mkdir()
    backend = OpenAIBackend("m", "http://127.0.0.1:1", tokenizer=str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="--tokenizer PATH"):
        backend.chat_prompt([{"role": "user", "content": "hi"}])


def test_completions_url():
    assert completions_url("http://h:8000") == "http://h:8000/v1/completions"
    assert completions_url("http://h:8000/v1/") == "http://h:8000/v1/completions"


def test_parse_completions_other_servers():
    payload = {"choices": [
        {"index": 1, "text": "b", "finish_reason": "stop", "matched_stop": 151645},  # SGLang: EOS token id
        {"index": 0, "text": "a\n```output\n", "finish_reason": "stop", "matched_stop": "```output"},
        {"index": 2, "text": "c c c ```output x", "finish_reason": "length"},  # stop string left in text
        {"index": 3, "text": "", "finish_reason": "abort"},
    ], "usage": {"prompt_tokens": 4, "completion_tokens": 9}}
    a, b, c, d = parse_completions(payload, ("```output",))
    assert (a.text, a.stop_string, a.finish_reason) == ("a\n", "```output", "stop")
    assert (b.text, b.stop_string, b.metadata["stop_token_id"]) == ("b", None, 151645)
    assert (c.text, c.stop_string, c.finish_reason) == ("c c c ", "```output", "stop")
    assert d.metadata["finish_reason_raw"] == "abort"
    assert sum(x.completion_tokens for x in (a, b, c, d)) == 9 and a.prompt_tokens == 4
    assert a.metadata["completion_tokens_estimated"] is True
