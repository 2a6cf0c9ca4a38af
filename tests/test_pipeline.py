"""`mathloop eval` and `mathloop grade` end to end on the real data folder, with the fake backend."""

from __future__ import annotations

import json

import pytest

from mathloop.backends.fake import FakeBackend
from mathloop.cli import main
from mathloop.metrics import mean_stderr
from mathloop.pipeline.evaluate import EvalConfig, run_eval
from mathloop.pipeline.grade import grade_file
from mathloop.records import Sample, read_records


def answer_gsm8k_by_index(prompt: str, index: int) -> str:
    """Right on Janet's ducks (gold 18), wrong elsewhere; sample 1 never answers."""
    if index == 1:
        return "I am not sure."
    return "So she makes $\\boxed{18}$ dollars." if "Janet" in prompt else "The answer is \\boxed{-1}."


def config(tmp_path, data_dir, **kw) -> EvalConfig:
    base = dict(model="fake", benchmarks=["gsm8k"], out=str(tmp_path / "run"), backend="fake", limit=4,
                data_dir=str(data_dir))
    return EvalConfig(**{**base, **kw})


def test_eval_writes_samples_metrics_table_and_run_record(tmp_path, data_dir):
    summary = run_eval(config(tmp_path, data_dir, n=3, temperature=0.7, top_p=0.8),
                       backend=FakeBackend(answer_gsm8k_by_index), progress=False)
    out = tmp_path / "run"
    samples = read_records(Sample, out / "samples" / "gsm8k.jsonl")
    assert len(samples) == 12
    janet = [s for s in samples if s.problem_id == "gsm8k/0"]
    assert sorted(s.verdict for s in janet) == ["correct", "correct", "no_answer"]
    assert all(s.model == "fake" and s.sampling["temperature"] == 0.7 and s.gold for s in samples)
    gsm = summary["benchmarks"]["gsm8k"]
    assert gsm["acc"]["mean"] == pytest.approx(0.25)
    assert gsm["pass@2"]["mean"] == pytest.approx(0.25)  # Janet: n=3, c=2 -> pass@2 = 1; others 0
    assert gsm["maj@3"]["mean"] == pytest.approx(0.25)
    assert (gsm["correct"], gsm["incorrect"], gsm["no_answer"]) == (2, 6, 4)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["benchmarks"]["gsm8k"]["acc"]["mean"] == pytest.approx(0.25)
    assert metrics["schema"] == "mathloop.metrics/1" and metrics["scale"] == "fraction"
    assert metrics["benchmarks"]["gsm8k"]["acc"]["stderr"] == pytest.approx(mean_stderr([1, 0, 0, 0]))
    assert "| gsm8k |" in (out / "results.md").read_text()
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["n"] == 3 and run["sampling"]["top_p"] == 0.8 and "transformers" in run["versions"]
    # the same numbers in lm-evaluation-harness's results layout, the settings beside them
    harness = json.loads((out / "results.json").read_text())
    task = harness["results"]["gsm8k"]
    assert task["acc,none"] == pytest.approx(0.25) and task["maj@3,none"] == pytest.approx(0.25)
    assert task["acc_stderr,none"] == pytest.approx(metrics["benchmarks"]["gsm8k"]["acc"]["stderr"])
    assert harness["mathloop_ci95"]["gsm8k"]["acc,none"] == metrics["benchmarks"]["gsm8k"]["acc"]["ci95"]
    assert harness["n-samples"]["gsm8k"] == {"original": 1319, "effective": 4} and harness["n-shot"]["gsm8k"] == 0
    assert harness["configs"]["gsm8k"]["generation_kwargs"]["top_p"] == 0.8
    assert harness["configs"]["gsm8k"]["metadata"]["sha256"] == run["data"]["gsm8k:test"]["sha256"]
    assert harness["config"]["model_args"] == "pretrained=fake" and harness["config"]["random_seed"] == 0


def test_resume_skips_finished_problems_and_regenerates_half_done_ones(tmp_path, data_dir):
    backend = FakeBackend(answer_gsm8k_by_index)
    run_eval(config(tmp_path, data_dir, limit=2, n=2, temperature=1.0), backend=backend, progress=False)
    path = tmp_path / "run" / "samples" / "gsm8k.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:3]) + "\n" + lines[3][:20])  # a kill: one problem half done, a torn line
    backend.calls.clear()
    run_eval(config(tmp_path, data_dir, limit=3, n=2, temperature=1.0), backend=backend, progress=False)
    samples = read_records(Sample, path)
    assert sorted((s.problem_id, s.sample_index) for s in samples) == [
        (f"gsm8k/{i}", j) for i in range(3) for j in range(2)]
    generated = [p for prompts, _ in backend.calls for p in prompts]
    assert len(generated) == 2  # the half-done problem and the new third one, nothing else
    backend.calls.clear()
    run_eval(config(tmp_path, data_dir, limit=3, n=2, temperature=1.0), backend=backend, progress=False)
    assert backend.calls == []


def test_resume_with_other_settings_is_refused(tmp_path, data_dir):
    run_eval(config(tmp_path, data_dir, limit=1), backend=FakeBackend(), progress=False)
    with pytest.raises(ValueError, match=r"temperature: 0.0 -> 0.7"):
        run_eval(config(tmp_path, data_dir, limit=1, temperature=0.7), backend=FakeBackend(), progress=False)


