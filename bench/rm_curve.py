"""Benchmark: does a reward model trained on the model's own samples pick better than majority vote, and how does
that change with the amount of training data? (issue 16, item 4)

For each training-set size N (problems with both a correct and a wrong response, the ones that make RM groups; the
first N in file order, so each smaller set is part of the larger ones), this trains a mathloop reward model
(`mathloop rm train`, listwise loss over the paper's groups of 6) on the graded training samples, scores held-out
test samples (an `mathloop eval` run with n samples per problem), and prints per N:

  pair acc   how often the RM scores a correct response above a wrong one of the same test problem (averaged over
             the test problems that have both, with a 95% interval over problems)
  rm@n       accuracy of the highest-scored response per problem, against maj@n (majority vote) on the same
             problems: the paired difference with Tango's interval, the discordant counts and McNemar's exact p
  wmaj@n     majority vote with each response's vote weighted by sigmoid(RM score) (`mathloop select`'s rule for
             problems without a gold), against maj@n the same way

Only test problems with both correct and wrong responses are scored: on a problem whose responses are all right or
all wrong, rm@n and maj@n are decided without scores (every pick is right, or every pick is wrong), so rm@n over all
problems is exact. Each size's RM and scores stay in --out; re-running resumes (training resumes from its last
checkpoint, finished scores are read back).

Usage:
  python bench/rm_curve.py --train runs/loop/round-1/samples.jsonl --test runs/test8/samples/gsm8k.jsonl \\
      --sizes 40,80,160 --out runs/rm-curve [--epochs 2 --lora-layers 8 --lr 1e-4]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

try:
    import mathloop  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from mathloop.hardware import hardware_info  # noqa: E402
from mathloop.metrics import maj_at_k, majority, mean_ci95, rm_at_k, rm_pair_accuracy  # noqa: E402
from mathloop.records import Sample, read_records, write_jsonl  # noqa: E402
from mathloop.stats import paired_outcomes  # noqa: E402
from mathloop.verify import same_answer  # noqa: E402


def by_problem(samples: list[Sample]) -> dict[str, list[Sample]]:
    """Samples per problem id, problems in order of first appearance, samples in sample order."""
    groups: dict[str, list[Sample]] = {}
    for s in samples:
        groups.setdefault(s.problem_id, []).append(s)
    for group in groups.values():
        group.sort(key=lambda s: s.sample_index)
    return groups


def mixed(groups: dict[str, list[Sample]]) -> list[str]:
    """The problems with at least one correct and one not-correct response."""
    return [pid for pid, group in groups.items()
            if any(s.verdict == "correct" for s in group) and any(s.verdict != "correct" for s in group)]


def training_subset(groups: dict[str, list[Sample]], size: int) -> list[Sample]:
    chosen = mixed(groups)[:size]
    return [s for pid in chosen for s in groups[pid]]


def score(rm_dir: Path, samples: list[Sample], folder: Path, batch_size: int) -> list[Sample]:
    """The samples with `mathloop score`'s scores (resumable; read back when done before)."""
    from mathloop.reward.score import score_file

    path = folder / "test_scores.jsonl"
    if not path.exists():
        write_jsonl(folder / "test_to_score.jsonl", samples)
        score_file(str(rm_dir), folder / "test_to_score.jsonl", path, batch_size, 2048, device="cpu")
    return read_records(Sample, path)


