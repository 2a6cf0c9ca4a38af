"""Evaluation metrics: greedy accuracy, pass@k, maj@k, rm@k, with 95% intervals, and a Markdown table.

Everything here is a pure function over verdicts ("correct" / "incorrect" / "no_answer"), extracted answers and
reward-model scores; grading itself lives in `mathloop.verify`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from mathloop.records import VERDICTS
from mathloop.stats import Z95, paired_outcomes, wilson_ci95

VERDICT_NAMES = VERDICTS

# The layout of every metrics.json (`mathloop eval`, `mathloop grade --metrics`, the loop's evaluations): bumped when
# a key changes meaning. Every metric in it is a fraction in [0, 1]; tables show percent.
METRICS_SCHEMA = "mathloop.metrics/1"


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn without replacement from n (c correct) is correct.

    The unbiased estimator of Chen et al. (2021), 1 - C(n-c, k) / C(n, k), computed as a product so it never
    forms huge binomials.

    >>> [round(pass_at_k(5, 2, k), 6) for k in (1, 2, 3, 4)]
    [0.4, 0.7, 0.9, 1.0]
    """
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got n={n}")
    if n - c < k:
        return 1.0
    all_wrong = 1.0
    for i in range(n - c + 1, n + 1):
        all_wrong *= 1.0 - k / i
    return 1.0 - all_wrong


def _check_k(k: int, length: int, metric: str) -> None:
    if not 1 <= k <= length:
        raise ValueError(f"{metric} needs 1 <= k <= number of samples ({length}), got k={k}")


def _same_after_strip(a: str, b: str) -> bool:
    return a.strip() == b.strip()


def majority(answers: Sequence[str | None], same: Callable[[str, str], bool] | None = None,
             weights: Sequence[float] | None = None) -> tuple[int | None, float]:
    """The majority answer: (index of its first occurrence, its votes), or (None, 0.0) when nobody answered.

    Answers fall into classes under `same` (default: equal after stripping whitespace); a class is compared by its
    first member. None answers do not vote. Each answer brings its weight (default 1); the heaviest class wins and
    a tie goes to the class that appeared first.

    >>> majority(["4", "3", "4", None])
    (0, 2.0)
    >>> majority(["4", "3", "4"], weights=[0.1, 0.9, 0.1])
    (1, 0.9)
    """
    same = same or _same_after_strip
    classes: list[tuple[int, float]] = []  # (first index, votes), in order of first appearance
    for i, answer in enumerate(answers):
        if answer is None:
            continue
        weight = 1.0 if weights is None else float(weights[i])
        for c, (first, votes) in enumerate(classes):
            if same(answers[first], answer):
                classes[c] = (first, votes + weight)
                break
        else:
            classes.append((i, weight))
    if not classes:
        return None, 0.0
    return max(classes, key=lambda c: c[1])  # max keeps the first of equal classes


def maj_at_k(answers: Sequence[str | None], verdicts: Sequence[str], k: int,
             same: Callable[[str, str], bool] | None = None) -> float:
    """1.0 if the majority answer of the first k samples is correct, else 0.0.

    The majority is `majority` over the first k answers; the winner is graded by its first member's verdict.
    No answers at all scores 0.0.

    >>> maj_at_k(["3", "4", "4", None, None], ["correct", "incorrect", "incorrect", "no_answer", "no_answer"], 5)
    0.0
    >>> maj_at_k(["3", "4"], ["correct", "incorrect"], 2)  # tie: the earlier answer wins
    1.0
    """
    if len(answers) != len(verdicts):
        raise ValueError(f"maj@k got {len(answers)} answers but {len(verdicts)} verdicts")
    _check_k(k, len(answers), "maj@k")
    winner, _ = majority(answers[:k], same)
    return 0.0 if winner is None else float(verdicts[winner] == "correct")


def rm_at_k(scores: Sequence[float | None], verdicts: Sequence[str], k: int) -> float:
    """1.0 if the sample with the highest reward-model score among the first k is correct (ties: earliest).

    >>> rm_at_k([0.1, 0.9, 0.9], ["incorrect", "correct", "incorrect"], 3)
    1.0
    """
    if len(scores) != len(verdicts):
        raise ValueError(f"rm@k got {len(scores)} scores but {len(verdicts)} verdicts")
    _check_k(k, len(scores), "rm@k")
    missing = [i for i, s in enumerate(scores[:k]) if s is None]
    if missing:
        raise ValueError(f"rm@k needs a reward-model score for every sample; samples {missing} have none "
                         f"(score them with the reward model first)")
    best = max(range(k), key=lambda i: (scores[i], -i))
    return 1.0 if verdicts[best] == "correct" else 0.0


