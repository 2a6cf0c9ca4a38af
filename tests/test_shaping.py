"""The shaped RL reward, the TRL-style reward functions and the RL query filter, against hand-computed values."""

from __future__ import annotations

import math

import pytest

from mathloop.reward.shaping import (
    completion_text,
    make_rm_reward,
    make_shaped_reward,
    select_queries,
    shaped_reward,
    verifier_reward,
)

SIG_1 = 1 / (1 + math.exp(-1))  # sigmoid(0.5 * 2) = 0.7310586


@pytest.mark.parametrize("rm_score, correct, alpha, expected", [
    (0.0, True, 0.5, 0.5),
    (0.0, False, 0.5, -0.5),
    (2.0, True, 0.5, SIG_1),
    (2.0, False, 0.5, SIG_1 - 1),          # -0.2689414
    (-2.0, True, 0.5, 1 - SIG_1),           # 0.2689414
    (-2.0, False, 1.0, 1 / (1 + math.exp(2)) - 1),  # sigmoid(-2) - 1 = -0.8807971
])
def test_shaped_reward_values(rm_score, correct, alpha, expected):
    assert shaped_reward(rm_score, correct, alpha) == pytest.approx(expected, abs=1e-9)


def test_every_correct_response_beats_every_incorrect_one():
    scores = [-30.0, -5.0, -0.1, 0.0, 0.1, 5.0, 30.0]
    correct = [shaped_reward(s, True) for s in scores]
    incorrect = [shaped_reward(s, False) for s in scores]
    assert all(0 < r < 1 for r in correct) and all(-1 < r < 0 for r in incorrect)
    assert min(correct) > max(incorrect)
    assert correct == sorted(correct) and incorrect == sorted(incorrect)  # the RM orders within a class
    assert shaped_reward(1e6, True) == 1.0 and shaped_reward(-1e6, False) == -1.0  # saturates, no overflow


def test_completion_text_accepts_strings_and_chats():
    assert completion_text("\\boxed{1}") == "\\boxed{1}"
    chat = [{"role": "assistant", "content": "x"}, {"role": "tool", "content": "y"},
            {"role": "assistant", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    assert completion_text(chat) == "ab"
    with pytest.raises(ValueError, match="assistant"):
        completion_text([{"role": "user", "content": "hi"}])


def test_verifier_reward_grades_against_gold():
    completions = [
        "So the answer is $\\boxed{\\frac{1}{2}}$.",
        [{"role": "assistant", "content": "The answer is \\boxed{0.5}"}],
        "The answer is \\boxed{3}.",
        "I do not know.",
        "\\boxed{7}",
        "The answer is (B).",
    ]
    rewards = verifier_reward(["q"] * 6, completions, gold=["0.5", "1/2", "4", "4", None, "B"],
                              answer_type=["math", "math", "math", "math", "math", "mc"])
    assert rewards == [1.0, 1.0, 0.0, 0.0, None, 1.0]


def test_verifier_reward_needs_a_gold_column_of_the_right_length():
    with pytest.raises(ValueError, match="'gold' column"):
        verifier_reward(["q"], ["\\boxed{1}"], solution=["1"])
    with pytest.raises(ValueError, match="2 entries for 1"):
        verifier_reward(["q"], ["\\boxed{1}"], gold=["1", "2"])


def test_rm_reward_scores_the_completion_text():
    seen = {}

    def score_fn(prompts, texts):
        seen["prompts"], seen["texts"] = list(prompts), list(texts)
        return [len(t) / 10 for t in texts]

    rm = make_rm_reward(score_fn)
    out = rm(["p1", "p2"], ["abc", [{"role": "assistant", "content": "abcdef"}]], gold=["1", "2"])
    assert out == pytest.approx([0.3, 0.6]) and rm.__name__ == "rm_reward"
    assert seen == {"prompts": ["p1", "p2"], "texts": ["abc", "abcdef"]}
    with pytest.raises(ValueError, match="1 scores for 2"):
        make_rm_reward(lambda p, t: [0.0])(["p", "p"], ["a", "b"])


def test_shaped_reward_function_combines_verifier_and_rm():
    rm_scores = {"\\boxed{4}": 2.0, "\\boxed{5}": 2.0, "\\boxed{4} again": -2.0, "\\boxed{9}": 0.0}
    calls = []

    def score_fn(prompts, texts):
        calls.append(list(texts))
        return [rm_scores[t] for t in texts]

    shaped = make_shaped_reward(score_fn)
    out = shaped(["q"] * 4, ["\\boxed{4}", "\\boxed{5}", "\\boxed{4} again", "\\boxed{9}"],
                 gold=["4", "4", "4", None])
    assert out[:3] == pytest.approx([SIG_1, SIG_1 - 1, 1 - SIG_1]) and out[3] is None
    assert calls == [["\\boxed{4}", "\\boxed{5}", "\\boxed{4} again"]]  # rows without gold are not scored
    assert shaped.__name__ == "shaped_reward"
    assert make_shaped_reward(score_fn, alpha=1.0)(["q"], ["\\boxed{9}"], gold=["9"]) == [0.5]
    assert shaped(["q"], ["\\boxed{9}"], gold=[None]) == [None]


def _verdicts(correct: int, total: int = 8) -> list[str]:
    return ["correct"] * correct + ["incorrect"] * (total - correct)


def test_select_queries_keeps_two_to_five_of_eight():
    verdicts = {f"q{k}": _verdicts(k) for k in range(9)}
    assert select_queries(verdicts) == ["q2", "q3", "q4", "q5"]
    assert select_queries(verdicts, low=1, high=7) == [f"q{k}" for k in range(1, 8)]


def test_select_queries_counts_only_correct_and_the_first_n():
    verdicts = {
        "no_answers": ["correct"] * 2 + ["no_answer"] * 6,
        "bools": [True, False, True, True, False, False, False, False],
        "extra": _verdicts(6) + ["incorrect"] * 4,          # 6 of the first 8: dropped despite 10 samples
        "small_n": ["correct", "incorrect", "incorrect", "correct"],
    }
    assert select_queries({k: v for k, v in verdicts.items() if k != "small_n"}) == ["no_answers", "bools"]
    assert select_queries({"small_n": verdicts["small_n"]}, low=1, high=2, n=4) == ["small_n"]


def test_select_queries_rejects_bad_input():
    with pytest.raises(ValueError, match="'short' has 7 verdicts"):
        select_queries({"ok": _verdicts(3), "short": _verdicts(3, total=7)})
    with pytest.raises(ValueError, match="low <= high"):
        select_queries({}, low=6, high=5)
    with pytest.raises(ValueError, match="'Correct'"):
        select_queries({"q": ["Correct"] * 8})
