"""`mathloop compare` and `mathloop.stats`: paired statistics against values computed by hand, and the command end to
end on eval folders, a loop folder and a `mathloop grade` file written here."""

from __future__ import annotations

import json
import math
from fractions import Fraction
from pathlib import Path

import pytest

from mathloop.cli import main
from mathloop.pipeline.compare import Graded, compare_benchmark, read_graded_file, resolve_run
from mathloop.pipeline.loop import _against_round_0, _write_summary
from mathloop.records import Sample, write_jsonl
from mathloop.stats import mcnemar_exact_p, paired_bootstrap_ci95, paired_difference_ci95

Z = 1.959963984540054


# ---- McNemar --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("b, c, expected", [
    (7, 8, Fraction(1)),  # sum_{i<=7} C(15, i) = 2^14: the doubled tail is exactly 1
    (0, 6, Fraction(2, 2 ** 6)),  # 2 * (1/2)^6 = 1/32
    (2, 10, Fraction(2 * (1 + 12 + 66), 2 ** 12)),  # 2 * (C(12,0) + C(12,1) + C(12,2)) / 2^12 = 79/2048
    (10, 2, Fraction(79, 2048)),  # two-sided: symmetric in b and c
    (1, 9, Fraction(2 * (1 + 10), 2 ** 10)),  # 11/512
    (0, 0, Fraction(1)),  # no discordant problem: no evidence either way
    (0, 1, Fraction(1)),  # 2 * 1/2
])
def test_mcnemar_exact_p(b, c, expected):
    assert mcnemar_exact_p(b, c) == float(expected)


def test_mcnemar_exact_p_large_counts_do_not_overflow():
    # 1000 vs 1400 discordant problems: a tiny p-value, not an OverflowError or 0 from float binomials
    p = mcnemar_exact_p(1000, 1400)
    assert 0 < p < 1e-9


# ---- Tango's interval for paired proportions ------------------------------------------------------------------

def test_paired_interval_worked_example():
    # 10 problems: both right 5, right only in A (b) 1, right only in B (c) 3, both wrong 1.
    # acc A = 6/10, acc B = 8/10, difference d = (c - b) / n = 0.2.
    # Tango's score: Z(d) = (c - b - n d) / sqrt(n (2 q + d - d^2)), with the restricted MLE
    #   q = (sqrt(W^2 + 8 n b d (1 - d)) - W) / (4 n),  W = -(b + c) + (2 n + b - c) d = -4 + 18 d.
    # Lower limit, Z = +1.96, at d = -0.217085:
    #   W = -4 + 18 * -0.217085 = -7.90753;  8 n b d (1 - d) = 80 * -0.217085 * 1.217085 = -21.1369
    #   q = (sqrt(62.5290 - 21.1369) - (-7.90753)) / 40 = (6.43367 + 7.90753) / 40 = 0.358530
    #   Z = (2 + 2.17085) / sqrt(10 * (0.717060 - 0.217085 - 0.047126)) = 4.17085 / sqrt(4.52849) = 1.95996
    # Upper limit, Z = -1.96, at d = 0.551453:
    #   W = -4 + 9.92615 = 5.92615;  8 n b d (1 - d) = 80 * 0.551453 * 0.448547 = 19.7881
    #   q = (sqrt(35.1193 + 19.7881) - 5.92615) / 40 = (7.40996 - 5.92615) / 40 = 0.0370952
    #   Z = (2 - 5.51453) / sqrt(10 * (0.0741903 + 0.551453 - 0.304100)) = -3.51453 / sqrt(3.21543) = -1.95996
    difference, lower, upper = paired_difference_ci95(5, 1, 3, 1)
    assert difference == pytest.approx(0.2)
    assert lower == pytest.approx(-0.217085, abs=2e-6)
    assert upper == pytest.approx(0.551453, abs=2e-6)


def test_paired_interval_limits_are_score_test_boundaries_by_brute_force():
    # Independent of the closed-form q: at each limit, maximize the likelihood of the 2x2 table over the nuisance
    # cell on a fine grid under p_B - p_A = d; the score statistic there must be exactly +-1.96.
    both, b, c, neither = 20, 7, 15, 58
    n = both + b + c + neither
    difference, lower, upper = paired_difference_ci95(both, b, c, neither)
    assert difference == pytest.approx((c - b) / n)
    for d, target in ((lower, Z), (upper, -Z)):
        grid = [max(0.0, -d) + (i + 0.5) * (1 - abs(d)) / 2 / 200_000 for i in range(200_000)]

        def log_likelihood(q):  # q = P(right only in A), q + d = P(right only in B), the rest concordant
            return b * math.log(q) + c * math.log(q + d) + (both + neither) * math.log(1 - 2 * q - d)

        q = max(grid, key=log_likelihood)
        assert (c - b - n * d) / math.sqrt(n * (2 * q + d - d * d)) == pytest.approx(target, abs=1e-3)


