"""Sampler options (top_k, min_p) end to end: flags and YAML, every backend that supports them, GRPO rollouts,
and what runs record (run.json, every Sample's sampling) and compare on resume."""

from __future__ import annotations

import json

import pytest

from mathloop.backends.base import SamplingParams
from mathloop.backends.fake import FakeBackend
from mathloop.cli import build_parser, main
from mathloop.data.synthetic import generate_problems
from mathloop.pipeline.evaluate import EvalConfig, run_eval
from mathloop.records import Sample, read_records

PROBLEMS = generate_problems(3, seed=1)


def test_sampling_params_check_and_record_the_options():
    params = SamplingParams(n=2, temperature=0.7, top_k=20, min_p=0.05)
    assert params.sampler_options() == {"top_k": 20, "min_p": 0.05}
    assert params.to_dict()["top_k"] == 20 and params.to_dict()["min_p"] == 0.05
    assert SamplingParams().sampler_options() == {}  # at their defaults the options are not passed on at all
    with pytest.raises(ValueError, match="top_k must be >= 0"):
        SamplingParams(top_k=-1)
    with pytest.raises(ValueError, match=r"eval: min_p must be in \[0, 1\)"):
        EvalConfig(model="m", benchmarks=[], out="o", min_p=1.0).validate()


def test_hf_top_k_1_and_a_high_min_p_sample_the_greedy_answer(tiny_model_dir):
    from mathloop.backends import load_backend

    backend = load_backend("hf", str(tiny_model_dir), dtype="float32", batch_size=4)
    prompts = ["What is 2 + 3?", "Janet has 16 eggs."]
    greedy = [c[0].text for c in backend.generate(prompts, SamplingParams(max_new_tokens=8))]
    hot = dict(n=3, temperature=5.0, max_new_tokens=8, seed=1)
    for options in ({"top_k": 1}, {"min_p": 0.999}):
        sampled = backend.generate(prompts, SamplingParams(**hot, **options))
        assert [[c.text for c in cs] for cs in sampled] == [[g] * 3 for g in greedy], options
    unrestricted = backend.generate(prompts, SamplingParams(**hot))
    assert [[c.text for c in cs] for cs in unrestricted] != [[g] * 3 for g in greedy]


def test_vllm_and_openai_backends_pass_the_options_by_name(monkeypatch):
    import sys
    import types

    from mathloop.backends.vllm import VLLMBackend

    calls = []
    module = types.ModuleType("vllm")

    class LLM:
        def __init__(self, **kwargs):
            pass

        def get_tokenizer(self):
            return None

        def generate(self, prompts, sampling, use_tqdm, **kwargs):
            calls.append(sampling)
            return []

    module.LLM, module.SamplingParams = LLM, lambda **kwargs: kwargs
    monkeypatch.setitem(sys.modules, "vllm", module)
    VLLMBackend("m").generate(["p"], SamplingParams(n=2, temperature=1.0, top_k=5, min_p=0.1))
    assert calls[0]["top_k"] == 5 and calls[0]["min_p"] == 0.1

    from mathloop.backends.openai import OpenAIBackend

    bodies = []
    backend = OpenAIBackend("served", "http://localhost:1/v1", retry_backoff=0.0)
    monkeypatch.setattr(backend, "_post", lambda body: bodies.append(body) or {
        "choices": [{"index": 0, "text": "x", "finish_reason": "stop"}], "usage": {}})
    backend.generate(["p"], SamplingParams(temperature=1.0, top_k=5, min_p=0.1))
    assert bodies[0]["top_k"] == 5 and bodies[0]["min_p"] == 0.1  # extra body parameters, as vLLM servers read
    backend.generate(["p"], SamplingParams(temperature=1.0))
    assert "top_k" not in bodies[1] and "min_p" not in bodies[1]  # servers without them are not sent them


def test_eval_records_the_options_and_refuses_to_resume_with_others(tmp_path):
    config = EvalConfig(model="fake", benchmarks=[], out=str(tmp_path / "run"), n=2, temperature=0.7, shots=0, top_k=20,
                        min_p=0.05)
    run_eval(config, backend=FakeBackend(lambda prompt, i: "\\boxed{1}"), progress=False, problems={"p": PROBLEMS})
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["config"]["top_k"] == 20 and run["sampling"]["min_p"] == 0.05
    samples = read_records(Sample, tmp_path / "run" / "samples" / "p.jsonl")
    assert {(s.sampling["top_k"], s.sampling["min_p"]) for s in samples} == {(20, 0.05)}
    config.top_k = 10
    with pytest.raises(ValueError, match="top_k: 20 -> 10"):
        run_eval(config, backend=FakeBackend(lambda prompt, i: "x"), progress=False, problems={"p": PROBLEMS})


def test_flags_and_yaml_reach_every_sampling_stage(tmp_path, monkeypatch):
    parser = build_parser()
    for argv in (["eval", "--out", "o"], ["sample", "--problems", "p.jsonl", "--out", "o"]):
        args = parser.parse_args(argv + ["--top-k", "7", "--min-p", "0.2"])
        assert (args.top_k, args.min_p) == (7, 0.2)

    import mathloop.train.grpo as grpo

    seen = []
    monkeypatch.setattr(grpo, "train_grpo", lambda config: seen.append(config) or {})
    (tmp_path / "grpo.yaml").write_text("output_dir: out\nqueries: q.jsonl\nreward: verifier\nmin_p: 0.1\n")
    assert main(["grpo", "--config", str(tmp_path / "grpo.yaml"), "--top-k", "7"]) == 0
    assert (seen[0].top_k, seen[0].min_p) == (7, 0.1)

    from mathloop.backends.base import sampling_params
    from mathloop.pipeline.loop import loop_config_from_dict

    rollout = sampling_params(seen[0], n=seen[0].group_size)  # how GRPO samples its rollouts
    assert (rollout.top_k, rollout.min_p, rollout.n) == (7, 0.1, 8)
    loop = loop_config_from_dict({"model": "m", "output_dir": str(tmp_path / "loop"), "problems": "gsm8k:train",
                                  "heldout": "gsm8k:test", "sample": {"top_k": 3}, "eval": {"min_p": 0.3}})
    assert loop.sample_config("m", tmp_path, 0).top_k == 3 and loop.eval_config("m", tmp_path).min_p == 0.3