def weighted_maj_at_k(answers: Sequence[str | None], verdicts: Sequence[str], weights: Sequence[float], k: int,
                      same: Callable[[str, str], bool] | None = None) -> float:
    """1.0 if the answer with the most weight among the first k samples is correct (`majority` with weights).

    >>> weighted_maj_at_k(["3", "4", "4"], ["correct", "incorrect", "incorrect"], [0.9, 0.3, 0.3], 3)
    1.0
    """
    if not len(answers) == len(verdicts) == len(weights):
        raise ValueError(f"weighted maj@k got {len(answers)} answers, {len(verdicts)} verdicts, {len(weights)} weights")
    _check_k(k, len(answers), "weighted maj@k")
    winner, _ = majority(answers[:k], same, weights[:k])
    return 0.0 if winner is None else float(verdicts[winner] == "correct")


def filtered_maj_at_k(answers: Sequence[str | None], verdicts: Sequence[str], confidences: Sequence[float], k: int,
                      same: Callable[[str, str], bool] | None = None, keep: float = 0.5) -> float:
    """1.0 if the majority answer of the most confident `keep` share of the first k samples (at least one; ties in
    confidence: earlier first) is correct: DeepConf's filtered vote (arXiv 2508.15260).

    >>> filtered_maj_at_k(["4", "4", "3", "3"], ["incorrect"] * 2 + ["correct"] * 2, [-2.0, -3.0, -0.1, -0.2], 4)
    1.0
    """
    if not len(answers) == len(verdicts) == len(confidences):
        raise ValueError(f"filtered maj@k got {len(answers)} answers, {len(verdicts)} verdicts, "
                         f"{len(confidences)} confidences")
    _check_k(k, len(answers), "filtered maj@k")
    kept = sorted(sorted(range(k), key=lambda i: (-confidences[i], i))[:max(1, round(keep * k))])
    winner, _ = majority([answers[i] for i in kept], same)
    return 0.0 if winner is None else float(verdicts[kept[winner]] == "correct")


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


# How a problem's samples may be reduced to one answer (`mathloop eval` reports each as <selector>@k next to maj@k):
# majority vote; the reward model's best sample (rm) or votes weighted by sigmoid(RM score) (rm-weighted); the
# generator's own confidence (`confidence_summary`, measure CONFIDENCE_MEASURE): the most confident sample
# (confidence), votes weighted by exp(confidence), the geometric-mean token probability (confidence-weighted), or
# the vote of the most confident half (confidence-filtered).
SELECTORS = ("majority", "rm", "rm-weighted", "confidence", "confidence-weighted", "confidence-filtered")
CONFIDENCE_MEASURE = "lowest_window"


def selector_at_k(selector: str, problem: dict, k: int, same: Callable[[str, str], bool] | None = None,
                  measure: str = CONFIDENCE_MEASURE) -> float:
    """`selector`'s pick among a problem's first k samples graded (1.0 correct, else 0.0). `problem` is a row of
    `summarize`: `preds`, `verdicts`, and `scores` (RM) or `confidences` (per sample a `confidence_summary`) as the
    selector needs.

    >>> row = {"preds": ["4", "3", "3"], "verdicts": ["correct", "incorrect", "incorrect"],
    ...        "confidences": [{"lowest_window": -0.1}, {"lowest_window": -2.0}, {"lowest_window": -3.0}]}
    >>> [selector_at_k(s, row, 3) for s in ("majority", "confidence", "confidence-weighted", "confidence-filtered")]
    [0.0, 1.0, 1.0, 1.0]
    """
    preds, verdicts = problem["preds"], problem["verdicts"]
    if selector == "majority":
        return maj_at_k(preds, verdicts, k, same)
    if selector in ("rm", "rm-weighted"):
        scores = problem.get("scores")
        if scores is None or any(x is None for x in scores):
            raise ValueError(f"{selector}@k needs a reward-model score for every sample (score them first)")
        if selector == "rm":
            return rm_at_k(scores, verdicts, k)
        return weighted_maj_at_k(preds, verdicts, [_sigmoid(x) for x in scores], k, same)
    if selector in ("confidence", "confidence-weighted", "confidence-filtered"):
        confidences = problem.get("confidences")
        if confidences is None or any(c is None or measure not in c for c in confidences):
            raise ValueError(f"{selector}@k needs every sample's confidence {measure!r} (a backend that reports "
                             f"token log-probabilities: hf, openvino, vllm, openai)")
        values = [float(c[measure]) for c in confidences]
        if selector == "confidence":
            return rm_at_k(values, verdicts, k)
        if selector == "confidence-weighted":
            return weighted_maj_at_k(preds, verdicts, [math.exp(v) for v in values], k, same)
        return filtered_maj_at_k(preds, verdicts, values, k, same)
    raise ValueError(f"unknown selector {selector!r}; expected one of {', '.join(SELECTORS)}")


