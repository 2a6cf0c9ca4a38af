"""The rule-based math answer verifier: extract the final answer, compare it with the gold by mathematical equivalence.

>>> from mathloop.verify import grade
>>> grade(r"\\frac{1}{2}", r"... so the answer is $\\boxed{0.5}$.")
('0.5', 'correct')
"""

from mathloop.verify.equivalence import normalize
from mathloop.verify.extract import extract_answer
from mathloop.verify.verifier import CORRECT, INCORRECT, NO_ANSWER, Verifier, grade, is_equivalent


def same_answer(a: str, b: str) -> bool:
    """Whether two extracted answers vote together in maj@k: equal text or mathematically equal.

    >>> same_answer("0.5", "1/2"), same_answer("2", "3")
    (True, False)
    """
    return a.strip() == b.strip() or is_equivalent(a, b, timeout=2.0)


__all__ = ["CORRECT", "INCORRECT", "NO_ANSWER", "Verifier", "extract_answer", "grade", "is_equivalent", "normalize",
           "same_answer"]
