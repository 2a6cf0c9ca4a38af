"""Metrics against values computed by hand."""

from fractions import Fraction

import pytest

from mathloop.metrics import (
    balance_score,
    selector_at_k,
    format_markdown,
    maj_at_k,
    mean_ci95,
    pass_at_k,
    rm_at_k,
    rm_pair_accuracy,
    summarize,
)

C, I, N = "correct", "incorrect", "no_answer"


@pytest.mark.parametrize("n, c, k, expected", [
    (5, 2, 1, 2 / 5),  # c / n
    (5, 2, 2, 1 - 3 / 10),  # 1 - C(3,2)/C(5,2)
    (5, 2, 3, 1 - 1 / 10),  # 1 - C(3,3)/C(5,3)
    (5, 2, 4, 1.0),  # fewer than k wrong samples: some correct one is always drawn
    (5, 0, 3, 0.0),
    (5, 5, 5, 1.0),
    (1, 1, 1, 1.0),
])
def test_pass_at_k(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected)


def test_pass_at_k_large_n_is_stable():
    # 1 - C(900, 10) / C(1000, 10) without forming the binomials
    all_wrong = Fraction(1)
    for i in range(10):
        all_wrong *= Fraction(900 - i, 1000 - i)
    expected = 1 - float(all_wrong)
    assert pass_at_k(1000, 100, 10) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("n, c, k", [(5, 2, 6), (5, 6, 1), (5, 2, 0)])
