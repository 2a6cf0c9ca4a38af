"""Procedural math problems with exact gold answers, for CPU runs and tests (no data files, no model).

`generate_problems(n, seed, kinds, difficulty)` returns `Problem`s whose `gold` is exact: an integer, or a reduced
fraction written `\\frac{p}{q}` (with a leading minus when negative), the form MATH uses and `mathloop.verify.grade`
accepts (it also accepts the model writing 0.75 or 3/4 for \\frac{3}{4}). Every problem's `metadata` holds its
`kind`, `difficulty` (1..3: bigger numbers, more operands or one more step), the drawn `params` and an `expression`:
the answer as plain arithmetic over the numbers in the question, so a test can recompute the gold independently of the
text. Problem i is drawn from its own generator seeded by (seed, i), so the first k problems do not depend on n.

>>> p = generate_problems(1, seed=0, kinds=("fractions",))[0]
>>> p.id, p.benchmark, p.metadata["kind"]
('synthetic/fractions/0', 'synthetic', 'fractions')
"""

from __future__ import annotations

import ast
import math
import random
from fractions import Fraction
from typing import Any, Callable, Sequence

from mathloop.records import Problem

BENCHMARK = "synthetic"
KINDS: tuple[str, ...] = ("arithmetic", "fractions", "percentages", "linear_equations", "number_theory",
                          "word_problems")

Draw = tuple[str, Fraction, str, dict[str, Any]]  # (question, answer, expression, params)


def format_exact(value: Fraction | int) -> str:
    """An exact answer as gold text: "12", "-7" or "\\frac{3}{4}" / "-\\frac{3}{4}" (always reduced).

    >>> format_exact(Fraction(6, 8)), format_exact(Fraction(-10, 2))
    ('\\\\frac{3}{4}', '-5')
    """
    value = Fraction(value)
    if value.denominator == 1:
        return str(value.numerator)
    sign = "-" if value < 0 else ""
    return f"{sign}\\frac{{{abs(value.numerator)}}}{{{value.denominator}}}"


def _latex_fraction(value: Fraction) -> str:
    return f"\\frac{{{value.numerator}}}{{{value.denominator}}}"


# --- one function per kind: (rng, difficulty) -> (question, answer, expression, params) ---------------------------

_OPERATORS: dict[type, Callable[[Fraction, Fraction], Fraction]] = {
    ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b, ast.Mod: lambda a, b: a % b,
}


