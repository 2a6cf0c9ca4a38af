"""Tests of the rule-based verifier: a table of real grading cases, extraction, hard timeouts, batch grading."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

try:
    import mathloop  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from grading_cases import CASES, QUESTION_CASES, TRUNCATED_CASES  # noqa: E402

from mathloop.verify import Verifier, extract_answer, grade, is_equivalent  # noqa: E402
from mathloop.verify.equivalence import fast_equivalent  # noqa: E402

PATHOLOGICAL = r"9^{9^{9^{9}}}"  # sympy tries to build a number with ~10^370000000 digits
TIMEOUT = 1.5
MARGIN = 10.0  # worker start-up (imports) is not part of the task's deadline


# ---------------------------------------------------------------------------------------------------------------- table


@pytest.mark.parametrize(("gold", "response", "answer_type", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_grading_case(gold: str, response: str, answer_type: str, expected: str) -> None:
    assert grade(gold, response, answer_type)[1] == expected


@pytest.mark.parametrize(("question", "gold", "response", "expected"), [c[1:] for c in QUESTION_CASES],
                         ids=[c[0] for c in QUESTION_CASES])
def test_question_decides_decimal_approximations(question: str, gold: str, response: str, expected: str) -> None:
    assert grade(gold, response, question=question)[1] == expected
    with Verifier(workers=1) as verifier:
        assert verifier.grade_batch([(gold, response)], questions=[question])[0][1] == expected


@pytest.mark.parametrize(("question", "gold", "response", "truncated", "expected"), [c[1:] for c in TRUNCATED_CASES],
                         ids=[c[0] for c in TRUNCATED_CASES])
def test_truncated_responses_and_copied_expressions(question: str | None, gold: str, response: str, truncated: bool,
                                                   expected: str) -> None:
    answer_type = "mc" if gold == "B" else "math"
    assert grade(gold, response, answer_type, question=question, truncated=truncated)[1] == expected


def test_truncation_reaches_batch_grading_and_samples() -> None:
    """The batch takes one flag per item, and a Sample's finish reason "length" is that flag."""
    from mathloop.generate import grade_samples
    from mathloop.records import Sample

    cases = [c for c in TRUNCATED_CASES if c[0].startswith(("fp-truncated", "truncated-complete"))]
    with Verifier(workers=1) as verifier:
        graded = verifier.grade_batch([(c[2], c[3]) for c in cases], questions=[c[1] for c in cases],
                                      truncated=[c[4] for c in cases])
        assert [v for _, v in graded] == [c[5] for c in cases]
        samples = [Sample(problem_id=c[0], prompt="", response=c[3], gold=c[2], question=c[1],
                          finish_reason="length" if c[4] else "stop") for c in cases]
        grade_samples(samples, [None] * len(samples), verifier)
    assert [s.verdict for s in samples] == [c[5] for c in cases]


def test_table_is_large_and_ids_unique() -> None:
    assert len(CASES) >= 100
    assert len({case[0] for case in CASES}) == len(CASES)
    assert len({case[0] for case in TRUNCATED_CASES}) == len(TRUNCATED_CASES)


def test_batch_agrees_with_single_calls() -> None:
    with Verifier(workers=2) as verifier:
        verdicts = verifier.grade_batch([(c[1], c[2]) for c in CASES], answer_type=[c[3] for c in CASES])
    assert [v for _, v in verdicts] == [c[4] for c in CASES]


# ---------------------------------------------------------------------------------------------------------------- extraction


@pytest.mark.parametrize(
    ("response", "answer_type", "choices", "expected"),
    [
        (r"So $\boxed{\frac{1}{2}}$.", "math", None, r"\frac{1}{2}"),
        (r"The final answer is $\boxed{5}$.", "math", None, "5"),
        (r"\boxed{3} no wait \boxed{4}", "math", None, "4"),
        (r"\boxed 5.", "math", None, "5"),
        (r"$\boxed{\{1,2\}}$", "math", None, r"\{1,2\}"),
        (r"$\boxed{10\%}$", "math", None, r"10\%"),
        (r"\boxed{\text{Evelyn}}", "math", None, r"\text{Evelyn}"),
        ("The answer is 42.", "math", None, "42"),
        ("so the final answer is: $x = 3$.", "math", None, "x = 3"),
        ("Adding up.\n#### 1,000", "math", None, "1,000"),
        ("first 3 then 4.5.", "math", None, "4.5"),
        ("no numbers here", "math", None, None),
        ("", "math", None, None),
        ("The answer is (C).", "mc", None, "C"),
        ("Answer: B", "mc", None, "B"),
        (r"\boxed{\text{(B)}}", "mc", None, "B"),
        (r"\boxed{12}", "mc", ["10", "12", "14"], "B"),
        (r"\boxed{\frac{1}{2}}", "mc", ["(A) 0.5", "(B) 2"], "A"),
        ("Comparing them all:\nE", "mc", None, "E"),
        (r"$x=\boxed{1}$ and $y=\boxed{2}$", "list", None, "1,2"),
        ("Earlier: \\boxed{7}.\n\nSo \\boxed{1} and \\boxed{2}.", "list", None, "1,2"),
    ],
    ids=[
        "nested-frac", "final-answer-dollar", "last-box", "boxed-space", "set-braces", "percent", "text",
        "answer-is", "final-answer-colon", "gsm8k-hash", "last-number", "nothing", "empty",
        "mc-answer-is", "mc-colon", "mc-boxed-text", "mc-value-to-letter", "mc-labelled-choice", "mc-last-line",
        "list-boxes", "list-last-paragraph",
    ],
)
def test_extract_answer(response: str, answer_type: str, choices: list[str] | None, expected: str | None) -> None:
    assert extract_answer(response, answer_type, choices) == expected


