"""The rule-based math answer verifier: extract the final answer, compare it with the gold by mathematical equivalence.

>>> from mathloop.verify import grade
>>> grade(r"\\frac{1}{2}", r"... so the answer is $\\boxed{0.5}$.")
('0.5', 'correct')

The names below are imported on first use (PEP 562), so a worker process that imports only
``mathloop.verify.equivalence`` does not pay for the extraction and batching modules it never runs.
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy reads this name too)
if TYPE_CHECKING:
    from typing import Any

    from mathloop.verify.equivalence import normalize
    from mathloop.verify.extract import extract_answer
    from mathloop.verify.verifier import CORRECT, INCORRECT, NO_ANSWER, Verifier, grade, is_equivalent

_HOME = {"normalize": "equivalence", "extract_answer": "extract", "CORRECT": "verifier", "INCORRECT": "verifier",
         "NO_ANSWER": "verifier", "Verifier": "verifier", "grade": "verifier", "is_equivalent": "verifier"}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'mathloop.verify' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"mathloop.verify.{_HOME[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOME))


def same_answer(a: str, b: str) -> bool:
    """Whether two extracted answers vote together in maj@k: equal text or mathematically equal.

    >>> same_answer("0.5", "1/2"), same_answer("2", "3")
    (True, False)
    """
    from mathloop.verify.verifier import is_equivalent

    return a.strip() == b.strip() or is_equivalent(a, b, timeout=2.0)


__all__ = ["CORRECT", "INCORRECT", "NO_ANSWER", "Verifier", "extract_answer", "grade", "is_equivalent", "normalize",
           "same_answer"]
