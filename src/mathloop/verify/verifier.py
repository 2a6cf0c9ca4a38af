"""Grading a response against a gold answer, one at a time (``grade``) or in batches over worker processes (``Verifier``)."""

from __future__ import annotations

from mathloop.verify.equivalence import fast_equivalent, question_allows_rounding
from mathloop.verify.extract import copied_from, extract_answer, solution_answer
from mathloop.verify.latex import clean_answer
from mathloop.verify.pool import WorkerPool, default_pool

# The verdict vocabulary, the same strings as ``mathloop.records``' (a test checks): not imported from there, so that
# grading does not import ``records`` (dataclasses, inspect): a grader's cold start is compared with math-verify's.
CORRECT, INCORRECT, NO_ANSWER = "correct", "incorrect", "no_answer"

TYPE_CHECKING = False  # typing is only needed by type checkers: not imported at run time (cold start)
if TYPE_CHECKING:
    from typing import Sequence, TypeVar

    T = TypeVar("T")


def grade(
    gold: str | None,
    response: str,
    answer_type: str = "math",
    choices: list[str] | None = None,
    timeout: float = 5.0,
    question: str | None = None,
    truncated: bool = False,
) -> tuple[str | None, str]:
    """(extracted prediction, verdict): "correct", "incorrect", or "no_answer" when nothing could be extracted.

    A missing gold (``None``) cannot confirm anything: the verdict is "incorrect" unless there is no answer. A gold
    written as a solution is read for its answer (``solution_answer``; its final boxes, see ``normalize``).
    ``question``: when it asks for a decimal or a rounding, a rounded decimal answers an exact gold (3.142 for
    ``\\pi``); without it, or when it does not ask, a decimal approximation of an exact gold is incorrect; a fallback
    answer (no box, no answer phrase) that is only an expression copied from the question is no answer.
    Any answer, boxed too, that is only an expression copied from the question (``\\boxed{6 \\times 3}`` for "Compute
    $6 \\times 3$.") is no answer, unless the gold is written that way (a question that offers expressions to choose).
    ``truncated``: the response stopped at the token limit (a sample's finish reason "length"): only a box, an answer
    phrase or ``####`` give an answer (``extract_answer``).

    >>> grade("18", r"She pays $\\$18$, so the answer is $\\boxed{18.00}$.")
    ('18.00', 'correct')
    """
    pred = _not_copied(extract_answer(response, answer_type, choices, truncated=truncated, question=question), gold,
                       question)
    if pred is None:
        return None, NO_ANSWER
    if gold is None:
        return pred, INCORRECT
    rounding = question_allows_rounding(question)
    return pred, CORRECT if is_equivalent(solution_answer(gold), pred, answer_type, timeout, rounding) else INCORRECT


def _not_copied(pred: str | None, gold: str | None, question: str | None) -> str | None:
    """``pred``, or None when it only restates an expression of the question (and the gold is not that expression)."""
    if pred is None or not question or not copied_from(pred, question):
        return pred
    return pred if gold is not None and "".join(pred.split()) == "".join(clean_answer(gold).split()) else None


def _per_item(value: T | Sequence[T], count: int) -> list[T]:
    """Broadcast one value to ``count`` items, or check a per-item list has the right length."""
    if isinstance(value, list):
        if len(value) != count:
            raise ValueError(f"expected {count} per-item values, got {len(value)}")
        return value
    return [value] * count  # type: ignore[list-item]


def is_equivalent(gold: str, pred: str, answer_type: str = "math", timeout: float = 5.0, rounding: bool = False) -> bool:
    """True iff ``pred`` is mathematically equal to ``gold``. Never raises, never hangs (False on error or timeout).

    ``rounding``: the question asks for a decimal or a rounding, so a rounded decimal ``pred`` matches an exact gold
    (see the number rule above; ``question_allows_rounding``).

    Safe from any thread or process: cheap cases are decided here, the rest in a worker process killed at ``timeout``.

    >>> is_equivalent("0.5", r"\\frac{1}{2}"), is_equivalent("[1,2]", "(1,2)"), is_equivalent("033", "33")
    (True, False, True)
    """
    try:
        decided = fast_equivalent(gold, pred, answer_type, rounding)
        if decided is not None:
            return decided
        task = {"gold": gold, "pred": pred, "answer_type": answer_type, "rounding": rounding}
        return default_pool().run(task, timeout)
    except Exception:  # noqa: BLE001 - the contract is a verdict, never an exception
        return False