def test_pass_at_k_rejects_bad_arguments(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_maj_at_k_tie_goes_to_first_appearance():
    answers, verdicts = ["4", "3", "3", "4"], [I, C, C, I]
    assert maj_at_k(answers, verdicts, 4) == 0.0  # 2 votes each; "4" appeared first
    assert maj_at_k(answers, verdicts, 3) == 1.0  # "3" has 2 of 3 votes
    assert maj_at_k(answers, verdicts, 1) == 0.0


def test_maj_at_k_none_does_not_vote():
    assert maj_at_k([None, None, "5"], [N, N, C], 3) == 1.0
    assert maj_at_k([None, None], [N, N], 2) == 0.0
    assert maj_at_k(["5", None, None], [C, N, N], 3) == 1.0


def test_maj_at_k_default_equivalence_strips_whitespace():
    assert maj_at_k(["8", " 7", "7 "], [I, C, C], 3) == 1.0


def test_maj_at_k_equivalence_classes():
    def same_number(a: str, b: str) -> bool:
        return Fraction(a) == Fraction(b)

    answers, verdicts = ["2", "0.5", "1/2"], [I, C, C]
    assert maj_at_k(answers, verdicts, 3) == 0.0  # three different strings tie; "2" came first
    assert maj_at_k(answers, verdicts, 3, same=same_number) == 1.0  # 0.5 and 1/2 form one class of 2 votes


def test_maj_at_k_grades_the_winning_class_by_its_first_member():
    # the class {"1/2", "0.5"} wins; its first member carries the verdict
    assert maj_at_k(["1/2", "0.5", "3"], [C, I, I], 3, same=lambda a, b: Fraction(a) == Fraction(b)) == 1.0


def test_maj_at_k_rejects_bad_arguments():
    with pytest.raises(ValueError):
        maj_at_k(["1"], [C], 2)
    with pytest.raises(ValueError):
        maj_at_k(["1", "2"], [C], 1)


def test_rm_at_k():
    scores, verdicts = [0.2, 0.9, 0.9, 0.95], [C, I, C, C]
    assert rm_at_k(scores, verdicts, 1) == 1.0
    assert rm_at_k(scores, verdicts, 3) == 0.0  # 0.9 twice: the earlier (incorrect) one wins
    assert rm_at_k(scores, verdicts, 4) == 1.0


def test_rm_at_k_needs_scores():
    with pytest.raises(ValueError, match="score"):
        rm_at_k([0.1, None], [C, I], 2)


def test_wilson_interval_by_hand():
    # p = 1/5, z = 1.96: center = (p + z^2/2n) / (1 + z^2/n) = 0.33035,
    # half = z * sqrt(p(1-p)/n + z^2/4n^2) / (1 + z^2/n) = 0.29412
    mean, lo, hi = mean_ci95([1, 0, 0, 0, 0])
    assert mean == pytest.approx(0.2)
    assert lo == pytest.approx(0.03622, abs=1e-4)
    assert hi == pytest.approx(0.62447, abs=1e-4)


def test_wilson_interval_at_the_edges_stays_in_unit_interval():
    mean, lo, hi = mean_ci95([1, 1, 1])
    assert mean == 1.0 and hi == 1.0  # 3/3: lower bound n / (n + z^2) = 0.43850
    assert lo == pytest.approx(0.43850, abs=1e-4)


def test_normal_interval_for_fractional_values():
    # mean 0.5, sample std sqrt(0.5/3) = 0.40825, half width 1.96 * 0.40825 / 2 = 0.40008
    mean, lo, hi = mean_ci95([0.5, 1.0, 0.0, 0.5])
    assert (mean, lo, hi) == pytest.approx((0.5, 0.09992, 0.90008), abs=1e-4)
    assert mean_ci95([0.9, 1.0, 0.95])[2] == 1.0  # clipped
    assert mean_ci95([0.25]) == (0.25, 0.25, 0.25)
    with pytest.raises(ValueError):
        mean_ci95([])


PROBLEMS = [
    {"benchmark": "gsm8k", "verdicts": [C, I, C, N], "preds": ["1", "2", "1", None], "scores": [0.1, 0.5, 0.3, 0.0]},
    {"benchmark": "gsm8k", "verdicts": [I, I, C, I], "preds": ["5", "5", "6", "7"], "scores": [0.2, 0.1, 0.9, 0.3]},
    {"benchmark": "math", "verdicts": [I, C, C, I], "preds": ["a", "b", "b", "c"]},
]


def test_summarize_three_problems():
    summary = summarize(PROBLEMS, ks=[1, 2, 4, 8])
    gsm8k, math = summary["benchmarks"]["gsm8k"], summary["benchmarks"]["math"]

    assert (gsm8k["n_problems"], gsm8k["n_samples"]) == (2, 8)
    assert (gsm8k["correct"], gsm8k["incorrect"], gsm8k["no_answer"]) == (3, 4, 1)
    expected_gsm8k = {"acc": 0.5, "pass@1": (0.5 + 0.25) / 2, "pass@2": (5 / 6 + 1 / 2) / 2, "pass@4": 1.0,
                      "maj@1": 0.5, "maj@2": 0.5, "maj@4": 0.5, "rm@1": 0.5, "rm@2": 0.0, "rm@4": 0.5,
                      "rm_pair_acc": (2 / 4 + 3 / 3) / 2,
                      # votes weighted by sigmoid(score): at k=2 the heavier wrong "2" and the lone "5" win; at k=4
                      # "1" (0.525 + 0.574) beats "2" (0.622), "5" (0.550 + 0.525) beats "6" (0.711)
                      "rm-weighted@2": 0.0, "rm-weighted@4": 0.5}
    assert {k: v["mean"] for k, v in gsm8k.items() if isinstance(v, dict) and "mean" in v} \
        == pytest.approx(expected_gsm8k)
    # maj@4 is right on the first problem only, rm@4 on the second only
    assert {k: gsm8k["rm@4_vs_maj@4"][k] for k in ("both", "b", "c", "neither", "delta")} == \
        {"both": 0, "b": 1, "c": 1, "neither": 0, "delta": 0.0}
    # pass@1 values 0.5 and 0.25: normal interval 0.375 +- 1.96 * 0.17678 / sqrt(2)
    assert gsm8k["pass@1"]["ci95"] == pytest.approx([0.375 - 0.24500, 0.375 + 0.24500], abs=1e-4)

    expected_math = {"acc": 0.0, "pass@1": 0.5, "pass@2": 5 / 6, "pass@4": 1.0, "maj@1": 0.0, "maj@2": 0.0,
                     "maj@4": 1.0}
    assert {k: v["mean"] for k, v in math.items() if isinstance(v, dict)} == pytest.approx(expected_math)
    assert "pass@8" not in gsm8k  # only 4 samples per problem

    average = summary["average"]
    assert average["acc"]["mean"] == pytest.approx(0.25)
    assert average["pass@2"]["mean"] == pytest.approx((2 / 3 + 5 / 6) / 2)
    assert average["maj@4"]["mean"] == pytest.approx(0.75)
    assert "rm@4" not in average  # math has no reward-model scores
    assert (average["n_benchmarks"], average["n_problems"], average["n_samples"]) == (2, 3, 12)


def test_summarize_passes_equivalence_to_maj():
    problems = [{"verdicts": [I, C, C], "preds": ["2", "0.5", "1/2"]}]
    plain = summarize(problems, ks=[3])
    assert list(plain["benchmarks"]) == ["all"]
    assert plain["benchmarks"]["all"]["maj@3"]["mean"] == 0.0
    numeric = summarize(problems, ks=[3], same=lambda a, b: Fraction(a) == Fraction(b))
    assert numeric["benchmarks"]["all"]["maj@3"]["mean"] == 1.0


def test_summarize_rejects_unknown_verdict():
    with pytest.raises(ValueError, match="verdict"):
        summarize([{"verdicts": ["right"], "preds": ["1"]}], ks=[1])


def test_format_markdown_table():
    table = format_markdown(summarize(PROBLEMS, ks=[1, 4]))
    lines = table.splitlines()
    assert lines[0] == ("| benchmark | n | acc | pass@1 | pass@4 | maj@1 | maj@4 | rm@1 | rm@4 | rm_pair_acc "
                        "| rm-weighted@4 |")
    assert lines[1] == "|---|---|---|---|---|---|---|---|---|---|---|"
    assert lines[2].startswith("| gsm8k | 2 | 50.0 [")
    assert lines[3].startswith("| math | 1 | 0.0 [0.0, 79.3] |")  # Wilson interval of 0/1
    assert lines[3].endswith("| - | - | - | - |")  # no rm@k without scores
    assert lines[4] == "| average | 3 | 25.0 | 43.8 | 100.0 | 25.0 | 75.0 | - | - | - | - |"
    assert lines[6].startswith("Picks against majority vote") and lines[8].startswith("- gsm8k rm@4 vs maj@4: +0.0 [")
    assert lines[9].startswith("- gsm8k rm-weighted@4 vs maj@4: +0.0 [")


def test_rm_pair_accuracy_by_hand():
    # correct samples scored 0.9 and 0.4; wrong ones 0.5 and 0.4: pairs (0.9>0.5) (0.9>0.4) (0.4<0.5) (0.4=0.4)
    assert rm_pair_accuracy([0.9, 0.5, 0.4, 0.4], ["correct", "incorrect", "correct", "no_answer"]) == 2.5 / 4
    assert rm_pair_accuracy([0.1, 0.2], ["correct", "correct"]) is None  # no wrong sample: no pair
    with pytest.raises(ValueError, match="score for every sample"):
        rm_pair_accuracy([0.1, None], ["correct", "incorrect"])


def _problem(maj_right: bool, rm_right: bool) -> dict:
    """Three samples: answers 7, 7, 9; the majority picks 7, the RM (highest score) picks sample 2 (answer 9)."""
    verdicts = ["correct" if maj_right else "incorrect"] * 2 + ["correct" if rm_right else "incorrect"]
    return {"benchmark": "gsm8k", "preds": ["7", "7", "9"], "verdicts": verdicts, "scores": [0.1, 0.2, 0.3]}


def test_rm_against_majority_is_paired_per_problem():
    # 1 problem right by both, 1 right only by majority (b), 4 right only by the RM (c), 2 wrong by both
    problems = ([_problem(True, True)] + [_problem(True, False)] + [_problem(False, True)] * 4
                + [_problem(False, False)] * 2)
    entry = summarize(problems, [1, 3])["benchmarks"]["gsm8k"]
    paired = entry["rm@3_vs_maj@3"]
    assert (paired["both"], paired["b"], paired["c"], paired["neither"]) == (1, 1, 4, 2)
    assert paired["acc_a"]["mean"] == entry["maj@3"]["mean"] == 2 / 8
    assert paired["acc_b"]["mean"] == entry["rm@3"]["mean"] == 5 / 8
    assert paired["delta"] == pytest.approx(3 / 8)
    assert paired["mcnemar_p"] == pytest.approx(2 * (1 + 5) / 2 ** 5)  # b=1, c=4: 2 * P(X <= 1), X ~ Bin(5, 1/2)
    lower, upper = paired["ci95"]
    assert lower < 3 / 8 < upper
    # the RM ranks the one right sample above both wrong ones in the 4 "c" problems (pair accuracy 1) and
    # below them in the "b" problem (0); the other 3 problems are all right or all wrong: no pair
    assert entry["rm_pair_acc"]["problems"] == 5
    assert entry["rm_pair_acc"]["mean"] == pytest.approx(4 / 5)
    table = format_markdown(summarize(problems, [1, 3]))
    assert "- gsm8k rm@3 vs maj@3: +37.5 [" in table and "b / c = 1 / 4, p = 0.375" in table


def test_no_rm_against_majority_without_scores_or_with_one_sample():
    problems = [_problem(True, False) | {"scores": None}]
    assert not any("_vs_maj@" in key for key in summarize(problems, [1, 3])["benchmarks"]["gsm8k"])
    one = [{"benchmark": "gsm8k", "preds": ["7"], "verdicts": ["correct"], "scores": [0.5]}]
    assert not any("_vs_maj@" in key for key in summarize(one, [1])["benchmarks"]["gsm8k"])


def _confident(preds: list, verdicts: list, lowest: list[float]) -> dict:
    return {"benchmark": "gsm8k", "preds": preds, "verdicts": verdicts,
            "confidences": [{"mean": x / 2, "lowest_window": x, "tail": x} for x in lowest]}


def test_confidence_selectors_on_hand_made_groups():
    # the majority "4" is wrong; the right "3" is the most confident answer
    row = _confident(["4", "4", "3", None], [I, I, C, N], [-1.0, -1.2, -0.1, -0.05])
    picks = {s: selector_at_k(s, row, 4) for s in ("majority", "confidence", "confidence-weighted",
                                                   "confidence-filtered")}
    # the most confident sample has no answer: confidence@4 picks it and is wrong; the weights exp(-1) + exp(-1.2)
    # = 0.67 for "4" lose to exp(-0.1) = 0.90 for "3"; the most confident half votes "3" (the None does not vote)
    assert picks == {"majority": 0.0, "confidence": 0.0, "confidence-weighted": 1.0, "confidence-filtered": 1.0}
    tie = _confident(["4", "3"], [I, C], [-0.5, -0.5])  # equal confidence: the earlier sample
    assert selector_at_k("confidence", tie, 2) == 0.0
    one = _confident(["3"], [C], [-2.0])
    assert [selector_at_k(s, one, 1) for s in ("confidence", "confidence-weighted", "confidence-filtered")] == [1.0] * 3
    missing = _confident(["3", "4"], [C, I], [-0.1, -0.2])
    missing["confidences"][1] = None
    with pytest.raises(ValueError, match="confidence"):
        selector_at_k("confidence", missing, 2)
    with pytest.raises(ValueError, match="reward-model score"):
        selector_at_k("rm-weighted", row, 2)
    with pytest.raises(ValueError, match="unknown selector"):
        selector_at_k("best", row, 2)


def test_summarize_reports_confidence_picks_paired_with_majority():
    rows = [_confident(["4", "4", "3", "3"], [I, I, C, C], [-2.0, -3.0, -0.1, -0.2]),  # filtered vote fixes it
            _confident(["5", "5", "6", "7"], [C, C, I, I], [-0.3, -0.2, -0.1, -0.4])]  # most confident is wrong
    entry = summarize(rows, ks=[1, 2, 4])["benchmarks"]["gsm8k"]
    assert entry["maj@4"]["mean"] == 0.5
    assert (entry["confidence@4"]["mean"], entry["confidence-filtered@4"]["mean"]) == (0.5, 1.0)
    paired = entry["confidence-filtered@4_vs_maj@4"]
    assert (paired["both"], paired["b"], paired["c"], paired["neither"]) == (1, 0, 1, 0)
    assert "confidence@1" not in entry  # one sample: nothing to pick
    assert "rm-weighted@4" not in entry and "confidence@4" not in summarize(
        [{k: v for k, v in r.items() if k != "confidences"} for r in rows], ks=[4])["benchmarks"]["gsm8k"]


def test_balance_score_by_hand():
    """min(u / target, 1) per problem, averaged; a problem without a correct response scores 0."""
    assert balance_score([4], target=4) == 1.0  # four different right answers: all it asks for
    assert balance_score([8], target=4) == 1.0  # more than the target adds nothing
    assert balance_score([1], target=4) == 0.25  # one answer, however often it was said
    assert balance_score([2, 0], target=4) == pytest.approx((2 / 4 + 0) / 2)
    assert balance_score([3, 1, 0], target=2) == pytest.approx((1 + 0.5 + 0) / 3)


@pytest.mark.parametrize("distinct, target, message", [
    ([], 4, "no problems"), ([1], 0, "target"), ([-1], 4, "counts must be >= 0")])
def test_balance_score_rejects_bad_counts(distinct, target, message):
    with pytest.raises(ValueError, match=message):
        balance_score(distinct, target)