def evaluate(test: dict[str, list[Sample]], scored: list[Sample], k: int) -> dict:
    """pair acc over the scored (mixed) problems; rm@k and RM-weighted maj@k vs maj@k over every test problem."""
    scores = {(s.problem_id, s.sample_index): s.rm_score for s in scored}
    pair_acc, maj, rm, weighted = [], [], [], []
    for pid, group in test.items():
        group = group[:k]
        verdicts, preds = [s.verdict for s in group], [s.pred for s in group]
        maj.append(maj_at_k(preds, verdicts, k, same_answer) == 1.0)  # answers grouped as `mathloop eval` does
        if all(v == "correct" for v in verdicts) or all(v != "correct" for v in verdicts):
            rm.append(verdicts[0] == "correct")
            weighted.append(verdicts[0] == "correct")
            continue
        values = [scores[(pid, s.sample_index)] for s in group]
        rm.append(rm_at_k(values, verdicts, k) == 1.0)
        winner, _ = majority(preds, same_answer, weights=[1 / (1 + math.exp(-v)) for v in values])
        weighted.append(winner is not None and verdicts[winner] == "correct")
        pair_acc.append(rm_pair_accuracy(values, verdicts))
    mean, low, high = mean_ci95(pair_acc)
    return {"pair_acc": {"mean": mean, "ci95": [low, high], "problems": len(pair_acc)},
            "rm_vs_maj": paired_outcomes(maj, rm), "weighted_vs_maj": paired_outcomes(maj, weighted),
            "problems": len(test), "k": k}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", required=True, help="graded training samples (JSONL)")
    parser.add_argument("--test", required=True, help="graded test samples with n per problem (an eval run's file)")
    parser.add_argument("--sizes", default="40,80,160", help="training problems with both labels, per RM")
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", default="default")
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--lora-layers", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=768)
    parser.add_argument("--batch-size", type=int, default=8, help="scoring batch")
    parser.add_argument("--decontaminate", default="gsm8k", help="benchmarks whose test questions rm train drops")
    args = parser.parse_args()

    from mathloop.train.rm import RMTrainConfig, train

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train_groups = by_problem(read_records(Sample, args.train))
    test = by_problem(read_records(Sample, args.test))
    short = [pid for pid, group in test.items() if len(group) < args.k]
    if short:
        raise SystemExit(f"{args.test}: {len(short)} problems have fewer than {args.k} samples (e.g. {short[0]})")
    to_score = [s for pid in mixed(test) for s in test[pid][:args.k]]
    available = len(mixed(train_groups))
    sizes = [int(x) for x in args.sizes.split(",")]
    print(f"# RM learning curve: {args.train} ({available} training problems with both labels) -> "
          f"{args.test} ({len(test)} problems, {len(mixed(test))} with both labels, {len(to_score)} responses scored)")
    print(f"hardware: {json.dumps(hardware_info('cpu'))}")
    rows = []
    for size in sizes:
        if size > available:
            print(f"size {size}: skipped, only {available} training problems have both labels")
            continue
        folder = out / f"rm-{size}"
        folder.mkdir(exist_ok=True)
        subset = folder / "train_samples.jsonl"
        if not subset.exists():
            write_jsonl(subset, training_subset(train_groups, size))
        timing_path = folder / "timing.json"  # times of the runs that did the work (a rerun reads them back)
        timing = json.loads(timing_path.read_text()) if timing_path.exists() else {}
        trained_before = (folder / "rm" / "final" / "reward_config.json").exists()
        started = time.time()
        train(RMTrainConfig(samples=[str(subset)], output_dir=str(folder / "rm"), model=args.model,
                            decontaminate=[d for d in args.decontaminate.split(",") if d],
                            epochs=args.epochs, learning_rate=args.lr, lora=True,
                            lora_layers=args.lora_layers, max_length=args.max_length))
        if not trained_before:
            timing["train_seconds"] = round(time.time() - started, 1)
        scored_before = (folder / "test_scores.jsonl").exists()
        started = time.time()
        scored = score(folder / "rm" / "final", to_score, folder, args.batch_size)
        if not scored_before:
            timing["score_seconds"] = round(time.time() - started, 1)
        timing_path.write_text(json.dumps(timing) + "\n")
        metrics = [json.loads(line) for line in (folder / "rm" / "metrics.jsonl").read_text().splitlines()]
        result = {"size": size, **evaluate(test, scored, args.k), "train_seconds": timing.get("train_seconds"),
                  "score_seconds": timing.get("score_seconds"),
                  "heldout_train_pair_acc": metrics[-1].get("heldout_accuracy")}
        (folder / "result.json").write_text(json.dumps(result, indent=2) + "\n")
        rows.append(result)
        print(format_row(result), flush=True)
    print()
    print(format_table(rows))
    (out / "curve.json").write_text(json.dumps(rows, indent=2) + "\n")
    print()
    print("What pair accuracy would beat majority vote? A simulated scorer, score = N(0, 1) + separation if correct,")
    print("on these test samples (errors independent within a problem, which flatters it):")
    for separation in (0.3, 0.6, 0.9, 1.2, 1.5):
        pair_acc, rm = simulate(test, args.k, separation)
        print(f"  separation {separation}: pair acc {100 * pair_acc:.1f}, rm@{args.k} {100 * rm:.1f}")