def test_grade_without_gold_is_never_correct() -> None:
    assert grade(None, r"\boxed{5}") == ("5", "incorrect")
    assert grade(None, "nothing") == (None, "no_answer")


def test_fast_path_decides_plain_numbers_without_sympy() -> None:
    assert fast_equivalent("1000000", "1000050") is False
    assert fast_equivalent("033", "33") is True
    assert fast_equivalent(r"\sqrt{12}", r"2\sqrt{3}") is None


# ---------------------------------------------------------------------------------------------------------------- timeouts


def _timed_pathological(out: list[tuple[bool, float]]) -> None:
    start = time.monotonic()
    result = is_equivalent(PATHOLOGICAL, "1", timeout=TIMEOUT)
    out.append((result, time.monotonic() - start))


def _child(queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    out: list[tuple[bool, float]] = []
    _timed_pathological(out)
    queue.put(out[0])


def test_timeout_main_thread() -> None:
    out: list[tuple[bool, float]] = []
    _timed_pathological(out)
    assert out[0][0] is False and out[0][1] < TIMEOUT + MARGIN


def test_timeout_worker_thread() -> None:
    out: list[tuple[bool, float]] = []
    thread = threading.Thread(target=_timed_pathological, args=(out,))
    thread.start()
    thread.join(TIMEOUT + MARGIN + 5)
    assert not thread.is_alive()
    assert out[0][0] is False and out[0][1] < TIMEOUT + MARGIN


@pytest.mark.parametrize("daemon", [False, True], ids=["process", "daemonic-process"])
def test_timeout_child_process(daemon: bool) -> None:
    queue: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
    child = multiprocessing.Process(target=_child, args=(queue,), daemon=daemon)
    child.start()
    result, elapsed = queue.get(timeout=TIMEOUT + MARGIN + 20)
    child.join(10)
    assert result is False and elapsed < TIMEOUT + MARGIN


def test_pool_recovers_after_timeout() -> None:
    timeout = 4 * TIMEOUT  # the comparisons after the kill get room even on a loaded machine
    with Verifier(workers=1, timeout=timeout) as verifier:
        start = time.monotonic()
        results = verifier.is_equivalent_batch([(PATHOLOGICAL, "1"), (r"\sqrt{12}", r"2\sqrt{3}"), ("x+1", "1+x")])
    assert results == [False, True, True]
    assert time.monotonic() - start < timeout + 2 * MARGIN


def test_concurrent_threads_share_the_default_pool() -> None:
    results: list[bool] = []
    threads = [threading.Thread(target=lambda: results.append(is_equivalent(r"\sqrt{8}", r"2\sqrt{2}"))) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == [True] * 6


# ---------------------------------------------------------------------------------------------------------------- batch API


def test_verifier_batch_order_types_and_choices() -> None:
    with Verifier(workers=2) as verifier:
        assert verifier.is_equivalent_batch([("1/2", "0.5"), ("2", "3"), (r"\sqrt{2}", r"\frac{2}{\sqrt2}")]) == [True, False, True]
        assert verifier.is_equivalent_batch([("C", r"\text{(C)}"), ("1,2", "2,1")], answer_type=["mc", "list"]) == [True, True]
        graded = verifier.grade_batch([("B", r"\boxed{12}"), (None, "x"), ("5", "nope")], answer_type="mc", choices=["10", "12"])
    assert graded == [("B", "correct"), (None, "no_answer"), (None, "no_answer")]


def test_verdicts_are_the_records_vocabulary() -> None:
    from mathloop import records, verify

    assert (verify.CORRECT, verify.INCORRECT, verify.NO_ANSWER) == (records.CORRECT, records.INCORRECT, records.NO_ANSWER)
    with Verifier(workers=1) as verifier:
        graded = verifier.grade_batch([("1", "\\boxed{1}"), ("1", "\\boxed{2}"), ("1", "")])
    assert [verdict for _, verdict in graded] == [records.CORRECT, records.INCORRECT, records.NO_ANSWER]


def test_worker_side_imports_only_the_comparison_layer() -> None:
    """A worker imports ``mathloop.verify.pool`` and ``equivalence``: not the extraction and batching modules (cold start);
    the package still gives every public name."""
    code = ("import sys, mathloop.verify.pool, mathloop.verify.equivalence; "
            "print(sorted(m for m in sys.modules if m.startswith('mathloop')))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}).stdout
    assert "mathloop.verify.verifier" not in loaded and "mathloop.verify.extract" not in loaded and "mathloop.records" not in loaded
    import mathloop.verify as package

    assert all(callable(getattr(package, name)) or isinstance(getattr(package, name), str) for name in package.__all__)
    with pytest.raises(AttributeError):
        package.no_such_name  # noqa: B018


def test_verifier_rejects_mismatched_types() -> None:
    with Verifier(workers=1) as verifier, pytest.raises(ValueError):
        verifier.is_equivalent_batch([("1", "1")], answer_type=["math", "math"])


def test_verdict_does_not_depend_on_earlier_comparisons() -> None:
    pair = ("5", r"\frac{\pi}{0}")
    with Verifier(workers=1) as fresh:
        first = fresh.is_equivalent_batch([pair])
    with Verifier(workers=1) as used:
        after = used.is_equivalent_batch([(r"\sqrt{12}", r"2\sqrt{3}"), pair])[1:]
    assert first == after == [False]
    assert is_equivalent(*pair) is False
