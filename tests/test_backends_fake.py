"""The scripted FakeBackend and the backend registry."""

import pytest

from mathloop.backends import Backend, SamplingParams, load_backend
from mathloop.backends.fake import FakeBackend


def texts(results):
    return [[c.text for c in completions] for completions in results]


def test_default_response_has_a_boxed_answer_and_n_per_prompt():
    fake = FakeBackend()
    results = fake.generate(["p1", "p2"], SamplingParams(n=3))
    assert [len(r) for r in results] == [3, 3]
    assert all(c.text.endswith("\\boxed{0}.") and c.finish_reason == "stop" for r in results for c in r)


def test_callable_gets_prompt_and_sample_index():
    fake = FakeBackend(lambda prompt, i: f"{prompt}-{i}")
    assert texts(fake.generate(["a", "b"], SamplingParams(n=2, temperature=0.7))) == [["a-0", "a-1"], ["b-0", "b-1"]]


def test_dict_picks_by_substring_and_falls_back_to_default():
    fake = FakeBackend({"2+2": "\\boxed{4}", "3*3": "\\boxed{9}"})
    results = texts(fake.generate(["what is 3*3?", "what is 2+2?", "other"], SamplingParams()))
    assert results == [["\\boxed{9}"], ["\\boxed{4}"], ["The answer is \\boxed{0}."]]


def test_list_cycles_across_calls():
    fake = FakeBackend(["x", "y", "z"])
    assert texts(fake.generate(["p"], SamplingParams(n=2))) == [["x", "y"]]
    assert texts(fake.generate(["p", "q"], SamplingParams())) == [["z"], ["x"]]


def test_stop_strings_are_cut_and_reported():
    fake = FakeBackend(["x = 1\nprint(x)\n```\n```output\n1\n```"])
    [[completion]] = fake.generate(["p"], SamplingParams(stop=("```output",)))
    assert completion.text == "x = 1\nprint(x)\n```\n"
    assert (completion.finish_reason, completion.stop_string) == ("stop", "```output")


def test_max_new_tokens_truncates_with_length_finish():
    fake = FakeBackend(["one two  three four ```output five"])
    [[completion]] = fake.generate(["a b"], SamplingParams(max_new_tokens=3, stop=("```output",)))
    assert completion.text == "one two  three"
    assert (completion.finish_reason, completion.stop_string) == ("length", None)
    assert (completion.prompt_tokens, completion.completion_tokens) == (2, 3)
    [[completion]] = fake.generate(["a b"], SamplingParams(max_new_tokens=4, stop=("```output",)))
    assert (completion.text, completion.finish_reason) == ("one two  three four ", "stop")


def test_calls_are_recorded_for_batching_asserts():
    fake = FakeBackend()
    params = SamplingParams(n=2)
    fake.generate(["a", "b"], params)
    fake.generate(["c"], params)
    assert fake.calls == [(["a", "b"], params), (["c"], params)]


def test_chat_prompt_template():
    messages = [{"role": "system", "content": "Reason step by step."}, {"role": "user", "content": "1+1?"}]
    assert FakeBackend().chat_prompt(messages) == "<|system|>\nReason step by step.\n<|user|>\n1+1?\n<|assistant|>\n"


def test_rejects_bad_responses():
    with pytest.raises(TypeError):
        FakeBackend(responses=42)
    with pytest.raises(ValueError):
        FakeBackend(responses=[])


def test_load_backend_by_name():
    fake = load_backend("fake", "tiny-model", responses=["hi"])
    assert isinstance(fake, FakeBackend) and isinstance(fake, Backend)
    assert (fake.name, fake.model_id) == ("fake", "tiny-model")
    with pytest.raises(ValueError, match="hf, openai, vllm, openvino, fake"):
        load_backend("nope", "m")
