"""The rule-based math answer verifier: extract the final answer, compare it with the gold by mathematical equivalence.

>>> from mathloop.verify import grade
>>> grade(r"\\frac{1}{2}", r"... so the answer is $\\boxed{0.5}$.")
('0.5', 'correct')
"""

from mathloop.verify.equivalence import is_equivalent, normalize
from mathloop.verify.extract import extract_answer
from mathloop.verify.verifier import CORRECT, INCORRECT, NO_ANSWER, Verifier, grade

__all__ = ["CORRECT", "INCORRECT", "NO_ANSWER", "Verifier", "extract_answer", "grade", "is_equivalent", "normalize"]
