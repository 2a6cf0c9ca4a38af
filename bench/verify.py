"""Benchmark: mathloop's Verifier vs plain math-verify, cold and warm, wall and CPU, on two sets of responses.

Sets (both verifiers see the same (gold, response) pairs):

- ``synthetic``: for MATH-500 problems the gold answer is turned into model-style responses ("... the final answer is
  $\\boxed{X}$."): correct ones written differently from the gold (\\dfrac, no spaces, thousands commas, "x = n",
  n.0) and perturbed wrong ones (a digit changed, the sign flipped, an interval/tuple bracket swapped). Deterministic.
- ``real``: 400 real responses of mathloop's own model (200 graded correct, 200 incorrect when sampled), with their
  gold answers and questions: ``bench/data/real_responses.jsonl`` (see ``bench/data/README.md``).

Verifiers:

- math-verify, as its README shows: ``verify(parse("$" + gold + "$"), parse(response))`` sequentially in one process,
  with its default (signal-based) timeouts;
- mathloop: ``Verifier(workers=N).grade_batch`` (extraction + equivalence, worker pool), with the questions. Its
  process has one thread, so its workers are forks of it; ``--no-fork`` starts them as new interpreters instead, as
  for a caller with threads (a trainer, a server), which costs about 0.05 CPU seconds more per worker.

Each (verifier, set) runs in a fresh process. "cold" is the first call there: imports, worker start-up and one pair
that needs sympy (``COLD_PAIR``); "warm" is the whole set after it. CPU seconds are the process's own plus its children's (the worker
processes: live ones through psutil, ended ones through ``RUSAGE_CHILDREN``). Ratios are mathloop / math-verify in the
same run (below 1: mathloop is cheaper). "accuracy" on ``real`` is agreement with the verdicts recorded at sampling
time (by mathloop's verifier of that day), not an independent label. A default run (150 MATH-500 problems: 575 pairs,
and 400 real responses) took 6.4 s of wall time on 2 shared cores.

Usage: python bench/verify.py [--data-dir DIR] [--limit N] [--workers N] [--sets synthetic,real] [--no-fork]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import psutil

SRC = Path(__file__).resolve().parents[1] / "src"
REAL = Path(__file__).resolve().parent / "data" / "real_responses.jsonl"


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


Item = tuple[str, str, bool, "str | None"]  # (gold, response, expected, question)


def synthetic_items(data_dir: Path, limit: int | None) -> list[Item]:
    """(gold, response, expected, question) from MATH-500 golds, deterministic; no question (exact answers)."""
    path = data_dir / "math500" / "test.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    triples = []
    for row in rows[:limit]:
        gold = row["answer"]
        triples += [(gold, respond(p), True, None) for p in correct_rewrites(gold)]
        triples += [(gold, respond(p), False, None) for p in wrong_perturbations(gold) if p != gold]
    return triples


def real_items() -> list[Item]:
    """The real responses, with the verdict recorded when they were sampled as the expected one."""
    rows = [json.loads(line) for line in REAL.read_text().splitlines() if line.strip()]
    return [(row["gold"], row["response"], row["verdict"] == "correct", row["question"]) for row in rows]



def _cpu_seconds() -> float:
    """CPU seconds of this process and all its children, live (psutil) and ended (RUSAGE_CHILDREN)."""
    me = psutil.Process()
    times = me.cpu_times()
    total = times.user + times.system + times.children_user + times.children_system
    for child in me.children(recursive=True):
        try:
            child_times = child.cpu_times()
            total += child_times.user + child_times.system
        except psutil.NoSuchProcess:
            pass
    return total


# The first call, the same for both verifiers: a pair that needs sympy (mathloop's fast path cannot decide it), so
# the cold figure includes the imports and, for mathloop, the start-up of its workers.
COLD_PAIR: Item = (r"2\sqrt{3}", respond(r"\sqrt{12}"), True, None)


def _child(verifier: str, items: list[Item], workers: int, fork: bool = True) -> dict:
    """Runs in a fresh process: one first call cold (imports, workers, ``COLD_PAIR``), then the whole set warm."""
    wall, cpu = time.perf_counter(), _cpu_seconds()
    if verifier == "math-verify":
        import math_verify

        def grade(chunk: list[Item]) -> list[bool]:
            verdicts = []
            for gold, response, _, _ in chunk:
                try:
                    verdicts.append(bool(math_verify.verify(math_verify.parse(f"${gold}$"), math_verify.parse(response))))
                except Exception:  # noqa: BLE001
                    verdicts.append(False)
            return verdicts
        close = None
    else:
        sys.path.insert(0, str(SRC))
        from mathloop.verify import Verifier, pool as worker_pool

        worker_pool.START_BY_FORK = fork
        pool = Verifier(workers=workers)

        def grade(chunk: list[Item]) -> list[bool]:
            graded = pool.grade_batch([(gold, response) for gold, response, _, _ in chunk],
                                      questions=[question for *_, question in chunk])
            return [verdict == "correct" for _, verdict in graded]
        close = pool.close
    grade([COLD_PAIR])
    cold = (time.perf_counter() - wall, _cpu_seconds() - cpu)
    wall, cpu = time.perf_counter(), _cpu_seconds()
    verdicts = grade(items)
    warm = (time.perf_counter() - wall, _cpu_seconds() - cpu)
    if close:
        close()
    return {"cold": cold, "warm": warm, "verdicts": verdicts}


def measure(verifier: str, set_name: str, args: argparse.Namespace) -> dict:
    """One (verifier, set) in a fresh Python process; returns its timings and verdicts."""
    argv = [sys.executable, __file__, "--child", verifier, "--sets", set_name, "--workers", str(args.workers),
            "--data-dir", str(args.data_dir)] + (["--limit", str(args.limit)] if args.limit else []) \
        + (["--no-fork"] if args.no_fork else [])
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def items_for(set_name: str, args: argparse.Namespace) -> list[Item]:
    return synthetic_items(args.data_dir, args.limit) if set_name == "synthetic" else real_items()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("MATHLOOP_DATA_DIR", "/work/shared/data")),
                        help="folder in the Qwen2.5-Math harness layout (default: $MATHLOOP_DATA_DIR or /work/shared/data)")
    parser.add_argument("--limit", type=int, default=150, help="use only the first N MATH-500 problems (default 150)")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="mathloop worker processes (default: all cores)")
    parser.add_argument("--sets", default="synthetic,real", help="comma-separated: synthetic, real (default: both)")
    parser.add_argument("--no-fork", action="store_true",
                        help="start mathloop's workers as new interpreters, as for a caller with threads (default: forks)")
    parser.add_argument("--child", choices=["math-verify", "mathloop"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    if args.child:
        print(json.dumps(_child(args.child, items_for(args.sets, args), args.workers, fork=not args.no_fork)))
        return

    print(f"workers: {args.workers} ({'new interpreters' if args.no_fork else 'forks where safe'}); cold = first call in a fresh process (imports, workers, one sympy pair), "
          "warm = the whole set after it; seconds; CPU includes child processes")
    header = f"{'set':<10}{'pairs':>6}  {'verifier':<12}{'cold wall':>10}{'cold cpu':>10}{'warm wall':>10}{'warm cpu':>10}" \
             f"{'ms cpu/pair':>12}{'accuracy':>10}"
    print(header)
    print("-" * len(header))
    for set_name in args.sets.split(","):
        items = items_for(set_name, args)
        expected = [label for _, _, label, _ in items]
        results = {name: measure(name, set_name, args) for name in ("math-verify", "mathloop")}
        for name, result in results.items():
            (cold_wall, cold_cpu), (warm_wall, warm_cpu) = result["cold"], result["warm"]
            accuracy = sum(v == e for v, e in zip(result["verdicts"], expected)) / len(expected)
            print(f"{set_name:<10}{len(items):>6}  {name:<12}{cold_wall:>10.2f}{cold_cpu:>10.2f}{warm_wall:>10.2f}"
                  f"{warm_cpu:>10.2f}{1000 * warm_cpu / len(items):>12.2f}{accuracy:>10.4f}")
        ml, mv = results["mathloop"], results["math-verify"]
        ratios = [ml[phase][k] / mv[phase][k] if mv[phase][k] else float("nan") for phase in ("cold", "warm") for k in (0, 1)]
        print(f"{set_name:<10}{'':>6}  {'ratio ml/mv':<12}" + "".join(f"{r:>9.2f}x" for r in ratios))
        disagree = [i for i, (a, b) in enumerate(zip(mv["verdicts"], ml["verdicts"])) if a != b]
        right = sum(ml["verdicts"][i] == expected[i] for i in disagree)
        print(f"{set_name:<10}{'':>6}  disagree on {len(disagree)} pairs, mathloop matches the expected verdict on {right}")
        for i in disagree[:4]:
            gold, response, label, _ = items[i]
            print(f"{'':>18}gold={gold!r} response=...{response[-60:]!r} expected={label} "
                  f"math-verify={mv['verdicts'][i]} mathloop={ml['verdicts'][i]}")


if __name__ == "__main__":
    main()
