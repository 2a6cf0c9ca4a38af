"""The hf backend on a tiny random-weight model built in the test."""

from __future__ import annotations

import dataclasses

import pytest

from mathloop.backends import load_backend
from mathloop.backends.base import SamplingParams

pytest.importorskip("torch")


@pytest.fixture(scope="module", params=[False, True], ids=["static", "refill"])
def backend(tiny_model_dir, request):
    return load_backend("hf", str(tiny_model_dir), dtype="float32", batch_size=4, refill=request.param)


PROMPTS = ["What is 2 + 3?", "Janet has 16 eggs.", "Let x = 7", "print(1 + 2)", "The answer is", "sells"]


def test_chat_prompt_uses_the_models_template(backend):
    text = backend.chat_prompt([{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}])
    assert text == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n"


def test_greedy_batched_equals_one_at_a_time(backend, tiny_model_dir):
    params = SamplingParams(max_new_tokens=12)
    batched = backend.generate(PROMPTS, params)
    single = load_backend("hf", str(tiny_model_dir), dtype="float32", batch_size=1).generate(PROMPTS, params)
    assert [c[0].text for c in batched] == [c[0].text for c in single]
    assert all(c[0].completion_tokens <= 12 for c in batched)
    assert all(c[0].prompt_tokens > 0 for c in batched)


def test_refill_and_static_batches_give_the_same_greedy_text(tiny_model_dir):
    params = SamplingParams(max_new_tokens=10)
    static = load_backend("hf", str(tiny_model_dir), dtype="float32", batch_size=4, refill=False)
    refill = load_backend("hf", str(tiny_model_dir), dtype="float32", batch_size=4)
    a, b = static.generate(PROMPTS, params), refill.generate(PROMPTS, params)
    assert [c[0].text for c in a] == [c[0].text for c in b]
    assert [c[0].completion_tokens for c in a] == [c[0].completion_tokens for c in b]
    assert [c[0].finish_reason for c in a] == [c[0].finish_reason for c in b]


def test_n_samples_per_prompt_and_seeded_sampling(backend):
    params = SamplingParams(n=3, temperature=1.0, top_p=0.95, max_new_tokens=8, seed=7)
    first = backend.generate(PROMPTS[:2], params)
    again = backend.generate(PROMPTS[:2], params)
    assert [len(c) for c in first] == [3, 3]
    assert [[x.text for x in c] for c in first] == [[x.text for x in c] for c in again]
    assert len({x.text for x in first[0]}) > 1  # random weights at temperature 1 do not repeat themselves


def test_length_finish_reason(backend):
    out = backend.generate(["What is 2 + 3?"], SamplingParams(max_new_tokens=3))[0][0]
    if out.finish_reason == "length":
        assert out.completion_tokens == 3
    else:
        assert out.completion_tokens < 3


def test_stop_strings_cut_the_text(backend):
    free = backend.generate(PROMPTS, SamplingParams(max_new_tokens=16))
    # Use a piece of each greedy continuation as its stop string: generation must end there and drop it.
    for prompt, outs in zip(PROMPTS, free):
        text = outs[0].text
        # Byte-level pieces of random weights can decode differently alone and in context; use word text.
        if len(text) < 8 or not text[:8].replace(" ", "").isalpha():
            continue
        stop = text[1:6]
        cut = backend.generate([prompt], SamplingParams(max_new_tokens=16, stop=(stop,)))[0][0]
        assert cut.stop_string == stop and cut.finish_reason == "stop"
        assert cut.text == text[:text.find(stop)]
        return
    pytest.skip("no continuation long enough to test stop strings")


def test_continuous_batching_matches_static_batches(tiny_model_dir):
    static = load_backend("hf", str(tiny_model_dir), dtype="float32", batch_size=4)
    continuous = load_backend("hf", str(tiny_model_dir), dtype="float32", continuous_batching=True)
    params = SamplingParams(max_new_tokens=10)
    a, b = static.generate(PROMPTS, params), continuous.generate(PROMPTS, params)
    assert [c[0].text for c in a] == [c[0].text for c in b]
    assert [c[0].completion_tokens for c in a] == [c[0].completion_tokens for c in b]
    assert [c[0].finish_reason for c in a] == [c[0].finish_reason for c in b]
    assert [c[0].prompt_tokens for c in a] == [c[0].prompt_tokens for c in b]


def test_continuous_batching_samples_n_per_prompt_reproducibly(tiny_model_dir):
    backend = load_backend("hf", str(tiny_model_dir), dtype="float32", continuous_batching=True)
    params = SamplingParams(n=3, temperature=1.0, top_p=0.95, max_new_tokens=8, seed=7)
    first, again = backend.generate(PROMPTS[:2], params), backend.generate(PROMPTS[:2], params)
    assert [len(c) for c in first] == [3, 3]
    assert [[x.text for x in c] for c in first] == [[x.text for x in c] for c in again]
    assert len({x.text for x in first[0]}) > 1
    assert all(x.completion_tokens <= 8 for c in first for x in c)