def test_paired_interval_edges():
    # no discordant problems: Z(d)^2 = n d / (1 - d)  =>  limits +-z^2 / (n + z^2)
    difference, lower, upper = paired_difference_ci95(5, 0, 0, 5)
    assert difference == 0 and upper == pytest.approx(Z * Z / (10 + Z * Z)) and lower == pytest.approx(-upper)
    # swapping A and B mirrors the interval
    assert paired_difference_ci95(1, 3, 1, 5) == pytest.approx(tuple(-x for x in (0.2, 0.551453, -0.217085)),
                                                                abs=2e-6)
    # B right everywhere, A nowhere: the interval stays inside [-1, 1] and touches 1
    difference, lower, upper = paired_difference_ci95(0, 0, 10, 0)
    assert (difference, upper) == (1.0, 1.0) and 0 < lower < 1
    with pytest.raises(ValueError):
        paired_difference_ci95(0, 0, 0, 0)


# ---- paired bootstrap -----------------------------------------------------------------------------------------

def test_paired_bootstrap_is_deterministic_for_a_seed():
    a = [(i * 37 % 101) / 101 for i in range(60)]  # many distinct values, so quantiles differ between seeds
    b = [(i * 53 % 97) / 97 for i in range(60)]
    first = paired_bootstrap_ci95(a, b, resamples=2000, seed=3)
    assert paired_bootstrap_ci95(a, b, resamples=2000, seed=3) == first
    assert paired_bootstrap_ci95(a, b, resamples=2000, seed=4) != first
    difference, lower, upper = first
    assert difference == pytest.approx(sum(b) / len(b) - sum(a) / len(a)) and lower < difference < upper
    # every problem moved by the same amount: every resample has that mean difference
    assert paired_bootstrap_ci95([0.0, 0.5], [0.25, 0.75], resamples=50) == pytest.approx((0.25, 0.25, 0.25))


# ---- the comparison -------------------------------------------------------------------------------------------

def graded(verdicts: dict[str, list[bool]]) -> dict[str, list[Graded]]:
    """Samples with the given correctness; right answers are "1", wrong ones "2"."""
    return {pid: [Graded(right, "1" if right else "2") for right in samples] for pid, samples in verdicts.items()}


def test_compare_benchmark_pairs_only_shared_problems():
    a = graded({"p1": [True], "p2": [True], "p3": [False], "p4": [True]})
    b = graded({"p2": [False], "p3": [True], "p4": [True], "p5": [True], "p6": [True]})
    entry = compare_benchmark(a, b)
    assert (entry["shared"], entry["only_in_a"], entry["only_in_b"]) == (3, 1, 2)
    first = entry["first_sample"]
    # shared p2 (A only), p3 (B only), p4 (both): p1 (right in A) and p5, p6 (right in B) do not count
    assert (first["both"], first["b"], first["c"], first["neither"]) == (1, 1, 1, 0)
    assert first["acc_a"]["mean"] == first["acc_b"]["mean"] == pytest.approx(2 / 3) and first["delta"] == 0
    assert "mean" not in entry and "maj_at_k" not in entry  # one sample per problem: no bootstrap, no vote


def test_majority_vote_and_coverage_are_paired_over_the_first_k_samples():
    def sample(answer: str) -> Graded:  # the gold answer is 7
        return Graded(answer in ("7", "7.0"), answer)

    a = {  # 4 samples per problem
        "p1": [sample(x) for x in ("7", "3", "3", "7.0")],  # 7 and 7.0 are one answer: 2 votes, tie, 7 came first
        "p2": [sample(x) for x in ("3", "3", "7", "5")],  # majority 3: wrong; covered
        "p3": [sample(x) for x in ("3", "4", "5", "6")],  # all wrong
        "p4": [sample(x) for x in ("7", "7", "7", "7")],
    }
    b = {  # 5 samples per problem: only the first 4 count
        "p1": [sample(x) for x in ("3", "3", "3", "3", "7")],  # maj wrong, not covered in the first 4
        "p2": [sample(x) for x in ("7", "7", "3", "5", "5")],  # maj right
        "p3": [sample(x) for x in ("3", "3", "5", "6", "7")],  # all 4 wrong
        "p4": [sample(x) for x in ("7", "2", "7", "2", "2")],  # tie, 7 came first: right
    }
    entry = compare_benchmark(a, b, resamples=200)
    maj, cover = entry["maj_at_k"], entry["pass_at_k"]
    # maj@4: A right on p1, p4; B right on p2, p4 -> b = 1 (p1), c = 1 (p2), both 1 (p4), neither 1 (p3)
    assert (maj["k"], maj["both"], maj["b"], maj["c"], maj["neither"]) == (4, 1, 1, 1, 1)
    assert maj["mcnemar_p"] == 1.0 and maj["acc_a"]["mean"] == maj["acc_b"]["mean"] == 0.5
    # pass@4: A covers p1, p2, p4; B covers p2, p4 -> b = 1 (p1), c = 0
    assert (cover["k"], cover["both"], cover["b"], cover["c"], cover["neither"]) == (4, 2, 1, 0, 1)
    assert cover["delta"] == -0.25 and cover["ci95"] == pytest.approx(list(paired_difference_ci95(2, 1, 0, 1)[1:]))
    # the mean over every sample each run has: A (2/4 + 1/4 + 0 + 1) / 4, B (1/5 + 2/5 + 1/5 + 2/5) / 4
    assert entry["mean"]["delta"] == pytest.approx(0.3 - 0.4375)

    # runs that recorded no answers (a `mathloop grade` row without preds): coverage only, no vote
    blind = {pid: [Graded(s.correct) for s in samples] for pid, samples in a.items()}
    entry = compare_benchmark(blind, b, resamples=200)
    assert "maj_at_k" not in entry and entry["pass_at_k"]["b"] == 1


