"""Synthetic problems: deterministic, exact gold answers that the verifier grades correct (and wrong ones incorrect)."""

from __future__ import annotations

import re
from fractions import Fraction

import pytest
import sympy

from mathloop.data.synthetic import KINDS, format_exact, generate_problems
from mathloop.verify import grade

PROBLEMS = generate_problems(120, seed=7)  # 20 per kind, difficulties 1-3 mixed


def _recompute(expression: str) -> Fraction:
    """The answer from the stored expression, by sympy (independent of the generator's own evaluator)."""
    value = sympy.sympify(expression, locals={"gcd": sympy.gcd, "lcm": sympy.lcm})
    value = sympy.Rational(value)
    return Fraction(int(value.p), int(value.q))


def test_same_seed_same_problems_and_prefix_stable():
    again = generate_problems(120, seed=7)
    assert [(p.id, p.question, p.gold, p.metadata) for p in again] == \
           [(p.id, p.question, p.gold, p.metadata) for p in PROBLEMS]
    assert generate_problems(10, seed=7) == PROBLEMS[:10]
    assert [p.question for p in generate_problems(10, seed=8)] != [p.question for p in PROBLEMS[:10]]


def test_ids_kinds_and_metadata():
    assert {p.benchmark for p in PROBLEMS} == {"synthetic"}
    assert len({p.id for p in PROBLEMS}) == len(PROBLEMS)
    for i, p in enumerate(PROBLEMS):
        kind = KINDS[i % len(KINDS)]
        assert p.id == f"synthetic/{kind}/{i}" and p.metadata["kind"] == kind
        assert p.metadata["difficulty"] in (1, 2, 3) and p.metadata["params"]
    assert {p.metadata["difficulty"] for p in generate_problems(12, difficulty=2)} == {2}
    with pytest.raises(ValueError, match="unknown problem kind"):
        generate_problems(1, kinds=("calculus",))
    with pytest.raises(ValueError, match="difficulty"):
        generate_problems(1, difficulty=4)


@pytest.mark.parametrize("problem", PROBLEMS, ids=lambda p: p.id)
def test_gold_is_recomputed_from_the_problem(problem):
    assert problem.gold == format_exact(_recompute(problem.metadata["expression"]))
    params = problem.metadata["params"]
    if problem.metadata["kind"] == "linear_equations":  # substitute the answer into the equation
        x = _recompute(problem.metadata["expression"])
        right = params["c"] * x + params["d"] if "d" in params else params["c"]  # a x + b = c  or  = c x + d
        assert params["a"] * x + params["b"] == right
    if problem.metadata["kind"] in ("arithmetic", "percentages", "word_problems", "number_theory"):
        shown = set(re.findall(r"\d+", problem.question))
        assert set(re.findall(r"\d+", problem.metadata["expression"])) - {"100"} <= shown


def test_formats():
    assert [format_exact(Fraction(v)) for v in ("12", "-7", "3/4", "-6/8")] == \
           ["12", "-7", r"\frac{3}{4}", r"-\frac{3}{4}"]


def test_every_kind_is_graded_correct_and_a_wrong_answer_incorrect():
    assert {p.metadata["kind"] for p in PROBLEMS} == set(KINDS)
    for problem in PROBLEMS:
        gold = problem.gold
        assert grade(gold, "\\boxed{" + gold + "}") == (gold, "correct"), problem.id
        wrong = format_exact(_recompute(problem.metadata["expression"]) + 1)
        assert grade(gold, "So the answer is \\boxed{" + wrong + "}.")[1] == "incorrect", problem.id