def simulate(test: dict[str, list[Sample]], k: int, separation: float, repeats: int = 20,
             seed: int = 0) -> tuple[float, float]:
    """(mean pair accuracy, rm@k) of a scorer that adds `separation` to standard normal noise for correct responses."""
    import random

    rng = random.Random(seed)
    pairs, picks = [], []
    for _ in range(repeats):
        for group in test.values():
            right = [s.verdict == "correct" for s in group[:k]]
            scores = [rng.gauss(0, 1) + (separation if r else 0.0) for r in right]
            picks.append(right[max(range(k), key=lambda i: scores[i])])
            if any(right) and not all(right):
                pairs.append(rm_pair_accuracy(scores, ["correct" if r else "incorrect" for r in right]))
    return sum(pairs) / len(pairs), sum(picks) / len(picks)


def format_row(r: dict) -> str:
    p, c = r["pair_acc"], r["rm_vs_maj"]
    return (f"N={r['size']}: pair acc {100 * p['mean']:.1f} [{100 * p['ci95'][0]:.1f}, {100 * p['ci95'][1]:.1f}] on "
            f"{p['problems']} problems; rm@{r['k']} {100 * c['acc_b']['mean']:.1f} vs maj@{r['k']} "
            f"{100 * c['acc_a']['mean']:.1f}: {100 * c['delta']:+.1f} [{100 * c['ci95'][0]:+.1f}, "
            f"{100 * c['ci95'][1]:+.1f}], b/c {c['b']}/{c['c']}, p={c['mcnemar_p']:.3g}; {_weighted(r)} "
            f"(train {_minutes(r['train_seconds'])} min, score {_minutes(r['score_seconds'])} min)")


def _minutes(seconds: float | None) -> str:
    return "?" if seconds is None else f"{seconds / 60:.1f}"


def _weighted(r: dict) -> str:
    w = r["weighted_vs_maj"]
    return (f"wmaj@{r['k']} {100 * w['acc_b']['mean']:.1f}: {100 * w['delta']:+.1f} [{100 * w['ci95'][0]:+.1f}, "
            f"{100 * w['ci95'][1]:+.1f}], p={w['mcnemar_p']:.3g}")


def format_table(rows: list[dict]) -> str:
    lines = ["| training problems | test pair acc [95% CI] | maj@k | rm@k | rm@k - maj@k [95% CI] | b / c | p | "
             "wmaj@k - maj@k [95% CI] | p | train min | score min |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p, c, w = r["pair_acc"], r["rm_vs_maj"], r["weighted_vs_maj"]
        lines.append(f"| {r['size']} | {100 * p['mean']:.1f} [{100 * p['ci95'][0]:.1f}, {100 * p['ci95'][1]:.1f}] | "
                     f"{100 * c['acc_a']['mean']:.1f} | {100 * c['acc_b']['mean']:.1f} | {100 * c['delta']:+.1f} "
                     f"[{100 * c['ci95'][0]:+.1f}, {100 * c['ci95'][1]:+.1f}] | {c['b']} / {c['c']} | "
                     f"{c['mcnemar_p']:.3g} | {100 * w['delta']:+.1f} [{100 * w['ci95'][0]:+.1f}, "
                     f"{100 * w['ci95'][1]:+.1f}] | {w['mcnemar_p']:.3g} | {_minutes(r['train_seconds'])} | "
                     f"{_minutes(r['score_seconds'])} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