def eval_folder(root: Path, outcomes: dict[str, dict[str, list[bool]]]) -> Path:
    """A mathloop eval folder with one Sample per (problem, sample) and the given correctness."""
    root.mkdir(parents=True)
    (root / "run.json").write_text(json.dumps({"config": {"model": "tiny"}}))
    (root / "metrics.json").write_text("{}")
    for benchmark, problems in outcomes.items():
        write_jsonl(root / "samples" / f"{benchmark}.jsonl", [
            Sample(problem_id=pid, prompt="q", response="r", benchmark=benchmark, sample_index=i, gold="1",
                   pred="1" if right else "2", verdict="correct" if right else "incorrect")
            for pid, verdicts in problems.items() for i, right in reversed(list(enumerate(verdicts)))])
    return root


def greedy(both: int, only_a: int, only_b: int, neither: int) -> tuple[dict, dict]:
    cells = [(True, True)] * both + [(True, False)] * only_a + [(False, True)] * only_b + [(False, False)] * neither
    return ({f"q{i}": [x] for i, (x, _) in enumerate(cells)}, {f"q{i}": [y] for i, (_, y) in enumerate(cells)})


def test_cli_compares_two_eval_folders(tmp_path, capsys):
    a, b = greedy(5, 2, 10, 3)  # 20 shared problems: 35% -> 75%, b = 2, c = 10, p = 79/2048
    a["only-a"], b["only-b1"], b["only-b2"] = [True], [False], [True]
    # math500: 4 samples per problem; B gets one more sample right on each of 3 problems of 4
    a4 = {"m1": [True, False, False, False], "m2": [False] * 4, "m3": [True] * 4, "m4": [False] * 4}
    b4 = {"m1": [True, True, False, False], "m2": [True, False, False, False], "m3": [True] * 4,
          "m4": [False, True, False, False]}
    run_a = eval_folder(tmp_path / "a", {"gsm8k": a, "math500": a4, "aime24": {"x": [True]}})
    run_b = eval_folder(tmp_path / "b", {"gsm8k": b, "math500": b4})
    json_path = tmp_path / "cmp" / "compare.json"

    assert main(["compare", str(run_a), str(run_b), "--json", str(json_path), "--resamples", "500"]) == 0
    markdown = capsys.readouterr().out
    assert "| gsm8k | 20 | 1 / 2 | 35.0 | 75.0 | +40.0 [" in markdown and "| 2 / 10 | 0.0386 |" in markdown
    assert "| math500 | 4 | 0 / 0 | 50.0 | 75.0 | +25.0 [" in markdown  # first samples: m2 goes wrong -> right
    # means per problem: A (1/4 + 0 + 1 + 0) / 4 = 31.25%, B (2/4 + 1/4 + 1 + 1/4) / 4 = 50%
    assert "| math500 | 4 / 4 | 31.2 | 50.0 | +18.8 [" in markdown and "500 resamples, seed 0" in markdown
    assert "Only in A (not compared): aime24" in markdown
    # maj@4: m1 goes from three wrong votes against one to a tie that the right answer wins (it came first);
    # pass@4: B covers m2 and m4 as well
    voted = markdown[markdown.index("| benchmark | k | A maj@k"):].splitlines()
    assert voted[2].startswith("| math500 | 4 | 25.0 | 50.0 | +25.0 [") and voted[2].endswith("| 0 / 2 | 0.500 |")
    assert "| 0 / 1 | 1.000 | 50.0 | 100.0 | +50.0 [" in voted[2]
    assert not voted[3].startswith("| gsm8k")  # one sample per problem: no vote
    result = json.loads(json_path.read_text())
    first = result["benchmarks"]["gsm8k"]["first_sample"]
    assert (first["b"], first["c"], first["mcnemar_p"]) == (2, 10, 79 / 2048)
    assert first["ci95"] == pytest.approx(list(paired_difference_ci95(5, 2, 10, 3)[1:]))
    assert result["benchmarks"]["math500"]["mean"]["delta"] == pytest.approx(3 / 16)
    assert result["benchmarks"]["math500"]["first_sample"]["c"] == 1  # m2's first sample: wrong -> right

    out = tmp_path / "cmp" / "compare.md"
    assert main(["compare", str(run_a), str(run_b), "--out", str(out), "--resamples", "500"]) == 0
    assert capsys.readouterr().out == "" and out.read_text() == markdown