def evaluate(expression: str) -> Fraction:
    """Exact value of an arithmetic expression (integers, + - * / %, parentheses, gcd, lcm); `/` is exact.

    >>> evaluate("(3/4)/(1/2) - 1"), evaluate("lcm(4,6) + gcd(8,12)")
    (Fraction(1, 2), Fraction(16, 1))
    """
    def value(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return Fraction(node.value)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -value(node.operand)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            return _OPERATORS[type(node.op)](value(node.left), value(node.right))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("gcd", "lcm"):
            args = [int(value(arg)) for arg in node.args]
            return Fraction(math.gcd(*args) if node.func.id == "gcd" else math.lcm(*args))
        raise ValueError(f"not a plain arithmetic expression: {ast.unparse(node)!r}")

    return value(ast.parse(expression, mode="eval").body)


def _arithmetic(rng: random.Random, difficulty: int) -> Draw:
    size = 2 * 10 ** difficulty
    numbers = [rng.randint(2, size) for _ in range(difficulty + 1)]
    ops = [rng.choice("+-*") for _ in range(difficulty)]
    parts = [str(numbers[0])] + [f"{op}{number}" for op, number in zip(ops, numbers[1:])]
    if difficulty >= 3:  # parentheses around the first operation change the order of evaluation
        parts[0], parts[1] = "(" + parts[0], parts[1] + ")"
    expression = "".join(parts)
    latex = " ".join(expression.replace("*", " \\times ").replace("+", " + ").replace("-", " - ").split())
    latex = latex.replace("(", "\\left(").replace(")", "\\right)")
    return f"Compute ${latex}$.", evaluate(expression), expression, {"numbers": numbers, "ops": ops}


def _fractions(rng: random.Random, difficulty: int) -> Draw:
    max_den = (6, 12, 16)[difficulty - 1]
    count = 2 if difficulty < 3 else 3
    ops = [rng.choice("+-" if difficulty == 1 else "+-*/") for _ in range(count - 1)]
    den = rng.randint(2, max_den)
    terms: list[Fraction] = []
    while len(terms) < count:
        d = den if difficulty == 1 else rng.randint(2, max_den)
        term = Fraction(rng.choice([k for k in range(1, d) if math.gcd(k, d) == 1]), d)
        if term not in terms or den == 2:  # distinct terms, so "a - a" does not come up
            terms.append(term)
    if difficulty == 1 and ops[0] == "-":
        terms.sort(reverse=True)  # no negative answers at the easiest level
    symbol = {"+": "+", "-": "-", "*": "\\times", "/": "\\div"}
    expression = f"({terms[0].numerator}/{terms[0].denominator})"
    latex = _latex_fraction(terms[0])
    for op, term in zip(ops, terms[1:]):
        expression += f"{op}({term.numerator}/{term.denominator})"
        latex += f" {symbol[op]} {_latex_fraction(term)}"
    question = f"Compute ${latex}$. Express your answer in simplest form."
    return question, evaluate(expression), expression, {"terms": [str(t) for t in terms], "ops": ops}


def _percentages(rng: random.Random, difficulty: int) -> Draw:
    base = 20 * rng.randint(1, (5, 25, 100)[difficulty - 1])
    percent = 5 * rng.randint(1, 19 if difficulty < 3 else 39)
    part = Fraction(base * percent, 100)  # an integer: base is a multiple of 20, percent of 5
    variant = rng.choice(("of", "increase", "discount", "what_percent"))
    params = {"variant": variant, "base": base, "percent": percent}
    if variant == "of":
        return f"What is ${percent}\\%$ of ${base}$?", part, f"{base}*{percent}/100", params
    if variant == "what_percent":
        return (f"What percent of {base} is {part}? Give the number without the percent sign.", Fraction(percent),
                f"{part}*100/{base}", params)
    item = rng.choice(("jacket", "bicycle", "video game", "lamp", "pair of shoes", "backpack"))
    if variant == "increase":
        return (f"A {item} costs ${base}. Its price goes up by {percent}%. What is the new price, in dollars?",
                base + part, f"{base}+{base}*{percent}/100", params)
    return (f"A {item} costs ${base}. The store takes {percent}% off. How many dollars does the {item} cost now?",
            base - part, f"{base}-{base}*{percent}/100", params)


def _linear_equations(rng: random.Random, difficulty: int) -> Draw:
    var = rng.choice("xyzn")
    if difficulty == 1:  # a x + b = c with an integer solution
        x, a, b = rng.randint(-12, 12), rng.randint(2, 9), rng.randint(-20, 20)
        c = a * x + b
        question = f"Solve for ${var}$: ${a}{var} {_signed(b)} = {c}$."
        return question, Fraction(x), f"({c}-({b}))/{a}", {"a": a, "b": b, "c": c}
    # a x + b = c x + d, integer solution at difficulty 2, any rational at 3
    a, c = rng.sample([k for k in range(-9, 10) if k not in (0,)], 2)
    b = rng.randint(-30, 30)
    if difficulty == 2:
        x = rng.randint(-15, 15)
        d = a * x + b - c * x
    else:
        d = rng.randint(-30, 30)
    answer = Fraction(d - b, a - c)
    question = f"Solve for ${var}$: ${_term(a, var)} {_signed(b)} = {_term(c, var)} {_signed(d)}$."
    return question, answer, f"({d}-({b}))/({a}-({c}))", {"a": a, "b": b, "c": c, "d": d}


def _signed(k: int) -> str:
    return f"+ {k}" if k >= 0 else f"- {-k}"


def _term(k: int, var: str) -> str:
    return var if k == 1 else f"-{var}" if k == -1 else f"{k}{var}"


def _number_theory(rng: random.Random, difficulty: int) -> Draw:
    variant = rng.choice(("gcd", "lcm", "remainder"))
    top = (60, 400, 3000)[difficulty - 1]
    if variant == "remainder":
        a, m = rng.randint(top // 2, top * 10), rng.randint(3, 13 + 4 * difficulty)
        return (f"What is the remainder when ${a}$ is divided by ${m}$?", Fraction(a % m), f"{a}%{m}",
                {"variant": variant, "a": a, "m": m})
    common = rng.randint(2, 12 * difficulty)  # a shared factor, so the gcd is not always 1
    a, b = common * rng.randint(2, top // 10 + 2), common * rng.randint(2, top // 10 + 2)
    if variant == "gcd":
        return (f"What is the greatest common divisor of ${a}$ and ${b}$?", Fraction(math.gcd(a, b)),
                f"gcd({a},{b})", {"variant": variant, "a": a, "b": b})
    return (f"What is the least common multiple of ${a}$ and ${b}$?", Fraction(math.lcm(a, b)),
            f"lcm({a},{b})", {"variant": variant, "a": a, "b": b})


# --- GSM8K-style word problems -------------------------------------------------------------------------------------

NAMES = (("Janet", "she"), ("Marco", "he"), ("Priya", "she"), ("Tom", "he"), ("Aisha", "she"), ("Diego", "he"),
         ("Mei", "she"), ("Lucas", "he"), ("Fatima", "she"), ("Noah", "he"), ("Olga", "she"), ("Kenji", "he"))
ITEMS = ("apples", "stickers", "pencils", "cookies", "marbles", "baseball cards", "cupcakes", "seashells")
CONTAINERS = (("box", "boxes"), ("bag", "bags"), ("jar", "jars"), ("crate", "crates"))


def _people(rng: random.Random) -> tuple[tuple[str, str], tuple[str, str]]:
    first, second = rng.sample(NAMES, 2)
    return first, second


def _packs_given_away(rng: random.Random, difficulty: int) -> Draw:
    (name, pronoun), (friend, _) = _people(rng)
    item, (box, boxes) = rng.choice(ITEMS), rng.choice(CONTAINERS)
    packs, per = rng.randint(2, 4 + 4 * difficulty), rng.randint(3, 6 + 6 * difficulty)
    given = rng.randint(1, packs * per - 1)
    question = (f"{name} buys {packs} {boxes} of {item}. Each {box} holds {per} {item}. "
                f"{pronoun.capitalize()} gives {given} {item} to {friend}.")
    expression = f"{packs}*{per}-{given}"
    params: dict[str, Any] = {"packs": packs, "per": per, "given": given}
    if difficulty >= 2:  # a third step: share the rest
        people = rng.choice([d for d in range(2, 7) if (packs * per - given) % d == 0] or [1])
        if people > 1:
            question += f" Then {pronoun} shares the rest equally among {people} classmates."
            expression, params["people"] = f"({expression})/{people}", people
            answer = Fraction(packs * per - given, people)
            return question + f" How many {item} does each classmate get?", answer, expression, params
    return question + f" How many {item} does {name} have left?", Fraction(packs * per - given), expression, params


def _wages(rng: random.Random, difficulty: int) -> Draw:
    (name, pronoun), _ = _people(rng)
    wage, hours, days = rng.randint(8, 12 + 8 * difficulty), rng.randint(2, 8), rng.randint(2, 3 + 2 * difficulty)
    earned = wage * hours * days
    spent = rng.randint(1, earned - 1)
    thing = rng.choice(("a new phone", "groceries", "concert tickets", "a birthday present", "books"))
    question = (f"{name} earns ${wage} an hour. {pronoun.capitalize()} works {hours} hours a day for {days} days, "
                f"then spends ${spent} on {thing}. How many dollars does {name} have left?")
    return question, Fraction(earned - spent), f"{wage}*{hours}*{days}-{spent}", \
        {"wage": wage, "hours": hours, "days": days, "spent": spent}


def _change(rng: random.Random, difficulty: int) -> Draw:
    (name, pronoun), _ = _people(rng)
    first, second = rng.sample(("notebooks", "pens", "juice boxes", "muffins", "erasers", "comic books"), 2)
    a, b = rng.randint(2, 3 + 2 * difficulty), rng.randint(2, 3 + 2 * difficulty)
    price_a, price_b = rng.randint(1, 4 * difficulty + 2), rng.randint(1, 4 * difficulty + 2)
    cost = a * price_a + b * price_b
    bill = next(note for note in (10, 20, 50, 100, 200) if note > cost)
    question = (f"{name} buys {a} {first} for ${price_a} each and {b} {second} for ${price_b} each. "
                f"{pronoun.capitalize()} pays with a ${bill} bill. How much change, in dollars, does {pronoun} get?")
    return question, Fraction(bill - cost), f"{bill}-({a}*{price_a}+{b}*{price_b})", \
        {"a": a, "price_a": price_a, "b": b, "price_b": price_b, "bill": bill}


def _ages(rng: random.Random, difficulty: int) -> Draw:
    (name, _), (friend, _) = _people(rng)
    age, times, years = rng.randint(3, 12), rng.randint(2, 2 + difficulty), rng.randint(2, 5 * difficulty + 5)
    question = (f"{name} is {age} years old. {friend} is {times} times as old as {name}. "
                f"How old will {friend} be in {years} years?")
    return question, Fraction(age * times + years), f"{age}*{times}+{years}", \
        {"age": age, "times": times, "years": years}


def _harvest(rng: random.Random, difficulty: int) -> Draw:
    (name, pronoun), _ = _people(rng)
    fruit = rng.choice(("apples", "oranges", "peaches", "lemons"))
    box_size = rng.choice((2, 3, 4, 5, 6, 8, 10, 12))
    trees, per_tree = rng.randint(3, 4 + 4 * difficulty), box_size * rng.randint(2, 3 + 3 * difficulty)
    price = rng.randint(2, 3 + 3 * difficulty)
    question = (f"{name} has {trees} trees in {'his' if pronoun == 'he' else 'her'} orchard, and each tree gives "
                f"{per_tree} {fruit}. {pronoun.capitalize()} packs the {fruit} into boxes of {box_size} and sells "
                f"each box for ${price}. How many dollars does {name} make?")
    return question, Fraction(trees * per_tree // box_size * price), f"{trees}*{per_tree}/{box_size}*{price}", \
        {"trees": trees, "per_tree": per_tree, "box_size": box_size, "price": price}


WORD_TEMPLATES: dict[str, Callable[[random.Random, int], Draw]] = {
    "packs": _packs_given_away, "wages": _wages, "change": _change, "ages": _ages, "harvest": _harvest,
}


def _word_problems(rng: random.Random, difficulty: int) -> Draw:
    template = rng.choice(sorted(WORD_TEMPLATES))
    question, answer, expression, params = WORD_TEMPLATES[template](rng, difficulty)
    return question, answer, expression, {"template": template, **params}


GENERATORS: dict[str, Callable[[random.Random, int], Draw]] = {
    "arithmetic": _arithmetic, "fractions": _fractions, "percentages": _percentages,
    "linear_equations": _linear_equations, "number_theory": _number_theory, "word_problems": _word_problems,
}


def generate_problems(n: int, seed: int = 0, kinds: Sequence[str] = KINDS,
                      difficulty: int | Sequence[int] = (1, 2, 3)) -> list[Problem]:
    """`n` problems cycling through `kinds`, ids `synthetic/<kind>/<i>`, deterministic for (seed, i).

    `difficulty`: 1 (small numbers, two steps) to 3 (bigger numbers, an extra operand or step); a sequence draws one
    of its values per problem.
    """
    unknown = [k for k in kinds if k not in GENERATORS]
    if unknown or not kinds:
        raise ValueError(f"unknown problem kind(s) {unknown or kinds}; known: {', '.join(GENERATORS)}")
    levels = [difficulty] if isinstance(difficulty, int) else list(difficulty)
    if not levels or any(level not in (1, 2, 3) for level in levels):
        raise ValueError(f"difficulty must be 1, 2 or 3 (or a list of them), got {difficulty!r}")
    problems = []
    for i in range(n):
        rng = random.Random(f"mathloop-synthetic/{seed}/{i}")  # str seeds hash with sha512: stable across runs
        kind = kinds[i % len(kinds)]
        level = rng.choice(levels)
        question, answer, expression, params = GENERATORS[kind](rng, level)
        problems.append(Problem(
            id=f"{BENCHMARK}/{kind}/{i}", benchmark=BENCHMARK, question=question, gold=format_exact(answer),
            metadata={"kind": kind, "difficulty": level, "params": params, "expression": expression,
                      "answer_type": "math", "seed": seed},
        ))
    return problems


__all__ = ["BENCHMARK", "GENERATORS", "KINDS", "evaluate", "format_exact", "generate_problems"]