@pytest.mark.parametrize("batch_size", [2, 3, 8])
def test_refill_gives_each_sequence_its_own_logits(tiny_model_dir, monkeypatch, batch_size):
    """Rows that join, leave and share a padded cache get, at every step, the logits of their sequence computed
    alone (batch 1, no padding), and sequences end at different steps."""
    import torch

    from mathloop.backends.hf import _Refill

    seen: list[tuple[list[int], torch.Tensor]] = []
    choose = _Refill._choose

    def recording(self, rows, logits):
        seen.extend((job.prompt_ids + job.generated, row.clone()) for job, row in zip(rows, logits))
        return choose(self, rows, logits)

    monkeypatch.setattr(_Refill, "_choose", recording)
    backend = load_backend("hf", str(tiny_model_dir), dtype="float32", batch_size=batch_size, refill=True)
    backend.eos_token_ids = [*backend.eos_token_ids, *range(100, 130)]  # about 1 in 10 sampled tokens ends a row
    prompts = [p * k for k in (1, 3) for p in PROMPTS]  # 12 prompts of 2 to 21 tokens
    results = backend.generate(prompts, SamplingParams(n=2, temperature=1.0, max_new_tokens=10, seed=3))
    lengths = [c.completion_tokens for r in results for c in r]
    assert len(set(lengths)) > 3 and len(seen) == sum(lengths) + sum(c.finish_reason == "stop" for r in results
                                                                      for c in r)
    with torch.inference_mode():
        worst = max((backend.model(torch.tensor([ids], device=backend.model.device)).logits[0, -1] - row).abs().max()
                    .item() for ids, row in seen)
    assert worst < 1e-4, worst



def test_refill_alone_is_plain_greedy_decoding(tiny_model_dir):
    params = SamplingParams(max_new_tokens=12)
    plain = load_backend("hf", str(tiny_model_dir), dtype="float32", batch_size=1).generate(PROMPTS, params)
    refill = load_backend("hf", str(tiny_model_dir), dtype="float32", batch_size=1, refill=True)
    assert [c[0].text for c in refill.generate(PROMPTS, params)] == [c[0].text for c in plain]


def test_refill_applies_the_models_repetition_penalty_as_generate_does(tiny_model_dir):
    params = SamplingParams(max_new_tokens=12)
    static = load_backend("hf", str(tiny_model_dir), dtype="float32", batch_size=1)
    refill = load_backend("hf", str(tiny_model_dir), dtype="float32", batch_size=4, refill=True)
    plain = [c[0].text for c in static.generate(PROMPTS, params)]
    for backend in (static, refill):
        backend.model.generation_config.repetition_penalty = 1.5
    penalized = [c[0].text for c in static.generate(PROMPTS, params)]
    assert [c[0].text for c in refill.generate(PROMPTS, params)] == penalized != plain



def test_refill_falls_back_to_static_batches_for_a_sliding_window_cache(tiny_model_dir, caplog):
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, use_sliding_window=True, sliding_window=8,
                         max_window_layers=1, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = Qwen2ForCausalLM(config)
    params = SamplingParams(max_new_tokens=6)
    static = load_backend("hf", "sliding", model_obj=model, tokenizer_obj=tokenizer, batch_size=4)
    refill = load_backend("hf", "sliding", model_obj=model, tokenizer_obj=tokenizer, batch_size=4, refill=True)
    with caplog.at_level("WARNING"):
        got = refill.generate(PROMPTS, params)
    assert [c[0].text for c in got] == [c[0].text for c in static.generate(PROMPTS, params)]
    assert "static batches" in caplog.text and not refill.refill


def test_a_sample_draws_the_same_tokens_whatever_shares_its_batch(tiny_model_dir):
    """Issue 28 item 2: each sample is seeded by (run seed, key, sample index) alone, so batch size, the other prompts
    of a call, their order and the decoding loop (refill or static batches) do not change its tokens."""
    params = SamplingParams(n=3, temperature=1.0, top_p=0.95, max_new_tokens=10, seed=11)
    keys = [f"p/{i}" for i in range(len(PROMPTS))]
    runs = []
    for batch_size, refill in ((1, True), (4, True), (5, False), (16, True)):
        backend = load_backend("hf", str(tiny_model_dir), dtype="float32", batch_size=batch_size, refill=refill)
        runs.append([[c.text for c in r] for r in backend.generate(PROMPTS, params, seed_keys=keys)])
    assert all(run == runs[0] for run in runs[1:])
    alone = backend.generate(PROMPTS[4:1:-1], params, seed_keys=keys[4:1:-1])  # a subset, other order
    assert [[c.text for c in r] for r in alone] == runs[0][4:1:-1]
    other_seed = backend.generate(PROMPTS, dataclasses.replace(params, seed=12), seed_keys=keys)
    assert [[c.text for c in r] for r in other_seed] != runs[0]
    assert len({text for r in runs[0] for text in r}) > len(PROMPTS)  # samples of one prompt differ


def test_each_generated_tokens_log_probability_is_the_models(backend, monkeypatch):
    """Issue 32: token_logprobs (Sample.confidence) are log p(token | prefix) of a direct forward pass."""
    import torch

    finished = []
    advance = type(backend)._advance

    def recording(self, job, *args):
        completion = advance(self, job, *args)
        if completion is not None:
            finished.append((job.prompt_ids + job.generated, len(job.prompt_ids), completion))
        return completion

    monkeypatch.setattr(type(backend), "_advance", recording)
    backend.generate(PROMPTS[:3], SamplingParams(n=2, temperature=0.8, max_new_tokens=6, seed=3))
    assert len(finished) == 6
    for ids, prompt_length, completion in finished:
        with torch.inference_mode():
            logp = torch.log_softmax(backend.model(torch.tensor([ids])).logits[0, :-1].float(), dim=-1)
        direct = logp[prompt_length - 1:].gather(1, torch.tensor(ids[prompt_length:])[:, None])[:, 0].tolist()
        assert completion.metadata["token_logprobs"] == pytest.approx(direct, abs=1e-4)
