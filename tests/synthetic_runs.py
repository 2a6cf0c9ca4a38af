"""A synthetic loop folder in the layout `mathloop loop` writes (no model): evaluations of rounds 0, 1 and GRPO, round 1's
training samples with RM scores, RM / SFT / GRPO metrics.jsonl, decontamination and selection reports. Used by the
report tests and by bench/report.py (any size)."""

from __future__ import annotations

import json
import random
from pathlib import Path

from mathloop.metrics import summarize
from mathloop.records import Sample, write_jsonl

TIR_RESPONSE = ("Let me compute $\\frac{{a}}{{b}}$ with Python.\n```python\nprint({a} / {b})\n```\n```output"
                "\n{value}\n```\nSo the answer is $\\boxed{{{answer}}}$.")
COT_RESPONSE = ("We have $x^2 + {a}x = {b}$, so \\[x = \\frac{{-{a} \\pm \\sqrt{{{a}^2 + 4 \\cdot {b}}}}}{{2}}.\\]"
                " Step {i}: adding gives {answer}. The answer is $\\boxed{{{answer}}}$.")


def _sample(rng: random.Random, benchmark: str, problem: int, index: int, p_correct: float, mode: str,
            rm: bool) -> Sample:
    a, b = rng.randint(2, 9), rng.randint(10, 99)
    gold = str(a + b)
    correct = rng.random() < p_correct
    answer = gold if correct else str(a + b + rng.randint(1, 5))
    if mode == "tir":
        response = TIR_RESPONSE.format(a=a, b=b, value=round(a / b, 6), answer=answer)
        start = response.index("```output") + len("```output")
        spans = [[start, response.index("So the answer")]]
    else:
        response = COT_RESPONSE.format(a=a, b=b, i=index, answer=answer)
        spans = []
    return Sample(problem_id=f"{benchmark}/{problem}", prompt="<|im_start|>user\nQ<|im_end|>", response=response,
                  mode=mode, benchmark=benchmark, sample_index=index, gold=gold, pred=answer,
                  verdict="correct" if correct else "incorrect", rm_score=round(rng.gauss(1.0 if correct else -1.0, 1), 3)
                  if rm else None, completion_tokens=len(response) // 4, finish_reason="stop",
                  tool_output_spans=spans,
                  question=f"Problem {problem}: solve $x^2 + {a}x = {b}$ and add {a} to {b}.")


def _eval_folder(folder: Path, rng: random.Random, problems: int, p_correct: float, mode: str) -> None:
    samples = [_sample(rng, "gsm8k", i, 0, p_correct, mode, rm=False) for i in range(problems)]
    write_jsonl(folder / "samples" / "gsm8k.jsonl", samples)
    summary = summarize([{"benchmark": s.benchmark, "verdicts": [s.verdict], "preds": [s.pred]} for s in samples], [1])
    (folder / "metrics.json").write_text(json.dumps(summary))


def write_loop_folder(root: Path, heldout: int = 40, train_problems: int = 20, train_n: int = 4,
                      grpo_steps: int = 6, seed: int = 0) -> Path:
    """A loop folder with 3 * `heldout` evaluation samples and `train_problems` * `train_n` training samples."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "decontamination.json").write_text(json.dumps(
        {"problems": train_problems + 1, "removed": 1, "per_benchmark": {"math500": 1},
         "examples": [{"id": "train/planted", "benchmark": "math500", "test_id": "math500/7", "rule": "13-gram",
                       "overlap": "what is the smallest positive integer n such that"}]}))
    _eval_folder(root / "round-0" / "eval", rng, heldout, 0.4, "cot")
    r1 = root / "round-1"
    write_jsonl(r1 / "samples.jsonl", [_sample(rng, "gsm8k_train", p, i, 0.5, "tir" if p % 2 else "cot", rm=True)
                                       for p in range(train_problems) for i in range(train_n)])
    (r1 / "select.json").write_text(json.dumps(
        {"problems": train_problems, "kept_problems": train_problems - 2, "selected": 2 * (train_problems - 2),
         "dropped": {"no correct response": 2}, "truncated_responses": 1, "duplicate_responses": 3,
         "decontamination": {"removed": 0}, "rows": 2 * (train_problems - 2)}))
    (r1 / "rm").mkdir(parents=True)
    (r1 / "rm" / "rm_data.jsonl").write_text("")
    (r1 / "rm" / "run.json").write_text(json.dumps({"data": {"groups": train_problems, "positives": 40,
                                                             "negatives": 40, "dropped": {"all correct": 3}}}))
    (r1 / "rm" / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "loss": 1.8 / s, "lr": 1e-5, **({"heldout_accuracy": 0.7} if s == 5 else {})}) + "\n"
        for s in range(1, 6)))
    (r1 / "sft").mkdir()
    (r1 / "sft" / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "loss": 0.5 * 0.9 ** s, "learning_rate": 2e-5, "grad_norm": 1.0}) + "\n"
        for s in range(1, 11)))
    _eval_folder(r1 / "eval", rng, heldout, 0.55, "cot")
    grpo = root / "grpo-after-round-1"
    (grpo / "rollouts").mkdir(parents=True)
    (grpo / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "reward_mean": 0.2 + 0.05 * s, "reward_std": 0.3, "accuracy": 0.4 + 0.04 * s,
                    "kl": 0.001 * s, "loss": 0.01, "response_length": 200 - 5 * s, "truncation_rate": 0.1 / s,
                    "flat_groups": 0.25}) + "\n" for s in range(1, grpo_steps + 1)))
    _eval_folder(grpo / "eval", rng, heldout, 0.6, "tir")
    (root / "summary.json").write_text(json.dumps({"rounds": []}))
    return root