class Verifier:
    """Batch grading: cheap cases in-process, sympy cases spread over up to ``workers`` processes with hard timeouts
    (started lazily: a batch that the exact fast path decides starts none, a small one starts one).

    >>> with Verifier(workers=1) as verifier:
    ...     verifier.is_equivalent_batch([("1/2", "0.5"), ("2", "3")])
    [True, False]
    """

    def __init__(self, workers: int | None = None, timeout: float = 5.0) -> None:
        self.timeout = timeout
        self.pool = WorkerPool(workers)  # workers start when a comparison first needs sympy, not before

    def is_equivalent_batch(self, pairs: list[tuple[str, str]], answer_type: str | list[str] = "math",
                            rounding: bool | list[bool] = False) -> list[bool]:
        """``is_equivalent`` for every (gold, pred) pair, in order."""
        types = _per_item(answer_type, len(pairs))
        roundings = _per_item(rounding, len(pairs))
        results: list[bool] = [False] * len(pairs)
        slow: list[int] = []
        for index, ((gold, pred), kind, rounds) in enumerate(zip(pairs, types, roundings)):
            try:
                decided = fast_equivalent(gold, pred, kind, rounds)
            except Exception:  # noqa: BLE001
                decided = False
            if decided is None:
                slow.append(index)
            else:
                results[index] = decided
        tasks = [{"gold": pairs[i][0], "pred": pairs[i][1], "answer_type": types[i], "rounding": roundings[i]}
                 for i in slow]
        for index, ok in zip(slow, self.pool.run_many(tasks, self.timeout)):
            results[index] = ok
        return results

    def grade_batch(
        self,
        items: list[tuple[str | None, str]],
        answer_type: str | list[str] = "math",
        choices: list[str] | None | list[list[str] | None] = None,
        questions: list[str | None] | None = None,
        truncated: list[bool] | None = None,
    ) -> list[tuple[str | None, str]]:
        """``grade`` for every (gold, response) item, in order. ``choices``: one list for all items, or one per item;
        ``questions`` and ``truncated`` (finish reason "length"): one per item (or None), see ``grade``."""
        types = _per_item(answer_type, len(items))
        per_question = _per_item(questions or [None] * len(items), len(items))
        cut = _per_item(truncated or [False] * len(items), len(items))
        roundings = [question_allows_rounding(q) for q in per_question]
        per_item_choices = choices if choices and isinstance(choices[0], list) else [choices] * len(items)
        if len(per_item_choices) != len(items):
            raise ValueError(f"expected {len(items)} choice lists, got {len(per_item_choices)}")
        preds = [_not_copied(extract_answer(response, kind, opts, truncated=bool(stop), question=q), gold, q)  # type: ignore[arg-type]
                 for (gold, response), kind, opts, stop, q in zip(items, types, per_item_choices, cut, per_question)]
        to_check = [i for i, (pred, (gold, _)) in enumerate(zip(preds, items)) if pred is not None and gold is not None]
        verdicts = self.is_equivalent_batch([(solution_answer(items[i][0]), preds[i]) for i in to_check], [types[i] for i in to_check],  # type: ignore[misc]
                                            [roundings[i] for i in to_check])
        graded: list[tuple[str | None, str]] = [(pred, NO_ANSWER if pred is None else INCORRECT) for pred in preds]
        for index, ok in zip(to_check, verdicts):
            graded[index] = (preds[index], CORRECT if ok else INCORRECT)
        return graded

    def close(self) -> None:
        self.pool.close()

    def __enter__(self) -> "Verifier":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
