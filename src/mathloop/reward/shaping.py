"""Rewards for RL (method step 8): the shaped reward, TRL-style reward functions, and the choice of RL queries.

The paper combines the reward model's score r_m with the rule-based verifier's r_v in {0, 1}:

    r = sigmoid(alpha * r_m) + (r_v - 1),  alpha = 0.5

so every correct response scores above every incorrect one (correct in (0, 1), incorrect in (-1, 0)), and the RM
orders responses within each class.

The reward functions follow TRL's signature `fn(prompts, completions, **columns) -> list[float | None]`: one value
per completion, `None` where the function does not apply to a row; dataset columns arrive as keyword lists, one
entry per completion. Completions are plain strings or chat messages (lists of {"role", "content"}).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from mathloop.records import CORRECT, VERDICTS
from mathloop.verify import grade

RewardFn = Callable[..., list["float | None"]]
ScoreFn = Callable[[Sequence[Any], Sequence[str]], Sequence[float]]


def sigmoid(x: float) -> float:
    """The logistic function, without overflow for large |x|.

    >>> sigmoid(0.0), sigmoid(-1000.0), sigmoid(1000.0)
    (0.5, 0.0, 1.0)
    """
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def shaped_reward(rm_score: float, verifier_correct: bool, alpha: float = 0.5) -> float:
    """sigmoid(alpha * rm_score) + (r_v - 1), with r_v = 1 for a verified-correct response, else 0.

    In exact arithmetic a correct response lands in (0, 1) and an incorrect one in (-1, 0). In floating point,
    sigmoid saturates for |alpha * rm_score| above ~37, so the ends become 1.0 / 0.0 and -1.0 / 0.0: a correct
    response with a hugely negative RM score and an incorrect one with a hugely positive score can both give 0.0.

    >>> round(shaped_reward(0.0, True), 4), round(shaped_reward(0.0, False), 4)
    (0.5, -0.5)
    >>> round(shaped_reward(2.0, True), 4), round(shaped_reward(2.0, False), 4)   # sigmoid(1) = 0.7311
    (0.7311, -0.2689)
    """
    return sigmoid(alpha * float(rm_score)) + (1.0 if verifier_correct else 0.0) - 1.0


def completion_text(completion: str | Sequence[Mapping[str, Any]]) -> str:
    """The text of a completion: the string itself, or the content of the last assistant message of a chat.

    Content given as a list of parts (`{"type": "text", "text": ...}`) is joined.

    >>> completion_text("x = 2")
    'x = 2'
    >>> completion_text([{"role": "assistant", "content": "a"}, {"role": "tool", "content": "3"},
    ...                  {"role": "assistant", "content": "so \\\\boxed{3}"}])
    'so \\\\boxed{3}'
    """
    if isinstance(completion, str):
        return completion
    for message in reversed(list(completion)):
        if message.get("role") == "assistant":
            content = message.get("content")
            if content is None:
                return ""
            if isinstance(content, str):
                return content
            return "".join(part.get("text", "") for part in content if isinstance(part, Mapping))
    raise ValueError("a chat-format completion has no assistant message; expected a string or a list of "
                     "{'role', 'content'} messages with at least one role 'assistant'")


def _column(columns: Mapping[str, Any], name: str, count: int, default: Any = None,
            required: bool = False) -> list[Any]:
    """One value per completion from a dataset column (a list, or a single value for all rows)."""
    if name not in columns or columns[name] is None:
        if required:
            raise ValueError(f"the reward function needs a {name!r} column in the dataset (one entry per "
                             f"completion); got columns {sorted(columns)}")
        return [default] * count
    value = columns[name]
    if isinstance(value, str) or not isinstance(value, Sequence):
        return [value] * count
    if len(value) != count:
        raise ValueError(f"column {name!r} has {len(value)} entries for {count} completions")
    return list(value)


def verifier_reward(prompts: Sequence[Any], completions: Sequence[Any], **columns: Any) -> list[float | None]:
    """r_v: 1.0 when the completion's final answer equals the `gold` column's answer, 0.0 when it does not (or has
    no answer), None where the row has no gold answer. Optional columns: `answer_type` ("math" by default),
    `question` (a question asking for a decimal or a rounding lets a rounded decimal answer an exact gold),
    `choices` (for multiple-choice rows) and `finish_reason` ("length": the completion was cut at the token limit, so
    no fallback extraction), as `mathloop.verify.grade` takes them.

    >>> verifier_reward(["q", "q", "q"], ["so $\\\\boxed{0.5}$", "\\\\boxed{2}", "\\\\boxed{1}"],
    ...                 gold=["1/2", "3", None])
    [1.0, 0.0, None]
    """
    count = len(completions)
    golds = _column(columns, "gold", count, required=True)
    answer_types = _column(columns, "answer_type", count, default="math")
    choices = _column(columns, "choices", count)
    questions = _column(columns, "question", count)
    finish_reasons = _column(columns, "finish_reason", count)
    rewards: list[float | None] = []
    for completion, gold, answer_type, options, question, finish in zip(completions, golds, answer_types, choices,
                                                                        questions, finish_reasons):
        if gold is None:
            rewards.append(None)
            continue
        _, verdict = grade(str(gold), completion_text(completion), answer_type or "math", options,
                           question=question if isinstance(question, str) else None, truncated=finish == "length")
        rewards.append(1.0 if verdict == CORRECT else 0.0)
    return rewards


def _texts(completions: Sequence[Any]) -> list[str]:
    return [completion_text(c) for c in completions]


def make_rm_reward(score_fn: ScoreFn) -> RewardFn:
    """A TRL reward function returning the reward model's raw score r_m for every completion.

    `score_fn(prompts, completions) -> scores` scores a batch: `prompts` as the dataset gives them (strings or
    chat messages), `completions` as text; it returns one float per completion (e.g. a closure over a loaded
    `mathloop.reward.model.RewardModel`).

    >>> rm = make_rm_reward(lambda prompts, texts: [float(len(t)) for t in texts])
    >>> rm(["q", "q"], ["ab", [{"role": "assistant", "content": "abcd"}]]), rm.__name__
    ([2.0, 4.0], 'rm_reward')
    """
    def rm_reward(prompts: Sequence[Any], completions: Sequence[Any], **columns: Any) -> list[float | None]:
        scores = list(score_fn(prompts, _texts(completions)))
        if len(scores) != len(completions):
            raise ValueError(f"score_fn returned {len(scores)} scores for {len(completions)} completions")
        return [float(s) for s in scores]

    return rm_reward


def make_shaped_reward(score_fn: ScoreFn, alpha: float = 0.5) -> RewardFn:
    """A TRL reward function for the paper's shaped reward sigmoid(alpha * r_m) + (r_v - 1).

    Needs the `gold` column (and takes `answer_type` / `choices` like `verifier_reward`); rows without a gold
    answer get None and are not sent to the reward model.

    >>> shaped = make_shaped_reward(lambda prompts, texts: [0.0] * len(texts))
    >>> shaped(["q"] * 3, ["\\\\boxed{4}", "\\\\boxed{5}", "\\\\boxed{4}"], gold=["4", "4", None])
    [0.5, -0.5, None]
    """
    def shaped_reward_fn(prompts: Sequence[Any], completions: Sequence[Any], **columns: Any) -> list[float | None]:
        verified = verifier_reward(prompts, completions, **columns)
        rows = [i for i, r_v in enumerate(verified) if r_v is not None]
        rewards: list[float | None] = [None] * len(completions)
        if not rows:
            return rewards
        scores = list(score_fn([prompts[i] for i in rows], [completion_text(completions[i]) for i in rows]))
        if len(scores) != len(rows):
            raise ValueError(f"score_fn returned {len(scores)} scores for {len(rows)} completions")
        for i, score in zip(rows, scores):
            rewards[i] = shaped_reward(score, verified[i] == 1.0, alpha)
        return rewards

    shaped_reward_fn.__name__ = "shaped_reward"
    return shaped_reward_fn


def select_queries(
    verdicts_per_query: Mapping[str, Sequence[str | bool]],
    low: int = 2,
    high: int = 5,
    n: int = 8,
) -> list[str]:
    """The RL queries: those where between `low` and `high` (inclusive) of `n` sampled responses are correct.

    The paper keeps queries with 2..5 correct out of 8: neither solved every time nor never, so a GRPO group has
    both rewards to compare. Verdicts are "correct" / "incorrect" / "no_answer" (or booleans); only the first `n`
    of each query count, and a query with fewer than `n` raises. Order follows the input.

    >>> select_queries({"a": ["correct"] * 3 + ["incorrect"] * 5, "b": ["correct"] * 8,
    ...                 "c": ["correct"] + ["no_answer"] * 7})
    ['a']
    """
    if not 0 <= low <= high <= n:
        raise ValueError(f"need 0 <= low <= high <= n; got low={low}, high={high}, n={n}")
    kept = []
    for query, verdicts in verdicts_per_query.items():
        if len(verdicts) < n:
            raise ValueError(f"query {query!r} has {len(verdicts)} verdicts; select_queries needs n={n} per query "
                             f"(sample more responses, or pass a smaller n)")
        correct = 0
        for verdict in list(verdicts)[:n]:
            if isinstance(verdict, bool):
                correct += verdict
            elif verdict in VERDICTS:
                correct += verdict == CORRECT
            else:
                raise ValueError(f"query {query!r} has verdict {verdict!r}; expected one of {VERDICTS} or a bool")
        if low <= correct <= high:
            kept.append(query)
    return kept