def test_cli_compares_loop_rounds_and_grade_files(tmp_path, capsys):
    a, b = greedy(1, 0, 6, 1)  # 1/8 -> 7/8; b = 0, c = 6: p = 1/32
    loop = tmp_path / "loop"
    eval_folder(loop / "round-0" / "eval", {"gsm8k": a})
    eval_folder(loop / "round-2" / "eval", {"gsm8k": b})
    assert resolve_run(f"{loop}:2") == resolve_run(str(loop / "round-2")) == loop / "round-2" / "eval"
    assert main(["compare", f"{loop}:0", f"{loop}:2"]) == 0
    assert "| gsm8k | 8 | 0 / 0 | 12.5 | 87.5 | +75.0 [" in capsys.readouterr().out

    # `mathloop grade` output of official-harness rows: one row per problem, keyed by idx, several responses
    graded = tmp_path / "graded.jsonl"
    write_jsonl(graded, [{"idx": i, "question": f"q{i}", "gt": "1", "code": ["r", "r"],
                          "mathloop": {"preds": ["1", "2"], "verdicts": [v, "incorrect"]}}
                         for i, v in enumerate(["correct", "incorrect", "correct"])])
    assert read_graded_file(graded) == {"all": {str(i): [Graded(v == "correct", "1"), Graded(False, "2")]
                                                for i, v in enumerate(["correct", "incorrect", "correct"])}}
    assert main(["compare", str(graded), str(graded), "--resamples", "100"]) == 0
    assert "| all | 3 | 0 / 0 | 66.7 | 66.7 | +0.0 [" in capsys.readouterr().out


def test_cli_errors_name_the_run(tmp_path, capsys):
    loop = tmp_path / "loop"
    eval_folder(loop / "round-0" / "eval", {"gsm8k": {"q": [True]}})
    assert main(["compare", str(loop), f"{loop}:0"]) == 2
    assert f"{loop} is a loop folder; name a round: {loop}:0" in capsys.readouterr().err
    assert main(["compare", f"{loop}:0", f"{loop}:3"]) == 2
    assert "round-3" in capsys.readouterr().err
    ungraded = tmp_path / "raw.jsonl"
    write_jsonl(ungraded, [{"problem_id": "q", "response": "r"}])
    assert main(["compare", str(ungraded), f"{loop}:0"]) == 2
    assert f"{ungraded}:1: no verdict" in capsys.readouterr().err


def test_loop_summary_pairs_each_round_with_round_0(tmp_path):
    a, b = greedy(5, 2, 10, 3)
    eval_folder(tmp_path / "round-0" / "eval", {"gsm8k": a})
    eval_folder(tmp_path / "round-1" / "eval", {"gsm8k": b})
    rows = [{"round": 0, "benchmark": "gsm8k", "acc": 0.35, "ci95": [0.18, 0.57], "n": 20},
            {"round": 1, "benchmark": "gsm8k", "acc": 0.75, "ci95": [0.53, 0.89], "n": 20,
             "vs_round_0": _against_round_0(tmp_path, tmp_path / "round-1", "gsm8k")}]
    summary = _write_summary(tmp_path, rows)
    lines = (tmp_path / "summary.md").read_text().splitlines()
    header = next(line for line in lines if line.startswith("| round"))
    assert "| delta vs round 0 [95% CI] | b / c | McNemar p |" in header
    lower, upper = paired_difference_ci95(5, 2, 10, 3)[1:]
    assert f"| +40.0 [{100 * lower:+.1f}, {100 * upper:+.1f}] | 2 / 10 | 0.0386 |" in lines[lines.index(header) + 3]
    assert lines[lines.index(header) + 2].startswith("| 0 | 35.0% | [18.0, 57.0] |  |  |  | 20 |")
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert summary["rounds"][1]["vs_round_0"]["first_sample"]["mcnemar_p"] == 79 / 2048
