"""Benchmark: answers verified per second, mathloop's Verifier vs plain math-verify, on MATH-500.

For every MATH-500 problem the gold answer is turned into model-style responses ("... the final answer is
$\\boxed{X}$."): correct ones written differently from the gold (\\dfrac, no spaces, thousands commas, "x = n", n.0)
and perturbed wrong ones (a digit changed, the sign flipped, an interval/tuple bracket swapped). Everything is
deterministic. Both verifiers see the same (gold, response) pairs:

- math-verify, as its README shows: ``verify(parse("$" + gold + "$"), parse(response))`` sequentially in one process,
  with its default (signal-based) timeouts;
- mathloop: ``Verifier(workers=os.cpu_count()).grade_batch`` (extraction + equivalence, worker pool), start-up included.

Usage: python bench/verify.py [--data-dir DIR] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from pathlib import Path

try:
    import mathloop  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from mathloop.verify import Verifier  # noqa: E402


def respond(prediction: str) -> str:
    return f"We simplify step by step.\n\nThus, the final answer is $\\boxed{{{prediction}}}$."


def correct_rewrites(gold: str) -> list[str]:
    """Equivalent ways to write the gold answer."""
    rewrites = [gold.replace("\\frac", "\\dfrac").replace(" ", "") if "\\frac" in gold or " " in gold else f"{gold}"]
    if re.fullmatch(r"-?\d+", gold):
        number = int(gold)
        rewrites.append(f"{number:,}" if abs(number) >= 1000 else f"{number}.0")
    elif re.fullmatch(r"\\frac\{(-?\d+)\}\{(\d+)\}", gold):
        num, den = re.fullmatch(r"\\frac\{(-?\d+)\}\{(\d+)\}", gold).groups()  # type: ignore[union-attr]
        rewrites.append(f"{num}/{den}")
    elif not any(mark in gold for mark in ("=", ",", "\\text", "\\in")):
        rewrites.append(f"x = {gold}")
    return rewrites


def wrong_perturbations(gold: str) -> list[str]:
    """Answers that must not match: a digit changed, the sign flipped, a bracket swapped."""
    wrong = []
    digits = [m.start() for m in re.finditer(r"\d", gold)]
    if digits:
        at = digits[-1]
        wrong.append(gold[:at] + str((int(gold[at]) + 1) % 10) + gold[at + 1 :])
    if gold not in ("0", "") and not any(mark in gold for mark in (",", "=", "\\text", "\\pm", "\\in", "\\cup")):
        wrong.append(gold[1:] if gold.startswith("-") else f"-{gold}" if re.fullmatch(r"[\w\\{}^.]+", gold) else f"-({gold})")
    swapped = gold.translate(str.maketrans("([", "[("))
    if swapped != gold and not gold.startswith("\\left"):
        wrong.append(swapped)
    return wrong


def build_pairs(data_dir: Path, limit: int | None) -> list[tuple[str, str, bool]]:
    """(gold, response, expected) triples, deterministic."""
    path = data_dir / "math500" / "test.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    triples = []
    for row in rows[:limit]:
        gold = row["answer"]
        triples += [(gold, respond(p), True) for p in correct_rewrites(gold)]
        triples += [(gold, respond(p), False) for p in wrong_perturbations(gold) if p != gold]
    return triples


def run_math_verify(triples: list[tuple[str, str, bool]]) -> tuple[list[bool], float]:
    import math_verify

    start = time.perf_counter()
    verdicts = []
    for gold, response, _ in triples:
        try:
            verdicts.append(bool(math_verify.verify(math_verify.parse(f"${gold}$"), math_verify.parse(response))))
        except Exception:  # noqa: BLE001
            verdicts.append(False)
    return verdicts, time.perf_counter() - start


def run_mathloop(triples: list[tuple[str, str, bool]], workers: int) -> tuple[list[bool], float]:
    start = time.perf_counter()
    with Verifier(workers=workers) as verifier:
        graded = verifier.grade_batch([(gold, response) for gold, response, _ in triples])
    return [verdict == "correct" for _, verdict in graded], time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("MATHLOOP_DATA_DIR", "/work/shared/data")),
                        help="folder in the Qwen2.5-Math harness layout (default: $MATHLOOP_DATA_DIR or /work/shared/data)")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N MATH-500 problems")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="mathloop worker processes (default: all cores)")
    args = parser.parse_args()
    logging.disable(logging.WARNING)

    triples = build_pairs(args.data_dir, args.limit)
    expected = [label for _, _, label in triples]
    print(f"pairs: {len(triples)} ({sum(expected)} correct, {len(triples) - sum(expected)} wrong) from "
          f"{args.data_dir / 'math500/test.jsonl'}; workers: {args.workers}")

    mv_verdicts, mv_seconds = run_math_verify(triples)
    ml_verdicts, ml_seconds = run_mathloop(triples, args.workers)

    mv_rate, ml_rate = len(triples) / mv_seconds, len(triples) / ml_seconds
    accuracy = lambda verdicts: sum(v == e for v, e in zip(verdicts, expected)) / len(expected)  # noqa: E731
    print(f"math-verify: {mv_rate:8.1f} answers/s ({mv_seconds:.2f} s)  accuracy {accuracy(mv_verdicts):.4f}")
    print(f"mathloop:    {ml_rate:8.1f} answers/s ({ml_seconds:.2f} s)  accuracy {accuracy(ml_verdicts):.4f}")
    print(f"ratio mathloop/math-verify: {ml_rate / mv_rate:.2f}x")
    disagree = [i for i, (a, b) in enumerate(zip(mv_verdicts, ml_verdicts)) if a != b]
    print(f"agree: {len(triples) - len(disagree)}  disagree: {len(disagree)} "
          f"(mathloop right on {sum(ml_verdicts[i] == expected[i] for i in disagree)})")
    for i in disagree[:8]:
        gold, response, label = triples[i]
        boxed = response[response.rfind("\\boxed{") + 7 : -3]
        print(f"  gold={gold!r} pred={boxed!r} expected={label} math-verify={mv_verdicts[i]} mathloop={ml_verdicts[i]}")
    mistakes = [i for i, (v, e) in enumerate(zip(ml_verdicts, expected)) if v != e]
    for i in mistakes[:5]:
        gold, response, label = triples[i]
        print(f"  mathloop wrong: gold={gold!r} pred={response[response.rfind(chr(92) + 'boxed{') + 7 : -3]!r} expected={label}")


if __name__ == "__main__":
    main()
