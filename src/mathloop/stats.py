"""Paired comparisons of two runs on the same problems.

Two models graded on one problem set give correlated outcomes: a hard problem is hard for both. Comparing their two
accuracy intervals ignores that and is far too conservative; these functions use the pairing.

- `wilson_ci95`: 95% interval for one proportion (Wilson score)
- `mcnemar_exact_p`: is one run right more often where they disagree? (exact, from the discordant counts)
- `paired_difference_ci95`: 95% interval for the difference of two paired proportions (Tango's score interval)
- `paired_bootstrap_ci95`: 95% interval for the difference of per-problem means (several samples per problem)
- `paired_outcomes`: the whole first-sample comparison of two 0/1 outcome lists (accuracies, delta, b / c, p)

Cells of the paired 2x2 table, with A the reference run and B the run compared with it:
  both     right in A and in B         only_a (b)   right only in A
  neither  wrong in both               only_b (c)   right only in B
Every difference is B - A.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Z95 = 1.959963984540054  # two-sided 95% quantile of the standard normal

BOOTSTRAP_RESAMPLES = 10_000


def wilson_ci95(successes: int, n: int) -> tuple[float, float]:
    """The Wilson score 95% interval for a proportion `successes / n`.

    >>> [round(x, 4) for x in wilson_ci95(2, 4)]
    [0.15, 0.85]
    """
    if not 0 <= successes <= n or n == 0:
        raise ValueError(f"wilson_ci95 needs 0 <= successes <= n and n >= 1, got successes={successes}, n={n}")
    p = successes / n
    z2 = Z95 * Z95
    center = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, center - half), min(1.0, center + half)


def mcnemar_exact_p(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value for discordant counts b (right only in A) and c (right only in B).

    Under the null hypothesis each of the b + c discordant problems is equally likely to go either way, so
    min(b, c) is binomial(b + c, 1/2); the p-value doubles its lower tail, capped at 1. It is computed with
    integers and rounded once, so it is exact to double precision.

    >>> mcnemar_exact_p(0, 6)  # 2 * (1/2)^6
    0.03125
    >>> mcnemar_exact_p(7, 8), mcnemar_exact_p(0, 0)
    (1.0, 1.0)
    """
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got b={b}, c={c}")
    n = b + c
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2 ** n)  # int / int: correctly rounded


def paired_difference_ci95(both: int, only_a: int, only_b: int, neither: int) -> tuple[float, float, float]:
    """Difference of paired proportions p_B - p_A = (c - b) / n with Tango's 95% score interval.

    Tango (Statistics in Medicine 17:891, 1998), recommended for paired proportions by Fagerland, Lydersen and Laake
    (BMC Medical Research Methodology 13:91, 2013): the interval holds every difference d that the score test does
    not reject, |Z(d)| <= 1.96, with b = only_a, c = only_b, n all problems and
        Z(d) = (c - b - n d) / sqrt(n (2 q + d - d^2)),
    where q is the maximum-likelihood probability of the "right only in A" cell given p_B - p_A = d:
        q = (sqrt(W^2 + 8 n b d (1 - d)) - W) / (4 n),   W = -(b + c) + (2 n + b - c) d.
    Z falls as d grows, so each limit is found by bisection. Unlike the Wald interval it stays inside [-1, 1], and
    with no discordant problems it still has width (about +-z^2 / (n + z^2)).

    Returns (difference, lower, upper).

    >>> [round(x, 4) for x in paired_difference_ci95(5, 0, 0, 5)]  # +- 1.96^2 / (10 + 1.96^2)
    [0.0, -0.2775, 0.2775]
    """
    counts = (both, only_a, only_b, neither)
    if min(counts) < 0:
        raise ValueError(f"2x2 counts must be >= 0, got {counts}")
    n = sum(counts)
    if n == 0:
        raise ValueError("paired_difference_ci95 needs at least one problem")
    b, c = only_a, only_b
    difference = (c - b) / n

    def score(d: float) -> float:
        w = -(b + c) + (2 * n + b - c) * d
        q = (math.sqrt(max(0.0, w * w + 8 * n * b * d * (1 - d))) - w) / (4 * n)
        variance = n * (2 * q + d - d * d)
        numerator = c - b - n * d
        if variance <= 0:
            return math.copysign(math.inf, numerator) if numerator else 0.0
        return numerator / math.sqrt(variance)

    def solve(low: float, high: float, target: float) -> float:
        # score(low) > target > score(high): bisect to double precision
        for _ in range(100):
            middle = (low + high) / 2
            if score(middle) > target:
                low = middle
            else:
                high = middle
        return (low + high) / 2

    lower = -1.0 if difference == -1.0 else solve(-1.0, difference, Z95)
    upper = 1.0 if difference == 1.0 else solve(difference, 1.0, -Z95)
    return difference, lower, upper


def paired_bootstrap_ci95(a: Sequence[float], b: Sequence[float], resamples: int = BOOTSTRAP_RESAMPLES,
                          seed: int = 0) -> tuple[float, float, float]:
    """Difference of means mean(b) - mean(a) over paired values (one pair per problem) with a 95% paired
    percentile bootstrap interval: problems are resampled with replacement, keeping each problem's pair together.

    The same `seed` and `resamples` give the same interval. Returns (difference, lower, upper).
    """
    import numpy as np

    if len(a) != len(b):
        raise ValueError(f"paired values need equal lengths, got {len(a)} and {len(b)}")
    if not a:
        raise ValueError("paired_bootstrap_ci95 needs at least one pair")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    differences = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    chunk = max(1, 2_000_000 // len(differences))  # bounded memory for the index matrix
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        means[start:start + size] = differences[rng.integers(0, len(differences), (size, len(differences)))].mean(1)
    lower, upper = np.quantile(means, [0.025, 0.975])
    return float(differences.mean()), float(lower), float(upper)


def paired_outcomes(a: Sequence[bool], b: Sequence[bool]) -> dict:
    """B against A on the same problems, one 0/1 outcome each: both accuracies (Wilson intervals), the difference
    B - A with Tango's interval, the 2x2 cells (b = right only in A, c = right only in B) and the exact McNemar p.

    >>> r = paired_outcomes([True, True, False, False], [True, False, True, True])
    >>> r["delta"], r["b"], r["c"], r["mcnemar_p"]
    (0.25, 1, 2, 1.0)
    """
    if len(a) != len(b) or not a:
        raise ValueError(f"paired_outcomes needs two equally long, non-empty outcome lists, got {len(a)} and {len(b)}")
    both = sum(bool(x) and bool(y) for x, y in zip(a, b))
    only_a = sum(bool(x) and not y for x, y in zip(a, b))
    only_b = sum(bool(y) and not x for x, y in zip(a, b))
    n = len(a)
    neither = n - both - only_a - only_b
    difference, lower, upper = paired_difference_ci95(both, only_a, only_b, neither)
    return {"acc_a": {"mean": (both + only_a) / n, "ci95": list(wilson_ci95(both + only_a, n))},
            "acc_b": {"mean": (both + only_b) / n, "ci95": list(wilson_ci95(both + only_b, n))},
            "delta": difference, "ci95": [lower, upper], "interval": "tango score",
            "both": both, "b": only_a, "c": only_b, "neither": neither, "mcnemar_p": mcnemar_exact_p(only_a, only_b)}