CONFIDENCE_WINDOW = 32  # tokens per window of `confidence_summary`


def confidence_summary(logprobs: Sequence[float] | None, window: int = CONFIDENCE_WINDOW) -> dict[str, float] | None:
    """How sure the generator was of a response, from the log-probability of each token it generated (DeepConf,
    arXiv 2508.15260, votes with such measures): `mean` over all tokens, `lowest_window` the lowest mean over a
    sliding window of `window` tokens (the least certain stretch; the whole response when shorter), `tail` the mean
    over the last `window` tokens (where the answer is). None without log-probabilities.

    >>> confidence_summary([-0.1, -2.0, -0.1, -0.1], window=2)
    {'mean': -0.575, 'lowest_window': -1.05, 'tail': -0.1}
    """
    if not logprobs:
        return None
    values = [float(x) for x in logprobs]
    width = min(window, len(values))
    sums = [sum(values[:width])]
    for i in range(width, len(values)):
        sums.append(sums[-1] + values[i] - values[i - width])
    return {"mean": round(sum(values) / len(values), 6), "lowest_window": round(min(sums) / width, 6),
            "tail": round(sum(values[-width:]) / width, 6)}


def balance_score(distinct_correct: Sequence[int], target: int) -> float:
    """B-STaR's balance score (Zeng et al. 2024, arXiv 2412.17256) with the verifier as the reward: the mean over
    problems of min(u / target, 1), u the problem's distinct correct responses. B-STaR multiplies by the share of
    correct responses among those its reward selects, which is 1 when the verifier selects; it counts a repeated
    response once (B-STaR drops exact repeats, the loop near-duplicates as selection does), so a sampler that repeats
    itself (a temperature too low) scores as low as one that is rarely right (too high).

    >>> balance_score([4, 1, 0, 6], target=4)  # (1 + 0.25 + 0 + 1) / 4
    0.5625
    """
    if not distinct_correct:
        raise ValueError("balance_score: no problems")
    if target < 1:
        raise ValueError(f"balance_score: target must be >= 1, got {target}")
    if any(u < 0 for u in distinct_correct):
        raise ValueError(f"balance_score: counts must be >= 0, got {list(distinct_correct)}")
    return sum(min(u / target, 1.0) for u in distinct_correct) / len(distinct_correct)