def test_multiple_choice_benchmark_uses_letters_and_fewshot(tmp_path, data_dir):
    backend = FakeBackend(lambda prompt, i: "The answer is $\\boxed{C}$.")
    summary = run_eval(config(tmp_path, data_dir, benchmarks=["mmlu_stem"], limit=3), backend=backend,
                       progress=False)
    sample = read_records(Sample, tmp_path / "run" / "samples" / "mmlu_stem.jsonl")[0]
    assert sample.prompt.count("Answer Choices:") == 6  # 5 examples + the question
    assert sample.pred == "C" and sample.gold == "C" and sample.verdict == "correct"
    assert summary["benchmarks"]["mmlu_stem"]["n_problems"] == 3


def test_grade_reads_official_harness_rows(tmp_path):
    rows = [
        {"idx": 0, "question": "q0", "gt": "18", "code": ["\\boxed{18}", "\\boxed{18.0}", "\\boxed{17}", "none"],
         "pred_score": [[0.1], [0.9], [0.5], [0.2]]},
        {"idx": 1, "question": "q1", "gt": "\\frac{1}{2}", "code": ["\\boxed{2}", "\\boxed{3}", "\\boxed{0.5}",
                                                                    "\\boxed{3}"],
         "pred_score": [[0.3], [0.1], [0.8], [0.2]]},
        {"idx": 2, "question": "q2", "gt": "B", "code": ["The answer is (B)", "\\boxed{A}", "\\boxed{A}",
                                                         "\\boxed{A}"],
         "pred_score": [[0.0], [0.1], [0.2], [0.3]]},
    ]
    src = tmp_path / "official.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    metrics = grade_file(src, tmp_path / "graded.jsonl", tmp_path / "metrics.json", workers=1)
    graded = [json.loads(line) for line in (tmp_path / "graded.jsonl").read_text().splitlines()]
    assert [g["idx"] for g in graded] == [0, 1, 2] and graded[0]["pred_score"] == rows[0]["pred_score"]
    assert graded[0]["mathloop"] == {"preds": ["18", "18.0", "17", None],
                                     "verdicts": ["correct", "correct", "incorrect", "no_answer"]}
    assert graded[2]["mathloop"]["verdicts"] == ["correct", "incorrect", "incorrect", "incorrect"]
    entry = metrics["benchmarks"]["all"]  # harness rows name no benchmark; fractions, as eval's metrics.json
    assert metrics["scale"] == "fraction" and entry["n_problems"] == 3 and entry["n_samples"] == 12
    assert entry["acc"]["mean"] == pytest.approx(2 / 3)  # rows 0 and 2 right on the first response
    assert entry["maj@4"]["mean"] == pytest.approx(1 / 3)  # row 0: 18 wins; row 1: 3 wins; row 2: A wins
    assert entry["rm@4"]["mean"] == pytest.approx(2 / 3)  # row 0: 18.0 (0.9); row 1: 0.5 (0.8); row 2: A
    assert entry["pass@4"]["mean"] == pytest.approx(1.0)
    assert entry["pass@1"]["mean"] == pytest.approx((2 / 4 + 1 / 4 + 1 / 4) / 3)
    assert entry["acc"]["stderr"] == pytest.approx(mean_stderr([1, 0, 1]))
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics


def test_grade_reads_mathloop_samples_and_rejects_unknown_rows(tmp_path):
    samples = [Sample(problem_id="p", prompt="", response="\\boxed{4}", gold="4", sample_index=0),
               Sample(problem_id="p", prompt="", response="\\boxed{5}", gold="4", sample_index=1)]
    src = tmp_path / "samples.jsonl"
    src.write_text("".join(json.dumps(s.__dict__) + "\n" for s in samples))
    metrics = grade_file(src, tmp_path / "out.jsonl", workers=1)
    entry = metrics["benchmarks"][samples[0].benchmark or "all"]
    assert entry["n_problems"] == 1 and entry["acc"]["mean"] == 1.0 and entry["pass@2"]["mean"] == 1.0
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"foo": 1}\n')
    assert main(["grade", "--input", str(bad), "--output", str(tmp_path / "o.jsonl")]) == 2


def test_cli_errors_are_one_line(tmp_path, capsys):
    code = main(["eval", "--model", "fake", "--benchmarks", "gsm9k", "--out", str(tmp_path / "r"),
                 "--data-dir", str(tmp_path)])
    assert code == 2
    assert "unknown benchmark 'gsm9k'" in capsys.readouterr().err


def test_tir_eval_runs_model_code_in_the_sandbox_and_records_spans(tmp_path, data_dir):
    """A scripted model writes Python for Janet's ducks; the real sandbox runs it; the answer uses its output."""
    def tir_model(prompt: str, index: int) -> str:
        if "```output" not in prompt:
            return "Let me compute.\n```python\neggs = 16 - 3 - 4\nprint(eggs * 2)\n```\n```output\n"
        printed = prompt.rsplit("```output\n", 1)[1].split("\n```", 1)[0]
        return f"She makes $\\boxed{{{printed}}}$ dollars."

    summary = run_eval(config(tmp_path, data_dir, mode="tir", limit=1), backend=FakeBackend(tir_model),
                       progress=False)
    sample = read_records(Sample, tmp_path / "run" / "samples" / "gsm8k.jsonl")[0]
    assert sample.mode == "tir" and sample.metadata["tool_calls"] == 1
    assert "integrate natural language reasoning with programs" in sample.prompt
    (start, end), = sample.tool_output_spans
    assert sample.response[start:end] == "\n18\n```\n"
    assert sample.pred == "18" and sample.verdict == "correct"
    assert summary["benchmarks"]["gsm8k"]["acc"]["mean"] == 1.0