def mean_ci95(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean and 95% interval: Wilson score interval for 0/1 values, else mean +- 1.96 standard errors
    (sample std), clipped to [0, 1].

    >>> [round(x, 4) for x in mean_ci95([1, 1, 0, 0])]
    [0.5, 0.15, 0.85]
    """
    n = len(values)
    if n == 0:
        raise ValueError("mean_ci95 needs at least one value")
    mean = sum(values) / n
    if all(v in (0, 1) for v in values):
        return (mean, *wilson_ci95(int(sum(values)), n))
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    half = Z95 * std / math.sqrt(n)
    return mean, max(0.0, mean - half), min(1.0, mean + half)


def rm_pair_accuracy(scores: Sequence[float | None], verdicts: Sequence[str]) -> float | None:
    """How often the reward model scores a correct sample above a wrong one of the same problem (a tie counts
    half), over all such pairs; None when the problem has no correct or no wrong sample.

    >>> rm_pair_accuracy([0.9, 0.2, 0.9, 0.5], ["correct", "incorrect", "no_answer", "correct"])  # (1 + .5 + 1 + 0) / 4
    0.625
    """
    if len(scores) != len(verdicts) or any(s is None for s in scores):
        raise ValueError("rm_pair_accuracy needs a reward-model score for every sample")
    right = [s for s, v in zip(scores, verdicts) if v == "correct"]
    wrong = [s for s, v in zip(scores, verdicts) if v != "correct"]
    if not right or not wrong:
        return None
    wins = sum(1.0 if r > w else 0.5 if r == w else 0.0 for r in right for w in wrong)
    return wins / (len(right) * len(wrong))


def mean_stderr(values: Sequence[float]) -> float | None:
    """Standard error of the mean: the sample standard deviation (n - 1) over sqrt(n), as lm-evaluation-harness
    reports `<metric>_stderr`; None for fewer than two values.

    >>> round(mean_stderr([1, 1, 0, 0]), 4), mean_stderr([1])
    (0.2887, None)
    """
    n = len(values)
    if n < 2:
        return None
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) / math.sqrt(n)


def _metric(values: list[float]) -> dict:
    mean, lo, hi = mean_ci95(values)
    return {"mean": mean, "ci95": [lo, hi], "stderr": mean_stderr(values)}


def _summarize_benchmark(problems: list[dict], ks: list[int], same: Callable[[str, str], bool] | None) -> dict:
    counts = dict.fromkeys(VERDICT_NAMES, 0)
    for p in problems:
        for verdict in p["verdicts"]:
            if verdict not in counts:
                raise ValueError(f"unknown verdict {verdict!r}; expected one of {VERDICT_NAMES}")
            counts[verdict] += 1
    n_min = min(len(p["verdicts"]) for p in problems)
    if n_min == 0:
        raise ValueError("every problem needs at least one sample (verdicts is empty)")
    ks = sorted(k for k in set(ks) if k <= n_min)
    has_scores = all(p.get("scores") is not None for p in problems)

    entry: dict = {"n_problems": len(problems), "n_samples": sum(len(p["verdicts"]) for p in problems),
                   **counts, "acc": _metric([float(p["verdicts"][0] == "correct") for p in problems])}
    for k in ks:
        entry[f"pass@{k}"] = _metric([pass_at_k(len(p["verdicts"]), p["verdicts"].count("correct"), k)
                                      for p in problems])
    maj = {k: [maj_at_k(p["preds"], p["verdicts"], k, same) for p in problems] for k in ks}
    for k in ks:
        entry[f"maj@{k}"] = _metric(maj[k])
    if has_scores:
        rm = {k: [rm_at_k(p["scores"], p["verdicts"], k) for p in problems] for k in ks}
        for k in ks:
            entry[f"rm@{k}"] = _metric(rm[k])
        pair_acc = [a for a in (rm_pair_accuracy(p["scores"], p["verdicts"]) for p in problems) if a is not None]
        if pair_acc:
            entry["rm_pair_acc"] = _metric(pair_acc) | {"problems": len(pair_acc)}
        if ks and ks[-1] > 1:
            k = ks[-1]
            entry[f"rm@{k}_vs_maj@{k}"] = paired_outcomes([v == 1.0 for v in maj[k]], [v == 1.0 for v in rm[k]])
    selectors = ((["rm-weighted"] if has_scores else []) +
                 (["confidence", "confidence-weighted", "confidence-filtered"]
                  if all(p.get("confidences") and all(c and CONFIDENCE_MEASURE in c for c in p["confidences"])
                         for p in problems) else []))
    for selector in selectors:
        picked = {k: [selector_at_k(selector, p, k, same) for p in problems] for k in ks if k > 1}
        for k, values in picked.items():
            entry[f"{selector}@{k}"] = _metric(values)
        if picked:
            k = max(picked)
            entry[f"{selector}@{k}_vs_maj@{k}"] = paired_outcomes([v == 1.0 for v in maj[k]],
                                                                  [v == 1.0 for v in picked[k]])
    return entry


def _is_metric(value: object) -> bool:
    return isinstance(value, dict) and "mean" in value


def summarize(per_problem: list[dict], ks: list[int], same: Callable[[str, str], bool] | None = None) -> dict:
    """Metrics per benchmark and their unweighted average over benchmarks.

    Each item of `per_problem` holds `verdicts` (one per sample, sample 0 is the greedy/first one), `preds`
    (extracted answers, None when none), optionally `scores` (reward-model scores) and `benchmark`. A benchmark
    reports `pass@k` and `maj@k` for each k in `ks` that every one of its problems has samples for, `rm@k` when all
    its problems carry scores, `acc` from the first sample, plus `n_problems`, `n_samples` and verdict counts.
    With scores it also reports `rm_pair_acc` (per problem with both correct and wrong samples, how often the RM
    ranks a correct one above a wrong one; averaged over those problems, whose count is `problems`) and, for the
    largest k > 1, `rm@k_vs_maj@k`: the paired comparison of the two picks on each problem (`paired_outcomes`,
    A = maj@k, B = rm@k). With scores (`rm-weighted`) or every sample's `confidences` (`confidence`,
    `confidence-weighted`, `confidence-filtered`) it reports `<selector>@k` for each k > 1 and
    `<selector>@k_vs_maj@k` for the largest (`SELECTORS`, `selector_at_k`).
    Each metric is `{"mean": m, "ci95": [lo, hi], "stderr": s}`, all fractions in [0, 1] (`mean_ci95`,
    `mean_stderr` over the per-problem values). The "average" entry holds the mean over benchmarks of each metric
    every benchmark reports (`ci95` and `stderr` None), the benchmark count and summed counts.

    Returns `{"schema": METRICS_SCHEMA, "scale": "fraction", "benchmarks": {name: entry}, "average": entry}`, the
    layout of every metrics.json (docs/metrics.md).
    """
    if not per_problem:
        raise ValueError("summarize needs at least one problem")
    groups: dict[str, list[dict]] = {}
    for i, p in enumerate(per_problem):
        missing = [key for key in ("verdicts", "preds") if key not in p]
        if missing:
            raise ValueError(f"problem {i} ({p.get('benchmark', '')!r}) has no {' or '.join(missing)}")
        groups.setdefault(p.get("benchmark") or "all", []).append(p)
    benchmarks = {name: _summarize_benchmark(problems, ks, same) for name, problems in groups.items()}

    entries = list(benchmarks.values())
    average: dict = {"n_benchmarks": len(entries)}
    for key in ("n_problems", "n_samples", *VERDICT_NAMES):
        average[key] = sum(e[key] for e in entries)
    for key, value in entries[0].items():
        if _is_metric(value) and all(key in e for e in entries):
            average[key] = {"mean": sum(e[key]["mean"] for e in entries) / len(entries), "ci95": None,
                            "stderr": None}
    return {"schema": METRICS_SCHEMA, "scale": "fraction", "benchmarks": benchmarks, "average": average}


def format_metric(value: dict | None) -> str:
    """One metric ({mean, ci95} as fractions) in percent with its 95% interval, as every mathloop table shows it.

    >>> format_metric({"mean": 0.4523, "ci95": [0.401, 0.503]}), format_metric({"mean": 0.5, "ci95": None})
    ('45.2 [40.1, 50.3]', '50.0')
    """
    if value is None:
        return "-"
    text = f"{100 * value['mean']:.1f}"
    if value.get("ci95"):
        lo, hi = value["ci95"]
        text += f" [{100 * lo:.1f}, {100 * hi:.1f}]"
    return text


def format_markdown(summary: dict) -> str:
    """A Markdown table: one row per benchmark plus the average, metrics in percent as "45.2 [40.1, 50.3]".

    >>> print(format_markdown(summarize([{"verdicts": ["correct"], "preds": ["1"], "benchmark": "gsm8k"}], [1])))
    | benchmark | n | acc | pass@1 | maj@1 |
    |---|---|---|---|---|
    | gsm8k | 1 | 100.0 [20.7, 100.0] | 100.0 [20.7, 100.0] | 100.0 [20.7, 100.0] |
    | average | 1 | 100.0 | 100.0 | 100.0 |
    """
    rows = {**summary["benchmarks"], "average": summary["average"]}
    columns: list[str] = []
    for entry in rows.values():
        columns += [key for key, value in entry.items() if _is_metric(value) and key not in columns]

    lines = ["| benchmark | n | " + " | ".join(columns) + " |", "|---" * (len(columns) + 2) + "|"]
    for name, entry in rows.items():
        cells = [name, str(entry["n_problems"])] + [format_metric(entry.get(c)) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    paired = [(name, key, value) for name, entry in summary["benchmarks"].items()
              for key, value in entry.items() if "_vs_maj@" in key]
    if paired:
        lines += ["", "Picks against majority vote on the same problems (B - A in points, Tango's 95% interval; "
                      "b = right only by majority, c = right only by the other pick; exact McNemar p):", ""]
        for name, key, r in paired:
            lower, upper = r["ci95"]
            lines.append(f"- {name} {key.replace('_vs_', ' vs ')}: {100 * r['delta']:+.1f} [{100 * lower:+.1f}, "
                         f"{100 * upper:+.1f}], b / c = {r['b']} / {r['c']}, p = {r['mcnemar_p']:.3g}")
    return "\n".join(lines)
